"""The sources a lock names for its artifacts, checked before any download starts.

A URL scheme no downloader speaks, or a local ``path`` (or ``file://`` URL) with no file
behind it, is bad input in the lock: it is reported with its place in the lock file
(``packages[3].wheels[0]``), every one at once, as an :class:`InvalidLockError`, not
as a network error after the other downloads. The check reads only the lock and the
file system, so it lives apart from the download machinery of :mod:`envship.fetch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .errors import InvalidLockError, Problem
from .lockfile import Artifact, LockFile

if TYPE_CHECKING:
    from packaging.pylock import PackageSdist, PackageWheel

__all__ = ["check_sources"]

_SCHEMES = frozenset({"http", "https", "file"})  # what HttpClient.download speaks


def _places(lock: LockFile) -> dict[str, str]:
    """Each artifact's place in the lock file, by sha256: ``packages[3].wheels[0]``."""
    places: dict[str, str] = {}
    for i, package in enumerate(lock.pylock.packages):
        entries: list[tuple[str, PackageWheel | PackageSdist]] = [
            (f"wheels[{j}]", w) for j, w in enumerate(package.wheels or [])
        ]
        if package.sdist is not None:
            entries.append(("sdist", package.sdist))
        for key, entry in entries:
            sha = (entry.hashes or {}).get("sha256")
            if sha:
                places.setdefault(sha, f"{lock.path}: packages[{i}].{key}")
    return places


def check_sources(lock: LockFile, artifacts: Sequence[Artifact]) -> None:
    """Refuse, before any download, sources that cannot work: bad input in the lock.

    Found only at download time, they used to fail as network errors (exit 3) after
    every other artifact had been downloaded.
    """
    places: dict[str, str] | None = None
    problems: list[Problem] = []
    for artifact in artifacts:
        message = _source_problem(lock.path.parent, artifact)
        if message is None:
            continue
        if places is None:
            places = _places(lock)
        where = places.get(artifact.sha256, f"{lock.path}: {artifact.filename}")
        problems.append(Problem(where, message))
    if problems:
        raise InvalidLockError(
            f"{lock.path} names {len(problems)} artifact source(s) envship cannot fetch",
            problems=problems,
            hint="envship downloads http(s):// and file:// URLs and paths relative to the "
            "lock's folder; fix the lock (or re-create it with `envship lock`)",
        )


def _source_problem(base: Path, artifact: Artifact) -> str | None:
    if artifact.url:
        parts = urlsplit(artifact.url)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            shown = f"{scheme}://" if scheme else "a URL without a scheme"
            return f"{artifact.filename}: cannot download from {shown} ({artifact.url})"
        if scheme == "file":
            local = Path(unquote(parts.path))  # url2pathname on POSIX, without urllib.request
            if not local.is_file():
                return f"{artifact.filename}: no file at {local} ({artifact.url})"
        return None
    local = base / (artifact.path or "")
    if not artifact.path or not local.is_file():
        return f"{artifact.filename}: no file at {local} (the lock's path {artifact.path!r})"
    return None

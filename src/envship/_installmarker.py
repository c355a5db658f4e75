"""The record an environment keeps of how envship made it, and the quick look at its state.

``.envship-install.json`` (the marker) says which lock, target, groups and interpreter
an environment was made from, and what the venv's creation itself put into
site-packages (uv's ``_virtualenv.py``/``.pth``) with their hashes, so ``verify`` can
tell them from stray files. ``.envship-incomplete`` says it is being made. The quick
look (:func:`drift`) compares the installed distributions' metadata folders with the
marker, as ``envship verify`` does without ``--full``: a listing, no hashing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._atomic import write_atomic

if TYPE_CHECKING:
    from .lockfile import Artifact, LockFile
    from .targets import Target

__all__ = [
    "INCOMPLETE_NAME",
    "MARKER_NAME",
    "Drift",
    "artifact_entry",
    "drift",
    "marker_data",
    "read_marker",
    "site_packages",
    "venv_files",
    "write_marker",
]

MARKER_NAME = ".envship-install.json"
INCOMPLETE_NAME = ".envship-incomplete"
MARKER_FORMAT = 1


def artifact_entry(a: Artifact) -> dict[str, str]:
    return {"name": a.name, "version": a.version, "filename": a.filename, "sha256": a.sha256}


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The marker at ``dest``, or None when it is missing, unreadable or another format."""
    try:
        data = json.loads((dest / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        return None
    return data


def marker_data(
    lock: LockFile,
    target: Target,
    groups: tuple[str, ...],
    base_python: str,
    python_full: str,
    artifacts: Sequence[Artifact],
    compiled: bool = False,
    venv: Mapping[str, str] | None = None,
    link_mode: str | None = None,
) -> dict[str, Any]:
    """What an environment made from ``lock`` records about itself (the install marker);
    image builds write the same record into the image. ``compiled``: every installed
    module's byte-code was written at install time. ``venv``: the files the venv's
    creation wrote into site-packages (env-relative POSIX path -> hex sha256); None when
    unknown (an environment made before envship recorded them). ``link_mode``: how uv
    was asked to put files in place, when it was asked (repairs keep it)."""
    data: dict[str, Any] = {
        "format": MARKER_FORMAT,
        "lock": {"path": str(lock.path.absolute()), "digest": lock.digest},
        "name": lock.name,
        "display_name": lock.display_name,
        "target": target.to_json(),
        "groups": list(groups),
        "python": {"base": base_python, "version": python_full},
        "packages": [artifact_entry(a) for a in artifacts],
        "compiled": compiled,
    }
    if venv is not None:
        data["venv_files"] = dict(sorted(venv.items()))
    if link_mode is not None:
        data["link_mode"] = link_mode
    return data


def write_marker(dest: Path, data: dict[str, Any]) -> None:
    """Replace the install marker of the environment at ``dest`` in one rename."""
    write_atomic(dest / MARKER_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")


def site_packages(dest: Path, python: str | None = None) -> Path | None:
    """``dest/lib/pythonX.Y/site-packages`` of a POSIX venv: the one of ``python``
    ("3.11") when given, else the only one there is."""
    if python is not None:
        found = dest / "lib" / f"python{python}" / "site-packages"
        return found if found.is_dir() else None
    candidates = sorted((dest / "lib").glob("python*/site-packages"))
    return candidates[0] if len(candidates) == 1 else None


def venv_files(dest: Path, python: str | None = None) -> dict[str, str]:
    """Every file in a freshly made venv's site-packages, with its sha256: what the venv's
    creation put there (uv writes ``_virtualenv.py`` and a ``.pth`` that imports it)."""
    site = site_packages(dest, python)
    if site is None:
        return {}
    out: dict[str, str] = {}
    for path in sorted(site.rglob("*")):
        if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts:
            out[path.relative_to(dest).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True, slots=True)
class Drift:
    """How an environment's installed metadata differs from what it should hold."""

    present: tuple[str, ...] = ()  # "name==version" installed, not expected
    missing: tuple[str, ...] = ()  # "name==version" expected, not installed
    duplicated: tuple[str, ...] = ()  # names with more than one metadata folder

    def __bool__(self) -> bool:
        return bool(self.present or self.missing or self.duplicated)


# Metadata folders: ``name-version.dist-info`` (wheels) and ``name-version[-pyX.Y]
# .egg-info`` (anything installed the old way, e.g. ``setup.py install``).
_METADATA = (".dist-info", ".egg-info")


def _installed(site: Path) -> dict[str, list[str]]:
    """Installed distributions by canonical name -> versions, from metadata folder names."""
    found: dict[str, list[str]] = {}
    with os.scandir(site) as entries:
        for entry in entries:
            suffix = next((s for s in _METADATA if entry.name.endswith(s)), None)
            if suffix is None:
                continue
            parts = entry.name[: -len(suffix)].split("-")
            if len(parts) < 2:
                continue
            found.setdefault(canonicalize_name(parts[0]), []).append(parts[1])
    return found


def drift(dest: Path, packages: Sequence[Mapping[str, str]], python: str | None) -> Drift:
    """Where the metadata folders in ``dest``'s site-packages (of ``python``) differ from
    ``packages`` (marker entries): a listing, no hashing, like ``envship verify`` without
    ``--full``. A wrong version is both present and missing."""
    site = site_packages(dest, python)
    installed = _installed(site) if site is not None else {}
    expected: dict[str, str] = {canonicalize_name(p["name"]): p["version"] for p in packages}
    present = [
        f"{n}=={v}"
        for n, versions in sorted(installed.items())
        for v in versions
        if not _same(expected.get(n), v)
    ]
    missing = [
        f"{n}=={v}"
        for n, v in sorted(expected.items())
        if not any(_same(v, got) for got in installed.get(n, []))
    ]
    duplicated = [n for n, versions in sorted(installed.items()) if len(versions) > 1]
    return Drift(tuple(present), tuple(missing), tuple(duplicated))


def _same(a: str | None, b: str) -> bool:
    if a is None or a == b:
        return a == b
    try:  # a folder name may spell the version unnormalized (1.0 vs 1.0.0)
        return Version(a) == Version(b)
    except InvalidVersion:
        return False

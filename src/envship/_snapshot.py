"""Which files the lock installed in an environment, and whether anyone overwrote them.

``envship add`` runs ``uv pip install`` next to distributions the lock put there, and uv
lets one package silently overwrite another's files (two wheels shipping one module
path), so uv's own report of what it changed is not enough. Before uv runs, every file a
locked distribution owns (its RECORD entries and its dist-info folder) is recorded by
size, mtime and inode; afterwards the same files and the locked versions are compared.
(Before anything runs, :func:`drift` refuses an environment that already left its lock:
a locked distribution missing or at another version, installed twice, or re-installed at
its version from another wheel or by another tool, which only its RECORD shows; the
install marker keeps each RECORD's sha256, and :func:`envship._installmarker.drift`, the
quick look ``envship install`` takes, compares them.)
The environment carries ``.envship-incomplete`` from before uv runs until that comparison
comes out clean; if it never does, the marker stays, its kernel refuses to start it and
``envship install`` rebuilds it.

This is a question about an environment's files, not about what is being added, so it
lives apart from :mod:`envship.add`, which decides the addition and records it.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import Distribution
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._installmarker import INCOMPLETE_NAME, RECORDS_KEY
from ._installmarker import drift as marker_drift
from .errors import AddError, Problem

__all__ = [
    "Installed",
    "Stat",
    "changes",
    "damage",
    "drift",
    "guarded",
    "installed",
    "locked_files",
]

Stat = tuple[int, int, int]  # size, mtime_ns, inode
Installed = dict[str, tuple[str, str, Path]]  # canonical name -> name, version, dist-info


def installed(sites: Sequence[Path]) -> Installed:
    """Every installed distribution."""
    found: Installed = {}
    for site in sites:
        for info in sorted(site.glob("*.dist-info")):
            meta = Distribution.at(info).metadata
            name = meta["Name"] or info.name.split("-")[0]
            found.setdefault(canonicalize_name(name), (name, meta["Version"] or "?", info))
    return found


def drift(
    env: Path, marker: Mapping[str, Any], pins: Mapping[str, str], found: Installed
) -> list[Problem]:
    """Locked distributions missing, installed at another version than the lock's, with
    more than one metadata folder, or replaced at their version (their RECORD is not the
    one ``envship install`` wrote; a marker from before those digests cannot tell)."""
    problems = [
        Problem(key, f"locked {version}, installed {have[1] if have else 'nothing'}")
        for key, version in sorted(pins.items())
        if (have := found.get(key)) is None or not _same_version(have[1], version)
    ]
    python = (marker.get("target") or {}).get("python")
    look = marker_drift(
        env,
        marker["packages"],
        python if isinstance(python, str) else None,
        marker.get(RECORDS_KEY) if isinstance(marker.get(RECORDS_KEY), dict) else None,
    )
    problems += [
        Problem(name, f"locked {pins[name]}, and more than one metadata folder names it")
        for name in look.duplicated
        if name in pins
    ]
    for entry in look.replaced:
        name, version = entry.split("==", 1)
        where = str(found[name][2]) if name in found else name
        problems.append(
            Problem(
                where,
                f"{name} {version} was re-installed at its locked version from another "
                "wheel or by another tool: its RECORD is not the one `envship install` wrote",
            )
        )
    return problems


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _stat(path: str | Path) -> Stat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def locked_files(found: Installed, keys: Iterable[str]) -> dict[str, Stat | None]:
    """Every file a locked distribution owns, with what changes when anyone rewrites it.

    RECORD entries (not byte-code, which Python may write at any time) and the dist-info
    folder's listing. Files a new distribution adds to a shared (namespace) folder are
    not a change to a locked one.
    """
    files: dict[str, Stat | None] = {}
    for key in keys:
        if key not in found:
            continue
        info = found[key][2]
        try:  # csv, not importlib.metadata's `files`: 5x faster on a 10k-file environment
            with open(info / "RECORD", newline="", encoding="utf-8") as f:
                rows = [row[0] for row in csv.reader(f) if row]
        except OSError:
            rows = []
        site = str(info.parent)
        for rel in rows:
            if rel.endswith(".pyc") and "__pycache__/" in rel:
                continue
            path = os.path.normpath(os.path.join(site, rel))
            files[path] = _stat(path)
        with contextlib.suppress(OSError):
            for child in info.iterdir():
                files.setdefault(str(child), _stat(child))
    return files


def damage(
    pins: Mapping[str, str],
    before: Installed,
    after: Installed,
    files_before: Mapping[str, Any],
    files_after: Mapping[str, Any],
) -> list[Problem]:
    """What changed in the locked distributions (nothing, unless something went wrong)."""
    found = [
        Problem(key, f"locked {version}, now {now[1] if now else 'removed'}")
        for key, version in sorted(pins.items())
        if (now := after.get(key)) is None or now[1] != before[key][1]
    ]
    for path in sorted(set(files_before) | set(files_after)):
        old, new = files_before.get(path), files_after.get(path)
        if old != new:
            what = "removed" if new is None else "added" if old is None else "rewritten"
            found.append(Problem(path, f"{what} (it belongs to a locked distribution)"))
    return found


def guarded(
    env: Path,
    sites: Sequence[Path],
    pins: Mapping[str, str],
    before: Installed,
    run: Callable[[], tuple[int, str]],
    *,
    repair: str,
) -> tuple[int, str, Installed]:
    """Run uv with the environment marked incomplete; unmark it only if nothing locked
    changed, whatever uv did. Returns uv's exit code and output, and what is installed.
    ``repair`` is the command that rebuilds it from its lock (``envship install ENV
    --lock LOCK ...``: a bare one reads the current folder's pylock.toml)."""
    files_before = locked_files(before, pins)
    incomplete = env / INCOMPLETE_NAME
    incomplete.write_text("envship add in progress\n", encoding="utf-8")

    def settle() -> tuple[Installed, list[Problem]]:
        after = installed(sites)
        found = damage(pins, before, after, files_before, locked_files(after, pins))
        if not found:
            incomplete.unlink(missing_ok=True)
        return after, found

    try:
        code, out = run()
    except BaseException:
        settle()
        raise
    after, found = settle()
    if found:
        more = [Problem("...", f"{len(found) - 20} more")] if len(found) > 20 else []
        raise AddError(
            f"the addition changed locked packages: {env} no longer matches its lock",
            problems=found[:20] + more,
            hint=f"the environment is marked incomplete; {repair} rebuilds it from its lock",
        )
    return code, out, after


def changes(before: Installed, after: Installed) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``name==version`` new or changed, and replaced or removed, from ``before`` to ``after``."""

    def gone(a: Installed, b: Installed) -> tuple[str, ...]:
        return tuple(
            f"{n}=={v}" for k, (n, v, _) in sorted(a.items()) if k not in b or b[k][1] != v
        )

    return gone(after, before), gone(before, after)

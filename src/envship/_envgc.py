"""``env gc``: removing versions of a shared root that nothing uses any more.

A version goes when it is not current and was last used before a cutoff, and only
while ``gc`` holds its key's lock, which creators hold while they install it or point
``current`` at it; ``gc`` does not wait for a busy lock, it skips the version. Before
removing, it asks :mod:`envship._inuse` which of the candidates a process on this
machine runs from, and keeps those: by the folder's device and inode, so a process that
reached the version through another path to the same files (a symlinked or bind-mounted
root, a second mount of its volume) counts as well. Kept apart from :mod:`envship.envs`,
which creates and checks versions under the same locks.

A failed ``env create`` (a missing artifact, a full disk) discards its half-made version
but leaves its key's lock file, and for a first version an environment folder with
nothing in it, which ``env list`` would show forever. ``gc`` removes such a lock file
only while it holds it (no creator does) and no version of its key exists; the folder,
only with ``rmdir`` (:func:`_remove_if_empty`), which fails on a folder a creator has
put anything into since, so a creator starting meanwhile is never undercut: its own
``mkdir -p`` and :mod:`envship._flock`'s re-check make what it needs again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import _envroot
from ._envlist import JsonResult, VersionInfo, version_info
from ._flock import acquire
from ._inuse import ProcessUse, users_of

__all__ = ["GcResult", "VersionInUse", "gc"]


@dataclass(frozen=True, slots=True)
class VersionInUse(JsonResult):
    """A version ``gc`` kept because a process on this machine runs from it."""

    name: str
    key: str
    path: Path
    processes: tuple[ProcessUse, ...]


@dataclass(frozen=True, slots=True)
class GcResult(JsonResult):
    removed: tuple[VersionInfo, ...]  # with ``dry_run``: what would be removed
    busy: tuple[VersionInfo, ...]  # old enough, but its lock was held: left alone
    in_use: tuple[VersionInUse, ...]  # old enough, but a process here runs from it
    kept: int  # current or recently used versions
    freed: int  # bytes (would be) freed
    dry_run: bool
    # Left by failed creates: lock files of keys with no version, and environments
    # with no version and no ``current`` (with ``dry_run``: what would be removed).
    stale_locks: tuple[Path, ...] = ()
    empty_envs: tuple[Path, ...] = ()


def _cutoff(older_than: timedelta) -> datetime:
    try:
        return datetime.now(timezone.utc) - older_than
    except OverflowError:  # longer ago than datetime reaches: nothing is that old
        return datetime.min.replace(tzinfo=timezone.utc)


def _stale(env_dir: Path, key: str, cutoff: datetime) -> bool:
    """Neither current nor used since ``cutoff``: a candidate for removal."""
    path = env_dir / "versions" / key
    return key != _envroot.current_key(env_dir) and _envroot.last_used(path) < cutoff


def _stale_locks(env_dir: Path, *, dry_run: bool) -> list[Path]:
    """Remove the lock files of keys with no version (nor install staging) that no one
    holds; which ones were (or, with ``dry_run``, would be) removed."""
    try:
        files = sorted((env_dir / ".locks").glob("*.lock"))
    except OSError:
        return []
    removed: list[Path] = []
    for path in files:
        key = path.name.removesuffix(".lock")
        fd = acquire(path, wait=False)
        if fd is None:
            continue  # a creator holds it: its version is on the way
        try:
            # Under the lock: a creator that made the version and let go is seen here.
            versions = env_dir / "versions"
            if any(os.path.lexists(versions / n) for n in (key, f"{key}.envship-tmp")):
                continue
            if not dry_run:
                path.unlink(missing_ok=True)  # a waiter re-checks the inode and starts over
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _remove_if_empty(env_dir: Path, *, dry_run: bool, stale: Collection[Path]) -> bool:
    """Remove ``env_dir`` when it holds nothing but empty ``versions``, ``.locks`` and
    ``.trash`` folders, by ``rmdir`` alone: each fails on a folder that is not empty, so
    a creator that put anything there since keeps it (and one between its ``mkdir`` and
    its ``open`` makes the folder again, :func:`envship._flock.acquire`). With
    ``dry_run``, the ``stale`` lock files count as gone already."""
    parts = {"versions", ".locks", ".trash"}
    try:
        names = {p.name for p in env_dir.iterdir()}
        if not names <= parts:
            return False
        for name in names:
            if any(p not in stale for p in (env_dir / name).iterdir()):
                return False
    except OSError:
        return False
    if dry_run:
        return True
    try:
        for name in (".locks", ".trash", "versions"):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(env_dir / name)
        os.rmdir(env_dir)
    except OSError:
        return False  # a creator got in first; it keeps what it made
    return True


def gc(root: Path, *, older_than: timedelta, dry_run: bool = False) -> GcResult:
    """Remove versions that are not current and were last used before ``older_than`` ago.

    Incomplete versions (a killed creator) count by their folder's age. A version whose
    lock is held (being created, or being made current) is skipped and reported busy; one
    that a process on this machine runs from (:func:`envship._inuse.users_of`), by
    whichever path to the same files, is kept and reported in use. Processes on other
    machines cannot be seen: for them the use stamp (refreshed by create, check and every
    kernel start) and ``older_than`` are the only guard.

    Lock files of keys without a version and environments with no version and no
    ``current`` (what a failed create leaves) are removed too, whatever their age:
    they hold no data, and each goes only while no creator uses it.
    """
    cutoff = _cutoff(older_than)
    envs = _envroot.env_dirs(_envroot.require_root(root))
    removed: list[VersionInfo] = []
    busy: list[VersionInfo] = []
    in_use: list[VersionInUse] = []
    held: list[tuple[Path, str, int]] = []  # candidates whose lock we hold: (env, key, fd)
    kept = 0
    try:
        for env_dir in envs:
            for key in _envroot.version_keys(env_dir):
                if not _stale(env_dir, key, cutoff):
                    kept += 1
                    continue
                fd = acquire(_envroot.key_lock(env_dir, key), wait=False)
                if fd is None:
                    busy.append(version_info(env_dir, key, None, size=False))
                else:
                    held.append((env_dir, key, fd))
        # Decided again under the locks (it may have become current or been used), then
        # one pass over /proc for all of them, and the stamps once more: a kernel start
        # stamps before it runs, so one that began during the pass is seen either way.
        stale = [(env_dir, key) for env_dir, key, _ in held if _stale(env_dir, key, cutoff)]
        kept += len(held) - len(stale)
        users = users_of([env_dir / "versions" / key for env_dir, key in stale])
        for env_dir, key in stale:
            path = env_dir / "versions" / key
            if path in users:
                in_use.append(VersionInUse(env_dir.name, key, path, users[path]))
            elif not _stale(env_dir, key, cutoff):
                kept += 1
            else:
                removed.append(version_info(env_dir, key, _envroot.current_key(env_dir), size=True))
                if not dry_run:
                    _envroot.discard(env_dir, key)
                    _envroot.key_lock(env_dir, key).unlink(missing_ok=True)  # waiters re-check
    finally:
        for _, _, fd in held:
            os.close(fd)
    if not dry_run:
        for env_dir in envs:
            trash = env_dir / ".trash"
            if trash.is_dir():
                for leftover in trash.iterdir():  # a gc or creator killed before its rmtree
                    shutil.rmtree(leftover, ignore_errors=True)
    stale_locks: list[Path] = []
    empty_envs: list[Path] = []
    for env_dir in envs:
        unheld = _stale_locks(env_dir, dry_run=dry_run)
        stale_locks.extend(unheld)
        if not os.path.lexists(env_dir / "current") and _remove_if_empty(
            env_dir, dry_run=dry_run, stale=set(unheld)
        ):
            empty_envs.append(env_dir)
    freed = sum(v.size or 0 for v in removed)
    return GcResult(
        tuple(removed),
        tuple(busy),
        tuple(in_use),
        kept,
        freed,
        dry_run,
        tuple(stale_locks),
        tuple(empty_envs),
    )

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

On a shared root the versions are often other users' (an admin's, CI's). What this user
may not remove is left as it is and reported with whose it is (``denied``), and ``gc``
goes on with the rest; ``dry_run`` writes nothing at all (locks are tested through
read-only descriptors, and whether each removal would be allowed is worked out from
owners and modes), so anyone may ask what a real run would do.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import _envroot
from ._envlist import JsonResult, VersionInfo, version_info
from ._flock import acquire, denied, peek
from ._inuse import ProcessUse, users_of

__all__ = ["Denied", "GcResult", "VersionInUse", "gc"]


@dataclass(frozen=True, slots=True)
class VersionInUse(JsonResult):
    """A version ``gc`` kept because a process on this machine runs from it."""

    name: str
    key: str
    path: Path
    processes: tuple[ProcessUse, ...]


@dataclass(frozen=True, slots=True)
class Denied(JsonResult):
    """What ``gc`` was not allowed to remove (with ``dry_run``: would not be), and why:
    whose file or folder refused it, or the error met. A version moved to ``.trash`` but
    not deleted to the end is here too, with the bytes that stayed (``size``)."""

    name: str  # the environment
    key: str | None  # the version's key; None for a lock file or an environment folder
    path: Path
    reason: str
    size: int | None = None  # bytes left on disk, when part of it was deleted


@dataclass(frozen=True, slots=True)
class GcResult(JsonResult):
    removed: tuple[VersionInfo, ...]  # with ``dry_run``: what would be removed
    busy: tuple[VersionInfo, ...]  # old enough, but its lock was held: left alone
    in_use: tuple[VersionInUse, ...]  # old enough, but a process here runs from it
    kept: int  # current or recently used versions
    freed: int  # bytes (would be) freed, ``leftovers_freed`` included
    dry_run: bool
    # Left by failed creates: lock files of keys with no version, and environments
    # with no version and no ``current`` (with ``dry_run``: what would be removed).
    stale_locks: tuple[Path, ...] = ()
    empty_envs: tuple[Path, ...] = ()
    denied: tuple[Denied, ...] = ()  # not this user's to remove, or not removed to the end
    leftovers_freed: int = 0  # bytes of .trash leftovers of earlier, killed runs removed
    # What ``versions/`` holds that is no version (a file, a link): never removed, named.
    strays: tuple[Path, ...] = ()


def _cutoff(older_than: timedelta) -> datetime:
    try:
        return datetime.now(timezone.utc) - older_than
    except OverflowError:  # longer ago than datetime reaches: nothing is that old
        return datetime.min.replace(tzinfo=timezone.utc)


def _stale(env_dir: Path, key: str, cutoff: datetime) -> bool:
    """Neither current nor used since ``cutoff``: a candidate for removal."""
    path = env_dir / "versions" / key
    return key != _envroot.current_key(env_dir) and _envroot.last_used(path) < cutoff


def _why(exc: OSError) -> str:
    """An error's text; ours (:mod:`envship._flock`, :mod:`envship._envroot`) already
    says whose the file is and names it."""
    if exc.errno and exc.strerror and exc.strerror != os.strerror(exc.errno):
        return exc.strerror  # ours: it names the file already
    return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)


def _unreadable(exc: OSError) -> str:
    """What a refused read says: whose the folder is, when the error names one."""
    if exc.errno in (errno.EACCES, errno.EPERM) and exc.filename:
        return denied(Path(os.fsdecode(exc.filename)), "read")
    return _why(exc)


def _lock(path: Path, *, dry_run: bool) -> int | bool | None:
    """An fd holding ``path`` exclusively, None when another process holds it, or False
    (``dry_run`` only) when there is no such file, so no holder. Nothing is written
    with ``dry_run``; otherwise the file is made if missing. OSError when it cannot be
    opened, or (``dry_run``) could not be made (its message says whose it or its folder
    is)."""
    if not dry_run:
        return acquire(path, wait=False)
    fd = peek(path)
    if fd is False:  # a real run makes it (and its missing folders) where it may
        folder = next(p for p in path.parents if os.path.isdir(p))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, denied(folder, "create files in"), str(path))
    return fd


def _stale_locks(env_dir: Path, *, dry_run: bool, denials: list[Denied]) -> list[Path]:
    """Remove the lock files of keys with no version (nor install staging) that no one
    holds; which ones were (or, with ``dry_run``, would be) removed. Those this user may
    not remove go to ``denials``."""
    try:
        files = sorted((env_dir / ".locks").glob("*.lock"))
    except OSError:
        return []
    removed: list[Path] = []
    versions = env_dir / "versions"
    try:
        os.listdir(versions)
    except PermissionError:
        return []  # which keys have a version cannot be known: the folder is reported
    except OSError:
        pass  # none yet: every lock file is a failed create's

    def has_version(key: str) -> bool:
        return any(os.path.lexists(versions / n) for n in (key, f"{key}.envship-tmp"))

    for path in files:
        key = path.name.removesuffix(".lock")
        if has_version(key):
            continue  # not stale: the loop over versions dealt with its lock
        try:
            fd = _lock(path, dry_run=dry_run)
        except OSError as exc:
            denials.append(Denied(env_dir.name, None, path, _why(exc)))
            continue
        if fd is None or fd is False:
            continue  # a creator holds it (its version is on the way), or it is gone
        try:
            if has_version(key):  # under the lock: a creator made it and let go since
                continue
            if dry_run:
                if why := _envroot.removal_denied(path):
                    denials.append(Denied(env_dir.name, None, path, why))
                    continue
            else:
                try:
                    path.unlink(missing_ok=True)  # a waiter re-checks the inode, starts over
                except OSError as exc:
                    denials.append(Denied(env_dir.name, None, path, _removal_error(path, exc)))
                    continue
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _removal_error(path: Path, exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return _envroot.removal_denied(path) or denied(path.parent, "remove files from")
    return _why(exc)


def _remove_if_empty(
    env_dir: Path, *, dry_run: bool, stale: Collection[Path], denials: list[Denied]
) -> bool:
    """Remove ``env_dir`` when it holds nothing but empty ``versions``, ``.locks`` and
    ``.trash`` folders, by ``rmdir`` alone: each fails on a folder that is not empty, so
    a creator that put anything there since keeps it (and one between its ``mkdir`` and
    its ``open`` makes the folder again, :func:`envship._flock.acquire`). With
    ``dry_run``, the ``stale`` lock files count as gone already. One this user may not
    remove goes to ``denials``."""
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
        if why := _envroot.removal_denied(env_dir):
            denials.append(Denied(env_dir.name, None, env_dir, why))
            return False
        return True
    try:
        for name in (".locks", ".trash", "versions"):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(env_dir / name)
        os.rmdir(env_dir)
    except PermissionError:
        why = _envroot.removal_denied(env_dir) or denied(env_dir.parent, "remove folders from")
        denials.append(Denied(env_dir.name, None, env_dir, why))
        return False
    except OSError:
        return False  # a creator got in first; it keeps what it made
    return True


def _remove(
    env_dir: Path, key: str, *, dry_run: bool, denials: list[Denied]
) -> tuple[VersionInfo, int] | None:
    """Remove one version whose lock the caller holds (with ``dry_run``, only see whether
    it could be): its info and the bytes freed, or None when it is not this user's to
    remove (then in ``denials``, with whose folder refused it)."""
    path = env_dir / "versions" / key
    if why := _envroot.removal_denied(path):
        denials.append(Denied(env_dir.name, key, path, why))
        return None
    info = version_info(env_dir, key, _envroot.current_key(env_dir), size=False)
    size = _envroot.version_size(env_dir, key)  # a half-made one's staging counts too
    info = replace(info, size=size)
    if dry_run:
        return info, size
    try:
        left = _envroot.discard(env_dir, key)
    except OSError as exc:
        denials.append(Denied(env_dir.name, key, path, _why(exc)))
        return None
    with contextlib.suppress(OSError):  # a lock file left costs nothing; gc tries again
        _envroot.key_lock(env_dir, key).unlink(missing_ok=True)  # waiters re-check
    for rest in left:
        denials.append(Denied(env_dir.name, key, rest.path, rest.reason, rest.size))
    return info, max(size - sum(rest.size for rest in left), 0)


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

    What this user may not remove (another user's version, lock file or folder) is left
    and reported in ``denied`` with whose it is; the rest goes on. ``dry_run`` writes
    nothing, and reports what a real run would be denied. What ``versions/`` holds that
    is not a folder (a note, a link) is no version: left, and named in ``strays``.
    """
    cutoff = _cutoff(older_than)
    envs = _envroot.env_dirs(_envroot.require_root(root))
    removed: list[VersionInfo] = []
    busy: list[VersionInfo] = []
    in_use: list[VersionInUse] = []
    denials: list[Denied] = []
    strays: list[Path] = []
    # Candidates and the fd holding each one's lock (None in a dry run when the lock
    # file does not exist: no one can hold it).
    held: list[tuple[Path, str, int | None]] = []
    kept = 0
    freed = 0
    try:
        for env_dir in envs:
            try:
                keys = _envroot.version_keys(env_dir)
                strays.extend(_envroot.strays(env_dir))
            except OSError as exc:  # another user's private environment: left, and said
                denials.append(Denied(env_dir.name, None, env_dir, _unreadable(exc)))
                continue
            for key in keys:
                try:
                    old = _stale(env_dir, key, cutoff)
                except OSError as exc:
                    path = env_dir / "versions" / key
                    denials.append(Denied(env_dir.name, key, path, _unreadable(exc)))
                    continue
                if not old:
                    kept += 1
                    continue
                try:
                    fd = _lock(_envroot.key_lock(env_dir, key), dry_run=dry_run)
                except OSError as exc:  # not even readable: nor ours to take away
                    path = env_dir / "versions" / key
                    denials.append(Denied(env_dir.name, key, path, _why(exc)))
                    continue
                if fd is None:
                    busy.append(version_info(env_dir, key, None, size=False))
                else:
                    held.append((env_dir, key, None if fd is False else fd))
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
            elif done := _remove(env_dir, key, dry_run=dry_run, denials=denials):
                removed.append(done[0])
                freed += done[1]
    finally:
        for _, _, fd in held:
            if fd is not None:
                os.close(fd)
    leftovers = 0
    if not dry_run:
        reported = {d.path for d in denials}
        for env_dir in envs:
            trash = env_dir / ".trash"
            with contextlib.suppress(OSError):
                for leftover in sorted(trash.iterdir()):  # a gc or creator killed before
                    if leftover in reported:  # its rmtree, or one that could not finish
                        continue
                    size = _envroot.disk_size(leftover)
                    left = _envroot.remove_tree(leftover)
                    for rest in left:
                        denials.append(
                            Denied(env_dir.name, None, rest.path, rest.reason, rest.size)
                        )
                    # Space an earlier run did not free: freed now, and said so.
                    leftovers += max(size - sum(rest.size for rest in left), 0)
    stale_locks: list[Path] = []
    empty_envs: list[Path] = []
    for env_dir in envs:
        unheld = _stale_locks(env_dir, dry_run=dry_run, denials=denials)
        stale_locks.extend(unheld)
        if not os.path.lexists(env_dir / "current") and _remove_if_empty(
            env_dir, dry_run=dry_run, stale=set(unheld), denials=denials
        ):
            empty_envs.append(env_dir)
    return GcResult(
        tuple(removed),
        tuple(busy),
        tuple(in_use),
        kept,
        freed + leftovers,
        dry_run,
        tuple(stale_locks),
        tuple(empty_envs),
        tuple(denials),
        leftovers,
        tuple(strays),
    )

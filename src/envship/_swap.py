"""Replacing a folder with a finished one in a single step, and clearing what killed runs
left beside it.

``index export`` and ``kernel install`` build their result in a staging folder next to
the target and then replace the target with it. ``rename(2)`` cannot replace a folder
that is not empty, so that used to take two renames (the old one aside, the new one
in): a reader between them found no target, and a SIGKILL between them left none, the
working one hidden in the staging folder. Linux's ``renameat2(RENAME_EXCHANGE)``
(kernel 3.15, glibc 2.28; see renameat2(2)) swaps two names in one step, so a reader
sees the old folder or the new one, and a run killed at any point leaves one of them in
place. The old one, now in the staging folder, is removed afterwards.

Where the file system refuses the exchange (NFS, FUSE and others answer EINVAL; kernels
before 3.15 ENOSYS) or the C library has no ``renameat2``, the two renames remain: for
that moment the target is missing. The old one is moved into the staging folder, with a
note of its name, so that a run killed between the two renames is undone by the next
run, which puts the old one back when nothing took its place.

Each staging folder has a lock file beside it, created and flocked under a temporary
name and renamed to ``<staging>.lock`` already held, as image builds' work folders do
(:class:`envship._imagelayers.WorkDir`). A lock that can be taken proves its owner gone,
even one killed with SIGKILL, and the next run in the same folder removes what it left
(:func:`sweep`); a running owner's lock cannot be taken, so its folder is never touched.
A folder without a lock (an older envship's) goes only once nothing in it was written
for :data:`STALE_AFTER`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["STALE_AFTER", "Staging", "exchange", "last_write", "sweep"]

#: A leftover that no lock covers is removed once nothing in it changed for this long:
#: a live run writes continuously, so one this quiet is dead (image builds' leftovers
#: too, :func:`envship._imagelayers.sweep`).
STALE_AFTER = 6 * 3600

_AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
_RENAME_EXCHANGE = 2  # <linux/fs.h>
# What renameat2(2) answers when this file system (EINVAL), kernel (ENOSYS) or a
# sandbox's system-call filter (ENOSYS, EOPNOTSUPP) cannot exchange.
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_LOCK = ".lock"
_NEW = ".new"  # a lock file not yet renamed (flocked or about to be)
_OLD = "old"  # in a staging folder: the target, moved aside by the two renames
_TARGET = "target"  # beside it: the target's name, for the next run to put it back

_Renameat2 = Callable[[int, bytes, int, bytes, int], int]


@functools.cache
def _renameat2() -> _Renameat2 | None:
    """glibc's (or musl's) ``renameat2``; None where the C library lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
    function.argtypes += (ctypes.c_uint,)
    function.restype = ctypes.c_int
    return function


def exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` (folders, files or links, of any kind) in one step.

    False, with nothing changed, where this system cannot; OSError otherwise, such as
    FileNotFoundError when either is missing.
    """
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


class Staging:
    """A folder of one run's own in ``parent`` (``<prefix><pid>-<random>``), to build a
    replacement in; with its lock, removed when the ``with`` block ends however it ends.

    Entering first removes what dead runs left in ``parent`` under ``prefix`` (and, by age
    only, under the ``legacy`` prefixes an older envship used); see :func:`sweep`. OSError
    when ``parent`` cannot be written.
    """

    def __init__(self, parent: Path, prefix: str, *, legacy: Sequence[str] = ()) -> None:
        self.parent = parent
        self.prefix = prefix
        self.legacy = tuple(legacy)
        self._held: tuple[int, Path, Path] | None = None  # lock fd, lock file, folder

    @property
    def path(self) -> Path:
        if self._held is None:
            raise RuntimeError("Staging.path is there only inside its with block")
        return self._held[2]

    def __enter__(self) -> Staging:
        sweep(self.parent, self.prefix, legacy=self.legacy)
        token = f"{self.prefix}{os.getpid()}-{secrets.token_hex(4)}"
        lock, folder = self.parent / f"{token}{_LOCK}", self.parent / token
        while True:
            fd, name = tempfile.mkstemp(dir=self.parent, prefix=self.prefix, suffix=_NEW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a file no other run has a use for
                os.rename(name, lock)
            except FileNotFoundError:  # a sweep took it before our flock: a new one
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                Path(name).unlink(missing_ok=True)
                raise
            break
        try:
            folder.mkdir()
        except BaseException:
            lock.unlink(missing_ok=True)
            os.close(fd)
            raise
        self._held = (fd, lock, folder)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            fd, lock, folder = self._held
            self._held = None
            _remove(folder)  # killed in here, the lock is left free: the next run ends it
            lock.unlink(missing_ok=True)
            os.close(fd)

    def replace(self, new: Path, target: Path) -> bool:
        """Put ``new`` (a folder in this staging folder) at ``target``, which must be in
        ``parent``, in place of whatever is there; True when something was replaced. The
        replaced one ends up in the staging folder, removed on leaving the block."""
        if not os.path.lexists(target):
            os.rename(new, target)  # rename(2) replaces an empty folder made meanwhile
            return False
        try:
            if exchange(new, target):
                return True
        except FileNotFoundError:  # removed meanwhile: nothing left to replace
            os.rename(new, target)
            return False
        # No exchange here: two renames. Until the second one, there is no target; a run
        # killed in between is undone by the next one (_restore).
        (self.path / _TARGET).write_text(target.name, encoding="utf-8")
        old = self.path / _OLD
        os.rename(target, old)
        try:
            os.rename(new, target)
        except OSError:
            os.rename(old, target)
            raise
        return True


def sweep(
    parent: Path, prefix: str, *, legacy: Sequence[str] = (), now: float | None = None
) -> list[str]:
    """Remove from ``parent`` what runs that are gone left under ``prefix``; the names
    of the staging folders removed.

    A staging folder goes when its lock file can be locked (its owner is gone); a target
    its owner had moved aside and not replaced is put back first. So does a lock file
    its owner had not renamed yet (``.new``). A folder without a lock file goes when
    nothing in it was written for :data:`STALE_AFTER` seconds; so do those under the
    ``legacy`` prefixes. Nothing a running owner holds is touched, nor a lock file this
    user cannot write (another user's run).
    """
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    names = {e.name for e in entries}
    removed = []
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix):
            if name.startswith(tuple(legacy)) and _quiet(Path(entry.path), now):
                _remove(Path(entry.path))
                removed.append(name)
        elif name.endswith(_LOCK):
            if _clear(parent, name.removesuffix(_LOCK)):
                removed.append(name.removesuffix(_LOCK))
        elif name.endswith(_NEW):  # a lock file its run had not renamed yet
            if _clear(parent, name, folder=False):
                removed.append(name)
        elif f"{name}{_LOCK}" not in names and _quiet(Path(entry.path), now):
            # A folder listed without its lock may be one made while we listed (its lock
            # comes first, but a listing can miss it): only the age rule is safe here.
            _remove(Path(entry.path))
            removed.append(name)
    return removed


def _clear(parent: Path, token: str, *, folder: bool = True) -> bool:
    """Remove the staging folder ``token`` (``folder``; else the lock file ``token``
    alone) when its owner is gone: its lock can be taken."""
    lock = parent / (f"{token}{_LOCK}" if folder else token)
    try:
        # Read-write, never created: NFS grants an exclusive flock only through a
        # descriptor open for writing; a lock that is gone has nothing left to clear.
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its owner runs (or another sweep clears it now)
            return False
        if folder:
            _restore(parent, parent / token)
            _remove(parent / token)
        lock.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def _quiet(path: Path, now: float) -> bool:
    """Whether nothing at or under ``path`` was written for :data:`STALE_AFTER`."""
    return now - last_write(path) > STALE_AFTER


def _restore(parent: Path, folder: Path) -> None:
    """Put back a target a dead owner had moved aside and not replaced (see
    :meth:`Staging.replace`): it is the one that was in place before."""
    old = folder / _OLD
    try:
        name = (folder / _TARGET).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if not name or "/" in name or name in (".", "..") or not os.path.lexists(old):
        return
    target = parent / name
    if not os.path.lexists(target):
        with contextlib.suppress(OSError):
            os.rename(old, target)


def _remove(path: Path) -> None:
    """Remove ``path`` (a folder with what it holds, a file or a link), ignoring errors."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def last_write(path: Path) -> float:
    """The newest mtime of ``path`` and, for a folder, of everything in it."""
    newest = 0.0
    with contextlib.suppress(OSError):
        newest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            for folder, dirs, files in os.walk(path):
                for item in (*dirs, *files):
                    with contextlib.suppress(OSError):
                        newest = max(newest, os.lstat(os.path.join(folder, item)).st_mtime)
    return newest

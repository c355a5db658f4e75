"""Files written through a partial file that its writer holds an flock on.

A blob copied or written into an OCI layout, and the layout's ``index.json``, go through
``.<name>.held-<pid>-<random>.partial`` beside the final name, flocked by the writer until
it is renamed into place: a writer killed with SIGKILL leaves one whose lock anyone can
take, so :func:`sweep_partials` removes it at once, and never one a running writer holds.
Other ``.partial`` files (an older envship's, :func:`envship._atomic.write_atomic`'s) go
once untouched for :data:`envship._swap.STALE_AFTER`, the rule
:func:`envship._swap.sweep` applies to staging folders.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from ._swap import STALE_AFTER

__all__ = ["COPY_CHUNK", "link_new", "sweep_partials", "write_held"]

_HELD = ".held-"  # in a partial blob's name: its writer holds a flock on it
COPY_CHUNK = 1 << 20


def _names_inode(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open at ``fd``."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def link_new(path: Path, dest: Path) -> bool:
    """Hard-link ``path`` at ``dest`` where nothing is there, in one step that leaves
    nothing behind if killed; False where this file system cannot link across (another
    device, no hard links) or a damaged blob is there: the caller copies instead."""
    try:
        os.link(path, dest)
    except FileExistsError:  # a damaged one (an intact one was kept): replaced by a copy
        return False
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            return False
        raise
    return True


def write_held(dest: Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> None:
    """Write ``dest`` through a partial file beside it, flocked while it is written and
    renamed over ``dest`` when whole (the module docstring): a name of its own, so that
    two writers of one blob do not collide, and one whose writer was killed is swept."""
    while True:
        tmp = dest.with_name(f".{dest.name}{_HELD}{os.getpid()}-{secrets.token_hex(4)}.partial")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A sweep may have taken the lock between open and flock and removed the name
            # (the file looked dead): start over under another name.
            if not _names_inode(tmp, fd):
                continue
            with open(os.dup(fd), "wb") as out:
                write(out)
            os.fchmod(fd, mode)  # as write_atomic: a shared layout is read by others
            os.replace(tmp, dest)
            return
        except BaseException:
            if _names_inode(tmp, fd):
                tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)


def _clear_held(path: Path) -> bool:
    """Remove a held partial blob whose writer is gone (its flock can be taken)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Removed while held, so that a writer that opened it in between (_copy_in) finds
        # the name gone once it has the lock, and takes another.
        if not _names_inode(path, fd):
            return False
        path.unlink()
    except OSError:  # its writer runs (or another sweep clears it now)
        return False
    finally:
        os.close(fd)
    return True


def _clear_stale(entry: os.DirEntry[str], now: float) -> bool:
    """Remove a partial file of a writer that holds no lock (:func:`write_atomic`'s, an
    older envship's) once nothing wrote it for :data:`STALE_AFTER`."""
    try:
        if now - entry.stat(follow_symlinks=False).st_mtime <= STALE_AFTER:
            return False
        os.unlink(entry.path)
    except OSError:
        return False
    return True


def sweep_partials(folders: Iterable[Path], *, now: float | None = None) -> list[str]:
    """Remove from ``folders`` the partial files dead writers left; their names."""
    now = time.time() if now is None else now
    entries: list[os.DirEntry[str]] = []
    for folder in folders:
        with contextlib.suppress(OSError):
            entries += list(os.scandir(folder))
    removed = []
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".partial")):
            continue
        held = _HELD in entry.name
        if _clear_held(Path(entry.path)) if held else _clear_stale(entry, now):
            removed.append(entry.name)
    return removed

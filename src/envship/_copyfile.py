"""A file of its own with another file's bytes, and the sha256 of what it holds.

An index export must not share inodes with the store: a hard link would hand the
store's content-addressed file to whoever administers the served folder (``chown -R``,
``chmod -R a+w`` reach the store through it; a write into the export changes the store's
bytes), and after ``fetch --verify`` replaced a damaged store file the export would keep
the damaged inode. So each file is a clone where the file system can share extents
copy-on-write (Linux ``FICLONE``: btrfs, XFS, bcachefs, ZFS 2.2+; a new inode that takes
no space until either side is written), else a copy. A copy is hashed while it is
written, in one read of the source; a clone is hashed by reading it back, which reads
the shared extents once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FICLONE", "Placed", "copy_hashed"]

#: ``_IOW(0x94, 9, int)`` from linux/fs.h (the former BTRFS_IOC_CLONE, generic since 4.5).
FICLONE = 0x40049409
_CHUNK = 1 << 20
# What a file system or kernel without clones answers (ioctl_ficlone(2)): ENOTTY or
# EINVAL (no such ioctl), EOPNOTSUPP (the file system has none), EXDEV (source and
# destination on two file systems), EPERM (some FUSE and overlayfs mounts). Anything
# else (EIO, ENOSPC) is a real failure and is raised.
_NO_CLONE = frozenset(
    {errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EPERM}
)


@dataclass(frozen=True, slots=True)
class Placed:
    """What :func:`copy_hashed` wrote."""

    sha256: str  # of the bytes at the destination
    size: int
    cloned: bool  # a copy-on-write clone (no space taken), else a copy


def copy_hashed(src: Path, dest: Path, *, mode: int = 0o666) -> Placed:
    """Create ``dest`` (which must not exist) with the bytes of ``src``: a clone where
    the file system allows it, else a copy hashed as it is written.

    ``mode`` is filtered through the umask, like any new file. An ``OSError`` names the
    file it concerns (``filename``: ``src`` for a read, ``dest`` for a write), so a full
    disk can say where. ``dest`` is left behind on failure: the caller writes into a
    staging folder that goes as a whole.
    """
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _named(exc, src) from None
    try:
        try:
            # Read and write: a clone is hashed through the same descriptor.
            dest_fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise _named(exc, dest) from None
        try:
            if _clone(src_fd, dest_fd):
                return Placed(*_hash_fd(dest_fd, dest), cloned=True)
            return Placed(*_copy_fd(src_fd, dest_fd, src, dest), cloned=False)
        finally:
            os.close(dest_fd)
    finally:
        os.close(src_fd)


def _clone(src_fd: int, dest_fd: int) -> bool:
    try:
        fcntl.ioctl(dest_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _NO_CLONE:
            return False
        raise
    return True


def _hash_fd(fd: int, path: Path) -> tuple[str, int]:
    """The sha256 and size of what ``fd`` holds, read from its current offset (a new
    clone's: 0)."""
    h, size = hashlib.sha256(), 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
            size += n
    except OSError as exc:
        raise _named(exc, path) from None
    return h.hexdigest(), size


def _copy_fd(src_fd: int, dest_fd: int, src: Path, dest: Path) -> tuple[str, int]:
    """One pass: each chunk read from ``src`` is hashed and written to ``dest``. The
    hash is of the bytes written; a short or failed write raises (``dest`` named)."""
    h, size = hashlib.sha256(), 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while True:
        try:
            n = os.readv(src_fd, [buf])
        except OSError as exc:
            raise _named(exc, src) from None
        if n == 0:
            return h.hexdigest(), size
        chunk = view[:n]
        h.update(chunk)
        size += n
        try:
            while chunk:
                chunk = chunk[os.write(dest_fd, chunk) :]
        except OSError as exc:
            raise _named(exc, dest) from None


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` with the file it concerns, as ``open`` would have named it."""
    if exc.filename is None:
        exc.filename = str(path)
    return exc

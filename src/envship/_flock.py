"""``flock`` on lock files that their holders may delete.

A store, an install destination and a shared environment root are each guarded by lock
files, and the holders remove those files when done (``fetch``, ``gc``). A waiter that
wakes up holding a lock on a file someone unlinked meanwhile would not exclude a
newcomer who creates the file afresh, so after acquiring we check the path still names
the inode we locked, and start over if not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["acquire", "locked"]


def acquire(path: Path, *, shared: bool = False, wait: bool = True) -> int | None:
    """The fd holding a lock on ``path``, or None when it is busy and ``wait`` is False."""
    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
        except FileNotFoundError:  # the folder was removed between our two calls
            continue
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[int]:
    """Hold a lock on ``path`` for the ``with`` block, waiting for it as long as needed.

    The block gets the lock's fd: a child process given it keeps the lock held while it
    runs (flock belongs to the open file, which the child then shares)."""
    fd = acquire(path, shared=shared, wait=True)
    assert fd is not None  # a blocking flock returns only when held
    try:
        yield fd
    finally:
        os.close(fd)

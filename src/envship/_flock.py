"""``flock`` on lock files that their holders may delete, and made by other users.

A store, an install destination and a shared environment root are each guarded by lock
files, and the holders remove those files when done (``fetch``, ``gc``). A waiter that
wakes up holding a lock on a file someone unlinked meanwhile would not exclude a
newcomer who creates the file afresh, so after acquiring we check the path still names
the inode we locked, and start over if not.

On a shared volume a lock file is often another user's (an admin made the version, a
notebook user points ``current`` back at it). ``flock(2)`` needs no write access: a lock
taken through a read-only descriptor excludes the same way, so an existing file we may
not write is opened read-only. Only creating one needs the folder's write permission;
when that too is denied, the error says whose the folder or file is, which is what the
user must act on. Folders and files made here under a folder shared by its group
(setgid and group-writable, e.g. ``chmod 2775``) are made group-writable as well, so
the next member of the group can use them whatever this user's umask is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "acquire",
    "denied",
    "locked",
    "make_folders",
    "owner",
    "peek",
    "share_with_group",
    "whom",
]


def owner(st: os.stat_result) -> str:
    """``root (uid 0)``: the user a stat names, by name when this machine knows it."""
    try:
        return f"{pwd.getpwuid(st.st_uid).pw_name} (uid {st.st_uid})"
    except KeyError:
        return f"uid {st.st_uid}"


def whom() -> str:
    """This process's user, as :func:`owner` writes it."""
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"group {grp.getgrgid(gid).gr_name}"
    except KeyError:
        return f"gid {gid}"


def denied(path: Path, action: str) -> str:
    """Why this user may not ``action`` (``"write"``, ``"create files in"``) ``path``:
    whose it is and its mode, or what stops it (a read-only file system)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if not os.access(path, os.W_OK) and _read_only_fs(path):
        return f"{path} is on a read-only file system"
    return (
        f"{path} is owned by {owner(st)}, {_group(st.st_gid)}, mode "
        f"{stat.filemode(st.st_mode)}: {whom()} cannot {action} it"
    )


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _shared(folder: Path) -> bool:
    """Whether ``folder`` is shared with its group: setgid and group-writable."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_ISGID and mode & stat.S_IWGRP)


def share_with_group(path: Path, fd: int | None = None) -> None:
    """Add group write to ``path`` (a file or folder this user just made; ``fd`` open on
    it, if any) when its folder is shared with its group: the kernel gave it the
    folder's group (setgid), but the creator's umask took the group's write bit."""
    if not _shared(path.parent):
        return
    own = fd is None
    with contextlib.suppress(OSError):  # not ours to change: the owner's umask stays
        if own:  # through an fd: a link swapped in meanwhile is never followed
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        assert fd is not None
        try:
            st = os.fstat(fd)
            if st.st_uid == os.geteuid() and not st.st_mode & stat.S_IWGRP:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IWGRP)
        finally:
            if own:
                os.close(fd)


def make_folders(folder: Path) -> None:
    """``mkdir -p folder``, each folder made group-writable under a group-shared one; a
    denial says whose the folder that refused it is."""
    while True:
        missing: list[Path] = []
        for p in (folder, *folder.parents):
            if p.is_dir():
                break
            missing.append(p)
        try:
            for p in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    p.mkdir()
                    share_with_group(p)
            return
        except FileNotFoundError:  # a parent was removed meanwhile (gc's rmdir): again
            continue
        except PermissionError as exc:
            raise PermissionError(
                exc.errno, denied(p.parent, "create folders in"), str(p)
            ) from None


def _open(path: Path) -> int:
    """An fd on ``path`` to flock: read-write (made if missing), or read-only when the
    file exists and this user may not write it (flock excludes through either)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except PermissionError as exc:
        if not os.path.exists(path):
            raise PermissionError(
                exc.errno, denied(path.parent, "create files in"), str(path)
            ) from None
        try:
            return os.open(path, os.O_RDONLY)
        except PermissionError as again:
            raise PermissionError(again.errno, denied(path, "read"), str(path)) from None
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        try:  # a read-only mount: locks on the files it has still work there
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise exc from None
    share_with_group(path, fd)
    return fd


def acquire(path: Path, *, shared: bool = False, wait: bool = True) -> int | None:
    """The fd holding a lock on ``path``, or None when it is busy and ``wait`` is False.

    PermissionError when the file cannot be opened at all (its message says whose it or
    its folder is); OSError (EROFS) when it is missing on a read-only file system."""
    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    while True:
        make_folders(path.parent)
        try:
            fd = _open(path)
        except FileNotFoundError:  # the folder or file was removed between our calls
            continue
        if not _flock(fd, flags):
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


def peek(path: Path) -> int | bool | None:
    """Without writing anything: an fd holding ``path``'s exclusive lock, None when
    another process holds it, or False when there is no such file (so no holder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except PermissionError as exc:
        raise PermissionError(exc.errno, denied(path, "read"), str(path)) from None
    return fd if _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) else None


def _flock(fd: int, flags: int) -> bool:
    """``flock(fd, flags)``; False (``fd`` closed) when another process holds the lock
    and ``flags`` say not to wait; ``fd`` is closed on any error too."""
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        os.close(fd)
        return False
    except BaseException:
        os.close(fd)
        raise
    return True


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

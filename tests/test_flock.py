"""``envship._flock`` with lock files and folders of other users: a read-only descriptor
still locks, what cannot be opened says whose it is, a read-only mount, a folder shared
by its group, and ``peek`` that writes nothing. Real locks between real processes (uid
1000 under ``setpriv``, as in :mod:`test_shared_users`)."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envship._flock import acquire, peek
from test_inuse import Bind, bind
from test_shared_users import GID, IMPORTS, SYSTEM_PY, UID, USER, User, shared, user

__all__ = ["bind", "shared", "user"]  # fixtures of other modules, used here too

# As uid 1000: take the lock on argv[1] (exclusive, or shared with argv[2] == "shared")
# without waiting, say "held" or "busy", and keep it until stdin closes.
TAKE = (
    "import sys; from pathlib import Path; from envship._flock import acquire\n"
    "fd = acquire(Path(sys.argv[1]), shared=sys.argv[2] == 'shared', wait=False)\n"
    "print('busy' if fd is None else 'held', flush=True); sys.stdin.read()\n"
)
# As uid 1000: what acquire says about argv[1], on one line.
ASK = (
    "import sys; from pathlib import Path; from envship._flock import acquire\n"
    "try:\n    acquire(Path(sys.argv[1]))\n"
    "except OSError as exc:\n    print(type(exc).__name__, exc.errno, exc.strerror, sep='|')\n"
    "else:\n    print('held')\n"
)


@pytest.fixture
def folder(shared: Path) -> Path:
    """Root's folder, 0755, with root's lock file ``x.lock`` in it (0644)."""
    f = shared / "locks"
    f.mkdir(mode=0o755)
    (f / "x.lock").touch(mode=0o644)
    return f


@pytest.fixture
def taking(user: User) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.communicate("", timeout=60)


def take(path: Path, how: str, started: list[subprocess.Popen[str]]) -> str:
    """What uid 1000 got taking ``path``'s lock; it holds it until the test ends."""
    env = {"PYTHONPATH": os.pathsep.join(map(str, IMPORTS)), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [*USER, SYSTEM_PY, "-c", TAKE, str(path), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    started.append(proc)
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


@pytest.mark.parametrize("how", ["exclusive", "shared"])
def test_another_users_lock_file_is_locked_through_a_read_only_descriptor(
    folder: Path, user: User, taking: list[subprocess.Popen[str]], how: str
) -> None:
    """uid 1000 may not write root's 0644 lock file, yet its lock excludes root's and
    root's excludes it: flock(2) does not care how the file was opened."""
    lock = folder / "x.lock"
    mine = acquire(lock, shared=True, wait=False)  # root holds it shared
    assert mine is not None
    theirs = take(lock, how, taking)
    assert theirs == ("held" if how == "shared" else "busy")
    os.close(mine)
    if how == "shared":
        assert acquire(lock, wait=False) is None  # their shared lock keeps root out
    else:
        assert take(lock, how, taking) == "held"
        assert acquire(lock, shared=True, wait=False) is None
    assert stat.S_IMODE(lock.stat().st_mode) == 0o644 and lock.stat().st_uid == 0


# name: (arrange the folder, path asked about (relative to it), what acquire says)
DENIED: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "no-file-in-roots-folder": (
        lambda f: None,
        "y.lock",
        "PermissionError|13|{f} is owned by root (uid 0), group root, mode drwxr-xr-x: "
        "cloudsdk (uid 1000) cannot create files in it",
    ),
    "roots-file-0600": (
        lambda f: (f / "x.lock").chmod(0o600),
        "x.lock",
        "PermissionError|13|{f}/x.lock is owned by root (uid 0), group root, mode "
        "-rw-------: cloudsdk (uid 1000) cannot read it",
    ),
    "no-folder-in-roots-folder": (
        lambda f: None,
        "sub/y.lock",
        "PermissionError|13|{f} is owned by root (uid 0), group root, mode drwxr-xr-x: "
        "cloudsdk (uid 1000) cannot create folders in it",
    ),
}


@pytest.mark.parametrize("case", sorted(DENIED))
def test_what_cannot_be_opened_says_whose_it_is(folder: Path, user: User, case: str) -> None:
    arrange, rel, said = DENIED[case]
    arrange(folder)
    done = user.run("-c", ASK, str(folder / rel))
    assert done.stdout.strip() == said.format(f=folder), done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["x.lock"]


def test_a_read_only_mount_locks_the_files_it_has(folder: Path, bind: Bind, shared: Path) -> None:
    """A root mounted read-only (an instance given the volume read-only): its lock files
    lock; a missing one cannot be made and says so (EROFS), nothing is retried forever."""
    point = bind(folder, shared / "ro")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(point)], check=True)
    fd = acquire(point / "x.lock", wait=False)
    assert fd is not None
    try:
        assert acquire(folder / "x.lock", wait=False) is None  # the same file, locked
    finally:
        os.close(fd)
    with pytest.raises(OSError) as caught:
        acquire(point / "y.lock")
    assert caught.value.errno == 30  # EROFS


@pytest.mark.parametrize("parent_mode", [0o2775, 0o0777], ids=["group-shared", "plain"])
def test_what_a_member_makes_under_a_group_shared_folder_is_group_writable(
    shared: Path, user: User, parent_mode: int
) -> None:
    """``chgrp 100 F; chmod 2775 F``: folders and the lock file uid 1000 makes (umask
    022) in F get group 100 and its write bit, so the next member can use them; under
    a folder that is not shared (no setgid), the umask alone decides."""
    parent = shared / "root"
    parent.mkdir()
    os.chown(parent, 0, GID)
    parent.chmod(parent_mode)
    lock = parent / "env" / ".locks" / "k.lock"
    code = "import sys; from pathlib import Path; from envship._flock import acquire\n"
    code += "acquire(Path(sys.argv[1]))\n"
    done = user.run("-c", code, str(lock), umask=0o022)
    assert done.returncode == 0, done.stderr
    grouped = parent_mode & stat.S_ISGID
    for path, made in ((lock.parent.parent, 0o755), (lock.parent, 0o755), (lock, 0o644)):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (UID, GID)  # group 100: theirs, or inherited
        want = made | (stat.S_IWGRP | (stat.S_ISGID if path.is_dir() else 0) if grouped else 0)
        assert stat.S_IMODE(st.st_mode) == want, (path, oct(st.st_mode))


def test_peek_writes_nothing(tmp_path: Path) -> None:
    """``peek``: False for a file that is not there (and it stays not there), None while
    another open file holds the lock, else an fd holding it."""
    path = tmp_path / "x.lock"
    assert peek(path) is False and not path.exists()
    path.touch(mode=0o444)
    other = os.open(path, os.O_RDONLY)
    fcntl.flock(other, fcntl.LOCK_SH)
    assert peek(path) is None
    os.close(other)
    fd = peek(path)
    assert isinstance(fd, int) and fd is not False
    try:
        assert acquire(path, shared=True, wait=False) is None
    finally:
        os.close(fd)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444

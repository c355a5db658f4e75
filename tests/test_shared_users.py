"""A shared environment root written by one user and used by another, as on SageMaker or
JupyterHub: an admin (here root) makes versions on the shared volume, a notebook user
(uid 1000, gid 100) runs them, checks them, collects garbage and points ``current``.

Every step of the other user is the real CLI run under ``setpriv`` as uid 1000. The
interpreter is the system's ``/usr/bin/python3.11``, which that user can run (the test
runner's own may live under root's private home), with this checkout's ``src`` and the
test venv's site-packages (pure-Python dependencies, readable by all) on its path; the
versions are made with that interpreter too, so that the user can run them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

import envship
from envship.envs import USED_NAME, EnvVersion, create_env
from envship.lockfile import LockFile
from envship.store import Store
from test_install import build_wheels, stocked_store, target, write_lock

UID, GID = 1000, 100  # SageMaker Studio's default user and group
USER = ("setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups")
SYSTEM_PY = "/usr/bin/python3.11"
IMPORTS = (Path(envship.__file__).parents[1], Path(click.__file__).parents[1])
DAY = 24 * 3600


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="envship-users-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class User:
    """uid 1000 with a home of its own, running envship's real CLI."""

    home: Path

    def run(self, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "UV_CACHE_DIR": str(self.home / "uv-cache"),
            "PYTHONPATH": os.pathsep.join(map(str, IMPORTS)),
            "LC_ALL": "C.UTF-8",
        }
        return subprocess.run(
            [*USER, SYSTEM_PY, "-c", CLI, f"{umask:o}", *args],
            env=env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def envship(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run("-m", "envship", *args)
        assert "Traceback" not in done.stderr, done.stderr
        return done


# The user's umask, then ``-m envship ARGS`` or ``-c CODE ARGS`` as python takes them.
CLI = (
    "import os, runpy, sys; os.umask(int(sys.argv[1], 8)); "
    "mode, what = sys.argv[2:4]; sys.argv = [what, *sys.argv[4:]]; "
    "runpy.run_module(what, run_name='__main__', alter_sys=True) if mode == '-m' "
    "else exec(compile(what, '-c', 'exec'), {'__name__': '__main__'})"
)


@pytest.fixture
def user(shared: Path) -> User:
    home = shared / "home"
    home.mkdir()
    os.chown(home, UID, GID)
    user = User(home)
    # What the user runs must be readable by them, or every result below is about that.
    seen = user.run("-c", "import envship.cli.main, click, packaging; print('ok')")
    assert seen.stdout == "ok\n", f"uid {UID} cannot run envship from {IMPORTS}: {seen.stderr}"
    return user


@dataclass(frozen=True)
class Made:
    """Two locks for an environment ``ds`` under ``root``, a store holding both, all
    readable by every user."""

    root: Path
    store: Store
    old: LockFile
    new: LockFile

    def create(self, lock: LockFile, name: str = "ds") -> EnvVersion:
        """A version made by root, with the interpreter uid 1000 can run."""
        return create_env(lock, self.store, self.root, name=name, python=SYSTEM_PY)


@pytest.fixture
def made(shared: Path) -> Made:
    wheels = build_wheels(shared / "dist")
    picked = [wheels["alpha"], wheels["beta"]]
    old = write_lock(shared / "old.toml", picked, targets=[target()])
    new = write_lock(shared / "new.toml", [wheels["alpha"], wheels["beta11"]], targets=[target()])
    store = stocked_store(shared / "store", list(wheels.values()))
    for folder, dirs, files in os.walk(shared):  # as a shared volume's admin would leave it
        for name in (*dirs, *files):
            p = Path(folder, name)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))
    return Made(shared / "envs", store, old, new)


def age(path: Path, days: float) -> float:
    stamp = time.time() - days * DAY
    os.utime(path, (stamp, stamp))
    return stamp


def give(path: Path, uid: int = UID, gid: int = GID) -> None:
    """``chown -R -h uid:gid path``: as if that user had made it."""
    os.lchown(path, uid, gid)
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(folder, name), uid, gid)


def snapshot(root: Path) -> dict[str, tuple[int, ...]]:
    """Everything under ``root`` that a write would change (content, names, owners,
    modes, times; ctime moves with any chmod or chown)."""
    found: dict[str, tuple[int, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in (".", *dirs, *files):
            st = os.lstat(os.path.join(folder, name))
            rel = os.path.relpath(os.path.join(folder, name), root)
            found[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
            found[rel] += (st.st_ctime_ns,)
    return found


# --- the use stamp ------------------------------------------------------------------------


def test_another_users_check_refreshes_the_stamp_and_gc_keeps_the_version(
    made: Made, user: User
) -> None:
    """The audit's case: root made the version, uid 1000 uses it every day; that use
    must count, or ``gc --older-than`` removes what the user works with."""
    used = made.create(made.old)
    stamp = used.path / USED_NAME
    assert stat.S_IMODE(stamp.stat().st_mode) == 0o666 and stamp.stat().st_uid == 0
    age(stamp, 30)

    done = user.envship("env", "check", "ds", "--root", str(made.root))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # recorded: nothing to say
    assert time.time() - stamp.stat().st_mtime < 3600

    made.create(made.new)  # current moves on; the user's use a minute ago still counts
    done = user.envship("env", "gc", "--root", str(made.root), "--older-than", "1d", "--json")
    result = json.loads(done.stdout)
    assert (result["removed"], result["kept"], result["denied"]) == ([], 2, [])
    assert used.path.is_dir()


def test_an_old_0644_stamp_is_reported_then_opened_by_its_owners_next_use(
    made: Made, user: User
) -> None:
    """A stamp an earlier envship made 0644: the user's use cannot be recorded, and the
    user is told so (text and JSON), never silently; the owner's next use makes it
    writable for all, and the user's uses count from then on."""
    used = made.create(made.old)
    stamp = used.path / USED_NAME
    stamp.chmod(0o644)
    was = age(stamp, 30)
    check = ("env", "check", "ds", "--root", str(made.root))

    done = user.envship(*check)
    assert done.returncode == 0 and done.stdout.startswith(f"ds version {used.key} ")
    (said,) = [n for n in done.stderr.splitlines() if "this use is not recorded" in n]
    assert said.startswith("note: this use is not recorded (")
    assert f"{stamp} is owned by root (uid 0)" in said
    assert f"mode -rw-r--r--: cloudsdk (uid {UID}) cannot write it" in said
    assert "`envship env gc --older-than` may remove the version" in said
    done = user.envship(*check, "--json")
    assert done.returncode == 0 and done.stderr == ""  # JSON mode: all of it on stdout
    data = json.loads(done.stdout)
    assert data["use_recorded"] is False
    (note,) = [n for n in data["notes"] if n.startswith("this use is not recorded (")]
    assert f"{stamp} is owned by root (uid 0)" in note
    assert stamp.stat().st_mtime == was

    # The owner's next use (root's `env check` here) opens the stamp to everyone.
    from envship.cli.main import main

    assert main(["env", "check", "ds", "--root", str(made.root)]) == 0
    assert stat.S_IMODE(stamp.stat().st_mode) == 0o666
    age(stamp, 30)
    done = user.envship(*check, "--json")
    assert json.loads(done.stdout)["use_recorded"] is True
    assert time.time() - stamp.stat().st_mtime < 3600


def test_verify_passes_the_writable_stamp(made: Made) -> None:
    """The stamp is 0666 in an otherwise read-only version: verify must not call it a
    difference (it is bookkeeping, passed by name, like the install marker)."""
    from envship.cli.main import main

    used = made.create(made.old)
    assert stat.S_IMODE((used.path / USED_NAME).stat().st_mode) == 0o666
    args = ["verify", str(used.path), "--lock", str(made.old.path), "--full"]
    assert main([*args, "--store", str(made.store.root)]) == 0


# --- gc run by a user who may not remove everything ---------------------------------------

Arrange = Callable[[Path, str], None]  # (env_dir, old key): make ownership so


def _mine_but(*theirs: str) -> Arrange:
    """The whole environment the user's except these paths (relative to it; ``{key}``
    is the old version's key), which stay root's."""

    def arrange(env: Path, key: str) -> None:
        give(env)
        for rel in theirs:
            p = env / rel.format(key=key)
            os.lchown(p, 0, 0)
            if p.is_dir():
                p.chmod(0o755)

    return arrange


def _lock_file(mode: int) -> Arrange:
    def arrange(env: Path, key: str) -> None:
        give(env)
        lock = env / ".locks" / f"{key}.lock"
        os.chown(lock, 0, 0)
        lock.chmod(mode)

    return arrange


def _no_lock_file_in_roots_locks(env: Path, key: str) -> None:
    give(env)
    (env / ".locks" / f"{key}.lock").unlink()
    os.chown(env / ".locks", 0, 0)


def _sticky_versions(env: Path, key: str) -> None:
    """``versions`` is root's and sticky (mode 1777, as /tmp); the old version is root's
    though open to all inside: only its owner (or the folder's) may move it away."""
    give(env)
    os.chown(env / "versions", 0, 0)
    (env / "versions").chmod(0o1777)
    os.chown(env / "versions" / key, 0, 0)
    (env / "versions" / key).chmod(0o777)


def _nothing_mine(env: Path, key: str) -> None:
    """All of it root's, as an admin made it: the user may not write anything."""


# name: (arrange, what stops the real run; None when the old version goes)
CASES: dict[str, tuple[Arrange, str | None]] = {
    "all-the-users": (lambda env, key: give(env), None),
    "lock-file-of-root-readable": (_lock_file(0o644), None),
    "lock-file-of-root-unreadable": (
        _lock_file(0o600),
        "{env}/.locks/{key}.lock is owned by root (uid 0), group root, mode -rw-------: "
        "cloudsdk (uid 1000) cannot read it",
    ),
    "no-lock-file-and-locks-folder-of-root": (
        _no_lock_file_in_roots_locks,
        "{env}/.locks is owned by root (uid 0), group root, mode drwxr-xr-x: "
        "cloudsdk (uid 1000) cannot create files in it",
    ),
    "version-of-root": (
        _mine_but("versions/{key}"),
        "{env}/versions/{key} is owned by root (uid 0), group root, mode drwxr-xr-x: "
        "cloudsdk (uid 1000) cannot remove it",
    ),
    "a-folder-inside-of-root": (
        _mine_but("versions/{key}/lib/python3.11/site-packages/beta"),
        "{env}/versions/{key}/lib/python3.11/site-packages/beta is owned by root (uid 0), "
        "group root, mode drwxr-xr-x: cloudsdk (uid 1000) cannot delete files in it",
    ),
    "versions-folder-of-root": (
        _mine_but("versions"),
        "{env}/versions is owned by root (uid 0), group root, mode drwxr-xr-x: "
        "cloudsdk (uid 1000) cannot remove folders from it",
    ),
    "sticky-versions-folder-of-root": (
        _sticky_versions,
        "{env}/versions is sticky (mode drwxrwxrwt) and {key} is owned by root (uid 0): "
        "cloudsdk (uid 1000) cannot remove it",
    ),
    "everything-of-root": (
        _nothing_mine,
        "{env}/versions is owned by root (uid 0), group root, mode drwxr-xr-x: "
        "cloudsdk (uid 1000) cannot remove folders from it",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gc_by_a_user_removes_what_it_may_and_reports_the_rest(
    case: str, made: Made, user: User
) -> None:
    """``env gc`` by uid 1000 over versions of several owners: no traceback, exit 0,
    each version it may not remove reported with whose folder refused it (and no
    other), in --json and text; ``--dry-run`` predicts exactly that and writes nothing."""
    arrange, stops = CASES[case]
    old = made.create(made.old)
    current = made.create(made.new)
    age(old.path / USED_NAME, 30)
    env = made.root / "ds"
    arrange(env, old.key)
    gc = ("env", "gc", "--root", str(made.root), "--older-than", "1d")
    reason = stops.format(env=env, key=old.key) if stops else None

    before = snapshot(made.root)
    dry = user.envship(*gc, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert snapshot(made.root) == before  # a dry run writes nothing, takes nothing
    real = user.envship(*gc, "--json")
    assert real.returncode == 0, real.stderr

    for done in (dry, real):
        result = json.loads(done.stdout)
        assert result["kept"] == 1 and result["busy"] == result["in_use"] == []
        if reason is None:
            assert [v["key"] for v in result["removed"]] == [old.key]
            assert result["denied"] == []
        else:
            assert result["removed"] == [] and result["freed"] == 0
            assert result["denied"] == [
                {
                    "name": "ds",
                    "key": old.key,
                    "path": str(old.path),
                    "reason": reason,
                    "size": None,
                }
            ]
    assert old.path.is_dir() == (reason is not None)
    assert current.path.is_dir() and (env / "current").resolve() == current.path
    assert not any((env / ".trash").iterdir()) if (env / ".trash").exists() else True
    if reason is not None:  # nothing of it was touched
        assert {k: v for k, v in snapshot(made.root).items() if old.key in k} == {
            k: v for k, v in before.items() if old.key in k
        }


def test_gc_by_a_user_passes_over_an_environment_it_may_not_read(made: Made, user: User) -> None:
    """One environment made private (umask 077) must not stop gc of the others."""
    made.create(made.new, name="open")
    old = made.create(made.old, name="ds")
    made.create(made.new, name="ds")
    age(old.path / USED_NAME, 30)
    give(made.root / "ds")  # the user's own environment: theirs to collect
    private = made.root / "private"
    made.create(made.new, name="private")
    (private / "versions").chmod(0o700)
    gc = ("env", "gc", "--root", str(made.root), "--older-than", "1d", "--json")
    for extra in (("--dry-run",), ()):
        done = user.envship(*gc, *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert [v["key"] for v in result["removed"]] == [old.key]
        (denial,) = result["denied"]
        assert (denial["name"], denial["key"], denial["path"]) == ("private", None, str(private))
        assert denial["reason"].startswith(f"{private / 'versions'} is owned by root (uid 0)")
    assert not old.path.exists()


def test_gc_text_by_a_user_names_whose_version_it_could_not_remove(made: Made, user: User) -> None:
    mine = made.create(made.old, name="mine")
    theirs = made.create(made.old)
    made.create(made.new)
    made.create(made.new, name="mine")
    for v in (mine, theirs):
        age(v.path / USED_NAME, 30)
    give(made.root / "mine")
    give(made.root / "ds")
    os.chown(theirs.path, 0, 0)  # root's: its own folder refuses to move
    gc = ("env", "gc", "--root", str(made.root), "--older-than", "1d")

    dry = user.envship(*gc, "--dry-run").stdout.splitlines()
    assert dry[0].startswith(f"would remove mine/{mine.key} ") and dry[0].endswith("iB")
    assert dry[1] == (
        f"would not be allowed to remove ds/{theirs.key}: {theirs.path} is owned by root "
        f"(uid 0), group root, mode drwxr-xr-x: cloudsdk (uid {UID}) cannot remove it"
    )
    assert dry[2].startswith("would remove 1 version(s), ")
    assert dry[2].endswith(
        "; kept 2 current or recently used; 1 version(s) not this user's to remove"
    )
    done = user.envship(*gc)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"removed mine/{mine.key} ")
    assert lines[1] == dry[1].replace("would not be allowed to", "could not")
    assert lines[2].startswith("removed 1 version(s), ")
    assert not mine.path.exists() and theirs.path.is_dir()


# --- pointing current back at a version another user made ---------------------------------


def test_a_user_points_current_back_at_a_version_root_made_in_the_users_root(
    made: Made, user: User
) -> None:
    """The user's own root holds a version root made (its folder and lock file root's,
    0755 and 0644): ``env create`` with that version's lock points ``current`` back at
    it; the lock is taken through a read-only descriptor."""
    theirs = made.create(made.old)
    mine = made.create(made.new)
    env = made.root / "ds"
    give(made.root)
    for p in (theirs.path, env / ".locks" / f"{theirs.key}.lock"):
        os.lchown(p, 0, 0)
    age(theirs.path / USED_NAME, 30)
    assert (env / "current").resolve() == mine.path

    create = ("env", "create", "ds", "--root", str(made.root), "--store", str(made.store.root))
    done = user.envship(*create, "--lock", str(made.old.path), "--python", SYSTEM_PY)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ds is current at existing version {theirs.key}: {theirs.python}\n"
    assert done.stderr == ""
    assert os.readlink(env / "current") == f"versions/{theirs.key}"
    assert time.time() - (theirs.path / USED_NAME).stat().st_mtime < 3600  # a use, recorded


@pytest.mark.parametrize(
    ("lock", "refused"),
    [
        ("old", "{env} is owned by root (uid 0), group root, mode drwxr-xr-x: "
         "cloudsdk (uid 1000) cannot change it"),
        ("new", "{env}/.locks is owned by root (uid 0), group root, mode drwxr-xr-x: "
         "cloudsdk (uid 1000) cannot create files in it"),
    ],
    ids=["point-current-at-roots-version", "make-a-version-of-its-own"],
)  # fmt: skip
def test_what_root_owns_is_named_when_a_user_may_not_change_it(
    made: Made, user: User, lock: str, refused: str
) -> None:
    """An environment root made entirely: the user can neither point its ``current``
    nor add a version; the error names the folder and its owner, not just the errno."""
    made.create(made.old)
    env = made.root / "ds"
    (env / "current").unlink()  # as if no version were current yet
    chosen = made.old if lock == "old" else made.new
    create = ("env", "create", "ds", "--root", str(made.root), "--store", str(made.store.root))
    done = user.envship(*create, "--lock", str(chosen.path), "--python", SYSTEM_PY)
    assert done.returncode == 1
    assert refused.format(env=env) in done.stderr.splitlines()[0]
    assert not (env / "current").exists()


# --- a root shared by its group (setgid, group-writable) -----------------------------------


def test_what_a_user_makes_in_a_group_shared_root_is_its_groups_too(made: Made, user: User) -> None:
    """A root ``chgrp 100; chmod 2775``: the lock folder, lock file and trash folder one
    member makes (umask 022) get the group and its write bit, so the next member (root
    here, or anyone in group 100) can use them; ``gc`` by that member then removes the
    version it made."""
    made.root.mkdir()
    os.chown(made.root, 0, GID)
    made.root.chmod(0o2775)
    old = made.create(made.old)
    made.create(made.new)
    give(made.root / "ds")  # the member made the environment
    shutil.rmtree(made.root / "ds" / ".locks")
    age(old.path / USED_NAME, 30)

    done = user.envship("env", "gc", "--root", str(made.root), "--older-than", "1d", "--json")
    assert [v["key"] for v in json.loads(done.stdout)["removed"]] == [old.key]
    for rel, kind in ((".locks", stat.S_IFDIR), (".trash", stat.S_IFDIR)):
        st = (made.root / "ds" / rel).stat()
        assert stat.S_IFMT(st.st_mode) == kind and st.st_gid == GID
        assert st.st_mode & (stat.S_ISGID | stat.S_IWGRP) == stat.S_ISGID | stat.S_IWGRP, rel

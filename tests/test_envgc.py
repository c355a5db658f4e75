"""``env gc`` and what a failed ``env create`` leaves: the key's lock file and, for a first
version, an environment folder with nothing in it. Real creates (a store missing the
artifacts), a real creator process paused while it holds its key's lock, the real CLI;
and a real process using a version through a bind mount of the root while gc runs
through the root itself (or the other way round), or through a bind mount of only the
version's site-packages, here or in its own mount namespace."""

from __future__ import annotations

import _decimal
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from envship.cli.env import command
from envship.cli.main import cli, main
from envship.envs import USED_NAME, EnvError, create_env, gc, list_envs
from envship.errors import StoreError
from envship.lockfile import LockFile
from envship.store import Store
from test_install import build_wheels, stocked_store, write_lock
from test_inuse import Bind, bind, in_own_namespace, start, started

__all__ = ["bind", "started"]  # fixtures of test_inuse, used here too


@pytest.fixture(autouse=True)
def _registered() -> None:
    cli.add_command(command)


@pytest.fixture
def lock(tmp_path: Path) -> LockFile:
    wheels = build_wheels(tmp_path / "dist")
    return write_lock(tmp_path / "pylock.toml", [wheels["alpha"], wheels["beta"]])


def fail_create(lock: LockFile, root: Path, name: str, folder: Path) -> None:
    """A real create that fails once begun: a store at ``folder`` holding every artifact
    the lock names, each with bytes uv refuses (not the lock's sha256). A store missing
    them is refused before ROOT/NAME is made."""
    store = Store.at(folder)
    store.ensure()
    for artifact in lock.artifacts():
        path = store.path(artifact.sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not the wheel the lock names")
    with pytest.raises((EnvError, StoreError)):
        create_env(lock, store, root, name=name)


@pytest.mark.parametrize("dry_run", [False, True])
def test_gc_removes_what_a_failed_first_create_left(
    lock: LockFile, tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    root = tmp_path / "envs"
    fail_create(lock, root, "ds", tmp_path / "damaged")
    (left,) = (root / "ds" / ".locks").iterdir()
    assert [e.name for e in list_envs(root)] == ["ds"]  # "ds current: (none)" until gc

    args = ["env", "gc", "--root", str(root), "--older-than", "0s"]
    assert main([*args, *(["--dry-run"] if dry_run else [])]) == 0
    verb = "would remove" if dry_run else "removed"
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"{verb} the lock file {left} (its key has no version)",
        f"{verb} ds ({root / 'ds'}): no version, no current",
    ]
    assert left.exists() == dry_run and (root / "ds").exists() == dry_run
    assert [e.name for e in list_envs(root)] == (["ds"] if dry_run else [])

    # Made again afterwards, from a store that has the artifacts, as if nothing had been.
    wheels = build_wheels(tmp_path / "dist2")
    store = stocked_store(tmp_path / "store", [wheels["alpha"], wheels["beta"]])
    made = create_env(lock, store, root, name="ds")
    assert made.created and (root / "ds" / "current").resolve() == made.path


def test_gc_removes_a_stale_lock_beside_versions_and_keeps_the_env(
    lock: LockFile, tmp_path: Path
) -> None:
    root = tmp_path / "envs"
    wheels = build_wheels(tmp_path / "dist2")
    store = stocked_store(tmp_path / "store", [wheels["alpha"], wheels["beta"]])
    good = create_env(lock, store, root, name="ds")
    other = write_lock(tmp_path / "other.toml", [wheels["alpha"], wheels["beta11"]])
    fail_create(other, root, "ds", tmp_path / "damaged")  # its wheels' bytes are wrong
    locks = sorted(p.name for p in (root / "ds" / ".locks").iterdir())
    assert len(locks) == 2

    result = gc(root, older_than=timedelta(0))
    assert [p.name for p in result.stale_locks] == [n for n in locks if good.key not in n]
    assert result.empty_envs == () and result.removed == ()
    assert [p.name for p in (root / "ds" / ".locks").iterdir()] == [f"{good.key}.lock"]
    assert (root / "ds" / "current").resolve() == good.path


PAUSED = """
import os, sys, time
from pathlib import Path
import envship._envroot as r
from envship.envs import create_env
from envship.lockfile import LockFile
from envship.store import Store
lock, store, root, flag = sys.argv[1:5]
real = r.discard
def discard(env_dir, key):
    # Under the key's exclusive lock, before anything of the version exists.
    Path(flag + ".reached").touch()
    while not Path(flag + ".release").exists():
        time.sleep(0.02)
    real(env_dir, key)
r.discard = discard
v = create_env(LockFile.load(Path(lock)), Store(Path(store)), Path(root), name="ds")
print(v.key)
"""


def test_gc_never_takes_the_lock_or_folder_of_a_creator_at_work(
    lock: LockFile, tmp_path: Path
) -> None:
    """What a failed create left (an empty ``versions``, the key's lock file), and a
    creator of the same key paused while it holds that lock, before its version exists:
    gc must leave both the lock file and the folder to it."""
    root = tmp_path / "envs"
    fail_create(lock, root, "ds", tmp_path / "damaged")
    wheels = build_wheels(tmp_path / "dist2")
    store = stocked_store(tmp_path / "store", [wheels["alpha"], wheels["beta"]])
    flag = tmp_path / "pause"
    args = [str(lock.path), str(store.root), str(root), str(flag)]
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.with_name("pause.reached").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        (held,) = (root / "ds" / ".locks").iterdir()
        assert not any((root / "ds" / "versions").iterdir())
        result = gc(root, older_than=timedelta(0))
        assert result.stale_locks == () and result.empty_envs == ()
        assert held.exists() and (root / "ds" / "versions").is_dir()
    finally:
        flag.with_name("pause.release").touch()
        out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0
    key = out.strip()
    assert held.name == f"{key}.lock" and (root / "ds" / "current").resolve().name == key
    assert json.loads((root / "ds" / "versions" / key / ".envship-install.json").read_text())


DECIMAL = Path(_decimal.__file__)  # this interpreter's, built as an extension module
WAIT = "import sys; print('ready', flush=True); sys.stdin.read(); "
# An extension module (what pandas' .so files are) loaded from the version's site-packages
# by an interpreter outside it, from a cwd outside it, its path passed in the environment
# (an argument would show in its command line): only its mapping names the version.
LOAD = (
    "import importlib.util as u, os; p = os.environ['EXTENSION']; "
    "s = u.spec_from_file_location(p.rsplit('/', 1)[1].split('.')[0], p); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); "
)

Use = Callable[[Path, Path], tuple[list[str], Path, dict[str, str]]]
USES: dict[str, tuple[Use, str]] = {
    "started-from-its-bin": (
        lambda v, tmp: ([str(v / "bin" / "python"), "-c", WAIT + "import beta"], tmp, {}),
        "cmdline",
    ),
    "extension-module-mapped": (
        lambda v, tmp: ([sys.executable, "-c", LOAD + WAIT], tmp, {"EXTENSION": str(extension(v))}),
        "maps",
    ),
    "working-directory": (lambda v, tmp: ([sys.executable, "-c", WAIT], v, {}), "cwd"),
}


def extension(version: Path) -> Path:
    (site,) = version.glob("lib/python*/site-packages")
    return site / DECIMAL.name


@pytest.fixture
def old_version(lock: LockFile, tmp_path: Path) -> tuple[Path, str]:
    """An environment ``ds`` at ``tmp_path/envs`` whose first version is neither current
    nor used for 30 days, with a real extension module in its site-packages."""
    root = tmp_path / "envs"
    wheels = build_wheels(tmp_path / "dist2")
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    old = create_env(lock, store, root, name="ds")
    newer = write_lock(tmp_path / "newer.toml", [wheels["alpha"], wheels["beta11"]])
    create_env(newer, store, root, name="ds")  # current moves on
    extension(old.path).write_bytes(DECIMAL.read_bytes())
    stamp = time.time() - 30 * 24 * 3600
    os.utime(old.path / USED_NAME, (stamp, stamp))
    return root, old.key


def _gc_keeps(
    root: Path,
    key: str,
    proc: subprocess.Popen[str],
    how: str,
    capsys: pytest.CaptureFixture[str],
) -> list[str]:
    """``env gc --older-than 1d`` through ``root`` keeps ``key``, naming ``proc`` and the
    trace that showed its use; the command line it ran, to run again."""
    args = ["env", "gc", "--root", str(root), "--older-than", "1d", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["removed"] == []
    (kept,) = result["in_use"]
    assert (kept["key"], kept["path"]) == (key, str(root / "ds" / "versions" / key))
    assert [(p["pid"], p["how"]) for p in kept["processes"]] == [(proc.pid, how)]
    return args


@pytest.mark.parametrize("gc_via", ["the-root", "a-bind-mount-of-it"])
@pytest.mark.parametrize("use", sorted(USES))
def test_gc_keeps_a_version_used_through_another_mount_of_the_root(
    use: str,
    gc_via: str,
    old_version: tuple[Path, str],
    tmp_path: Path,
    bind: Bind,
    started: list[subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The auditor's case: the root R bind-mounted at M, a process using a version
    through one of them, ``env gc --older-than 1d`` run through the other: the version
    is the same folder (same device and inode) and is kept while the process lives."""
    root, key = old_version
    mounted = bind(root, tmp_path / "mnt")
    used_root, gc_root = (mounted, root) if gc_via == "the-root" else (root, mounted)
    used = used_root / "ds" / "versions" / key
    argv, cwd, env = USES[use][0](used, tmp_path)
    proc = start(argv, cwd, env)
    started.append(proc)

    args = _gc_keeps(gc_root, key, proc, USES[use][1], capsys)
    assert (root / "ds" / "versions" / key / "bin" / "python").exists()
    proc.communicate("", timeout=60)  # imports what it still needs from the version
    assert proc.returncode == 0

    # The process is gone: gc through either path removes the version now.
    assert main(args) == 0
    assert [v["key"] for v in json.loads(capsys.readouterr().out)["removed"]] == [key]
    assert not (root / "ds" / "versions" / key).exists()


# A process that has a version's site-packages only through a bind mount of that folder:
# an interpreter outside the version with the mount on sys.path (PYTHONPATH: not in its
# command line) imports the extension module from it, or works in it.
IMPORT = (
    "import os, _decimal; "
    "assert _decimal.__file__.startswith(os.environ['PYTHONPATH'] + '/'), _decimal.__file__; "
)
SUB_USES: dict[str, tuple[Use, str]] = {
    "extension-module-imported": (
        lambda s, tmp: ([sys.executable, "-c", IMPORT + WAIT], tmp, {"PYTHONPATH": str(s)}),
        "maps",
    ),
    "working-directory": (lambda s, tmp: ([sys.executable, "-c", WAIT], s, {}), "cwd"),
}


@pytest.mark.parametrize("space", ["this-mount-namespace", "its-own-mount-namespace"])
@pytest.mark.parametrize("use", sorted(SUB_USES))
def test_gc_keeps_a_version_used_through_a_bind_mount_of_its_site_packages(
    use: str,
    space: str,
    old_version: tuple[Path, str],
    tmp_path: Path,
    bind: Bind,
    started: list[subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``mount --bind ROOT/ds/versions/K/lib/python3.11/site-packages SUB`` (here, or in
    the process's own namespace as a container given that folder): the process's paths
    are under SUB, none has the version as a parent; gc keeps the version all the same."""
    root, key = old_version
    version = root / "ds" / "versions" / key
    site = extension(version).parent
    point = tmp_path / "sub"
    argv, where, env = SUB_USES[use][0](point, tmp_path)
    cwd: Path | None = where
    if space == "this-mount-namespace":
        bind(site, point)
    else:
        point.mkdir()
        argv, cwd = in_own_namespace([(site, point)], argv, cwd), None
    proc = start(argv, cwd, env)
    started.append(proc)

    args = _gc_keeps(root, key, proc, SUB_USES[use][1], capsys)
    assert (site / DECIMAL.name).exists()
    proc.communicate("", timeout=60)
    assert proc.returncode == 0

    # The process is gone: gc removes the version now.
    assert main(args) == 0
    assert [v["key"] for v in json.loads(capsys.readouterr().out)["removed"]] == [key]
    assert not version.exists()


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Marks a file immutable (``chattr +i``: not even root may delete it); everything
    under tmp_path is unmarked after the test, wherever the file went."""

    def mark(path: Path) -> None:
        subprocess.run(["chattr", "+i", str(path)], check=True)

    yield mark
    subprocess.run(["chattr", "-R", "-f", "-i", str(tmp_path)], check=False)


def test_gc_says_what_stayed_when_a_version_could_not_be_deleted_to_the_end(
    old_version: tuple[Path, str],
    immutable: Callable[[Path], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file inside the version that cannot be deleted (immutable here; a file another
    client holds open on NFS, a mount point): the version leaves ``versions/`` but its
    bytes are not all freed, and gc says how much stayed where, instead of the whole
    size as freed. A later gc finishes the job once the file can go."""
    root, key = old_version
    version = root / "ds" / "versions" / key
    stuck = extension(version)  # the largest file in it
    immutable(stuck)
    gc = ["env", "gc", "--root", str(root), "--older-than", "1d"]

    assert main([*gc, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (removed,) = result["removed"]
    (left,) = result["denied"]
    trash = Path(left["path"])
    assert (left["name"], left["key"]) == ("ds", key)
    assert trash.parent == root / "ds" / ".trash" and trash.name.startswith(f"{key}-")
    assert left["reason"] == f"{trash}/{stuck.relative_to(version)}: Operation not permitted"
    moved = trash / stuck.relative_to(version)
    assert left["size"] >= moved.stat().st_size and left["size"] < removed["size"]
    assert result["freed"] == removed["size"] - left["size"]
    assert not version.exists() and moved.is_file()

    # The next run: the leftover again, said as such (no version is removed twice).
    assert main(gc) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].endswith(
        f" stayed in {trash}: {moved}: Operation not permitted"
    )
    assert out[1] == "removed 0 version(s), 0 B; kept 1 current or recently used"

    subprocess.run(["chattr", "-i", str(moved)], check=True)
    assert main([*gc, "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["denied"] == [] and done["removed"] == []
    # What stayed is freed now, and counted (it was "removed 0 version(s), 0 B").
    assert done["freed"] == done["leftovers_freed"] == left["size"]
    assert not trash.exists()


def test_gc_counts_what_it_frees_of_a_killed_run_s_trash(
    old_version: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A gc killed after it moved a version to .trash: the next gc removes it and says how
    much that freed, apart from the versions it removed itself (it said "0 B")."""
    root, key = old_version
    trash = root / "ds" / ".trash"
    trash.mkdir(exist_ok=True)
    left = trash / f"{key}-killed"
    (root / "ds" / "versions" / key).rename(left)  # as the killed gc's own rename left it
    kib = (sum(p.lstat().st_blocks for p in [left, *left.rglob("*")]) * 512) / 1024
    assert kib > 1024  # the real extension module in it: MiB, not a rounding matter
    assert main(["env", "gc", "--root", str(root), "--older-than", "1d"]) == 0
    *before, last = capsys.readouterr().out.splitlines()
    assert last == (
        f"removed 0 version(s), 0 B (and {kib / 1024:.1f} MiB earlier runs left in .trash); "
        "kept 1 current or recently used"
    )
    assert [line.split(" (")[-1] for line in before] == ["its key has no version)"]
    assert not left.exists()


def test_gc_text_gives_the_bytes_freed_when_some_stayed(
    old_version: tuple[Path, str],
    immutable: Callable[[Path], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, key = old_version
    version = root / "ds" / "versions" / key
    stuck = extension(version)
    immutable(stuck)
    assert main(["env", "gc", "--root", str(root), "--older-than", "1d"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (trash,) = (root / "ds" / ".trash").iterdir()
    assert lines[0].startswith(f"removed ds/{key}, but only ")
    assert lines[0].endswith(" was freed (see below)")
    assert lines[1].endswith(
        f" of ds/{key} stayed in {trash}: {trash / stuck.relative_to(version)}: "
        "Operation not permitted"
    )


def test_a_half_made_versions_size_counts_its_staging(
    lock: LockFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A create killed while uv unpacked (its ``KEY.envship-tmp`` staging beside a version
    folder with nothing in it yet): gc reports, and frees, both."""
    root = tmp_path / "envs"
    wheels = build_wheels(tmp_path / "dist2")
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    create_env(lock, store, root, name="ds")
    versions = root / "ds" / "versions"
    half = versions / "0123456789abcdef0123"
    (half / "lib").mkdir(parents=True)
    (versions / f"{half.name}.envship-tmp").mkdir()
    (versions / f"{half.name}.envship-tmp" / "unpacked.bin").write_bytes(os.urandom(3 << 20))
    stamp = time.time() - 2 * 24 * 3600
    os.utime(half, (stamp, stamp))

    assert main(["env", "gc", "--root", str(root), "--older-than", "1d", "--dry-run"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"would remove ds/{half.name} (incomplete) 3.")
    assert line.endswith(" MiB")
    result = gc(root, older_than=timedelta(days=1))
    (removed,) = result.removed
    assert removed.size is not None and removed.size >= 3 << 20
    assert result.freed == removed.size and result.denied == ()
    assert not half.exists() and not (versions / f"{half.name}.envship-tmp").exists()


def _note(versions: Path) -> Path:
    (versions / "notes.txt").write_text("who made what\n")
    return versions / "notes.txt"


def _junk(versions: Path) -> Path:
    (versions / "junk").write_bytes(b"x" * 10)
    return versions / "junk"


def _link(versions: Path) -> Path:
    (versions / "elsewhere").symlink_to(versions.parent)
    return versions / "elsewhere"


# What someone left in versions/ that is no version (gc took "notes.txt" for the version
# "notes", made and removed .locks/notes.lock every run; "junk" went to .trash, where
# rmtree failed on it with "Not a directory" at every run after).
STRAYS: dict[str, Callable[[Path], Path]] = {"note": _note, "junk": _junk, "link": _link}


@pytest.mark.parametrize("case", STRAYS)
@pytest.mark.parametrize("dry_run", [False, True])
def test_what_is_no_version_in_versions_is_named_and_left(
    lock: LockFile, tmp_path: Path, case: str, dry_run: bool
) -> None:
    root = tmp_path / "envs"
    wheels = build_wheels(tmp_path / "dist2")
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    made = create_env(lock, store, root, name="ds")
    stray = STRAYS[case](root / "ds" / "versions")
    old = time.time() - 30 * 24 * 3600
    os.utime(stray, (old, old), follow_symlinks=False)

    result = gc(root, older_than=timedelta(days=1), dry_run=dry_run)
    assert result.strays == (stray,) and result.to_json()["strays"] == [str(stray)]
    assert (result.removed, result.denied, result.stale_locks, result.kept) == ((), (), (), 1)
    assert os.path.lexists(stray) and made.path.is_dir()
    assert sorted(p.name for p in (root / "ds" / ".locks").iterdir()) == [f"{made.key}.lock"]
    assert not (root / "ds" / ".trash").exists() or not any((root / "ds" / ".trash").iterdir())
    assert [v.key for e in list_envs(root) for v in e.versions] == [made.key]


@pytest.mark.parametrize("case", ["file", "link"])
def test_a_file_left_in_trash_is_removed(lock: LockFile, tmp_path: Path, case: str) -> None:
    """What an earlier gc moved to .trash that is not a folder: removed, not denied."""
    root = tmp_path / "envs"
    wheels = build_wheels(tmp_path / "dist2")
    create_env(lock, stocked_store(tmp_path / "store", list(wheels.values())), root, name="ds")
    trash = root / "ds" / ".trash"
    trash.mkdir()
    left = trash / "junk-0123abcd"
    if case == "file":
        left.write_bytes(b"x" * 4096)
    else:
        left.symlink_to(root)  # never followed: the root stays
    result = gc(root, older_than=timedelta(days=1))
    assert result.denied == () and not os.path.lexists(left) and root.is_dir()

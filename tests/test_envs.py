"""``envship.envs``: persistent environments on a shared root, with real venvs, real uv
and real concurrent processes (creators, a killed creator, gc beside a creator)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import envship.envs as envs_mod
import envship.install as install_mod
from disklib import MIB, SmallDisk
from envship.envs import (
    USED_NAME,
    EnvError,
    EnvInputError,
    check_env,
    create_env,
    gc,
    list_envs,
    version_key,
)
from envship.errors import ArtifactError, LockError, StoreError, TargetError
from envship.host import probe
from envship.install import INCOMPLETE_NAME, MARKER_NAME, install
from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import verify
from test_install import (
    OTHER_PY,
    build_huge,
    build_wheels,
    run_py,
    stocked_store,
    target,
    versions,
    write_lock,
)

DAY = 24 * 3600


@dataclass
class Setup:
    root: Path
    store: Store
    lock: LockFile  # alpha 1.0, beta 1.0, tool 1.0
    newer: LockFile  # alpha 1.0, beta 1.1
    wheels: dict[str, Path]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    wheels = build_wheels(tmp_path / "dist")
    lock = write_lock(tmp_path / "pylock.toml", [wheels[k] for k in ("alpha", "beta", "tool")])
    newer = write_lock(tmp_path / "newer.toml", [wheels["alpha"], wheels["beta11"]])
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    return Setup(tmp_path / "envs", store, lock, newer, wheels)


def fake_gpu(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    monkeypatch.setattr(envs_mod, "has_gpu", lambda: present)
    monkeypatch.setattr(install_mod, "probe", lambda p=None: probe(p, gpu=lambda: present))


@pytest.fixture(autouse=True)
def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests use cpu targets; the machine's GPU (or lack of one) must not matter."""
    fake_gpu(monkeypatch, False)


def current(root: Path, name: str = "ds") -> str:
    return os.readlink(root / name / "current")


def age(path: Path, days: float) -> None:
    """Pretend ``path`` was last touched ``days`` ago."""
    stamp = time.time() - days * DAY
    os.utime(path, (stamp, stamp), follow_symlinks=False)


CHILD = """
import json, os, signal, sys, time
from pathlib import Path
import envship.install as m
from envship.envs import create_env
from envship.lockfile import LockFile
from envship.store import Store
lock, store, root, mode, flag = sys.argv[1:6]
real = m._run
def run(args, *, what, **kw):
    if args[1:3] == ["pip", "sync"]:
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "pause":
            Path(flag + ".reached").touch()
            while not Path(flag + ".release").exists():
                time.sleep(0.02)
    real(args, what=what, **kw)
m._run = run
if mode == "race":  # say ready, then start with every other racer at the same moment
    Path(f"{flag}.ready-{os.getpid()}").touch()
    while not Path(flag).exists():
        time.sleep(0.005)
v = create_env(LockFile.load(Path(lock)), Store(Path(store)), Path(root), name="ds")
print(json.dumps(v.to_json()))
"""


def child(s: Setup, lock: LockFile, mode: str, flag: Path) -> subprocess.Popen[str]:
    args = [str(lock.path), str(s.store.root), str(s.root), mode, str(flag)]
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True)


def new_keys(root: Path, old: str) -> list[str]:
    """Version folders other than ``old`` (not install's ``<key>.envship-tmp`` staging)."""
    found = (root / "ds" / "versions").iterdir()
    return [p.name for p in found if "." not in p.name and p.name != old]


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, "the creator exited before reaching the install step"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_create_then_reuse_without_installing(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup
    first = create_env(s.lock, s.store, s.root, name="ds")

    assert first.created and first.current
    assert first.key == version_key(
        s.lock.digest, first.target.name, (), os.path.realpath(sys.executable)
    )
    assert first.path == s.root / "ds" / "versions" / first.key
    assert current(s.root) == f"versions/{first.key}"  # relative: survives another mount
    assert run_py(s.root / "ds" / "current", "import alpha, beta; print(beta.__version__)") == "1.0"
    tool = first.path / "bin" / "tool"
    assert subprocess.run([str(tool)], capture_output=True, text=True).stdout == "tool ran\n"
    assert (first.path / MARKER_NAME).is_file() and (first.path / USED_NAME).is_file()
    assert not list((s.root / "ds" / "versions").glob("*.envship-tmp"))

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an existing version must start neither uv nor an interpreter")

    monkeypatch.setattr(envs_mod, "install", forbidden)
    monkeypatch.setattr(envs_mod, "probe", forbidden)
    age(first.path / USED_NAME, 3)
    again = create_env(s.lock, s.store, s.root, name="ds")

    assert not again.created and again.path == first.path and again.key == first.key
    assert again.to_json()["python"] == str(first.path / "bin" / "python")
    assert time.time() - (first.path / USED_NAME).stat().st_mtime < DAY  # use recorded


def test_a_version_shares_no_file_with_anything(setup: Setup, tmp_path: Path) -> None:
    """uv hard-links from its cache by default; a shared version must be its own copy,
    so an edit in a private env (or the cache) can never reach every instance."""
    s = setup
    private = tmp_path / "private"
    install(s.lock, s.store, private)  # warms uv's cache, hard-linked from it
    version = create_env(s.lock, s.store, s.root, name="ds")
    files = [p for p in version.path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files and all(p.stat().st_nlink == 1 for p in files)
    beta = next(private.glob("lib/python*/site-packages/beta/__init__.py"))
    assert beta.stat().st_nlink > 1  # the private env is linked: the test can tell
    beta.write_text("raise SystemExit('edited')\n")  # an edit there stays there
    assert run_py(version.path, "import beta; print(beta.__version__)") == "1.0"


def test_a_version_is_made_from_the_store_not_an_edited_uv_cache(
    setup: Setup, tmp_path: Path
) -> None:
    """A private env hard-linked from uv's cache shares its inodes: an edit in place there
    edits the cache. A version unpacks the store's (hash-checked) wheels afresh instead."""
    s = setup
    private = tmp_path / "private"
    install(s.lock, s.store, private)
    beta = next(private.glob("lib/python*/site-packages/beta/__init__.py"))
    assert beta.stat().st_nlink > 1  # linked into the cache: the edit below reaches it
    with beta.open("r+") as f:  # in place, as an editor or `sed -i`-less patch would
        f.seek(0)
        f.write("raise SystemExit('poisoned')  #")
    edited = subprocess.run([str(private / "bin" / "python"), "-c", "import beta"], check=False)
    assert edited.returncode != 0

    version = create_env(s.lock, s.store, s.root, name="ds")

    assert run_py(version.path, "import beta; print(beta.__version__)") == "1.0"
    files = [p for p in version.path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files and all(p.stat().st_nlink == 1 for p in files)
    assert not list(version.path.parent.glob("*.envship-tmp"))  # the unpacked wheels too


def test_a_root_mounted_elsewhere_still_runs_its_scripts(setup: Setup, tmp_path: Path) -> None:
    """Each instance may mount the shared volume at its own path: versions are made
    relocatable, so a console script finds the interpreter beside it."""
    s = setup
    create_env(s.lock, s.store, s.root, name="ds")
    moved = tmp_path / "mounted-elsewhere"
    s.root.rename(moved)

    ran = subprocess.run([str(moved / "ds" / "current" / "bin" / "tool")], capture_output=True)
    assert ran.stdout == b"tool ran\n"
    assert check_env(moved, "ds").path.parent.parent == moved / "ds"
    assert verify(s.lock, moved / "ds" / "current", full=True, store=s.store).identical


def test_byte_code_is_another_version_never_compiled_in_place(setup: Setup) -> None:
    s = setup
    plain = create_env(s.lock, s.store, s.root, name="ds")
    compiled = create_env(s.lock, s.store, s.root, name="ds", compile_bytecode=True)

    assert compiled.created and compiled.key != plain.key
    assert compiled.key == version_key(
        s.lock.digest, compiled.target.name, (), os.path.realpath(sys.executable), compiled=True
    )
    assert current(s.root) == f"versions/{compiled.key}"
    assert list(compiled.path.rglob("alpha/__pycache__/*.pyc"))
    assert not list(plain.path.rglob("alpha/__pycache__/*.pyc"))  # immutable: untouched
    again = create_env(s.lock, s.store, s.root, name="ds", compile_bytecode=True)
    assert not again.created and again.key == compiled.key


def test_each_input_gets_its_own_version_and_current_follows(setup: Setup) -> None:
    s = setup
    one = create_env(s.lock, s.store, s.root, name="ds")
    two = create_env(s.newer, s.store, s.root, name="ds")

    assert two.created and two.key != one.key
    assert current(s.root) == f"versions/{two.key}"
    assert versions(two.path) == {"alpha": "1.0", "beta": "1.1"}
    assert versions(one.path)["beta"] == "1.0"  # the old version is untouched (immutable)

    # Back to the first lock: its version still exists, so it only becomes current again.
    back = create_env(s.lock, s.store, s.root, name="ds")
    assert not back.created and back.key == one.key and current(s.root) == f"versions/{one.key}"

    # The base interpreter is part of the key; another name for the same file is not.
    alias = s.root.parent / "bin" / "py"
    alias.parent.mkdir()
    alias.symlink_to(os.path.realpath(sys.executable))
    assert create_env(s.lock, s.store, s.root, name="ds", python=str(alias)).key == one.key
    system = create_env(s.lock, s.store, s.root, name="ds", python="/usr/bin/python3.11")
    assert system.created and system.key != one.key
    assert "home = /usr/bin" in (system.path / "pyvenv.cfg").read_text()

    grouped = create_env(s.lock, s.store, s.root, name="ds", groups=[])
    assert grouped.key == one.key  # the lock has no groups: [] and "all" are the same set
    with pytest.raises(LockError, match="no dependency group 'docs'"):
        create_env(s.lock, s.store, s.root, name="ds", groups=["docs"])

    infos = list_envs(s.root)
    assert [e.name for e in infos] == ["ds"]
    listed = {v.key: v for v in infos[0].versions}
    assert set(listed) == {one.key, two.key, system.key}
    assert infos[0].current == one.key and listed[one.key].current  # the last create
    assert not listed[system.key].current
    assert all(v.complete for v in listed.values())
    assert listed[two.key].lock_digest == s.newer.digest
    assert json.loads(json.dumps(infos[0].to_json()))["versions"][0]["size"] is None
    assert all((v.size or 0) > 0 for v in list_envs(s.root, sizes=True)[0].versions)


def test_target_is_chosen_for_this_interpreter_without_starting_it(
    tmp_path: Path, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = setup.wheels
    lock = write_lock(
        tmp_path / "two.toml",
        [wheels["alpha"], wheels["beta"]],
        targets=[target("old", glibc="2.17"), target("new", glibc="2.28")],
    )
    chosen = create_env(lock, setup.store, setup.root, name="two")
    assert chosen.target.name == "new"  # the highest glibc level this host runs

    monkeypatch.setattr(envs_mod, "probe", lambda *a, **k: pytest.fail("probed"))
    explicit = create_env(lock, setup.store, setup.root, name="two", target="new")
    assert not explicit.created and explicit.key == chosen.key
    older = create_env(lock, setup.store, setup.root, name="two", target="old")
    assert older.created and older.key != chosen.key and older.target.name == "old"


def test_four_concurrent_creators_make_one_copy(setup: Setup) -> None:
    s = setup
    go = s.root.parent / "go"
    procs = [child(s, s.lock, "race", go) for _ in range(4)]
    deadline = time.monotonic() + 120
    while len(list(go.parent.glob("go.ready-*"))) < 4:  # all imported and waiting
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=240)[0] for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    results = [json.loads(out) for out in outs]
    assert sum(r["created"] for r in results) == 1
    assert len({r["path"] for r in results}) == 1
    path = Path(results[0]["path"])
    assert [p.name for p in (s.root / "ds" / "versions").iterdir()] == [path.name]
    assert current(s.root) == f"versions/{path.name}"
    assert run_py(path, "import alpha, beta; print('ok')") == "ok"
    assert not list((s.root / "ds" / ".trash").glob("*"))


@pytest.mark.parametrize("then", ["create", "gc"])
def test_a_killed_creator_leaves_nothing_visible(setup: Setup, then: str) -> None:
    s = setup
    old = create_env(s.lock, s.store, s.root, name="ds")
    proc = child(s, s.newer, "kill", s.root.parent / "unused")
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL

    (new_key,) = new_keys(s.root, old.key)
    half = s.root / "ds" / "versions" / new_key
    assert (half / INCOMPLETE_NAME).is_file()  # its marker, if any, is the start one
    assert current(s.root) == f"versions/{old.key}"  # never pointed at the half-made one
    assert run_py(s.root / "ds" / "current", "import beta; print(beta.__version__)") == "1.0"
    listed = {v.key: v.complete for v in list_envs(s.root)[0].versions}
    assert listed == {old.key: True, new_key: False}
    with pytest.raises(EnvInputError):
        create_env(s.newer, s.store, s.root, name="bad/name")

    if then == "create":
        again = create_env(s.newer, s.store, s.root, name="ds")
        assert again.created and again.key == new_key
        assert current(s.root) == f"versions/{new_key}"
        assert versions(again.path) == {"alpha": "1.0", "beta": "1.1"}
    else:
        assert gc(s.root, older_than=timedelta(days=1)).removed == ()  # too recent
        result = gc(s.root, older_than=timedelta(0))
        assert [(v.key, v.complete) for v in result.removed] == [(new_key, False)]
        assert not half.exists() and current(s.root) == f"versions/{old.key}"
    assert not (s.root / "ds" / "versions" / f"{new_key}.envship-tmp").exists()
    assert not list((s.root / "ds" / ".trash").iterdir())


def test_gc_removes_old_unused_versions_but_never_current(setup: Setup) -> None:
    s = setup
    one = create_env(s.lock, s.store, s.root, name="ds")
    two = create_env(s.newer, s.store, s.root, name="ds")
    age(one.path / USED_NAME, 10)

    dry = gc(s.root, older_than=timedelta(days=7), dry_run=True)
    assert [v.key for v in dry.removed] == [one.key] and dry.dry_run
    assert dry.freed > 0 and dry.kept == 1 and one.path.is_dir()

    assert [v.key for v in gc(s.root, older_than=timedelta(days=11)).removed] == []
    done = gc(s.root, older_than=timedelta(days=7))
    assert [v.key for v in done.removed] == [one.key] and done.freed == dry.freed
    assert not one.path.exists()
    assert not (s.root / "ds" / ".locks" / f"{one.key}.lock").exists()
    assert not list((s.root / "ds" / ".trash").iterdir())

    age(two.path / USED_NAME, 30)
    kept = gc(s.root, older_than=timedelta(0))
    assert kept.removed == () and kept.kept == 1 and two.path.is_dir()
    assert versions(s.root / "ds" / "current")["beta"] == "1.1"

    # Removed, then wanted again: made afresh.
    assert create_env(s.lock, s.store, s.root, name="ds").created


def test_gc_beside_a_running_creator_skips_its_version(setup: Setup) -> None:
    s = setup
    one = create_env(s.lock, s.store, s.root, name="ds")
    flag = s.root.parent / "pause"
    proc = child(s, s.newer, "pause", flag)
    try:
        wait_for(flag.with_name("pause.reached"), proc)
        (busy_key,) = new_keys(s.root, one.key)
        age(s.root / "ds" / "versions" / busy_key, 30)  # old enough: only its lock saves it
        age(one.path / USED_NAME, 30)
        result = gc(s.root, older_than=timedelta(0))
        assert [v.key for v in result.busy] == [busy_key] and not result.busy[0].complete
        assert result.removed == () and result.kept == 1  # `one` is still current
        assert (s.root / "ds" / "versions" / busy_key).is_dir()
    finally:
        flag.with_name("pause.release").touch()
        out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0
    made = json.loads(out)
    assert made["created"] and made["key"] == busy_key
    assert current(s.root) == f"versions/{busy_key}"
    assert versions(Path(made["path"])) == {"alpha": "1.0", "beta": "1.1"}
    # Now it is idle and `one` is neither current nor recent: gc takes `one`.
    assert [v.key for v in gc(s.root, older_than=timedelta(days=1)).removed] == [one.key]


@pytest.fixture
def huge(setup: Setup) -> LockFile:
    """alpha, beta and a package that takes 6 MiB installed: more than the small disk."""
    wheel = build_huge(setup.root.parent / "dist")
    setup.store.add_file(wheel)
    wheels = [setup.wheels["alpha"], setup.wheels["beta"], wheel]
    return write_lock(setup.root.parent / "huge.toml", wheels)


@pytest.mark.parametrize("when", ["while uv installs", "before anything is written"])
def test_a_full_disk_leaves_no_version_visible(
    setup: Setup, small_disk: SmallDisk, huge: LockFile, when: str
) -> None:
    root = small_disk.path / "envs"
    lock = huge
    if when == "before anything is written":  # our own first write fails, not uv's
        (root / "ds").mkdir(parents=True)
        small_disk.fill()
        lock = setup.lock
    before = small_disk.used()
    with pytest.raises(EnvError) as err:
        create_env(lock, setup.store, root, name="ds")

    assert "is full" in err.value.message and str(root) in err.value.message
    assert err.value.hint and "gc" in err.value.hint and "not visible" in err.value.hint
    assert not (root / "ds" / "current").is_symlink()
    assert list_envs(root)[0].versions == ()
    assert [p for p in (root / "ds" / "versions").iterdir()] == []
    assert small_disk.used() <= before  # the half-made version's space is handed back

    small_disk.resize(32 * MIB)  # space freed: the same call works, with nothing to clean
    made = create_env(lock, setup.store, root, name="ds")
    assert made.created and current(root) == f"versions/{made.key}"


def test_a_full_disk_keeps_the_old_current(
    setup: Setup, small_disk: SmallDisk, huge: LockFile
) -> None:
    root = small_disk.path / "envs"
    old = create_env(setup.lock, setup.store, root, name="ds")
    with pytest.raises(EnvError, match="is full") as err:
        create_env(huge, setup.store, root, name="ds")
    # uv's own words say which file did not fit.
    assert any("No space left on device" in p.message for p in err.value.problems)

    assert current(root) == f"versions/{old.key}"
    assert [v.key for v in list_envs(root)[0].versions] == [old.key]
    assert check_env(root, "ds").key == old.key
    assert versions(old.path) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}

    small_disk.resize(32 * MIB)
    made = create_env(huge, setup.store, root, name="ds")
    assert made.created and current(root) == f"versions/{made.key}"
    assert versions(made.path) == {"alpha": "1.0", "beta": "1.0", "huge": "1.0"}


def test_check_accepts_this_machine_and_records_use(setup: Setup) -> None:
    s = setup
    made = create_env(s.lock, s.store, s.root, name="ds")
    age(made.path / USED_NAME, 5)

    checked = check_env(s.root, "ds")
    assert checked.key == made.key and checked.target == made.target
    assert checked.path == made.path and not checked.created and checked.current
    assert time.time() - (made.path / USED_NAME).stat().st_mtime < DAY
    assert check_env(s.root, "ds", python="/usr/bin/python3.11").key == made.key

    with pytest.raises(EnvError, match="no environment 'other'"):
        check_env(s.root, "other")
    with pytest.raises(EnvError, match="does not exist"):
        check_env(s.root / "missing", "ds")


def rewrite_marker(path: Path, **changes: Any) -> None:
    marker = json.loads((path / MARKER_NAME).read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        marker[section][key] = value
    (path / MARKER_NAME).write_text(json.dumps(marker))


def test_check_refuses_an_env_built_for_another_python_or_glibc(setup: Setup) -> None:
    s = setup
    made = create_env(s.lock, s.store, s.root, name="ds")
    # As if made on another image: newer CPython, newer glibc.
    rewrite_marker(made.path, target__python=OTHER_PY, target__glibc="2.99")

    with pytest.raises(TargetError) as err:
        check_env(s.root, "ds")
    reasons = [p.message for p in err.value.problems]
    assert any(f"Python {OTHER_PY} needed" in r for r in reasons)
    assert any("glibc 2.99 needed" in r for r in reasons)
    assert "cannot run on this machine" in err.value.message and err.value.hint

    rewrite_marker(made.path, python__base="/nonexistent/bin/python3")
    with pytest.raises(TargetError, match="cannot run") as err:
        check_env(s.root, "ds")
    assert any("does not exist" in p.message for p in err.value.problems)


def _remove_beta_metadata(path: Path) -> None:
    shutil.rmtree(next(path.glob("lib/python*/site-packages/beta-1.0.dist-info")))


def _other_interpreter(path: Path) -> None:
    (path / "bin" / "python").unlink()
    (path / "bin" / "python").symlink_to(shutil.which(f"python{OTHER_PY}") or "/bin/sh")


def _reinstalled_elsewhere(path: Path) -> None:
    """Another tool wrote beta 1.0 again: same name and version, another RECORD."""
    record = next(path.glob("lib/python*/site-packages/beta-1.0.dist-info/RECORD"))
    record.chmod(0o644)
    record.write_text(record.read_text() + "beta/extra.py,,\n")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_remove_beta_metadata, "beta==1.0: missing"),
        (_other_interpreter, "bin/python runs"),
        (_reinstalled_elsewhere, "beta==1.0: replaced"),
    ],
)
def test_a_changed_version_is_reported_and_made_again_in_place(
    setup: Setup, damage: Callable[[Path], None], reason: str
) -> None:
    s = setup
    made = create_env(s.lock, s.store, s.root, name="ds")
    damage(made.path)

    with pytest.raises(EnvError) as err:
        check_env(s.root, "ds")
    assert "was changed since it was made" in err.value.message
    assert any(reason in p.message for p in err.value.problems), err.value.problems
    assert err.value.hint and f"--lock {s.lock.path.absolute()}" in err.value.hint

    again = create_env(s.lock, s.store, s.root, name="ds")  # the hint's command
    assert (again.key, again.path) == (made.key, made.path)
    assert again.created and again.repaired and current(s.root) == f"versions/{made.key}"
    assert versions(again.path) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}
    assert check_env(s.root, "ds").key == made.key
    reused = create_env(s.lock, s.store, s.root, name="ds")
    assert not reused.created and not reused.repaired


def test_a_version_made_before_versions_were_relocatable_is_made_again(
    setup: Setup, tmp_path: Path
) -> None:
    """As an older envship left it: scripts naming the path it was made at, which a
    root mounted elsewhere cannot run. env create remakes it in place, once."""
    s = setup
    made = create_env(s.lock, s.store, s.root, name="ds")
    cfg = made.path / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace("relocatable = true\n", ""))
    tool = made.path / "bin" / "tool"
    body = tool.read_bytes().split(b"\n' '''\n", 1)[1]  # after uv's relocatable lines
    tool.write_bytes(f"#!{made.path}/bin/python\n".encode() + body)
    assert check_env(s.root, "ds").key == made.key  # runs where it is

    again = create_env(s.lock, s.store, s.root, name="ds")

    assert again.repaired and again.path == made.path
    assert "relocatable = true" in cfg.read_text()
    moved = tmp_path / "moved"
    s.root.rename(moved)
    ran = subprocess.run([str(moved / "ds" / "current" / "bin" / "tool")], capture_output=True)
    assert ran.stdout == b"tool ran\n"
    assert not create_env(s.lock, s.store, moved, name="ds").repaired


def test_reinstall_makes_a_version_with_edited_files_again_from_the_store(
    setup: Setup,
) -> None:
    """The quick look sees metadata only: an edited module is for --reinstall, which
    first hashes the store's wheels, so damaged ones leave the version as it was."""
    s = setup
    made = create_env(s.lock, s.store, s.root, name="ds")
    beta = next(made.path.glob("lib/python*/site-packages/beta/__init__.py"))
    beta.write_text("raise SystemExit('edited')\n")
    assert not create_env(s.lock, s.store, s.root, name="ds").repaired  # not seen

    beta_sha = next(a.sha256 for a in s.lock.artifacts() if a.name == "beta")
    content = s.store.path(beta_sha)
    good = content.read_bytes()
    content.chmod(0o644)
    content.write_bytes(good[:-30] + bytes(b ^ 0xFF for b in good[-30:]))
    with pytest.raises(ArtifactError):
        create_env(s.lock, s.store, s.root, name="ds", reinstall=True)
    assert beta.read_text() == "raise SystemExit('edited')\n"  # untouched, still current
    assert current(s.root) == f"versions/{made.key}"

    content.write_bytes(good)
    again = create_env(s.lock, s.store, s.root, name="ds", reinstall=True)

    assert again.repaired and (again.key, again.path) == (made.key, made.path)
    assert run_py(s.root / "ds" / "current", "import beta; print(beta.__version__)") == "1.0"
    assert verify(s.lock, s.root / "ds" / "current", full=True, store=s.store).identical


def test_a_store_missing_wheels_is_said_before_anything_is_made(
    setup: Setup, tmp_path: Path
) -> None:
    """A first create whose store lacks wheels made ROOT/NAME (its locks and versions
    folders) before it failed, and `env list` showed NAME as "current: (none)". An
    existing version needs no store: it is reused from an empty one."""
    s = setup
    empty = Store.at(tmp_path / "empty-store")
    with pytest.raises(StoreError, match="3 of 3 locked artifacts are not in the store"):
        create_env(s.lock, empty, s.root, name="ds")
    assert not (s.root / "ds").exists()
    made = create_env(s.lock, s.store, s.root, name="ds")
    again = create_env(s.lock, empty, s.root, name="ds")
    assert not again.created and again.path == made.path


def test_an_unknown_name_is_bad_input(setup: Setup) -> None:
    s = setup
    create_env(s.lock, s.store, s.root, name="ds")
    with pytest.raises(EnvInputError, match="no environment 'nope'") as err:
        check_env(s.root, "nope")
    assert err.value.exit_code == 2


def test_check_refuses_a_cuda_env_without_a_gpu(
    tmp_path: Path, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = setup.wheels
    lock = write_lock(
        tmp_path / "gpu.toml",
        [wheels["alpha"], wheels["beta"]],
        targets=[target("gpu", variant="cuda")],
    )
    fake_gpu(monkeypatch, True)  # built on a GPU instance
    made = create_env(lock, setup.store, setup.root, name="gpu")
    assert check_env(setup.root, "gpu").key == made.key

    fake_gpu(monkeypatch, False)  # checked on a CPU instance sharing the volume
    with pytest.raises(TargetError) as err:
        check_env(setup.root, "gpu")
    assert [p.message for p in err.value.problems] == ["cuda variant but no GPU found"]


def test_root_and_name_errors_are_bad_input(tmp_path: Path, setup: Setup) -> None:
    with pytest.raises(EnvInputError, match="does not exist") as err:
        list_envs(tmp_path / "nowhere")
    assert (err.value.exit_code, err.value.kind) == (2, "env-input")
    with pytest.raises(EnvInputError, match="does not exist"):
        gc(tmp_path / "nowhere", older_than=timedelta(days=1))
    with pytest.raises(EnvInputError, match="does not exist"):
        check_env(tmp_path / "nowhere", "ds")
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(EnvInputError, match="invalid environment name") as err:
            create_env(setup.lock, setup.store, setup.root, name=bad)
        assert err.value.exit_code == 2 and isinstance(err.value, EnvError)
    setup.root.mkdir()
    assert list_envs(setup.root) == []
    (setup.root / "stray-file").write_text("not an env")
    assert list_envs(setup.root) == [] and gc(setup.root, older_than=timedelta(0)).kept == 0


def test_a_private_env_in_currents_place_is_refused_both_ways(setup: Setup) -> None:
    """install will not put a venv where `current` belongs, and env create will not
    replace one that is there anyway (made before, or by hand)."""
    s = setup
    create_env(s.lock, s.store, s.root, name="ds")
    current = s.root / "ds" / "current"
    with pytest.raises(install_mod.InstallError, match="immutable"):
        install(s.lock, s.store, current)  # through the link: the version
    current.unlink()
    with pytest.raises(install_mod.InstallError, match="keeps the link") as err:
        install(s.lock, s.store, current)  # no link: still the link's place
    assert f"envship env create ds --root {s.root}" in (err.value.hint or "")
    assert not os.path.lexists(current)
    install(s.lock, s.store, s.root / "ds" / "elsewhere")
    (s.root / "ds" / "elsewhere").rename(current)  # a venv where the link belongs

    with pytest.raises(EnvError, match="not the link") as env_err:
        create_env(s.lock, s.store, s.root, name="ds", compile_bytecode=True)

    assert env_err.value.exit_code == 1 and "current.old" in (env_err.value.hint or "")
    assert (current / MARKER_NAME).is_file()  # untouched
    assert len(list((s.root / "ds" / "versions").iterdir())) == 1  # nothing built


WAIT_THEN_IMPORT = (
    "import sys; print('ready', flush=True); sys.stdin.read(); "
    "import beta; print(beta.__version__, sys.prefix)"
)


def test_gc_keeps_a_version_a_process_here_runs_from(setup: Setup) -> None:
    """A process started from a version that is neither current nor recent imports
    lazily from it; gc must leave it while the process lives, and take it after."""
    s = setup
    old = create_env(s.lock, s.store, s.root, name="ds")
    create_env(s.newer, s.store, s.root, name="ds")  # current moves on
    age(old.path / USED_NAME, 30)
    proc = subprocess.Popen(
        [str(old.path / "bin" / "python"), "-c", WAIT_THEN_IMPORT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        dry = gc(s.root, older_than=timedelta(days=1), dry_run=True)
        result = gc(s.root, older_than=timedelta(days=1))
        out = proc.communicate("", timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    for r in (dry, result):
        assert r.removed == () and r.kept == 1
        (kept,) = r.in_use
        assert (kept.name, kept.key, kept.path) == ("ds", old.key, old.path)
        assert [(u.pid, u.how) for u in kept.processes] == [(proc.pid, "cmdline")]
    assert json.loads(json.dumps(result.to_json()))["in_use"][0]["processes"][0]["pid"] == proc.pid
    assert proc.returncode == 0 and out.split() == ["1.0", str(old.path)]  # imported after gc
    assert old.path.is_dir()

    # The process is gone: nothing uses the old version now.
    assert [v.key for v in gc(s.root, older_than=timedelta(days=1)).removed] == [old.key]
    assert not old.path.exists()


@pytest.mark.parametrize("older_than", [timedelta.max, timedelta(days=800_000)])
def test_gc_older_than_anything_removes_nothing(setup: Setup, older_than: timedelta) -> None:
    s = setup
    one = create_env(s.lock, s.store, s.root, name="ds")
    create_env(s.newer, s.store, s.root, name="ds")
    age(one.path / USED_NAME, 10 * 365)
    result = gc(s.root, older_than=older_than)
    assert result.removed == () and result.kept == 2 and one.path.is_dir()

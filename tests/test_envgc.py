"""``env gc`` and what a failed ``env create`` leaves: the key's lock file and, for a first
version, an environment folder with nothing in it. Real creates (a store missing the
artifacts), a real creator process paused while it holds its key's lock, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from envship.cli.env import command
from envship.cli.main import cli, main
from envship.envs import EnvError, create_env, gc, list_envs
from envship.errors import StoreError
from envship.lockfile import LockFile
from envship.store import Store
from test_install import build_wheels, stocked_store, write_lock


@pytest.fixture(autouse=True)
def _registered() -> None:
    cli.add_command(command)


@pytest.fixture
def lock(tmp_path: Path) -> LockFile:
    wheels = build_wheels(tmp_path / "dist")
    return write_lock(tmp_path / "pylock.toml", [wheels["alpha"], wheels["beta"]])


def fail_create(lock: LockFile, root: Path, name: str, empty: Store) -> None:
    """A real create that fails: the store holds none of the lock's artifacts."""
    with pytest.raises((EnvError, StoreError)):
        create_env(lock, empty, root, name=name)


@pytest.mark.parametrize("dry_run", [False, True])
def test_gc_removes_what_a_failed_first_create_left(
    lock: LockFile, tmp_path: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    root = tmp_path / "envs"
    fail_create(lock, root, "ds", Store(tmp_path / "empty"))
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
    fail_create(other, root, "ds", store)  # beta 1.1 is not in the store
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
    fail_create(lock, root, "ds", Store(tmp_path / "empty"))
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

"""``index export`` over an earlier export: never missing, never half made, and what
killed exports left beside OUT is removed by the next export.

Real exports of a real store (test_index's universe); ``envship index export`` run in
its own process and SIGKILLed by strace as it enters each rename in turn, on a file
system with RENAME_EXCHANGE and on one stood in for without it (every renameat2 fails
with EINVAL, as on NFS); a reader process polling OUT while exports replace it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from disklib import SmallDisk
from envship._swap import STALE_AFTER
from envship.index import export_index
from test_index import Universe, make_universe
from test_swap import age, each_kill, polling, traced, tree

X86_ONLY = ["linux-x86_64"]


@pytest.fixture
def universe(tmp_path: Path) -> Universe:
    return make_universe(tmp_path / "u")


def hidden(parent: Path) -> list[str]:
    """What exports left beside OUT: its staging folders and their locks."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".out."))


def export_argv(u: Universe, out: Path, *args: str) -> list[str]:
    head = [sys.executable, "-m", "envship", "index", "export", str(out)]
    return [*head, "--lock", str(u.lock.path), "--store", str(u.store.root), *args]


def test_a_reader_never_finds_the_export_missing_while_it_is_replaced(
    universe: Universe, tmp_path: Path
) -> None:
    out = universe.root / "out"
    export_index(universe.lock, universe.store, out)
    with polling(out / "simple" / "index.html", tmp_path) as polled:
        for n in range(30):
            export_index(universe.lock, universe.store, out, targets=X86_ONLY if n % 2 else None)
    assert polled.reads > 0 and polled.misses == 0
    assert hidden(universe.root) == []


@pytest.mark.parametrize("has_exchange", [True, False], ids=["exchange", "two-renames"])
def test_an_export_killed_at_any_rename_leaves_a_whole_export(
    universe: Universe, has_exchange: bool
) -> None:
    """With RENAME_EXCHANGE, OUT is the previous export or the new one after any kill.
    Without it, a kill between the two renames leaves OUT missing, and the next export
    to OUT, even one that fails, first puts the previous one back."""
    out = universe.root / "out"
    export_index(universe.lock, universe.store, out, targets=X86_ONLY)
    previous = tree(out)
    export_index(universe.lock, universe.store, out)
    whole = tree(out)
    assert previous != whole
    missing: list[str] = []

    def before() -> None:
        export_index(universe.lock, universe.store, out, targets=X86_ONLY)

    def after(point: str) -> None:
        if not out.exists():
            missing.append(point)
            refused = traced(export_argv(universe, out, "--target", "no-such-target"))
            assert refused.returncode == 2, refused.stderr
        assert tree(out) in (previous, whole), point

    argv = export_argv(universe, out)
    points = each_kill(argv, exchange=has_exchange, before=before, after=after)
    assert points == (
        ["rename#1", "renameat2#1"] if has_exchange else ["rename#1", "rename#2", "rename#3"]
    )
    assert missing == ([] if has_exchange else ["rename#3"])
    assert tree(out) == whole
    assert hidden(universe.root) == []  # each export removed what the killed one left


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from envship.index import export_index
    from envship.lockfile import LockFile
    from envship.store import Store
    lock, store, out, mode, flag = sys.argv[1:6]
    def progress(done, total, name):
        if done < total // 2:
            return
        if mode == "kill":  # half the files written
            os.kill(os.getpid(), signal.SIGKILL)
        Path(flag + ".reached").touch()
        while not Path(flag + ".release").exists():
            time.sleep(0.02)
    export_index(LockFile.load(Path(lock)), Store(Path(store)), Path(out), progress=progress)
    """
)


def child(u: Universe, out: Path, mode: str, flag: Path) -> list[str]:
    """An export in its own process that, half its files written, SIGKILLs itself
    (``kill``) or waits for ``FLAG.release`` (``wait``)."""
    paths = (u.lock.path, u.store.root, out)
    return [sys.executable, "-c", CHILD, *map(str, paths), mode, str(flag)]


def test_a_running_exports_staging_is_kept_by_a_concurrent_export(
    universe: Universe, tmp_path: Path
) -> None:
    out = universe.root / "out"
    flag = tmp_path / "flag"
    running = subprocess.Popen(child(universe, out, "wait", flag))
    try:
        while not Path(f"{flag}.reached").exists():
            assert running.poll() is None
            time.sleep(0.02)
        staged = hidden(universe.root)
        assert len(staged) == 2  # its staging folder and lock
        export_index(universe.lock, universe.store, out, targets=X86_ONLY)
        assert hidden(universe.root) == staged
        assert tree(universe.root / staged[0] / "new")  # half written, untouched
    finally:
        Path(f"{flag}.release").touch()
        assert running.wait(timeout=120) == 0
    assert len(list((out / "files").glob("*.whl"))) == 5  # the running one's, whole
    assert hidden(universe.root) == []


def test_exports_killed_on_another_file_system_leave_nothing_the_next_one_keeps(
    universe: Universe, small_disk: SmallDisk, tmp_path: Path
) -> None:
    """OUT on another file system than the store: the files are copies, and a killed
    export's half-made tree takes real space until the next export removes it."""
    out = small_disk.path / "out"
    export_index(universe.lock, universe.store, out)
    clean = small_disk.used()
    for _ in range(3):
        argv = child(universe, out, "kill", tmp_path / "flag")
        assert subprocess.run(argv, check=False).returncode == -signal.SIGKILL
    # Each killed export removed the one before it: one folder of copies and its lock.
    assert len(hidden(small_disk.path)) == 2
    assert small_disk.used() > clean
    export_index(universe.lock, universe.store, out)
    assert hidden(small_disk.path) == []
    assert small_disk.used() == clean


@pytest.mark.parametrize(
    ("name", "seconds", "goes"),
    [
        (".out.old-k2j4h1/previous", STALE_AFTER + 60, True),  # an older envship's swap
        (".out.tmp-0f3a9c2b1d7e", STALE_AFTER + 60, True),  # an older envship's staging
        (".out.old-k2j4h1/previous", 60, False),  # its run may still be going
        (".out.tmp-0f3a9c2b1d7e", 60, False),
        (".other.tmp-0f3a9c2b1d7e", STALE_AFTER + 60, False),  # another OUT's
    ],
)
def test_an_older_envships_leftovers_go_once_quiet(
    universe: Universe, name: str, seconds: float, goes: bool
) -> None:
    leftover = universe.root / name
    (leftover / "files").mkdir(parents=True)
    (leftover / "files" / "x.whl").write_bytes(b"x" * 1000)
    top = universe.root / name.split("/")[0]
    age(top, seconds)
    export_index(universe.lock, universe.store, universe.root / "out")
    assert top.exists() is not goes

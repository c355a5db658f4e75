"""``envship._swap``: a folder replaced in one step, and what killed runs left cleared.

Real folders; real processes SIGKILLed by strace as they enter a chosen rename (so the
point of the kill is exact, and nothing of ours is patched); a file system without
RENAME_EXCHANGE stood for by strace making every renameat2 fail with EINVAL, as NFS
does; and a reader in another process checking the target, over and over, while
replacements run. The helpers here drive the same checks on ``index export``
(test_index_swap.py) and ``kernel install`` (test_kernel_replace.py).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from envship._swap import STALE_AFTER, Staging, exchange, sweep

PREFIX = ".out.tmp-"

# --- helpers for this module and the index and kernel tests ------------------------------

READER = """
import os, sys
path, ready, stop = sys.argv[1:4]
reads = misses = 0
open(ready, "w").close()
while True:
    for _ in range(100):
        reads += 1
        if not os.path.exists(path):
            misses += 1
    if os.path.exists(stop):
        break
print(reads, misses)
"""


@dataclass
class Polled:
    reads: int = 0
    misses: int = 0  # how often ``path`` was not there


@contextmanager
def polling(path: Path, scratch: Path) -> Iterator[Polled]:
    """Another process checks that ``path`` exists, as fast as it can, for the whole
    block; the counts are filled in when the block ends."""
    ready, stop = scratch / "reader.ready", scratch / "reader.stop"
    argv = [sys.executable, "-c", READER, str(path), str(ready), str(stop)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    polled = Polled()
    try:
        while not ready.exists():
            assert proc.poll() is None, "the reader died"
            time.sleep(0.01)
        yield polled
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=120)
    polled.reads, polled.misses = map(int, out.split())


def strace() -> str:
    found = shutil.which("strace")
    if found is None:
        pytest.fail("these tests need strace (apt-get install strace)", pytrace=False)
    return found


# os.rename is rename(2) on x86_64 and renameat(2) where there is no rename(2) (aarch64);
# strace counts each system call apart, and "?" skips one this machine does not have.
RENAME = "?rename,renameat"


def traced(
    argv: Sequence[str],
    *,
    kill_before: tuple[str, int] | None = None,
    exchange: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` under strace (its children untraced). ``kill_before=(CALLS, n)``:
    SIGKILL as it enters its n-th call of CALLS, before that call does anything.
    ``exchange=False``: every renameat2 fails with EINVAL, as on NFS."""
    calls = f"?rename,renameat,renameat2,{kill_before[0] if kill_before else ''}".rstrip(",")
    cmd = [strace(), "-qq", "-o", os.devnull, "-e", f"trace={calls}"]  # only these stop
    if not exchange:
        cmd += ["-e", "inject=renameat2:error=EINVAL"]
    if kill_before is not None:
        cmd += ["-e", f"inject={kill_before[0]}:signal=KILL:when={kill_before[1]}"]
    # No byte-code writes: each is a rename of its own, which would shift the count.
    full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run(
        [*cmd, "--", *argv], env=full_env, capture_output=True, text=True, check=False
    )


def each_kill(
    argv: Sequence[str],
    *,
    exchange: bool,
    before: Callable[[], None],
    after: Callable[[str], None],
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Run ``argv`` again and again, SIGKILLed as it enters each of its renames in turn
    (and each renameat2 where the exchange works), ``before`` each run and ``after``
    each kill (given the point, e.g. "rename#2": before the second rename); stop at
    the first run that finishes. The points where it was killed."""
    points = []
    for label, calls in [("rename", RENAME), ("renameat2", "renameat2")][: 2 if exchange else 1]:
        for n in itertools.count(1):
            before()
            proc = traced(argv, kill_before=(calls, n), exchange=exchange, env=env)
            if proc.returncode != -signal.SIGKILL:
                assert proc.returncode == 0, proc.stderr
                break
            points.append(f"{label}#{n}")
            after(points[-1])
    return points


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (none: an empty dict), relative path to bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def age(path: Path, seconds: float) -> None:
    """Make everything at and under ``path`` look last written ``seconds`` ago."""
    stamp = time.time() - seconds
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(p, (stamp, stamp), follow_symlinks=False)


# --- exchange -------------------------------------------------------------------------------


def _make(path: Path, kind: str) -> None:
    if kind == "folder":
        path.mkdir()
        (path / "f").write_text(path.name)
    elif kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text(path.name)
    else:  # a link to a folder elsewhere, which must not be followed
        (path.parent / f"{path.name}-target").mkdir()
        path.symlink_to(path.parent / f"{path.name}-target")


KINDS = ["folder", "empty", "file", "link"]


@pytest.mark.parametrize("kind", KINDS)
def test_exchange_swaps_two_names_in_one_step(tmp_path: Path, kind: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _make(a, "folder")
    _make(b, kind)
    inode_a, inode_b = a.lstat().st_ino, b.lstat().st_ino
    assert exchange(a, b)
    assert (b.lstat().st_ino, a.lstat().st_ino) == (inode_a, inode_b)
    assert (b / "f").read_text() == "a"
    if kind == "link":
        assert a.is_symlink() and (tmp_path / "b-target").is_dir()


def test_exchange_with_a_missing_name_raises_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError):
        exchange(tmp_path / "a", tmp_path / "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


# --- replace --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [None, *KINDS])
def test_replace_puts_the_new_folder_in_place_of_anything(tmp_path: Path, kind: str | None) -> None:
    target = tmp_path / "out"
    if kind is not None:
        _make(target, kind)
    with Staging(tmp_path, PREFIX) as staging:
        new = staging.path / "new"
        new.mkdir()
        (new / "f").write_text("new")
        assert staging.replace(new, target) is (kind is not None)
    assert tree(target) == {"f": b"new"}
    left = {p.name for p in tmp_path.iterdir()} - {"out-target"}  # a replaced link's
    assert left == {"out"}
    if kind == "link":
        assert (tmp_path / "out-target").is_dir()  # replaced, never followed


def test_a_reader_never_finds_the_target_missing_while_it_is_replaced(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    parent.mkdir()
    target = parent / "out"
    target.mkdir()
    (target / "index.html").write_text("0")
    with polling(target / "index.html", tmp_path) as polled:
        for n in range(1, 201):
            with Staging(parent, PREFIX) as staging:
                (staging.path / "new").mkdir()
                (staging.path / "new" / "index.html").write_text(str(n))
                staging.replace(staging.path / "new", target)
    assert polled.reads > 0 and polled.misses == 0
    assert (target / "index.html").read_text() == "200"


# --- killed at each rename ------------------------------------------------------------------

REPLACER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from envship._swap import Staging
    parent = Path(sys.argv[1])
    with Staging(parent, ".out.tmp-") as staging:
        new = staging.path / "new"
        new.mkdir()
        (new / "f").write_text("new")
        staging.replace(new, parent / "out")
    """
)


@pytest.mark.parametrize("has_exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_kill_at_any_rename_leaves_the_old_or_the_new_in_place(
    tmp_path: Path, has_exchange: bool
) -> None:
    """With the exchange, the target is whole after every kill. Without it (NFS), a kill
    between the two renames leaves it missing; the next run puts the old one back."""
    parent = tmp_path / "p"
    parent.mkdir()
    target = parent / "out"
    missing: list[str] = []

    def old() -> None:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        (target / "f").write_text("old")

    def after(point: str) -> None:
        if not target.exists():
            missing.append(point)
            assert not has_exchange, "the target is missing after a kill"
            sweep(parent, PREFIX)  # what the next run does first
        assert tree(target) in ({"f": b"old"}, {"f": b"new"})

    argv = [sys.executable, "-c", REPLACER, str(parent)]
    points = each_kill(argv, exchange=has_exchange, before=old, after=after)
    # The lock's rename, then (exchange) the exchange, or (two renames) old aside, new in.
    expected = ["rename#1", "renameat2#1"] if has_exchange else [f"rename#{n}" for n in (1, 2, 3)]
    assert points == expected
    assert missing == ([] if has_exchange else ["rename#3"])  # between the two
    assert tree(target) == {"f": b"new"}
    assert sorted(p.name for p in parent.iterdir()) == ["out"]  # the runs cleared it all


# --- what runs left -------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from envship._swap import Staging
    parent, mode, flag = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    with Staging(parent, ".out.tmp-") as staging:
        (staging.path / "new").mkdir()
        (staging.path / "new" / "f").write_text("half")
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        flag.with_suffix(".reached").touch()
        while not flag.with_suffix(".release").exists():
            time.sleep(0.02)
    """
)


def _staging(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(PREFIX))


def test_a_killed_owners_staging_goes_a_running_owners_stays(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    parent.mkdir()
    flag = tmp_path / "flag"
    killed = subprocess.run(
        [sys.executable, "-c", HOLDER, str(parent), "kill", str(flag)], check=False
    )
    assert killed.returncode == -signal.SIGKILL
    dead = _staging(parent)
    assert len(dead) == 2 and dead[1] == f"{dead[0]}.lock"  # a folder and its lock

    running = subprocess.Popen([sys.executable, "-c", HOLDER, str(parent), "wait", str(flag)])
    try:
        while not flag.with_suffix(".reached").exists():
            assert running.poll() is None
            time.sleep(0.02)
        live = _staging(parent)  # starting, it cleared what the killed one left
        assert len(live) == 2 and not set(live) & set(dead)
        assert sweep(parent, PREFIX) == []
        assert _staging(parent) == live and (parent / live[0] / "new" / "f").is_file()
        with Staging(parent, PREFIX) as mine:  # another run, at the same time
            assert sorted(set(_staging(parent)) - set(live)) == [
                mine.path.name,
                f"{mine.path.name}.lock",
            ]
        assert _staging(parent) == live
    finally:
        flag.with_suffix(".release").touch()
        assert running.wait(timeout=60) == 0
    assert _staging(parent) == []


@pytest.mark.parametrize(
    ("name", "folder", "seconds", "goes"),
    [
        (".out.old-a1b2c3/previous", True, STALE_AFTER + 60, True),  # an older envship's
        (".out.old-a1b2c3/previous", True, 60, False),  # maybe still in use
        (".out.tmp-d4e5f6", True, STALE_AFTER + 60, True),  # no lock: by age
        (".out.tmp-d4e5f6", True, 60, False),
        (".other.tmp-d4e5f6", True, STALE_AFTER + 60, False),  # another target's
        ("notes", False, STALE_AFTER + 60, False),
    ],
)
def test_leftovers_without_a_lock_go_only_when_old(
    tmp_path: Path, name: str, folder: bool, seconds: float, goes: bool
) -> None:
    path = tmp_path / name
    if folder:
        path.mkdir(parents=True)
        (path / "file").write_text("x")
    else:
        path.write_text("x")
    top = tmp_path / name.split("/")[0]
    age(top, seconds)
    removed = sweep(tmp_path, PREFIX, legacy=[".out.old-"])
    assert removed == ([top.name] if goes else [])
    assert top.exists() is not goes


def test_a_lock_file_not_renamed_yet_goes_when_no_one_holds_it(tmp_path: Path) -> None:
    """A run killed before it renamed its lock file leaves it unlocked; a live run
    holds its lock before the rename (or takes a new file when a sweep took this one)."""
    held = tmp_path / f"{PREFIX}held.new"
    held.write_text("")
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        (tmp_path / f"{PREFIX}dead.new").write_text("")
        assert sweep(tmp_path, PREFIX) == [f"{PREFIX}dead.new"]
        assert _staging(tmp_path) == [f"{PREFIX}held.new"]
    finally:
        os.close(fd)


def test_a_recent_file_keeps_an_old_leftover(tmp_path: Path) -> None:
    """One file written lately means its run may still be going."""
    leftover = tmp_path / ".out.tmp-d4e5f6"
    (leftover / "files").mkdir(parents=True)
    (leftover / "files" / "big.whl").write_text("x")
    age(leftover, STALE_AFTER + 60)
    (leftover / "files" / "new.whl").write_text("y")
    assert sweep(tmp_path, PREFIX) == []


def test_an_old_one_is_not_put_back_over_a_new_target(tmp_path: Path) -> None:
    """Killed between its two renames (no exchange), then something else took the
    target's place: that stays, and the moved-aside old one goes."""
    parent = tmp_path / "p"
    parent.mkdir()
    (parent / "out").mkdir()
    (parent / "out" / "f").write_text("old")
    argv = [sys.executable, "-c", REPLACER, str(parent)]
    proc = traced(argv, kill_before=(RENAME, 3), exchange=False)
    assert proc.returncode == -signal.SIGKILL and not (parent / "out").exists()
    (parent / "out").mkdir()
    (parent / "out" / "f").write_text("someone else's")
    assert len(sweep(parent, PREFIX)) == 1
    assert tree(parent / "out") == {"f": b"someone else's"}
    assert sorted(p.name for p in parent.iterdir()) == ["out"]

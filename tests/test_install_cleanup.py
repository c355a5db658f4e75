"""``envship install`` stopped while it cleans up: ``docker stop`` sends SIGTERM, waits its
grace period and sends SIGKILL, which can land while the clean-up deletes a new
environment (15k files on a slow shared volume take longer than 10 s). At every instant
of a clean-up the folder must be gone, empty, or still marked half made: a folder left
with files but without the mark is "not an envship environment" to every later run,
which then refuses it forever.

The real CLI runs in a process of its own; a CPython audit hook (``sys.addaudithook``,
which observes and changes nothing) sees each removal and rename it makes, records what
the destination holds just before it, and for the kill tests sends the process a real
SIGKILL at a chosen one. uv is the real one, paused before its sync so that the SIGTERM
comes at a known point (the pausing wrapper of ``test_verify_incomplete``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from disklib import SmallDisk
from envship._uv import uv_bin
from envship.install import INCOMPLETE_NAME, MARKER_NAME, install
from envship.verify import verify
from test_install import versions
from test_verify_incomplete import _PAUSING_UV, Made, made  # noqa: F401  (a fixture)

LOCKED = {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}

# The CLI with an audit hook. Armed once the file $ARM exists, it logs every removal and
# rename (with the destination's listing and incomplete mark just before it) and, when
# asked, SIGKILLs the process at one of them: the N-th, the first after the incomplete
# mark was removed (wherever it was: inside the destination, or in a folder set aside),
# or ("emptying") the first removal inside the destination.
_HOOKED_CLI = textwrap.dedent(
    """
    import json, os, signal, sys
    import envship.install
    from envship.cli.main import main

    uv, dest, arm, log, kill = sys.argv[1:6]
    count, mark_gone = 0, False

    def where(path, dir_fd):
        path = os.fsdecode(os.fspath(path))
        if dir_fd is not None and dir_fd >= 0 and not os.path.isabs(path):
            return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return os.path.abspath(path)

    def mark():
        try:
            with open(os.path.join(dest, ".envship-incomplete"), encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return None

    def hook(event, args):
        global count, mark_gone
        if event not in ("os.remove", "os.rmdir", "os.rename") or not os.path.exists(arm):
            return
        count += 1
        path = where(args[0], args[2] if event == "os.rename" else args[1])
        emptying = event != "os.rename" and path.startswith(os.path.join(dest, ""))
        if (
            kill == str(count)
            or (kill == "after-mark" and mark_gone)
            or (kill == "emptying" and emptying)
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        listing = sorted(os.listdir(dest)) if os.path.isdir(dest) else None
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps([event, path, listing, mark()]) + "\\n")
        if event == "os.remove" and os.path.basename(path) == ".envship-incomplete":
            mark_gone = True

    sys.addaudithook(hook)
    envship.install.uv_bin = lambda: uv
    sys.exit(main(sys.argv[6:]))
    """
)


@dataclass(frozen=True)
class Step:
    """One removal or rename the run made, and the destination just before it."""

    event: str
    path: str
    listing: list[str] | None  # None: the destination was not there
    mark: str | None  # the incomplete mark's text, None without one


def _marked(listing: list[str] | None) -> bool:
    """Gone, empty, or marked half made: what a later run can always deal with."""
    return listing is None or listing == [] or INCOMPLETE_NAME in listing


def _listing(dest: Path) -> list[str] | None:
    return sorted(p.name for p in dest.iterdir()) if dest.is_dir() else None


@dataclass(frozen=True)
class Run:
    returncode: int
    steps: list[Step]
    stderr: str


def hooked(tmp_path: Path, dest: Path, args: list[str], *, kill: str = "never", term: bool) -> Run:
    """Run ``envship ARGS`` with the hook. ``term``: uv pauses before its sync, the hook
    is armed and the run gets SIGTERM there; else it is armed from the start and runs
    on."""
    arm, log = tmp_path / "arm", tmp_path / "steps.jsonl"
    flag = tmp_path / "uv-sync"
    uv = uv_bin()
    if term:
        uv = str(tmp_path / "pausing-uv")
        Path(uv).write_text(_PAUSING_UV.format(step="sync", flag=flag, uv=uv_bin()))
        Path(uv).chmod(0o755)
    else:
        arm.touch()
    argv = [sys.executable, "-c", _HOOKED_CLI, uv, str(dest), str(arm), str(log), kill, *args]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    if term:
        deadline = time.monotonic() + 60
        while not (flag.exists() and flag.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        arm.touch()
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    (tmp_path / "uv-sync.go").touch()  # its uv was killed with it: nobody reads this
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return Run(proc.returncode, [Step(*json.loads(line)) for line in lines], err)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "envship", *args], capture_output=True, text=True, check=False
    )


@dataclass(frozen=True)
class Folder:
    dest: Path
    given: bool  # the user gave it, empty: it stays (a mount point, say)


@pytest.fixture(params=["new", "empty", "mount-point"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Folder:
    """Where the interrupted install goes: a folder it makes, an empty one the user gave
    it, or an empty mount point (a real tmpfs: emptied, never renamed or removed)."""
    if request.param == "new":
        return Folder(tmp_path / "env", given=False)
    if request.param == "empty":
        (tmp_path / "env").mkdir()
        return Folder(tmp_path / "env", given=True)
    disk: SmallDisk = request.getfixturevalue("small_disk")
    return Folder(disk.path, given=True)


def test_every_instant_of_the_clean_up_leaves_the_folder_gone_or_marked(
    tmp_path: Path,
    made: Made,  # noqa: F811
    folder: Folder,
) -> None:
    dest = folder.dest
    run = hooked(tmp_path, dest, ["install", str(dest), "--lock", str(made.lock.path)], term=True)

    assert run.returncode == 130, run.stderr
    assert "interrupted" in run.stderr
    assert run.steps, "the clean-up removed nothing"
    unmarked = [s for s in run.steps if not _marked(s.listing)]
    assert unmarked == []
    # What the run left: nothing of it (the folder the user gave stays, empty).
    assert _listing(dest) == ([] if folder.given else None)
    assert not (dest.parent / f"{dest.name}.envship-tmp").exists()


@pytest.mark.parametrize("kill", ["2", "after-mark"])
def test_a_clean_up_killed_midway_is_finished_by_the_next_run(
    tmp_path: Path,
    made: Made,  # noqa: F811
    folder: Folder,
    kill: str,
) -> None:
    """SIGTERM, then SIGKILL during the clean-up: after the first step it took, or right
    after it removed the incomplete mark (the moment a folder still full of files used
    to lose it). Running the same command again finishes the environment."""
    dest = folder.dest
    args = ["install", str(dest), "--lock", str(made.lock.path)]
    run = hooked(tmp_path, dest, args, kill=kill, term=True)

    assert run.returncode == -signal.SIGKILL, run.stderr
    assert _marked(_listing(dest)), _listing(dest)

    again = _cli(*args)
    assert again.returncode == 0, again.stderr
    assert verify(made.lock, dest).identical
    assert versions(dest) == LOCKED
    # A leftover of the killed clean-up (a folder set aside) went with this run's work.
    assert not (dest.parent / f"{dest.name}.envship-tmp").exists()


def _stray_egg_info(dest: Path) -> None:
    """Metadata of an old-style install, which uv's sync cannot remove: the run syncs,
    sees it still there and empties the environment to make it again."""
    [site] = dest.glob("lib/python*/site-packages")
    info = site / "stray-1.0-py3.11.egg-info"
    info.mkdir()
    (info / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: stray\nVersion: 1.0\n")


def test_an_update_that_empties_the_environment_keeps_it_marked(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    dest = tmp_path / "env"
    install(made.lock, made.store, dest)
    _stray_egg_info(dest)

    run = hooked(tmp_path, dest, ["install", str(dest), "--lock", str(made.lock.path)], term=False)

    assert run.returncode == 0, run.stderr
    inside = [s for s in run.steps if Path(s.path).is_relative_to(dest) and s.path != str(dest)]
    assert inside, "the environment was not emptied"
    assert [s for s in inside if not _marked(s.listing)] == []
    # Once emptied it is being made again, and says so to verify and to the next run.
    texts = [s.mark for s in inside]
    assert "rebuild in progress" in texts and "install in progress" not in texts
    assert texts.index("rebuild in progress") > texts.index("update in progress")
    assert (dest / MARKER_NAME).is_file() and not (dest / INCOMPLETE_NAME).exists()
    assert verify(made.lock, dest).identical

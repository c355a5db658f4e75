"""The console entry point: an interruption while the CLI is still being imported.

A real signal is sent to a real ``envship`` process at the moment it imports click (an
import hook in the child sends it to itself then), which is where a Ctrl-C or a ``docker
stop`` in the first tens of milliseconds lands.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# In the child: when click is first imported, this process gets SIG; then the entry point
# runs with the given arguments, as the console script runs it.
CHILD = """
import importlib.abc, os, signal, sys
SIG = getattr(signal, sys.argv[1])
MODULE = os.environ.get("INTERRUPT_AT", "click")

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == MODULE:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), SIG)
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["envship", *sys.argv[2:]]
from envship._entry import main
sys.exit(main())
"""


RUN = "import sys; from envship._entry import main; sys.exit(main())"


def _run(sig: str, *args: str, at: str = "click") -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "INTERRUPT_AT": at}
    return subprocess.run(
        [sys.executable, "-c", CHILD, sig, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interruption_while_importing_is_said_and_exits_130(sig: str) -> None:
    done = _run(sig, "install", "/nonexistent/env")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr == "interrupted before it started; nothing was done\n"
    assert done.stdout == ""


def test_with_json_it_is_one_document_of_the_cli_s_shape() -> None:
    done = _run("SIGINT", "--json", "install", "/nonexistent/env")
    assert done.returncode == 130, done.stderr
    assert json.loads(done.stdout) == {
        "error": "interrupted",
        "hint": None,
        "message": "interrupted before it started; nothing was done",
        "problems": [],
    }


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_while_importing_the_command_json_is_alone_and_text_ends_the_line(sig: str) -> None:
    """The command's module is imported when click looks the command up, inside click's
    own main, which answered a KeyboardInterrupt with a blank line on stderr, also with
    --json, where nothing but the document may be written."""
    done = _run(sig, "--json", "install", "/nonexistent/env", at="envship.cli.install")
    assert done.returncode == 130, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout) == {
        "error": "interrupted",
        "hint": None,
        "message": "interrupted; re-run the same command to resume",
        "problems": [],
    }
    text = _run(sig, "install", "/nonexistent/env", at="envship.cli.install")
    assert text.returncode == 130 and text.stdout == ""
    # The blank line first: on a terminal it ends the line the "^C" echo is on.
    assert text.stderr == "\ninterrupted; re-run the same command to resume\n"


def test_without_an_interruption_the_cli_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RUN, "--version"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("envship, version ")


# As CHILD, without importing signal itself: the entry point's own import of it is hit.
AT_SIGNAL = """
import importlib.abc, os, sys

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "signal":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), 2)
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["envship", *sys.argv[1:]]
from envship._entry import main
sys.exit(main())
"""


def test_a_ctrl_c_while_the_entry_point_imports_signal_is_answered() -> None:
    done = subprocess.run(
        [sys.executable, "-c", AT_SIGNAL, "install", "/nonexistent/env"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted before it started; nothing was done\n"


def test_under_umask_000_nothing_is_made_that_others_may_write(tmp_path: Path) -> None:
    """A venv made under umask 000 would be world-writable, which verify reports and no
    remake mends: envship adds "others may not write" to the umask, keeping group write
    (a folder shared by its group stays group-writable)."""
    from test_install import build_wheels, stocked_store, write_lock

    wheels = build_wheels(tmp_path / "dist")
    picked = [wheels[k] for k in ("alpha", "beta", "tool")]
    lock = write_lock(tmp_path / "pylock.toml", picked).path
    stocked_store(tmp_path / "store", picked)
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def envship(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", RUN, *args],
            capture_output=True,
            text=True,
            env=env,
            umask=0,
            timeout=300,
            check=False,
        )

    dest = tmp_path / "env"
    assert envship("install", str(dest), "--lock", str(lock)).returncode == 0
    checked = envship("verify", str(dest), "--lock", str(lock), "--full")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # uv makes its lock files 0666 whatever the umask (every user may take them); they
    # hold no code.
    paths = [p for p in [dest, *dest.rglob("*")] if not p.is_symlink() and p.name != ".lock"]
    assert [p for p in paths if os.lstat(p).st_mode & stat.S_IWOTH] == []
    # umask 000 less "others": group write stays.
    assert any(os.lstat(p).st_mode & stat.S_IWGRP for p in paths)
    # What install added to the store was written under the same umask.
    store = list((tmp_path / "store").rglob("*"))
    assert [p for p in store if os.lstat(p).st_mode & stat.S_IWOTH and p.name != ".lock"] == []

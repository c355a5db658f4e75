"""What envship says when what is named as an environment or an interpreter is neither:
an ordinary file of a venv (``pyvenv.cfg``, ``bin/activate``, a module), a program that
is not Python (``/bin/ls``, one that never stops printing, one that never answers), a
spec passed as ``--python``. Real venvs from ``envship install``, real programs, the
real CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envship._denied import refused
from envship._environment import find_environment, may_not_run, not_a_program
from envship._pyprobe import _SCRIPT, ProbeFailure, facts_of
from envship.cli.main import main
from envship.envs import check_env, create_env
from envship.errors import SpecError, TargetError
from envship.host import probe
from envship.install import install
from envship.lockfile import LockFile
from envship.store import Store
from test_install import build_wheels, stocked_store, write_lock

LS = shutil.which("ls") or "/bin/ls"


@pytest.fixture
def made(tmp_path: Path) -> tuple[LockFile, Store, Path]:
    wheels = build_wheels(tmp_path / "dist")
    lock = write_lock(tmp_path / "pylock.toml", [wheels[k] for k in ("alpha", "beta", "tool")])
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    install(lock, store, tmp_path / "env")
    return lock, store, tmp_path / "env"


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, dict[str, Any]]:
    code = main(["--json", *map(str, args)])
    return code, json.loads(capsys.readouterr().out)


# A file named as the environment -> the form the hint must name near it.
FILES: dict[str, tuple[str, str]] = {
    "pyvenv.cfg": ("pyvenv.cfg", "{env}, the venv it lies in"),
    "activate-script": ("bin/activate", "{env}, the venv it lies in"),
    "a-module": ("{site}/tool/__init__.py", "{site}, the site-packages folder it lies in"),
    "a-record": ("{site}/tool-1.0.dist-info/RECORD", "{site}, the site-packages folder it lies in"),
}


@pytest.mark.parametrize("case", FILES)
def test_an_ordinary_file_is_not_an_environment(
    made: tuple[LockFile, Store, Path], capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """It was "permission denied: the interpreter ... cannot be read by root" (exit 1),
    with a hint about base interpreters: a file no one may run is no interpreter."""
    lock, _, env = made
    (site,) = env.glob("lib/python*/site-packages")
    rel, near = FILES[case]
    path = env / rel.format(site=site.relative_to(env))
    code, error = run(capsys, "verify", path, "--lock", lock.path)
    assert (code, error["error"], error["message"]) == (2, "spec", f"{path} is not an environment")
    assert [p["where"] for p in error["problems"]] == [str(path)]
    assert error["problems"][0]["message"].startswith("a file no one may run (mode -rw-r--r--)")
    assert error["hint"].endswith("; here: " + near.format(env=env, site=site))


def test_a_device_is_not_an_environment() -> None:
    with pytest.raises(SpecError, match="is not an environment") as caught:
        find_environment(Path("/dev/null"))
    assert "not a regular file" in caught.value.problems[0].message


Program = Callable[[Path], Path]


def _script(body: str) -> Program:
    def make(folder: Path) -> Path:
        path = folder / "program"
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
        return path

    return make


def _garbage(folder: Path) -> Path:
    path = folder / "program"
    path.write_bytes(b"\x7fELF\x00garbage, no loader can run this")
    path.chmod(0o755)
    return path


# A program that is not Python -> a word of what the failure must say it did.
PROGRAMS: dict[str, tuple[Program, str]] = {
    "ls": (lambda _: Path(LS), "exit status 2"),
    "prints-forever": (_script("exec yes"), "printed more than"),
    "prints-its-arguments": (_script('echo "$@"; exit 3'), "exit status 3: -I -S -"),
    "prints-no-json": (_script("echo hello"), "printed no facts: hello"),
    "killed": (_script("kill -9 $$"), "killed by signal 9"),
    "no-program-at-all": (_garbage, "not a program"),
}


@pytest.mark.parametrize("case", PROGRAMS)
def test_a_program_that_is_not_python_is_named_so_briefly(tmp_path: Path, case: str) -> None:
    """The probe's script (3 KB) reached the error through the program's complaint
    (``ls: cannot access '...script...'``); a program printing forever was read into
    memory until the timeout."""
    make, said = PROGRAMS[case]
    program = make(tmp_path)
    with pytest.raises(ProbeFailure) as caught:
        facts_of(str(program))
    assert caught.value.ran and said in caught.value.detail
    assert len(caught.value.detail) < 300 and "def facts" not in caught.value.detail

    with pytest.raises(SpecError) as found:
        find_environment(program)
    assert found.value.message == f"{program} is not a Python interpreter"
    assert [p.message for p in found.value.problems] == [caught.value.detail]
    with pytest.raises(TargetError) as probed:
        probe(program, gpu=lambda: False)
    assert probed.value.message.endswith(" is not a Python interpreter")
    assert "--python" in (probed.value.hint or "")


def test_no_message_holds_the_probe_script(tmp_path: Path) -> None:
    """What ``ls`` said of its arguments was the script itself, shell-quoted."""
    with pytest.raises(ProbeFailure) as caught:
        facts_of(LS)
    assert not any(line in caught.value.detail for line in _SCRIPT.splitlines() if len(line) > 8)


def test_a_program_that_never_answers_is_stopped_with_what_it_started(tmp_path: Path) -> None:
    """A shell script's child keeps its pipes open after the script is killed: the probe
    kills the whole session it started."""
    pid_file = tmp_path / "child.pid"
    program = _script(f"sleep 600 &\necho $! > {pid_file}\nwait")(tmp_path)
    with pytest.raises(ProbeFailure) as caught:
        facts_of(str(program), timeout=1)
    assert not caught.value.ran and caught.value.detail == "no answer within 1 s"
    pid = int(pid_file.read_text())
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")  # killed; a zombie until its new parent reaps it


# --python naming what is no interpreter -> a word of the problem named.
NOT_PYTHONS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "ls": (lambda _: Path(LS), "exit status 2"),
    "a-spec": (lambda t: t / "pylock.toml", "a file no one may run"),
    "a-folder": (lambda t: t / "dist", "a folder"),
}


@pytest.mark.parametrize("case", NOT_PYTHONS)
def test_install_and_env_create_with_a_python_that_is_not_one(
    made: tuple[LockFile, Store, Path], tmp_path: Path, case: str
) -> None:
    """A spec or folder was "no Python interpreter at ...", /bin/ls "did not answer as a
    Python interpreter" with 500 characters of the probe script."""
    lock, store, _ = made
    where, word = NOT_PYTHONS[case]
    python = str(where(tmp_path))
    with pytest.raises(TargetError) as caught:
        install(lock, store, tmp_path / "other", python=python)
    assert caught.value.message.endswith("is not a Python interpreter")
    assert [word in p.message for p in caught.value.problems] == [True]
    assert "def facts" not in str(caught.value) and not (tmp_path / "other").exists()
    with pytest.raises(TargetError) as created:
        create_env(lock, store, tmp_path / "envs", name="n", python=python)
    assert created.value.message.endswith("is not a Python interpreter")
    assert [word in p.message for p in created.value.problems] == [True]


# --python for env check -> the word of its problem; each is there, and none a Python.
CHECKED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "a-spec": (lambda t: t / "pylock.toml", "a file no one may run"),
    "a-folder": (lambda t: t / "dist", "a folder"),
    "a-device": (lambda _: Path("/dev/null"), "not a regular file"),
}


@pytest.mark.parametrize("case", CHECKED)
def test_env_check_with_a_python_that_is_a_file_says_what_it_is(
    made: tuple[LockFile, Store, Path], tmp_path: Path, case: str
) -> None:
    """It said "its interpreter ... does not exist on this machine" and hinted to create
    a version for this machine."""
    lock, store, _ = made
    create_env(lock, store, tmp_path / "envs", name="s")
    where, word = CHECKED[case]
    python = where(tmp_path)
    with pytest.raises(TargetError) as caught:
        check_env(tmp_path / "envs", "s", python=str(python))
    assert caught.value.message == f"{python} is not a Python interpreter"
    assert [(p.where, word in p.message) for p in caught.value.problems] == [(str(python), True)]
    assert "env create" not in (caught.value.hint or "")
    with pytest.raises(TargetError, match="is not a Python interpreter"):
        check_env(tmp_path / "envs", "s", python=LS)


def test_env_check_through_the_cli(
    made: tuple[LockFile, Store, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock, store, _ = made
    create_env(lock, store, tmp_path / "envs", name="s")
    spec = tmp_path / "pylock.toml"
    code, error = run(capsys, "env", "check", "s", "--root", tmp_path / "envs", "--python", spec)
    assert (code, error["message"]) == (2, f"{spec} is not a Python interpreter")


PERMISSIONS: dict[str, tuple[int, str | None]] = {
    "no-execute-bit": (0o644, "a file no one may run (mode -rw-r--r--)"),
    "owner-may-run": (0o744, None),
    "a-folder": (0o755, "a folder"),
}


@pytest.mark.parametrize("case", PERMISSIONS)
def test_only_a_file_someone_may_run_is_a_permission_matter(tmp_path: Path, case: str) -> None:
    """``refused`` says this user may not run a file without execute bits; that is a
    permission matter only when someone else could run it (here, its owner can)."""
    mode, what = PERMISSIONS[case]
    path = tmp_path / "x"
    if case == "a-folder":
        path.mkdir()
    else:
        path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    assert not_a_program(path) == what
    assert refused(path) is (case == "no-execute-bit")
    assert may_not_run(path) is False

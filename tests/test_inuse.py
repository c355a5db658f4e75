"""``envship._inuse``: real processes holding a folder in each way ``/proc`` can show it,
found by a real scan of this machine's ``/proc`` (also as another user)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import envship._inuse as inuse_mod
from envship._inuse import users_of

# Waits for the parent to close stdin, after saying it is set up; does nothing else.
WAIT = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A venv-like folder: ``bin/python`` links to this interpreter, as a venv's does."""
    f = tmp_path / "versions" / "key1"
    (f / "bin").mkdir(parents=True)
    (f / "bin" / "python").symlink_to(sys.executable)
    (f / "data.bin").write_bytes(b"x" * 8192)
    return f


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


Start = Callable[[Path, Path], tuple[list[str], Path | None, dict[str, str]]]

# How each process uses the folder F (argv, cwd, environment); each leaves one trace.
WAYS: dict[str, Start] = {
    "argv0": lambda f, tmp: ([str(f / "bin" / "python"), "-c", WAIT], None, {}),
    "argv0-relative": lambda f, tmp: (
        [f"{f.name}/bin/python", "-c", WAIT],
        f.parent,
        {},
    ),
    "argv0-through-a-link": lambda f, tmp: (
        [str(tmp / "alias" / "bin" / "python"), "-c", WAIT],
        None,
        {},
    ),
    "script-argument": lambda f, tmp: ([sys.executable, str(f / "run.py")], None, {}),
    "cwd": lambda f, tmp: ([sys.executable, "-c", WAIT], f, {}),
    "exe": lambda f, tmp: ([str(tmp / "outside" / "sleeper"), "300"], None, {}),
    "virtual-env": lambda f, tmp: ([sys.executable, "-c", WAIT], None, {"VIRTUAL_ENV": str(f)}),
    "path": lambda f, tmp: ([sys.executable, "-c", WAIT], None, {"PATH": f"{f}/bin:/usr/bin"}),
    "mapped-file": lambda f, tmp: (
        [
            sys.executable,
            "-c",
            f"import mmap; fh = open({str(f / 'data.bin')!r}, 'rb'); "
            "m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ); fh.close(); " + WAIT,
        ],
        None,
        {},
    ),
    "open-file": lambda f, tmp: (
        [sys.executable, "-c", f"fh = open({str(f / 'data.bin')!r}, 'rb'); " + WAIT],
        None,
        {},
    ),
}
EXPECTED_HOW = {
    "argv0": "cmdline",
    "argv0-relative": "cmdline",
    "argv0-through-a-link": "cmdline",
    "script-argument": "cmdline",
    "cwd": "cwd",
    "exe": "exe",
    "virtual-env": "environ",
    "path": "environ",
    "mapped-file": "maps",
    "open-file": "fd",
}


def start(argv: list[str], cwd: Path | None, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a process and return once it is set up (Popen itself returns after exec)."""
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env={**base, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if "-c" in argv or argv[-1].endswith(".py"):
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def prepare(f: Path, tmp: Path) -> None:
    (tmp / "alias").symlink_to(f)
    (f / "run.py").write_text(WAIT + "\n")
    # A program inside F started through a link outside it: only /proc/PID/exe names F.
    sleep = shutil.which("sleep")
    assert sleep is not None
    shutil.copy2(sleep, f / "bin" / "sleep")
    (tmp / "outside").mkdir()
    (tmp / "outside" / "sleeper").symlink_to(f / "bin" / "sleep")


@pytest.mark.parametrize("way", sorted(WAYS))
def test_each_trace_of_a_use_is_found(
    way: str, folder: Path, tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    prepare(folder, tmp_path)
    other = tmp_path / "versions" / "key2"  # beside it, with a name sharing its prefix
    other.mkdir()
    sibling = tmp_path / "versions" / "key1x"
    sibling.mkdir()
    assert users_of([folder, other, sibling]) == {}

    proc = start(*WAYS[way](folder, tmp_path))
    started.append(proc)
    found = users_of([folder, other, sibling])

    assert list(found) == [folder]
    (use,) = [u for u in found[folder] if u.pid == proc.pid]
    assert use.how == EXPECTED_HOW[way]
    assert (use.path + "/").startswith(str(folder) + "/")
    assert use.command == Path(f"/proc/{proc.pid}/comm").read_text().strip()
    assert json.loads(json.dumps(use.to_json()))["pid"] == proc.pid

    proc.kill()
    proc.communicate()  # it is gone: no longer a user
    assert users_of([folder]) == {}


def test_a_process_that_only_looks_near_is_not_a_user(
    folder: Path, tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    near = tmp_path / "versions" / "key1-other"
    (near / "bin").mkdir(parents=True)
    (near / "bin" / "python").symlink_to(sys.executable)
    started.append(start([str(near / "bin" / "python"), "-c", WAIT], tmp_path, {}))
    assert users_of([folder]) == {}
    assert list(users_of([near])) == [near]


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A folder another user can read (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="envship-inuse-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_another_users_processes_are_seen_by_their_command_line(
    world_readable: Path, started: list[subprocess.Popen[str]]
) -> None:
    """Without the right to trace a process only its cmdline is readable (proc(5)):
    the scan keeps going and still finds a process started from the folder."""
    f = world_readable / "versions" / "key1"
    (f / "bin").mkdir(parents=True)
    (f / "bin" / "python").symlink_to(sys.executable)
    for p in (world_readable / "versions", f, f / "bin"):
        p.chmod(0o755)
    module = world_readable / "inuse.py"
    shutil.copyfile(inuse_mod.__file__, module)
    module.chmod(0o644)
    by_argv = start([str(f / "bin" / "python"), "-c", WAIT], None, {})
    by_cwd = start([sys.executable, "-c", WAIT], f, {})
    started += [by_argv, by_cwd]
    scan = (
        "import importlib.util, json, sys; from pathlib import Path\n"
        f"spec = importlib.util.spec_from_file_location('inuse', {str(module)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['inuse'] = m\n"
        "spec.loader.exec_module(m)\n"
        f"found = m.users_of([Path({str(f)!r})])\n"
        "print(json.dumps([u.to_json() for uses in found.values() for u in uses]))\n"
    )
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # The system interpreter: nobody may run it (this one may live in root's home).
    out = subprocess.run(
        [*nobody, "/usr/bin/python3", "-c", scan], capture_output=True, text=True, check=True
    ).stdout
    seen = {u["pid"]: u["how"] for u in json.loads(out)}
    assert seen.get(by_argv.pid) == "cmdline"
    assert by_cwd.pid not in seen  # its cwd is not ours to read: the documented limit
    # Root sees both.
    assert {u.pid for u in users_of([f])[f]} >= {by_argv.pid, by_cwd.pid}

"""``envship._inuse``: real processes holding a folder in each way ``/proc`` can show it,
found by a real scan of this machine's ``/proc`` (also as another user)."""

from __future__ import annotations

import _decimal
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
Where = Callable[[Path, Path], Path]


@dataclass(frozen=True)
class Way:
    """How a process uses the folder F (argv, cwd, environment), the one trace that shows
    it, and the path that trace names."""

    start: Start
    how: str
    path: Where


MMAP = (
    "import mmap; fh = open({!r}, 'rb'); "
    "m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ); fh.close(); "
)
WAYS: dict[str, Way] = {
    "argv0": Way(
        lambda f, tmp: ([str(f / "bin" / "python"), "-c", WAIT], None, {}),
        "cmdline",
        lambda f, tmp: f / "bin" / "python",
    ),
    "argv0-relative": Way(
        lambda f, tmp: ([f"{f.name}/bin/python", "-c", WAIT], f.parent, {}),
        "cmdline",
        lambda f, tmp: f / "bin" / "python",
    ),
    "argv0-through-a-link": Way(
        lambda f, tmp: ([str(tmp / "alias" / "bin" / "python"), "-c", WAIT], None, {}),
        "cmdline",
        lambda f, tmp: tmp / "alias" / "bin" / "python",
    ),
    "script-argument": Way(
        lambda f, tmp: ([sys.executable, str(f / "run.py")], None, {}),
        "cmdline",
        lambda f, tmp: f / "run.py",
    ),
    "cwd": Way(lambda f, tmp: ([sys.executable, "-c", WAIT], f, {}), "cwd", lambda f, tmp: f),
    "exe": Way(
        lambda f, tmp: ([str(tmp / "outside" / "sleeper"), "300"], None, {}),
        "exe",
        lambda f, tmp: f / "bin" / "sleep",
    ),
    "virtual-env": Way(
        lambda f, tmp: ([sys.executable, "-c", WAIT], None, {"VIRTUAL_ENV": str(f)}),
        "environ",
        lambda f, tmp: f,
    ),
    "path": Way(
        lambda f, tmp: ([sys.executable, "-c", WAIT], None, {"PATH": f"{f}/bin:/usr/bin"}),
        "environ",
        lambda f, tmp: f / "bin",
    ),
    "mapped-file": Way(
        lambda f, tmp: ([sys.executable, "-c", MMAP.format(str(f / "data.bin")) + WAIT], None, {}),
        "maps",
        lambda f, tmp: f / "data.bin",
    ),
    "open-file": Way(
        lambda f, tmp: (
            [sys.executable, "-c", f"fh = open({str(f / 'data.bin')!r}, 'rb'); " + WAIT],
            None,
            {},
        ),
        "fd",
        lambda f, tmp: f / "data.bin",
    ),
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


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"mount {' '.join(args)} failed: {proc.stderr.strip()}; the in-use tests reach a "
            "folder through a real bind mount and need root (CAP_SYS_ADMIN), as scripts/test "
            "runs them",
            pytrace=False,
        )


Bind = Callable[[Path, Path], Path]


@pytest.fixture
def bind() -> Iterator[Bind]:
    """``bind(source, point)`` bind-mounts ``source`` at ``point`` (the same files, by
    another path, as a second mount of the root's volume would be); unmounted after."""
    points: list[Path] = []

    def mount(source: Path, point: Path) -> Path:
        point.mkdir(parents=True, exist_ok=True)
        _mount("--bind", str(source), str(point))
        points.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(points):
            # Lazy: a process the test started may still hold a file there.
            subprocess.run(["umount", "-l", str(point)], check=False)


# Which path the process uses the folder by, and which path the scan is asked about:
# the same one, or the folder's parent bind-mounted elsewhere on either side.
VIA = ["same-path", "used-through-a-bind-mount", "asked-through-a-bind-mount"]


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("way", sorted(WAYS))
def test_each_trace_of_a_use_is_found(
    way: str,
    via: str,
    folder: Path,
    tmp_path: Path,
    bind: Bind,
    started: list[subprocess.Popen[str]],
) -> None:
    used = asked = folder
    if via != "same-path":
        other_path = bind(folder.parent, tmp_path / "mnt") / folder.name
        used, asked = (other_path, folder) if via.startswith("used") else (folder, other_path)
        assert str(other_path) != os.path.realpath(folder)  # no link leads from one to other
    prepare(used, tmp_path)
    other = asked.parent / "key2"  # beside it, with a name sharing its prefix
    other.mkdir()
    sibling = asked.parent / "key1x"
    sibling.mkdir()
    assert users_of([asked, other, sibling]) == {}

    proc = start(*WAYS[way].start(used, tmp_path))
    started.append(proc)
    found = users_of([asked, other, sibling])

    assert list(found) == [asked]
    (use,) = [u for u in found[asked] if u.pid == proc.pid]
    assert (use.how, use.path) == (WAYS[way].how, str(WAYS[way].path(used, tmp_path)))
    assert use.command == Path(f"/proc/{proc.pid}/comm").read_text().strip()
    assert json.loads(json.dumps(use.to_json()))["pid"] == proc.pid

    proc.kill()
    proc.communicate()  # it is gone: no longer a user
    assert users_of([asked]) == {}


def test_a_process_in_another_mount_namespace_is_seen_through_its_root(
    folder: Path, tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    """A process whose own mount namespace reaches the folder by a path that does not
    exist here (as a container with the volume mounted would): its cwd names
    ``hidden/key1``, which is looked up under ``/proc/PID/root``."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    inner = (
        f"mount --bind {folder.parent} {hidden} && cd {hidden / folder.name} && "
        f'exec {sys.executable} -c "{WAIT}"'
    )
    proc = start(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner], None, {})
    started.append(proc)  # start() waited for its "ready": it runs in hidden/key1
    assert not (hidden / folder.name).exists()  # here, that path names nothing

    found = users_of([folder])

    assert [(u.pid, u.how, u.path) for u in found[folder]] == [
        (proc.pid, "cwd", str(hidden / folder.name))
    ]


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


def in_own_namespace(
    binds: list[tuple[Path, Path]], argv: list[str], cwd: Path | None
) -> list[str]:
    """``argv`` run in a mount namespace of its own where each ``(source, point)`` is
    bind-mounted (as a container given those folders would be): nothing of it is seen
    here, where each point stays an empty folder."""
    steps = [shlex.join(["mount", "--bind", str(s), str(p)]) for s, p in binds]
    if cwd is not None:
        steps.append(shlex.join(["cd", str(cwd)]))
    steps.append("exec " + shlex.join(argv))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps)]


DECIMAL = Path(_decimal.__file__)  # this interpreter's, built as an extension module
# The subfolder S (a version's site-packages) reached as a process sees it: it imports a
# real extension module found on sys.path (PYTHONPATH, not named in its command line).
IMPORT = (
    "import os, _decimal; "
    "assert _decimal.__file__.startswith(os.environ['PYTHONPATH'] + '/'), _decimal.__file__; "
)
SUB_WAYS: dict[str, Way] = {
    "extension-module-imported": Way(
        lambda s, tmp: ([sys.executable, "-c", IMPORT + WAIT], None, {"PYTHONPATH": str(s)}),
        "maps",
        lambda s, tmp: s / DECIMAL.name,
    ),
    "cwd": Way(lambda s, tmp: ([sys.executable, "-c", WAIT], s, {}), "cwd", lambda s, tmp: s),
    "script-argument": Way(
        lambda s, tmp: ([sys.executable, str(s / "run.py")], None, {}),
        "cmdline",
        lambda s, tmp: s / "run.py",
    ),
    "open-file": Way(
        lambda s, tmp: (
            [sys.executable, "-c", f"fh = open({str(s / 'data.bin')!r}, 'rb'); " + WAIT],
            None,
            {},
        ),
        "fd",
        lambda s, tmp: s / "data.bin",
    ),
    "path": Way(
        lambda s, tmp: ([sys.executable, "-c", WAIT], None, {"PATH": f"{s}:/usr/bin"}),
        "environ",
        lambda s, tmp: s,
    ),
}
# How the subfolder is mounted where the process sees it: a bind mount of it here; a bind
# mount of one of its parents made from a bind mount of the folder's parent (the root
# field names the filesystem's folder, whatever path the mount was made from); a bind
# mount made in the process's own mount namespace only; a bind mount whose folder and
# place have names mountinfo escapes (space, tab, backslash as \ooo).
SUBS = [
    "bind-mount",
    "bind-mount-from-a-bind-mount",
    "in-another-mount-namespace",
    "bind-mount-of-odd-names",
]


@pytest.mark.parametrize("sub", SUBS)
@pytest.mark.parametrize("way", sorted(SUB_WAYS))
def test_a_use_through_a_bind_mount_of_a_subfolder_is_found(
    way: str,
    sub: str,
    folder: Path,
    tmp_path: Path,
    bind: Bind,
    started: list[subprocess.Popen[str]],
) -> None:
    """``mount --bind F/lib/python3.11/site-packages /sub``: the paths the process holds
    (``/sub/...``) have no parent in F; the mount's root in ``mountinfo`` leads back."""
    site = folder / "lib" / "python3.11" / "site-packages"
    if sub == "bind-mount-of-odd-names":
        site = folder / "odd name\\1\tx"
    site.mkdir(parents=True)
    shutil.copyfile(DECIMAL, site / DECIMAL.name)
    (site / "run.py").write_text(WAIT + "\n")
    (site / "data.bin").write_bytes(b"x" * 8192)
    other = folder.parent / "key2"  # beside it, with a name sharing its prefix
    other.mkdir()
    sibling = folder.parent / "key1x"
    sibling.mkdir()
    asked = [folder, other, sibling]
    point = tmp_path / ("sub \\134 x" if sub == "bind-mount-of-odd-names" else "sub")
    argv, cwd, env = SUB_WAYS[way].start(point, tmp_path)
    if sub in ("bind-mount", "bind-mount-of-odd-names"):
        bind(site, point)
    elif sub == "bind-mount-from-a-bind-mount":
        lib = bind(folder.parent, tmp_path / "mnt") / folder.name / "lib"
        point = bind(lib, tmp_path / "lib") / "python3.11" / "site-packages"
        argv, cwd, env = SUB_WAYS[way].start(point, tmp_path)
    else:
        point.mkdir()
        argv, cwd = in_own_namespace([(site, point)], argv, cwd), None
    assert users_of(asked) == {}

    proc = start(argv, cwd, env)
    started.append(proc)
    found = users_of(asked)

    assert list(found) == [folder]
    (use,) = [u for u in found[folder] if u.pid == proc.pid]
    assert (use.how, use.path) == (SUB_WAYS[way].how, str(SUB_WAYS[way].path(point, tmp_path)))
    assert users_of([site]) == {site: found[folder]}  # the subfolder itself is used too

    proc.kill()
    proc.communicate()  # it is gone: no longer a user
    assert users_of(asked) == {}


def test_a_namespace_file_mounted_somewhere_is_passed_over(
    folder: Path, tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    """`ip netns add`, container runtimes and systemd bind-mount namespace files, whose
    mountinfo root is no path (``net:[4026532177]``): gc looped forever on one."""
    ns = tmp_path / "netns"
    ns.touch()
    made = subprocess.run(["unshare", f"--net={ns}", "true"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr  # root, as the suite's bind mounts need
    try:
        assert any(b"net:[" in ln for ln in Path("/proc/self/mountinfo").read_bytes().splitlines())
        proc = start([sys.executable, "-c", WAIT], folder, {})
        started.append(proc)
        found = users_of([folder])
        assert [u.pid for u in found[folder]] == [proc.pid]
    finally:
        subprocess.run(["umount", str(ns)], check=False)

"""A shared root written by one user (root, with a private umask) and used by another
(uid 1000, gid 100, as on SageMaker): every command names the path that refuses, the user
and what its owner can do; none ends in a traceback; list commands list the rest.

The tests run as root and drop privileges with ``setpriv`` for the user's commands. The
user runs the real CLI with /usr/bin/python3.11 (this suite's interpreter lives under
/root, 0700, which uid 1000 cannot reach: that is one of the cases tested) and envship
and its dependencies on PYTHONPATH; everything is made in a world-readable folder under
/tmp (pytest's tmp_path lies under a 0700 folder).
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from envship.envs import create_env
from envship.kernels import install_kernel
from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import verify
from indexlib import build_wheel
from test_install import stocked_store, target, write_lock
from test_kernels import GLIBC, stand_in

USER_1000 = f"{pwd.getpwuid(1000).pw_name} (uid 1000)"  # as messages name users
USER = ["setpriv", "--reuid", "1000", "--regid", "100", "--clear-groups"]
SYSTEM_PY = "/usr/bin/python3.11"  # readable by every user, unlike this suite's /root one
SRC = Path(__file__).resolve().parents[1] / "src"
SITE = sysconfig.get_paths()["purelib"]


@dataclass
class Shared:
    top: Path  # world-readable, removed after
    home: Path  # the user's HOME, theirs
    root: Path  # the env root
    lock: LockFile
    store: Store

    def create(self, name: str, *, umask: int = 0o022, python: str = SYSTEM_PY) -> Path:
        """``env create NAME`` as root under ``umask``; the version's path."""
        old = os.umask(umask)
        try:
            version = create_env(self.lock, self.store, self.root, name=name, python=python)
        finally:
            os.umask(old)
        return version.path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real CLI, as uid 1000."""
        return subprocess.run(
            [*USER, SYSTEM_PY, "-m", "envship", *args],
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*USER, SYSTEM_PY, "-c", code],
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def environ(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "PATH": "/usr/bin:/bin",
            "UV_CACHE_DIR": str(self.home / "uv-cache"),
            "JUPYTER_DATA_DIR": str(self.home / "jupyter"),
            "PYTHONPATH": f"{SRC}{os.pathsep}{SITE}",
        }


def _user_can_run_envship() -> None:
    """What these tests stand on, checked so a broken setup fails here, plainly."""
    assert Path(SYSTEM_PY).is_file(), f"{SYSTEM_PY} is needed to run envship as uid 1000"
    assert os.getuid() == 0, "these tests drop privileges: they must run as root"
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed"


@pytest.fixture
def shared() -> Iterator[Shared]:
    _user_can_run_envship()
    top = Path(tempfile.mkdtemp(prefix="envship-users-", dir="/tmp"))
    try:
        top.chmod(0o755)
        home = top / "home"
        home.mkdir()
        os.chown(home, 1000, 100)
        dist = top / "dist"
        wheels = [build_wheel(dist, "alpha", "1.0"), stand_in(dist)]
        lock = write_lock(top / "pylock.toml", wheels, targets=[target(glibc=GLIBC)])
        store = stocked_store(top / "store", wheels)
        root = top / "envs"
        root.mkdir()
        yield Shared(top, home, root, lock, store)
    finally:
        shutil.rmtree(top)


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def _denied(doc: dict[str, Any], closed: Path) -> None:
    """One JSON error naming the folder that refuses, the user and a remedy."""
    assert doc["error"] == "permission", doc
    assert "permission denied" in doc["message"] and "uid 1000" in doc["message"], doc
    assert [p["where"] for p in doc["problems"]] == [str(closed)], doc
    assert "owned by root (uid 0), mode 0700" in doc["problems"][0]["message"], doc
    assert f"chmod -R a+rX {closed}" in doc["hint"], doc


# -- 1. each command on a version (or environment) the user cannot read --------------

CASES = ["env", "version"]  # the whole environment made under 077, or one later version


def _closed(s: Shared, case: str) -> tuple[str, Path]:
    """An environment named ``ds`` whose ``current`` the user cannot read, and the
    folder that refuses them."""
    if case == "env":
        version = s.create("ds", umask=0o077)
        return "ds", version.parent.parent
    s.create("ds")
    # Another version, made current under a private umask: versions/ stays readable.
    s.lock = write_lock(
        s.top / "other.toml",
        [p for p in (s.top / "dist").iterdir()],
        targets=[target(glibc=GLIBC, name="other")],
    )
    return "ds", s.create("ds", umask=0o077)


@pytest.mark.parametrize("case", CASES)
def test_env_check_says_permission_denied_not_no_version(shared: Shared, case: str) -> None:
    name, closed = _closed(shared, case)
    proc = shared.run("env", "check", name, "--root", str(shared.root), "--json")
    assert proc.returncode == 1
    _denied(_json(proc), closed)
    text = shared.run("env", "check", name, "--root", str(shared.root))
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "has no complete current version" not in text.stderr
    assert f"{closed}: permission denied: {USER_1000}" in text.stderr


@pytest.mark.parametrize("case", CASES)
def test_kernel_install_says_permission_denied(shared: Shared, case: str) -> None:
    name, closed = _closed(shared, case)
    current = shared.root / name / "current"
    # The library, as the CLI's argument check (click's readable test) is not ours.
    code = (
        "import json; from pathlib import Path; from envship.kernels import install_kernel\n"
        "try:\n"
        f"    install_kernel(Path({str(current)!r}))\n"
        "except Exception as e:\n"
        "    print(json.dumps({**e.to_json(), 'exit': e.exit_code}))\n"
    )
    doc = _json(shared.python(code))
    assert doc["exit"] == 1
    _denied(doc, closed)


@pytest.mark.parametrize("case", CASES)
def test_verify_says_permission_denied(shared: Shared, case: str) -> None:
    name, closed = _closed(shared, case)
    current = shared.root / name / "current"
    code = (
        "import json; from pathlib import Path; from envship.verify import verify\n"
        "from envship.lockfile import LockFile\n"
        "try:\n"
        f"    verify(LockFile.load(Path({str(shared.lock.path)!r})), Path({str(current)!r}))\n"
        "except Exception as e:\n"
        "    print(json.dumps({**e.to_json(), 'exit': e.exit_code}))\n"
    )
    doc = _json(shared.python(code))
    assert doc["exit"] == 1
    _denied(doc, closed)


def test_verify_cli_of_an_unreadable_environment_is_one_json_error(shared: Shared) -> None:
    name, closed = _closed(shared, "env")
    lock = str(shared.lock.path)
    proc = shared.run("verify", str(shared.root / name / "current"), "--lock", lock, "--json")
    assert proc.returncode == 1
    _denied(_json(proc), closed)


def test_env_list_lists_the_rest_and_names_what_it_cannot_read(shared: Shared) -> None:
    shared.create("open")
    private = shared.create("private", umask=0o077)
    shared.create("mixed")
    mixed_lock = write_lock(
        shared.top / "mixed.toml",
        list((shared.top / "dist").iterdir()),
        targets=[target(glibc=GLIBC, name="m")],
    )
    shared.lock, kept = mixed_lock, shared.lock
    closed_version = shared.create("mixed", umask=0o077)
    shared.lock = kept
    proc = shared.run("env", "list", "--root", str(shared.root), "--json")
    assert proc.returncode == 0, proc.stderr
    envs = {e["name"]: e for e in _json(proc)["envs"]}
    assert sorted(envs) == ["mixed", "open", "private"]
    assert envs["open"]["unreadable"] is None and envs["open"]["versions"][0]["complete"]
    assert envs["private"]["versions"] == []
    assert envs["private"]["unreadable"].startswith(f"{private.parent.parent}: permission denied")
    states = {v["key"]: v for v in envs["mixed"]["versions"]}
    assert states[closed_version.name]["unreadable"].startswith(
        f"{closed_version}: permission denied: {USER_1000}"
    )
    others = [v for k, v in states.items() if k != closed_version.name]
    assert [v["complete"] for v in others] == [True] and others[0]["unreadable"] is None
    text = shared.run("env", "list", "--root", str(shared.root)).stdout.splitlines()
    assert f"  unreadable: {envs['private']['unreadable']}" in text
    assert any(
        ln.endswith(f"{closed_version.name}  unreadable")
        for ln in (line.split("  used ")[0] for line in text)
    )


def test_kernel_list_shows_every_kernel_and_why_one_refuses(shared: Shared) -> None:
    shared.create("open")
    private = shared.create("private", umask=0o077).parent.parent
    kernels = shared.top / "kernels"
    for name in ("open", "private"):
        install_kernel(shared.root / name / "current", name=name, kernel_dir=kernels)
    hidden = kernels / "hidden"  # a kernelspec folder the user may not read: Jupyter skips it
    shutil.copytree(kernels / "open", hidden)
    hidden.chmod(0o700)
    proc = shared.run("kernel", "list", "--kernel-dir", str(kernels), "--json")
    assert proc.returncode == 0, proc.stderr
    found = {k["name"]: k for k in _json(proc)["kernels"]}
    assert sorted(found) == ["open", "private"]
    assert found["open"]["fits"] is True
    refused = found["private"]
    assert refused["fits"] is False and refused["env_exists"] is False
    assert refused["reasons"] == [
        f"{private}: permission denied to uid 1000; owned by root, mode drwx------"
    ]
    assert refused["remedies"] == [
        f"ask its owner to make it readable by every user: chmod -R a+rX {private}"
    ]


# -- 2. the base interpreter under a private home ----------------------------------------


def test_a_version_on_a_private_base_interpreter_is_named_as_such(shared: Shared) -> None:
    base = os.path.realpath(sys.executable)
    home = next(p for p in Path(base).parents if p.parent == Path("/"))
    assert not os.stat(home).st_mode & 0o001, f"{home} must be closed for this test"
    version = create_env(shared.lock, shared.store, shared.root, name="ds")
    assert any(base in n and "other users cannot run" in n for n in version.notes)
    proc = shared.run("env", "check", "ds", "--root", str(shared.root), "--json")
    assert proc.returncode == 1
    doc = _json(proc)
    assert doc["error"] == "permission" and "does not exist" not in json.dumps(doc)
    assert [p["where"] for p in doc["problems"]] == [str(home)]
    assert "--python" in doc["hint"]


def test_env_create_notes_a_version_others_cannot_read(shared: Shared) -> None:
    old = os.umask(0o077)
    try:
        version = create_env(shared.lock, shared.store, shared.root, name="ds", python=SYSTEM_PY)
    finally:
        os.umask(old)
    assert len(version.notes) == 1
    # The first folder others may not enter is the environment's own (made under 077):
    # the fix named opens that one, and then another user can use the version.
    fix = f"chmod -R a+rX {shared.root / 'ds'}"
    assert fix in version.notes[0]
    assert shared.run("env", "check", "ds", "--root", str(shared.root)).returncode == 1
    subprocess.run(shlex.split(fix), check=True)
    checked = shared.run("env", "check", "ds", "--root", str(shared.root))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    fine = create_env(shared.lock, shared.store, shared.root, name="ok", python=SYSTEM_PY)
    assert fine.notes == ()


# -- last resort: an OSError no command expected ------------------------------------------


def test_an_unexpected_permission_error_is_one_message_not_a_traceback(shared: Shared) -> None:
    # `install` into a folder below one this user may not enter: nothing on its way
    # expects that refusal, and the last resort in cli/main.py answers it.
    closed = shared.top / "private"
    closed.mkdir()
    closed.chmod(0o700)
    dest = closed / "env"
    lock, store = str(shared.lock.path), str(shared.store.root)
    for extra in ([], ["--json"]):
        proc = shared.run("install", str(dest), "--lock", lock, "--store", store, *extra)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == 1
        if extra:
            doc = json.loads(proc.stdout)
            assert doc["error"] == "permission" and str(dest) in doc["message"]
            assert [p["where"] for p in doc["problems"]] == [str(closed)]
            assert "uid 1000" in doc["problems"][0]["message"]
        else:
            assert proc.stderr.startswith(f"error: permission denied: {dest}")


def test_a_write_refused_in_a_readable_folder_says_so_not_cannot_read(shared: Shared) -> None:
    closed = shared.top / "readonly-for-others"
    closed.mkdir()
    closed.chmod(0o755)  # root's: others may enter and read, not create
    dest = closed / "env"
    lock, store = str(shared.lock.path), str(shared.store.root)
    proc = shared.run("install", str(dest), "--lock", lock, "--store", store, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["error"] == "permission" and doc["message"].startswith(
        f"permission denied: {USER_1000}"
    )
    assert "may not create files in" in doc["message"] and "cannot be read" not in doc["message"]
    (problem,) = doc["problems"]
    assert problem["message"].startswith(f"{problem['where']} is owned by root (uid 0)")


def test_a_kernelspec_folder_this_user_may_not_enter_is_skipped(shared: Shared) -> None:
    """As Jupyter does: `kernel remove` looks into every kernelspec folder."""
    kernels = shared.top / "kernels"
    closed = kernels / "private"
    closed.mkdir(parents=True)
    (closed / "kernel.json").write_text("{}")
    closed.chmod(0o700)
    proc = shared.run("kernel", "remove", "x", "--kernel-dir", str(kernels), "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"] == "kernel-input"


@pytest.mark.parametrize("command", ["list", "remove"])
@pytest.mark.parametrize("closed_at", ["itself", "parent"])
def test_a_kernel_dir_this_user_may_not_list_is_said_as_such(
    shared: Shared, command: str, closed_at: str
) -> None:
    """Not click's "does not exist": whose folder refuses, exit 1."""
    kernels = shared.top / "private" / "kernels"
    kernels.mkdir(parents=True)
    closed = kernels if closed_at == "itself" else kernels.parent
    closed.chmod(0o700)
    name = ["x"] if command == "remove" else []
    proc = shared.run("kernel", command, *name, "--kernel-dir", str(kernels), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = _json(proc)
    assert doc["message"] == (
        f"permission denied: the kernel folder {kernels} cannot be read by {USER_1000}"
    )
    assert [p["where"] for p in doc["problems"]] == [str(closed)]


# -- 3. fetch --verify by a user who cannot write the store -----------------------------


def test_fetch_verify_names_damage_it_cannot_repair(shared: Shared) -> None:
    artifact = next(a for a in shared.lock.artifacts() if a.filename.startswith("alpha"))
    stored = shared.store.path(artifact.sha256)
    stored.chmod(0o644)
    data = bytearray(stored.read_bytes())
    data[100] ^= 1  # same size: only --verify finds it
    stored.write_bytes(bytes(data))
    stored.chmod(0o444)
    lock, store = str(shared.lock.path), str(shared.store.root)
    proc = shared.run("fetch", "--lock", lock, "--store", store, "--verify", "--json")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    doc = _json(proc)
    assert doc["error"] == "integrity" and doc["artifact"] == artifact.filename
    assert "not replaced" in doc["message"]
    assert [p["where"] for p in doc["problems"]] == [artifact.filename]
    assert str(stored) in doc["problems"][0]["message"]


@pytest.mark.parametrize("mode", [0o700, 0o755])
def test_fetch_into_a_store_the_user_may_not_write_says_whose_it_is(
    shared: Shared, mode: int
) -> None:
    """Not "cannot create the store": it is there, and another user owns it."""
    store = shared.top / "their-store"
    store.mkdir()
    store.chmod(mode)
    proc = shared.run("fetch", "--lock", str(shared.lock.path), "--store", str(store), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = _json(proc)
    assert doc["error"] == "permission"
    assert doc["message"] == f"permission denied: {USER_1000} may not write to the store at {store}"
    assert [p["where"] for p in doc["problems"]] == [str(store)]
    assert (
        f"owned by root (uid 0), group root, mode {stat.filemode(stat.S_IFDIR | mode)}"
        in (doc["problems"][0]["message"])
    )
    assert "--store DIR" in doc["hint"]
    assert not any(store.iterdir())


# -- 4. uv's .lock in a shared version -------------------------------------------------------


def test_a_version_keeps_no_file_anyone_may_write(shared: Shared) -> None:
    version = shared.create("ds")
    assert not (version / ".lock").exists()
    writable = [p for p in version.rglob("*") if not p.is_symlink() and p.stat().st_mode & 0o002]
    # The use stamp alone is meant to be: every user who runs the version refreshes it.
    assert all(p.name == ".envship-used" for p in writable), writable


@pytest.mark.parametrize("name", [".lock", ".envship-install.json", "pyvenv.cfg"])
def test_verify_reports_a_world_writable_file_of_the_venv_itself(shared: Shared, name: str) -> None:
    version = shared.create("ds")
    path = version / name
    path.touch()
    path.chmod(0o666)
    report = verify(shared.lock, version, store=shared.store)
    found = [d for d in report.differences if d.path == str(path)]
    assert [(d.kind, d.expected) for d in found] == [("changed", "not writable by others")]


@pytest.mark.parametrize("command", [("verify", "--lock", "{lock}"), ("kernel", "install")])
def test_an_environment_below_a_private_folder_is_explained_on_the_command_line(
    shared: Shared, command: tuple[str, ...]
) -> None:
    """Not click's "Directory ... is not readable" (exit 2): whose folder, and the fix."""
    closed = shared.top / "private-env"
    (closed / "v").mkdir(parents=True)
    closed.chmod(0o700)
    name, *rest = command
    args = [a.format(lock=shared.lock.path) for a in rest]
    if name == "verify":
        proc = shared.run(name, str(closed / "v"), *args, "--json")
    else:
        proc = shared.run(name, *args, str(closed / "v"), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["error"] == "permission"
    assert [p["where"] for p in doc["problems"]] == [str(closed)]
    assert doc["hint"].startswith(f"ask the owner of {closed} to make it readable")


@pytest.mark.parametrize("command", [("env", "list"), ("env", "gc", "--dry-run")])
def test_a_private_root_is_a_permission_error_not_a_usage_error(
    shared: Shared, command: tuple[str, ...]
) -> None:
    private = shared.top / "private-root"
    private.mkdir()
    private.chmod(0o700)
    proc = shared.run(*command, "--root", str(private), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # click said exit 2, "usage"
    doc = json.loads(proc.stdout)
    assert doc["error"] == "permission"
    assert doc["message"] == f"permission denied: {private} cannot be read by {USER_1000}"
    assert [p["where"] for p in doc["problems"]] == [str(private)]

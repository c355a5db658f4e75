"""A kernel whose environment's ``bin/python`` was relinked to another interpreter after it
was made (another build of the same X.Y, or another X.Y): the launcher refuses it, at a
start and in ``kernel list``'s check, as a change to the environment, never as this
machine's fault, and the one command it prints repairs it.

Real environments (``envship install``, ``envship env create``) from wheels built here,
relinked with ``ln -sf`` to real interpreters of this machine; kernels started through
jupyter_client; a real ipykernel (from PyPI) where the kernel must run code.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from envship import _launcher
from envship.cli.kernel import command
from envship.cli.main import cli, main
from envship.envs import create_env
from envship.install import INCOMPLETE_NAME, MARKER_NAME, install
from envship.kernels import KernelError, install_kernel
from indexlib import build_wheel
from test_install import PY, stocked_store, target, write_lock
from test_kernel_remedies import run_printed
from test_kernels import (  # noqa: F401  (ipykernel_wheels, started: fixtures used here)
    GLIBC,
    MACHINE,
    Shared,
    copied_python,
    execute,
    ipykernel_wheels,
    isolate_jupyter,
    make_env,
    make_shared,
    run_launcher,
    stand_in,
    start_dies,
    started,
)

MADE_WITH = os.path.realpath(sys.executable)  # what `envship install` makes bin/python run
# Where interpreters live here (read before the tests point HOME elsewhere).
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))


def _interpreters() -> dict[str, str]:
    """This machine's interpreters by ``pythonX.Y`` file, one per build (real path)."""
    folders = ["/usr/bin", "/usr/local/bin", *sorted(glob.glob(f"{PYENV}/versions/*/bin"))]
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted(glob.glob(f"{folder}/python3.[0-9]*")):
            if path.rsplit("python", 1)[1].replace(".", "").isdigit() and os.access(path, os.X_OK):
                found.setdefault(os.path.realpath(path), path)
    return found


def other_build() -> str:
    """Another build of this X.Y (Debian's python3.11 next to pyenv's, say)."""
    same = [p for r, p in _interpreters().items() if p.endswith(f"python{PY}") and r != MADE_WITH]
    assert same, f"this machine needs a second build of Python {PY} for these tests"
    return same[0]


def other_xy() -> str:
    """An interpreter of another X.Y (the next one first)."""
    minor = sys.version_info[1]
    others = sorted(
        (p for p in _interpreters().values() if not p.endswith(f"python{PY}")),
        key=lambda p: (not p.endswith(f"python3.{minor + 1}"), p),
    )
    assert others, "this machine needs an interpreter of another Python X.Y for these tests"
    return others[0]


RELINKS: dict[str, Callable[[], str]] = {
    "same X.Y, another build": other_build,
    "another X.Y": other_xy,
}


@pytest.fixture(autouse=True)
def user_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cli.add_command(command)
    return isolate_jupyter(tmp_path, monkeypatch)


@pytest.fixture
def shared(tmp_path: Path) -> Shared:
    return make_shared(tmp_path / "work", [stand_in(tmp_path / "dist")])


def relink(env: Path, interpreter: str) -> str:
    """``ln -sf INTERPRETER ENV/bin/python``, as the audit did; what it linked to before."""
    python = env / "bin" / "python"
    was = os.readlink(python)
    subprocess.run(["ln", "-sf", interpreter, str(python)], check=True)
    assert os.readlink(python) == interpreter
    return was


def kernel_list(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["kernel", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["kernels"]
    return dict(listed)


def marker_of(env: Path) -> dict[str, Any]:
    marker: dict[str, Any] = json.loads((env / MARKER_NAME).read_text())
    return marker


# --- 1. refused as a change to the environment, and the remedy repairs it ----------------


@pytest.mark.parametrize("how", list(RELINKS))
@pytest.mark.parametrize("place", ["private", "root version"])
def test_a_relinked_interpreter_is_a_changed_environment_and_its_remedy_repairs_it(
    shared: Shared,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    place: str,
    how: str,
) -> None:
    if place == "private":
        registered = make_env(tmp_path / "work")
        store = tmp_path / "work" / "store"
    else:
        create_env(shared.first, shared.store, shared.root, name="ds")
        registered = shared.root / "ds" / "current"
        store = shared.store.root
    made = install_kernel(registered)
    env = Path(os.path.realpath(registered))  # the version `current` names
    marker = marker_of(env)
    lock = marker["lock"]["path"]
    interpreter = RELINKS[how]()
    was = relink(env, interpreter)
    assert marker["venv_links"]["bin/python"] == was

    # envship's own checks do not pass it either (verify: a changed link, or for another
    # X.Y an interpreter that does not run the environment).
    capsys.readouterr()
    if place == "private":
        assert main(["verify", str(env), "--lock", lock]) != 0
        fix = f"make it again from its lock: envship install {env} --lock {lock} --store {store}"
    else:
        assert main(["env", "check", "ds", "--root", str(shared.root)]) == 1
        fix = (
            "make the version again (env create repairs it in place): envship env create ds "
            f"--root {shared.root} --lock {lock} --python {marker['python']['base']} "
            f"--store {store}"
        )
    head = (
        f"envship: kernel '{made.name}' cannot start: the environment {env} was changed "
        f"since it was made: its interpreter bin/python is now a link to {interpreter}; "
        f"it was made with {was}"
    )
    reason = (
        f"{env}/bin/python is a link to {interpreter}, not the link to {was} its install "
        "record names"
    )

    said = start_dies(made.name, tmp_path)  # through jupyter_client, as a notebook server
    assert said.splitlines() == [head, f"  - {reason}", f"envship: {fix}"]
    for wrong in ("this machine", "ipykernel is not installed", "Traceback", "Error"):
        assert wrong not in said
    listed = kernel_list(capsys)
    assert (listed["fits"], listed["reasons"], listed["remedies"]) == (False, [reason], [fix])
    # kernel install says the same, rather than register a kernel that never starts.
    with pytest.raises(KernelError) as err:
        install_kernel(registered)
    assert str(err.value) == (
        f"cannot make a kernel of {registered}: it was changed since it was made: its "
        f"interpreter bin/python is now a link to {interpreter}; it was made with {was}"
    )
    assert err.value.hint == f"{fix}, then `envship kernel install {registered}`"

    # Following it, as printed, from another folder, where the default store is empty:
    # the command names the store the wheels are in (a kernel's environment may lack
    # the user's ENVSHIP_STORE).
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "empty-store"))
    run_printed(fix[fix.index("envship ") :], tmp_path)
    assert os.readlink(env / "bin" / "python") == was  # repaired in place
    assert kernel_list(capsys)["fits"] is True
    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prefix"] == str(env)


@pytest.mark.parametrize(
    ("installed", "said"), [(["docs"], "--group docs"), ([], "--no-groups")], ids=["docs", "none"]
)
def test_the_remedy_repeats_the_groups_the_environment_was_installed_with(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    installed: list[str],
    said: str,
) -> None:
    """Installed with `--group docs`, or with none, of a lock with two groups: the
    command that makes it again says so (install's default is every group, which would
    add gamma)."""
    work = tmp_path / "work"
    gamma = build_wheel(work / "dist", "gamma", "1.0")
    env = make_env(
        work,
        extra=[stand_in(work / "dist"), gamma],
        groups={"docs": [], "dev": ["gamma"]},
        installed=installed,
    )
    made = install_kernel(env)
    marker = marker_of(env)
    assert marker["groups"] == installed
    relink(env, other_build())
    fix = (
        f"make it again from its lock: envship install {env} --lock {marker['lock']['path']} "
        f"{said} --store {marker['store']}"
    )
    assert start_dies(made.name, tmp_path).splitlines()[-1] == f"envship: {fix}"
    assert kernel_list(capsys)["remedies"] == [fix]
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "empty-store"))
    run_printed(fix[fix.index("envship ") :], tmp_path)
    assert marker_of(env)["groups"] == installed
    assert not list(env.glob("lib/python*/site-packages/gamma*"))
    assert kernel_list(capsys)["fits"] is True


# --- 2. a real kernel: relinked, it dies with the reason; untouched, it runs code ---------


@pytest.mark.pypi
@pytest.mark.parametrize("how", [None, *RELINKS])
def test_a_real_kernel_dies_with_the_reason_when_relinked_and_runs_code_when_not(
    tmp_path: Path,
    ipykernel_wheels: list[Path],  # noqa: F811
    started: list[KernelManager],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    how: str | None,
) -> None:
    env = make_env(tmp_path / "work", name="real", extra=ipykernel_wheels)
    made = install_kernel(env)
    if how is None:
        assert kernel_list(capsys)["fits"] is True
        km = KernelManager(kernel_name=made.name)
        started.append(km)
        km.start_kernel()
        out = execute(km, "import alpha, sys; print(alpha.__version__, sys.prefix)")
        assert out.split() == ["1.0", str(env)]
        return
    interpreter = RELINKS[how]()
    relink(env, interpreter)
    said = start_dies(made.name, tmp_path)
    first, *rest = said.splitlines()
    assert first.startswith(
        f"envship: kernel 'real' cannot start: the environment {env} was changed since it "
        f"was made: its interpreter bin/python is now a link to {interpreter}; "
    )
    assert rest[-1].startswith(f"envship: make it again from its lock: envship install {env} ")
    assert "Traceback" not in said and "ModuleNotFoundError" not in said
    assert kernel_list(capsys)["fits"] is False


# --- 3. what the marker cannot tell: today's behaviour ----------------------------------


def test_a_marker_without_links_keeps_the_machine_check_without_a_false_reason(
    tmp_path: Path,
) -> None:
    """An environment made before the marker recorded ``venv_links``: nothing to compare
    the link with, so Python checks the interpreter as before (another X.Y is refused),
    but ipykernel is looked for where the environment has it, not under the
    interpreter's own lib/pythonX.Y."""
    env = make_env(tmp_path / "work")
    made = install_kernel(env)
    marker = marker_of(env)
    del marker["venv_links"]
    (env / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    interpreter = other_xy()
    relink(env, interpreter)
    xy = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert f"; this machine is {MACHINE} with " in lines[0] and "changed since" not in lines[0]
    assert lines[1] == f"  - Python {PY} needed, the interpreter is {xy}"
    assert "ipykernel is not installed" not in proc.stderr
    assert len([line for line in lines if line.startswith("envship: ")]) == 2  # head, one fix


def test_a_relink_away_from_an_interpreter_this_machine_lacks_is_not_called_a_change(
    tmp_path: Path,
) -> None:
    """Made on an interpreter that is not on this machine (the image it was made in), then
    linked to one of this machine's: `envship install` and `env check` do not call that a
    changed interpreter either (a base missing here is the machine's lack), so the
    launcher judges it by what it runs, as before."""
    work = tmp_path / "work"
    image = tmp_path / "image"
    wheels = [stand_in(work / "dist")]
    lock = write_lock(work / "pylock.toml", wheels, targets=[target(glibc=GLIBC)])
    env = work / "ds-env"
    install(lock, stocked_store(work / "store", wheels), env, python=copied_python(image))
    made = install_kernel(env)
    relink(env, MADE_WITH)
    shutil.rmtree(image)  # the image it was made in is not this one

    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prefix"] == str(env)


def test_a_half_installed_env_is_told_so_even_when_its_interpreter_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an install runs (or after one was killed) the marker may still be the last
    install's and bin/python the new one's: that is a half-installed environment, and
    finishing it (the launcher's remedy for that) makes its interpreter right too."""
    env = make_env(tmp_path / "work")
    made = install_kernel(env)
    was = relink(env, other_build())
    (env / INCOMPLETE_NAME).write_text("rebuild in progress\n")

    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 1 and proc.stdout == ""
    first, *_, last = proc.stderr.splitlines()
    assert first.endswith(
        f"the environment {env} is half installed: an install or update of it did not finish"
    )
    assert "changed since" not in proc.stderr and "this machine" not in proc.stderr
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "work" / "store"))
    run_printed(last[last.index("envship install") :], tmp_path)
    assert os.readlink(env / "bin" / "python") == was
    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["prefix"] == str(env), proc.stderr


def test_a_record_not_indented_as_envship_writes_it_still_refuses_a_relinked_interpreter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sh part finds `venv_links` in the marker by envship's indentation; the same
    record on one line got past it, and the kernel started on the relinked interpreter.
    The Python part makes the same check."""
    env = make_env(tmp_path / "work")
    made = install_kernel(env)
    marker = marker_of(env)
    relink(env, other_build())
    (env / MARKER_NAME).write_text(json.dumps(marker))  # valid JSON, one line
    said = start_dies(made.name, tmp_path).splitlines()
    assert said[0] == (
        f"envship: kernel '{made.name}' cannot start: the environment {env} was changed since "
        "it was made: its interpreter bin/python was relinked"
    )
    assert said[-1] == (
        f"envship: make it again from its lock: envship install {env} --lock "
        f"{marker['lock']['path']} --store {marker['store']}"
    )
    assert kernel_list(capsys)["fits"] is False


def test_the_launcher_parses_as_python_3_7() -> None:
    """Its Python part runs on the environment's interpreter, which may be an older one
    swapped in: it must refuse with a reason, never die on a syntax error."""
    source = Path(_launcher.__file__).read_text(encoding="utf-8")
    ast.parse(source, feature_version=(3, 7))

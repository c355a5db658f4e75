"""``%envship``: the notebook magic, alone and inside a real kernel of a locked environment.

The kernel tests start ipykernel (its wheels come from PyPI once, hence ``pypi``) in an
environment made by ``envship install`` that does not contain envship, run ``%envship
add kappa`` against the local test index, and import kappa in the same kernel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

import envship._magic as magic
from envship.add import ADDED_KEY
from envship.install import MARKER_NAME, install
from envship.kernels import MAGIC_NAME, install_kernel
from envship.lockfile import LockFile
from envship.verify import verify
from indexlib import IndexServer
from test_add import PY, SPEC, add_index_root, add_server  # noqa: F401  (fixtures)
from test_install import stocked_store, target, write_lock
from test_kernels import GLIBC, ipykernel_wheels, isolate_jupyter  # noqa: F401  (a fixture)

# Prints its arguments: a real process standing in for envship where the test is about
# what the magic passes on, not about envship itself.
ECHO = "import json, sys; print(json.dumps(sys.argv[1:])); sys.exit(3 * ('fail' in sys.argv))"


def kernel_folder(root: Path, command: list[str], env: str = "/envs/ds") -> Path:
    """A kernelspec folder as `envship kernel install` writes it: the facts and the magic."""
    root.mkdir(parents=True, exist_ok=True)
    facts = {"env": env, "envship_command": command}
    (root / "kernel.json").write_text(json.dumps({"metadata": {"envship": facts}}))
    (root / MAGIC_NAME).write_bytes(Path(magic.__file__).read_bytes())
    return root


@pytest.mark.parametrize(
    ("line", "passed", "code"),
    [
        ("add kappa 'beta<2'", ["add", "--env", "/envs/ds", "kappa", "beta<2"], 0),
        ("add --env /other kappa", ["add", "--env", "/other", "kappa"], 0),
        ("add --env=/other kappa", ["add", "--env=/other", "kappa"], 0),
        ("verify --full", ["verify", "--full"], 0),
        ("add fail", ["add", "--env", "/envs/ds", "fail"], 3),  # the exit code is passed on
    ],
)
def test_run_passes_the_kernels_environment_and_streams_output(
    tmp_path: Path, line: str, passed: list[str], code: int
) -> None:
    folder = kernel_folder(tmp_path / "k", [sys.executable, "-c", ECHO])
    out: list[str] = []
    assert magic.run(line, write=out.append, folder=str(folder)) == code
    assert [json.loads(x) for x in out] == [passed]


def test_run_without_a_kernelspec_uses_this_interpreter_and_prefix(tmp_path: Path) -> None:
    assert magic.envship_command(str(tmp_path)) == [sys.executable, "-m", "envship"]
    assert magic.kernel_env(str(tmp_path)) == sys.prefix


def test_run_reports_a_missing_envship_and_an_empty_line(tmp_path: Path) -> None:
    folder = kernel_folder(tmp_path / "k", [str(tmp_path / "gone" / "envship")])
    out: list[str] = []
    assert magic.run("add kappa", write=out.append, folder=str(folder)) == 127
    assert "re-run `envship kernel install`" in out[0]
    out.clear()
    assert magic.run("  ", write=out.append, folder=str(folder)) == 2
    assert out[0].startswith("usage: %envship add")


def test_the_copied_magic_needs_only_the_standard_library(tmp_path: Path) -> None:
    """Loaded as the launcher loads it, by an interpreter that cannot see site-packages."""
    folder = kernel_folder(tmp_path / "k", [sys.executable, "-c", ECHO])
    code = (
        "import importlib.util, json, sys\n"
        "before = set(sys.modules)\n"
        f"path = {str(folder / MAGIC_NAME)!r}\n"
        "spec = importlib.util.spec_from_file_location('envship_magic', path)\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "new = sorted(n.split('.')[0] for n in set(sys.modules) - before)\n"
        "print(json.dumps([n for n in new if n not in sys.stdlib_module_names]))\n"
        "print(json.dumps(m.envship_command()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    third_party, command = proc.stdout.splitlines()
    assert json.loads(third_party) == []
    assert json.loads(command) == [sys.executable, "-c", ECHO]


def test_load_ext_registers_the_line_magic() -> None:
    """``%load_ext envship._magic`` calls this hook; a stand-in for IPython's shell."""
    registered: list[tuple[Any, str, str]] = []

    class Shell:
        def register_magic_function(self, func: Any, magic_kind: str, magic_name: str) -> None:
            registered.append((func, magic_kind, magic_name))

    magic.load_ipython_extension(Shell())
    assert registered == [(magic.envship_magic, "line", "envship")]


# --- a real kernel ---------------------------------------------------------------------


@pytest.fixture
def kernel_env(
    tmp_path: Path,
    add_index_root: Path,  # noqa: F811
    add_server: IndexServer,  # noqa: F811
    ipykernel_wheels: list[Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """ipykernel, alpha and beta 1.0 installed by envship from a lock beside a spec."""
    isolate_jupyter(tmp_path, monkeypatch)
    dist = add_index_root.parent / "dist"
    wheels = [*ipykernel_wheels, dist / "alpha-1.0-py3-none-any.whl"]
    wheels.append(dist / "beta-1.0-py3-none-any.whl")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "envship.toml").write_text(SPEC.format(python=PY, url=add_server.simple_url))
    lock = write_lock(proj / "pylock.toml", wheels, targets=[target(glibc=GLIBC)])
    env = tmp_path / "nb-env"
    install(lock, stocked_store(tmp_path / "store", wheels), env)
    return env


@pytest.fixture
def kernel(kernel_env: Path) -> Iterator[Any]:
    made = install_kernel(kernel_env)
    km = KernelManager(kernel_name=made.name)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc: Any, code: str) -> tuple[str, str]:
    """Run ``code`` in the kernel: (status, everything it printed)."""
    out: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

    reply = kc.execute_interactive(code, output_hook=collect, timeout=180)
    return reply["content"]["status"], "".join(out)


@pytest.mark.pypi
def test_envship_add_in_a_real_kernel_then_import_in_the_same_kernel(
    kernel: Any, kernel_env: Path
) -> None:
    status, out = execute(
        kernel,
        "import importlib.util, os, sys\n"
        "print(importlib.util.find_spec('envship') is None, os.environ.get('PYTHONPATH'))\n"
        "try:\n    import kappa\nexcept ModuleNotFoundError:\n    print('no kappa yet')\n",
    )
    assert (status, out.split("\n")[:2]) == ("ok", ["True None", "no kappa yet"])

    # ipykernel sets FORCE_COLOR for its children: uv's coloured plan once read as empty.
    status, out = execute(kernel, "import os; print(os.environ.get('FORCE_COLOR'))")
    assert (status, out.strip()) == ("ok", "1")
    status, out = execute(kernel, "%envship add kappa --dry-run")
    assert status == "ok", out
    assert "  + kappa==1.0" in out and "would record in" in out
    assert "already has" not in out and "\x1b[" not in out

    status, out = execute(kernel, "%envship add kappa")
    assert status == "ok", out
    assert " + kappa==1.0" in out and "record in" in out

    status, out = execute(kernel, "import kappa, sys; print(kappa.__version__, sys.prefix)")
    assert (status, out.split()) == ("ok", ["1.0", str(kernel_env)])

    # A conflict is explained in the notebook and stops the cell.
    status, out = execute(kernel, "%envship add omega")
    assert status == "error"
    assert "omega requires beta>=1.1; the lock pins beta==1.0" in out
    assert "UsageError: envship exited with code 1" in out

    spec = (kernel_env.parent / "proj" / "envship.toml").read_text()
    assert '    "kappa",\n' in spec and "omega" not in spec
    marker = json.loads((kernel_env / MARKER_NAME).read_text())
    assert [e["name"] for e in marker[ADDED_KEY]] == ["kappa"]
    lock = LockFile.load(kernel_env.parent / "proj" / "pylock.toml")
    extras = [d for d in verify(lock, kernel_env).differences]
    assert [(d.kind, d.name, bool(d.note)) for d in extras] == [("extra", "kappa", True)]

"""``%envship``: the IPython magic that runs envship from a notebook on the kernel's env.

``%envship add NAME[SPEC]...`` runs ``envship add --env <this kernel's environment> ...``
and streams its output into the notebook; after it succeeds, ``import NAME`` works in
the same kernel. Any other ``%envship ARGS`` runs ``envship ARGS`` as it is.

A kernel made by ``envship kernel install`` runs the *locked* environment, which does not
contain envship. So this module needs nothing but the standard library (and IPython,
which the kernel has): the kernelspec folder holds a copy of it, the kernel launcher
preloads that copy before ipykernel starts and asks ipykernel to load it as an
extension, and the ``kernel.json`` next to it records how to run the envship that made
the kernel (``metadata.envship.envship_command``). Nothing is added to the environment,
to ``sys.path`` or to ``PYTHONPATH``, so ``envship verify`` and the kernel's own
subprocesses see the environment exactly as locked. Where envship is importable,
``%load_ext envship._magic`` loads the same magic and runs this interpreter's envship.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["FACTS_FILE", "envship_command", "kernel_env", "load_ipython_extension", "run"]

FACTS_FILE = "kernel.json"


def _facts(folder: str | None = None) -> dict[str, Any]:
    """``metadata.envship`` of the kernel.json beside this file, or {} outside a kernelspec."""
    folder = folder or os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(folder, FACTS_FILE), encoding="utf-8") as f:
            facts = json.load(f).get("metadata", {}).get("envship", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return facts if isinstance(facts, dict) else {}  # the file is ours, but may be edited


def envship_command(folder: str | None = None) -> list[str]:
    """How to run envship: as the kernel's installer recorded it, else ``python -m envship``."""
    command = _facts(folder).get("envship_command")
    if isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        return list(command)
    return [sys.executable, "-m", "envship"]


def kernel_env(folder: str | None = None) -> str:
    """The environment this kernel runs: recorded in the kernelspec, else ``sys.prefix``."""
    env = _facts(folder).get("env")
    return env if isinstance(env, str) and env else sys.prefix


def _with_env(args: list[str], env: str) -> list[str]:
    """``add`` without ``--env`` gets this kernel's environment."""
    if args[:1] != ["add"] or any(a == "--env" or a.startswith("--env=") for a in args):
        return args
    return ["add", "--env", env, *args[1:]]


def run(
    line: str,
    *,
    write: Callable[[str], Any] | None = None,
    folder: str | None = None,
) -> int:
    """Run ``envship <line>`` for this kernel, streaming its output; return its exit code."""
    out = write or _write
    command = envship_command(folder)
    args = _with_env(shlex.split(line), kernel_env(folder))
    if not args:
        out("usage: %envship add NAME[SPEC]...  (or any other envship command)\n")
        return 2
    try:
        proc = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
    except OSError as exc:
        out(
            f"envship: cannot run {command[0]} ({exc}); it was recorded when the kernel was "
            "installed: re-run `envship kernel install` with a working envship\n"
        )
        return 127
    try:
        assert proc.stdout is not None
        for text in proc.stdout:
            out(text)
        code = proc.wait()
    except BaseException:  # the notebook's interrupt button: stop envship too
        proc.terminate()
        proc.wait()
        raise
    if code == 0 and args[:1] == ["add"]:
        # New distributions on sys.path: the import system's caches must look again.
        importlib.invalidate_caches()
    return code


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def envship_magic(line: str) -> None:
    """%envship add NAME[SPEC]... : add packages to this kernel's environment, holding
    every locked package at its version; any other %envship ARGS runs `envship ARGS`."""
    code = run(line)
    if code != 0:
        try:
            from IPython.core.error import UsageError  # type: ignore[import-not-found, unused-ignore]
        except ImportError:  # pragma: no cover - the magic only runs under IPython
            raise RuntimeError(f"envship exited with code {code}") from None
        raise UsageError(f"envship exited with code {code}")


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magic_function(envship_magic, magic_kind="line", magic_name="envship")

#!/bin/sh
""":"
# envship's kernel launcher: this one file is both a POSIX sh script and a Python module.
#
# kernel.json runs it as `/bin/sh LAUNCHER ENV/bin/python -f {connection_file}`. For sh
# the first line is the no-op `:`, and the lines below run up to `exec`, which never
# returns; for Python all of this is the module docstring. The sh part answers the one
# question Python cannot answer about itself: does the environment's interpreter still
# exist here (a venv's bin/python links to the base interpreter of the image it was made
# in)? Then Python, in isolated mode, checks the rest.
py="$1"
shift
if [ ! -x "$py" ]; then
    echo "envship: the environment's interpreter $py is missing or cannot run here." >&2
    echo "envship: recreate the environment with 'envship install' on this machine." >&2
    exit 1
fi
exec "$py" -I "$0" "$@"
"""

# The Python part runs in isolated mode (-I) with nothing but the standard library,
# because envship itself is not installed in the environment. It checks that this
# machine can run the bits the environment holds, using the facts ``envship kernel
# install`` recorded in the kernelspec's ``metadata`` (the Jupyter kernelspec docs
# reserve that field for such data:
# https://jupyter-client.readthedocs.io/en/stable/kernels.html#kernel-specs), then
# execs ipykernel the way ipykernel's own kernelspec does (``python -m
# ipykernel_launcher -f {connection_file}``). It stays compatible with Python 3.7 so
# that an environment whose base interpreter was swapped for an older one is rejected
# with a reason rather than a syntax error.
#
# When the kernelspec holds envship's notebook magic (``envship_magic.py``, a copy of
# ``envship._magic``, standard library only), the launcher does not exec ``-m
# ipykernel_launcher`` but a few lines that preload that file as the module
# ``envship_magic``, ask ipykernel to load it as an extension, and then run
# ``ipykernel_launcher`` exactly as ``-m`` would (``runpy``, as ``__main__``). The
# environment, ``sys.path`` and ``PYTHONPATH`` stay untouched, so nothing of it leaks
# into the notebook's imports, its subprocesses or ``envship verify``.

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from typing import Any

__all__ = [
    "FACTS_FILE",
    "MAGIC_FILE",
    "check",
    "host_glibc",
    "host_machine",
    "load_facts",
    "main",
    "report",
]

FACTS_FILE = "kernel.json"
MAGIC_FILE = "envship_magic.py"
# The command line after `python -c`: BOOT, the magic's path, then ipykernel's arguments.
_BOOT = r"""
import importlib.util, runpy, sys
path = sys.argv.pop(1)
try:
    spec = importlib.util.spec_from_file_location("envship_magic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
except Exception as exc:
    sys.stderr.write("envship: the %%envship magic is unavailable: %r\n" % (exc,))
else:
    sys.modules["envship_magic"] = module
    sys.argv.append("--InteractiveShellApp.extra_extensions=envship_magic")
runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
"""
INSTALL_MARKER = ".envship-install.json"
INCOMPLETE_MARKER = ".envship-incomplete"
_MACHINES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def host_glibc() -> str | None:
    """This machine's glibc version, or None (musl, or unknown)."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        text = ""
    if text.startswith("glibc "):
        return text.split(" ", 1)[1]
    lib, ver = platform.libc_ver()
    return ver if lib == "glibc" and ver else None


def host_machine() -> str:
    machine = platform.machine()
    return _MACHINES.get(machine.lower(), machine)


def _interpreter() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def has_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def load_facts(folder: str) -> dict[str, Any]:
    """The ``metadata.envship`` table of the kernel.json in ``folder``."""
    with open(os.path.join(folder, FACTS_FILE), encoding="utf-8") as f:
        spec = json.load(f)
    facts = (spec.get("metadata") or {}).get("envship")
    if not isinstance(facts, dict):
        raise ValueError("kernel.json has no metadata.envship table")
    return facts


def check(facts: dict[str, Any]) -> list[str]:
    """Every reason this machine (and this interpreter) cannot run the environment."""
    target = facts["target"]
    reasons = []
    machine, glibc = host_machine(), host_glibc()
    if sys.platform != facts["sys_platform"]:
        reasons.append(f"{facts['sys_platform']} needed, this machine runs {sys.platform}")
    elif machine != facts["machine"]:
        reasons.append(f"{facts['machine']} needed, this machine is {machine}")
    if sys.implementation.name != "cpython":
        reasons.append(f"CPython needed, the interpreter is {sys.implementation.name}")
    here = _interpreter()
    if here != target["python"]:
        reasons.append(f"Python {target['python']} needed, the interpreter is {here}")
    # A manylinux_2_X wheel runs on glibc >= 2.X (PEP 600), so the target's level is a floor.
    if glibc is None:
        reasons.append(f"glibc {target['glibc']} needed, this machine has none")
    elif _version(glibc) < _version(target["glibc"]):
        reasons.append(f"glibc >= {target['glibc']} needed, this machine has {glibc}")
    if target["variant"] == "cuda" and not has_gpu():
        reasons.append("the cuda variant needs an NVIDIA GPU; none found")
    env = facts["env"]
    if os.path.exists(os.path.join(env, INCOMPLETE_MARKER)):
        reasons.append(f"the environment {env} is half installed ({INCOMPLETE_MARKER} present)")
    elif not os.path.isfile(os.path.join(env, INSTALL_MARKER)):
        reasons.append(f"the environment {env} has no {INSTALL_MARKER}")
    return reasons


def report(facts: dict[str, Any], reasons: list[str]) -> str:
    """The readable refusal printed on stderr (Jupyter shows it in the server log)."""
    target = facts["target"]
    cuda = ", cuda" if target["variant"] == "cuda" else ""
    built = f"{target['platform']} (glibc >= {target['glibc']}, CPython {target['python']}{cuda})"
    here = _interpreter()
    machine = f"{host_machine()} with glibc {host_glibc() or '(none)'} and CPython {here}"
    name, env = facts.get("kernel_name", "?"), facts["env"]
    lines = [
        f"envship: kernel {name!r} cannot start: the environment {env} was built for "
        f"{built}; this machine is {machine}",
        *(f"  - {reason}" for reason in reasons),
        "envship: recreate it with `envship install` for this machine "
        f"(lock {facts.get('lock_digest', '?')}), then `envship kernel install`",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = os.path.dirname(os.path.abspath(__file__))
    try:
        facts = load_facts(folder)
        reasons = check(facts)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        where = os.path.join(folder, FACTS_FILE)
        sys.stderr.write(f"envship: cannot read the facts recorded in {where}: {exc!r}\n")
        sys.stderr.write("envship: re-run `envship kernel install`\n")
        return 2
    if reasons:
        sys.stderr.write(report(facts, reasons) + "\n")
        return 1
    if args[:1] == ["--envship-check"]:
        sys.stdout.write(f"envship: this machine can run the environment {facts['env']}\n")
        return 0
    # Like activating the environment: shell escapes (``!pip``) find its tools first.
    env_bin = os.path.join(facts["env"], "bin")
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[:1] != [env_bin]:
        os.environ["PATH"] = env_bin + (os.pathsep + path if path else "")
    os.environ["VIRTUAL_ENV"] = facts["env"]
    os.environ.pop("PYTHONHOME", None)
    python = sys.executable
    magic = os.path.join(folder, MAGIC_FILE)
    if os.path.isfile(magic):
        os.execv(python, [python, "-c", _BOOT, magic, *args])
    os.execv(python, [python, "-m", "ipykernel_launcher", *args])
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())

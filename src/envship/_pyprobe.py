"""One probe for every question envship asks a Python interpreter it does not run in.

Choosing a lock target (:mod:`envship.host`), finding an environment's site-packages
(:mod:`envship._environment`) and evaluating a requirement's markers for ``envship add``
(:mod:`envship._addspec`) all need facts only the interpreter itself can give. One
script answers all three, run as ``python -I -S``:

- ``-I``: no ``PYTHON*`` variables, no user site, no script folder on ``sys.path``;
- ``-S``: no ``site``. Importing ``site`` executes every ``.pth`` file in the
  environment's site-packages (``site.addpackage``), that is, code of the environment
  being checked or installed into. What ``site.venv()`` would do is done by the script
  instead: a ``pyvenv.cfg`` beside the executable or one folder up makes the
  executable's parent's parent the prefix, and sysconfig's paths for that prefix are the
  site-packages.

The script is kept compatible with old Pythons (no f-strings, no walrus): the
interpreter may be a system 3.6 that we only want to refuse with a clear reason.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

__all__ = ["ProbeFailure", "facts_here", "facts_of"]

_FACTS = r"""
import os, platform, sys, sysconfig
def facts():
    glibc = None
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
        if text.startswith("glibc "):
            glibc = text.split(" ", 1)[1]
    except (AttributeError, ValueError, OSError):
        pass
    if glibc is None:
        lib, ver = platform.libc_ver()
        if lib == "glibc" and ver:
            glibc = ver
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    config = venv = None
    for folder in (exe_dir, os.path.dirname(exe_dir)):
        if os.path.isfile(os.path.join(folder, "pyvenv.cfg")):
            config = os.path.join(folder, "pyvenv.cfg")
            venv = os.path.dirname(exe_dir)
            break
    if venv is None:
        paths = sysconfig.get_paths()
    else:
        scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
        paths = sysconfig.get_paths(scheme, vars={"base": venv, "platbase": venv})
    impl = getattr(sys, "implementation", None)
    name = impl.name if impl else platform.python_implementation().lower()
    impl_version = platform.python_version()
    if impl:
        v = impl.version
        impl_version = "%d.%d.%d" % (v.major, v.minor, v.micro)
        if v.releaselevel != "final":
            impl_version += v.releaselevel[0] + str(v.serial)
    return {
        "executable": sys.executable,
        "version": list(sys.version_info[:3]),
        "implementation": name,
        "sys_platform": sys.platform,
        "machine": platform.machine(),
        "glibc": glibc,
        "prefix": venv or sys.prefix,
        "base_prefix": getattr(sys, "base_prefix", sys.prefix),
        "purelib": paths["purelib"],
        "platlib": paths["platlib"],
        "venv": venv,
        "config": config,
        # PEP 508's marker variables, as packaging.markers.default_environment() has them.
        "markers": {
            "implementation_name": name,
            "implementation_version": impl_version,
            "os_name": os.name,
            "platform_machine": platform.machine(),
            "platform_release": platform.release(),
            "platform_system": platform.system(),
            "platform_version": platform.version(),
            "python_full_version": platform.python_version(),
            "platform_python_implementation": platform.python_implementation(),
            "python_version": ".".join(platform.python_version_tuple()[:2]),
            "sys_platform": sys.platform,
        },
    }
"""
_SCRIPT = _FACTS + "import json\nprint(json.dumps(facts()))\n"


class ProbeFailure(Exception):
    """The interpreter could not be run (``ran`` False) or gave no answer (True).

    Each caller turns it into its own EnvshipError, in the words of its question.
    """

    def __init__(self, python: str, ran: bool, detail: str) -> None:
        super().__init__(python, ran, detail)
        self.python = python
        self.ran = ran
        self.detail = detail


def facts_here(executable: str) -> dict[str, Any]:
    """The facts computed in this process, by the script's own code.

    For the interpreter running envship, started as ``executable``: the caller makes
    sure that a child started that way would see what this process sees.
    """
    namespace: dict[str, Any] = {}
    exec(compile(_FACTS, "<envship interpreter probe>", "exec"), namespace)
    data: dict[str, Any] = namespace["facts"]()
    data["executable"] = executable  # what the child would report as its sys.executable
    return data


def facts_of(python: str, *, timeout: float = 60) -> dict[str, Any]:
    """The facts from running ``python -I -S``; ProbeFailure when there are none."""
    try:
        proc = subprocess.run(
            [python, "-I", "-S", "-c", _SCRIPT],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeFailure(python, False, str(exc)) from None
    try:
        data = json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise ProbeFailure(python, True, said[-1] if said else "no output")
    return data

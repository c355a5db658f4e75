"""Finding an installed environment, and the lock target it is for.

An environment is named as a venv folder (its ``pyvenv.cfg`` says which Python, and so
which ``lib/pythonX.Y/site-packages``), as an interpreter (run in isolated mode to print
its ``sysconfig`` paths: the only code run), or as a bare site-packages folder (the
Python version read from a ``pythonX.Y`` part of its path, if any). Its target is the
lock's for this platform and that Python; among several, the one with the highest glibc
level not above this machine's. :mod:`envship.verify` re-exports the public names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidLockError, Problem, SpecError, TargetError
from .lockfile import LockFile
from .targets import Target, host_platform

__all__ = ["InstalledEnvironment", "choose_target", "find_environment"]

_PYTHON_DIR = re.compile(r"^python(\d+\.\d+)t?$")


@dataclass(frozen=True, slots=True)
class InstalledEnvironment:
    """Where an environment's distributions live and which Python it is for."""

    root: Path  # what the user named: a venv, an interpreter or a site-packages folder
    site_packages: tuple[Path, ...]  # purelib first; platlib too when it differs
    python: str | None  # "3.11"; None when a bare folder does not say
    interpreter: Path | None = None


_PROBE = (
    "import json, sys, sysconfig; p = sysconfig.get_paths(); "
    "print(json.dumps({'purelib': p['purelib'], 'platlib': p['platlib'], "
    "'python': '%d.%d' % sys.version_info[:2]}))"
)


def _python_from_path(site: Path) -> str | None:
    for part in reversed(site.parts):
        m = _PYTHON_DIR.match(part)
        if m:
            return m.group(1)
    return None


def _venv(root: Path) -> InstalledEnvironment:
    cfg: dict[str, str] = {}
    for line in (root / "pyvenv.cfg").read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            cfg[key.strip()] = value.strip()
    version = cfg.get("version_info") or cfg.get("version") or ""  # uv | stdlib venv
    wanted = ".".join(version.split(".")[:2])
    sites = sorted(p for p in (root / "lib").glob("python*/site-packages") if p.is_dir())
    chosen = [p for p in sites if _python_from_path(p) == wanted] or sites
    if len(chosen) != 1:
        found = ", ".join(str(p) for p in sites) or "none"
        raise SpecError(
            f"cannot tell the site-packages of {root}",
            problems=[Problem(str(root / "lib"), f"site-packages found: {found}")],
            hint="pass the venv's bin/python or the site-packages folder instead",
        )
    return InstalledEnvironment(root, (chosen[0],), _python_from_path(chosen[0]) or wanted)


def _interpreter(path: Path) -> InstalledEnvironment:
    try:
        out = subprocess.run(
            [str(path), "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SpecError(f"cannot run {path}", problems=[Problem(str(path), str(exc))]) from None
    try:
        data = json.loads(out.stdout)
    except ValueError:
        data = None
    if out.returncode != 0 or not isinstance(data, dict):
        raise SpecError(
            f"{path} is not a working Python interpreter",
            problems=[Problem(str(path), (out.stderr or out.stdout).strip()[-500:])],
        )
    sites = [Path(data["purelib"])]
    if Path(data["platlib"]) != sites[0]:
        sites.append(Path(data["platlib"]))
    return InstalledEnvironment(path, tuple(sites), str(data["python"]), interpreter=path)


def find_environment(
    env: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> InstalledEnvironment:
    """Resolve a venv folder, an interpreter or a site-packages folder (default: $VIRTUAL_ENV)."""
    if env is None:
        active = (os.environ if environ is None else environ).get("VIRTUAL_ENV")
        if not active:
            raise SpecError(
                "no environment to verify",
                hint="name one (a venv, its bin/python, or a site-packages folder) "
                "or activate a virtual environment",
            )
        env = Path(active)
    env = Path(os.path.abspath(env))  # absolute, but keep symlinks (bin/python -> ...)
    if not env.exists():
        raise SpecError(f"{env} does not exist", problems=[Problem(str(env), "no such path")])
    if env.is_dir():
        if (env / "pyvenv.cfg").is_file():
            return _venv(env)
        return InstalledEnvironment(env, (env,), _python_from_path(env))
    return _interpreter(env)


def _machine_glibc() -> tuple[int, int] | None:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        return None
    m = re.match(r"glibc (\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def choose_target(
    lock: LockFile,
    python: str | None,
    *,
    platform_id: str | None = None,
    glibc: tuple[int, int] | None = None,
) -> Target:
    """The lock target for this machine and Python: several -> the highest glibc <= ours."""
    if not lock.targets:
        raise InvalidLockError(
            f"{lock.path} records no targets", hint="re-create it with `envship lock`"
        )
    platform_id = platform_id or host_platform()
    glibc = glibc or _machine_glibc()
    known = ", ".join(t.name for t in lock.targets) or "(none recorded)"
    matching = [
        t
        for t in lock.targets
        if t.platform.id == platform_id and (python is None or t.python == python)
    ]
    if glibc is not None and len(matching) > 1:
        matching = [t for t in matching if tuple(map(int, t.glibc.split("."))) <= glibc]
    if matching:
        best = max(tuple(map(int, t.glibc.split("."))) for t in matching)
        matching = [t for t in matching if tuple(map(int, t.glibc.split("."))) == best]
    if len(matching) == 1:
        return matching[0]
    machine = f"{platform_id or 'an unknown platform'}, Python {python or 'unknown'}"
    if glibc is not None:
        machine += f", glibc {glibc[0]}.{glibc[1]}"
    message = "several lock targets fit" if matching else "no lock target fits"
    raise TargetError(
        f"{message} this environment ({machine})",
        problems=[Problem(str(lock.path), f"its targets: {known}")],
        hint="name one with --target",
    )

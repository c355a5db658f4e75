"""Finding an installed environment, the interpreter that runs it, and its lock target.

An environment is named as a venv folder (its ``pyvenv.cfg`` says which Python, and so
which ``lib/pythonX.Y/site-packages``), as an interpreter, or as a bare site-packages
folder: one sysconfig's schemes name so (``site-packages``; ``dist-packages`` in Debian's;
``lib/python`` in ``posix_home``), or one holding installed distributions, as ``pip
install --target`` leaves it (the Python version read from its ``pythonX.Y`` parent, if
any). Any other folder is refused (the stdlib's ``lib/pythonX.Y``, a package folder): it
would be compared as an empty site-packages, every distribution "missing"; so is a file
no one may run (``pyvenv.cfg``, ``bin/activate``), which is no interpreter, not one this
user may not run (:func:`not_a_program`). Its
target is the lock's for this platform and that Python; among several, the one with the
highest glibc level not above this machine's. :mod:`envship.verify` re-exports the
public names.

An interpreter is run once, as ``python -I -S``: ``-S`` because ``site`` would execute
every ``.pth`` file in the environment's site-packages (site.addpackage), which is the
code being verified. What ``site.venv()`` would do is done by the probe instead: a
``pyvenv.cfg`` beside the executable or one folder up makes that folder the prefix, and
sysconfig's paths for that prefix are the site-packages. A venv named as a folder gets
the same run of its ``bin/python`` (:func:`run_interpreter`), so a venv whose interpreter
is gone, or runs another Python than its packages are for, is not vouched for.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._denied import blocked_at, denied, denied_problem, is_denied, refused
from ._installmarker import MarkerDamaged, load_marker, read_marker
from ._pyprobe import ProbeFailure, facts_of
from .errors import PermissionDeniedError, Problem, SpecError, TargetError
from .lockfile import LockFile
from .targets import Target, host_platform

__all__ = [
    "InstalledEnvironment",
    "Interpreter",
    "PermissionDeniedError",
    "blocked_at",
    "denied",
    "denied_problem",
    "is_denied",
    "refused",
    "choose_target",
    "find_environment",
    "interpreter_denied",
    "interpreter_mismatches",
    "may_not_run",
    "not_a_program",
    "read_venv_config",
    "relock_hint",
    "run_interpreter",
]

_PYTHON_DIR = re.compile(r"^python(\d+\.\d+)t?$")
# What sysconfig's schemes call the folder of installed distributions (purelib/platlib):
# site-packages (posix_prefix, venv, posix_user, nt), dist-packages (Debian's deb_system
# and posix_local); posix_home's ``{base}/lib/python`` is told by its parent as well.
_SITE_NAMES = ("site-packages", "dist-packages")
_MACHINES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True, slots=True)
class Interpreter:
    """What running an environment's interpreter (``-I -S``) said about itself."""

    path: Path  # as named: a venv's bin/python is a link, and its place makes it the venv's
    python: str  # "3.11"
    implementation: str  # "cpython"
    platform: str  # "linux-x86_64", as a target's platform id spells it
    site_packages: tuple[Path, ...]  # purelib first; platlib too when it differs
    venv: Path | None  # the prefix site.venv() would make it, if any
    config: Path | None  # the pyvenv.cfg that site would read (venv/ or venv/bin/)


@dataclass(frozen=True, slots=True)
class InstalledEnvironment:
    """Where an environment's distributions live and which Python it is for."""

    root: Path  # what the user named: a venv, an interpreter or a site-packages folder
    site_packages: tuple[Path, ...]  # purelib first; platlib too when it differs
    python: str | None  # "3.11"; None when a bare folder does not say
    interpreter: Path | None = None
    venv: Path | None = None  # the venv folder (pyvenv.cfg) the environment is, if it is one
    runs: Interpreter | None = None  # set once the interpreter has been run

    @property
    def record_root(self) -> Path | None:
        """Where the install marker (``.envship-install.json``) of this environment is:
        the venv, or the prefix two levels above a ``lib/pythonX.Y/site-packages``; None
        for any other folder (``pip install --target``'s: what is above it is not its)."""
        if self.venv is not None:
            return self.venv
        site = self.site_packages[0]
        return site.parents[2] if _python_from_path(site) and len(site.parents) >= 3 else None

    def marker(self) -> dict[str, Any] | None:
        """The install marker envship wrote for this environment, if there is one (and
        it is whole: :meth:`marker_damage` says why one that is there is not)."""
        root = self.record_root
        return read_marker(root) if root is not None else None

    def marker_damage(self) -> MarkerDamaged | None:
        """Why the install marker at :attr:`record_root` cannot be used (unreadable, not
        a regular file, not the shape envship writes); None when it can, or is not there."""
        root = self.record_root
        if root is None:
            return None
        try:
            load_marker(root)
        except MarkerDamaged as exc:
            return exc
        return None


def _python_from_path(site: Path) -> str | None:
    """The X.Y of a ``lib/pythonX.Y[t]/site-packages`` (or ``dist-packages``) folder; only
    its parent counts (a ``python3.12`` higher up is some other folder's name)."""
    if site.name in _SITE_NAMES and (m := _PYTHON_DIR.match(site.parent.name)):
        return m.group(1)
    return None


def read_venv_config(path: Path) -> dict[str, str]:
    """A ``pyvenv.cfg`` as ``site.venv()`` reads it: ``key = value`` lines, keys
    lower-cased, the last of a key winning."""
    cfg: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            cfg[key.strip().lower()] = value.strip()
    return cfg


def _venv(root: Path) -> InstalledEnvironment:
    cfg = read_venv_config(root / "pyvenv.cfg")
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
    python = _python_from_path(chosen[0]) or wanted
    return InstalledEnvironment(root, (chosen[0],), python, venv=root)


def not_a_program(path: Path | str) -> str | None:
    """What ``path`` is when no user could run it as an interpreter: a folder, something
    other than a regular file, or a file without an execute bit for anyone (a
    ``pyvenv.cfg``, ``bin/activate``); None otherwise, and when it cannot be looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.filemode(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return "a folder"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file (mode {mode})"
    if not st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        return f"a file no one may run (mode {mode})"
    return None


def may_not_run(path: Path | str) -> bool:
    """Whether *this user* may not run ``path`` while someone else could: a permission
    matter (:func:`interpreter_denied`). :func:`refused` alone also says so of a file no
    one may run, which is no interpreter at all (:func:`not_a_program`)."""
    return refused(path) and not_a_program(path) is None


def _probe(path: Path) -> Interpreter:
    try:
        data = facts_of(str(path))
    except ProbeFailure as exc:
        if not exc.ran and may_not_run(path):
            raise interpreter_denied(path) from None
        # The detail is the probe's: its exit status and a line of what it printed.
        what = f"{path} is not a Python interpreter" if exc.ran else f"cannot run {path}"
        raise SpecError(what, problems=[Problem(str(path), exc.detail)]) from None
    sites = [Path(data["purelib"])]
    if Path(data["platlib"]) != sites[0]:
        sites.append(Path(data["platlib"]))
    machine = str(data["machine"])
    machine = _MACHINES.get(machine.lower(), machine)
    return Interpreter(
        path=path,
        python="{}.{}".format(*data["version"][:2]),
        implementation=str(data["implementation"]),
        platform=f"{data['sys_platform']}-{machine}",
        site_packages=tuple(sites),
        venv=Path(data["venv"]) if data.get("venv") else None,
        config=Path(data["config"]) if data.get("config") else None,
    )


def _interpreter(path: Path) -> InstalledEnvironment:
    runs = _probe(path)
    return InstalledEnvironment(
        path, runs.site_packages, runs.python, interpreter=path, venv=runs.venv, runs=runs
    )


def find_environment(
    env: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> InstalledEnvironment:
    """Resolve a venv folder, an interpreter or a site-packages folder (default: $VIRTUAL_ENV).

    Only an interpreter is run here; a venv folder's is run by :func:`run_interpreter`.
    A path this user may not read (a version made with a private umask by another user)
    is a :class:`PermissionDeniedError` naming the folder that refuses and its owner.
    """
    try:
        return _find(env, environ)
    except PermissionError as exc:
        named = env if env is not None else exc.filename or "$VIRTUAL_ENV"
        raise denied(f"the environment {named}", exc.filename or named) from None


def _find(env: Path | None, environ: Mapping[str, str] | None) -> InstalledEnvironment:
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
        if not _site_like(env):
            raise SpecError(
                f"{env} is not an environment",
                problems=[
                    Problem(
                        str(env),
                        "not a venv (no pyvenv.cfg), not a site-packages or dist-packages "
                        "folder, and no installed distribution (*.dist-info) in it",
                    )
                ],
                hint="name a venv, its bin/python, or a site-packages folder (or one "
                "`pip install --target` filled), or none for the active venv ($VIRTUAL_ENV)"
                + _nearby(env),
            )
        return InstalledEnvironment(env, (env,), _python_from_path(env))
    if (what := not_a_program(env)) is not None:
        # An ordinary file (pyvenv.cfg, bin/activate, a module) named as the environment:
        # bad input, as a folder that is none is, not an interpreter this user may not run.
        raise SpecError(
            f"{env} is not an environment",
            problems=[Problem(str(env), f"{what}: not a venv, an interpreter or a folder")],
            hint="name a venv, its bin/python, or a site-packages folder (or one "
            "`pip install --target` filled), or none for the active venv ($VIRTUAL_ENV)"
            + _nearby(env),
        )
    return _interpreter(env)


def _site_like(folder: Path) -> bool:
    """Whether a folder named as an environment can be one: a site-packages folder by
    sysconfig's names, or one holding installed distributions (``pip install --target``).
    Any other folder would be verified as an empty site-packages: all "missing"."""
    if folder.name in _SITE_NAMES or (folder.name == "python" and folder.parent.name == "lib"):
        return True
    with os.scandir(folder) as entries:
        return any(e.name.endswith((".dist-info", ".egg-info")) for e in entries)


def _nearby(folder: Path) -> str:
    """A form verify takes near a refused folder, for the hint: the venv or site-packages
    it lies in (a package folder, a venv's lib/), else a site-packages below it."""
    for above in folder.parents:
        if (above / "pyvenv.cfg").is_file():
            return f"; here: {above}, the venv it lies in"
        if above.name in _SITE_NAMES:
            return f"; here: {above}, the site-packages folder it lies in"
    below = [
        p
        for pattern in ("*-packages", "python*/*-packages", "lib/python*/*-packages")
        for p in sorted(folder.glob(pattern))
        if p.name in _SITE_NAMES and p.is_dir()
    ]
    return f"; here: {below[0]}" if below else ""


def _same_folder(a: Path, b: Path) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def run_interpreter(environment: InstalledEnvironment) -> InstalledEnvironment:
    """``environment`` with its interpreter run (``runs`` set), for a venv named as a folder.

    The folder's ``bin/python`` must exist and use the very site-packages being checked:
    the files of a venv whose interpreter is gone, or runs a Python that never imports
    them, are no proof of what the environment runs. Either is a :class:`SpecError` (exit
    2) naming ``bin/python``, as ``envship verify VENV/bin/python`` is for the same venv
    (a missing path, or a Python no lock target fits). Anything else is returned as it is.
    """
    if environment.runs is not None or environment.venv is None:
        return environment
    path = environment.venv / "bin" / "python"
    if may_not_run(path):
        # A link into a folder this user cannot enter (the base interpreter under another
        # user's 0700 home) reads as "no such file" to exists(): say what it is.
        raise interpreter_denied(path)
    if not path.exists():
        link = os.readlink(path) if path.is_symlink() else None
        raise SpecError(
            f"the interpreter of {environment.venv} is missing",
            problems=[
                Problem(
                    str(path),
                    f"a link to {link}, which does not exist" if link else "no such file",
                )
            ],
            hint="re-create the environment (`envship install`), or name its site-packages "
            "folder to check its files alone",
        )
    runs = _probe(path)
    if not any(_same_folder(s, runs.site_packages[0]) for s in environment.site_packages):
        raise TargetError(
            f"{path} does not run the environment {environment.venv}",
            problems=[
                Problem(
                    str(path),
                    f"it is Python {runs.python}, importing from {runs.site_packages[0]}; "
                    f"the environment's packages are in {environment.site_packages[0]}",
                )
            ],
            hint=f"point it back at a Python {environment.python or ''}".rstrip()
            + ", or re-create the environment (`envship install`)",
        )
    return replace(environment, python=runs.python, interpreter=path, runs=runs)


def interpreter_denied(path: Path) -> PermissionDeniedError:
    """The interpreter at ``path`` (a venv's ``bin/python``, linked to its base) cannot be
    run by this user: the remedy is a base interpreter every user can run, never opening
    up the folder it lies in (another user's home)."""
    target = os.path.realpath(path)
    return denied(
        f"the interpreter {path} (which runs {target})",
        target,
        hint=f"make the environment with a base interpreter every user can run (for instance "
        f"--python /usr/bin/python3, or one installed outside a private home); {target} "
        "lies where this user cannot reach it",
    )


def interpreter_mismatches(runs: Interpreter, target: Target) -> list[str]:
    """Why ``runs`` cannot import ``target``'s wheels; empty when it can. Only the
    interpreter counts here (CPython, version, OS and architecture): glibc and a GPU are
    the machine's, and the same bits can be verified on a machine that cannot run them."""
    reasons = []
    if runs.implementation != "cpython":  # targets are CPython ABIs (cpXY tags)
        reasons.append(f"CPython needed, interpreter is {runs.implementation}")
    if runs.python != target.python:
        reasons.append(f"Python {target.python} needed, interpreter is {runs.python}")
    if runs.platform != target.platform.id:
        reasons.append(f"{target.platform.id} needed, interpreter is {runs.platform}")
    return reasons


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
        raise lock.no_targets()
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
    # Targets for this platform and Python that this machine's glibc ruled out can still
    # be named (the same bits can be verified where they cannot run); with none, no
    # --target helps: the lock needs a target for this Python.
    fits = [
        t.name
        for t in lock.targets
        if t.platform.id == platform_id and (python is None or t.python == python)
    ]
    if matching or fits:
        hint = f"name one with --target: {', '.join(t.name for t in matching) or ', '.join(fits)}"
    else:
        hint = relock_hint(lock, "cpython", python, platform_id)
    raise TargetError(
        f"{message} this environment ({machine})",
        problems=[Problem(str(lock.path), f"its targets: {known}")],
        hint=hint,
    )


def relock_hint(
    lock: LockFile, implementation: str, python: str | None, platform_id: str | None
) -> str:
    """What to do when no target of ``lock`` is for this interpreter: naming one with
    ``--target`` cannot help, the lock must be made again with a target for it."""
    if implementation != "cpython":
        return (
            f"lock targets are CPython ABIs and this interpreter is {implementation}: verify "
            "with the CPython the environment was made with"
        )
    platform_id = platform_id or "this platform"
    have = ", ".join(sorted({f"CPython {t.python} on {t.platform.id}" for t in lock.targets}))
    if python is None:  # a bare folder whose path does not say its Python
        return (
            f"the lock has no target for {platform_id} (only for {have}): add one to the "
            "spec's [targets] and lock again (`envship lock`), or name the environment's "
            "interpreter"
        )
    return (
        f"the lock has no target for CPython {python} on {platform_id} (only for {have}), "
        f'so no --target fits: add one to the spec (python = "{python}" in a '
        f'[targets.NAME] for {platform_id}, or "{python}" in its python list), lock again '
        "(`envship lock`) and verify against the new lock"
    )

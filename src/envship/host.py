"""Facts about a host interpreter, and which lock target it can run.

A lock serves declared targets; before installing, launching a kernel or building an
image we must know which of them a given interpreter is. The facts come from running
that interpreter once (:mod:`envship._pyprobe`, ``-I -S``, so no ``.pth`` file of an
environment runs) rather than from ``sys`` here,
because the interpreter envship runs under is often not the one being installed for.
When it is the same one (same path, so the same ``pyvenv.cfg`` and prefix), the same
script runs in this process instead: starting an interpreter costs about 25 ms, a
noticeable part of an install that otherwise takes a few hundred.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._environment import not_a_program
from ._gpu import has_gpu
from ._pyprobe import ProbeFailure, facts_here, facts_of
from .errors import Problem, TargetError
from .lockfile import LockFile
from .targets import Target

__all__ = ["HostInfo", "has_gpu", "match_target", "mismatches", "probe"]

_MACHINES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def _normalize_machine(machine: str) -> str:
    return _MACHINES.get(machine.lower(), machine)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


@dataclass(frozen=True, slots=True)
class HostInfo:
    """One interpreter on one machine, as far as choosing a lock target is concerned."""

    executable: str
    python: str  # "3.11"
    python_full: str  # "3.11.7"
    implementation: str  # "cpython"
    sys_platform: str  # "linux"
    machine: str  # normalized: x86_64, aarch64
    glibc: str | None  # "2.36"; None on musl or when unknown
    prefix: str
    base_prefix: str
    purelib: str
    gpu: bool = False

    @property
    def platform_id(self) -> str:
        return f"{self.sys_platform}-{self.machine}"

    def to_json(self) -> dict[str, Any]:
        return {
            "executable": self.executable,
            "python": self.python,
            "python_full": self.python_full,
            "implementation": self.implementation,
            "platform": self.platform_id,
            "machine": self.machine,
            "glibc": self.glibc,
            "prefix": self.prefix,
            "base_prefix": self.base_prefix,
            "purelib": self.purelib,
            "gpu": self.gpu,
        }


def probe(
    python: str | os.PathLike[str] | None = None,
    *,
    gpu: Callable[[], bool] = has_gpu,
) -> HostInfo:
    """Describe ``python`` (default: this interpreter), running it once when it is not
    the one running now.

    ``gpu`` is the GPU detector, injectable so tests (and callers that already know)
    need not depend on the machine's devices.
    """
    exe = str(python) if python is not None else sys.executable
    found = shutil.which(exe)
    if found is None and os.path.dirname(exe) and (what := not_a_program(exe)) is not None:
        # A path that is there (a spec, a folder): no interpreter, nor a missing one.
        raise TargetError(
            f"{exe} is not a Python interpreter",
            problems=[Problem(exe, what)],
            hint="pass --python with the path (or name on PATH) of a Python interpreter",
        )
    if found is None:
        raise TargetError(
            f"no Python interpreter at {exe!r}",
            hint="pass --python with the path (or name on PATH) of an interpreter",
        )
    data = facts_here(found) if _is_running(found) else _facts_of(found)
    major, minor, micro = (int(v) for v in data["version"])
    return HostInfo(
        executable=str(data["executable"] or found),
        python=f"{major}.{minor}",
        python_full=f"{major}.{minor}.{micro}",
        implementation=str(data["implementation"]),
        sys_platform=str(data["sys_platform"]),
        machine=_normalize_machine(str(data["machine"])),
        glibc=str(data["glibc"]) if data.get("glibc") else None,
        prefix=str(data["prefix"]),
        base_prefix=str(data["base_prefix"]),
        purelib=str(data["purelib"]),
        gpu=gpu(),
    )


def _is_running(found: str) -> bool:
    """Would ``found -I -S`` see exactly the facts this process sees?

    The binary is not enough: ``sys.prefix`` comes from the path the interpreter was
    started as (a venv's ``bin/python`` links to the base binary, and only the
    ``pyvenv.cfg`` beside it makes it the venv), so the path must sit in the same
    folder as ``sys.executable`` and resolve to the same file. The child runs with
    ``-I``, which ignores ``PYTHONHOME``; if that moved our prefix, the facts differ.
    The path must also be absolute and normal, as the child's ``sys.executable`` is.
    """
    me = sys.executable
    return (
        bool(me)
        and os.path.isabs(found)
        and os.path.normpath(found) == found
        and os.path.dirname(found) == os.path.dirname(me)
        and (found == me or os.path.realpath(found) == os.path.realpath(me))
        and (bool(sys.flags.ignore_environment) or not os.environ.get("PYTHONHOME"))
    )


def _facts_of(found: str) -> dict[str, Any]:
    try:
        return facts_of(found)
    except ProbeFailure as exc:
        if not exc.ran:
            raise TargetError(
                f"cannot run the Python interpreter {found}",
                problems=[Problem(found, exc.detail)],
            ) from None
        raise TargetError(
            f"{found} is not a Python interpreter",
            problems=[Problem(found, exc.detail)],
            hint="pass --python with the path (or name on PATH) of a Python interpreter",
        ) from None


def mismatches(target: Target, host: HostInfo, *, subject: str | None = None) -> list[str]:
    """Every reason ``host`` cannot run ``target``; empty when it can.

    The reasons speak of this machine ("glibc 2.39 needed, host has 2.36"); ``subject``
    names what the facts are of instead, when it is not the host ("the base image":
    "glibc 2.39 needed, the base image has 2.36").
    """
    reasons: list[str] = []
    plat = target.platform
    system_is, machine_is, runs, has = (
        ("host is", "machine is", "interpreter is", "host has")
        if subject is None
        else (f"{subject} is", f"{subject} is", f"{subject} has", f"{subject} has")
    )
    if host.sys_platform != plat.sys_platform:
        reasons.append(f"{plat.sys_platform} needed, {system_is} {host.sys_platform}")
    elif host.machine != plat.machine:
        reasons.append(f"{plat.machine} needed, {machine_is} {host.machine}")
    # Targets describe CPython ABIs (cpXY tags); another implementation cannot load them.
    if host.implementation != "cpython":
        reasons.append(f"CPython needed, {runs} {host.implementation}")
    if host.python != target.python:
        reasons.append(f"Python {target.python} needed, {runs} {host.python}")
    # A manylinux_2_X wheel runs on glibc >= 2.X, so the target's level is a floor.
    if host.glibc is None:
        reasons.append(f"glibc {target.glibc} needed, {has} no glibc (musl or unknown)")
    elif _version_tuple(host.glibc) < _version_tuple(target.glibc):
        reasons.append(f"glibc {target.glibc} needed, {has} {host.glibc}")
    if target.variant == "cuda" and not host.gpu:
        found = "no GPU found" if subject is None else f"{has} no CUDA"
        reasons.append(f"cuda variant but {found}")
    return reasons


def match_target(
    lock_or_targets: LockFile | Iterable[Target], host: HostInfo, *, subject: str | None = None
) -> Target:
    """The lock target ``host`` runs best, or a TargetError saying why each one does not fit
    (worded for ``subject``, as :func:`mismatches` words them).

    Among fitting targets a GPU host prefers ``cuda``, then the highest glibc level
    (its wheels may be newer builds); declaration order breaks ties.
    """
    if isinstance(lock_or_targets, LockFile):
        if not lock_or_targets.targets:
            raise lock_or_targets.no_targets()
        targets = list(lock_or_targets.targets)
        source = str(lock_or_targets.path)
    else:
        targets = list(lock_or_targets)
        source = "targets"
    if not targets:
        raise TargetError(
            f"{source} records no targets",
            hint="re-create the lock with `envship lock`",
        )
    fitting: list[Target] = []
    problems: list[Problem] = []
    for target in targets:
        reasons = mismatches(target, host, subject=subject)
        if reasons:
            problems.extend(Problem(target.name, r) for r in reasons)
        else:
            fitting.append(target)
    if not fitting:
        glibc = f"glibc {host.glibc}" if host.glibc else "no glibc"
        raise TargetError(
            f"this machine ({host.platform_id}, {host.implementation} {host.python_full}, "
            f"{glibc}{', GPU' if host.gpu else ''}) is none of the lock's targets",
            problems=problems,
            hint="add a target for it to the spec and re-lock, or pass --python with an "
            "interpreter that matches one",
        )

    def rank(t: Target) -> tuple[bool, tuple[int, ...]]:
        return (host.gpu and t.variant == "cuda", _version_tuple(t.glibc))

    # max() returns the first of equal maxima, so declaration order breaks ties.
    return max(fitting, key=rank)

"""Targets: the machines an environment must install on.

A target is a platform (OS and CPU architecture), a glibc level (the newest
``manylinux_2_X`` tag it accepts), a CPython version and a variant (``cpu`` or ``cuda``).
From those we derive the PEP 508 marker environment and the ordered wheel tag list
(best first) that installers use, so that a lock can be checked for every target from
any machine.
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from packaging.markers import Environment
from packaging.tags import Tag, compatible_tags, cpython_tags

from .errors import Problem, TargetError

__all__ = ["PLATFORMS", "Platform", "Target", "host_platform"]


@dataclass(frozen=True, slots=True)
class Platform:
    """An OS and CPU pair with the facts markers and tags need."""

    id: str
    sys_platform: str
    platform_system: str
    machine: str  # platform_machine as Python reports it
    min_glibc_minor: int  # the oldest manylinux level that exists for this arch


#: Platform ids users may name. Linux only for now: the delivery targets (SageMaker,
#: JupyterHub on Kubernetes, workbenches) are Linux; ``manylinux1`` and ``manylinux2010``
#: only ever existed for x86 (PEP 513, PEP 571), PEP 599 added aarch64 at glibc 2.17.
PLATFORMS: Mapping[str, Platform] = {
    "linux-x86_64": Platform("linux-x86_64", "linux", "Linux", "x86_64", 5),
    "linux-aarch64": Platform("linux-aarch64", "linux", "Linux", "aarch64", 17),
}

_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
VARIANTS = ("cpu", "cuda")
DEFAULT_GLIBC = "2.28"


def _parse_version(text: str, where: str, parts: int) -> tuple[int, ...]:
    # ASCII digits, three at most ("3.²" passes str.isdigit, then int() fails), and a
    # bounded number: tags are generated for every minor below it ("2.99999999" ran out
    # of memory making manylinux tags).
    pieces = text.split(".")
    if len(pieces) != parts or not all(re.fullmatch(r"[0-9]{1,3}", p) for p in pieces):
        raise TargetError(
            f"invalid version {text!r}",
            problems=[Problem(where, f"expected {parts} dot-separated numbers, got {text!r}")],
        )
    return tuple(int(p) for p in pieces)


def _glibc_problem(text: str, major: int, minor: int, plat: Platform | None) -> str | None:
    """What is wrong with glibc level ``text`` for ``plat``, or None.

    A manylinux level is a glibc 2.X version (PEP 600 tags are ``manylinux_2_X``);
    glibc has had major version 2 since 1997, so "3.1" or "99.99" is no level at all,
    not one that is too old.
    """
    if major != 2:
        return (
            f"glibc {text} is not a glibc 2.x version: manylinux levels are 2.X "
            f"(PEP 600), e.g. {DEFAULT_GLIBC}"
        )
    if plat is not None and minor < plat.min_glibc_minor:
        return (
            f"glibc {text} is below the oldest manylinux level for "
            f"{plat.machine} (2.{plat.min_glibc_minor})"
        )
    return None


@dataclass(frozen=True, slots=True)
class Target:
    """One declared target, e.g. ``linux-x86_64`` with glibc 2.28 and CPython 3.11."""

    name: str
    platform: Platform
    python: str  # "3.11"
    glibc: str = DEFAULT_GLIBC
    variant: str = "cpu"

    @classmethod
    def create(
        cls,
        name: str,
        *,
        platform_id: str | None = None,
        python: str,
        glibc: str = DEFAULT_GLIBC,
        variant: str = "cpu",
        where: str = "",
    ) -> Target:
        """Build a target, naming ``where`` (a spec key) in every error."""
        problems: list[Problem] = []
        pid = platform_id or name
        plat = PLATFORMS.get(pid)
        if plat is None:
            problems.append(
                Problem(
                    where or name,
                    f"unknown platform {pid!r}; known: {', '.join(sorted(PLATFORMS))}",
                )
            )
        try:
            _parse_version(python, f"{where}.python" if where else "python", 2)
        except TargetError as exc:
            problems.extend(exc.problems)
        glibc_where = f"{where}.glibc" if where else "glibc"
        try:
            major, minor = _parse_version(glibc, glibc_where, 2)
        except TargetError as exc:
            problems.extend(exc.problems)
        else:
            # Checked whatever else is wrong: every problem of a target is reported at once.
            level = _glibc_problem(glibc, major, minor, plat)
            if level is not None:
                problems.append(Problem(glibc_where, level))
        if variant not in VARIANTS:
            problems.append(
                Problem(
                    f"{where}.variant" if where else "variant",
                    f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}",
                )
            )
        if problems:
            raise TargetError(f"invalid target {name!r}", problems=problems)
        assert plat is not None
        return cls(name=name, platform=plat, python=python, glibc=glibc, variant=variant)

    @property
    def python_tuple(self) -> tuple[int, int]:
        major, minor = self.python.split(".")
        return int(major), int(minor)

    @property
    def marker(self) -> str:
        """A PEP 508 marker that is true exactly on this target's platform and Python."""
        return (
            f"sys_platform == '{self.platform.sys_platform}' and "
            f"platform_machine == '{self.platform.machine}' and "
            f"python_version == '{self.python}'"
        )

    def marker_environment(self) -> Environment:
        """The PEP 508 environment of a CPython of this target.

        ``python_full_version`` uses patch level 0; locks constrain minor versions, and
        a marker that needs the patch level cannot be answered before the machine exists.
        """
        return {
            "implementation_name": "cpython",
            "implementation_version": f"{self.python}.0",
            "os_name": "posix",
            "platform_machine": self.platform.machine,
            "platform_release": "",
            "platform_system": self.platform.platform_system,
            "platform_version": "",
            "python_full_version": f"{self.python}.0",
            "platform_python_implementation": "CPython",
            "python_version": self.python,
            "sys_platform": self.platform.sys_platform,
        }

    def platform_tags(self) -> Iterator[str]:
        """``manylinux_2_X_<arch>`` tags from this glibc down to the oldest, best first."""
        arch = self.platform.machine
        glibc_minor = int(self.glibc.split(".")[1])
        for minor in range(glibc_minor, self.platform.min_glibc_minor - 1, -1):
            yield f"manylinux_2_{minor}_{arch}"
            legacy = _LEGACY_MANYLINUX.get(minor)
            if legacy is not None:
                yield f"{legacy}_{arch}"

    def tags(self) -> list[Tag]:
        """Wheel tags this target accepts, most preferred first (as ``sys_tags`` orders)."""
        platforms = list(self.platform_tags())
        version = self.python_tuple
        abi = f"cp{version[0]}{version[1]}"
        return [
            *cpython_tags(version, abis=[abi], platforms=platforms),
            *compatible_tags(version, interpreter=abi, platforms=platforms),
        ]

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "platform": self.platform.id,
            "python": self.python,
            "glibc": self.glibc,
            "variant": self.variant,
        }

    @classmethod
    def from_json(cls, data: object, *, where: str = "") -> Target:
        """The target :meth:`to_json` wrote (an install marker's); TargetError if not."""
        keys = ("name", "platform", "python", "glibc", "variant")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in keys):
            raise TargetError(
                "not a target record",
                problems=[Problem(where, f"a target needs {', '.join(keys)}")],
            )
        return cls.create(
            data["name"],
            platform_id=data["platform"],
            python=data["python"],
            glibc=data["glibc"],
            variant=data["variant"],
            where=where,
        )


def host_platform() -> str | None:
    """The platform id of the running machine, or None when envship knows none for it."""
    if sys.platform != "linux":
        return None
    machine = platform.machine()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)
    pid = f"linux-{machine}"
    return pid if pid in PLATFORMS else None

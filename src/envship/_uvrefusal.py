"""What uv's error says stopped a resolution: a package without a usable wheel, or one
whose releases' requires-python leave out the target's Python.

uv (PubGrub) explains a failed resolution as one derivation in prose; these patterns
read the parts envship acts on (the package to name and drop, the Python each release
needs), in uv's own wording, cited at each pattern. Anything else is left as uv said it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from .errors import Problem
from .targets import Target

__all__ = [
    "NeedsPython",
    "NoWheel",
    "PythonConflict",
    "describe_target",
    "parse_needs_python",
    "parse_no_wheel",
    "python_hint",
    "stop",
]


def describe_target(target: Target) -> str:
    return f"{target.platform.machine}, glibc {target.glibc}, CPython {target.python}"


# uv's words for a release it cannot use with building off (uv-distribution-types,
# IncompatibleDist's Display): "has no usable wheels" (sdist only), "has no
# `<marker>`-compatible wheels", "has no wheels with a matching Python ABI tag", ...
# PubGrub words the subject "foo==1.0 has" or "all versions of foo have".
_NO_WHEEL = re.compile(
    r"(?:all versions of (?P<every>[A-Za-z0-9._-]+) have"
    r"|(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s,]+) has) "
    r"no (?P<why>(?:`[^`]*`)?[^,`]*?wheels(?: with a matching [\w -]+? tag)?)"
)
_UV_HINT = re.compile(r"^hint: (Wheels are available for `(?P<name>[^`]+)`.*)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class NoWheel:
    """The package uv named when it stopped for want of a usable wheel."""

    name: str
    version: str | None  # None: every version of the package
    why: str  # uv's words after "has no"
    uv_hint: str | None  # uv's "Wheels are available for ..." hint, if it gave one

    @property
    def where(self) -> str:
        return f"{self.name} {self.version}" if self.version else f"{self.name} (every version)"

    def reason(self, target: Target) -> str:
        if self.why == "usable wheels":
            reason = "uv found only an sdist, and allow-sdist is off"
        elif self.why.endswith("-compatible wheels") or self.why == "compatible wheels":
            reason = f"uv found no wheel for {target.platform.machine} and CPython {target.python}"
        else:
            reason = f"uv found no {self.why}"
        if self.uv_hint:
            reason += f" ({self.uv_hint.rstrip('.')})"
        return reason

    def problem(self, target: Target) -> Problem:
        return Problem(
            self.where,
            f"no wheel for target {target.name!r} ({describe_target(target)}); "
            + self.reason(target),
        )


def parse_no_wheel(stderr: str) -> NoWheel | None:
    """The package uv's error says has no usable wheel, or None for any other failure."""
    match = _NO_WHEEL.search(stderr)
    if match is None:
        return None
    name = match.group("every") or match.group("name")
    hint = None
    for found in _UV_HINT.finditer(stderr):
        if found.group("name") == name:
            hint = found.group(1).replace("`", "")
    return NoWheel(name=name, version=match.group("version"), why=match.group("why"), uv_hint=hint)


# uv's words for releases whose requires-python leaves out a fork's Python: "foo==1.0
# requires Python >=3.11" (a wheel's metadata), "foo>=2.5 depends on Python>=3.12" and
# "all of:" + one range a line + "depend on Python>=3.11" (the index's requires-python).
_DIST = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_NEEDS_PYTHON = re.compile(
    rf"(?:all versions of (?P<every>{_DIST})|all of:\n(?P<many>(?:[ \t]+\S+\n)+?)[ \t]*"
    rf"|(?P<one>{_DIST}\S*)) (?:requires?|depends? on) Python ?(?P<spec>[<>=!~][^\s,]*)"
)
_DIST_NAME = re.compile(rf"^{_DIST}?(?=[<>=!~(]|$)")


@dataclass(frozen=True, slots=True)
class NeedsPython:
    """Releases of a package uv set aside for their ``requires-python``."""

    name: str  # normalized
    releases: str  # uv's words: "numpy>=2.3.0,<=2.4.0rc1", "rho==1.0", "every version"
    python: SpecifierSet


def parse_needs_python(stderr: str) -> list[NeedsPython]:
    """Every requires-python uv's error cites, in the order of its derivation."""
    found = []
    for match in _NEEDS_PYTHON.finditer(stderr):
        try:
            python = SpecifierSet(match.group("spec").rstrip("."))
        except InvalidSpecifier:
            continue
        if match.group("every"):
            subjects = [(match.group("every"), "every version")]
        else:
            words = (match.group("many") or match.group("one")).split()
            subjects = [(w, w) for w in words]
        for subject, releases in subjects:
            name = _DIST_NAME.match(subject)
            if name and name.group(0):
                found.append(NeedsPython(canonicalize_name(name.group(0)), releases, python))
    return found


@dataclass(frozen=True, slots=True)
class PythonConflict:
    """A package none of whose releases the spec allows installs on a target's Python."""

    name: str
    python: str  # the target's


def stop(stderr: str, target: Target) -> tuple[str, Problem, PythonConflict | None] | None:
    """The package a target's failed resolution stopped at (to drop), why, and whether
    the cause is requires-python.

    The release uv names as wheel-less may be the one the spec's Python cannot run at
    all (numpy 2.4.0 for CPython 3.9, whose other releases need 3.11): when uv's
    derivation shows the package's other releases need a Python the target lacks, that
    is the cause to name, not allow-sdist.
    """
    python = Version(f"{target.python}.0")
    needs = [n for n in parse_needs_python(stderr) if not n.python.contains(python, True)]
    missing = parse_no_wheel(stderr)
    if missing is not None:
        name = missing.name
    elif needs:
        name = needs[-1].name  # the derivation's last step: the package it ends with
    else:
        return None
    mine = [n for n in needs if n.name == canonicalize_name(name)]
    if not mine:
        assert missing is not None
        return name, missing.problem(target), None
    by_python: dict[SpecifierSet, list[str]] = {}
    for need in mine:
        by_python.setdefault(need.python, []).append(need.releases)
    facts = [
        f"{', '.join(r)} {'require' if len(r) > 1 else 'requires'} Python {spec}"
        for spec, r in by_python.items()
    ]
    if missing is not None:
        facts.append(f"{missing.where} has no wheel for it ({missing.reason(target)})")
    message = (
        f"no release the spec allows installs on target {target.name!r} (CPython "
        f"{target.python}): {'; '.join(facts)}"
    )
    return name, Problem(name, message), PythonConflict(name, target.python)


def python_hint(conflicts: Collection[PythonConflict]) -> str:
    pythons = ", ".join(sorted({c.python for c in conflicts}, key=lambda v: Version(v)))
    names = ", ".join(sorted({c.name for c in conflicts}))
    return (
        f"drop Python {pythons} from the spec's `python` (or the targets that set it), or "
        f"lower the requirement on {names} to releases that support it"
    )

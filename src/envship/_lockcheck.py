"""Which (package, version, target) of a resolution cannot be installed, and why.

Two sources feed one report:

* uv's own refusal: with building off, uv stops at a package without a usable wheel
  (an sdist-only release, no wheel for a platform or Python), or at one whose releases
  all need another Python; :mod:`envship._uvrefusal` reads that from uv's error text.
* envship's tag check of a resolution uv accepted (:func:`check_resolution`): uv knows
  platforms and Python versions from markers but not glibc levels, so a
  ``manylinux_2_34``-only wheel passes uv and fails a glibc 2.28 target here.

Each message names the wheels the package does have and why each misses the target
("needs glibc 2.17, target has 2.5"), so the user sees the fix. The check runs on uv's
export before pruning: a wheel no target accepts is exactly the one worth naming.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from packaging.pylock import PackageWheel, Pylock
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from ._uvrefusal import (
    PythonConflict,
    describe_target,
    parse_needs_python,
    parse_no_wheel,
    python_hint,
    stop,
)
from .errors import EnvshipError, LockError, NetworkError, Problem, UnsupportedTargetError
from .targets import Target

__all__ = [
    "UNSUPPORTED_HINT",
    "Resolve",
    "check_resolution",
    "list_missing",
    "prune_wheels",
    "uv_failure",
    "uv_lines",
    "wheel_misfit",
]

UNSUPPORTED_HINT = (
    "constrain those packages to versions with wheels for every target, raise the "
    "target's glibc level, drop the target, or set allow-sdist = true (building runs "
    "the package's code)"
)
#: Resolve for one target without the named packages: the resolution, or uv's error text.
Resolve = Callable[[Target, Sequence[str]], "Pylock | str"]
# Per target, how many packages without a usable wheel uv may name before the report
# stops (each costs one resolution).
_MAX_MISSING = 20

# Legacy manylinux names and the glibc level each stands for (PEP 513, 571, 599).
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(.+)$")
_OS_PREFIXES = (
    ("win", "Windows"),
    ("macosx", "macOS"),
    ("musllinux", "musl libc (musllinux)"),
    ("ios", "iOS"),
    ("android", "Android"),
)


@dataclass(frozen=True, slots=True)
class Misfit:
    """Why one wheel misses one target.

    ``rank`` orders reasons by how actionable they are: a glibc level first (raise the
    target's, or pin a release built for an older one), then Python, architecture,
    operating system. Wheels with the same ``key`` are summarized together.
    """

    rank: int
    key: str
    what: str  # the glibc level, the wheel's Python tags, its architecture or OS

    def text(self, target: Target, *, many: bool) -> str:
        if self.key.startswith("glibc"):
            return f"{'need' if many else 'needs'} glibc {self.what}, target has {target.glibc}"
        verb = "are" if many else "is"
        if self.key == "python":
            return f"{verb} built for {self.what} (target runs CPython {target.python})"
        return f"{verb} for {self.what}"


def _platform(tag: str) -> tuple[str, str, tuple[int, int] | None]:
    """(kind, arch or OS name, glibc level) of a wheel's platform tag."""
    if tag == "any":
        return "any", "", None
    match = _MANYLINUX.match(tag)
    if match:
        return "manylinux", match.group(3), (int(match.group(1)), int(match.group(2)))
    legacy, _, arch = tag.partition("_")
    if legacy in _LEGACY:
        return "manylinux", arch, _LEGACY[legacy]
    for prefix, name in _OS_PREFIXES:
        if tag.startswith(prefix):
            return "os", name, None
    if tag.startswith("linux_"):
        # A plain linux_<arch> tag promises no glibc level; no index installer takes it.
        return "os", f"plain {tag} (not manylinux)", None
    return "os", tag, None


def wheel_misfit(filename: str, target: Target) -> Misfit | None:
    """Why the wheel ``filename`` does not install on ``target``; None when it does."""
    try:
        tags = parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return Misfit(4, "os", "no platform (not a valid wheel file name)")
    accepted = set(target.tags())
    if tags & accepted:
        return None
    machine = target.platform.machine
    pythons = {(t.interpreter, t.abi) for t in accepted}
    platforms = {t: _platform(t.platform) for t in tags}
    here = [t for t, (kind, arch, _) in platforms.items() if kind == "any" or arch == machine]
    if here:
        fitting_python = [t for t in here if (t.interpreter, t.abi) in pythons]
        if not fitting_python:
            return Misfit(
                2, "python", ", ".join(sorted({f"{t.interpreter}-{t.abi}" for t in here}))
            )
        levels = [lvl for t in fitting_python if (lvl := platforms[t][2]) is not None]
        if levels:
            low = min(levels)
            need = f"{low[0]}.{low[1]}"
            return Misfit(1, f"glibc {need}", need)
    other_arch = sorted({arch for kind, arch, _ in platforms.values() if kind == "manylinux"})
    if other_arch:
        what = ", ".join(other_arch)
        return Misfit(3, f"arch {what}", what)
    what = ", ".join(sorted({n for kind, n, _ in platforms.values() if kind == "os"}))
    return Misfit(4, f"os {what}", what or "another platform")


def _wheel_filename(wheel: PackageWheel) -> str:
    if wheel.name:
        return wheel.name
    source = wheel.url or wheel.path or ""
    return source.rstrip("/").rsplit("/", 1)[-1]


def _explain(filenames: Sequence[str], has_sdist: bool, target: Target) -> str:
    """What the package offers and why none of it fits ``target``."""
    if not filenames:
        if has_sdist:
            return "it has no wheels, only an sdist, and allow-sdist is off"
        return "it has no wheels and no sdist"
    by_reason: dict[tuple[int, str], tuple[list[Misfit], list[str]]] = {}
    for name in sorted(filenames):
        misfit = wheel_misfit(name, target)
        if misfit is not None:  # the caller found that none fits
            misfits, names = by_reason.setdefault((misfit.rank, misfit.key), ([], []))
            misfits.append(misfit)
            names.append(name)
    parts = []
    for _, (misfits, names) in sorted(by_reason.items(), key=_reason_order):
        what = ", ".join(sorted({w for m in misfits for w in m.what.split(", ")}))
        merged = Misfit(misfits[0].rank, misfits[0].key, what)
        if len(names) == 1:
            parts.append(f"{names[0]} {merged.text(target, many=False)}")
        else:
            parts.append(f"{len(names)} wheels {merged.text(target, many=True)} (e.g. {names[0]})")
    tail = "; its sdist is not used (allow-sdist is off)" if has_sdist else ""
    if len(filenames) == 1:
        return f"its only wheel, {parts[0]}{tail}"
    return f"of its {len(filenames)} wheels, none fits: {'; '.join(parts)}{tail}"


def _reason_order(item: tuple[tuple[int, str], object]) -> tuple[int, list[str | int]]:
    """Rank first, then the key with its numbers compared as numbers (glibc 2.5 < 2.17)."""
    (rank, key), _ = item
    return rank, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def check_resolution(
    pylock: Pylock,
    targets: Iterable[Target],
    *,
    allow_sdist: bool,
    groups: Collection[str] = (),
) -> list[Problem]:
    """Every (package, version, target) of ``pylock`` with nothing installable, at once.

    Walks the steps an installer takes (markers, ``requires-python``, wheel tags) for
    each target and collects instead of stopping at the first failure, as
    :meth:`Pylock.select` would. Problems name the package (``eta 2.0``), not a file:
    this runs before any lock is written.
    """
    problems: list[Problem] = []
    for target in targets:
        env = cast(
            "dict[str, str]",
            {
                **target.marker_environment(),
                "extras": frozenset(),
                "dependency_groups": frozenset(groups),
            },
        )
        accepted = set(target.tags())
        python = f"{target.python}.0"
        for package in pylock.packages:
            if package.marker and not package.marker.evaluate(env, context="lock_file"):
                continue
            where = f"{package.name} {package.version}"
            if package.requires_python and not package.requires_python.contains(python):
                problems.append(
                    Problem(
                        where,
                        f"requires Python {package.requires_python}; target "
                        f"{target.name!r} has {target.python}",
                    )
                )
                continue
            names = [_wheel_filename(w) for w in package.wheels or []]
            if any(_tags(n) & accepted for n in names):
                continue
            if package.sdist is not None and allow_sdist:
                continue
            problems.append(
                Problem(
                    where,
                    f"no wheel for target {target.name!r} ({describe_target(target)}); "
                    + _explain(names, package.sdist is not None, target),
                )
            )
    return problems


def _tags(filename: str) -> frozenset[Tag]:
    try:
        return parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return frozenset()


def list_missing(
    targets: Iterable[Target],
    resolve: Resolve,
    *,
    allow_sdist: bool,
    groups: Collection[str] = (),
) -> tuple[list[Problem], list[PythonConflict]]:
    """Every (package, version, target) without a usable wheel or a release for the
    target's Python, found by resolving each target alone and dropping every package uv
    names until the target resolves; that resolution then gets :func:`check_resolution`.
    Only the dependencies of a dropped package go unchecked: uv cannot read them without
    a wheel. The requires-python conflicts come back apart too, for the hint."""
    conflicts: list[PythonConflict] = []  # list.append is atomic: shared by the threads

    def one(target: Target) -> list[Problem]:
        found: list[Problem] = []
        dropped: list[str] = []
        while len(dropped) < _MAX_MISSING:
            result = resolve(target, dropped)
            if isinstance(result, Pylock):
                return found + check_resolution(
                    result, [target], allow_sdist=allow_sdist, groups=groups
                )
            stopped = stop(result, target)
            if stopped is None or stopped[0] in dropped:
                cause = " ".join(uv_lines(result))[:400]
                without = f" without {', '.join(dropped)}" if dropped else ""
                return [*found, Problem("uv", f"target {target.name!r}{without}: {cause}")]
            name, problem, conflict = stopped
            found.append(problem)
            dropped.append(name)
            if conflict is not None:
                conflicts.append(conflict)
        return [*found, Problem("uv", f"target {target.name!r}: stopped after {_MAX_MISSING}")]

    # Targets are independent: resolve them side by side (uv locks its own cache).
    chosen = list(targets)
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(chosen)))) as pool:
        found = [p for problems in pool.map(one, chosen) for p in problems]
    # Grouped by package, each package's targets in the spec's order (the sort is
    # stable); what stopped uv comes last.
    return sorted(found, key=lambda p: (p.where == "uv", p.where)), conflicts


_URL = re.compile(r"((?:https?|file)://[^\s`'\"]+)")
# uv locks with an interpreter of the spec's Python; with none on the machine it fetches
# a python-build-standalone CPython (file names ``cpython-<version>+<date>-<triple>``).
# uv wraps its error to the terminal's width, so the URL may be on the next line.
_PYTHON_DOWNLOAD = re.compile(r"Failed to download\s+`?((?:https?|file)://\S*?/cpython-[^`\s/]+)")


def uv_lines(stderr: str) -> list[str]:
    skip = ("Using CPython", "Using Python")
    return [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith(skip)]


def uv_failure(
    stderr: str,
    targets: Sequence[Target],
    resolve: Resolve,
    *,
    allow_sdist: bool,
    groups: Collection[str] = (),
    log: Callable[[str], None] | None = None,
) -> EnvshipError:
    """The error for a failed ``uv lock``: unreachable index, every package without a
    usable wheel, or uv's own words.

    uv (PubGrub) reports one derivation: the first package without a usable wheel in
    the first fork that fails. The other targets and packages are found by
    :func:`list_missing`, so the report holds every (package, version, target).
    """
    if download := _PYTHON_DOWNLOAD.search(stderr):
        wanted = " or ".join(sorted({t.python for t in targets}))
        return NetworkError(
            f"uv needs a Python {wanted} interpreter to lock this spec; none was found on "
            "this machine, and downloading one failed",
            url=download.group(1),
            hint="install that Python where uv finds it (on PATH) and lock again, or lock "
            "on a machine that has it",
        )
    if any(s in stderr for s in ("Failed to fetch", "Could not connect", "dns error")):
        match = _URL.search(stderr)
        url = match.group(1) if match else "(the configured index)"
        return NetworkError(
            f"cannot reach the package index: {url}",
            url=url,
            hint="check the index URL in the spec, your network or proxy, and credentials",
        )
    problems: list[Problem] = []
    conflicts: list[PythonConflict] = []
    if parse_no_wheel(stderr) is not None or parse_needs_python(stderr):
        if log is not None:
            log("uv stops at the first package without a usable wheel; resolving each target")
        problems, conflicts = list_missing(targets, resolve, allow_sdist=allow_sdist, groups=groups)
    if not any(p.where != "uv" for p in problems):
        return LockError(
            "uv could not resolve the spec",
            problems=[Problem("uv", ln) for ln in uv_lines(stderr)[-12:]],
        )
    if not conflicts:
        return UnsupportedTargetError(
            "some packages have no installable wheel for some targets",
            problems=problems,
            hint=UNSUPPORTED_HINT,
        )
    # Only the wheel advice where some problem is about wheels: allow-sdist cannot help
    # a release that does not support the target's Python.
    others = {p.where for p in problems} - {c.name for c in conflicts} - {"uv"}
    return UnsupportedTargetError(
        "some packages have no release that installs on some targets",
        problems=problems,
        hint=python_hint(conflicts) + (f"; for the others: {UNSUPPORTED_HINT}" if others else ""),
    )


def prune_wheels(data: Mapping[str, Any], targets: Iterable[Target]) -> None:
    """Drop wheels no target can install (Windows, macOS, musl, other ABIs).

    uv's universal export lists every wheel of a release; a lock checked per target
    only needs those its targets use, and stays reviewable. PEP 751 allows a subset.
    """
    accepted: set[Tag] = set()
    for target in targets:
        accepted.update(target.tags())
    for package in data.get("packages", []):
        wheels = package.get("wheels")
        if not wheels:
            continue
        kept = [w for w in wheels if _tags(_wheel_name(w)) & accepted]
        # None kept: a package no target selects (the check passed); keep them all.
        package["wheels"] = kept or wheels


def _wheel_name(wheel: Mapping[str, Any]) -> str:
    source = str(wheel.get("name") or wheel.get("url") or wheel.get("path") or "")
    return source.rstrip("/").rsplit("/", 1)[-1]

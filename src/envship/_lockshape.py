"""What :meth:`envship.lockfile.LockFile.load` checks beyond what packaging's PEP 751
model checks: the shape of ``[tool.envship]`` and its targets, file sizes, versions taken
from file names, and markers ``select`` could not evaluate. Each finding is a
:class:`Problem` with its place in the file, so a lock's every problem is reported at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from packaging.markers import Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.pylock import Package, PackageSdist, PackageWheel, Pylock
from packaging.utils import parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

from .errors import Problem, TargetError
from .targets import DEFAULT_GLIBC, Target

__all__ = ["checked_packages", "envship_table", "marker_problems", "target_entry"]

# What tomllib returns, for messages; anything else it returns is a date or a time.
_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
_TOML_TYPES |= {list: "an array", dict: "a table"}
_TOOL_KEYS = {"spec-digest": str, "name": str, "display-name": str, "allow-sdist": bool}
_TARGET_KEYS = ("name", "platform", "python", "glibc", "variant")
_TARGET_VERSIONS = [
    ("python", re.compile(r"3\.(0|[1-9][0-9]?)"), "3.11"),
    ("glibc", re.compile(r"2\.(0|[1-9][0-9]?)"), "2.28"),
]


def _a(value: object) -> str:
    return _TOML_TYPES.get(type(value), "a date or time")


def envship_table(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[Problem]]:
    """``[tool.envship]`` (empty when absent) and what is wrong with its shape. packaging
    checked that ``tool`` is a table; what is inside is envship's to check (a string
    ``allow-sdist = "false"`` must not read as true)."""
    tool = data.get("tool")
    table = tool.get("envship") if isinstance(tool, dict) else None
    if table is None:
        return {}, []
    if not isinstance(table, dict):
        return {}, [Problem(where, f"expected a table, found {_a(table)}")]
    problems = [
        Problem(f"{where}.{key}", f"expected {_a(kind())}, found {_a(table[key])}")
        for key, kind in _TOOL_KEYS.items()
        if key in table and not isinstance(table[key], kind)
    ]
    if not isinstance(table.get("targets", []), list):
        found = _a(table.pop("targets"))
        problems.append(Problem(f"{where}.targets", f"expected an array of tables, found {found}"))
    return table, problems


def target_entry(raw: object, where: str, problems: list[Problem]) -> Target | None:
    """One ``[[tool.envship.targets]]`` entry as a Target; None, with its problems
    added, if it is not one."""
    if not isinstance(raw, dict) or "name" not in raw:
        found = f", found {_a(raw)}" if not isinstance(raw, dict) else ""
        problems.append(Problem(where, f"expected a table with a name{found}"))
        return None
    wrong = [
        Problem(f"{where}.{key}", f"expected a string, found {_a(raw[key])}")
        for key in _TARGET_KEYS
        if key in raw and not isinstance(raw[key], str)
    ]
    # As a spec's: ASCII digits ("3.²" passes str.isdigit) and no minor version that
    # would list tags without end (py3.99999999 down to py30).
    wrong += [
        Problem(f"{where}.{key}", f"expected a version such as {example!r}, got {raw[key]!r}")
        for key, pattern, example in _TARGET_VERSIONS
        if isinstance(raw.get(key), str) and not pattern.fullmatch(raw[key])
    ]
    problems.extend(wrong)
    if wrong:
        return None
    try:
        return Target.create(
            raw["name"],
            platform_id=raw.get("platform", raw["name"]),
            python=raw.get("python", ""),
            glibc=raw.get("glibc", DEFAULT_GLIBC),
            variant=raw.get("variant", "cpu"),
            where=where,
        )
    except TargetError as exc:
        problems.extend(exc.problems)
        return None


def checked_packages(pylock: Pylock, where: str, problems: list[Problem]) -> Pylock:
    """``pylock`` with each package's version known; a file size that is not positive
    added to ``problems`` (a wheel is a zip file, never empty: fetch would blame the index).

    PEP 751 makes ``packages.version`` optional: it "SHOULD be specified when the version
    is known to be stable (i.e. when an sdist or wheels are specified)", and their file
    names carry it. A package that leaves it out takes it from its files, which must
    then agree (packaging checks them only against a version that is there): without
    one, install would ask uv for ``attrs==None`` and verify could never match. Source
    trees have none, as PEP 751 requires; ``select`` refuses them.
    """
    packages: list[Package] = []
    for i, package in enumerate(pylock.packages):
        files: list[tuple[str, PackageWheel | PackageSdist, Version]] = [
            (f"wheels[{j}]", w, parse_wheel_filename(w.filename)[1])
            for j, w in enumerate(package.wheels or ())
        ]
        if package.sdist is not None:
            sdist = package.sdist
            files.append(("sdist", sdist, parse_sdist_filename(sdist.filename)[1]))
        for key, file, version in files:
            size = file.size
            if size is not None and size <= 0:  # packaging checked it is an int
                problems.append(
                    Problem(f"{where}[{i}].{key}.size", f"{size!r} is not a positive size")
                )
            if package.version is None and version != files[0][2]:
                problems.append(
                    Problem(
                        f"{where}[{i}].{key}",
                        f"version {version} in its file name, {files[0][2]} in "
                        f"{files[0][0]}'s: a package without a version takes it from its "
                        "files, which must agree",
                    )
                )
        if package.version is None and files:
            package = dataclasses.replace(package, version=files[0][2])
        packages.append(package)
    return dataclasses.replace(pylock, packages=packages)


def marker_problems(pylock: Pylock, targets: Sequence[Target], where: str) -> list[Problem]:
    """Markers ``select`` cannot evaluate for a target: a name PEP 751 does not define
    in a lock (``extra``; PEP 751 has ``extras``), a set compared with ``==``. packaging
    raises these only when it evaluates, mid-selection; each is named here instead."""
    problems: dict[str, Problem] = {}

    def check(place: str, marker: Marker, env: Any, context: Any) -> None:
        try:
            marker.evaluate(env, context=context)
        except (UndefinedComparison, UndefinedEnvironmentName) as exc:
            why = f"{exc.args[0]!r} is not defined" if isinstance(exc, KeyError) else str(exc)
            problems.setdefault(place, Problem(f"{where}{place}", f"{marker}: {why}"))

    groups = frozenset(pylock.dependency_groups or ())
    for target in targets:
        base = target.marker_environment()
        for i, marker in enumerate(pylock.environments or ()):
            check(f"environments[{i}]", marker, base, "requirement")
        # As Pylock.select evaluates packages': with the extras and groups asked for.
        env = dict(base, extras=frozenset(), dependency_groups=groups)
        for i, package in enumerate(pylock.packages):
            if package.marker is not None:
                check(f"packages[{i}].marker", package.marker, env, "lock_file")
    return list(problems.values())

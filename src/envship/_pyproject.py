"""pyproject.toml for ``envship init``: PEP 621 metadata, PEP 735 groups and Poetry.

Only what a spec can hold is imported: the dependencies, extras and dependency groups
(as spec groups), a Python version, and Poetry's package sources (as indexes). The
project itself is not part of a spec; envship locks what it needs, not what it is, so a
requirement on it with extras (``my-pkg[test]``) becomes the requirements of those extras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from ._sourcefile import read_spec_toml
from .errors import Problem, SpecError
from .spec import group_name_problem, requirement_problem
from .spec import kind as kind_of

__all__ = [
    "PYTHONS",
    "Found",
    "from_pyproject",
    "lowest_python",
    "show",
]

#: Python minors a version range may resolve to, oldest first.
PYTHONS = tuple(f"3.{minor}" for minor in range(9, 15))


@dataclass(slots=True)
class Found:
    sources: list[Path]
    dependencies: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    indexes: list[dict[str, Any]] = field(default_factory=list)
    python: str | None = None
    notes: list[str] = field(default_factory=list)


def show(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def lowest_python(spec: SpecifierSet) -> str | None:
    """The oldest of :data:`PYTHONS` with any release (3.X.0 to 3.X.49) that ``spec`` admits."""
    for version in PYTHONS:
        if any(spec.contains(f"{version}.{patch}") for patch in range(50)):
            return version
    return None


def _with_markers(req: Requirement, markers: frozenset[str]) -> str:
    """``req`` under its own marker and every one of ``markers`` (all must hold)."""
    parts = ([str(req.marker)] if req.marker else []) + sorted(markers)
    if not parts:
        return str(req)
    req = Requirement(str(req))
    req.marker = Marker(" and ".join(f"({p})" for p in parts))
    return str(req)


def _req(item: object, where: str, problems: list[Problem]) -> Requirement | None:
    try:
        req = Requirement(item) if isinstance(item, str) else None
    except InvalidRequirement as exc:
        problems.append(Problem(where, f"invalid requirement: {exc}"))
        return None
    if req is None:
        problems.append(Problem(where, "expected a requirement string"))
    elif req.url:
        problems.append(Problem(where, "direct URL references are not supported"))
        return None
    elif (unusable := requirement_problem(req)) is not None:
        problems.append(Problem(where, unusable))
        return None
    return req


_Key = tuple[str, str]  # ("extra" or "group", normalized name)
_MAX_EXTRA_PATHS = 1000  # (extra, markers) pairs one self-reference may expand to
_Entry = tuple[str, "Requirement | _Key"]  # (where, a requirement or an included group)


class _Groups:
    """PEP 621 dependencies and extras and PEP 735 dependency groups, as plain lists.

    PEP 735: ``{include-group = "x"}`` includes another group; names compare normalized
    and an include cycle is an error. A requirement on the project itself with extras
    (``proj[test]``) is the common way to reuse extras, and pip and uv read it as those
    extras' requirements: so it expands to them, each under the self-reference's marker
    too. It is never kept as it is: the lock would look the project up on an index by
    its name, and install whatever someone published there (dependency confusion).
    Extras may name each other in a cycle (pip and uv accept it); that adds nothing.
    """

    def __init__(
        self, project: str | None, where: str, problems: list[Problem], *, dynamic: bool
    ) -> None:
        self.project = canonicalize_name(project) if project else None
        self.tables: dict[_Key, tuple[str, list[_Entry]]] = {}
        self.done: dict[_Key, list[str]] = {}
        self.where, self.problems, self.notes = where, problems, list[str]()
        self.dynamic = dynamic  # project.optional-dependencies is left to the build backend

    def add(self, kind: str, table: object, prefix: str) -> None:
        if not isinstance(table, dict):
            self.problems.append(Problem(f"{self.where}: {prefix}", "expected a table"))
            return
        for name, items in table.items():
            where, key = f"{self.where}: {prefix}.{name}", (kind, canonicalize_name(name))
            if not isinstance(items, list):
                self.problems.append(Problem(where, "expected a list"))
            elif (bad := group_name_problem(key[1])) is not None:  # not a PEP 508 name
                self.problems.append(Problem(where, group_name_problem(name) or bad))
            elif key in self.tables:  # PEP 735: names equal once normalized are an error
                other = self.tables[key][0].removeprefix(f"{self.where}: ")
                self.problems.append(Problem(where, f"the same name as {other}"))
            else:
                self.tables[key] = (where, self.entries(kind, where, items))

    def entries(self, kind: str, where: str, items: list[Any]) -> list[_Entry]:
        """The requirements and includes of one list, each checked once, with its key."""
        out: list[_Entry] = []
        for i, item in enumerate(items):
            if kind == "group" and isinstance(item, dict) and list(item) == ["include-group"]:
                name = item["include-group"]
                if not isinstance(name, str):
                    message = f"expected a group name, got {kind_of(name)}"
                    self.problems.append(Problem(f"{where}[{i}].include-group", message))
                    continue
                out.append((f"{where}[{i}]", ("group", canonicalize_name(name))))
            elif (req := _req(item, f"{where}[{i}]", self.problems)) is not None:
                out.append((f"{where}[{i}]", req))
        return out

    def expand(self, key: _Key, stack: tuple[_Key, ...] = ()) -> list[str]:
        """The requirements of the extra or group ``key``, includes and extras expanded."""
        if key in stack:
            chain = " -> ".join(k[1] for k in (*stack, key))
            self.problems.append(Problem(self.tables[key][0], f"include cycle: {chain}"))
            return []
        if key not in self.done and key[0] == "extra":
            extras = self._extras([(key[1], frozenset(), self.tables[key][0])])
            self.done[key] = list(dict.fromkeys(extras))
        elif key not in self.done:
            self.done[key] = self.requirements(self.tables[key][1], (*stack, key))
        return self.done[key]

    def requirements(self, entries: list[_Entry], stack: tuple[_Key, ...] = ()) -> list[str]:
        out: list[str] = []
        for where, entry in entries:
            if isinstance(entry, tuple):
                if entry in self.tables:
                    out += self.expand(entry, stack)
                else:
                    self.problems.append(Problem(where, f"no group {entry[1]!r}"))
            elif not self._is_project(entry):
                out.append(str(entry))
            elif not entry.extras:
                note = f"{where.rsplit('[', 1)[0]}: the project itself is not part of the spec"
                self.notes += [] if note in self.notes else [note]
            else:
                start = frozenset([str(entry.marker)] if entry.marker else [])
                out += self._extras([(canonicalize_name(e), start, where) for e in entry.extras])
        return list(dict.fromkeys(out))

    def _is_project(self, req: Requirement) -> bool:
        return canonicalize_name(req.name) == self.project

    def _extras(self, todo: list[tuple[str, frozenset[str], str]]) -> list[str]:
        """The requirements of the project's extras in ``todo`` (name, the markers on the
        way there, the key naming it), through every extra they name in turn, each
        requirement under the markers on the way to it."""
        todo = sorted(todo)
        origin = todo[0][2] if todo else self.where  # the self-reference (or extra) expanded
        seen: list[tuple[str, frozenset[str]]] = []
        out: list[str] = []
        while todo:
            extra, markers, named_at = todo.pop(0)
            if any(e == extra and m <= markers for e, m in seen):
                continue  # expanded already, under these markers or fewer
            if len(seen) == _MAX_EXTRA_PATHS:
                # Each path through extras that name each other under markers is its own
                # marker; their number can grow exponentially (8 extras: minutes, 25 MB).
                message = (
                    f"the extras named here reach over {_MAX_EXTRA_PATHS} different "
                    "combinations of markers; list the requirements instead"
                )
                self.problems.append(Problem(origin, message))
                return []
            seen.append((extra, markers))
            if ("extra", extra) not in self.tables:
                self._no_extra(extra, named_at)
                continue
            for at, entry in self.tables[("extra", extra)][1]:
                assert not isinstance(entry, tuple)  # extras include no groups
                if not self._is_project(entry):
                    out.append(_with_markers(entry, markers))
                    continue
                more = markers | {str(entry.marker)} if entry.marker else markers
                todo += [(canonicalize_name(e), more, at) for e in sorted(entry.extras)]
        return out

    def _no_extra(self, extra: str, where: str) -> None:
        message = f"no extra {extra!r} in project.optional-dependencies"
        if self.dynamic:
            message += (
                " (they are dynamic: the build backend computes them, and envship cannot "
                "read them; list the requirements here instead)"
            )
        if Problem(where, message) not in self.problems:
            self.problems.append(Problem(where, message))


def _table(parent: dict[str, Any], key: str, where: str, problems: list[Problem]) -> dict[str, Any]:
    """``parent[key]``, a table ({} when absent); another type is a problem naming it, as
    every tool reading the file refuses it (PEP 518, PEP 621)."""
    value = parent.get(key, {})
    if isinstance(value, dict):
        return value
    problems.append(Problem(where, f"expected a table, got {kind_of(value)}"))
    return {}


def from_pyproject(path: Path, root: Path) -> Found | None:
    shown = show(path, root)
    data = read_spec_toml(path)
    problems: list[Problem] = []
    tool = _table(data, "tool", f"{shown}: tool", problems)
    project = _table(data, "project", f"{shown}: project", problems)
    poetry = _table(tool, "poetry", f"{shown}: tool.poetry", problems)
    if problems:
        raise SpecError(f"cannot import {shown}", problems=problems)
    if "envship" in tool:
        raise SpecError(
            f"{shown} already has a spec ([tool.envship])",
            hint="edit [tool.envship] directly; `envship lock` reads it as it is",
        )
    found = Found(sources=[path])
    keys = ("dependencies", "optional-dependencies")
    if not (any(k in project for k in keys) or "dependency-groups" in data) and not (
        {"dependencies", "group", "dev-dependencies"} & set(poetry)
    ):
        return None
    name = project.get("name") or poetry.get("name")
    dynamic = project.get("dynamic")
    groups = _Groups(
        name if isinstance(name, str) else None, shown, problems,
        dynamic=isinstance(dynamic, list) and "optional-dependencies" in dynamic,
    )  # fmt: skip
    dependencies: list[_Entry] = []
    if "dependencies" in project:
        where = f"{shown}: project.dependencies"
        if isinstance(project["dependencies"], list):
            dependencies = groups.entries("dependencies", where, project["dependencies"])
        else:
            problems.append(Problem(where, "expected a list of requirements"))
        found.notes.append(f"{shown}: only the dependencies are imported, not the project")
    if isinstance(project.get("requires-python"), str):
        try:
            found.python = lowest_python(SpecifierSet(project["requires-python"]))
        except InvalidSpecifier as exc:
            problems.append(Problem(f"{shown}: project.requires-python", str(exc)))
        else:
            if found.python is None:
                msg = f"no Python from {PYTHONS[0]} to {PYTHONS[-1]} satisfies it"
                problems.append(Problem(f"{shown}: project.requires-python", msg))
    elif "requires-python" in project:
        got = kind_of(project["requires-python"])
        problems.append(
            Problem(f"{shown}: project.requires-python", f"expected a string, got {got}")
        )
    groups.add("extra", project.get("optional-dependencies", {}), "project.optional-dependencies")
    groups.add("group", data.get("dependency-groups", {}), "dependency-groups")
    found.dependencies = groups.requirements(dependencies)
    for key in list(groups.tables):
        if key[1] in found.groups:  # an extra and a dependency group of one name
            found.notes.append(f"{shown}: extra and dependency group {key[1]!r} are one group")
        merged = found.groups.get(key[1], []) + groups.expand(key)
        found.groups[key[1]] = list(dict.fromkeys(merged))
    found.notes += groups.notes
    # Poetry 2 may declare both; [project] then wins for the main dependencies.
    poetry = {
        k: v for k, v in poetry.items() if k != "dependencies" or "dependencies" not in project
    }
    python = found.python
    from ._poetry import from_poetry  # here: _poetry builds on this module's Found

    from_poetry(poetry, shown, problems, found, groups.project)
    found.python = python or found.python
    if problems:
        raise SpecError(f"cannot import {shown}", problems=problems)
    return found

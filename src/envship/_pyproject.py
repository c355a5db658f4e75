"""pyproject.toml for ``envship init``: PEP 621 metadata, PEP 735 groups and Poetry.

Only what a spec can hold is imported: the dependencies, extras and dependency groups
(as spec groups), a Python version, and Poetry's package sources (as indexes). The
project itself is not part of a spec; envship locks what it needs, not what it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._requirements import index_entry
from .errors import Problem, SpecError
from .spec import read_spec_toml

__all__ = [
    "PYTHONS",
    "Found",
    "from_pyproject",
    "lowest_python",
    "poetry_constraint",
    "poetry_python",
    "show",
]

#: Python minors a version range may resolve to, oldest first.
PYTHONS = tuple(f"3.{minor}" for minor in range(9, 15))
# An operator, then something that is not one (a lone "~" is no version).
_POETRY_OP = re.compile(r"^(\^|~=|~|===|==|!=|>=|<=|>|<|=)?([^\^~=!<>].*)$")


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


def poetry_constraint(text: str) -> str:
    """A Poetry version constraint as a PEP 440 specifier set (``""`` for any version).

    Poetry's caret and tilde forms
    (https://python-poetry.org/docs/dependency-specification/#version-constraints):
    ``^`` allows changes that keep the leftmost non-zero part, ``~`` allows patch
    changes (minor changes when only the major is given). The upper bound keeps the
    number of parts written, as Poetry prints it. A pre-release is allowed as the lower
    bound and the upper bound comes from its release (poetry-core's
    ``Version.next_breaking`` and ``next_minor`` start from ``stable``), so
    ``^1.2.3rc1`` is ``>=1.2.3rc1,<2.0.0``. ``||`` has no PEP 440 equivalent.
    """
    if "||" in text:
        raise ValueError(f"{text!r}: '||' (or) cannot be written as a PEP 440 specifier")
    text = re.sub(r"(\^|~=?|[<>!=]=?)\s+", r"\1", text.strip())
    out: list[str] = []
    for token in filter(None, re.split(r"[,\s]+", text)):
        match = _POETRY_OP.match(token)
        if match is None:
            if re.fullmatch(r"\^|~=?|===?|!=|[<>]=?|=", token):
                raise ValueError(f"{token!r}: expected a version after the operator")
            raise ValueError(f"{token!r} is not a version constraint Poetry accepts")
        op, version = match.group(1) or "", match.group(2)
        if token == "*":
            continue
        if op in ("^", "~"):
            out += _caret_or_tilde(op, version, token)
        else:
            out.append(("==" if op in ("", "=") else op) + version)
    result = ",".join(out)
    try:
        SpecifierSet(result)
    except InvalidSpecifier:
        raise ValueError(f"{text!r} is not a version constraint Poetry accepts") from None
    return result


def _caret_or_tilde(op: str, version: str, token: str) -> list[str]:
    try:
        parsed = Version(version)
    except InvalidVersion:
        parsed = None
    if parsed is None or parsed.local is not None or parsed.epoch:
        raise ValueError(f"{token!r}: expected a version such as 1.2.3 or 1.2.3rc1 after {op!r}")
    parts = list(parsed.release)
    if op == "^":
        nonzero = [i for i, p in enumerate(parts) if p]
        bump = nonzero[0] if nonzero else len(parts) - 1
    else:
        bump = 0 if len(parts) == 1 else 1
    upper = [*parts[:bump], parts[bump] + 1] + [0] * (len(parts) - bump - 1)
    # str(parsed): Poetry also reads SemVer spellings such as "v1.2" and "1.2.3-rc.1".
    return [f">={parsed}", "<" + ".".join(map(str, upper))]


def poetry_python(constraint: str) -> str:
    """The oldest supported Python minor a Poetry ``python = "..."`` constraint allows."""
    found: list[str] = []
    for alternative in constraint.split("||"):
        version = lowest_python(SpecifierSet(poetry_constraint(alternative)))
        found += [version] if version is not None else []
    if not found:
        raise ValueError(f"no Python from {PYTHONS[0]} to {PYTHONS[-1]} matches {constraint!r}")
    return min(found, key=lambda v: int(v.split(".")[1]))


def _python_marker(constraint: str) -> str:
    """A Poetry ``python = "..."`` restriction as a PEP 508 marker."""
    alternatives = []
    for alternative in constraint.split("||"):
        specs = SpecifierSet(poetry_constraint(alternative))
        terms = [
            f"{'python_full_version' if s.version.count('.') >= 2 else 'python_version'} "
            f'{s.operator} "{s.version}"'
            for s in sorted(specs, key=str)
        ]
        alternatives.append(" and ".join(terms) or 'python_version >= "3"')
    return " or ".join(f"({a})" for a in alternatives) if len(alternatives) > 1 else alternatives[0]


def _with_marker(req: Requirement, marker: str | None) -> str:
    if not marker:
        return str(req)
    req = Requirement(str(req))
    req.marker = Marker(f"({req.marker}) and ({marker})" if req.marker else marker)
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
    return req


def _req_list(value: object, where: str, problems: list[Problem]) -> list[Requirement]:
    if not isinstance(value, list):
        problems.append(Problem(where, "expected a list of requirements"))
        return []
    reqs = [_req(item, f"{where}[{i}]", problems) for i, item in enumerate(value)]
    return [r for r in reqs if r is not None]


class _Groups:
    """PEP 621 extras and PEP 735 dependency groups, flattened into plain lists.

    PEP 735: ``{include-group = "x"}`` includes another group; names compare normalized
    and an include cycle is an error. A requirement on the project itself with extras
    (``proj[test]``) is the common way to reuse extras, so it expands to those extras.
    """

    def __init__(self, project: str | None, where: str, problems: list[Problem]) -> None:
        self.project = canonicalize_name(project) if project else None
        self.tables: dict[tuple[str, str], tuple[str, list[Any]]] = {}
        self.done: dict[tuple[str, str], list[str]] = {}
        self.where, self.problems, self.notes = where, problems, list[str]()

    def add(self, kind: str, table: object, prefix: str) -> None:
        if not isinstance(table, dict):
            self.problems.append(Problem(f"{self.where}: {prefix}", "expected a table"))
            return
        for name, items in table.items():
            where = f"{self.where}: {prefix}.{name}"
            if not isinstance(items, list):
                self.problems.append(Problem(where, "expected a list"))
                continue
            self.tables[(kind, canonicalize_name(name))] = (where, items)

    def expand(self, key: tuple[str, str], stack: tuple[tuple[str, str], ...] = ()) -> list[str]:
        if key in stack:
            chain = " -> ".join(k[1] for k in (*stack, key))
            self.problems.append(Problem(self.tables[key][0], f"include cycle: {chain}"))
            return []
        if key in self.done:
            return self.done[key]
        where, items = self.tables[key]
        out: list[str] = []
        for i, item in enumerate(items):
            if key[0] == "group" and isinstance(item, dict) and list(item) == ["include-group"]:
                target = ("group", canonicalize_name(str(item["include-group"])))
                if target not in self.tables:
                    self.problems.append(Problem(f"{where}[{i}]", f"no group {target[1]!r}"))
                else:
                    out += self.expand(target, (*stack, key))
                continue
            req = _req(item, f"{where}[{i}]", self.problems)
            if req is None:
                continue
            if self.project is None or canonicalize_name(req.name) != self.project:
                out.append(str(req))
                continue
            if not req.extras:
                self.notes.append(f"{where}: the project itself is not part of the spec")
            for extra in sorted(req.extras):
                target = ("extra", canonicalize_name(extra))
                if target not in self.tables:
                    self.problems.append(Problem(f"{where}[{i}]", f"no extra {extra!r}"))
                    continue
                marker = str(req.marker) if req.marker else None
                expanded = self.expand(target, (*stack, key))
                out += [_with_marker(Requirement(r), marker) for r in expanded]
        self.done[key] = out
        return out


def _poetry_deps(
    table: object, where: str, problems: list[Problem], found: Found
) -> list[tuple[str, str, bool]]:
    """(name, requirement, optional) for each entry of a Poetry dependencies table."""
    if not isinstance(table, dict):
        problems.append(Problem(where, "expected a table"))
        return []
    out: list[tuple[str, str, bool]] = []
    for name, value in table.items():
        key = f"{where}.{name}"
        if name.lower() == "python":  # the project's Python, not a package
            try:
                python = poetry_python(str(value))
            except ValueError as exc:
                problems.append(Problem(key, str(exc)))
            else:
                found.python = found.python or python
            continue
        for entry in value if isinstance(value, list) else [value]:
            spec = {"version": entry} if isinstance(entry, str) else entry
            if not isinstance(spec, dict):
                problems.append(Problem(key, "expected a version string or a table"))
                continue
            direct = sorted({"git", "path", "url", "file"} & set(spec))
            if direct:
                problems.append(
                    Problem(key, f"{direct[0]} dependencies are not supported: envship "
                            "locks from package indexes; publish it to an index")
                )  # fmt: skip
                continue
            if "source" in spec:
                found.notes.append(f"{key}: source {spec['source']!r} ignored; all indexes apply")
            try:
                extras = ",".join(spec.get("extras", []))
                markers = [f"({spec['markers']})"] if spec.get("markers") else []
                if spec.get("python"):
                    markers.append(f"({_python_marker(str(spec['python']))})")
                if spec.get("platform"):
                    markers.append(f'sys_platform == "{spec["platform"]}"')
                text = name + (f"[{extras}]" if extras else "")
                text += poetry_constraint(str(spec.get("version", "*")))
                req = Requirement(text + (f"; {' and '.join(markers)}" if markers else ""))
            except (ValueError, TypeError) as exc:  # InvalidRequirement is a ValueError
                problems.append(Problem(key, str(exc)))
                continue
            if not _prereleases_expressed(spec, req, key, problems):
                continue
            out.append((name, str(req), spec.get("optional") is True))
    return out


def _prereleases_expressed(
    spec: dict[str, Any], req: Requirement, key: str, problems: list[Problem]
) -> bool:
    """Whether the requirement says what Poetry's ``allow-prereleases`` says.

    A spec has no per-package pre-release switch; PEP 440 allows pre-releases of a
    package whose specifier names one (uv's default does the same), so ``true`` is kept
    only when the version already names one, and refused otherwise rather than dropped.
    """
    for flag in ("allow-prereleases", "allows-prereleases"):  # the second: Poetry < 1.2
        value = spec.get(flag)
        if value is None or value is False:
            continue
        if value is not True:
            problems.append(Problem(f"{key}.{flag}", "expected true or false"))
            return False
        if not req.specifier.prereleases:
            problems.append(
                Problem(
                    f"{key}.{flag}",
                    "not supported: name a pre-release in the version instead (e.g. "
                    '">=2.0rc1"); a specifier naming one lets the resolver pick '
                    "pre-releases of this package",
                )
            )
            return False
    return True


def _from_poetry(poetry: dict[str, Any], shown: str, problems: list[Problem], found: Found) -> None:
    where = f"{shown}: tool.poetry"
    if "dependencies" in poetry:
        extras = poetry.get("extras", {})
        in_extra = {
            canonicalize_name(pkg): canonicalize_name(extra)
            for extra, pkgs in (extras.items() if isinstance(extras, dict) else [])
            for pkg in pkgs
        }
        for name, req, optional in _poetry_deps(
            poetry["dependencies"], f"{where}.dependencies", problems, found
        ):
            extra = in_extra.get(canonicalize_name(name))
            if not optional:
                found.dependencies.append(req)
            elif extra is not None:  # Poetry extras become groups, like PEP 621 extras
                found.groups.setdefault(extra, []).append(req)
            else:
                found.notes.append(f"{where}.dependencies.{name}: optional, in no extra; skipped")
    groups: dict[str, Any] = dict(poetry.get("group", {}))
    if "dev-dependencies" in poetry:  # Poetry < 1.2 spelling of the "dev" group
        groups.setdefault("dev", {}).setdefault("dependencies", poetry["dev-dependencies"])
    for gname, group in groups.items():
        gwhere = f"{where}.group.{gname}.dependencies"
        deps = group.get("dependencies", {}) if isinstance(group, dict) else None
        reqs = [req for _, req, _ in _poetry_deps(deps, gwhere, problems, found)]
        found.groups.setdefault(canonicalize_name(gname), []).extend(reqs)
    sources = poetry.get("source", [])
    for i, src in enumerate(sources if isinstance(sources, list) else []):
        swhere = f"{where}.source[{i}]"
        if not isinstance(src, dict) or not isinstance(src.get("name"), str):
            problems.append(Problem(swhere, "expected a table with a name"))
            continue
        primary = src.get("priority") in ("primary", "default") or src.get("default") is True
        default = primary and not any(x.get("default") for x in found.indexes)
        if primary and not default:
            found.notes.append(f"{swhere}: another primary source is the default; kept as extra")
        if src.get("priority") == "explicit":
            found.notes.append(f"{swhere}: explicit source; envship searches it for every package")
        entry, errs, notes = index_entry(
            str(src.get("url", "https://pypi.org/simple")), swhere, default=default,
            taken=[x["name"] for x in found.indexes], name=src["name"],
        )  # fmt: skip
        problems += errs
        found.notes += notes
        if entry is not None:
            found.indexes.append(entry)


def from_pyproject(path: Path, root: Path) -> Found | None:
    shown = show(path, root)
    data = read_spec_toml(path)
    tool = data.get("tool", {})
    if isinstance(tool, dict) and "envship" in tool:
        raise SpecError(
            f"{shown} already has a spec ([tool.envship])",
            hint="edit [tool.envship] directly; `envship lock` reads it as it is",
        )
    project = data.get("project", {})
    poetry = tool.get("poetry", {}) if isinstance(tool, dict) else {}
    poetry = poetry if isinstance(poetry, dict) else {}
    project = project if isinstance(project, dict) else {}
    found, problems = Found(sources=[path]), list[Problem]()
    keys = ("dependencies", "optional-dependencies")
    if not (any(k in project for k in keys) or "dependency-groups" in data) and not (
        {"dependencies", "group", "dev-dependencies"} & set(poetry)
    ):
        return None
    if "dependencies" in project:
        reqs = _req_list(project["dependencies"], f"{shown}: project.dependencies", problems)
        found.dependencies = [str(r) for r in reqs]
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
    name = project.get("name") or poetry.get("name")
    groups = _Groups(name if isinstance(name, str) else None, shown, problems)
    groups.add("extra", project.get("optional-dependencies", {}), "project.optional-dependencies")
    groups.add("group", data.get("dependency-groups", {}), "dependency-groups")
    for key in list(groups.tables):
        found.groups.setdefault(key[1], []).extend(groups.expand(key))
    found.notes += groups.notes
    # Poetry 2 may declare both; [project] then wins for the main dependencies.
    poetry = {
        k: v for k, v in poetry.items() if k != "dependencies" or "dependencies" not in project
    }
    python = found.python
    _from_poetry(poetry, shown, problems, found)
    found.python = python or found.python
    if problems:
        raise SpecError(f"cannot import {shown}", problems=problems)
    return found

"""Poetry's ``[tool.poetry]`` tables as a spec's dependencies, groups and indexes.

Poetry writes version constraints of its own (``^1.2``, ``~1.2``, ``||``) and marks
optional packages, extras, groups, a project Python and package sources in its own
keys; each becomes its PEP 440 / PEP 508 equivalent, or an error naming the key where
none exists. Read by :func:`envship._pyproject.from_pyproject`.
"""

from __future__ import annotations

import re
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._pyproject import PYTHONS, Found, lowest_python
from ._requirements import index_entry
from .errors import Problem
from .spec import group_name_problem, kind

__all__ = ["from_poetry", "poetry_constraint", "poetry_python"]

# An operator, then something that is not one (a lone "~" is no version).
_POETRY_OP = re.compile(r"^(\^|~=|~|===|==|!=|>=|<=|>|<|=)?([^\^~=!<>].*)$")


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


def poetry_deps(
    table: object, where: str, problems: list[Problem], found: Found, project: str | None
) -> list[tuple[str, str, bool]]:
    """(name, requirement, optional) for each entry of a Poetry dependencies table."""
    if not isinstance(table, dict):
        problems.append(Problem(where, "expected a table"))
        return []
    out: list[tuple[str, str, bool]] = []
    for name, value in table.items():
        key = f"{where}.{name}"
        if name.lower() == "python":  # the project's Python, not a package
            if not isinstance(value, str):
                problems.append(
                    Problem(key, f"expected a version constraint string, got {kind(value)}")
                )
                continue
            try:
                python = poetry_python(value)
            except ValueError as exc:
                problems.append(Problem(key, str(exc)))
            else:
                found.python = found.python or python
            continue
        if canonicalize_name(name) == project:
            # Poetry has no self-referencing extras; kept, the lock would fetch whatever
            # an index serves under the project's name (dependency confusion).
            problems.append(Problem(key, "the project cannot depend on itself"))
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
            if not _typed(spec, key, problems):
                continue
            if "source" in spec:
                found.notes.append(f"{key}: source {spec['source']!r} ignored; all indexes apply")
            try:
                extras = ",".join(spec.get("extras", []))
                markers = [f"({spec['markers']})"] if spec.get("markers") else []
                if spec.get("python"):
                    markers.append(f"({_python_marker(spec['python'])})")
                if spec.get("platform"):
                    markers.append(f'sys_platform == "{spec["platform"]}"')
                text = name + (f"[{extras}]" if extras else "")
                text += poetry_constraint(spec.get("version", "*"))
                req = Requirement(text + (f"; {' and '.join(markers)}" if markers else ""))
            except ValueError as exc:  # InvalidRequirement is a ValueError
                problems.append(Problem(key, str(exc)))
                continue
            if not _prereleases_expressed(spec, req, key, problems):
                continue
            out.append((name, str(req), spec.get("optional") is True))
    return out


# The keys of a dependency's table that hold text (Poetry's own schema), and extras.
_STRING_KEYS = ("version", "markers", "python", "platform", "source")


def _typed(spec: dict[str, Any], key: str, problems: list[Problem]) -> bool:
    """Whether each key of a dependency's table that envship reads has Poetry's type;
    each one that does not is a problem naming it (``tool.poetry.dependencies.x.version``)."""
    ok = True
    for field in _STRING_KEYS:
        if field in spec and not isinstance(spec[field], str):
            problems.append(
                Problem(f"{key}.{field}", f"expected a string, got {kind(spec[field])}")
            )
            ok = False
    extras = spec.get("extras", [])
    if not isinstance(extras, list) or not all(isinstance(e, str) for e in extras):
        problems.append(Problem(f"{key}.extras", "expected an array of extra names"))
        ok = False
    return ok


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


def _extras(poetry: dict[str, Any], where: str, problems: list[Problem]) -> dict[str, str]:
    """Which extra each optional package is in (normalized names), from
    ``[tool.poetry.extras]``: a table of ``extra = [package names]``."""
    extras = poetry.get("extras", {})
    if not isinstance(extras, dict):
        problems.append(Problem(f"{where}.extras", f"expected a table, got {kind(extras)}"))
        return {}
    in_extra: dict[str, str] = {}
    for extra, pkgs in extras.items():
        if not isinstance(pkgs, list):
            problems.append(
                Problem(
                    f"{where}.extras.{extra}",
                    f"expected an array of package names, got {kind(pkgs)}",
                )
            )
            continue
        for i, pkg in enumerate(pkgs):
            if isinstance(pkg, str):
                in_extra[canonicalize_name(pkg)] = canonicalize_name(extra)
            else:
                problems.append(
                    Problem(
                        f"{where}.extras.{extra}[{i}]", f"expected a package name, got {kind(pkg)}"
                    )
                )
    return in_extra


def _groups(
    poetry: dict[str, Any], where: str, problems: list[Problem]
) -> list[tuple[str, str, object]]:
    """(group name, where, dependencies table) of ``[tool.poetry.group.NAME]``, and of
    Poetry < 1.2's ``dev-dependencies``, which poetry-core adds to the "dev" group."""
    raw = poetry.get("group", {})
    if not isinstance(raw, dict):
        message = f"expected a table of groups ([tool.poetry.group.NAME]), got {kind(raw)}"
        problems.append(Problem(f"{where}.group", message))
        raw = {}
    out: list[tuple[str, str, object]] = []
    for gname, group in raw.items():
        if not isinstance(group, dict):
            message = f"expected a table, got {kind(group)}"
            problems.append(Problem(f"{where}.group.{gname}", message))
            continue
        deps = group.get("dependencies", {})
        out.append((gname, f"{where}.group.{gname}.dependencies", deps))
    if "dev-dependencies" in poetry:
        out.append(("dev", f"{where}.dev-dependencies", poetry["dev-dependencies"]))
    return out


def from_poetry(
    poetry: dict[str, Any], shown: str, problems: list[Problem], found: Found, project: str | None
) -> None:
    where = f"{shown}: tool.poetry"
    in_extra = _extras(poetry, where, problems)
    if "dependencies" in poetry:
        for name, req, optional in poetry_deps(
            poetry["dependencies"], f"{where}.dependencies", problems, found, project
        ):
            extra = in_extra.get(canonicalize_name(name))
            if not optional:
                found.dependencies.append(req)
            elif extra is not None:  # Poetry extras become groups, like PEP 621 extras
                found.groups.setdefault(extra, []).append(req)
            else:
                found.notes.append(f"{where}.dependencies.{name}: optional, in no extra; skipped")
    for gname, gwhere, deps in _groups(poetry, where, problems):
        reqs = [req for _, req, _ in poetry_deps(deps, gwhere, problems, found, project)]
        if group_name_problem(canonicalize_name(gname)) is not None:
            problems.append(Problem(f"{where}.group.{gname}", group_name_problem(gname) or ""))
            continue
        found.groups.setdefault(canonicalize_name(gname), []).extend(reqs)
    sources = poetry.get("source", [])
    if not isinstance(sources, list):
        message = f"expected an array of tables ([[tool.poetry.source]]), got {kind(sources)}"
        problems.append(Problem(f"{where}.source", message))
        sources = []
    for i, src in enumerate(sources):
        swhere = f"{where}.source[{i}]"
        if not isinstance(src, dict) or not isinstance(src.get("name"), str):
            problems.append(Problem(swhere, "expected a table with a name"))
            continue
        if not isinstance(src.get("url", ""), str):
            problems.append(Problem(f"{swhere}.url", f"expected a URL, got {kind(src['url'])}"))
            continue
        primary = src.get("priority") in ("primary", "default") or src.get("default") is True
        default = primary and not any(x.get("default") for x in found.indexes)
        if primary and not default:
            found.notes.append(f"{swhere}: another primary source is the default; kept as extra")
        if src.get("priority") == "explicit":
            found.notes.append(f"{swhere}: explicit source; envship searches it for every package")
        entry, errs, notes = index_entry(
            src.get("url", "https://pypi.org/simple"), swhere, default=default,
            taken=[x["name"] for x in found.indexes], name=src["name"],
        )  # fmt: skip
        problems += errs
        found.notes += notes
        if entry is not None:
            found.indexes.append(entry)

"""The environment spec: ``envship.toml`` or ``[tool.envship]`` in ``pyproject.toml``.

The spec is the one place a user declares an environment. Everything envship writes
(lock, store, index, images) derives from it, and its digest ties a lock to it. The
rules for ``[[indexes]]`` entries live in :mod:`envship._indexconfig`, those for the
``[targets]`` table in :mod:`envship._spectargets`.

Example::

    name = "ds"
    python = "3.11"
    dependencies = ["numpy>=2", "pandas"]

    [groups]
    dev = ["pytest"]

    [[indexes]]
    name = "internal"
    url = "https://pypi.example/simple"
    username-env = "INTERNAL_USER"
    password-env = "INTERNAL_TOKEN"

    [targets.linux-x86_64]
    glibc = "2.28"

    [kernel]
    display-name = "Python (ds)"
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# IndexConfig, index_key and DEFAULT_TARGETS are re-exported: they were defined here, and
# callers (envship.IndexConfig, _http, _requirements) import them from this module.
from ._indexconfig import IndexConfig, index_key, parse_indexes
from ._sourcefile import read_spec_toml, special, stat_or_none
from ._specedit import add_requirements as add_requirements
from ._spectargets import DEFAULT_TARGETS as DEFAULT_TARGETS
from ._spectargets import parse_targets
from .errors import Problem, SpecError, TargetError
from .targets import Target

__all__ = [
    "SPEC_FILENAME",
    "IndexConfig",
    "Spec",
    "add_requirements",
    "find_spec",
    "group_name_problem",
    "index_key",
    "load_spec",
    "parse_spec",
    "read_spec_toml",
    "requirement_problem",
]

SPEC_FILENAME = "envship.toml"
# Always fullmatch: "$" also matches before a final newline, which let "dev\n" through.
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
# No leading zero: "3.09" would be a second spelling of 3.9 that no marker matches.
_PYTHON = re.compile(r"3\.(0|[1-9][0-9]?)")
_TOP_KEYS = {
    "name",
    "python",
    "dependencies",
    "groups",
    "indexes",
    "targets",
    "kernel",
    "allow-sdist",
    "image",
}
_KERNEL_KEYS = {"display-name"}
# [image] is reserved: nothing reads it yet (`envship image build` takes its settings as
# options), so any key in it would be silently ignored: each one is an error instead.
_IMAGE_KEYS: set[str] = set()
_IMAGE_UNREAD = (
    "unknown key: envship reads no [image] settings yet; `envship image build` takes them "
    "as options (--base, --prefix, --kernel-name, ...)"
)
_TOML_KINDS = {str: "a string", bool: "a boolean", int: "an integer", float: "a float"}


@dataclass(frozen=True, slots=True)
class Spec:
    """A validated environment spec."""

    name: str
    python: tuple[str, ...]
    dependencies: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    indexes: tuple[IndexConfig, ...] = ()
    targets: tuple[Target, ...] = ()
    kernel_display_name: str | None = None
    allow_sdist: bool = False
    image: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def display_name(self) -> str:
        return self.kernel_display_name or f"Python ({self.name})"

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise TargetError(
            f"unknown target {name!r}",
            problems=[Problem("targets", f"declared: {', '.join(t.name for t in self.targets)}")],
        )

    def lock_inputs(self) -> dict[str, Any]:
        """Everything that changes what a lock resolves; its digest marks a lock stale."""
        return {
            "python": list(self.python),
            "dependencies": list(self.dependencies),
            "groups": {k: list(v) for k, v in sorted(self.groups.items())},
            "indexes": [[i.name, i.url, i.default] for i in self.indexes],
            "targets": [t.to_json() for t in self.targets],
            "allow-sdist": self.allow_sdist,
        }

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.lock_inputs(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "python": self.python[0] if len(self.python) == 1 else list(self.python),
            "dependencies": list(self.dependencies),
        }
        if self.allow_sdist:
            data["allow-sdist"] = True
        if self.groups:
            data["groups"] = {k: list(v) for k, v in self.groups.items()}
        if self.indexes:
            data["indexes"] = [i.to_toml() for i in self.indexes]
        targets: dict[str, Any] = {}
        for t in self.targets:
            entry: dict[str, Any] = {"glibc": t.glibc}
            if t.platform.id != t.name:
                entry["platform"] = t.platform.id
            if len(self.python) > 1 or t.python != self.python[0]:
                entry["python"] = t.python
            if t.variant != "cpu":
                entry["variant"] = t.variant
            targets[t.name] = entry
        data["targets"] = targets
        if self.kernel_display_name:
            data["kernel"] = {"display-name": self.kernel_display_name}
        if self.image:
            data["image"] = dict(self.image)
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _as_str_list(value: object, where: str, problems: list[Problem]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(Problem(where, "expected a list of strings"))
        return []
    return list(value)


# The marker variable `extra` (str(Marker) quotes every string, so a bare word is one).
_EXTRA_VARIABLE = re.compile(r'(?<!["\w])extra(?!["\w])')


def requirement_problem(req: Requirement) -> str | None:
    """Why ``req`` (parsed, without a URL) cannot be locked from a spec, or None.

    Every importer asks this at the requirement's own place (``requirements.txt:2``),
    and the spec again for what it is given directly.

    PEP 508: the marker variable ``extra`` is set only while reading a package's own
    dependencies; in a spec it is never set, so uv would silently never install a
    requirement whose marker tests it.

    packaging accepts ``===`` (PEP 440 arbitrary equality, a string comparison) with any
    string after it, even none (``foo===``); uv, the resolver, parses that string as a
    PEP 440 version and fails on it, so the whole lock failed with only "Failed to build
    envship-lock". Every other operator with no version is a syntax error in packaging.
    """
    if req.marker is not None and _EXTRA_VARIABLE.search(str(req.marker)):
        return (
            "its marker tests 'extra', which only a package's own metadata sets; a spec "
            "has no extras: put the requirement in a [groups] group instead"
        )
    for spec in req.specifier:
        if spec.operator != "===":
            continue
        if not spec.version:
            return (
                f"'===' has no version after it; write one (e.g. '{req.name}==1.0') or "
                "leave the operator out for any version"
            )
        try:
            Version(spec.version)
        except InvalidVersion:
            return (
                f"'==={spec.version}' is not a PEP 440 version, which uv (envship's "
                "resolver) requires after '==='"
            )
    return None


def group_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a spec group, or None.

    PEP 735 group names are PEP 508 names, compared normalized (PEP 503); a spec keeps
    them normalized, as the lock (PEP 751) and ``--group`` name them. The suggestion is
    the normalized form of the name with every run of other characters made a "-".
    """
    if not isinstance(name, str):  # a table from a library caller; TOML keys are strings
        return f"expected a string as the group name, got {kind(name)}"
    if _NAME.fullmatch(name) and canonicalize_name(name) == name:
        return None
    suggestion = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if _NAME.fullmatch(name):
        return f"group names must be normalized (PEP 503): {suggestion!r}"
    return f"invalid group name {name!r}: expected a normalized PEP 735 name" + (
        f" (lowercase letters, digits and '-'): {suggestion!r}"
        if suggestion
        else ": lowercase letters, digits and '-', starting and ending with a letter or digit"
    )


def _requirements(value: object, where: str, problems: list[Problem]) -> tuple[str, ...]:
    out: list[str] = []
    for i, text in enumerate(_as_str_list(value, where, problems)):
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(Problem(f"{where}[{i}]", f"invalid requirement {text!r}: {exc}"))
            continue
        if req.url:
            # uv would fetch it (and build it, for an sdist) outside every index: the
            # lock would name a file no index serves and the store cannot fetch by hash.
            problems.append(
                Problem(
                    f"{where}[{i}]",
                    f"direct reference {req.url!r} is not supported: envship locks from "
                    "package indexes only; publish the package to an index and name it "
                    "with a version specifier",
                )
            )
            continue
        unusable = requirement_problem(req)
        if unusable is not None:
            problems.append(Problem(f"{where}[{i}]", f"{text!r}: {unusable}"))
            continue
        out.append(str(req))
    return tuple(out)


def kind(value: object) -> str:
    """What ``value`` is, in TOML's words, for a message: never its repr, which may be
    huge or nested deeper than ``repr`` can go."""
    if value is None:  # only from a library caller: TOML has no null
        return "nothing"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return _TOML_KINDS.get(type(value), f"a {type(value).__name__}")


def key_path(key: str) -> str:
    """``key`` for a location, quoted as TOML would when it holds a character that does
    not print (``groups."dev\\n"``, not a line break in the middle of a message)."""
    return key if key.isprintable() else json.dumps(key)


def unknown_key(key: object, known: Iterable[str]) -> str:
    """The message for ``key`` in a table that takes only ``known``: those keys, and the
    one meant when ``key`` is close to one (``display_name`` for ``display-name``)."""
    keys = sorted(known)
    if not keys:
        return _IMAGE_UNREAD  # the one table that takes none
    near = difflib.get_close_matches(str(key), keys, n=1)
    meant = f"did you mean {near[0]!r}? " if near else ""
    return f"unknown key ({meant}keys here: {', '.join(keys)})"


def _table(value: object, where: str, problems: list[Problem]) -> dict[str, Any]:
    """``value``'s string keys; any other key is a problem (only a library caller can pass
    one: TOML keys are strings), so the rules below may sort and format keys freely."""
    assert isinstance(value, Mapping)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(key, str):
            out[key] = item
        else:
            message = f"expected a string key, got {kind(key)}"
            problems.append(Problem(f"{where}{'.' if where else ''}{_other_key(key)}", message))
    return out


def _other_key(key: object) -> str:
    """A key that is no string, for a location: a number or None as written, anything
    else (a tuple, nested without limit) by its kind."""
    return repr(key) if key is None or isinstance(key, int | float) else f"<{kind(key)}>"


def _strict_table(
    value: object, where: str, known: Iterable[str], problems: list[Problem]
) -> dict[str, Any]:
    """A table whose keys must all be ``known`` (kernel, image): {} when it is no table."""
    if not isinstance(value, Mapping):
        problems.append(Problem(where, f"expected a table, got {kind(value)}"))
        return {}
    table = _table(value, where, problems)
    for key in sorted(set(table) - set(known)):
        problems.append(Problem(f"{where}.{key_path(key)}", unknown_key(key, known)))
    return table


def _targets_table(value: object, problems: list[Problem]) -> object:
    """The targets table with string keys only, at both levels (see :func:`_table`)."""
    if not isinstance(value, Mapping):
        return value  # parse_targets reports it
    table = _table(value, "targets", problems)
    return {
        name: _table(entry, f"targets.{name}", problems) if isinstance(entry, Mapping) else entry
        for name, entry in table.items()
    }


def parse_spec(data: Mapping[str, Any], *, source: str, path: Path | None = None) -> Spec:
    """Validate a spec table; every problem is reported at once, each with its key."""
    problems: list[Problem] = []

    def at(key: str) -> str:
        return f"{source}: {key}" if key else source

    if not isinstance(data, Mapping):
        raise SpecError(
            f"invalid spec in {source}",
            problems=[Problem(source, f"expected a table, got {kind(data)}")],
        )
    data = _table(data, "", problems)
    for key in sorted(set(data) - _TOP_KEYS):
        problems.append(Problem(key_path(key), unknown_key(key, _TOP_KEYS)))
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = f"{name!r}" if isinstance(name, str) else kind(name)
        problems.append(
            Problem(
                "name",
                ("required: " if name is None else f"invalid name {shown}: expected ")
                + "letters, digits, '.', '_' or '-', starting and ending with a letter "
                "or digit",
            )
        )
        name = "invalid"
    raw_python = data.get("python", "3.11")
    pythons = [raw_python] if isinstance(raw_python, str) else raw_python
    if (
        not isinstance(pythons, list)
        or not pythons
        or not all(isinstance(p, str) and _PYTHON.fullmatch(p) for p in pythons)
    ):
        problems.append(Problem("python", 'expected a version like "3.11" or a list of them'))
        pythons = ["3.11"]
    elif len(set(pythons)) < len(pythons):
        twice = sorted({p for p in pythons if pythons.count(p) > 1})
        problems.append(Problem("python", f"listed more than once: {', '.join(twice)}"))
        pythons = list(dict.fromkeys(pythons))  # the targets are still checked once each
    dependencies = _requirements(data.get("dependencies", []), "dependencies", problems)
    groups: dict[str, tuple[str, ...]] = {}
    raw_groups = data.get("groups", {})
    if not isinstance(raw_groups, Mapping):
        problems.append(Problem("groups", "expected a table of name = [requirements]"))
    else:
        for gname, reqs in raw_groups.items():
            gwhere = f"groups.{key_path(gname) if isinstance(gname, str) else _other_key(gname)}"
            bad_name = group_name_problem(gname)
            if bad_name is not None:
                problems.append(Problem(gwhere, bad_name))
            if isinstance(gname, str):
                groups[gname] = _requirements(reqs, gwhere, problems)
    indexes = parse_indexes(data.get("indexes", []), problems)
    targets = parse_targets(_targets_table(data.get("targets"), problems), tuple(pythons), problems)
    kernel = _strict_table(data.get("kernel", {}), "kernel", _KERNEL_KEYS, problems)
    display = kernel.get("display-name")
    if display is not None and not isinstance(display, str):
        problems.append(Problem("kernel.display-name", f"expected a string, got {kind(display)}"))
        display = None
    allow_sdist = data.get("allow-sdist", False)
    if not isinstance(allow_sdist, bool):
        problems.append(Problem("allow-sdist", "expected true or false"))
        allow_sdist = False
    image = _strict_table(data.get("image", {}), "image", _IMAGE_KEYS, problems)
    if problems:
        raise SpecError(
            f"invalid spec in {source}",
            problems=[Problem(at(p.where), p.message) for p in problems],
        )
    return Spec(
        name=name,
        python=tuple(pythons),
        dependencies=dependencies,
        groups=groups,
        indexes=tuple(indexes),
        targets=targets,
        kernel_display_name=display,
        allow_sdist=allow_sdist,
        image=image,
        path=path,
    )


def _tool_table(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """pyproject.toml's ``tool`` table; a ``tool`` of another type is an error naming it
    (PEP 518: every tool's table lives under it)."""
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise SpecError(
            f"invalid {path}",
            problems=[
                Problem(
                    f"{path}: tool",
                    f"expected a table ([tool.NAME] sections), got {kind(tool)}",
                )
            ],
        )
    return tool


def _is_file(path: Path) -> bool:
    """Whether a spec is at ``path``: a regular file. A FIFO or a link to a device is
    refused by name (it could not be read whole), a folder or nothing is no spec."""
    st = stat_or_none(path, f"the spec {path}")
    if st is None or stat.S_ISDIR(st.st_mode):
        return False
    if not stat.S_ISREG(st.st_mode):
        raise SpecError(f"cannot read {path}: not a regular file but {special(st.st_mode)}")
    return True


def find_spec(start: str | os.PathLike[str]) -> Path:
    """The spec file for ``start``: a file itself, or envship.toml / pyproject.toml in a folder."""
    start = Path(start)
    if _is_file(start):
        return start
    candidate = start / SPEC_FILENAME
    if _is_file(candidate):
        return candidate
    pyproject = start / "pyproject.toml"
    if _is_file(pyproject) and "envship" in _tool_table(read_spec_toml(pyproject), pyproject):
        return pyproject
    raise SpecError(
        f"no {SPEC_FILENAME} (or [tool.envship] in pyproject.toml) in {start}",
        hint="run `envship init` to write one from requirements.txt, pyproject.toml "
        "or environment.yml",
    )


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Load and validate the spec at ``path`` (a file or a folder holding one)."""
    path = find_spec(path)
    data = read_spec_toml(path)
    source = str(path)
    if path.name == "pyproject.toml":
        tool = _tool_table(data, path).get("envship")
        if tool is None:
            raise SpecError(f"{path} has no [tool.envship] table")
        data, source = tool, f"{path} [tool.envship]"
    return parse_spec(data, source=source, path=path.resolve())

"""``envship init``: write ``envship.toml`` from the files a project already has.

Sources are tried in order and the first one found wins: ``environment.yml``, then
``pyproject.toml`` (PEP 621, PEP 735 and Poetry), then ``requirements.txt`` (or
``requirements.in``); ``runtime.txt`` sets the Python version on top of any of them.
As in repo2docker, a ``binder/`` (or ``.binder/``) folder, when present, is the only
place read. The spec is built as a plain table and validated by :func:`parse_spec`, so
``init`` can never write a spec that ``load_spec`` would reject. Nothing here prints.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from ._denied import is_denied
from ._poetry import poetry_constraint
from ._pyproject import PYTHONS, Found, from_pyproject, lowest_python, show
from ._requirements import decode_text, parse_requirements
from ._sourcefile import read_source, stat_or_none, undecodable, unreadable
from .errors import Problem, SpecError
from .spec import SPEC_FILENAME, Spec, parse_spec

__all__ = [
    "DEFAULT_INIT_TARGETS",
    "ImportResult",
    "conda_python",
    "import_spec",
    "init_spec",
    "lowest_python",
    "poetry_constraint",
    "spec_destination",
    "write_spec",
]

DEFAULT_INIT_TARGETS = ("linux-x86_64", "linux-aarch64")
DEFAULT_PYTHON = "3.11"
_SOURCES = (
    "environment.yml",
    "environment.yaml",
    "pyproject.toml",
    "requirements.txt",
    "requirements.in",
)
_INIT = "envship init"
_RUNTIME = re.compile(r"python-(3\.\d+)(\.\d+)?")  # fullmatch
_CONDA_NAME = re.compile(r"^(?:[^:\s]+::)?([A-Za-z0-9_.-]+)\s*(.*)$")


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The imported spec, every file read to build it, and notes for the user."""

    spec: Spec
    sources: tuple[Path, ...]
    notes: tuple[str, ...] = ()


def conda_python(text: str) -> str | None:
    """The Python minor of a conda match spec's version part (``=3.11``, ``>=3.9,<3.12``).

    conda's ``=3.11`` means ``3.11.*`` and a bare ``3.11`` likewise; ``|`` is "or", so the
    oldest alternative wins; a build string after a second ``=`` or a space is dropped.
    Raises ``ValueError`` for a version part PEP 440 cannot express, and for a bare
    major (``=3``): conda takes its newest 3.x then, which no fixed answer matches.
    """
    text = text.strip()
    if not text:
        return None
    text = re.sub(r"([<>=!~]=?)\s+", r"\1", text)  # ">= 3.9" -> ">=3.9"
    if text.startswith("=") and not text.startswith("=="):
        text = text[1:]
    text = re.split(r"(?<![=<>!])=(?!=)|\s+", text, maxsplit=1)[0]  # drop a build string
    found: list[str] = []
    for alternative in text.split("|"):
        if re.fullmatch(r"(==)?3(\.\*)?", alternative):
            # conda reads "python=3" as its newest Python 3, which changes over time; the
            # oldest (3.9) or a default would be a guess either way, so ask for a minor.
            raise ValueError(f"{alternative!r} names no minor version; write one, e.g. 3.11")
        parts = []
        for part in alternative.split(","):
            if not re.match(r"^[<>=!~]", part):
                part = "==" + (part if part.endswith("*") else f"{part}.*")
            parts.append(part)
        try:
            version = lowest_python(SpecifierSet(",".join(parts)))
        except InvalidSpecifier as exc:
            raise ValueError(str(exc)) from None
        if version is not None:
            found.append(version)
    if not found:
        raise ValueError(f"no Python from {PYTHONS[0]} to {PYTHONS[-1]} matches {text!r}")
    return min(found, key=lambda v: int(v.split(".")[1]))


def _runtime_python(path: Path, root: Path) -> str:
    # repo2docker's runtime.txt: "python-3.11" or "python-3.11.4"; only the minor counts.
    text = _read_text(path, root).strip()
    match = _RUNTIME.fullmatch(text)
    if match is None:
        raise SpecError(
            f"invalid {show(path, root)}",
            problems=[Problem(f"{show(path, root)}:1", f"expected 'python-3.X', got {text!r}")],
        )
    return match.group(1)


def _read_text(path: Path, root: Path) -> str:
    """A source file's text; what cannot be read is an error naming the file (and, for
    bytes that are not text, the line), or the permission error."""
    shown = show(path, root)
    try:
        return decode_text(read_source(path))
    except UnicodeDecodeError as exc:
        raise SpecError(f"cannot read {shown}", problems=[undecodable(shown, exc)]) from None
    except (OSError, ValueError) as exc:
        if is_denied(exc):
            raise unreadable(shown, path) from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SpecError(f"cannot read {shown}: {reason}") from None


def _from_environment_yml(path: Path, root: Path) -> Found:
    shown = show(path, root)
    text = _read_text(path, root)
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        # PyYAML composes nested lists and mappings recursively; a few hundred levels
        # exhaust Python's stack (no environment.yml nests more than three).
        msg = "nested too deeply (lists or mappings inside hundreds of others)"
        raise SpecError(
            f"{shown} is not a usable YAML file", problems=[Problem(shown, msg)]
        ) from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 0
        msg = exc.problem or str(exc)
        raise SpecError(
            f"{shown} is not valid YAML", problems=[Problem(f"{shown}:{line}", msg)]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"cannot read {shown}: {exc}") from None
    found = Found(sources=[path])
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        msg = f"expected a mapping with a 'dependencies:' list, got {got}"
        raise SpecError(f"invalid {shown}", problems=[Problem(shown, msg)])
    deps = data.get("dependencies", [])
    if not isinstance(deps, list):
        msg = f"expected a list, one '- item' per line, got {_yaml_kind(deps)}"
        raise SpecError(f"invalid {shown}", problems=[Problem(f"{shown}: dependencies", msg)])
    problems: list[Problem] = []
    conda_deps: list[Problem] = []
    pip_lines: list[tuple[str, str]] = []
    for i, dep in enumerate(deps):
        where = f"{shown}: dependencies[{i}]"
        if isinstance(dep, dict) and list(dep) == ["pip"] and isinstance(dep["pip"], list):
            for j, line in enumerate(dep["pip"]):
                if isinstance(line, str):
                    pip_lines.append((f"{where}.pip[{j}]", line))
                else:
                    problems.append(Problem(f"{where}.pip[{j}]", "expected a string"))
            continue
        match = _CONDA_NAME.match(dep) if isinstance(dep, str) else None
        if match is None:
            problems.append(Problem(where, "expected a package or a 'pip:' list"))
        elif match.group(1).lower() == "python":
            try:
                found.python = conda_python(match.group(2)) or found.python
            except ValueError as exc:
                problems.append(Problem(where, f"unsupported Python version: {exc}"))
        elif match.group(1).lower() != "pip":
            # Every conda package is refused, even one PyPI has too: conda's names and
            # builds are not PyPI's (conda's pytorch is torch on PyPI, and some have no
            # wheel at all), so only the user can say which PyPI package stands in for it.
            conda_deps.append(
                Problem(
                    where,
                    f"conda package {dep!r} is not under 'pip:'; envship installs from "
                    "Python package indexes only",
                )
            )
    try:
        parsed = parse_requirements(pip_lines, root=root, base=path.parent)
    except SpecError as exc:
        problems.extend(exc.problems)
    else:
        found.dependencies = list(parsed.requirements)
        found.indexes = list(parsed.indexes)
        found.sources += [f for f in parsed.files if f not in found.sources]
        found.notes += parsed.notes
    if conda_deps or problems:
        raise SpecError(
            f"cannot import {shown}: "
            + (
                f"{len(conda_deps)} conda package(s) outside 'pip:'"
                if conda_deps
                else "invalid entries"
            ),
            problems=conda_deps + problems,
            hint="envship installs wheels from Python package indexes (such as PyPI) only, "
            "not from conda channels: list each package that is on PyPI under 'pip:' by its "
            "PyPI name (e.g. conda's pytorch is torch), and get the others (system libraries, "
            "compilers) from the base image"
            if conda_deps
            else None,
        )
    if isinstance(data, dict) and data.get("channels"):
        found.notes.append(f"{shown}: channels are ignored (envship reads package indexes)")
    return found


def _mode(path: Path, folder: Path) -> int:
    """``path``'s mode, 0 when nothing is there; the permission error naming the folder
    that refuses this user (``folder``, the one given to ``init``, or one above it)."""
    st = stat_or_none(path, f"the folder {folder}")
    return st.st_mode if st is not None else 0


def _yaml_kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"a {type(value).__name__}"


def _default_name(folder: Path) -> str:
    name = canonicalize_name(folder.resolve().name)
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "env"


def import_spec(
    folder: str | os.PathLike[str],
    *,
    name: str | None = None,
    targets: Sequence[str] | None = None,
) -> ImportResult:
    """Build a spec from what ``folder`` has; raise :class:`SpecError` if nothing fits."""
    folder = Path(folder)
    if not stat.S_ISDIR(_mode(folder, folder)):
        raise SpecError(f"{folder} is not a folder")
    notes: list[str] = []
    base = folder
    for sub in ("binder", ".binder"):  # repo2docker: a binder folder replaces the root
        if stat.S_ISDIR(_mode(folder / sub, folder)):
            base = folder / sub
            notes.append(f"reading only {sub}/ (a Binder folder replaces the top level)")
            break
    found: Found | None = None
    for filename in _SOURCES:
        path = base / filename
        mode = _mode(path, folder)
        if not mode or stat.S_ISDIR(mode):
            # Anything else is read, and what is no regular file (a FIFO, a link to a
            # device) refused by name rather than skipped as if it were not there.
            continue
        if filename.startswith("environment"):
            found = _from_environment_yml(path, folder)
        elif filename == "pyproject.toml":
            found = from_pyproject(path, folder)
        else:
            found = Found(sources=[])
            parsed = parse_requirements(path, root=folder)
            found.sources, found.notes = list(parsed.files), list(parsed.notes)
            found.dependencies, found.indexes = list(parsed.requirements), list(parsed.indexes)
        if found is not None:
            break
    if found is None:
        raise SpecError(
            f"nothing to import in {base}",
            problems=[Problem(str(base), f"looked for {', '.join(_SOURCES)}")],
            hint="write envship.toml by hand (see `envship --help`), or add a requirements.txt",
        )
    runtime = base / "runtime.txt"
    python = found.python
    runtime_mode = _mode(runtime, folder)
    if runtime_mode and not stat.S_ISDIR(runtime_mode):  # a FIFO is refused, by name
        python = _runtime_python(runtime, folder)
        found.sources.append(runtime)
        if found.python and found.python != python:
            notes.append(f"runtime.txt sets Python {python} over {found.python}")
    if python is None:
        python = DEFAULT_PYTHON
        notes.append(f"no Python version found; using {python} (edit 'python' to change)")
    data: dict[str, Any] = {
        "name": name if name is not None else _default_name(folder),
        "python": python,
        "dependencies": found.dependencies,
        "targets": {t: {} for t in (targets or DEFAULT_INIT_TARGETS)},
    }
    if found.groups:
        data["groups"] = found.groups
    if found.indexes:
        data["indexes"] = found.indexes
    try:
        spec = parse_spec(data, source=_INIT)
    except SpecError as exc:
        raise SpecError(
            exc.message,
            problems=[_option_where(p, name, targets) for p in exc.problems],
            hint=exc.hint,
        ) from None
    return ImportResult(spec, tuple(found.sources), tuple(notes + found.notes))


def _option_where(problem: Problem, name: str | None, targets: Sequence[str] | None) -> Problem:
    """A problem with what the caller passed named as the option it came from."""
    key = problem.where.removeprefix(f"{_INIT}: ")
    if name is not None and key == "name":
        return Problem("--name", problem.message)
    target = key.removeprefix("targets.").split(".")[0]
    if targets and key.startswith("targets.") and target in targets:
        return Problem(f"--target {target}", problem.message)
    return problem


def spec_destination(folder: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Where ``init`` writes; refuses an existing spec unless ``force``."""
    dest = Path(folder) / SPEC_FILENAME
    if _mode(dest, Path(folder)) and not force:
        raise SpecError(
            f"{dest} already exists", hint="pass --force to overwrite it with an imported spec"
        )
    return dest


def write_spec(
    result: ImportResult, folder: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write ``result.spec`` to ``folder/envship.toml`` (atomically) and return the path."""
    dest = spec_destination(folder, force=force)
    shown = ", ".join(show(p, Path(folder)) for p in result.sources)
    text = f"# Written by `envship init` from {shown}.\n\n{result.spec.to_toml()}"
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(dest)
    return dest


def init_spec(
    folder: str | os.PathLike[str],
    *,
    name: str | None = None,
    targets: Sequence[str] | None = None,
    force: bool = False,
) -> tuple[ImportResult, Path]:
    """Import and write in one step, checking the destination before reading anything."""
    spec_destination(folder, force=force)
    result = import_spec(folder, name=name, targets=targets)
    return result, write_spec(result, folder, force=force)

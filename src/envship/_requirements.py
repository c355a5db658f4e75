"""A focused parser for pip's requirements file format, for ``envship init``.

pip's own parser (``pip._internal.req.req_file``) is not a public API, and the
``pip-requirements-parser`` package vendors a large part of pip; envship only needs the
subset that can be expressed in a spec, and must reject everything else with the file
and line. The format is documented at
https://pip.pypa.io/en/stable/reference/requirements-file-format/ and this follows
pip's reading order: join continuation lines, strip comments, then split a line into
the requirement and its options.

Every problem is collected and raised once as a :class:`~envship.errors.SpecError`.
"""

from __future__ import annotations

import codecs
import optparse
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ._denied import is_denied
from ._sourcefile import read_source, undecodable, unreadable
from .errors import Problem, SpecError
from .spec import index_key, requirement_problem

__all__ = ["ParsedRequirements", "decode_text", "index_entry", "parse_requirements"]

# pip: a comment starts at "#" at the start of a line or after whitespace, so the
# "#egg=" fragment of a URL is not a comment.
_COMMENT = re.compile(r"(^|\s+)#.*$")
_ENV_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")  # fullmatch: "$" allows a final newline
_URL_OR_PATH = re.compile(r"^([a-z][a-z0-9+.-]*://|\.{1,2}([/\\]|$)|/|~)|\.(whl|zip|tar\.gz|tgz)$")
_NOTE_ONLY = {
    "--pre": "--pre is ignored: allow pre-releases per package with a specifier such as '>=2.0rc1'",
    "--all-releases": "--all-releases is ignored: allow pre-releases per package with a "
    "specifier such as '>=2.0rc1'",
    "--only-final": "--only-final is ignored: pre-releases are used only where a specifier "
    "names one",
    "--prefer-binary": "--prefer-binary is ignored: envship installs wheels only",
    "--only-binary": "--only-binary is ignored: envship installs wheels only",
    "--require-hashes": "--require-hashes is ignored: the lock always records hashes",
    "--no-require-hashes": "--no-require-hashes is ignored: the lock always records hashes",
    "--trusted-host": "--trusted-host is ignored: use an https index URL",
    "--use-feature": "--use-feature is ignored",
}
_UNSUPPORTED = {
    "--editable": "editable installs are not supported: envship installs wheels from indexes",
    "--find-links": "--find-links is not supported: publish the files to a package index",
    "--no-index": "--no-index is not supported: envship resolves from package indexes",
    "--no-binary": "--no-binary is not supported: envship installs wheels only",
}
# pip's options for a requirements file (pip._internal.req.req_file.SUPPORTED_OPTIONS and
# SUPPORTED_OPTIONS_REQ, pip 26): every spelling, and whether it takes a value. The first
# long name is the one reported.
_PIP_OPTIONS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("-i", "--index-url", "--pypi-url"), True),
    (("--extra-index-url",), True),
    (("--no-index",), False),
    (("-c", "--constraint"), True),
    (("-r", "--requirement"), True),
    (("-e", "--editable"), True),
    (("-f", "--find-links"), True),
    (("--no-binary",), True),
    (("--only-binary",), True),
    (("--prefer-binary",), False),
    (("--require-hashes",), False),
    (("--no-require-hashes",), False),
    (("--pre",), False),
    (("--all-releases",), True),
    (("--only-final",), True),
    (("--trusted-host",), True),
    (("--use-feature",), True),
    (("--hash",), True),  # per requirement
    (("-C", "--config-settings"), True),  # per requirement
)
_PER_REQUIREMENT = {"--hash", "--config-settings"}
# pip reads a requirements file in the encoding its byte-order mark names (Notepad's
# "Unicode" is UTF-16 LE with one); UTF-32 LE starts with UTF-16 LE's mark, so it is first.
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Includes nested deeper than this are refused: every level is a Python call, and no
# real project needs more than a handful (a cycle is caught apart from this).
_MAX_DEPTH = 64
_PEP508_HINT = (
    "envship locks wheels from package indexes; declare each package by name with a "
    "version specifier (PEP 508)"
)


@dataclass(frozen=True, slots=True)
class ParsedRequirements:
    """What a requirements file declares, in spec terms (``indexes`` are spec tables)."""

    requirements: tuple[str, ...]
    indexes: tuple[dict[str, Any], ...]
    files: tuple[Path, ...]
    notes: tuple[str, ...]


@dataclass(slots=True)
class _State:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    requirements: list[tuple[str, Requirement]] = field(default_factory=list)
    constraints: list[tuple[str, Requirement]] = field(default_factory=list)
    index_url: tuple[str, str] | None = None  # (where, url)
    extra_urls: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stack: list[Path] = field(default_factory=list)  # files being read, for cycles
    done: set[tuple[Path, bool]] = field(default_factory=set)  # (file, as constraints) read
    hashed: list[str] = field(default_factory=list)  # pinned lines whose --hash was dropped
    pep508: bool = False  # a problem the PEP 508 hint helps with (not, say, a missing file)

    def show(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except (OSError, ValueError, RuntimeError):
            return str(path)


def logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(first line number, joined line) after continuations and comments, as pip does."""
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.endswith("\\") or _COMMENT.match(line):
            pending.append(line)
            joined = _COMMENT.sub("", "".join(pending)).strip()
            if joined:
                yield (start if len(pending) > 1 else number), joined
            pending = []
        else:
            if not pending:
                start = number
            pending.append(line[:-1])
    if pending:  # the last line ended with a backslash
        joined = _COMMENT.sub("", "".join(pending)).strip()
        if joined:
            yield start, joined


def decode_text(raw: bytes) -> str:
    """A text file's bytes as pip reads them: in the encoding of a leading byte-order mark
    (which is dropped), else UTF-8. Raises ``UnicodeDecodeError``."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return raw[len(bom) :].decode(encoding)
    return raw.decode("utf-8")


class _OptionError(Exception):
    pass


class _OptionParser(optparse.OptionParser):
    def error(self, msg: str) -> NoReturn:
        raise _OptionError(msg)


def _parse_options(text: str) -> list[tuple[str, str | None]]:
    """``(long name, value)`` for each option in ``text``, in order, as pip reads them:
    shlex-split, then optparse (so ``-ifoo``, ``--index-url=foo`` and unambiguous
    abbreviations such as ``--extra-index`` work). Raises :class:`_OptionError`."""
    try:
        args = shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        raise _OptionError(f"cannot split {text!r}: {exc}") from None
    found: list[tuple[str, str | None]] = []

    def record(option: optparse.Option, _opt: str, value: str | None, _p: object) -> None:
        found.append((option.get_opt_string(), value))

    parser = _OptionParser(add_help_option=False)
    for names, takes_value in _PIP_OPTIONS:
        kwargs: dict[str, Any] = {"type": "string"} if takes_value else {}
        parser.add_option(*names, action="callback", callback=record, **kwargs)
    _, rest = parser.parse_args(args)
    if rest:
        raise _OptionError(f"unexpected argument {rest[0]!r} (one value per option)")
    return found


def _read(state: _State, path: Path, where: str, *, constraint: bool) -> None:
    shown = state.show(path)
    try:
        resolved = path.resolve()
        raw = read_source(path)
        text = decode_text(raw)
    except UnicodeDecodeError as exc:
        state.problems.append(undecodable(shown, exc))
        return
    except (OSError, ValueError, RuntimeError) as exc:  # ValueError: NUL in the path
        if is_denied(exc):  # README: a path you may not read is the permission error
            raise unreadable(shown, path) from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        state.problems.append(Problem(where, f"cannot read {path}: {reason}"))
        return
    if resolved in state.stack:
        chain = " -> ".join(state.show(p) for p in [*state.stack, resolved])
        state.problems.append(Problem(where, f"include cycle: {chain}"))
        return
    if (resolved, constraint) in state.done:
        # Read once: the same file again adds nothing, and files that each include the
        # next several times would otherwise be read exponentially often.
        return
    if len(state.stack) >= _MAX_DEPTH:
        state.problems.append(Problem(where, f"includes nested more than {_MAX_DEPTH} deep"))
        return
    state.done.add((resolved, constraint))
    if path not in state.files:
        state.files.append(path)
    state.stack.append(resolved)
    lines = [(f"{shown}:{n}", line) for n, line in logical_lines(text)]
    _feed(state, lines, path.parent, constraint=constraint)
    state.stack.pop()


def _feed(state: _State, lines: Iterable[tuple[str, str]], base: Path, *, constraint: bool) -> None:
    for where, line in lines:
        # pip (req_file.break_args_options): the options start at the first
        # space-separated token that starts with "-"; what comes before is the requirement.
        tokens = line.split(" ")
        first = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
        text, options = " ".join(tokens[:first]).strip(), " ".join(tokens[first:])
        try:
            parsed = _parse_options(options)
        except _OptionError as exc:
            state.problems.append(Problem(where, str(exc)))
            continue
        if text:
            _requirement(state, where, text, parsed, constraint=constraint)
            continue
        for name, value in parsed:
            _option(state, where, name, value, base, constraint=constraint)


def _option(
    state: _State, where: str, name: str, value: str | None, base: Path, *, constraint: bool
) -> None:
    if name in _UNSUPPORTED:
        state.problems.append(Problem(where, _UNSUPPORTED[name]))
        state.pep508 = True
    elif name in _NOTE_ONLY:
        if _NOTE_ONLY[name] not in state.notes:
            state.notes.append(_NOTE_ONLY[name])
    elif name in _PER_REQUIREMENT:
        state.problems.append(Problem(where, f"{name} belongs after a requirement"))
    elif not value:
        state.problems.append(Problem(where, f"{name} needs a value"))
    elif name in ("--requirement", "--constraint"):
        # pip resolves nested files relative to the file that names them.
        try:
            target = Path(value).expanduser()
        except RuntimeError:  # "~name" for a user that does not exist
            state.problems.append(Problem(where, f"cannot expand {value!r}: no such user"))
            return
        _read(state, target if target.is_absolute() else base / target, where,
              constraint=constraint or name == "--constraint")  # fmt: skip
    elif name == "--index-url":
        if state.index_url is not None:
            state.notes.append(f"{where}: --index-url given again; the last one wins, as in pip")
        state.index_url = (where, value)
    else:  # --extra-index-url
        state.extra_urls.append((where, value))


def _requirement(
    state: _State,
    where: str,
    text: str,
    options: list[tuple[str, str | None]],
    *,
    constraint: bool,
) -> None:
    hashed = False
    for name, _value in options:
        if name == "--hash":
            hashed = True  # reported below, once the requirement is parsed
            continue
        if name == "--config-settings":
            msg = "--config-settings is unsupported: envship installs wheels, it builds nothing"
        else:  # pip silently ignores a file-wide option on a requirement's line
            msg = f"{name} after a requirement is ignored by pip; put it on a line of its own"
        state.problems.append(Problem(where, msg))
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        if _URL_OR_PATH.search(text) or "/" in text or "\\" in text:
            msg = f"{text!r} is a URL or local path; envship locks packages from indexes only"
        else:
            msg = f"invalid requirement {text!r}: {exc}"
        state.problems.append(Problem(where, msg))
        state.pep508 = True
        return
    if req.url:
        msg = f"direct reference {req.url!r} is not supported; envship locks from indexes only"
        state.problems.append(Problem(where, msg))
        state.pep508 = True
        return
    unusable = requirement_problem(req)
    if unusable is not None:
        state.problems.append(Problem(where, f"{text!r}: {unusable}"))
        state.pep508 = True
        return
    if hashed:
        _hash_dropped(state, where, req)
    (state.constraints if constraint else state.requirements).append((where, req))


def _hash_dropped(state: _State, where: str, req: Requirement) -> None:
    """Say that ``--hash`` is dropped from ``req``'s line: the lock records the hash of
    every artifact it locks, and what the hashes pinned, a version, is kept only as far
    as the line's own specifier says it (pip's hash-checking mode requires ``==``)."""
    pins = [s for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
    if pins:
        state.hashed.append(where)
        return
    state.notes.append(
        f"{where}: --hash dropped; it pinned {req.name} to the artifacts it names, but the "
        "line has no == version, so no pin is kept (pip would refuse the line in its "
        "hash-checking mode): write the version those hashes are for, e.g. "
        f"'{req.name}==X.Y', to keep it"
    )


def index_entry(
    url: str, where: str, *, default: bool, taken: Iterable[str] = (), name: str | None = None
) -> tuple[dict[str, Any] | None, list[Problem], list[str]]:
    """A spec ``[[indexes]]`` table for ``url``, with any credentials moved to variables.

    Credentials must never reach ``envship.toml`` (it is committed, and the lock copies
    index URLs), so ``user:pw@`` is stripped and replaced by ``username-env`` /
    ``password-env`` names; a ``${VAR}`` credential (pip expands those) keeps its name.
    """
    if any(c.isspace() or not c.isprintable() for c in url):
        msg = f"invalid index URL {url!r}: it contains whitespace or control characters"
        return None, [Problem(where, msg)], []
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:
        return None, [Problem(where, f"invalid index URL {url!r}: {exc}")], []
    if parts.scheme not in ("http", "https", "file") or not (host or parts.scheme == "file"):
        return None, [Problem(where, f"invalid index URL {url!r}")], []
    notes: list[str] = []
    given = name
    # uv allows letters, digits, "-", "_" and "." in an index name (a Poetry source's may
    # hold anything), and two names with one UV_INDEX_<KEY> would share credentials.
    if name is None:
        name = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-") or "index"
    else:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "index"
    keys = {index_key(t) for t in taken}
    base, n = name, 2
    while index_key(name) in keys:
        name, n = f"{base}-{n}", n + 1
    if given is not None and name != given:
        notes.append(f"{where}: index {given!r} is named {name!r} in the spec")
    netloc = host + (f":{port}" if port is not None else "")
    entry: dict[str, Any] = {"name": name, "url": urlunsplit(parts._replace(netloc=netloc))}
    if default:
        entry["default"] = True
    stem = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")
    exports: list[str] = []
    for key, secret, suffix in (
        ("username-env", parts.username, "USERNAME"),
        ("password-env", parts.password, "PASSWORD"),
    ):
        if secret:
            var = _ENV_VAR.fullmatch(secret)
            entry[key] = var.group(1) if var else f"{stem}_{suffix}"
            if not var:
                exports.append(entry[key])
    if exports:
        notes.append(
            f"{where}: credentials were removed from the URL of index {name!r}; "
            f"export {' and '.join(exports)} before `envship lock`"
        )
    return entry, [], notes


def _merge_constraints(state: _State) -> list[str]:
    """Fold constraints into the requirements they constrain (pip ``-c`` semantics).

    A spec has no constraints field, so a constraint is kept only where it narrows a
    direct requirement: its specifier set is intersected with the requirement's.
    """
    by_name: dict[str, list[tuple[str, Requirement]]] = {}
    for where, con in state.constraints:
        by_name.setdefault(canonicalize_name(con.name), []).append((where, con))
    applied: list[str] = []
    out: list[str] = []
    for _where, req in state.requirements:
        for cwhere, con in by_name.get(canonicalize_name(req.name), []):
            if con.marker is not None or con.extras:
                state.notes.append(f"{cwhere}: constraint {str(con)!r} ignored (markers/extras)")
                continue
            req.specifier &= con.specifier
            applied.append(req.name)
        out.append(str(req))
    wanted = {canonicalize_name(r.name) for _, r in state.requirements}
    unused = sorted(
        {c.name for _, c in state.constraints if canonicalize_name(c.name) not in wanted}
    )
    if applied:
        state.notes.append(f"constraints applied to: {', '.join(sorted(set(applied)))}")
    if unused:
        state.notes.append(
            "constraints on packages that are not direct requirements were dropped "
            f"(envship has no constraints field): {', '.join(unused)}"
        )
    return out


def parse_requirements(
    source: Path | Iterable[tuple[str, str]],
    *,
    root: Path,
    base: Path | None = None,
) -> ParsedRequirements:
    """Parse a requirements file, or ``(where, line)`` pairs (a conda ``pip:`` list).

    ``root`` is the folder locations are shown relative to; ``base`` resolves ``-r``
    in the pairs form. Raises one :class:`SpecError` naming every bad ``file:line``.
    """
    state = _State(root=root)
    if isinstance(source, Path):
        _read(state, source, state.show(source), constraint=False)
    else:
        pairs = [(w, _COMMENT.sub("", line).strip()) for w, line in source]
        _feed(state, [(w, t) for w, t in pairs if t], base or root, constraint=False)
    if state.hashed:
        shown = ", ".join(state.hashed[:3]) + (
            f" and {len(state.hashed) - 3} more" if len(state.hashed) > 3 else ""
        )
        state.notes.append(
            f"--hash dropped from {len(state.hashed)} pinned requirement(s) ({shown}): "
            "the lock records the hash of every artifact it locks; each == pin is kept"
        )
    requirements = _merge_constraints(state)
    indexes: list[dict[str, Any]] = []
    urls = [(w, u, False) for w, u in state.extra_urls]
    if state.index_url is not None:
        urls.insert(0, (*state.index_url, True))
    for where, url, default in urls:
        entry, problems, notes = index_entry(
            url, where, default=default, taken=[i["name"] for i in indexes]
        )
        state.problems.extend(problems)
        state.notes.extend(notes)
        if entry is not None:
            indexes.append(entry)
    if state.problems:
        shown = state.show(source) if isinstance(source, Path) else "pip requirements"
        raise SpecError(
            f"cannot import {shown}: {len(state.problems)} unsupported or invalid line(s)",
            problems=state.problems,
            hint=_PEP508_HINT if state.pep508 else None,
        )
    return ParsedRequirements(
        tuple(requirements), tuple(indexes), tuple(state.files), tuple(state.notes)
    )

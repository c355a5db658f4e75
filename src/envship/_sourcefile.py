"""Text sources envship reads whole (specs, pyproject.toml, requirements files and what
they include, environment.yml, runtime.txt): only regular files, of a bounded size, a
folder this user may not enter named as the permission error, and text that is not UTF-8
named by line and column."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from ._denied import blocked_at, denied, is_denied
from ._flock import whom
from ._toml import load_toml
from .errors import PermissionDeniedError, Problem, SpecError

__all__ = [
    "MAX_SOURCE_BYTES",
    "read_source",
    "read_spec_toml",
    "special",
    "stat_or_none",
    "undecodable",
    "unreadable",
]

# Text sources (specs, requirements files, environment.yml) are read whole; requirements
# files of several MB exist (hashes for hundreds of packages), none of 64 MiB.
MAX_SOURCE_BYTES = 64 << 20
_BOM = b"\xef\xbb\xbf"


def unreadable(what: str, path: Path) -> PermissionDeniedError:
    """The permission error for ``what`` at ``path`` (the spec, a folder to import, a file
    it includes): the folder that refuses this user, its owner, and the owner's remedy."""
    where = blocked_at(path)
    return denied(
        what,
        path,
        hint=f"ask the owner of {where} to let {whom()} read it (chmod -R a+rX {where} "
        "opens it to every user), or run the command as a user who can",
    )


def stat_or_none(path: Path, what: str) -> os.stat_result | None:
    """``path``'s status (links followed), or None when nothing is there.

    A folder on the way that this user may not enter is the permission error naming it
    (README: "a path you may not read"), never "no such file": ``Path.is_file`` raises a
    bare PermissionError up to Python 3.12 and answers False from 3.13 on, which would
    send the user looking for a spec that is there.
    """
    try:
        return os.stat(path)
    except OSError as exc:
        if is_denied(exc):
            raise unreadable(what, path) from None
        return None  # missing, a file on the way (ENOTDIR), a link loop, too long a name
    except ValueError:  # a NUL in the path
        return None


def read_source(path: Path) -> bytes:
    """The bytes of the text file at ``path`` (links followed), read whole.

    Raises ``OSError`` as the system does, and ``ValueError`` (the reason) for what is no
    regular file, which could never be read whole (a FIFO blocks until someone writes
    into it; a link to /dev/zero never ends), and for one over :data:`MAX_SOURCE_BYTES`.
    ``O_NONBLOCK`` lets a FIFO open at once, so it is refused rather than waited on.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else special(st.st_mode)
            raise ValueError(f"not a regular file but {what}")
        data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise ValueError(f"larger than {MAX_SOURCE_BYTES >> 20} MiB, too large for a text source")
    return data


def special(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def undecodable(where: str, exc: UnicodeDecodeError) -> Problem:
    """The line and column of the first byte ``exc`` could not decode, as ``where:L:C``
    (a byte offset into the file would leave the user counting)."""
    before = exc.object[: exc.start].decode(exc.encoding, errors="replace")
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    bad = exc.object[exc.start : exc.start + 1].hex()
    message = f"byte 0x{bad} is not {exc.encoding.upper()} text ({exc.reason})"
    return Problem(f"{where}:{line}:{column}", message)


def read_spec_toml(path: Path) -> dict[str, Any]:
    """The TOML table in ``path``; :class:`SpecError` naming the file and line if not.

    TOML allows no byte-order mark and tomllib (so pip, building the same pyproject)
    rejects one as an "Invalid statement" at 1:1; envship keeps that rule and says why.
    Text that is not UTF-8 is named by line and column, not by tomllib's byte offset.
    """
    st = stat_or_none(path, str(path))
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise SpecError(f"cannot read {path}: not a regular file but {special(st.st_mode)}")
    if st is not None and st.st_size > MAX_SOURCE_BYTES:
        raise SpecError(f"cannot read {path}: larger than {MAX_SOURCE_BYTES >> 20} MiB")
    try:
        return load_toml(path, SpecError)
    except SpecError:
        better = _not_toml_text(path)
        if better is None:
            raise
        raise better from None


def _not_toml_text(path: Path) -> SpecError | None:
    """Why ``path`` cannot be TOML text at all (a byte-order mark, bytes that are not
    UTF-8), or None."""
    try:
        raw = read_source(path)
    except (OSError, ValueError):
        return None  # the reader's own error stands
    if raw.startswith(_BOM):
        return SpecError(
            f"{path} is not valid TOML",
            problems=[
                Problem(
                    f"{path}:1:1",
                    "the file starts with a UTF-8 byte-order mark, which TOML does not "
                    "allow (tomllib and pip reject it too)",
                )
            ],
            hint="save the file as UTF-8 without a byte-order mark",
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return SpecError(
            f"{path} is not UTF-8 text, as TOML must be",
            problems=[undecodable(str(path), exc)],
            hint="save the file as UTF-8",
        )
    return None

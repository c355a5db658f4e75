"""TOML reading with errors that name the file and line (tomllib on 3.11+, tomli before).

Whatever the file holds, reading it raises the caller's error class (bad input) or, for a
path this user may not read, :func:`envship._denied.denied` (exit 1): never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from ._denied import blocked_at, denied, is_denied
from .errors import EnvshipError, Problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["MAX_BYTES", "load_toml", "loads_toml", "read_toml"]

# Larger than any lock or spec a person or a resolver writes (uv's locks of thousands of
# packages are a few MB; a 50 MB lock parses in seconds), small enough that a stray huge
# file is refused before it is read into memory.
MAX_BYTES = 256 * 1024 * 1024

_AT_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")
_AT_END = "(at end of document)"
_BOM = "\ufeff"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def loads_toml(
    text: str,
    where: str,
    error: type[EnvshipError] = EnvshipError,
    *,
    hint: str | None = None,
) -> dict[str, Any]:
    """The table ``text`` holds; ``error`` naming ``where`` (a file) and the line if not,
    with ``hint`` (how to make the file again, say) where a more precise one is lacking."""
    if text.startswith(_BOM):
        # TOML 1.0 allows no byte-order mark and tomllib (so pip, and every PEP 751
        # installer on it) rejects one as an "Invalid statement" at 1:1: keep the rule,
        # say why.
        raise error(
            f"{where} is not valid TOML",
            problems=[
                Problem(
                    f"{where}:1:1",
                    "the file starts with a UTF-8 byte-order mark, which TOML does not "
                    "allow (tomllib and pip reject it too)",
                )
            ],
            hint="save the file as UTF-8 without a byte-order mark",
        )
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        match = _AT_LINE.search(msg)
        loc = f"{where}:{match.group(1)}:{match.group(2)}" if match else where
        if _AT_END in msg:  # a file cut short: its end is the place
            loc = f"{where}:{text.count(chr(10)) + 1}:{len(text) - text.rfind(chr(10))}"
        message = _AT_LINE.sub("", msg).replace(_AT_END, "at the end of the file").strip()
        raise error(
            f"{where} is not valid TOML", problems=[Problem(loc, message)], hint=hint
        ) from None
    except ValueError as exc:
        # tomllib lets int()'s own refusal through: an integer of more than 4300 digits
        # (CPython's int_max_str_digits, CVE-2020-10735) is no TOMLDecodeError.
        raise error(
            f"{where} is not valid TOML", problems=[Problem(where, str(exc))], hint=hint
        ) from None
    except RecursionError:
        # tomllib parses arrays and inline tables recursively; ``x = [[[[...]]]]`` a few
        # thousand deep exhausts the stack, which has unwound by the time we are here.
        raise error(
            f"{where} is not valid TOML",
            problems=[Problem(where, "arrays or inline tables are nested too deeply to read")],
            hint=hint,
        ) from None


def read_toml(
    path: Path,
    error: type[EnvshipError] = EnvshipError,
    *,
    what: str = "the file",
    missing_hint: str | None = None,
    hint: str | None = None,
) -> tuple[dict[str, Any], bytes]:
    """The table in ``path`` and the exact bytes it was parsed from, read once: a digest
    of what was parsed cannot come from a file replaced in between.

    ``what`` names the file in a permission error (``the lock``); ``missing_hint`` is the
    hint when there is no file, ``hint`` when it is not valid TOML. Only a regular file
    is read: a FIFO would block, and a device (``/dev/zero`` through a link) never ends.
    """
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait for one. It changes
        # nothing for the regular file read below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path} does not exist", hint=missing_hint) from None
    except ValueError:  # a library caller's path with a NUL byte, which no file name has
        raise error(f"{str(path)!r} is not a file name: it holds a NUL character") from None
    except OSError as exc:
        if is_denied(exc):
            # Not -R: the folder that refuses may be a home that holds far more than this.
            closed = blocked_at(path)
            raise denied(
                f"{what} {path}",
                path,
                hint=f"ask the owner of {closed} to let every user read it: chmod a+rX "
                f"{closed}; or copy the file somewhere you can read and name that copy",
            ) from None
        with contextlib.suppress(OSError):  # a socket: open gives ENXIO
            if not stat.S_ISREG(mode := os.stat(path).st_mode):
                raise _not_regular(path, mode, error) from None
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = _read_regular(fd, path, error)
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, raw, exc, error) from None
    return loads_toml(text, str(path), error, hint=hint), raw


def load_toml(
    path: Path, error: type[EnvshipError] = EnvshipError, *, what: str = "the file"
) -> dict[str, Any]:
    return read_toml(path, error, what=what)[0]


def _read_regular(fd: int, path: Path, error: type[EnvshipError]) -> bytes:
    st = os.fstat(fd)  # of what was opened: a check by name could meet another file
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode, error)
    if st.st_size > MAX_BYTES:
        raise error(_too_large(path, st.st_size))
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BYTES:  # it grew while read
                raise error(_too_large(path, size))
    except OSError as exc:  # EIO from a failing disk or a network file system
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    return b"".join(chunks)


def _not_regular(path: Path, mode: int, error: type[EnvshipError]) -> EnvshipError:
    real = os.path.realpath(path)
    seen = _kind(mode) + ("" if real == os.path.abspath(path) else f": {real}")
    return error(
        f"{path} is not a file envship can read",
        problems=[Problem(str(path), seen)],
        hint="name a regular file (a pipe or a device has no end to read to)",
    )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"  # pragma: no cover - every other kind is listed above


def _too_large(path: Path, size: int) -> str:
    return f"{path} is {size} bytes, more than the {MAX_BYTES} a TOML file envship reads may be"


def _not_utf8(
    path: Path, raw: bytes, exc: UnicodeDecodeError, error: type[EnvshipError]
) -> EnvshipError:
    """The line and column of the first byte that is not UTF-8, which TOML 1.0 requires
    (a file saved in Latin-1 or UTF-16 by an editor)."""
    if raw.startswith(_UTF16_BOMS):
        return error(
            f"{path} is not UTF-8",
            problems=[
                Problem(f"{path}:1:1", "the file is UTF-16 (it starts with its byte-order mark)")
            ],
            hint="TOML files are UTF-8: save it as UTF-8",
        )
    start = raw.rfind(b"\n", 0, exc.start) + 1
    line = raw.count(b"\n", 0, exc.start) + 1
    column = len(raw[start : exc.start].decode("utf-8", "replace")) + 1
    bad, why = raw[exc.start], exc.reason
    return error(
        f"{path} is not UTF-8",
        problems=[
            Problem(f"{path}:{line}:{column}", f"byte 0x{bad:02x} is not UTF-8 text ({why})")
        ],
        hint="TOML files are UTF-8: save it as UTF-8 (an editor may have saved it as Latin-1)",
    )

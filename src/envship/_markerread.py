"""Reading an environment's install marker (``.envship-install.json``) without trusting
it: the marker is envship's own record, but it sits in a folder anyone with write access
may have edited, linked to a device or replaced by a folder. It is opened without
following links or blocking on a FIFO, capped in size, parsed with deep nesting caught,
and checked key by key against the shape envship writes; a marker that fails is
:class:`MarkerDamaged`, naming the key, and its readers decide what that means (install
makes the environment again, verify reports it, add and env check refuse it). See
:mod:`envship._installmarker` for what the marker records and why.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._envfiles import (
    FILES_KEY,
    LINK_MODES,
    LINKS_KEY,
    MARKER_FORMAT,
    MARKER_NAME,
    RECORDS_KEY,
    STORE_KEY,
)
from .errors import Problem

__all__ = [
    "FILES_KEY",
    "LINKS_KEY",
    "MARKER_FORMAT",
    "MARKER_NAME",
    "MAX_MARKER_BYTES",
    "RECORDS_KEY",
    "STORE_KEY",
    "MarkerDamaged",
    "check_marker",
    "load_marker",
    "read_marker",
    "read_record",
]


class MarkerDamaged(Exception):
    """An install marker is there but cannot be used: unreadable, not a regular file,
    larger than any marker envship writes, not JSON, or not the shape it writes.

    Markers are written whole, in one rename, so such a marker was damaged after the
    fact. Not an EnvshipError: each caller words it (install makes the environment
    again, ``env check`` and ``add`` refuse, ``verify`` reports a difference), as
    :class:`envship._pyprobe.ProbeFailure` leaves its callers to.
    """

    def __init__(self, path: Path, key: str, reason: str, cause: OSError | None = None) -> None:
        super().__init__(path, key, reason)
        self.path = path  # the marker file
        self.key = key  # "packages[0].name"; "" for the file as a whole
        self.reason = reason
        self.cause = cause  # the OSError that kept it from being read, if that was it

    @property
    def where(self) -> str:
        return f"{self.path}: {self.key}" if self.key else str(self.path)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def problem(self) -> Problem:
        return Problem(self.where, self.reason)


# A data-science environment's marker (51 distributions, their RECORD digests, the venv's
# own files) weighs 17 KB; 16 MiB is a thousand times that. Without a cap, a marker
# replaced by a link to /dev/zero is read until the OOM killer ends the run.
MAX_MARKER_BYTES = 16 * 1024 * 1024


def read_record(path: Path) -> Any:
    """The JSON document at ``path`` (an install marker), read without trusting it: None
    when nothing is there, else the parsed value; :class:`MarkerDamaged` when it cannot
    be read, is not a regular file (a link is never followed, a FIFO never waited on),
    is larger than :data:`MAX_MARKER_BYTES`, or is not JSON (nesting too deep too)."""
    text = _read_text(path)
    return None if text is None else _parse(path, text)


def _read_text(path: Path) -> str | None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            where = os.readlink(path) if os.path.islink(path) else "?"
            raise MarkerDamaged(path, "", f"a symbolic link (to {where}), not a file") from None
        raise MarkerDamaged(path, "", f"cannot be read: {exc.strerror or exc}", exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise MarkerDamaged(path, "", f"{what} (mode {stat.filemode(st.st_mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_MARKER_BYTES:  # the file may grow while it is read
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise MarkerDamaged(path, "", f"cannot be read: {exc.strerror or exc}", exc) from None
    finally:
        os.close(fd)
    if size > MAX_MARKER_BYTES:
        raise MarkerDamaged(
            path, "", f"more than {MAX_MARKER_BYTES} bytes: larger than any marker envship writes"
        )
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MarkerDamaged(path, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def _parse(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise MarkerDamaged(path, "", f"not JSON: {exc}") from None
    except RecursionError:
        raise MarkerDamaged(path, "", "not JSON envship writes: nested too deep") from None


def load_marker(dest: Path) -> dict[str, Any] | None:
    """The install marker of the environment at ``dest``, None when it has none;
    :class:`MarkerDamaged`, naming the key, when one is there that envship cannot use
    (:func:`read_record`, :func:`check_marker`)."""
    path = dest / MARKER_NAME
    text = _read_text(path)
    if text is None:
        return None
    # JSON has no raw control characters in strings: a NUL or a lone surrogate is an
    # escape. Without one, the walk over every string (most of the time taken) is spared.
    return check_marker(_parse(path, text), path, strings=bool(_SUSPECT.search(text)))


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The marker at ``dest``, or None when it is missing or damaged (:func:`load_marker`
    tells the two apart)."""
    try:
        return load_marker(dest)
    except MarkerDamaged:
        return None


_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")  # the escapes of NUL and surrogates
_Check = Callable[[Any], "str | None"]


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string needed"


def _path(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "a path needed"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false needed"


def _text_or_null(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "a string or null needed"


def _table(value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    return None if ok else "an object of strings needed"


def _target(value: Any) -> str | None:
    from .errors import TargetError  # not at import: the kernel launcher's path is small
    from .targets import Target

    try:
        Target.from_json(value)
    except TargetError as exc:
        return "; ".join(p.message for p in exc.problems) or exc.message
    return None


# What each key holds: (key, required, check) at the top, then inside the objects. What
# every reader indexes without looking is required; what markers of older envships lack
# (``venv_files``, ``venv_links``, ``records``, ``store``, ...) may be missing.
_TOP: tuple[tuple[str, bool, _Check], ...] = (
    ("lock", True, lambda v: None if isinstance(v, dict) else "an object needed"),
    ("target", True, _target),
    ("python", True, lambda v: None if isinstance(v, dict) else "an object needed"),
    ("groups", True, lambda v: None if isinstance(v, list) else "a list needed"),
    ("packages", True, lambda v: None if isinstance(v, list) else "a list needed"),
    ("name", False, _text_or_null),
    ("display_name", False, _text_or_null),
    ("compiled", False, _flag),
    ("link_mode", False, lambda v: None if v in LINK_MODES else f"one of {LINK_MODES}"),
    (STORE_KEY, False, _path),
    (FILES_KEY, False, _table),
    (LINKS_KEY, False, _table),
    (RECORDS_KEY, False, _table),
    ("reinstalling", False, _flag),
    ("added", False, lambda v: None if isinstance(v, list) else "a list needed"),
)
_INNER: dict[str, tuple[tuple[str, bool, _Check], ...]] = {
    "lock": (("path", True, _path), ("digest", True, _string)),
    "python": (("base", True, _path), ("version", False, _string)),
}
_PACKAGE = ("name", "version", "sha256", "filename")


def _strings(data: Any) -> tuple[str, str] | None:
    """The first string in ``data`` (keys too) no path or name of envship's can hold, and
    its key: a NUL byte (every path call refuses it) or a lone surrogate (no file name
    decodes to one); iterative, so any depth ``json`` gave back is walked."""
    todo: list[tuple[str, Any]] = [("", data)]
    while todo:
        key, value = todo.pop()
        items: list[tuple[str, Any]] = []
        if isinstance(value, dict):
            items = [(f"{key}.{k}" if key else str(k), k) for k in value]
            items += [(f"{key}.{k}" if key else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, str):
            if "\0" in value:
                return key, "holds a NUL character"
            try:
                value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                return key, "holds a character no file name has (a lone surrogate)"
        todo.extend(items)
    return None


def check_marker(data: Any, path: Path, *, strings: bool = True) -> dict[str, Any]:
    """``data`` (read from the marker at ``path``) when it has the shape
    :func:`marker_data` writes, and what install adds to it; else
    :class:`MarkerDamaged` naming the first key that is not (``packages[0].name``).
    ``strings``: look at every string for what no path holds (False: the text read
    had no escape that could make one)."""

    def damaged(key: str, reason: str) -> MarkerDamaged:
        return MarkerDamaged(path, key, reason)

    if not isinstance(data, dict):
        raise damaged("", f"not a JSON object but {type(data).__name__}")
    if data.get("format") != MARKER_FORMAT:
        found = repr(data["format"]) if "format" in data else "none"
        raise damaged("format", f"{found}: this envship reads format {MARKER_FORMAT}")
    if strings and (bad := _strings(data)) is not None:
        raise damaged(*bad)
    for key, required, check in _TOP:
        if key not in data:
            if required:
                raise damaged(key, "missing")
            continue
        if (why := check(data[key])) is not None:
            raise damaged(key, why)
        for inner, needed, inner_check in _INNER.get(key, ()):
            if inner not in data[key]:
                if needed:
                    raise damaged(f"{key}.{inner}", "missing")
            elif (why := inner_check(data[key][inner])) is not None:
                raise damaged(f"{key}.{inner}", why)
    for i, group in enumerate(data["groups"]):
        if not isinstance(group, str):
            raise damaged(f"groups[{i}]", "a group name needed")
    for i, package in enumerate(data["packages"]):
        if not isinstance(package, dict):
            raise damaged(f"packages[{i}]", "an object needed")
        for field in _PACKAGE:
            if field not in package:
                raise damaged(f"packages[{i}].{field}", "missing")
            if not isinstance(package[field], str) or not package[field]:
                raise damaged(f"packages[{i}].{field}", "a string needed")
    for i, entry in enumerate(data.get("added", ())):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise damaged(f"added[{i}]", "an object with a name needed")
    return data

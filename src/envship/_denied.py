"""This user may not read (or run, or write) something: the error that says where, whose
it is and what its owner can do. A module of its own, with nothing but the standard library
and the error classes beneath it, so every reader of a file can raise it (the TOML
reader of locks and specs, environments, the store)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ._flock import denied as denied_to
from ._flock import owner, whom
from .errors import PermissionDeniedError, Problem

__all__ = ["blocked_at", "denied", "denied_problem", "is_denied", "refused", "unwritable"]

_DENIED = (errno.EACCES, errno.EPERM)


def is_denied(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DENIED


def refused(program: Path | str) -> bool:
    """Whether this user may not run ``program`` though it is there: a folder on the way
    refuses us (EACCES), or the file is not executable for us. A link to nothing is
    missing, not refused."""
    try:
        os.stat(program)
    except PermissionError:
        return True
    except OSError:
        return False
    return not os.access(program, os.X_OK)


def blocked_at(path: Path | str) -> Path:
    """The folder nearest the top on the way to ``path`` that this user cannot enter (no
    search permission), else ``path`` itself (then it is the one that cannot be read).
    Links are followed as far as they can be: a refusal names the real folder."""
    real = Path(os.path.realpath(path))
    for folder in reversed(real.parents):  # "/" first
        if not os.access(folder, os.X_OK):
            return folder
    return real


def _owned(path: Path) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"; owned by {owner(st)}, mode {stat.S_IMODE(st.st_mode):04o}"


def denied_problem(path: Path | str) -> Problem:
    """The place that refuses this user on the way to ``path``, whose it is and its mode."""
    where = blocked_at(path)
    return Problem(str(where), f"permission denied: {whom()} cannot read it{_owned(where)}")


def denied(what: str, path: Path | str, *, hint: str | None = None) -> PermissionDeniedError:
    """``what`` (``the environment /efs/envs/ds/current``) cannot be read by this user:
    the error names the folder that refuses, its owner and mode, and what its owner can
    do (``chmod -R a+rX``, which opens folders and files for reading, never for writing)."""
    where = blocked_at(path)
    fix = hint or (
        f"ask the owner of {where} to make it readable by every user: chmod -R a+rX {where} "
        "(and create versions with umask 022, so later ones are readable too)"
    )
    return PermissionDeniedError(
        f"permission denied: {what} cannot be read by {whom()}",
        problems=[denied_problem(path)],
        hint=fix,
    )


def unwritable(what: str, path: Path, hint: str) -> PermissionDeniedError:
    """``what`` (``the store at /efs/store``) cannot be written at ``path`` by this user:
    the error names the nearest folder on the way that is there (the one files or
    folders could not be made in), whose it is and its mode, or its read-only mount."""
    place = path
    while not place.exists() and place != place.parent:
        place = place.parent
    return PermissionDeniedError(
        f"permission denied: {whom()} may not write to {what}",
        problems=[Problem(str(place), denied_to(place, "create files in"))],
        hint=hint,
    )

"""The edit ``envship add`` makes to a spec: requirements put into its dependencies.

tomlkit keeps the user's comments and layout; the edited spec is validated by
:func:`envship.spec.parse_spec` before anything is written, and the file is replaced in
one rename under a flock on the spec itself, so concurrent edits never drop each other's
entries. :func:`envship.spec.add_requirements` is this module's, re-exported there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ._atomic import write_atomic
from ._toml import loads_toml
from .errors import SpecError

__all__ = ["add_requirements"]


def add_requirements(
    path: Path, requirements: Sequence[Requirement], *, write: bool = True
) -> tuple[str, ...]:
    """Put ``requirements`` into the dependencies of the spec file at ``path``.

    A requirement naming a package already listed replaces that entry in place (its
    comment stays); a new one is appended. Everything else stays as the user wrote it
    (tomlkit keeps comments and layout). The edited spec must still be valid, else
    :class:`SpecError` and nothing is written. The file is replaced in one rename,
    keeping its permissions, and only when something changed; with ``write=False`` it
    is only checked. Returns the requirements written, normalized.

    Writing holds an exclusive ``flock`` on the spec from the read to the rename, so
    concurrent edits (two ``envship add`` runs, on this machine or another one sharing
    the volume) each see the other's entries instead of the last rename dropping them.
    """
    if not write:
        return tuple(_edited(path, requirements)[1])
    with _spec_locked(path):
        text, changed = _edited(path, requirements)
        if changed:
            write_atomic(path, text, through_links=True)  # a symlinked spec stays a link
    return tuple(changed)


@contextlib.contextmanager
def _spec_locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on the spec file itself (through a symlink, on the file it
    names, which is the one ``write_atomic`` replaces).

    The spec is locked rather than a lock file beside it: that would put a file of ours
    into the user's project (and into their ``git status``), and could not be made where
    the folder is not theirs. ``envship._flock.acquire`` does not fit: it creates a
    missing file and its folders and adds group write to what it opens, none of which may
    happen to a user's spec. Its check after the wait is kept: each edit renames a new file
    into place, so a waiter that gets the lock on what was the spec starts over on what is.
    Opened for writing where allowed (nothing is written through it): NFS emulates flock
    with POSIX locks, whose exclusive lock needs a writable descriptor."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now, held = os.stat(path), os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _edited(path: Path, reqs: Sequence[Requirement]) -> tuple[str, list[str]]:
    """The spec's text with ``reqs`` in its dependencies, checked, and what changed."""
    # Imported here: only `envship add` edits a spec, and tomlkit costs about 30 ms to
    # import, which every other command would pay through this module.
    import tomlkit
    from tomlkit.items import Array

    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    table: Any = doc["tool"]["envship"] if path.name == "pyproject.toml" else doc
    if "dependencies" not in table:
        table["dependencies"] = tomlkit.array()
    deps = table["dependencies"]
    if not isinstance(deps, Array):
        raise SpecError(f"{path}: dependencies is not an array")
    changed: list[str] = []
    for req in reqs:
        new, key = str(req), canonicalize_name(req.name)
        names = [canonicalize_name(Requirement(str(old)).name) for old in deps]
        if key not in names:
            deps.append(new)
        elif str(deps[names.index(key)]) != new:
            deps[names.index(key)] = new
        else:
            continue
        changed.append(new)
    text = tomlkit.dumps(doc)
    data = loads_toml(text, str(path), SpecError)
    if path.name == "pyproject.toml":
        data = data["tool"]["envship"]
    from .spec import parse_spec  # spec re-exports this module's function

    parse_spec(data, source=str(path), path=path)  # the edit must leave a valid spec
    return text, changed

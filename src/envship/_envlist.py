"""What a shared environment root holds, read without taking any lock.

Each environment under the root and each of its versions: complete or not (only the
install marker, written last, says so), current or not, when it was last used, and what
it was made from. ``env list`` shows this, and ``gc`` reports what it removes, skips or
keeps in the same form. An environment or version this user may not read (made by another
user with a private umask) is listed as ``unreadable``, naming the folder that refuses and
its owner, and the others are listed all the same. The JSON form shared by every result of
:mod:`envship.envs` is here too, since creating, listing and ``gc`` all import this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from . import _envroot
from ._environment import denied_problem
from ._inuse import ProcessUse
from .errors import TargetError
from .targets import Target

__all__ = ["EnvInfo", "JsonResult", "VersionInfo", "list_envs", "version_info"]


def _plain(value: Any) -> Any:
    if isinstance(value, Target):
        return value.to_json()
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, JsonResult | ProcessUse):
        return value.to_json()
    return str(value) if isinstance(value, Path) else value


class JsonResult:
    """``to_json`` for the env result dataclasses: their fields, made JSON-friendly."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class VersionInfo(JsonResult):
    name: str
    key: str
    path: Path
    complete: bool
    current: bool
    last_used: datetime
    lock_digest: str | None  # None while incomplete: only the marker records it
    target: Target | None  # as ``env create --json`` gives it; None while incomplete
    groups: tuple[str, ...]
    size: int | None  # bytes on disk; None unless asked for (it walks every file)
    # Why this user cannot read it (the folder that refuses, its owner and mode), else None.
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class EnvInfo(JsonResult):
    name: str
    path: Path
    current: str | None  # the key ``current`` points at
    versions: tuple[VersionInfo, ...]
    # Why this user cannot list its versions, else None (its versions are then unknown).
    unreadable: str | None = None


def _target(marker: dict[str, Any] | None) -> Target | None:
    if marker is None:
        return None
    try:
        return Target.from_json(marker.get("target"))
    except TargetError:  # a marker from elsewhere we cannot read: listed, not fatal
        return None


def version_info(env_dir: Path, key: str, current: str | None, *, size: bool) -> VersionInfo:
    path = env_dir / "versions" / key
    unreadable: str | None = None
    try:
        marker = _envroot.read_marker(path)
    except PermissionError:
        marker, unreadable = None, str(denied_problem(path))
    return VersionInfo(
        name=env_dir.name,
        key=key,
        path=path,
        complete=marker is not None,
        current=key == current,
        last_used=_envroot.last_used(path),
        lock_digest=marker["lock"]["digest"] if marker else None,
        target=_target(marker),
        groups=tuple(marker["groups"]) if marker else (),
        size=_envroot.disk_size(path) if size else None,
        unreadable=unreadable,
    )


# mke2fs makes it, root-only, at the top of every ext file system: a root on its own
# volume has one, and it is no environment of anyone's.
_NOT_ENVS = frozenset({"lost+found"})


def _env_dirs(root: Path) -> list[tuple[Path, str | None]]:
    """Each environment folder under ``root`` (as ``_envroot.env_dirs`` finds them), and
    for one this user cannot look into, why: a non-hidden folder that refuses us may be
    an environment, so it is listed as unreadable rather than left out or fatal."""
    try:
        return [(p, None) for p in _envroot.env_dirs(root)]
    except PermissionError:
        pass  # one entry refused us: look at each on its own
    found: list[tuple[Path, str | None]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name in _NOT_ENVS:
            continue
        try:
            if (entry / "versions").is_dir():
                found.append((entry, None))
        except PermissionError:
            if os.path.isdir(entry):
                found.append((entry, str(denied_problem(entry / "versions"))))
    return found


def list_envs(root: Path, *, sizes: bool = False) -> list[EnvInfo]:
    """Every environment under ``root`` with its versions; reads only, takes no lock.

    One this user cannot read (or whose ``versions`` it cannot list) is an ``EnvInfo``
    with ``unreadable`` set and no versions; a version it cannot read is listed with
    ``unreadable`` set, as not complete (nothing about it can be known)."""
    found: list[EnvInfo] = []
    for env_dir, unreadable in _env_dirs(_envroot.require_root(root)):
        current = _envroot.current_key(env_dir)
        if unreadable is None:
            try:
                keys = _envroot.version_keys(env_dir)
            except PermissionError:
                unreadable, keys = str(denied_problem(env_dir / "versions")), []
        else:
            keys = []
        versions = [version_info(env_dir, k, current, size=sizes) for k in keys]
        found.append(EnvInfo(env_dir.name, env_dir, current, tuple(versions), unreadable))
    return found

"""What a shared environment root holds, read without taking any lock.

Each environment under the root and each of its versions: complete or not (only the
install marker, written last, says so), current or not, when it was last used, and what
it was made from. ``env list`` shows this, and ``gc`` reports what it removes, skips or
keeps in the same form. The JSON form shared by every result of :mod:`envship.envs`
is here too, since creating, listing and ``gc`` all import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from . import _envroot
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


@dataclass(frozen=True, slots=True)
class EnvInfo(JsonResult):
    name: str
    path: Path
    current: str | None  # the key ``current`` points at
    versions: tuple[VersionInfo, ...]


def _target(marker: dict[str, Any] | None) -> Target | None:
    if marker is None:
        return None
    try:
        return Target.from_json(marker.get("target"))
    except TargetError:  # a marker from elsewhere we cannot read: listed, not fatal
        return None


def version_info(env_dir: Path, key: str, current: str | None, *, size: bool) -> VersionInfo:
    path = env_dir / "versions" / key
    marker = _envroot.read_marker(path)
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
    )


def list_envs(root: Path, *, sizes: bool = False) -> list[EnvInfo]:
    """Every environment under ``root`` with its versions; reads only, takes no lock."""
    found: list[EnvInfo] = []
    for env_dir in _envroot.env_dirs(_envroot.require_root(root)):
        current = _envroot.current_key(env_dir)
        versions = [
            version_info(env_dir, k, current, size=sizes) for k in _envroot.version_keys(env_dir)
        ]
        found.append(EnvInfo(env_dir.name, env_dir, current, tuple(versions)))
    return found

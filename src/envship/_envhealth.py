"""Whether a persistent environment's version is whole: its install record and what it
installed, checked by the quick look ``install`` takes (no file hashed), and the error
that says a version was changed after it was made.

``env create`` makes a damaged version again in place; ``env check`` refuses it with the
command that does. Records are written whole (:mod:`envship._installmarker`), so a
record that does not read was damaged after the fact, never half-written.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from . import _envroot
from ._environment import read_venv_config
from ._halfmade import remake_command
from ._installmarker import RECORDS_KEY, MarkerDamaged, drift, interpreter_damage, read_record
from .errors import EnvError, Problem
from .lockfile import LockFile


def complete(
    path: Path, lock: LockFile, target: str, groups: tuple[str, ...]
) -> dict[str, Any] | None:
    """The marker when ``path`` is complete and made from exactly these inputs; None for
    a damaged one too (the version is made again, in place)."""
    marker = _envroot.read_marker(path)
    if marker is None or (marker["lock"]["digest"], marker["target"]["name"]) != (
        lock.digest,
        target,
    ):
        return None
    return marker if tuple(marker["groups"]) == groups else None


def recorded(marker: Path) -> dict[str, Any]:
    """What a damaged install record still says (for a hint), else nothing."""
    with contextlib.suppress(MarkerDamaged):
        data = read_record(marker)
        if isinstance(data, dict):
            return data
    return {}


def record_damage(path: Path) -> list[str]:
    """Why the install record of the complete version at ``path`` cannot be used (it was
    damaged after the fact: records are written whole), for ``repaired``."""
    try:
        _envroot.version_marker(path)
    except MarkerDamaged as exc:
        return [str(exc)]
    return []


def package_damage(path: Path, marker: dict[str, Any]) -> list[str]:
    """What changed among a version's installed distributions since it was made, by the
    quick look ``install`` takes (a listing, and a hash of each RECORD)."""
    found = drift(path, marker["packages"], marker["target"]["python"], marker.get(RECORDS_KEY))
    return [
        f"{n}: {what}"
        for what, names in (
            ("missing", found.missing),
            ("not locked", found.present),
            ("twice", found.duplicated),
            ("replaced", found.replaced),
        )
        for n in names
    ]


def version_damage(path: Path, marker: dict[str, Any]) -> list[str]:
    """Why ``env create`` must make a complete version again in place."""
    return interpreter_damage(path, marker) + package_damage(path, marker) + _fixed_place(path)


def _fixed_place(path: Path) -> list[str]:
    """A version made before versions were relocatable: its scripts name the path it was
    made at, and stop working where the root is mounted elsewhere."""
    try:
        relocatable = read_venv_config(path / "pyvenv.cfg").get("relocatable", "")
    except OSError:
        return []  # what cannot be read here is the interpreter check's to report
    if relocatable.lower() == "true":
        return []
    return [f"{path} is not relocatable: its scripts name the path it was made at"]


def changed(
    name: str, root: Path, path: Path, marker: dict[str, Any], reasons: list[str]
) -> EnvError:
    return EnvError(
        f"the current version of {name!r} ({path.name}) was changed since it was made",
        problems=[Problem(str(path), r) for r in reasons],
        hint=f"{remake_command(path, marker)} makes it again in place",
    )

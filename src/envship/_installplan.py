"""What a run of ``envship install`` does with what it finds at its destination.

Decided before anything is touched, from the destination's state and markers alone:

* nothing there, or an empty folder: make it (``created``);
* a complete environment made from the same lock, target, groups, byte-code and link
  mode, whose installed metadata matches its marker: nothing (``unchanged``); one whose
  metadata drifted: sync the locked set back (``repaired``); one from another lock or
  asked for something else: sync into it (``updated``);
* a half-made one (``.envship-incomplete``), one with two metadata folders for a name
  (a sync cannot tell which to remove), one whose ``bin/python`` was relinked, or one
  asked to be reinstalled: make it again (``rebuilt``).

What an environment was made with stays unless the run asks otherwise: its interpreter
(while it exists), byte-code, link mode, and for a half-made reinstall the private uv
cache; a half-made environment keeps them in the marker it had.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._addedrecord import ADDED_KEY
from ._envfiles import REINSTALLING
from ._installmarker import (
    RECORDS_KEY,
    STORE_KEY,
    State,
    drift,
    interpreter_damage,
    read_marker,
)
from .lockfile import LockFile

__all__ = ["REINSTALLING", "LinkMode", "Plan", "pins", "plan", "repeat"]

LinkMode = Literal["hardlink", "copy", "clone", "symlink"]  # _envfiles.LINK_MODES


@dataclass(frozen=True, slots=True)
class Plan:
    """The decision; ``reuse`` syncs into the existing venv, else it is made (again)."""

    state: State  # "incomplete" too for a complete environment that is to be made again
    marker: Mapping[str, Any] | None  # a complete environment's marker
    prior: Mapping[str, Any] | None  # the marker a half-made environment kept
    base: str | None  # the base interpreter asked for, or kept; None: this one
    reuse: bool
    unchanged: bool  # reuse, and nothing to do
    repair: bool  # reuse, same lock: put back what drifted
    relink: bool  # another link mode than the environment's: every file again
    replaced: tuple[str, ...]  # same version, another RECORD: reinstalled by name
    compile_bytecode: bool
    link_mode: LinkMode | None
    private_cache: bool
    before: dict[str, tuple[str, str]]  # name -> (version, sha256) there now


def pins(packages: Sequence[Mapping[str, str]]) -> dict[str, tuple[str, str]]:
    return {p["name"]: (p["version"], p["sha256"]) for p in packages}


def plan(
    dest: Path,
    state: State,
    lock: LockFile,
    *,
    base: str | None,
    target: str | None,
    groups: tuple[str, ...],
    compile_bytecode: bool,
    link_mode: LinkMode | None,
    private_cache: bool,
    reinstall: bool,
) -> Plan:
    """Decide what to do with ``dest`` (in ``state``, not foreign); reads, never writes.

    ``base``: the interpreter asked for (None: none asked). An environment made with
    another one is made again with it.
    """
    marker = read_marker(dest) if state == "complete" else None
    prior = read_marker(dest) if state == "incomplete" else None
    if prior is not None:
        made_with = prior.get("python")
        was = made_with.get("base") if isinstance(made_with, dict) else None
        if base is None and isinstance(was, str) and os.path.exists(was):
            base = was  # (one gone from this machine: ours, as for a new environment)
        compile_bytecode = compile_bytecode or bool(prior.get("compiled"))
        link_mode = link_mode or prior.get("link_mode")
        private_cache = private_cache or bool(prior.get(REINSTALLING))
    before = pins(marker["packages"]) if marker else {}
    reuse = marker is not None and (
        base is None or os.path.realpath(base) == os.path.realpath(marker["python"]["base"])
    )
    unchanged = repair = relink = False
    replaced: list[str] = []
    if marker is not None and reuse:
        # What the environment was made with stays unless asked otherwise: a repair or an
        # update of a compiled or copied environment compiles and copies too.
        compile_bytecode = compile_bytecode or bool(marker.get("compiled"))
        relink = link_mode is not None and marker.get("link_mode") != link_mode
        link_mode = link_mode or marker.get("link_mode")
        python_xy = str(marker["target"]["python"])
        found = drift(dest, marker["packages"], python_xy, marker.get(RECORDS_KEY))
        # Whatever the run is (repair or update), the report starts from what is there
        # now, and one re-installed at the same version (another wheel, another tool: its
        # RECORD is not the one installed) is installed again whatever uv makes of it: uv
        # keeps a same-version distribution, RECORD and all.
        gone = {*found.missing, *found.replaced}
        replaced = [p.split("==")[0] for p in found.replaced]
        before = {
            **{k: v for k, v in before.items() if f"{k}=={v[0]}" not in gone},
            **{p.split("==")[0]: (p.split("==")[1], "") for p in found.present},
        }
        if found.duplicated or reinstall or interpreter_damage(dest, marker):
            # Two metadata folders for one name, or bin/python relinked to another
            # interpreter: the folder is ours (it has our marker), so make it again (as
            # asked to, for a reinstall).
            reuse, state, base = False, "incomplete", base or marker["python"]["base"]
        elif (
            marker["lock"]["digest"] == lock.digest
            and tuple(marker["groups"]) == groups
            and target in (None, marker["target"]["name"])
            # `envship add` extras make the env differ from the lock: sync them away.
            and not marker.get(ADDED_KEY)
            # Asked for byte-code the env does not have: the sync compiles it.
            and marker.get("compiled", False) == compile_bytecode
            and not relink
        ):
            # Someone removed, added or replaced a distribution: the sync puts the locked
            # set back (the same as an update, from what is there now).
            unchanged, repair = not found, bool(found)
    return Plan(
        state=state,
        marker=marker,
        prior=prior,
        base=base,
        reuse=reuse,
        unchanged=unchanged,
        repair=repair,
        relink=relink,
        replaced=tuple(replaced),
        compile_bytecode=compile_bytecode,
        link_mode=link_mode,
        private_cache=private_cache,
        before=before,
    )


def repeat(decided: Plan, base: str, version: str, store: Path) -> dict[str, Any]:
    """What a run writes into the marker at its start, over what the environment was
    made with (or a new marker): how to make it the same way again. A run after a killed
    one reads it back (``prior``), and the command ``verify`` prints to finish it names
    ``--compile`` and ``--store`` from it (:func:`envship._halfmade.remake`): the
    interpreter (``base``, full ``version``), byte-code, link mode, the private cache
    and the store's root."""
    settings: dict[str, Any] = {
        "python": {"base": base, "version": version},
        "compiled": decided.compile_bytecode,
        STORE_KEY: str(store),
        REINSTALLING: decided.private_cache,
    }
    if decided.link_mode is not None:
        settings["link_mode"] = decided.link_mode
    return settings

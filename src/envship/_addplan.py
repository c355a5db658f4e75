"""What ``envship add`` is about to do, decided before anything is touched.

The environment's marker and its locked set (:mod:`envship._addenv`), each request
sorted into what uv installs, what the lock and the spec already satisfy, what applies
elsewhere and what the lock satisfies but the spec must record (replacing its entry for
the name, or as a new direct dependency of one locked only through another package or
a group); a request that would move a locked version (one the environment has, or one
its lock pins for groups it was installed without) is refused here, before uv runs,
with the commands that would let it move.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from . import _addenv, _addspec, _snapshot
from ._addedrecord import ADDED_KEY
from .errors import AddConflictError, AddError, AddInputError, Problem
from .lock import lock_path_for
from .spec import Spec

__all__ = ["Plan", "constraints", "plan_addition"]


@dataclass(frozen=True, slots=True)
class Plan:
    marker: dict[str, Any]
    pins: dict[str, str]  # canonical name -> locked version, as installed from the lock
    grouped: _addenv.GroupPins  # locked for groups not installed: held too, never moved
    installed: _snapshot.Installed
    todo: tuple[Requirement, ...]  # for uv
    # "name==version": locked, satisfying, and listed so in the spec: nothing to record
    already: tuple[str, ...]
    elsewhere: tuple[Requirement, ...]  # a marker false here: recorded, not installed
    # todo, elsewhere, and locked requests the spec does not list so (another entry for
    # the name, or none), in the order asked for
    record: tuple[Requirement, ...]
    env: Path
    spec_lock: Path  # the lock `envship lock` writes for the spec recorded in
    note: str  # why the versions of groups not installed cannot be held, if they cannot

    # Hints, made when needed (each reads the lock to see whether it has several targets).
    @property
    def repair(self) -> str:
        """`envship install ENV --lock LOCK ...`: back to the environment's own lock."""
        return _addenv.lock_command("install", self.env, self.marker)

    @property
    def relocked(self) -> str:
        """The same with the spec's lock, which `envship lock -P NAME` makes again."""
        return _addenv.lock_command("install", self.env, self.marker, self.spec_lock)

    @property
    def held(self) -> dict[str, str]:
        """Every locked version uv must keep: installed, and for the other groups."""
        return {**{k: v for k, (v, _) in self.grouped.items()}, **self.pins}

    @property
    def why(self) -> dict[str, str]:
        """What to add to "the lock pins NAME==VERSION" for a package not installed."""
        return {k: _addenv.not_installed(self.env, g) for k, (_, g) in self.grouped.items()}


def _listed(entries: Iterable[str]) -> dict[str, list[Requirement]]:
    """Spec entries by canonical name (a name may be listed under several markers)."""
    listed: dict[str, list[Requirement]] = {}
    for text in entries:
        req = Requirement(text)
        listed.setdefault(canonicalize_name(req.name), []).append(req)
    return listed


def plan_addition(
    env: Path,
    sites: Sequence[Path],
    reqs: Sequence[Requirement],
    here: Mapping[str, Any],
    spec: Spec,
) -> Plan:
    marker = _addenv.checked_marker(env)
    pins = {str(canonicalize_name(str(p["name"]))): str(p["version"]) for p in marker["packages"]}
    spec_lock = lock_path_for(spec)
    grouped, note = _addenv.locked_elsewhere(marker, spec_lock)
    installed = _snapshot.installed(sites)
    if drift := _snapshot.drift(env, marker, pins, installed):
        # install repairs in place what its own quick look finds (the same look, RECORD
        # digests included), and syncs away what earlier additions brought.
        again = " (it also removes what `envship add` added)" if marker.get(ADDED_KEY) else ""
        raise AddError(
            f"{env} already differs from its lock; refusing to add on top of that",
            problems=drift,
            hint=f"{_addenv.lock_command('install', env, marker)} repairs it from its lock{again}; "
            f"{_addenv.lock_command('verify', env, marker)} lists every difference",
        )
    todo: list[Requirement] = []
    already: list[str] = []
    elsewhere: list[Requirement] = []
    record: list[Requirement] = []
    conflicts: list[Problem] = []
    # The spec's dependencies, and its groups' entries: a name a group lists is the
    # spec's as much as a dependency (adding it again to the dependencies would put it
    # into every install, with or without the group).
    listed = _listed(spec.dependencies)
    in_groups = _listed(e for entries in spec.groups.values() for e in entries)
    for req in reqs:
        key = canonicalize_name(req.name)
        locked = pins.get(key)
        other = grouped.get(key)
        if not _addspec.applies(req, here):
            elsewhere.append(req)  # uv would skip it; the spec keeps it for where it applies
        elif locked is None and other is None:
            todo.append(req)
        elif locked is None:
            assert other is not None
            version, groups = other
            if not req.specifier.contains(version, prereleases=True):
                why = _addenv.not_installed(env, groups)
                conflicts.append(Problem(str(req), f"the lock pins {req.name}=={version}{why}"))
                continue
            todo.append(req)  # installed at the locked version: the constraints hold it there
        elif not req.specifier.contains(locked, prereleases=True):
            conflicts.append(Problem(str(req), f"the lock pins {req.name}=={locked}"))
            continue
        elif req.extras:
            todo.append(req)  # the extras may bring new dependencies
        elif any(
            key in names and (req in names[key] or not (req.specifier or req.marker or req.url))
            for names in (listed, in_groups)
        ):
            # The spec asks for exactly this (Requirement equality normalizes names,
            # extras and specifier order), or the request is a bare name, which asks
            # only that the package be there (it must not loosen the spec's constraint
            # on it): nothing to install, nothing to record.
            already.append(f"{key}=={locked}")
            continue
        if locked is not None and key not in listed and key in in_groups:
            # The environment has it through a group: recorded in the dependencies, it
            # would go into every install, with or without the group; the group's entry
            # is the one to change.
            named = [g for g, entries in spec.groups.items() if key in _listed(entries)]
            raise AddInputError(
                f"{req.name} is in the spec's group {', '.join(named)}: a requirement for it "
                "belongs there, not in the dependencies `envship add` records in",
                problems=[Problem(f"{spec.path}: groups.{g}", str(req)) for g in named],
                hint=f"change {req.name}'s entry in [groups] of {spec.path}, then run "
                "`envship lock`",
            )
        # Else nothing to install, but the request goes into the spec's dependencies
        # (README, "Add a package"), so the next lock honours it: it replaces the entry
        # the spec lists for the name, or makes a direct dependency of one locked only
        # through another package (were that package to drop it, the request would be
        # gone).
        record.append(req)
    if conflicts:
        names = " ".join(f"-P {canonicalize_name(Requirement(p.where).name)}" for p in conflicts)
        assert spec.path is not None
        raise AddConflictError(
            f"cannot add {', '.join(p.where for p in conflicts)}: the lock pins another version",
            problems=conflicts,
            hint="envship add never moves a locked package. Change the requirement in the "
            f"spec, then `envship lock {names} --spec {shlex.quote(str(spec.path))}` and "
            f"{_addenv.lock_command('install', env, marker, spec_lock)}",
        )
    return Plan(
        marker,
        pins,
        grouped,
        installed,
        tuple(todo),
        tuple(already),
        tuple(elsewhere),
        tuple(record),
        env,
        spec_lock,
        note,
    )


def constraints(work: Path, plan: Plan) -> list[str]:
    """``--constraints FILE`` holding every locked package at its locked version: what
    the environment has from its lock, and what the lock pins for the groups it was
    installed without (a constraint installs nothing; it holds what gets installed)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "locked-constraints.txt"
    pins = sorted(plan.held.items())
    path.write_text("".join(f"{name}=={version}\n" for name, version in pins), encoding="utf-8")
    return ["--constraints", str(path)]

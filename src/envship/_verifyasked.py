"""What ``envship verify`` was asked for, as its report and hints repeat it: the groups
and store on its command line, the target a caller named, and what the lock holds only in
groups it was not asked for (an installed one is an extra the lock does not lack)."""

from __future__ import annotations

import shlex
from collections.abc import Collection

from packaging.utils import canonicalize_name

from ._installmarker import STORE_KEY, store_option
from .errors import InvalidLockError, UnsupportedTargetError
from .lockfile import LockFile
from .store import Store
from .targets import Target

__all__ = ["asked_groups", "asked_store", "target_of", "unasked"]


def unasked(
    lock: LockFile, target: Target, groups: Collection[str] | None, known: Collection[str]
) -> dict[str, list[tuple[str, str]]]:
    """Name -> (version, group) of each distribution the lock holds for ``target`` only
    in a dependency group verify was not asked for (``known``: the names expected or
    ignored): installed, it is an extra, though not one the lock lacks."""
    chosen = lock.chosen_groups(groups)
    found: dict[str, list[tuple[str, str]]] = {}
    for group in sorted(set(lock.groups) - set(chosen)):
        try:
            selected = lock.select(target, groups=[*chosen, group])
        except (InvalidLockError, UnsupportedTargetError):
            continue  # that group cannot be installed on the target: nothing of it is
        for p, _ in selected:
            key = canonicalize_name(str(p.name))
            if key not in known:
                found.setdefault(key, []).append((str(p.version), group))
    return found


def asked_groups(lock: LockFile, groups: Collection[str] | None) -> str:
    """``--group G``/``--no-groups`` as verify was asked (nothing for every group of the
    lock), shell-quoted."""
    chosen = lock.chosen_groups(groups)
    if set(chosen) == set(lock.groups):
        return ""
    return "".join(f" --group {shlex.quote(g)}" for g in chosen) or " --no-groups"


def asked_store(store: Store | None) -> str:
    """``--store S`` as verify was asked (nothing for the default store)."""
    return store_option({STORE_KEY: str(store.root)}) if store is not None else ""


def target_of(lock: LockFile, target: Target | str | None) -> Target | None:
    """A target named by the caller, as the lock has it (unknown: the lock's TargetError)."""
    if target is None or isinstance(target, Target):
        return target
    if isinstance(target, str):
        return lock.target(target)
    raise TypeError(
        f"target must be a Target, a target's name or None, not {type(target).__name__}"
    )

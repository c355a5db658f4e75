"""What ``envship install`` refuses to touch, and how it says that a disk filled up.

A destination is never changed when it is a folder envship did not make (no install
marker and not empty), a version under an ``envship env`` root (immutable and shared:
``env create`` makes and remakes them) or the place where a root keeps its ``current``
link. Those are bad input (exit 2), as ``envship add`` and ``kernel install`` refuse the
same places.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._envroot import shared_version
from ._installmarker import MARKER_NAME
from .errors import EnvshipError, InstallError, InstallInputError, Problem

__all__ = ["disk_full", "refuse_foreign", "refuse_shared"]


def refuse_shared(dest: Path, marker: dict[str, Any]) -> None:
    """Refuse a version under an env root (immutable, shared) and ``ROOT/NAME/current``."""
    shared = shared_version(dest, marker)  # by its place (and, if readable, its marker)
    if shared is not None:
        name, root = shared
        raise InstallInputError(
            f"{dest} is a version of the shared environment {name!r} under {root}; "
            "versions are immutable and every instance uses them",
            hint=f"`envship env create {name} --root {root} --lock ...` makes a new version "
            "from another lock; `envship install PATH` makes a private environment",
        )
    if dest.name == "current" and (dest.parent / "versions").is_dir():
        # Where `env create` keeps its link (ROOT/NAME/current), with no version behind
        # it: an environment made here would take the link's place.
        raise InstallInputError(
            f"{dest} is where `envship env create` keeps the link to the current version "
            f"of the shared environment {dest.parent.name!r}; refusing to install there",
            hint=f"`envship env create {dest.parent.name} --root {dest.parent.parent} "
            "--lock ...` makes a new version; `envship install PATH` makes a private "
            "environment elsewhere",
        )


def refuse_foreign(dest: Path) -> InstallInputError:
    """The error for a destination that is not ours: never touched."""
    if dest.is_symlink() and not dest.exists():
        what = f"a symbolic link to nothing ({os.readlink(dest)})"
    else:
        what = "a file" if dest.exists() and not dest.is_dir() else "a non-empty folder"
    return InstallInputError(
        f"{dest} is {what} that is not an envship environment; refusing to touch it",
        problems=[Problem(str(dest), f"no {MARKER_NAME} and not empty")],
        hint="pick a new or empty folder; envship never deletes what it did not create",
    )


def disk_full(dest: Path, exc: BaseException, *, kept: bool) -> InstallError:
    """The error for a full disk, saying what this run left at ``dest``."""
    problems = exc.problems if isinstance(exc, EnvshipError) else (Problem(str(dest), str(exc)),)
    left = (
        f"{dest} is marked incomplete until then, and that run makes it again"
        if kept
        else "nothing of this run was left behind"
    )
    return InstallError(
        f"the disk holding {dest} is full",
        problems=problems,
        hint=f"free space (or install somewhere else) and re-run; {left}",
    )

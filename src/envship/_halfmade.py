"""An environment a run of ``envship install`` or ``envship add`` did not finish.

Both write ``.envship-incomplete`` before uv runs and remove it only once the
environment is whole; the kernel launcher and ``envship add`` refuse an environment that
carries it. :mod:`envship.verify` reports it first (a killed install otherwise lists
thousands of differences without saying why, and a failed update can look identical to
its old lock), with the command that finishes it.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._difference import Difference
from ._environment import InstalledEnvironment
from ._envroot import shared_version
from ._installmarker import INCOMPLETE_NAME, read_marker, store_option
from .errors import EnvshipError, HalfMadeError, Problem, SpecError
from .lockfile import LockFile
from .targets import Target

__all__ = [
    "as_made",
    "base_option",
    "finish",
    "half_made",
    "incomplete",
    "remake",
    "remake_command",
]

_HALF_MADE = (
    "a run of `envship install` or `envship add` did not finish here (killed, or failed): "
    "the kernel launcher and `envship add` refuse the environment until it is made again"
)


def _marked(root: Path | None) -> str | None:
    """The first line of ``root``'s incomplete marker (what the run was doing), or None
    without one. Present is what counts, as for install and the launcher."""
    if root is None or not (root / INCOMPLETE_NAME).exists():
        return None
    try:
        text = (root / INCOMPLETE_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(unreadable: {exc.strerror or exc})"
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    return line[:200] or "(empty)"


def incomplete(root: Path | None) -> Difference | None:
    text = _marked(root)
    if root is None or text is None:
        return None
    path = str(root / INCOMPLETE_NAME)
    return Difference("incomplete", INCOMPLETE_NAME, path, actual=text, note=_HALF_MADE)


def finish(root: Path | None, lock: LockFile, target: Target | None) -> str | None:
    """What to run to make the half-made environment at ``root`` from ``lock``: ``env
    create`` for a version under an env root (install refuses those), else ``install``
    (which clears a folder marked incomplete and makes it again)."""
    if root is None:
        return None
    marker = read_marker(root) or {}  # a failed update keeps the one it had
    q = shlex.quote  # pasted into a shell as it is
    pick = f" --target {q(target.name)}" if target is not None and len(lock.targets) > 1 else ""
    pick += as_made(root, marker, lock.groups)
    # The lock as an absolute path: the command is pasted from whatever folder.
    where = q(os.path.abspath(lock.path))
    return f"finish it with `envship {remake(root, marker)} --lock {where}{pick}`"


def as_made(root: Path, marker: Mapping[str, Any], lock_groups: tuple[str, ...]) -> str:
    """``--python BASE`` and ``--group G``/``--no-groups`` as the environment at ``root``
    was made, where install's defaults (envship's own interpreter, every group of the
    lock, whose groups are ``lock_groups``) would make it otherwise."""
    pick = base_option(root, marker)
    groups = marker.get("groups")
    if isinstance(groups, list) and set(groups) != set(lock_groups):
        # Without either, install takes every group of the lock: not what was made.
        pick += "".join(f" --group {shlex.quote(g)}" for g in groups if isinstance(g, str))
        pick += "" if groups else " --no-groups"
    return pick


def base_option(root: Path, marker: Mapping[str, Any]) -> str:
    """``--python BASE`` for the interpreter the environment at ``root`` was made on,
    when it is not envship's own (install's default)."""
    python = marker.get("python")
    base = python.get("base") if isinstance(python, dict) else None
    if not isinstance(base, str) and os.path.islink(root / "bin" / "python"):
        base = os.path.realpath(root / "bin" / "python")  # uv links the venv to its base
    if isinstance(base, str) and os.path.realpath(base) != os.path.realpath(sys.executable):
        return f" --python {shlex.quote(base)}"
    return ""


def remake(root: Path, marker: Mapping[str, Any]) -> str:
    """The envship subcommand that makes the environment at ``root`` again, shell-quoted:
    ``env create`` for a version under an env root (install refuses those), else
    ``install``, with the options that repeat how it was (being) made (:func:`_repeat`);
    the caller adds ``--lock`` and what else it needs."""
    q = shlex.quote  # pasted into a shell as it is
    shared = shared_version(root, dict(marker))
    if shared is None:
        return f"install {q(str(root))}{_repeat(marker)}"
    return f"env create {q(shared[0])} --root {q(str(shared[1]))}{_repeat(marker)}"


def remake_command(root: Path, marker: Mapping[str, Any]) -> str:
    """``envship install ENV --lock LOCK ...`` (``env create`` for a version) that makes
    the environment at ``root`` again as its record, damaged or not, says it was made:
    for a version, every input of its key (target, groups, base interpreter, byte-code),
    so the command repairs that version in place rather than make another one current;
    and the store. What the record cannot say is left out; LOCK stands for a lock it
    does not name."""
    q = shlex.quote  # pasted into a shell as it is

    def text(value: object) -> str | None:
        return value if isinstance(value, str) and value and value.isprintable() else None

    lock, target, python = (marker.get(k) for k in ("lock", "target", "python"))
    path = text(lock.get("path")) if isinstance(lock, dict) else None
    pick = ""
    if (name := text(target.get("name")) if isinstance(target, dict) else None) is not None:
        pick += f" --target {q(name)}"
    base = text(python.get("base")) if isinstance(python, dict) else None
    if base is not None and os.path.exists(base):
        pick += f" --python {q(base)}"
    groups = marker.get("groups")
    if isinstance(groups, list):
        pick += "".join(f" --group {q(g)}" for g in groups if text(g) is not None)
        if not groups and path is not None and _lock_groups(path):
            pick += " --no-groups"  # without it, every group of the lock
    where = q(os.path.abspath(path)) if path is not None else "LOCK"
    return f"envship {remake(root, marker)} --lock {where}{pick}"


def _lock_groups(path: str) -> tuple[str, ...]:
    try:
        return LockFile.load(Path(path)).groups
    except EnvshipError:
        return ()


def _repeat(marker: Mapping[str, Any]) -> str:
    """``--compile`` when byte-code was asked for (a version's key includes it: without
    it env create makes another version), and ``--store S`` when the wheels came from a
    store other than the one envship takes without ``--store`` here: run as printed,
    the command must find them (a marker from before ``store`` was kept: none)."""
    return (" --compile" if marker.get("compiled") else "") + store_option(marker)


def half_made(
    exc: SpecError, env: Path | InstalledEnvironment | None, lock: LockFile
) -> SpecError | HalfMadeError:
    """``exc`` (no environment to verify), or a HalfMadeError when the folder is a
    half-made one."""
    if isinstance(env, InstalledEnvironment):
        root = env.record_root
    else:
        named = env if env is not None else os.environ.get("VIRTUAL_ENV")
        path = Path(os.path.abspath(named)) if named else None
        root = path if path is None or path.is_dir() else path.parent.parent  # bin/python
    text = _marked(root)
    if root is None or text is None:
        return exc
    return HalfMadeError(
        f"{root} is half made ({text}): {exc.message}",
        problems=[Problem(str(root / INCOMPLETE_NAME), text), *exc.problems],
        hint=finish(root, lock, None),
    )

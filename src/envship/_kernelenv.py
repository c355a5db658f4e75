"""The environment a kernel is made for, as ``install_kernel`` must know it first.

A kernelspec records which environment it is for (and, for listing, its lock digest
and target when it was registered) and is named after it. The environment's install
marker must be complete and consistent before a kernel is registered for it, because
the launcher judges the environment by that marker at every start. Reading and
checking it, reporting every problem at once, the commands that make an environment
when there is none, and deriving the kernel's name are kept apart from
:mod:`envship.kernels`, which only places and writes kernelspecs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._envhealth import recorded
from ._environment import denied, interpreter_denied, refused
from ._halfmade import remake_command
from ._installmarker import LINKS_KEY
from ._launcher import kernel_remedy, missing_kernel, remade
from ._markerread import MarkerDamaged, check_marker, read_record
from .errors import KernelError, KernelInputError, Problem, TargetError
from .install import INCOMPLETE_NAME, MARKER_NAME
from .targets import Target

__all__ = ["checked_name", "env_label", "env_root", "kernel_name_for", "read_env"]

# Kernel names: ASCII letters, digits and ``-._`` (the kernelspec docs); Jupyter lowercases.
# fullmatch: "$" alone also matches before a final newline.
_VALID_NAME = re.compile(r"[a-z0-9._-]+")


def env_label(env: Path) -> str:
    """The environment's name: ``ROOT/NAME/current`` and ``ROOT/NAME/versions/KEY``
    (layouts of ``envship env``) are called NAME, any other folder by its own name."""
    if env.name == "current":
        return env.parent.name
    if env.parent.name == "versions":
        return env.parent.parent.name
    return env.name


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")


def kernel_name_for(env_name: str) -> str:
    """A valid kernel name from an environment's folder name: ``My Env`` -> ``my-env``."""
    name = _slug(env_name)
    if not name:
        raise KernelInputError(
            f"cannot make a kernel name from {env_name!r}",
            hint="pass --name with letters, digits, '-', '.' or '_'",
        )
    return name


def checked_name(name: str) -> str:
    lowered = name.lower()
    if not _VALID_NAME.fullmatch(lowered) or lowered.startswith("."):
        suggestion = _slug(name)
        raise KernelInputError(
            f"invalid kernel name {name!r}",
            problems=[Problem("--name", "only ASCII letters, digits, '-', '.' and '_'")],
            hint=f"for example {suggestion!r}" if suggestion else None,
        )
    return lowered


def _shared(env: Path) -> tuple[str, Path] | None:
    """``(name, root)`` when ``env`` is ``ROOT/NAME/current`` or ``ROOT/NAME/versions/KEY``."""
    if env.name == "current":
        return env.parent.name, env.parent.parent
    if env.parent.name == "versions":
        return env.parent.parent.name, env.parent.parent.parent
    return None


def env_root(env: Path) -> Path | None:
    """``ROOT/NAME`` when ``env`` is a link (``ROOT/NAME/current``, or any chain of links
    to it) to a version of an environment root, else None. The kernelspec records it:
    when the root is gone or moved, the launcher (which cannot ask Python then) must say
    `envship env create`, never `envship install`, which would put a plain venv where the
    root's `current` link belongs."""
    if not env.is_symlink():
        return None  # a venv of its own, or a version pinned by its own path
    real = Path(os.path.realpath(env))
    env_dir = real.parent.parent
    if real.parent.name != "versions" or not (env_dir / ".locks").is_dir():
        return None
    if env.name == "current" and env.parent.name == env_dir.name:
        return env.parent  # ROOT/NAME as the user named it (a linked /efs stays /efs)
    return env_dir


def _make_hint(env: Path, marker: Mapping[str, Any] | None = None) -> str:
    """The command that makes (finishes, or makes again) the environment at ``env``: as
    its install ``marker`` says it was made when there is one (the lock by its absolute
    path, the target, groups and store), else with LOCK standing for the lock."""
    if marker:
        remake = remake_command(Path(os.path.realpath(env)), marker)
        then = f"`{remake}`, then `envship kernel install {env}`"
        return then + (_LOCK if "--lock LOCK" in remake else "")
    shared = _shared(env)
    if shared is not None:
        name, root = shared
        return (
            f"`envship env create {name} --root {root} --lock LOCK`, "
            f"then `envship kernel install {root / name / 'current'}`{_LOCK}"
        )
    return f"`envship install {env} --lock LOCK`, then `envship kernel install {env}`{_LOCK}"


# A lock by its name in the current folder is right only there; the record names none.
_LOCK = " (LOCK: the lock it is made from)"


def _foreign_hint(env: Path) -> str:
    # `envship install` refuses a non-empty folder it did not make (it never deletes
    # what it did not create), so the plain venv itself cannot be the destination.
    return (
        "envship makes kernels for environments it installed: "
        "`envship install NEW_DIR --lock LOCK` (a new or empty folder), then "
        "`envship kernel install NEW_DIR`; or register this venv as it is with "
        f"`{env / 'bin' / 'python'} -m ipykernel install --user`"
    )


def read_env(env: Path) -> tuple[dict[str, Any], Target]:
    """The install marker of the environment at ``env`` and its target; or a KernelError,
    or a PermissionDeniedError when this user may not read it (or run its interpreter):
    a kernel of it could never start for them."""
    try:
        return _read_env(env)
    except PermissionError as exc:
        raise denied(f"the environment {env}", exc.filename or env) from None


def _read_env(env: Path) -> tuple[dict[str, Any], Target]:
    if not env.is_dir():
        raise KernelInputError(f"there is no environment at {env}", hint=_make_hint(env))
    if (env / INCOMPLETE_NAME).exists():
        raise KernelError(
            f"the environment at {env} is half installed ({INCOMPLETE_NAME} is present)",
            hint=f"finish it: {_make_hint(env, recorded(env / MARKER_NAME))}",
        )
    where = str(env / MARKER_NAME)
    problems: list[Problem] = []
    try:
        # Never trusted: a marker linked to /dev/zero or a FIFO is refused, not read, and
        # one of another shape is damaged (its lock.path a list crashed the remedies).
        marker = read_record(env / MARKER_NAME)
        if marker is not None:
            check_marker(marker, env / MARKER_NAME)
    except MarkerDamaged as exc:
        if isinstance(exc.cause, PermissionError):
            raise exc.cause from None  # said as a refusal, not as a damaged record
        # install takes a damaged record for a half-made environment and makes it again.
        raise KernelError(
            f"the install record of {env} is damaged",
            problems=[exc.problem()],
            hint=f"make it again: {_make_hint(env)}",
        ) from None
    if marker is None:
        empty = not any(env.iterdir())
        # A folder envship cannot use, like one that does not exist, is bad input (exit 2).
        raise KernelInputError(
            f"{env} is not an environment made by `envship install` (no {MARKER_NAME})",
            hint=_make_hint(env) if empty else _foreign_hint(env),
        )
    if not isinstance(marker, dict):
        marker = {}
    lock = marker.get("lock")
    if not (isinstance(lock, dict) and isinstance(lock.get("digest"), str)):
        problems.append(Problem(where, "no lock.digest"))
    target: Target | None = None
    try:
        target = Target.from_json(marker.get("target"), where=f"{where}: target")
    except TargetError as exc:
        problems.extend(exc.problems)
    python = env / "bin" / "python"
    if refused(python):
        raise interpreter_denied(python)  # a base under a private home: not "missing"
    if not python.exists():
        problems.append(Problem(str(env / "bin" / "python"), "the interpreter is missing"))
    if problems or target is None:
        raise KernelError(
            f"the install record of {env} is incomplete",
            problems=problems,
            hint=f"make it again: {_make_hint(env, marker)}",
        )
    # The launcher refuses such an environment at every start, in the same words.
    real = os.path.realpath(env)  # a version of a root, for `current`: its lock is made again
    changed = _relinked(python, marker)
    if changed is not None:
        raise KernelError(
            f"cannot make a kernel of {env}: it was changed since it was made: {changed}",
            hint=f"{remade(real, marker)}, then `envship kernel install {env}`",
        )
    missing = missing_kernel(real, None)  # any lib/pythonX.Y: no interpreter to ask
    if missing is not None:
        raise KernelError(
            f"cannot make a kernel of {env}: {missing}",
            hint=f"{kernel_remedy(real, marker)}, then `envship kernel install {env}`",
        )
    return marker, target


def _relinked(python: Path, marker: dict[str, Any]) -> str | None:
    """How ``python`` (an environment's ``bin/python``) differs from the link its install
    marker records, as the launcher's sh part judges it at every start: None when it
    ends at the same file, when the marker records no link (made before ``venv_links``),
    or when what it records is not on this machine (this machine's lack, not a change)."""
    links = marker.get(LINKS_KEY)
    made = links.get("bin/python") if isinstance(links, dict) else None
    if not (isinstance(made, str) and made):
        return None
    base = python.parent / made  # an absolute link target replaces the folder
    try:
        if not base.exists() or python.samefile(base):
            return None
        now = f"a link to {os.readlink(python)}" if python.is_symlink() else "a file"
    except OSError:
        return None
    return f"its interpreter bin/python is now {now}; it was made with {made}"

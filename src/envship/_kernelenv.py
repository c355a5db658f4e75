"""The environment a kernel is made for, as ``install_kernel`` must know it first.

A kernelspec records facts about its environment (the lock digest, the target and so
the platform, Python and glibc the launcher checks) and is named after it. All of that
comes from the environment's install marker, which must be complete and consistent,
or the kernel would start (or refuse to) for the wrong reasons. Reading and checking
it, reporting every problem at once, and deriving the kernel's name are kept apart
from :mod:`envship.kernels`, which only places and writes kernelspecs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import KernelError, Problem, TargetError
from .install import INCOMPLETE_NAME, MARKER_NAME
from .targets import Target

__all__ = ["checked_name", "env_label", "kernel_name_for", "read_env"]

# Kernel names: ASCII letters, digits and ``-._`` (the kernelspec docs); Jupyter lowercases.
_VALID_NAME = re.compile(r"^[a-z0-9._-]+$")


def env_label(env: Path) -> str:
    """The environment's name: ``ROOT/NAME/current`` and ``ROOT/NAME/versions/KEY``
    (layouts of ``envship env``) are called NAME, any other folder by its own name."""
    if env.name == "current":
        return env.parent.name
    if env.parent.name == "versions":
        return env.parent.parent.name
    return env.name


def kernel_name_for(env_name: str) -> str:
    """A valid kernel name from an environment's folder name: ``My Env`` -> ``my-env``."""
    name = re.sub(r"[^a-z0-9._-]+", "-", env_name.lower()).strip("-.")
    if not name:
        raise KernelError(
            f"cannot make a kernel name from {env_name!r}",
            hint="pass --name with letters, digits, '-', '.' or '_'",
        )
    return name


def checked_name(name: str) -> str:
    lowered = name.lower()
    if not _VALID_NAME.match(lowered) or lowered.startswith("."):
        raise KernelError(
            f"invalid kernel name {name!r}",
            problems=[Problem("--name", "only ASCII letters, digits, '-', '.' and '_'")],
            hint=f"for example {kernel_name_for(name)!r}" if name.strip("-. ") else None,
        )
    return lowered


def read_env(env: Path) -> tuple[dict[str, Any], Target]:
    """The install marker of the environment at ``env`` and its target; or a KernelError."""
    hint = f"make it with `envship install {env}` first"
    if not env.is_dir():
        raise KernelError(f"there is no environment at {env}", hint=hint)
    if (env / INCOMPLETE_NAME).exists():
        raise KernelError(
            f"the environment at {env} is half installed ({INCOMPLETE_NAME} is present)",
            hint="re-run `envship install` to finish it",
        )
    where = str(env / MARKER_NAME)
    try:
        marker = json.loads((env / MARKER_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KernelError(
            f"{env} is not an environment made by `envship install` (no {MARKER_NAME})",
            hint=hint,
        ) from None
    except (OSError, ValueError) as exc:
        marker, problems = {}, [Problem(where, str(exc))]
    else:
        problems = []
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
    if not (env / "bin" / "python").exists():
        problems.append(Problem(str(env / "bin" / "python"), "the interpreter is missing"))
    if problems or target is None:
        raise KernelError(
            f"the install record of {env} is incomplete",
            problems=problems,
            hint="re-run `envship install` to rebuild the environment",
        )
    return marker, target

"""The environment ``envship add`` extends, and the spec it records the addition in.

An addition is only safe on top of a lock: the environment must be a venv that
``envship install`` made and finished (its install marker lists the locked
distributions to hold), and not a version under an ``envship env`` root, which is
immutable and shared by every instance. The spec defaults to the one beside the
environment's lock. Finding and refusing these, each with the command that makes a
usable one, is kept apart from :mod:`envship.add`, which plans, installs and records
the addition.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ._envroot import shared_version
from .errors import AddError, AddInputError, Problem, SpecError
from .install import INCOMPLETE_NAME, MARKER_NAME
from .spec import find_spec

__all__ = ["checked_marker", "environment", "refuse_shared", "spec_path"]


def environment(env: Path | None) -> Path:
    if env is None:
        active = os.environ.get("VIRTUAL_ENV")
        if not active:
            raise AddInputError(
                "no environment to add to",
                hint="pass --env PATH (a venv made by `envship install`) or activate it",
            )
        env = Path(active)
    env = Path(os.path.abspath(env))
    if env.name.startswith("python") and env.parent.name == "bin" and not env.is_dir():
        env = env.parent.parent  # ENV/bin/python names its environment
    if not env.is_dir():
        raise AddInputError(
            f"there is no environment at {env}", hint="make one: envship install PATH"
        )
    return env


def checked_marker(env: Path) -> dict[str, Any]:
    if (env / INCOMPLETE_NAME).exists():
        raise AddError(
            f"the environment at {env} is half installed ({INCOMPLETE_NAME} is present)",
            hint=f"re-run `envship install {env}` to finish it",
        )
    try:
        data = json.loads((env / MARKER_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AddInputError(
            f"{env} is not an environment made by `envship install` (no {MARKER_NAME})",
            hint="envship add extends environments made from a lock: envship install PATH",
        ) from None
    except (OSError, ValueError) as exc:
        raise AddError(f"cannot read {env / MARKER_NAME}: {exc}") from None
    ok = isinstance(data, dict) and isinstance(data.get("packages"), list)
    if not ok or not (env / "bin" / "python").exists():
        raise AddError(
            f"the install record of {env} is incomplete",
            hint=f"re-run `envship install {env}` to rebuild it",
        )
    assert isinstance(data, dict)
    return data


def refuse_shared(env: Path, marker: dict[str, Any]) -> None:
    """A version under an `envship env` root is immutable and shared: never add to it."""
    shared = shared_version(env, marker)
    if shared is None:
        return
    name, root = shared
    raise AddInputError(
        f"{env} is a version of the shared environment {name!r} under {root}; "
        "versions are immutable and every instance uses them",
        hint=f"add the requirement to the spec, then `envship lock`, `envship fetch` and "
        f"`envship env create {name} --root {root}`; or `envship install .venv` for a "
        "private environment you can add to",
    )


def spec_path(spec: Path | None, marker: dict[str, Any]) -> Path:
    if spec is not None:
        return find_spec(spec)
    lock = marker.get("lock") or {}
    folders = [Path(str(lock["path"])).parent] if isinstance(lock.get("path"), str) else []
    for folder in [*folders, Path.cwd()]:
        with contextlib.suppress(SpecError):
            return find_spec(folder)
    raise SpecError(
        "no spec to record the addition in",
        problems=[Problem(str(f), "no envship.toml or [tool.envship]") for f in folders],
        hint="pass --spec with the envship.toml (or pyproject.toml) the environment's lock "
        "was made from",
    )

"""The throw-away uv project a spec is resolved in, and the uv runs on it.

``tool.uv.environments`` is read only from a project (``uv pip compile`` has no way to
restrict a universal resolution to the spec's targets), so the spec becomes one: its
dependencies and groups, one environment marker per target, ``no-build`` unless the spec
allows sdists, its indexes, and overrides that drop the packages
:mod:`envship._lockcheck` asks to resolve a target without. The credentials of the
spec's indexes reach uv under the variable names uv reads. How uv is driven is kept
here; :mod:`envship.lock` keeps what envship makes of uv's ``pylock.toml`` export.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w
from packaging.pylock import Pylock, PylockValidationError

from ._lockcheck import Resolve
from ._toml import loads_toml
from ._uv import plain_environment, uv_bin
from .errors import LockError, Problem
from .lockfile import LOCK_FILENAME
from .spec import Spec
from .targets import Target

__all__ = [
    "as_pylock",
    "requires_python",
    "resolver",
    "run_export",
    "run_lock",
    "uv_environment",
]


def _uv_env_name(name: str) -> str:
    # uv reads UV_INDEX_<NAME>_USERNAME / _PASSWORD, NAME upper-cased with
    # non-alphanumerics turned into underscores.
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def uv_environment(spec: Spec) -> dict[str, str]:
    """The process environment for uv: ours, plus the credentials of the spec's indexes
    under the names uv reads (``UV_INDEX_<NAME>_USERNAME`` / ``_PASSWORD``); without what
    colours or wraps uv's errors, which envship reads (``COLUMNS=80`` wrapped the URL of
    a failed Python download onto a line of its own)."""
    env = plain_environment(os.environ)
    for idx in spec.indexes:
        key = _uv_env_name(idx.name)
        for suffix, var in (("USERNAME", idx.username_env), ("PASSWORD", idx.password_env)):
            if var and var in os.environ:
                env[f"UV_INDEX_{key}_{suffix}"] = os.environ[var]
    return env


def requires_python(spec: Spec) -> str:
    """The project's ``requires-python``: the lowest Python of the spec or any target.

    A target may name its own Python, lower than the spec's (README, "a target may set
    ``python``"); uv refuses an environment marker outside ``requires-python`` ("don't
    overlap with Python requirement"), so every target's Python counts.
    """
    versions = {*spec.python, *(t.python for t in spec.targets)}
    return f">={min(versions, key=lambda v: tuple(int(p) for p in v.split('.')))}"


def _project(spec: Spec, targets: Sequence[Target], exclude: Sequence[str]) -> dict[str, Any]:
    uv: dict[str, Any] = {
        "package": False,
        "environments": list(dict.fromkeys(t.marker for t in targets)),  # variants share one
        "no-build": not spec.allow_sdist,
    }
    if exclude:
        # An override replaces every requirement on the package (uv "Dependency
        # overrides"); one whose marker is never true drops the package, so the
        # resolution goes on to the next package without a usable wheel.
        uv["override-dependencies"] = [f"{name} ; sys_platform == 'never'" for name in exclude]
    if spec.indexes:
        uv["index"] = [
            {"name": i.name, "url": i.url, **({"default": True} if i.default else {})}
            for i in spec.indexes
        ]
    project: dict[str, Any] = {
        "project": {
            "name": "envship-lock",
            "version": "0",
            "requires-python": requires_python(spec),
            "dependencies": list(spec.dependencies),
        },
        "tool": {"uv": uv},
    }
    if spec.groups:
        project["dependency-groups"] = {k: list(v) for k, v in spec.groups.items()}
    return project


def _run_uv(
    args: Sequence[str], cwd: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [uv_bin(), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def run_lock(
    work: Path,
    spec: Spec,
    env: Mapping[str, str],
    preferences: str | None,
    *,
    targets: Sequence[Target] | None = None,
    exclude: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    project = _project(spec, targets or spec.targets, exclude)
    (work / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    uv_lock = work / "uv.lock"
    if preferences:
        uv_lock.write_text(preferences, encoding="utf-8")
    else:
        uv_lock.unlink(missing_ok=True)
    return _run_uv(["lock", "--quiet"], work, env)


def run_export(work: Path, env: Mapping[str, str], *flags: str) -> dict[str, Any]:
    out = work / LOCK_FILENAME
    proc = _run_uv(
        ["export", "--frozen", "--quiet", "--format", "pylock.toml", *flags, "-o", str(out)],
        work,
        env,
    )
    if proc.returncode != 0:
        raise LockError("uv export failed", problems=[Problem("uv", proc.stderr.strip())])
    return loads_toml(out.read_text(encoding="utf-8"), "uv export", LockError)


def as_pylock(data: Mapping[str, Any]) -> Pylock:
    try:
        return Pylock.from_dict(data)
    except PylockValidationError as exc:  # pragma: no cover - would be a uv or envship bug
        raise LockError(
            "the resolved lock is not valid PEP 751",
            problems=[Problem(exc.context or "(top)", exc.message)],
        ) from None


def resolver(spec: Spec, env: Mapping[str, str], preferences: str | None) -> Resolve:
    """Resolve for one target without some packages, as :func:`list_missing` asks."""

    def resolve(target: Target, without: Sequence[str]) -> Pylock | str:
        with tempfile.TemporaryDirectory(prefix="envship-lock-") as tmp:
            work = Path(tmp)
            proc = run_lock(work, spec, env, preferences, targets=[target], exclude=without)
            if proc.returncode != 0:
                return proc.stderr
            return as_pylock(run_export(work, env, "--all-groups"))

    return resolve

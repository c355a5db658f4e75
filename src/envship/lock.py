"""Resolving a spec into a PEP 751 ``pylock.toml`` with uv, checked for every target.

uv resolves a throw-away project (``uv lock``: universal, restricted to the spec's
targets through ``tool.uv.environments``) and exports it as ``pylock.toml``. envship
then makes the lock its own:

* dependency groups become PEP 751 ``dependency-groups`` with ``'g' in
  dependency_groups`` markers (uv's export flattens the groups it is asked for, so each
  group is exported alone and the difference is marked);
* ``[tool.envship]`` records the spec digest and the targets, so ``lock --check`` and
  ``fetch`` need nothing but the lock;
* every selected package must have a wheel every target can install (platform, glibc
  level, CPython ABI). uv knows platforms and Python versions from the markers, but not
  glibc levels, so the tag check here is what catches a ``manylinux_2_34``-only wheel
  for a glibc 2.28 target.

Re-locking prefers the versions already locked (passed to uv as constraints) unless
``upgrade`` says otherwise; if the old pins cannot satisfy the new spec, uv resolves
again without them.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from packaging.pylock import Pylock, PylockValidationError
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from ._atomic import write_atomic
from ._toml import loads_toml
from ._uv import uv_bin  # re-exported: its home was here
from .errors import (
    EnvshipError,
    LockError,
    NetworkError,
    Problem,
    StaleLockError,
    UnsupportedTargetError,
)
from .lockfile import LOCK_FILENAME, LockFile, check_targets
from .spec import Spec

__all__ = ["LockResult", "check_lock", "lock", "lock_path_for", "uv_bin", "uv_environment"]

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class LockResult:
    """What ``lock`` wrote."""

    path: Path
    spec_digest: str
    packages: int
    targets: tuple[str, ...]
    changed: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "spec_digest": self.spec_digest,
            "packages": self.packages,
            "targets": list(self.targets),
            "changed": self.changed,
            "seconds": round(self.seconds, 3),
        }


def lock_path_for(spec: Spec) -> Path:
    base = spec.path.parent if spec.path else Path.cwd()
    return base / LOCK_FILENAME


def _uv_env_name(name: str) -> str:
    # uv reads UV_INDEX_<NAME>_USERNAME / _PASSWORD, NAME upper-cased with
    # non-alphanumerics turned into underscores.
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def uv_environment(spec: Spec) -> dict[str, str]:
    """The process environment for uv: ours, plus the credentials of the spec's indexes
    under the names uv reads (``UV_INDEX_<NAME>_USERNAME`` / ``_PASSWORD``)."""
    env = dict(os.environ)
    for idx in spec.indexes:
        key = _uv_env_name(idx.name)
        for suffix, var in (("USERNAME", idx.username_env), ("PASSWORD", idx.password_env)):
            if var and var in os.environ:
                env[f"UV_INDEX_{key}_{suffix}"] = os.environ[var]
    return env


def _project(spec: Spec, constraints: Sequence[str]) -> dict[str, Any]:
    low = min(spec.python, key=lambda v: tuple(int(p) for p in v.split(".")))
    uv: dict[str, Any] = {
        "package": False,
        "environments": [t.marker for t in spec.targets],
        "no-build": not spec.allow_sdist,
    }
    if constraints:
        uv["constraint-dependencies"] = list(constraints)
    if spec.indexes:
        uv["index"] = [
            {"name": i.name, "url": i.url, **({"default": True} if i.default else {})}
            for i in spec.indexes
        ]
    project: dict[str, Any] = {
        "project": {
            "name": "envship-lock",
            "version": "0",
            "requires-python": f">={low}",
            "dependencies": list(spec.dependencies),
        },
        "tool": {"uv": uv},
    }
    if spec.groups:
        project["dependency-groups"] = {k: list(v) for k, v in spec.groups.items()}
    return project


_NO_WHEEL = re.compile(
    r"Because (?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+) has no "
    r"(?:`(?P<markers>[^`]*)`-compatible|usable) wheels"
)
_SPLIT = re.compile(r"split \(markers: (?P<markers>[^)]*)\)")
_URL = re.compile(r"((?:https?|file)://[^\s`'\"]+)")


def _uv_failure(spec: Spec, stderr: str) -> EnvshipError:
    """Turn uv's error text into a structured error (uv reports the first conflict)."""
    text = stderr.strip()
    if "Failed to fetch" in text or "Could not connect" in text or "dns error" in text:
        match = _URL.search(text)
        url = match.group(1) if match else "(the configured index)"
        return NetworkError(
            f"cannot reach the package index: {url}",
            url=url,
            hint="check the index URL in the spec, your network or proxy, and credentials",
        )
    no_wheel = _NO_WHEEL.search(text)
    if no_wheel:
        markers = no_wheel.group("markers") or ""
        split = _SPLIT.search(text)
        context = f"{markers} {split.group('markers') if split else ''}"
        hit = [
            t.name
            for t in spec.targets
            if f"'{t.platform.machine}'" in context and f"'{t.python}" in context
        ] or [t.name for t in spec.targets]
        name, version = no_wheel.group("name"), no_wheel.group("version")
        return UnsupportedTargetError(
            "some locked packages have no wheel for some targets",
            problems=[Problem(f"{name} {version}", f"no wheel for target {t!r}") for t in hit],
            hint="pick a version with wheels for every target, drop the target, or set "
            "allow-sdist = true (building runs the package's code)",
        )
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return LockError(
        "uv could not resolve the spec",
        problems=[Problem("uv", ln.strip()) for ln in lines[-12:]],
    )


def _run_uv(
    args: Sequence[str], cwd: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [uv_bin(), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def _export(work: Path, env: Mapping[str, str], *flags: str) -> dict[str, Any]:
    out = work / LOCK_FILENAME
    proc = _run_uv(
        ["export", "--frozen", "--quiet", "--format", "pylock.toml", *flags, "-o", str(out)],
        work,
        env,
    )
    if proc.returncode != 0:
        raise LockError("uv export failed", problems=[Problem("uv", proc.stderr.strip())])
    return loads_toml(out.read_text(encoding="utf-8"), "uv export", LockError)


def _previous_pins(path: Path, upgrade: bool, upgrade_packages: Sequence[str]) -> list[str]:
    if upgrade or not path.is_file():
        return []
    try:
        previous = LockFile.load(path)
    except LockError:
        return []  # a broken old lock gives no preferences; it is rewritten below
    skip = {canonicalize_name(n) for n in upgrade_packages}
    pins = []
    for package in previous.pylock.packages:
        if package.name in skip or package.version is None:
            continue
        marker = f" ; {package.marker}" if package.marker else ""
        pins.append(f"{package.name}=={package.version}{marker}")
    return pins


def _mark_groups(
    full: dict[str, Any], base: dict[str, Any], by_group: Mapping[str, dict[str, Any]]
) -> None:
    """Add ``'g' in dependency_groups`` to packages that only groups pull in."""
    in_base = {(p["name"], p.get("version")) for p in base.get("packages", [])}
    for package in full.get("packages", []):
        key = (package["name"], package.get("version"))
        if key in in_base:
            continue
        groups = sorted(
            g
            for g, data in by_group.items()
            if key in {(p["name"], p.get("version")) for p in data.get("packages", [])}
        )
        if not groups:
            continue
        cond = " or ".join(f"'{g}' in dependency_groups" for g in groups)
        marker = package.get("marker")
        package["marker"] = f"({marker}) and ({cond})" if marker else cond


def lock(
    spec: Spec,
    *,
    output: Path | None = None,
    upgrade: bool = False,
    upgrade_packages: Sequence[str] = (),
    log: Log | None = None,
) -> LockResult:
    """Resolve ``spec`` with uv and write a checked ``pylock.toml``.

    Raises :class:`UnsupportedTargetError` listing every (package, version, target)
    without an installable wheel; nothing is written then.
    """
    started = time.monotonic()
    say = log or (lambda _msg: None)
    path = output or lock_path_for(spec)
    env = uv_environment(spec)
    pins = _previous_pins(path, upgrade, upgrade_packages)
    with tempfile.TemporaryDirectory(prefix="envship-lock-") as tmp:
        work = Path(tmp)
        for attempt in [pins, []] if pins else [[]]:
            (work / "pyproject.toml").write_text(tomli_w.dumps(_project(spec, attempt)))
            say(
                f"resolving {len(spec.dependencies)} requirements for "
                f"{len(spec.targets)} target(s) with uv"
            )
            args = ["lock", "--quiet"]
            if upgrade:
                args.append("--upgrade")
            proc = _run_uv(args, work, env)
            if proc.returncode == 0:
                break
            if attempt:
                say("the locked versions no longer fit the spec; resolving afresh")
        else:
            raise _uv_failure(spec, proc.stderr)
        full = _export(work, env, "--all-groups")
        if spec.groups:
            base = _export(work, env, "--no-default-groups")
            by_group = {g: _export(work, env, "--only-group", g) for g in spec.groups}
            _mark_groups(full, base, by_group)
    data = _finish(full, spec)
    try:
        pylock = Pylock.from_dict(data)
    except PylockValidationError as exc:  # pragma: no cover - would be a uv or envship bug
        raise LockError(
            "the resolved lock is not valid PEP 751",
            problems=[Problem(exc.context or "(top)", exc.message)],
        ) from None
    say("checking every target can install every package")
    problems = check_targets(
        pylock,
        spec.targets,
        allow_sdist=spec.allow_sdist,
        groups=tuple(spec.groups),
        source=str(path),
    )
    if problems:
        raise UnsupportedTargetError(
            "some locked packages have no installable wheel for some targets",
            problems=problems,
            hint="constrain those packages to versions with wheels for every target, raise "
            "the target's glibc level, drop the target, or set allow-sdist = true",
        )
    text = _HEADER + tomli_w.dumps(data)
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    if old != text:
        write_atomic(path, text)
    return LockResult(
        path=path,
        spec_digest=spec.digest,
        packages=len(pylock.packages),
        targets=tuple(t.name for t in spec.targets),
        changed=old != text,
        seconds=time.monotonic() - started,
    )


_HEADER = "# Written by `envship lock` (PEP 751). Do not edit: change the spec and re-lock.\n"


def _prune_wheels(data: dict[str, Any], spec: Spec) -> None:
    """Drop wheels no declared target can install (Windows, macOS, musl, other ABIs).

    uv's universal export lists every wheel of a release; a lock checked per target
    only needs those its targets use, and stays reviewable. PEP 751 allows a subset.
    """
    accepted: set[Tag] = set()
    for target in spec.targets:
        accepted.update(target.tags())
    for package in data.get("packages", []):
        wheels = package.get("wheels")
        if not wheels:
            continue
        kept = [w for w in wheels if _wheel_tags_of(w) & accepted]
        if kept:
            package["wheels"] = kept
        else:
            # Keep them: the per-target check then names what the package does offer.
            package["wheels"] = wheels


def _wheel_tags_of(wheel: Mapping[str, Any]) -> frozenset[Tag]:
    source = str(wheel.get("name") or wheel.get("url") or wheel.get("path") or "")
    try:
        return parse_wheel_filename(source.rstrip("/").rsplit("/", 1)[-1])[3]
    except InvalidWheelFilename:
        return frozenset()


def _finish(data: dict[str, Any], spec: Spec) -> dict[str, Any]:
    _prune_wheels(data, spec)
    data["created-by"] = "envship"
    data["environments"] = [t.marker for t in spec.targets]
    if spec.groups:
        data["dependency-groups"] = sorted(spec.groups)
        data["default-groups"] = []
    data["tool"] = {
        "envship": {
            "spec-digest": spec.digest,
            "name": spec.name,
            # The lock travels without its spec (to an image build, a kernel on another
            # machine), so it carries what those need to name the environment.
            "display-name": spec.display_name,
            "allow-sdist": spec.allow_sdist,
            "targets": [t.to_json() for t in spec.targets],
        }
    }
    # Keep key order stable for readable diffs: the spec's order, packages last.
    order = [
        "lock-version",
        "created-by",
        "environments",
        "requires-python",
        "dependency-groups",
        "default-groups",
        "packages",
        "tool",
    ]
    return {k: data[k] for k in order if k in data} | {
        k: v for k, v in data.items() if k not in order
    }


def check_lock(spec: Spec, path: Path | None = None) -> LockFile:
    """Raise :class:`StaleLockError` unless the lock at ``path`` was made from ``spec``."""
    path = path or lock_path_for(spec)
    if not path.is_file():
        raise StaleLockError(f"{path} does not exist", hint="run `envship lock`")
    lockfile = LockFile.load(path)
    if lockfile.spec_digest != spec.digest:
        raise StaleLockError(
            f"{path} is stale: the spec changed since it was locked",
            problems=[
                Problem("spec digest", spec.digest),
                Problem("lock's spec-digest", lockfile.spec_digest or "(none)"),
            ],
            hint="run `envship lock`",
        )
    return lockfile

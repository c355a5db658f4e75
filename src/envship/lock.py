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

Re-locking prefers the versions already locked unless ``upgrade`` says otherwise: they
reach uv as the preferences of a ``uv.lock`` (what ``uv lock`` keeps when it can), so a
pin the new spec rules out moves alone and every other pin stays. Every version that
moved is reported in :class:`LockResult`, so nothing moves silently.
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
from packaging.utils import (
    InvalidName,
    canonicalize_name,
)

from ._atomic import write_atomic
from ._lockcheck import (
    UNSUPPORTED_HINT,
    Resolve,
    check_resolution,
    prune_wheels,
    uv_failure,
    uv_lines,
)
from ._toml import loads_toml
from ._uv import uv_bin  # re-exported: its home was here
from .errors import (
    LockError,
    Problem,
    StaleLockError,
    UnsupportedTargetError,
)
from .lockfile import LOCK_FILENAME, LockFile
from .spec import Spec
from .targets import Target

__all__ = [
    "LockResult",
    "VersionChange",
    "check_lock",
    "lock",
    "lock_path_for",
    "lock_path_problem",
    "uv_bin",
    "uv_environment",
]

Log = Callable[[str], None]

# PEP 751 "File Name": pylock.toml, or pylock.<name>.toml with no dot in <name>.
_LOCK_NAME = re.compile(r"^pylock\.([^.]+\.)?toml$")


@dataclass(frozen=True, slots=True)
class VersionChange:
    """A package whose locked versions differ from the previous lock's."""

    name: str
    old: tuple[str, ...]  # () when the package is newly locked
    new: tuple[str, ...]  # () when the package is no longer locked
    requested: bool  # ``upgrade`` or ``upgrade_packages`` let it move

    def __str__(self) -> str:
        if not self.old:
            return f"+ {self.name} {', '.join(self.new)}"
        if not self.new:
            return f"- {self.name} {', '.join(self.old)}"
        return f"{self.name} {', '.join(self.old)} -> {', '.join(self.new)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "old": list(self.old),
            "new": list(self.new),
            "requested": self.requested,
        }


@dataclass(frozen=True, slots=True)
class LockResult:
    """What ``lock`` wrote, what moved since the previous lock, and what to know."""

    path: Path
    spec_digest: str
    packages: int
    targets: tuple[str, ...]
    changed: bool
    seconds: float
    changes: tuple[VersionChange, ...] = ()  # against the previous lock, when there was one
    notes: tuple[str, ...] = ()  # warnings: a replaced unreadable lock, an unknown -P name

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "spec_digest": self.spec_digest,
            "packages": self.packages,
            "targets": list(self.targets),
            "changed": self.changed,
            "seconds": round(self.seconds, 3),
            "changes": [c.to_json() for c in self.changes],
            "notes": list(self.notes),
        }


def lock_path_for(spec: Spec) -> Path:
    base = spec.path.parent if spec.path else Path.cwd()
    return base / LOCK_FILENAME


def lock_path_problem(path: Path, *, writing: bool = True) -> str | None:
    """Why ``path`` cannot name a lock (to write, with ``writing``), or None if it can."""
    if path.is_dir():
        return f"{path} is a folder; name the lock file, e.g. {path / LOCK_FILENAME}"
    if not _LOCK_NAME.match(path.name):
        return (
            f"{path.name!r} is not a PEP 751 lock file name: use pylock.toml or pylock.<name>.toml"
        )
    if writing and not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        return f"folder {path.parent} {what}"
    return None


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


def _requires_python(spec: Spec) -> str:
    return f">={min(spec.python, key=lambda v: tuple(int(p) for p in v.split('.')))}"


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
            "requires-python": _requires_python(spec),
            "dependencies": list(spec.dependencies),
        },
        "tool": {"uv": uv},
    }
    if spec.groups:
        project["dependency-groups"] = {k: list(v) for k, v in spec.groups.items()}
    return project


def _read_previous(path: Path) -> tuple[Pylock | None, str | None]:
    """The lock being replaced (None if absent or unreadable), and a note if it is odd."""
    if not path.exists():
        return None, None
    try:
        previous = LockFile.load(path).pylock
    except LockError as exc:
        why = str(exc.problems[0]) if exc.problems else exc.message
        return None, (
            f"the existing {path} could not be read ({why}); it was replaced and none of "
            "its versions were kept"
        )
    if previous.created_by != "envship":
        return previous, (
            f"{path} was written by {previous.created_by!r}, not envship; its versions "
            "were preferred and it was replaced"
        )
    return previous, None


def _versions(pylock: Pylock | None) -> dict[str, tuple[str, ...]]:
    found: dict[str, set[str]] = {}
    for package in pylock.packages if pylock else ():
        if package.version is not None:
            found.setdefault(canonicalize_name(package.name), set()).add(str(package.version))
    return {name: tuple(sorted(v)) for name, v in found.items()}


def _preferences(spec: Spec, previous: Pylock | None, skip: Callable[[str], bool]) -> str | None:
    """A ``uv.lock`` that hands uv the previous versions as preferences.

    ``uv lock`` keeps the versions of an existing ``uv.lock`` where the project still
    allows them (uv-requirements ``read_lock_requirements``) and moves only the rest;
    name, version and registry are all it reads for that. Constraints would be all or
    nothing: one pin the new spec rules out would fail them all.
    """
    # Keyed by Version: uv refuses a uv.lock with "1.0" and "1.0.0" of one package.
    pins = {
        (canonicalize_name(p.name), p.version, p.index): str(p.version)
        for p in (previous.packages if previous else ())
        if p.version is not None and p.index and not skip(canonicalize_name(p.name))
    }
    if not pins:
        return None
    packages = [
        {"name": name, "version": text, "source": {"registry": index}}
        for (name, _, index), text in sorted(pins.items(), key=lambda kv: str(kv[0]))
    ]
    data = {"version": 1, "requires-python": _requires_python(spec), "package": packages}
    return tomli_w.dumps(data)


def _upgrade_names(names: Sequence[str]) -> frozenset[str]:
    bad = []
    out = set()
    for name in names:
        try:
            out.add(canonicalize_name(name, validate=True))
        except InvalidName:
            bad.append(Problem(repr(name), "not a valid package name"))
    if bad:
        raise LockError("invalid package names to upgrade", problems=bad)
    return frozenset(out)


def _run_uv(
    args: Sequence[str], cwd: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [uv_bin(), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def _uv_lock(
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


def _pylock(data: Mapping[str, Any]) -> Pylock:
    try:
        return Pylock.from_dict(data)
    except PylockValidationError as exc:  # pragma: no cover - would be a uv or envship bug
        raise LockError(
            "the resolved lock is not valid PEP 751",
            problems=[Problem(exc.context or "(top)", exc.message)],
        ) from None


def _resolver(spec: Spec, env: Mapping[str, str], preferences: str | None) -> Resolve:
    """Resolve for one target without some packages, as :func:`list_missing` asks."""

    def resolve(target: Target, without: Sequence[str]) -> Pylock | str:
        with tempfile.TemporaryDirectory(prefix="envship-lock-") as tmp:
            work = Path(tmp)
            proc = _uv_lock(work, spec, env, preferences, targets=[target], exclude=without)
            if proc.returncode != 0:
                return proc.stderr
            return _pylock(_export(work, env, "--all-groups"))

    return resolve


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


def _changes(
    old: Mapping[str, tuple[str, ...]],
    new: Mapping[str, tuple[str, ...]],
    upgrade: bool,
    names: frozenset[str],
) -> tuple[VersionChange, ...]:
    return tuple(
        VersionChange(n, old.get(n, ()), new.get(n, ()), upgrade or n in names)
        for n in sorted(old.keys() | new.keys())
        if old.get(n, ()) != new.get(n, ())
    )


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
    without an installable wheel; nothing is written then. ``output`` must be named
    ``pylock.toml`` or ``pylock.<name>.toml`` (PEP 751) in an existing folder.
    """
    started = time.monotonic()
    say = log or (lambda _msg: None)
    path = output or lock_path_for(spec)
    problem = lock_path_problem(path)
    if problem is not None:
        raise LockError(f"cannot write the lock to {path}", problems=[Problem(str(path), problem)])
    names = _upgrade_names(upgrade_packages)
    previous, note = _read_previous(path)
    notes = [note] if note else []
    preferences = _preferences(spec, previous, lambda n: upgrade or n in names)
    env = uv_environment(spec)
    with tempfile.TemporaryDirectory(prefix="envship-lock-") as tmp:
        work = Path(tmp)
        say(
            f"resolving {len(spec.dependencies)} requirements for "
            f"{len(spec.targets)} target(s) with uv"
        )
        proc = _uv_lock(work, spec, env, preferences)
        if proc.returncode != 0 and preferences:
            # Preferences never make a resolution fail, but uv refuses a uv.lock it
            # cannot read (an index URL it cannot parse, a format it no longer takes):
            # then resolve without them; the changes below show what moved.
            retry = _uv_lock(work, spec, env, None)
            if retry.returncode == 0:
                why = next(iter(uv_lines(proc.stderr)), "")
                notes.append(f"uv could not use the locked versions ({why}); resolved afresh")
            preferences, proc = None, retry
        if proc.returncode != 0:
            raise uv_failure(
                proc.stderr,
                spec.targets,
                _resolver(spec, env, preferences),
                allow_sdist=spec.allow_sdist,
                groups=tuple(spec.groups),
                log=say,
            )
        full = _export(work, env, "--all-groups")
        if spec.groups:
            base = _export(work, env, "--no-default-groups")
            by_group = {g: _export(work, env, "--only-group", g) for g in spec.groups}
            _mark_groups(full, base, by_group)
    say("checking every target can install every package")
    # Before pruning: a wheel no target takes is the one the message should name.
    problems = check_resolution(
        _pylock(full), spec.targets, allow_sdist=spec.allow_sdist, groups=tuple(spec.groups)
    )
    if problems:
        raise UnsupportedTargetError(
            "some locked packages have no installable wheel for some targets",
            problems=problems,
            hint=UNSUPPORTED_HINT,
        )
    data = _finish(full, spec)
    pylock = _pylock(data)
    old_versions, versions = _versions(previous), _versions(pylock)
    notes.extend(
        f"{n!r} was named to upgrade but is not locked"
        for n in sorted(names - old_versions.keys() - versions.keys())
    )
    text = (_HEADER + tomli_w.dumps(data)).encode("utf-8")
    try:
        old = path.read_bytes() if path.is_file() else None
        if old != text:
            write_atomic(path, text)
    except OSError as exc:
        raise LockError(f"cannot write {path}: {exc.strerror or exc}") from None
    return LockResult(
        path=path,
        spec_digest=spec.digest,
        packages=len(pylock.packages),
        targets=tuple(t.name for t in spec.targets),
        changed=old != text,
        seconds=time.monotonic() - started,
        changes=_changes(old_versions, versions, upgrade, names) if previous else (),
        notes=tuple(notes),
    )


_HEADER = "# Written by `envship lock` (PEP 751). Do not edit: change the spec and re-lock.\n"


def _finish(data: dict[str, Any], spec: Spec) -> dict[str, Any]:
    prune_wheels(data, spec.targets)
    data["created-by"] = "envship"
    data["environments"] = list(dict.fromkeys(t.marker for t in spec.targets))
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
    if path.is_dir():
        raise LockError(
            f"{path} is a folder, not a lock file", hint=f"name the file: {path / LOCK_FILENAME}"
        )
    if not path.is_file():
        raise StaleLockError(f"{path} does not exist", hint="run `envship lock`")
    lockfile = LockFile.load(path)
    if lockfile.spec_digest is None:
        raise StaleLockError(
            f"{path} was not written by `envship lock`: it records no spec digest",
            problems=[
                Problem(f"{path}: created-by", lockfile.pylock.created_by),
                Problem(f"{path}: tool.envship.spec-digest", "missing"),
            ],
            hint="run `envship lock` to lock the spec into it",
        )
    if lockfile.spec_digest != spec.digest:
        raise StaleLockError(
            f"{path} is stale: the spec changed since it was locked",
            problems=[
                Problem("spec digest", spec.digest),
                Problem("lock's spec-digest", lockfile.spec_digest),
            ],
            hint="run `envship lock`",
        )
    return lockfile

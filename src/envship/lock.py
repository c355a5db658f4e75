"""Resolving a spec into a PEP 751 ``pylock.toml`` with uv, checked for every target.

uv resolves a throw-away project (``uv lock``: universal, restricted to the spec's
targets through ``tool.uv.environments``; :mod:`envship._uvproject`) and exports it as
``pylock.toml``. envship then makes the lock its own:

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
moved is reported in :class:`LockResult`, so nothing moves silently
(:mod:`envship._relock`).
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from packaging.pylock import PackageSdist, Pylock

from ._atomic import write_atomic
from ._lockcheck import (
    UNSUPPORTED_HINT,
    check_resolution,
    prune_wheels,
    uv_failure,
    uv_lines,
)
from ._relock import (
    VersionChange,
    keep_sizes,
    locked_versions,
    preferences_lock,
    read_previous,
    upgrade_names,
    version_changes,
)
from ._uv import uv_bin  # re-exported: its home was here
from ._uvproject import as_pylock, resolver, run_export, run_lock, uv_environment
from .errors import (
    EnvshipError,
    InvalidLockError,
    LockError,
    Problem,
    StaleLockError,
    UnsupportedTargetError,
)
from .lockfile import LOCK_FILENAME, LockFile
from .spec import Spec, find_spec

__all__ = [
    "LockResult",
    "VersionChange",
    "check_lock",
    "lock",
    "lock_path_for",
    "lock_path_problem",
    "relock_command",
    "uv_bin",
    "uv_environment",
]

Log = Callable[[str], None]

# PEP 751 "File Name": pylock.toml, or pylock.<name>.toml with no dot in <name>.
# fullmatch: "$" alone also matches before a final newline.
_LOCK_NAME = re.compile(r"pylock\.([^.]+\.)?toml")


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


def relock_command(spec: Spec, path: Path | None = None) -> str:
    """``envship lock`` as typed in the current folder to write ``spec``'s lock to ``path``
    (default: beside the spec): ``--spec`` unless this folder's own spec is ``spec``, and
    ``-o`` unless ``path`` is where ``lock`` writes it by default. Hints print it, and a
    bare ``envship lock`` would lock whatever spec the current folder holds, or none."""
    words = ["envship", "lock"]
    if spec.path is not None and not _found_here(spec.path):
        words += ["--spec", shlex.quote(str(spec.path))]
    if path is not None and os.path.abspath(path) != os.path.abspath(lock_path_for(spec)):
        words += ["-o", shlex.quote(os.path.abspath(path))]
    return " ".join(words)


def _found_here(spec_path: Path) -> bool:
    """Whether ``envship lock`` in the current folder reads the spec at ``spec_path``."""
    try:
        return find_spec(Path()).resolve() == spec_path.resolve()
    except (EnvshipError, OSError):  # no spec here, or one that cannot be read
        return False


def lock_path_problem(path: Path, *, writing: bool = True) -> str | None:
    """Why ``path`` cannot name a lock (to write, with ``writing``), or None if it can."""
    if path.is_dir():
        return f"{path} is a folder; name the lock file, e.g. {path / LOCK_FILENAME}"
    if not _LOCK_NAME.fullmatch(path.name):
        return (
            f"{path.name!r} is not a PEP 751 lock file name: use pylock.toml or pylock.<name>.toml"
        )
    if writing and not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        return f"folder {path.parent} {what}"
    if writing and path.exists() and not path.is_file():
        # The write replaces the file a link ends at: never a device or a FIFO (a link
        # to /dev/zero, run as root, would have replaced /dev/zero with the lock).
        return f"{path} is not a regular file (a device, a FIFO or a socket): name a lock file"
    return None


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
    without an installable wheel; nothing is written then. ``output`` must be named
    ``pylock.toml`` or ``pylock.<name>.toml`` (PEP 751) in an existing folder, else
    :class:`InvalidLockError` (bad input, exit 2, as the CLI's usage error for ``-o``).
    """
    started = time.monotonic()
    say = log or (lambda _msg: None)
    path = output or lock_path_for(spec)
    problem = lock_path_problem(path)
    if problem is not None:
        raise InvalidLockError(
            f"cannot write the lock to {path}", problems=[Problem(str(path), problem)]
        )
    names = upgrade_names(upgrade_packages)
    previous, note = read_previous(path)
    notes = [note] if note else []
    preferences = preferences_lock(spec, previous, lambda n: upgrade or n in names)
    env = uv_environment(spec)
    with tempfile.TemporaryDirectory(prefix="envship-lock-") as tmp:
        work = Path(tmp)
        say(
            f"resolving {len(spec.dependencies)} requirements for "
            f"{len(spec.targets)} target(s) with uv"
        )
        proc = run_lock(work, spec, env, preferences)
        if proc.returncode != 0 and preferences:
            # Preferences never make a resolution fail, but uv refuses a uv.lock it
            # cannot read (an index URL it cannot parse, a format it no longer takes):
            # then resolve without them; the changes below show what moved.
            retry = run_lock(work, spec, env, None)
            if retry.returncode == 0:
                why = next(iter(uv_lines(proc.stderr)), "")
                notes.append(f"uv could not use the locked versions ({why}); resolved afresh")
            preferences, proc = None, retry
        if proc.returncode != 0:
            raise uv_failure(
                proc.stderr,
                spec.targets,
                resolver(spec, env, preferences),
                allow_sdist=spec.allow_sdist,
                groups=tuple(spec.groups),
                log=say,
            )
        full = run_export(work, env, "--all-groups")
        if spec.groups:
            base = run_export(work, env, "--no-default-groups")
            by_group = {g: run_export(work, env, "--only-group", g) for g in spec.groups}
            _mark_groups(full, base, by_group)
    say("checking every target can install every package")
    # Before pruning: a wheel no target takes is the one the message should name.
    problems = check_resolution(
        as_pylock(full), spec.targets, allow_sdist=spec.allow_sdist, groups=tuple(spec.groups)
    )
    if problems:
        raise UnsupportedTargetError(
            "some locked packages have no installable wheel for some targets",
            problems=problems,
            hint=UNSUPPORTED_HINT,
        )
    data = _finish(full, spec)
    keep_sizes(data, previous)
    pylock = as_pylock(data)
    old_versions, versions = locked_versions(previous), locked_versions(pylock)
    notes.extend(
        f"{n!r} was named to upgrade but is not locked"
        for n in sorted(names - old_versions.keys() - versions.keys())
    )
    built = _built_from_source(pylock, spec) if spec.allow_sdist else []
    if built:
        # PEP 751 locks no build requirements: the store will not hold a build backend,
        # so an offline install cannot build these (install says so too, when it fails).
        notes.append(
            f"{', '.join(built)} {'are' if len(built) > 1 else 'is'} installed from source "
            "on some target: building needs a build backend (e.g. setuptools) from an "
            "index, which an offline install from the store does not have"
        )
    text = (_HEADER + tomli_w.dumps(data)).encode("utf-8")
    try:
        old = path.read_bytes() if path.is_file() else None
        if old != text:
            write_atomic(path, text, through_links=True)  # a linked lock stays linked
    except OSError as exc:
        raise LockError(f"cannot write {path}: {exc.strerror or exc}") from None
    return LockResult(
        path=path,
        spec_digest=spec.digest,
        packages=len(pylock.packages),
        targets=tuple(t.name for t in spec.targets),
        changed=old != text,
        seconds=time.monotonic() - started,
        changes=version_changes(old_versions, versions, upgrade, names) if previous else (),
        notes=tuple(notes),
    )


_HEADER = "# Written by `envship lock` (PEP 751). Do not edit: change the spec and re-lock.\n"


def _built_from_source(pylock: Pylock, spec: Spec) -> list[str]:
    """The packages some target installs from their sdist (PEP 751 selection)."""
    found: set[str] = set()
    for target in spec.targets:
        chosen = pylock.select(
            environment=target.marker_environment(),
            tags=target.tags(),
            dependency_groups=pylock.dependency_groups or (),
        )
        found.update(str(p.name) for p, artifact in chosen if isinstance(artifact, PackageSdist))
    return sorted(found)


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


def check_lock(spec: Spec, path: str | os.PathLike[str] | None = None) -> LockFile:
    """Raise :class:`StaleLockError` unless the lock at ``path`` was made from ``spec``.

    Its hint is the ``envship lock`` that remakes that very lock from the current folder
    (:func:`relock_command`); a folder at ``path`` is bad input (:class:`InvalidLockError`).
    """
    path = Path(path) if path is not None else lock_path_for(spec)
    if path.is_dir():
        raise InvalidLockError(
            f"{path} is a folder, not a lock file", hint=f"name the file: {path / LOCK_FILENAME}"
        )
    relock = relock_command(spec, path)
    if not path.is_file():
        raise StaleLockError(f"{path} does not exist", hint=f"run `{relock}`")
    lockfile = LockFile.load(path)
    if lockfile.spec_digest is None:
        raise StaleLockError(
            f"{path} was not written by `envship lock`: it records no spec digest",
            problems=[
                Problem(f"{path}: created-by", lockfile.pylock.created_by),
                Problem(f"{path}: tool.envship.spec-digest", "missing"),
            ],
            hint=f"run `{relock}` to lock the spec into it",
        )
    if lockfile.spec_digest != spec.digest:
        raise StaleLockError(
            f"{path} is stale: the spec changed since it was locked",
            problems=[
                Problem("spec digest", spec.digest),
                Problem("lock's spec-digest", lockfile.spec_digest),
            ],
            hint=f"run `{relock}`",
        )
    # The digest covers what resolution reads (Spec.lock_inputs), not the names the lock
    # carries for kernels and images; comparing them here keeps every existing lock's
    # digest valid.
    renamed = [
        Problem(key, f"the spec says {ours!r}, the lock records {theirs!r}")
        for key, ours, theirs in (
            ("name", spec.name, lockfile.name),
            ("kernel.display-name", spec.display_name, lockfile.display_name),
        )
        if ours != theirs
    ]
    if renamed:
        raise StaleLockError(
            f"{path} is stale: the spec's {' and '.join(p.where for p in renamed)} changed "
            "since it was locked (kernels and images take their names from the lock)",
            problems=renamed,
            hint=f"run `{relock}`",
        )
    return lockfile

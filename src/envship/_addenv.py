"""The environment ``envship add`` extends, and the spec it records the addition in.

An addition is only safe on top of a lock: the environment must be a venv that
``envship install`` made and finished (its install marker lists the locked
distributions to hold), and not a version under an ``envship env`` root, which is
immutable and shared by every instance. The spec defaults to the one beside the
environment's lock. Finding and refusing these, each with the command that makes a
usable one, is kept apart from :mod:`envship.add`, which plans, installs and records
the addition.

Every command a hint gives names the lock the install marker records, and the groups
the environment was installed with: a bare ``envship install ENV`` reads
``pylock.toml`` in the current folder (missing elsewhere, or another project's, which
it would install into the environment), and installs every group of the lock (so an
environment installed with ``--group dev`` would be changed, not repaired).

The lock is read again for what it pins beyond the installed distributions: versions
of packages only groups the environment was installed without need (the marker's
``packages`` lists what was installed, not what the lock holds). ``envship add`` must
not move those either: the next ``envship lock`` would take the new version for every
install of those groups.

An addition holds the lock ``envship install`` holds on the environment (:func:`env_locked`)
from before it reads the install marker until it has recorded the addition: an install
running meanwhile (``--reinstall``, an update) marks the environment half installed until
it is done, which an addition that looked before taking the lock took for a failed one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._envroot import shared_version
from ._flock import acquire
from ._installmarker import MarkerDamaged, load_marker, read_record, store_option, work_folder
from .errors import AddError, AddInputError, EnvshipError, Problem, SpecError
from .install import INCOMPLETE_NAME, MARKER_NAME
from .lockfile import LockFile
from .spec import find_spec

__all__ = [
    "GroupPins",
    "before_lock",
    "checked_marker",
    "env_locked",
    "environment",
    "group_locked",
    "lock_command",
    "locked_elsewhere",
    "not_installed",
    "refuse_shared",
    "spec_path",
    "work_folder",
]

# canonical name -> (locked version, the groups not installed that need it)
GroupPins = dict[str, tuple[str, tuple[str, ...]]]


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


def _recorded_lock(marker: Mapping[str, Any]) -> str | None:
    lock = marker.get("lock")
    path = lock.get("path") if isinstance(lock, dict) else None
    # A damaged record's path may hold what no path can: NUL, which every file call
    # refuses, or a lone surrogate, which no file name decodes to.
    if not isinstance(path, str) or not path or "\0" in path:
        return None
    try:
        path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
    return path


def _lock_shape(path: str | Path) -> tuple[int, tuple[str, ...]]:
    """How many targets the lock at ``path`` has, and its dependency groups (0 and none
    when it cannot be read)."""
    try:
        lock = LockFile.load(Path(path))
    except EnvshipError:
        return 0, ()
    return len(lock.targets), lock.groups


def lock_command(
    verb: Literal["install", "verify"],
    env: Path,
    marker: Mapping[str, Any],
    lock: Path | None = None,
) -> str:
    """```envship install ENV --lock LOCK ...``` (or ``verify``), shell-quoted and in
    backticks, for ``env`` and ``lock`` (default: the lock its install marker records):
    with the groups it was installed with, and its target when the lock has several
    (both commands would otherwise take the first that fits this machine), and the store
    its wheels came from when it is not the default one. The interpreter, byte-code and
    link mode are the environment's own, which install keeps by itself. Without a lock to
    name, LOCK is said in words."""
    q = shlex.quote  # pasted into a shell as it is
    path = str(lock) if lock is not None else _recorded_lock(marker)
    groups = marker.get("groups")
    target = marker.get("target")
    name = target.get("name") if isinstance(target, dict) else None
    extra = store_option(marker)
    targets, lock_groups = _lock_shape(path) if path is not None else (0, ())
    if isinstance(name, str) and name and targets > 1:
        extra += f" --target {q(name)}"
    # Both commands' default is every group of the lock.
    for group in groups if isinstance(groups, list) else ():
        if isinstance(group, str):
            extra += f" --group {q(group)}"
    if groups == [] and lock_groups:
        extra += " --no-groups"
    if path is not None:
        return f"`envship {verb} {q(str(env))} --lock {q(path)}{extra}`"
    return (
        f"`envship {verb} {q(str(env))} --lock LOCK{extra}` (LOCK: the lock {env} was "
        "made from; its install record does not name it)"
    )


def _raw_marker(env: Path) -> dict[str, Any]:
    """The install marker as it is, however incomplete, for the hints; {} without one,
    or one that cannot be read (never followed through a link, never read past the size
    of any marker: :func:`envship._installmarker.read_record`)."""
    try:
        data = read_record(env / MARKER_NAME)
    except MarkerDamaged:
        return {}
    return data if isinstance(data, dict) else {}


def checked_marker(env: Path) -> dict[str, Any]:
    """The install marker of ``env``, whole (:func:`envship._installmarker.load_marker`):
    the distributions to hold come from it. A damaged one is refused, naming its key,
    with the install that makes the environment again (install takes a damaged marker
    for a half-made environment)."""
    if (env / INCOMPLETE_NAME).exists():
        raise AddError(
            f"the environment at {env} is half installed ({INCOMPLETE_NAME} is present)",
            hint=f"re-run {lock_command('install', env, _raw_marker(env))} to finish it",
        )
    try:
        data = load_marker(env)
    except MarkerDamaged as exc:
        again = lock_command("install", env, _raw_marker(env))
        state = "incomplete" if exc.reason == "missing" else "damaged"  # a key, or worse
        raise AddError(
            f"the install record of {env} is {state}",
            problems=[exc.problem()],
            hint=f"re-run {again} to make the environment again",
        ) from None
    if data is None:
        raise AddInputError(
            f"{env} is not an environment made by `envship install` (no {MARKER_NAME})",
            hint="envship add extends environments made from a lock: envship install PATH",
        )
    if not (env / "bin" / "python").exists():
        again = lock_command("install", env, data)
        raise AddError(
            f"the install record of {env} is incomplete", hint=f"re-run {again} to rebuild it"
        )
    return data


def before_lock(env: Path) -> None:
    """Refuse what can be refused before :func:`env_locked`, which makes the work folder
    beside ``env``: a version under an environment root (``envship env gc`` takes that
    folder for an install in progress there) and a folder no install made, neither of
    which waiting for an install would change. A half-installed environment, or one
    whose record is incomplete, is what a running install shows: checked again under
    the lock, once that install is done."""
    refuse_shared(env, _raw_marker(env))
    try:
        checked_marker(env)
    except AddInputError:
        raise
    except AddError:
        pass


@contextlib.contextmanager
def env_locked(env: Path, say: Callable[[str], None], *, dry_run: bool) -> Iterator[Path]:
    """Hold the lock ``envship install`` holds on ``env`` (waiting, and saying so, while
    an install or another addition has it); the block gets the work folder, removed
    before the lock goes. A dry run where that lock cannot be made (the folder beside
    ``env`` is not writable) goes on without it: it changes nothing."""
    work = work_folder(env)
    try:
        fd = acquire(work / "lock", wait=False)
        if fd is None:
            say(f"waiting for another envship install or add of {env} to finish")
            fd = acquire(work / "lock")
    except OSError as exc:
        if not dry_run or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        fd = None
    try:
        yield work
    finally:
        if fd is not None:
            # Removed while still locked, as install does: a waiter notices (_flock).
            shutil.rmtree(work, ignore_errors=True)
            os.close(fd)


def refuse_shared(env: Path, marker: dict[str, Any]) -> None:
    """A version under an `envship env` root is immutable and shared: never add to it."""
    shared = shared_version(env, marker)
    if shared is None:
        return
    name, root = shared
    q = shlex.quote
    lock = _recorded_lock(marker)
    private = f"envship install .venv --lock {q(lock)}" if lock else "envship install .venv"
    raise AddInputError(
        f"{env} is a version of the shared environment {name!r} under {root}; "
        "versions are immutable and every instance uses them",
        hint=f"add the requirement to the spec, then `envship lock`, `envship fetch` and "
        f"`envship env create {name} --root {root}`; or `{private}` for a "
        "private environment you can add to",
    )


def spec_path(spec: Path | None, marker: dict[str, Any]) -> Path:
    if spec is not None:
        return find_spec(spec)
    lock = marker.get("lock") or {}
    folders = [Path(str(lock["path"])).parent] if isinstance(lock.get("path"), str) else []
    # The current folder too, and named when it fails: a spec the user expected to be
    # found there must not go unmentioned (listed once when it is the lock's folder,
    # however either is spelled).
    if not any(os.path.realpath(f) == os.path.realpath(Path.cwd()) for f in folders):
        folders.append(Path.cwd())
    for folder in folders:
        with contextlib.suppress(SpecError):
            return find_spec(folder)
    raise SpecError(
        "no spec to record the addition in",
        problems=[Problem(str(f), "no envship.toml or [tool.envship]") for f in folders],
        hint="pass --spec with the envship.toml (or pyproject.toml) the environment's lock "
        "was made from",
    )


def _env_lock(marker: Mapping[str, Any], spec_lock: Path) -> tuple[LockFile | None, str]:
    """The lock ``env`` was made from, for what it pins beyond what is installed: the
    file the install marker names while it has the recorded digest, else the spec's lock
    when that has it (moved with its spec), else the file the marker names as it is now
    (made again since the install: its versions are the ones the next ``envship lock``
    keeps). None, and why, when none can be read."""
    recorded = _recorded_lock(marker)
    lock = marker.get("lock")
    digest = lock.get("digest") if isinstance(lock, dict) else None
    paths = [Path(recorded)] if recorded else []
    if spec_lock not in paths:
        paths.append(spec_lock)
    found: list[LockFile] = []
    why = f"its install record names no lock, and {spec_lock} cannot be read"
    for path in paths:
        try:
            lock_file = LockFile.load(path)
        except EnvshipError as exc:
            if path == paths[0]:
                why = f"{path}: {exc.message}"
            continue
        if lock_file.digest == digest:
            return lock_file, ""
        found.append(lock_file)
    return (found[0], "") if found else (None, why)


def locked_elsewhere(marker: Mapping[str, Any], spec_lock: Path) -> tuple[GroupPins, str]:
    """What the environment's lock pins for its target beyond the distributions installed
    from it (the marker's ``packages``): packages only groups it was installed without
    need, with those groups. Empty, and why, when the lock cannot say (it cannot be read,
    has no such target, or its selection fails)."""
    lock, why = _env_lock(marker, spec_lock)
    if lock is None:
        return {}, why
    have = {
        canonicalize_name(str(p.get("name"))) for p in marker["packages"] if isinstance(p, dict)
    }
    target = marker.get("target")
    name = target.get("name") if isinstance(target, dict) else None
    installed = marker.get("groups")
    groups = [g for g in lock.groups if not (isinstance(installed, list) and g in installed)]
    try:
        chosen = lock.target(str(name))
        every = lock.select(chosen)  # every group
        need = {
            g: {canonicalize_name(p.name) for p, _ in lock.select(chosen, groups=[g])}
            for g in groups
        }
    except EnvshipError as exc:
        return {}, f"{lock.path}: {exc.message}"
    pins: GroupPins = {}
    for package, _ in every:
        key = canonicalize_name(package.name)
        if key not in have and package.version is not None:
            pins[key] = (str(package.version), tuple(g for g in groups if key in need[g]))
    return pins, ""


def not_installed(env: Path, groups: Sequence[str]) -> str:
    """What to add to "the lock pins NAME==VERSION" for a package ``env`` does not have."""
    if not groups:  # the lock was made again since the install
        return f" (not installed in {env})"
    return f" (for group {', '.join(groups)}, which {env} was installed without)"


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def group_locked(
    installed: Sequence[str], grouped: GroupPins
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Of ``installed``, those at the version the lock pins for groups not installed."""
    out = []
    for item in installed:
        name, _, version = item.partition("==")
        pin = grouped.get(canonicalize_name(name))
        if pin is not None and _same_version(version, pin[0]):
            out.append((item, pin[1]))
    return tuple(out)

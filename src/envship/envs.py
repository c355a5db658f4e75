"""Persistent environments on a shared root (an EFS or NFS mount seen by every instance).

Layout::

    ROOT/<name>/versions/<key>/    one immutable venv per (lock, target, groups, base python)
    ROOT/<name>/current            symlink -> versions/<key>, switched atomically
    ROOT/<name>/.locks/<key>.lock  flock taken by whoever creates, uses or removes <key>
    ROOT/<name>/.trash/            versions being deleted (renamed here first)

A venv is not relocatable (``pyvenv.cfg``, activate scripts and shebangs hold its
absolute path), so a version is built in place at its final path. What makes that safe
is that nothing trusts a version folder by its existence: only :mod:`envship.install`'s
completion marker, written last, makes it complete, and ``current`` is pointed at a
version only after that. A creator killed half way leaves a folder no one points to; the
next creator (or ``gc``) holding the key's lock removes it.

Creators of a key hold its lock exclusively while installing and shared while they only
point ``current`` at an existing version; ``gc`` takes it exclusively without waiting and
skips a version whose lock is busy. So ``gc`` never removes a version that is being
built or is being made current at that moment.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import sys
import sysconfig
import time
from collections.abc import Collection
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ._flock import acquire, locked
from .errors import EnvError, EnvshipError, Problem, TargetError
from .host import HostInfo, has_gpu, match_target, mismatches, probe
from .install import INCOMPLETE_NAME, MARKER_NAME, InstallError, ProgressFn, install
from .lockfile import LockFile
from .store import Store
from .targets import Target

__all__ = [
    "EnvError",
    "EnvInfo",
    "EnvVersion",
    "GcResult",
    "VersionInfo",
    "check_env",
    "create_env",
    "gc",
    "list_envs",
    "version_key",
]

USED_NAME = ".envship-used"  # its mtime is the version's last use
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_KEY_CHARS = 20


def _plain(value: Any) -> Any:
    if isinstance(value, Target):
        return value.to_json()
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, _Json):
        return value.to_json()
    return str(value) if isinstance(value, Path) else value


class _Json:
    """``to_json`` for the result dataclasses below: their fields, made JSON-friendly."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class EnvVersion(_Json):
    """One version of a persistent environment, as created or resolved."""

    name: str
    key: str
    path: Path
    python: Path  # the environment's interpreter
    target: Target
    lock_digest: str
    groups: tuple[str, ...]
    base_python: str
    created: bool  # True when this call installed it
    current: bool  # True when ``current`` points at it
    seconds: float


@dataclass(frozen=True, slots=True)
class VersionInfo(_Json):
    name: str
    key: str
    path: Path
    complete: bool
    current: bool
    last_used: datetime
    lock_digest: str | None  # None while incomplete: only the marker records it
    target: str | None
    groups: tuple[str, ...]
    size: int | None  # bytes on disk; None unless asked for (it walks every file)


@dataclass(frozen=True, slots=True)
class EnvInfo(_Json):
    name: str
    path: Path
    current: str | None  # the key ``current`` points at
    versions: tuple[VersionInfo, ...]


@dataclass(frozen=True, slots=True)
class GcResult(_Json):
    removed: tuple[VersionInfo, ...]  # with ``dry_run``: what would be removed
    busy: tuple[VersionInfo, ...]  # old enough, but its lock was held: left alone
    kept: int  # current or recently used versions
    freed: int  # bytes (would be) freed
    dry_run: bool


def version_key(lock_digest: str, target: str, groups: Collection[str], base_python: str) -> str:
    """The version folder's name: everything that decides an environment's contents."""
    text = "\0".join([lock_digest, target, ",".join(sorted(groups)), base_python])
    return hashlib.sha256(text.encode()).hexdigest()[:_KEY_CHARS]


def _env_dir(root: Path, name: str) -> Path:
    if not _NAME.match(name):
        raise EnvError(
            f"invalid environment name {name!r}",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return Path(os.path.abspath(root)) / name


def _lock_path(env_dir: Path, key: str) -> Path:
    return env_dir / ".locks" / f"{key}.lock"


def _read_marker(path: Path) -> dict[str, Any] | None:
    """The install marker of a *complete* version, else None."""
    if (path / INCOMPLETE_NAME).exists():
        return None
    try:
        data = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # lexists: bin/python links to the base interpreter, which another machine sharing
    # the root may lack; that makes the env unusable there, not half made.
    if not isinstance(data, dict) or not os.path.lexists(path / "bin" / "python"):
        return None
    return data


def _complete(
    path: Path, lock: LockFile, target: str, groups: tuple[str, ...]
) -> dict[str, Any] | None:
    """The marker when ``path`` is complete and made from exactly these inputs."""
    marker = _read_marker(path)
    if marker is None or (marker["lock"]["digest"], marker["target"]["name"]) != (
        lock.digest,
        target,
    ):
        return None
    return marker if tuple(marker["groups"]) == groups else None


def _version(
    name: str, path: Path, marker: dict[str, Any], created: bool, started: float
) -> EnvVersion:
    t = marker["target"]
    return EnvVersion(
        name=name,
        key=path.name,
        path=path,
        python=path / "bin" / "python",
        target=Target.create(
            t["name"],
            platform_id=t["platform"],
            python=t["python"],
            glibc=t["glibc"],
            variant=t["variant"],
        ),
        lock_digest=str(marker["lock"]["digest"]),
        groups=tuple(marker["groups"]),
        base_python=str(marker["python"]["base"]),
        created=created,
        current=True,
        seconds=time.monotonic() - started,
    )


def _current_key(env_dir: Path) -> str | None:
    try:
        link = os.readlink(env_dir / "current")
    except OSError:
        return None
    return Path(link).name


def _point_current(env_dir: Path, key: str) -> None:
    """Make ``current`` name ``versions/<key>``; readers see the old link or the new."""
    link = env_dir / "current"
    relative = f"versions/{key}"  # relative: the link stays right wherever ROOT is mounted
    with contextlib.suppress(OSError):
        if os.readlink(link) == relative:
            return
    tmp = env_dir / f"current.tmp-{secrets.token_hex(4)}"
    os.symlink(relative, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _touch_used(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only mount still lets us use the env
        (path / USED_NAME).touch()


def _discard(env_dir: Path, key: str) -> None:
    """Remove a version and its install staging; the caller holds the key's lock.

    The rename comes first so the version path never shows a half-deleted tree.
    """
    version = env_dir / "versions" / key
    staging = env_dir / "versions" / f"{key}.envship-tmp"
    if version.exists() or version.is_symlink():
        trash = env_dir / ".trash" / f"{key}-{secrets.token_hex(4)}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(version, trash)
        shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _base_python(python: str | None) -> str:
    exe = python or sys.executable
    found = shutil.which(exe)
    if found is None:
        raise TargetError(
            f"no Python interpreter at {exe!r}",
            hint="pass --python with the path (or name on PATH) of an interpreter",
        )
    return os.path.realpath(found)


def _facts(python: str) -> HostInfo:
    """What ``python`` is; read in-process (no subprocess) when it is this interpreter."""
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        return probe(python, gpu=has_gpu)
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    machine = platform.machine()
    v = sys.version_info
    return HostInfo(
        executable=sys.executable,
        python=f"{v[0]}.{v[1]}",
        python_full=f"{v[0]}.{v[1]}.{v[2]}",
        implementation=sys.implementation.name,
        sys_platform=sys.platform,
        machine={"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(
            machine.lower(), machine
        ),
        glibc=libc.split(" ", 1)[1] if libc.startswith("glibc ") else None,
        prefix=sys.prefix,
        base_prefix=sys.base_prefix,
        purelib=sysconfig.get_paths()["purelib"],
        gpu=has_gpu(),
    )


def _chosen_target(lock: LockFile, target: str | None, base: str) -> Target:
    if target is not None:
        return lock.target(target)
    if len(lock.targets) == 1:
        # The contents depend on the target alone, so there is nothing to ask the
        # interpreter; whether it can run the target is install's (or check's) question.
        return lock.targets[0]
    return match_target(lock, _facts(base))


def _failure(root: Path, name: str, exc: OSError | InstallError) -> EnvshipError:
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (
        "no space left on device" in str(exc).lower()
    ):
        return EnvError(
            f"the disk holding the environment root {root} is full",
            problems=[Problem(str(root), str(exc).splitlines()[0])],
            hint="free space on the shared volume (`envship env gc` removes unused versions) "
            "and re-run; the half-made version was discarded and is not visible",
        )
    if isinstance(exc, OSError):
        return EnvError(
            f"cannot write the environment {name} under {root}: {exc}",
            hint="the root must be a writable folder (pass --root or set ENVSHIP_ROOT)",
        )
    return exc


def create_env(
    lock: LockFile,
    store: Store,
    root: Path,
    *,
    name: str,
    python: str | None = None,
    target: str | None = None,
    groups: Collection[str] | None = None,
    compile_bytecode: bool = False,
    progress: ProgressFn | None = None,
) -> EnvVersion:
    """Make ``ROOT/<name>/current`` an environment holding exactly what ``lock`` selects.

    An existing complete version is reused without starting any process; otherwise it is
    installed offline from ``store`` at its final path and only then made current.
    Concurrent callers (processes, machines sharing ``root``) make one copy.
    """
    started = time.monotonic()
    env_dir = _env_dir(root, name)
    base = _base_python(python)
    # Unknown groups are install's LockError, raised before it touches anything.
    chosen_groups = tuple(sorted(lock.groups if groups is None else set(groups)))
    chosen = _chosen_target(lock, target, base)
    key = version_key(lock.digest, chosen.name, chosen_groups, base)
    path = env_dir / "versions" / key

    def done(marker: dict[str, Any] | None, created: bool) -> EnvVersion:
        assert marker is not None
        _point_current(env_dir, key)
        _touch_used(path)
        return _version(name, path, marker, created, started)

    lock_path = _lock_path(env_dir, key)
    try:
        with locked(lock_path, shared=True):
            if found := _complete(path, lock, chosen.name, chosen_groups):
                return done(found, created=False)
        with locked(lock_path):
            # Again: another creator may have finished while we waited for the lock.
            if found := _complete(path, lock, chosen.name, chosen_groups):
                return done(found, created=False)
            _discard(env_dir, key)  # a killed creator's leftovers are never trusted
            try:
                install(
                    lock,
                    store,
                    path,
                    python=base,
                    target=chosen.name,
                    groups=chosen_groups,
                    compile_bytecode=compile_bytecode,
                    progress=progress,
                )
            except BaseException:
                with contextlib.suppress(OSError):
                    _discard(env_dir, key)  # a full disk needs the space back
                raise
            return done(_read_marker(path), created=True)
    except (OSError, InstallError) as exc:
        raise _failure(env_dir.parent, name, exc) from None


def _used(path: Path) -> datetime:
    """Last use: the used-stamp's mtime, or the folder's for a version never finished."""
    for p in (path / USED_NAME, path):
        with contextlib.suppress(OSError):
            return datetime.fromtimestamp(p.lstat().st_mtime, timezone.utc)
    return datetime.fromtimestamp(0, timezone.utc)


def _size(path: Path) -> int:
    total = 0
    for folder, dirs, files in os.walk(path):
        for entry in (*dirs, *files):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, entry)).st_blocks * 512
    return total


def _require_root(root: Path) -> Path:
    if not root.is_dir():
        raise EnvError(
            f"the environment root {root} does not exist",
            hint="pass --root DIR (or set ENVSHIP_ROOT) naming the shared folder",
        )
    return Path(os.path.abspath(root))


def _env_dirs(root: Path) -> list[Path]:
    return sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and (p / "versions").is_dir()
    )


def _version_keys(env_dir: Path) -> list[str]:
    # "<key>.envship-tmp" is install's staging beside a version: same key, not a version.
    names = {p.name.split(".", 1)[0] for p in (env_dir / "versions").iterdir()}
    return sorted(n for n in names if n)


def _info(env_dir: Path, key: str, current: str | None, *, size: bool) -> VersionInfo:
    path = env_dir / "versions" / key
    marker = _read_marker(path)
    return VersionInfo(
        name=env_dir.name,
        key=key,
        path=path,
        complete=marker is not None,
        current=key == current,
        last_used=_used(path),
        lock_digest=marker["lock"]["digest"] if marker else None,
        target=marker["target"]["name"] if marker else None,
        groups=tuple(marker["groups"]) if marker else (),
        size=_size(path) if size else None,
    )


def list_envs(root: Path, *, sizes: bool = False) -> list[EnvInfo]:
    """Every environment under ``root`` with its versions; reads only, takes no lock."""
    found: list[EnvInfo] = []
    for env_dir in _env_dirs(_require_root(root)):
        current = _current_key(env_dir)
        versions = [_info(env_dir, k, current, size=sizes) for k in _version_keys(env_dir)]
        found.append(EnvInfo(env_dir.name, env_dir, current, tuple(versions)))
    return found


def gc(root: Path, *, older_than: timedelta, dry_run: bool = False) -> GcResult:
    """Remove versions that are not current and were last used before ``older_than`` ago.

    Incomplete versions (a killed creator) count by their folder's age. A version whose
    lock is held (being created, or being made current) is skipped and reported busy.
    """
    cutoff = datetime.now(timezone.utc) - older_than
    removed: list[VersionInfo] = []
    busy: list[VersionInfo] = []
    kept = 0
    for env_dir in _env_dirs(_require_root(root)):
        for key in _version_keys(env_dir):
            path = env_dir / "versions" / key
            if key == _current_key(env_dir) or _used(path) >= cutoff:
                kept += 1
                continue
            lock_path = _lock_path(env_dir, key)
            fd = acquire(lock_path, wait=False)
            if fd is None:
                busy.append(_info(env_dir, key, None, size=False))
                continue
            try:
                # Decided again under the lock: it may have become current or been used.
                current = _current_key(env_dir)
                if key == current or _used(path) >= cutoff:
                    kept += 1
                    continue
                removed.append(_info(env_dir, key, current, size=True))
                if not dry_run:
                    _discard(env_dir, key)
                    lock_path.unlink(missing_ok=True)  # waiters re-check the inode
            finally:
                os.close(fd)
        trash = env_dir / ".trash"
        if not dry_run and trash.is_dir():
            for leftover in trash.iterdir():  # a gc or creator killed before its rmtree
                shutil.rmtree(leftover, ignore_errors=True)
    freed = sum(v.size or 0 for v in removed)
    return GcResult(tuple(removed), tuple(busy), kept, freed, dry_run)


def check_env(root: Path, name: str, *, python: str | None = None) -> EnvVersion:
    """Resolve ``current`` and make sure this machine can run it; TargetError if not.

    ``python`` is the interpreter to check [default: the one the version was built on,
    which its venv runs]. Costs a few small reads and, for an interpreter other than
    the one running envship, one interpreter start.
    """
    started = time.monotonic()
    env_dir = _env_dir(_require_root(root), name)
    key = _current_key(env_dir) or ""
    path = env_dir / "versions" / key
    marker = _read_marker(path) if key else None
    if marker is None:
        raise EnvError(
            f"the environment {name!r} has no complete current version"
            if env_dir.exists()
            else f"no environment {name!r} under {env_dir.parent}",
            hint=f"envship env create {name} --root {env_dir.parent}",
        )
    version = _version(name, path, marker, False, started)
    exe = python or version.base_python
    if shutil.which(exe) is None:
        reasons = [f"its interpreter {exe} does not exist on this machine"]
    else:
        reasons = mismatches(version.target, _facts(exe))
    if reasons:
        raise TargetError(
            f"the environment {name!r} (version {key}, target {version.target.name}) "
            "cannot run on this machine",
            problems=[Problem(version.target.name, r) for r in reasons],
            hint=f"create a version for this machine: envship env create {name} "
            f"--root {env_dir.parent}, with a lock that has a target for it",
        )
    _touch_used(path)
    return replace(version, seconds=time.monotonic() - started)

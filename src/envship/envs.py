"""Persistent environments on a shared root (an EFS or NFS mount seen by every instance).

Each environment ``ROOT/<name>`` holds immutable versions ``versions/<key>``, a
``current`` symlink switched atomically, and per-key lock files; the layout and the
steps on it are :mod:`envship._envroot`'s, this module decides when they happen.

A venv is not relocatable (``pyvenv.cfg``, activate scripts and shebangs hold its
absolute path), so a version is built in place at its final path. What makes that safe
is that nothing trusts a version folder by its existence: only :mod:`envship.install`'s
completion marker, written last, makes it complete, and ``current`` is pointed at a
version only after that. A creator killed half way leaves a folder no one points to; the
next creator (or ``gc``) holding the key's lock removes it.

Creators of a key hold its lock exclusively while installing and shared while they only
point ``current`` at an existing version; ``gc`` (:mod:`envship._envgc`) takes it
exclusively without waiting and skips a version whose lock is busy. So ``gc`` never
removes a version that is being built or is being made current at that moment.

Using a version is recorded in its ``.envship-used`` stamp by ``create_env``,
``check_env`` and every kernel start through envship's launcher. ``gc`` also never
removes a version a process on this machine runs from (:mod:`envship._inuse` reads
``/proc`` and matches folders by device and inode, whatever path a process used);
processes on other machines sharing the root cannot be seen, and only the
stamp and the ``older_than`` grace protect what they use.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import sysconfig
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import _envroot
from ._diskfull import is_disk_full
from ._envgc import GcResult, VersionInUse, gc
from ._envhealth import changed, complete, package_damage, record_damage, recorded, version_damage
from ._environment import denied, interpreter_denied, is_denied, may_not_run, not_a_program
from ._envlist import EnvInfo, JsonResult, VersionInfo, list_envs
from ._envroot import USED_NAME, version_key
from ._envsharing import sharing_notes
from ._flock import locked, make_folders
from ._halfmade import remake_command
from ._installmarker import MarkerDamaged, interpreter_damage
from ._installstage import check_store, name_damaged
from .errors import EnvError, EnvInputError, EnvshipError, Problem, TargetError
from .host import HostInfo, has_gpu, match_target, mismatches, probe
from .install import MARKER_NAME, InstallError, ProgressFn, install
from .lockfile import LockFile
from .store import Store
from .targets import Target

__all__ = [
    "USED_NAME",
    "EnvError",
    "EnvInfo",
    "EnvInputError",
    "EnvVersion",
    "GcResult",
    "VersionInUse",
    "VersionInfo",
    "check_env",
    "create_env",
    "gc",
    "list_envs",
    "version_key",
]


@dataclass(frozen=True, slots=True)
class EnvVersion(JsonResult):
    """One version of a persistent environment, as created or resolved."""

    name: str
    key: str
    path: Path
    python: Path  # the environment's interpreter
    target: Target
    lock_digest: str
    groups: tuple[str, ...]
    base_python: str
    created: bool  # True when this call installed it (made again too: see ``repaired``)
    current: bool  # True when ``current`` points at it
    seconds: float
    repaired: bool = False  # made again: the version found had been changed since
    # What keeps other users from it (``env create``): a version or base interpreter
    # closed to them. The CLI prints each as a note.
    notes: tuple[str, ...] = ()


def _version(
    name: str, path: Path, marker: dict[str, Any], created: bool, started: float
) -> EnvVersion:
    return EnvVersion(
        name=name,
        key=path.name,
        path=path,
        python=path / "bin" / "python",
        target=Target.from_json(marker["target"], where=str(path / MARKER_NAME)),
        lock_digest=str(marker["lock"]["digest"]),
        groups=tuple(marker["groups"]),
        base_python=str(marker["python"]["base"]),
        created=created,
        current=True,
        seconds=time.monotonic() - started,
    )


def _base_python(python: str | None) -> str:
    exe = python or sys.executable
    found = shutil.which(exe)
    if found is None and os.path.dirname(exe) and (what := not_a_program(exe)) is not None:
        raise TargetError(
            f"{exe} is not a Python interpreter",
            problems=[Problem(exe, what)],
            hint="pass --python with the path (or name on PATH) of a Python interpreter",
        )
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
    if is_disk_full(exc):
        said = exc.problems if isinstance(exc, InstallError) else ()
        return EnvError(
            f"the disk holding the environment root {root} is full",
            problems=said or [Problem(str(root), str(exc).splitlines()[0])],
            hint="free space on the shared volume (`envship env gc` removes unused versions) "
            "and re-run; the half-made version was discarded and is not visible",
        )
    if isinstance(exc, PermissionError):
        # The message names whose file or folder refused (_flock, _envroot say so).
        return EnvError(
            f"cannot write the environment {name} under {root}: {exc}",
            hint="ask the owner of what is named to run this, or share the root with a "
            "group (chgrp GROUP ROOT; chmod 2775 on its folders): envship then makes its "
            "folders and locks group-writable",
        )
    if isinstance(exc, OSError):
        return EnvError(
            f"cannot write the environment {name} under {root}: {exc}",
            hint="the root must be a writable folder (pass --root or set ENVSHIP_ROOT)",
        )
    return exc


def _refuse_foreign_current(env_dir: Path) -> None:
    """``current`` must be the link envship keeps, or absent: a folder there (a private
    environment installed at that path, say) is not ours to replace."""
    current = env_dir / "current"
    if os.path.lexists(current) and not os.path.islink(current):
        raise EnvError(
            f"{current} is not the link `envship env create` keeps there; refusing to replace it",
            problems=[Problem(str(current), "a folder or file made by something else")],
            hint=f"move it away (for instance to {current}.old) and re-run",
        )


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
    reinstall: bool = False,
) -> EnvVersion:
    """Make ``ROOT/<name>/current`` an environment holding exactly what ``lock`` selects.

    An existing complete version is reused without starting any process; otherwise it is
    installed offline from ``store`` at its final path and only then made current.
    Concurrent callers (processes, machines sharing ``root``) make one copy.
    ``reinstall`` makes an existing version again in place from the store's wheels, for
    files edited or deleted inside its packages, which the quick look does not see
    (``envship verify`` does).
    """
    started = time.monotonic()
    env_dir = _envroot.env_folder(root, name)
    _refuse_foreign_current(env_dir)
    base = _base_python(python)
    chosen_groups = lock.chosen_groups(groups)  # unknown ones refused before anything is made
    chosen = _chosen_target(lock, target, base)
    key = version_key(lock.digest, chosen.name, chosen_groups, base, compiled=compile_bytecode)
    path = env_dir / "versions" / key
    if not os.path.lexists(path):
        # Nothing to reuse: every artifact must be in the store, which is said before
        # ROOT/NAME is made (a first create that failed so left a NAME that `env list`
        # showed as "current: (none)"). A version that is there may need no store.
        check_store(lock, store, chosen, lock.artifacts([chosen.name], groups=chosen_groups))

    def done(marker: dict[str, Any] | None, created: bool) -> EnvVersion:
        assert marker is not None
        # uv leaves the .lock it flocks while installing, 0666 on purpose so that any
        # user's uv can lock it (astral-sh/uv#11328): in an immutable version, a file
        # anyone may write. uv needs it only while it runs (a synchronization lock,
        # astral-sh/uv#11878), and none runs on a finished version (install refuses
        # versions; the key's lock is held here): removed, also from versions made before.
        with contextlib.suppress(OSError):  # another user's version: verify names it
            (path / ".lock").unlink(missing_ok=True)
        _envroot.point_current(env_dir, key)
        _envroot.touch_used(path)
        version = _version(name, path, marker, created, started)
        return replace(version, notes=sharing_notes(version.path, version.base_python))

    lock_path = _envroot.key_lock(env_dir, key)
    try:
        with locked(lock_path, shared=True):
            found = complete(path, lock, chosen.name, chosen_groups)
            if found and not reinstall and not version_damage(path, found):
                return done(found, created=False)
        with locked(lock_path):
            # Again: another creator may have finished (or repaired it) while we waited.
            found = complete(path, lock, chosen.name, chosen_groups)
            damage = version_damage(path, found) if found else record_damage(path)
            if found and not damage and not reinstall:
                return done(found, created=False)
            if found and reinstall:
                # The store's wheels must be whole before the version is taken away.
                name_damaged(
                    lock, store, chosen, lock.artifacts([chosen.name], groups=chosen_groups)
                )
            # A killed creator's leftovers are never trusted, and a damaged version is
            # made again in place: its path is what kernels and `current` name.
            _envroot.discard(env_dir, key)
            # versions/ made as a group-shared root's folders are (install would make it
            # with the umask alone), so every member can make and remove versions in it.
            make_folders(env_dir / "versions")
            try:
                install(
                    lock,
                    store,
                    path,
                    python=base,
                    target=chosen.name,
                    groups=chosen_groups,
                    compile_bytecode=compile_bytecode,
                    # Made from the store's bytes alone: this machine's uv cache may
                    # hold a file edited through a private env's hard link, and uv does
                    # not check unpacked files again. The throw-away cache sits beside
                    # the version on the same volume, so hard links from it cost no
                    # copy and, once it is removed, leave every file the version's own.
                    link_mode="hardlink",
                    private_cache=True,
                    # A shared volume may be mounted at another path on each instance:
                    # scripts find the interpreter beside them, not at this path.
                    relocatable=True,
                    progress=progress,
                    as_version=True,  # the one caller allowed to make a shared version
                )
            except BaseException:
                with contextlib.suppress(OSError):
                    _envroot.discard(env_dir, key)  # a full disk needs the space back
                raise
            remade = bool(damage) or (reinstall and found is not None)
            return replace(done(_envroot.read_marker(path), created=True), repaired=remade)
    except (OSError, InstallError) as exc:
        raise _failure(env_dir.parent, name, exc) from None


def check_env(root: Path, name: str, *, python: str | None = None) -> EnvVersion:
    """Resolve ``current`` and make sure this machine can run it; TargetError if not.

    ``python`` is the interpreter to check [default: the one the version was built on,
    which its venv runs]; one that is there but is no interpreter (a spec, a folder) is
    a TargetError saying so. A current version whose install record is damaged is an
    EnvError naming the record and key (``create_env`` makes it again). Costs a few
    small reads and, for an interpreter other than the one running envship, one
    interpreter start.
    """
    started = time.monotonic()
    env_dir = _envroot.env_folder(_envroot.require_root(root), name)
    key = ""
    try:
        # current_key takes a refusal for "none", and so does a marker that cannot be
        # opened: it must not read as "no complete version, create one" (or as a
        # damaged record), which another user's umask alone causes.
        os.readlink(env_dir / "current")
        key = _envroot.current_key(env_dir) or ""
        path = env_dir / "versions" / key
        marker = _envroot.version_marker(path) if key else None
    except MarkerDamaged as exc:
        if exc.cause is not None and is_denied(exc.cause):
            raise denied(f"the environment {name!r}", exc.path) from None
        raise EnvError(
            f"the install record of the current version of {name!r} ({key}) is damaged",
            problems=[exc.problem()],
            hint=f"{remake_command(path, recorded(exc.path))} makes it again in place",
        ) from None
    except PermissionError as exc:
        raise denied(f"the environment {name!r}", exc.filename or env_dir) from None
    except OSError:
        key, path, marker = "", env_dir / "versions", None
    if marker is None:
        # A name that is not there is bad input (exit 2); one without a usable version
        # is a state the hint's command changes.
        error = EnvError if env_dir.exists() else EnvInputError
        raise error(
            f"the environment {name!r} has no complete current version"
            if env_dir.exists()
            else f"no environment {name!r} under {env_dir.parent}",
            hint=f"envship env create {name} --root {env_dir.parent}",
        )
    version = _version(name, path, marker, False, started)
    # In the order a user can act on: a replaced interpreter link first (the check
    # below would blame the machine for it), then whether this machine can run the
    # version at all, then what happened to its packages.
    if damage := interpreter_damage(path, marker):
        raise changed(name, env_dir.parent, path, marker, damage)
    # What kernels and jobs run is the version's own interpreter, not the base it was
    # made from: a version whose bin/python now runs another Python must not pass.
    exe = python or str(version.python)
    if python is None and may_not_run(version.python):
        raise interpreter_denied(version.python)  # not "does not exist on this machine"
    if os.path.dirname(exe) and (what := not_a_program(exe)) is not None:
        # --python naming a path that is there (a spec, a folder; a bare name is looked
        # up on PATH): no interpreter, and no version made for this machine changes that.
        raise TargetError(
            f"{exe} is not a Python interpreter",
            problems=[Problem(exe, what)],
            hint="pass --python with the path (or name on PATH) of a Python interpreter, "
            "or none for the version's own",
        )
    if python is None and not os.path.exists(version.base_python):
        reasons = [f"its interpreter {version.base_python} does not exist on this machine"]
    elif shutil.which(exe) is None:
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
    if damage := package_damage(path, marker):
        raise changed(name, env_dir.parent, path, marker, damage)
    _envroot.touch_used(path)
    return replace(version, seconds=time.monotonic() - started)

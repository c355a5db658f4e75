"""Materializing a lock offline from the store into a virtual environment, with uv.

Why the environment is built in place: venvs are not relocatable (``pyvenv.cfg``, the
activate scripts and console-script shebangs hold the absolute path), so building at a
temporary path and renaming would leave a broken env. Instead completeness is a marker:

* ``dest/.envship-incomplete`` is written *before* anything else touches ``dest``
  (before ``uv venv`` on a new env, before ``uv pip sync`` on an update);
* ``dest/.envship-install.json`` (lock digest, target, groups, file list) is written
  atomically as the *last* step, and only then is the incomplete marker removed. From
  the start of a run (just after the incomplete marker) it already says how to repeat
  the run: interpreter, byte-code, link mode, the store (see :func:`repeat`).

A folder holding the incomplete marker (a killed run, a failed update) is ours and half
made: the next run clears it and rebuilds. A folder with neither marker that is not
empty is someone else's and is never touched. A failed *new* install is removed at once,
so that at every instant the folder is gone, empty or still marked (``docker stop``'s
SIGKILL may end the removal midway): one it made is first renamed aside into the work
folder beside it, which the next run clears; one the user gave empty is emptied in
place, its incomplete marker last (:func:`envship._installmarker.discard`).
One ``flock`` per destination serializes concurrent installs of the same path; uv is
given that lock's fd and is killed with us (:func:`envship._uv.run_uv`), so a run that
follows a SIGKILLed one never meets its uv still writing. A re-run on a complete
environment compares its installed metadata with the marker (a directory listing, and
the sha256 of each distribution's RECORD against the one the marker keeps) and syncs
again when a distribution was removed, added or replaced, even by the same version
from another wheel.

uv needs the artifact's real file name to read its tags, while the store names files
by sha256, so each artifact is taken from the store's stable ``named/<sha256>/<filename>``
link (see :meth:`Store.named`; staged under ``<dest>.envship-tmp/`` when the store is
read-only): the hash in the path means a rebuilt artifact
with the same file name is a different URL to uv, which otherwise trusts an installed
distribution from the same path without re-checking its hash. ``uv pip sync`` installs
exactly the listed files (no resolution, no dependencies: the lock already fixed the
full set), removes anything else, and ``--require-hashes`` makes it re-verify every
file's sha256 against the lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._diskfull import is_disk_full
from ._flock import locked
from ._installguard import disk_full, refuse_foreign, refuse_shared
from ._installmarker import (
    FILES_KEY,
    INCOMPLETE_NAME,
    LINKS_KEY,
    MARKER_NAME,
    artifact_entry,
    clear,
    discard,
    drift,
    env_state,
    marker_data,
    read_marker,
    record_digests,
    venv_record,
    work_folder,
    write_marker,
)
from ._installplan import LinkMode, pins, plan, repeat
from ._installstage import ProgressFn, check_store, name_damaged, stage
from ._uv import run_uv, uv_bin
from ._uvargs import sync_command, venv_command
from .errors import InstallError, InstallInputError, Problem
from .host import match_target, probe
from .lockfile import Artifact, LockFile
from .store import Store
from .targets import Target

__all__ = [
    "INCOMPLETE_NAME",
    "MARKER_NAME",
    "InstallError",
    "InstallInputError",
    "InstallResult",
    "LinkMode",
    "ProgressFn",
    "install",
    "marker_data",
    "write_marker",
]


Action = Literal["created", "updated", "repaired", "rebuilt", "unchanged"]
# In the work folder: a failed new environment, set aside in one rename to be removed.
_DISCARDED = "discarded"


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What ``install`` left at ``dest``."""

    dest: Path
    python: Path  # the environment's interpreter
    target: Target
    lock_digest: str
    groups: tuple[str, ...]
    packages: tuple[Artifact, ...]
    action: Action
    installed: tuple[str, ...]  # "name==version" added or replaced by this run
    removed: tuple[str, ...]  # "name==version" no longer present
    seconds: float

    @property
    def changed(self) -> bool:
        return self.action != "unchanged"

    def to_json(self) -> dict[str, Any]:
        return {
            "dest": str(self.dest),
            "python": str(self.python),
            "target": self.target.to_json(),
            "lock_digest": self.lock_digest,
            "groups": list(self.groups),
            "action": self.action,
            "changed": self.changed,
            "packages": [artifact_entry(a) for a in self.packages],
            "installed": list(self.installed),
            "removed": list(self.removed),
            "seconds": round(self.seconds, 3),
        }


def _run(args: Sequence[str], *, what: str, keep_fds: Sequence[int] = ()) -> None:
    """Run one uv step; a failure becomes an InstallError carrying uv's last words.

    ``keep_fds``: the destination's lock, held by uv too, so a run that starts after
    this process was killed waits until its uv is gone. A module-level function so tests
    can substitute a failing or interrupted runner.
    """
    proc = run_uv(args, keep_fds=keep_fds)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise InstallError(
            f"{what} failed (uv exit code {proc.returncode})",
            problems=[Problem("uv", ln.strip()) for ln in lines[-12:]],
        )


def resolve_python(python: str | None) -> str:
    """The base interpreter a new environment is made from, as its marker records it:
    ``python`` (default: this one) found as ``shutil.which`` finds it, made absolute."""
    exe = python or sys.executable
    found = shutil.which(exe)
    # probe() reports a missing interpreter with a proper error; keep the name for it.
    return os.path.abspath(found) if found else exe


def install(
    lock: LockFile,
    store: Store,
    dest: Path,
    *,
    python: str | None = None,
    target: str | None = None,
    groups: Collection[str] | None = None,
    compile_bytecode: bool = False,
    link_mode: LinkMode | None = None,
    progress: ProgressFn | None = None,
    as_version: bool = False,
    private_cache: bool = False,
    reinstall: bool = False,
    relocatable: bool = False,
) -> InstallResult:
    """Make ``dest`` a virtual environment holding exactly what ``lock`` selects.

    ``python`` is the base interpreter (default: this one; for an existing environment,
    the one it was made with). It is probed and matched against the lock's targets
    (or checked against ``target``); nothing is touched when it fits none. Nothing goes
    to the network: every artifact comes from ``store``. An environment that already
    matches is left alone unless its installed metadata drifted from its marker (a
    deleted, added or replaced distribution, a replacement of the same version seen by
    its RECORD), which is then repaired. ``link_mode`` is
    uv's (default: hard links into uv's cache where it can, which makes editing an
    installed file edit the cache too; ``copy`` gives an independent environment). It is
    recorded, and a later run that asks for another one puts every file in place again.

    A version under an ``envship env`` root is refused in any state (complete, half
    made, damaged): versions are immutable and shared. ``as_version`` is for
    :func:`envship.envs.create_env` alone, which makes them.

    ``private_cache`` has uv unpack the store's wheels into a cache of its own inside the
    work folder beside ``dest``, removed with it: nothing installed then comes from, or
    stays linked to, a cache anything else can write (uv trusts its unpacked files once
    their wheel's hash matched; an edit through a hard link elsewhere is not seen).
    ``reinstall`` makes an existing environment again that way (its interpreter, byte-code
    and link mode kept): for files edited or deleted inside packages, which the quick look
    at the installed metadata does not see, even when the edit reached uv's cache.
    ``relocatable``: a new venv is made with ``uv venv --relocatable``, so its scripts find
    the interpreter beside them and keep working wherever the folder is mounted.
    """
    started = time.monotonic()
    dest = Path(os.path.abspath(dest))
    chosen_groups = lock.chosen_groups(groups)
    if not as_version:
        refuse_shared(dest, read_marker(dest) or {})
    if env_state(dest) == "foreign":  # before the lock: refusing must create nothing at all
        raise refuse_foreign(dest)
    work = work_folder(dest)
    with locked(work / "lock") as lock_fd:
        try:
            return _install_locked(
                lock,
                store,
                dest,
                work,
                lock_fd,
                python=python,
                target=target,
                groups=chosen_groups,
                compile_bytecode=compile_bytecode,
                link_mode=link_mode,
                progress=progress,
                started=started,
                private_cache=private_cache or reinstall,
                reinstall=reinstall,
                relocatable=relocatable,
            )
        finally:
            # Removed while still locked; _exclusive makes waiters notice and start over.
            shutil.rmtree(work, ignore_errors=True)


def _install_locked(
    lock: LockFile,
    store: Store,
    dest: Path,
    work: Path,
    lock_fd: int,
    *,
    python: str | None,
    target: str | None,
    groups: tuple[str, ...],
    compile_bytecode: bool,
    link_mode: LinkMode | None,
    progress: ProgressFn | None,
    started: float,
    private_cache: bool,
    reinstall: bool,
    relocatable: bool,
) -> InstallResult:
    state = env_state(dest)  # again: another process may have changed it while we waited
    if state == "foreign":
        raise refuse_foreign(dest)
    decided = plan(
        dest,
        state,
        lock,
        base=resolve_python(python) if python else None,
        target=target,
        groups=groups,
        compile_bytecode=compile_bytecode,
        link_mode=link_mode,
        private_cache=private_cache,
        reinstall=reinstall,
    )
    marker, prior, state, base = decided.marker, decided.prior, decided.state, decided.base
    reuse, repair, relink = decided.reuse, decided.repair, decided.relink
    compile_bytecode, link_mode = decided.compile_bytecode, decided.link_mode
    private_cache, replaced = decided.private_cache, decided.replaced
    env_python = dest / "bin" / "python"

    def result(chosen: Target, artifacts: list[Artifact], action: Action) -> InstallResult:
        after = pins([artifact_entry(a) for a in artifacts])
        # What the environment held: its marker, or (drifted) what its metadata showed.
        was = {} if action == "rebuilt" else decided.before
        return InstallResult(
            dest=dest,
            python=env_python,
            target=chosen,
            lock_digest=lock.digest,
            groups=groups,
            packages=tuple(artifacts),
            action=action,
            installed=tuple(f"{n}=={v}" for n, (v, h) in after.items() if was.get(n) != (v, h)),
            # An upgrade or downgrade removes the old version: listed, as uv lists it, so
            # that "attrs==22.2.0" installed is not read as a package new to the env.
            removed=tuple(
                f"{n}=={v}" for n, (v, _) in was.items() if n not in after or after[n][0] != v
            ),
            seconds=time.monotonic() - started,
        )

    if decided.unchanged:  # no interpreter to start
        assert marker is not None
        chosen = lock.target(marker["target"]["name"])
        return result(chosen, lock.artifacts([chosen.name], groups=groups), "unchanged")

    # An update keeps the env's interpreter; a new env uses the requested (or our) one.
    base_python = marker["python"]["base"] if marker and reuse else base or resolve_python(None)
    host = probe(env_python if reuse else base_python)
    chosen = match_target([lock.target(target)] if target else lock, host)
    artifacts = lock.artifacts([chosen.name], groups=groups)
    sizes = check_store(lock, store, chosen, artifacts)
    if reinstall:
        # The environment is about to be emptied: wheels damaged in the store are named
        # now, while it is still whole, not by uv afterwards.
        name_damaged(lock, store, chosen, artifacts)

    uv = uv_bin()
    new = state in ("missing", "empty")
    action: Action = (
        ("repaired" if repair else "updated") if reuse else "created" if new else "rebuilt"
    )
    # Leftovers of a killed run (another lock's requirements, perhaps): never reused; a
    # failed new environment set aside, whose removal was stopped (see ``discard``).
    shutil.rmtree(work / _DISCARDED, ignore_errors=True)
    shutil.rmtree(work / "wheels", ignore_errors=True)
    (work / "requirements.txt").unlink(missing_ok=True)
    cache = work / "uv-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache_args = ["--cache-dir", str(cache)] if private_cache else []
    reqs = work / "requirements.txt"

    settings = repeat(decided, base_python, host.python_full, store.root)

    def begin(doing: str, kept: Mapping[str, Any] | None) -> None:
        # The mark first: a marker alone, or a venv without either, is never left.
        (dest / INCOMPLETE_NAME).write_text(f"{doing} in progress\n", encoding="utf-8")
        if kept is None:
            kept = marker_data(lock, chosen, groups, base_python, host.python_full, artifacts)
        write_marker(dest, {**kept, **settings})

    def make_venv() -> tuple[dict[str, str], dict[str, str]]:
        if new:  # a rebuild's folder is already marked, and says it is a rebuild
            dest.mkdir(parents=True, exist_ok=True)
            begin("install", None)
        make = venv_command(
            uv, base_python, str(dest), cache_args=cache_args, relocatable=relocatable
        )
        _run(
            make,
            what=f"creating the virtual environment {dest}",
            keep_fds=[lock_fd],
        )
        return venv_record(dest)

    def sync() -> None:
        if not reqs.exists():
            reqs.write_text(
                stage(store, artifacts, sizes, work / "wheels", progress), encoding="utf-8"
            )
        args = sync_command(
            uv,
            str(env_python),
            str(reqs),
            cache_args=cache_args,
            no_build=all(a.kind == "wheel" for a in artifacts),
            compile_bytecode=compile_bytecode,
            link_mode=link_mode,
            relink=relink,
            replaced=replaced,
        )
        try:
            _run(
                args,
                what=f"installing {len(artifacts)} packages into {dest}",
                keep_fds=[lock_fd],
            )
        except InstallError as exc:
            name_damaged(lock, store, chosen, artifacts)  # a clearer error, if it is that
            sdists = [a.name for a in artifacts if a.kind == "sdist"]
            if sdists and exc.hint is None:
                # uv builds an sdist in an isolated environment whose build backend comes
                # from an index; the store holds only what the lock names (PEP 751 locks
                # no build requirements), so offline it can only fail.
                exc.hint = (
                    f"the lock installs {', '.join(sdists)} from source: building needs a "
                    "build backend (e.g. setuptools) from an index, which an offline "
                    "install from the store does not have; lock wheels (build them and "
                    "serve them from an index of your own) rather than allow-sdist"
                )
            raise

    try:
        if reuse:
            assert marker is not None
            begin("update", marker)  # a failed update keeps what the env was made from
            venv, links = marker.get(FILES_KEY), marker.get(LINKS_KEY)
            sync()
            if drift(dest, [artifact_entry(a) for a in artifacts], chosen.python):
                # What uv does not manage (metadata of an old-style install, say) is still
                # there: the folder is ours, so make it again rather than report a repair
                # at every run (marked as a rebuild before it is emptied).
                begin("rebuild", marker)
                clear(dest, keep=(MARKER_NAME,))
                venv, links = make_venv()
                sync()
                action = "rebuilt"
        else:
            if not new:  # ours: it carries our marker
                # Marked first, so it is never an empty "complete" folder; the marker
                # stays for what the environment was made with (see ``prior``).
                # The settings before anything is removed: a run killed in between
                # finishes the same way (a reinstall through a private cache too).
                begin("rebuild", marker or prior)
                clear(dest, keep=(MARKER_NAME,))
            venv, links = make_venv()
            sync()
        marker_now = marker_data(
            lock,
            chosen,
            groups,
            base_python,
            host.python_full,
            artifacts,
            compile_bytecode,
            venv,
            link_mode,
            links,
            record_digests(dest, chosen.python),
            store.root,
        )
        write_marker(dest, marker_now)
        (dest / INCOMPLETE_NAME).unlink()
    except BaseException as exc:
        if new:
            # A new env that failed is removed (or emptied, if the folder was given to us
            # empty), never leaving files without the mark (SIGKILL after SIGTERM may stop
            # this midway); an update or a rebuild that failed keeps its incomplete marker,
            # and its marker, and the next run makes it again the same way.
            with contextlib.suppress(OSError):
                discard(dest, work / _DISCARDED, keep_folder=state == "empty")
        if is_disk_full(exc):
            raise disk_full(dest, exc, kept=not new) from exc
        raise
    return result(chosen, artifacts, action)

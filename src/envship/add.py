"""Ad-hoc additions: install into an envship environment without moving a locked package.

``envship add NAME[SPEC]...`` is the safe replacement for ``pip install`` in a locked
environment. Every distribution the environment got from its lock (the install marker's
``packages``) is passed to ``uv pip install`` as a ``name==version`` constraint, so uv
either finds a solution that keeps every one of them or fails; a request that itself
names a locked package at another version is refused before uv runs. Nothing goes to
the network for the locked set: uv takes installed distributions that satisfy the
constraints as they are.

Safety, in the order things happen:

* the environment must be one ``envship install`` made and finished; a version under an
  ``envship env`` root is refused (versions are immutable and shared by every instance);
* the edit to the spec is prepared (and validated) before anything is installed;
* ``.envship-incomplete`` is written before uv runs and removed, even when uv failed,
  only if no file of a locked distribution changed (:mod:`envship._snapshot`); if one
  did, it stays and the error says so;
* the install marker records what was added (``added``), so ``envship verify`` can say
  why those extras are there; then the spec is rewritten atomically with tomlkit,
  keeping the user's comments and layout. Its digest changes, which is what makes
  ``envship lock --check`` report the lock stale until ``envship lock`` takes the
  addition in.

Running uv and reading its failures is :mod:`envship._uvpip`'s; the spec edit is
:func:`envship.spec.add_requirements`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import _snapshot, _uvpip
from ._environment import find_environment
from ._envroot import shared_version
from ._flock import locked
from .errors import AddConflictError, AddError, LockError, Problem, SpecError
from .install import INCOMPLETE_NAME, MARKER_NAME, write_marker
from .lock import check_lock, lock_path_for
from .spec import Spec, add_requirements, find_spec, load_spec

__all__ = ["ADDED_KEY", "AddConflictError", "AddError", "AddResult", "add", "parse_requirements"]

ADDED_KEY = "added"  # the install marker's list of distributions `envship add` installed
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class AddResult:
    """What ``add`` did (with ``dry_run``: what it would do)."""

    env: Path
    spec: Path
    lock: Path
    requested: tuple[str, ...]  # normalized requirements asked for
    already_locked: tuple[str, ...]  # "beta==1.0": the lock already satisfies these
    installed: tuple[str, ...]  # "name==version" new or changed in the environment
    removed: tuple[str, ...]  # "name==version" replaced or removed (never a locked one)
    recorded: tuple[str, ...]  # requirements written into the spec
    held: int  # locked distributions held at their versions
    lock_stale: bool  # the lock no longer matches the spec: `envship lock` takes it in
    dry_run: bool
    seconds: float

    @property
    def changed(self) -> bool:
        return bool(self.installed or self.removed or self.recorded) and not self.dry_run

    def to_json(self) -> dict[str, Any]:
        return {
            "env": str(self.env),
            "spec": str(self.spec),
            "lock": str(self.lock),
            "requested": list(self.requested),
            "already_locked": list(self.already_locked),
            "installed": list(self.installed),
            "removed": list(self.removed),
            "recorded": list(self.recorded),
            "held": self.held,
            "lock_stale": self.lock_stale,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "seconds": round(self.seconds, 3),
        }


def parse_requirements(texts: Iterable[str]) -> list[Requirement]:
    """PEP 508 requirements, every bad one reported at once; URLs are refused."""
    out: list[Requirement] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for text in texts:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(Problem(repr(text), f"invalid requirement: {exc}"))
            continue
        key = canonicalize_name(req.name)
        if req.url:
            problems.append(
                Problem(repr(text), "direct URL requirements cannot be locked from an index")
            )
        elif key in seen:
            problems.append(Problem(repr(text), f"{req.name} is asked for twice"))
        seen.add(key)
        out.append(req)
    if problems:
        raise SpecError("invalid requirement to add", problems=problems, hint="e.g. 'pkg>=1.2'")
    if not out:
        raise SpecError("nothing to add", hint="name one or more requirements, e.g. 'pkg>=1.2'")
    return out


# -- the environment ------------------------------------------------------------------


def _environment(env: Path | None) -> Path:
    if env is None:
        active = os.environ.get("VIRTUAL_ENV")
        if not active:
            raise AddError(
                "no environment to add to",
                hint="pass --env PATH (a venv made by `envship install`) or activate it",
            )
        env = Path(active)
    env = Path(os.path.abspath(env))
    if env.name.startswith("python") and env.parent.name == "bin" and not env.is_dir():
        env = env.parent.parent  # ENV/bin/python names its environment
    if not env.is_dir():
        raise AddError(f"there is no environment at {env}", hint="make one: envship install PATH")
    return env


def _marker(env: Path) -> dict[str, Any]:
    if (env / INCOMPLETE_NAME).exists():
        raise AddError(
            f"the environment at {env} is half installed ({INCOMPLETE_NAME} is present)",
            hint=f"re-run `envship install {env}` to finish it",
        )
    try:
        data = json.loads((env / MARKER_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AddError(
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


def _refuse_shared(env: Path, marker: dict[str, Any]) -> None:
    """A version under an `envship env` root is immutable and shared: never add to it."""
    shared = shared_version(env, marker)
    if shared is None:
        return
    name, root = shared
    raise AddError(
        f"{env} is a version of the shared environment {name!r} under {root}; "
        "versions are immutable and every instance uses them",
        hint=f"add the requirement to the spec, then `envship lock`, `envship fetch` and "
        f"`envship env create {name} --root {root}`; or `envship install .venv` for a "
        "private environment you can add to",
    )


def _spec_path(spec: Path | None, marker: dict[str, Any]) -> Path:
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


# -- the addition ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    marker: dict[str, Any]
    pins: dict[str, str]  # canonical name -> locked version, as installed from the lock
    installed: _snapshot.Installed
    todo: tuple[Requirement, ...]  # for uv
    already: tuple[str, ...]  # "name==version": locked, and satisfying the request


def _plan(env: Path, sites: Sequence[Path], reqs: Sequence[Requirement]) -> _Plan:
    marker = _marker(env)
    pins = {str(canonicalize_name(str(p["name"]))): str(p["version"]) for p in marker["packages"]}
    installed = _snapshot.installed(sites)
    if drift := _snapshot.drift(pins, installed):
        raise AddError(
            f"{env} already differs from its lock; refusing to add on top of that",
            problems=drift,
            hint=f"`envship verify {env}` lists every difference; remove {env} and run "
            "`envship install` to restore it",
        )
    todo: list[Requirement] = []
    already: list[str] = []
    conflicts: list[Problem] = []
    for req in reqs:
        locked = pins.get(canonicalize_name(req.name))
        if locked is None or req.marker is not None:
            todo.append(req)  # uv decides (a marker may not even apply here)
        elif not req.specifier.contains(locked, prereleases=True):
            conflicts.append(Problem(str(req), f"the lock pins {req.name}=={locked}"))
        elif req.extras:
            todo.append(req)  # the extras may bring new dependencies
        else:
            already.append(f"{installed[canonicalize_name(req.name)][0]}=={locked}")
    if conflicts:
        names = " ".join(f"-P {canonicalize_name(Requirement(p.where).name)}" for p in conflicts)
        raise AddConflictError(
            f"cannot add {', '.join(p.where for p in conflicts)}: the lock pins another version",
            problems=conflicts,
            hint="envship add never moves a locked package. Change the requirement in the "
            f"spec, then `envship lock {names}` and `envship install {env}`",
        )
    return _Plan(marker, pins, installed, tuple(todo), tuple(already))


def _constraints(work: Path, plan: _Plan) -> list[str]:
    """``--constraints FILE`` holding every locked distribution at its locked version."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "locked-constraints.txt"
    pins = sorted((plan.installed[k][0], v) for k, v in plan.pins.items())
    path.write_text("".join(f"{name}=={version}\n" for name, version in pins), encoding="utf-8")
    return ["--constraints", str(path)]


def _record_added(env: Path, plan: _Plan, after: _snapshot.Installed) -> None:
    """Keep the marker's list of what `envship add` put there (for `envship verify`)."""
    entries: dict[str, dict[str, Any]] = {}
    for entry in plan.marker.get(ADDED_KEY) or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            entries[canonicalize_name(entry["name"])] = entry
    requested: dict[str, Any] = {canonicalize_name(r.name): str(r) for r in plan.todo}
    for key, (name, version, _) in after.items():
        before = plan.installed.get(key)
        if key in plan.pins:
            continue
        if key in requested or key in entries or before is None or before[1] != version:
            asked = requested.get(key, entries.get(key, {}).get("requested"))
            entries[key] = {"name": name, "version": version, "requested": asked}
    data = dict(plan.marker)
    data[ADDED_KEY] = [entries[k] for k in sorted(entries) if k in after]
    write_marker(env, data)


def _add_locked(
    env: Path,
    sites: Sequence[Path],
    reqs: Sequence[Requirement],
    spec: Spec,
    run_uv: Callable[[Path, _Plan], tuple[int, str]],
    say: Log,
) -> tuple[_Plan, tuple[str, ...], tuple[str, ...], list[str]]:
    """Install under the environment's own lock (``envship install`` takes it too), then
    record the addition in the install marker and the spec."""
    assert spec.path is not None
    work = env.parent / f"{env.name}.envship-tmp"
    with locked(work / "lock"):
        try:
            plan = _plan(env, sites, reqs)  # again: another process may have changed it
            if not plan.todo:
                return plan, (), (), []
            say(
                f"adding {', '.join(map(str, plan.todo))} to {env}, holding "
                f"{len(plan.pins)} locked packages at their versions"
            )
            code, out, after = _snapshot.guarded(
                env, sites, plan.pins, plan.installed, lambda: run_uv(work, plan)
            )
            if code != 0:
                raise _uvpip.failure(out, plan.todo, plan.pins, env, spec)
            _record_added(env, plan, after)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    installed, removed = _snapshot.changes(plan.installed, after)
    try:
        recorded = list(add_requirements(spec.path, plan.todo))
    except OSError as exc:
        raise AddError(
            f"installed {', '.join(installed) or 'nothing new'}, but cannot record it in "
            f"{spec.path}: {exc}",
            hint=f"add {', '.join(map(str, plan.todo))} to its dependencies by hand",
        ) from None
    return plan, installed, removed, recorded


def _lock_stale(spec: Spec) -> bool:
    try:
        check_lock(spec)
    except LockError:  # stale, missing, or unreadable: `envship lock` is due either way
        return True
    return False


def add(
    requirements: Sequence[str],
    *,
    env: Path | None = None,
    spec: Path | None = None,
    index_url: str | None = None,
    extra_index_urls: Sequence[str] = (),
    find_links: Sequence[str] = (),
    dry_run: bool = False,
    log: Log | None = None,
) -> AddResult:
    """Install ``requirements`` into ``env`` holding every locked package, then record them.

    ``env`` is a venv made by ``envship install`` (default: ``$VIRTUAL_ENV``); ``spec``
    the spec to record in (default: the one beside the environment's lock, else in the
    current folder). Packages come from the spec's indexes unless ``index_url`` replaces
    its default index; ``extra_index_urls`` and ``find_links`` add sources. Requirements
    the lock already satisfies are left alone and not recorded. Raises
    :class:`AddConflictError` when a request needs a locked package at another version.
    """
    started = time.monotonic()
    say = log or (lambda _msg: None)
    reqs = parse_requirements(requirements)
    env = _environment(env)
    marker = _marker(env)
    _refuse_shared(env, marker)
    the_spec = load_spec(_spec_path(spec, marker))
    spec_file = the_spec.path
    assert spec_file is not None
    sites = find_environment(env).site_packages
    plan = _plan(env, sites, reqs)
    installed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    recorded: list[str] = []
    if plan.todo:
        # A bad edit fails before uv runs.
        recorded = list(add_requirements(spec_file, plan.todo, write=False))
        if recorded and not dry_run and not os.access(spec_file.parent, os.W_OK):
            raise AddError(
                f"cannot record the addition: {spec_file.parent} is not writable",
                hint="pass --spec with a spec you can write, or --dry-run",
            )
        args, uv_env = _uvpip.command(
            env / "bin" / "python",
            the_spec,
            index_url=index_url,
            extra_index_urls=extra_index_urls,
            find_links=find_links,
        )

        if marker.get("compiled"):  # keep the promise the marker makes for the additions too
            args.append("--compile-bytecode")

        def run_uv(work: Path, plan: _Plan, *extra: str) -> tuple[int, str]:
            command = [*args, *extra, *_constraints(work, plan), *map(str, plan.todo)]
            return _uvpip.run(command, work, uv_env, say)

        if dry_run:
            with tempfile.TemporaryDirectory(prefix="envship-add-") as tmp:
                code, out = run_uv(Path(tmp), plan, "--dry-run")
            if code != 0:
                raise _uvpip.failure(out, plan.todo, plan.pins, env, the_spec)
            installed, removed = _uvpip.planned(out)
        else:
            plan, installed, removed, recorded = _add_locked(
                env, sites, reqs, the_spec, run_uv, say
            )
    now = load_spec(spec_file) if recorded and not dry_run else the_spec
    stale = (dry_run and bool(recorded)) or _lock_stale(now)
    return AddResult(
        env=env,
        spec=spec_file,
        lock=lock_path_for(the_spec),
        requested=tuple(str(r) for r in reqs),
        already_locked=plan.already,
        installed=installed,
        removed=removed,
        recorded=tuple(recorded),
        held=len(plan.pins),
        lock_stale=stale,
        dry_run=dry_run,
        seconds=time.monotonic() - started,
    )

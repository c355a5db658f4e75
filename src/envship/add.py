"""Ad-hoc additions: install into an envship environment without moving a locked package.

``envship add NAME[SPEC]...`` is the safe replacement for ``pip install`` in a locked
environment. Every distribution the environment got from its lock (the install marker's
``packages``) is passed to ``uv pip install`` as a ``name==version`` constraint, so uv
either finds a solution that keeps every one of them or fails; a request that itself
names a locked package at another version is refused before uv runs. Nothing goes to
the network for the locked set: uv takes installed distributions that satisfy the
constraints as they are.

So is every version the lock pins for the environment's target in groups it was
installed without (``--group dev`` leaves ``docs`` out): those packages are not
installed, but the next ``envship lock`` keeps what the spec then allows, so a
``six==1.16.0`` added here would move the ``six==1.17.0`` every ``docs`` install gets.
Asked for (or needed) at its locked version, such a package is installed at that
version, and the result says so (:attr:`AddResult.group_locked`).

Safety, in the order things happen:

* an addition holds the lock ``envship install`` holds on the environment from before it
  reads the install marker until the addition is recorded: one started while an install
  (or another addition) changes the environment waits for it, and says so, rather than
  find it half installed;
* the environment must be one ``envship install`` made and finished, and still hold its
  locked set as installed: no locked distribution missing, moved, installed twice or
  re-installed at its version from another wheel or by another tool (seen by the RECORD
  digests the install marker keeps); a version under an ``envship env`` root is refused
  (versions are immutable and shared by every instance);
* the edit to the spec is prepared (and validated) before anything is installed; a
  request for a name the spec already lists replaces that entry, and the result says
  so, even when the lock already satisfies it and nothing is installed (the user's
  tighter floor is what the next lock must honour); one equal to the entry changes
  nothing; one that would drop extras the entry asks for is refused (what they brought
  stays installed while the next lock would leave it out);
* a request whose marker is false for the environment's interpreter is recorded (it
  applies elsewhere, and the result says whether any of the spec's targets is such a
  place) but not installed, and uv does not run for it;
* names are reported as PEP 503 normalizes them (``tomli-w``, not ``tomli_w`` as its
  dist-info may spell it), the form the lock uses;
* every command a hint gives names the environment's lock and groups
  (:func:`envship._addenv.lock_command`), so it works from any folder;
* ``.envship-incomplete`` is written before uv runs and removed, even when uv failed,
  only if no file of a locked distribution changed (:mod:`envship._snapshot`); if one
  did, it stays and the error says so; and every package asked for must then be in
  the environment (a uv setting such as ``[pip] target`` sends it elsewhere);
* the install marker records what was added (``added``), so ``envship verify`` can say
  why those extras are there; then the spec is rewritten atomically with tomlkit,
  keeping the user's comments and layout, under a ``flock`` on the spec from read to
  rename, so additions to other environments of the same spec keep each other's
  entries. Its digest changes, which is what makes ``envship lock --check`` report the
  lock stale until ``envship lock`` takes the addition in.

Finding the environment and the spec is :mod:`envship._addenv`'s; what to install,
record or refuse, :mod:`envship._addplan`'s; where a request
applies and which spec entry it replaces, :mod:`envship._addspec`'s; the ``added``
record, :mod:`envship._addedrecord`'s; running uv and reading its failures,
:mod:`envship._uvpip`'s; the spec edit is :func:`envship.spec.add_requirements`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import _addenv, _addspec, _snapshot, _uvpip
from ._addedrecord import ADDED_KEY, write_added
from ._addplan import Plan, constraints, plan_addition
from ._environment import find_environment
from .errors import AddConflictError, AddError, EnvshipError, LockError, Problem, SpecError
from .lock import check_lock, lock_path_for
from .spec import Spec, add_requirements, load_spec

__all__ = ["ADDED_KEY", "AddConflictError", "AddError", "AddResult", "add", "parse_requirements"]

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class AddResult:
    """What ``add`` did (with ``dry_run``: what it would do)."""

    env: Path
    spec: Path
    lock: Path
    requested: tuple[str, ...]  # normalized requirements asked for
    # "beta==1.0": the lock already satisfies these and the spec lists them so, so they
    # are left alone (one the spec lists otherwise, or not at all, is in ``recorded``)
    already_locked: tuple[str, ...]
    installed: tuple[str, ...]  # "name==version" new or changed in the environment
    removed: tuple[str, ...]  # "name==version" replaced or removed (never a locked one)
    recorded: tuple[str, ...]  # requirements written into the spec
    replaced: tuple[tuple[str, str], ...]  # (entry the spec had, requirement put in its place)
    not_applicable: tuple[str, ...]  # marker false here: recorded, not installed
    applies_nowhere: tuple[str, ...]  # of those, the ones no target of the spec has either
    # ("sigma==1.1", ("docs",)): of ``installed``, those at the version the lock pins for
    # groups the environment was installed without
    group_locked: tuple[tuple[str, tuple[str, ...]], ...]
    held: int  # locked packages held at their versions (installed, and for other groups)
    lock_stale: bool  # the lock no longer matches the spec: `envship lock` takes it in
    dry_run: bool
    seconds: float
    notes: tuple[str, ...] = ()  # what could not be held, and why

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
            "replaced": [{"old": old, "new": new} for old, new in self.replaced],
            "not_applicable": list(self.not_applicable),
            "applies_nowhere": list(self.applies_nowhere),
            "group_locked": [
                {"package": package, "groups": list(groups)}
                for package, groups in self.group_locked
            ],
            "held": self.held,
            "lock_stale": self.lock_stale,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
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


# -- the addition ----------------------------------------------------------------------


def _check_installed(env: Path, plan: Plan, after: _snapshot.Installed, out: str) -> None:
    """uv said it succeeded: every requested package must now be in the environment."""
    absent = [str(r) for r in plan.todo if canonicalize_name(r.name) not in after]
    if absent:
        raise AddError(
            f"uv reported success, but {', '.join(absent)} is not installed in {env}",
            problems=_uvpip.uv_lines(out),
            hint="a uv setting sent it elsewhere, such as `target` or `prefix` under [pip] "
            "in your uv.toml (or in the file UV_CONFIG_FILE names): envship add reads "
            "your uv configuration as envship lock does",
        )


def _add_locked(
    env: Path,
    work: Path,
    sites: Sequence[Path],
    plan: Plan,
    spec: Spec,
    run_uv: Callable[[Path, Plan], tuple[int, str]],
    say: Log,
) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """Install, then record the addition in the install marker and the spec; the caller
    holds the environment's lock (:func:`envship._addenv.env_locked`) throughout."""
    assert spec.path is not None
    after = plan.installed
    if plan.todo:
        say(
            f"adding {', '.join(map(str, plan.todo))} to {env}, holding "
            f"{len(plan.held)} locked packages at their versions"
        )
        code, out, after = _snapshot.guarded(
            env,
            sites,
            plan.pins,
            plan.installed,
            lambda: run_uv(work, plan),
            repair=plan.repair,
        )
        if code != 0:
            raise _failure(out, plan, env, spec)
        _check_installed(env, plan, after, out)
        write_added(env, plan, after)
    installed, removed = map(_normalized, _snapshot.changes(plan.installed, after))
    try:
        # Under the spec's own lock (two adds to environments of one spec edit it at once).
        recorded = list(add_requirements(spec.path, plan.record))
    except OSError as exc:
        raise AddError(
            f"installed {', '.join(installed) or 'nothing new'}, but cannot record it in "
            f"{spec.path}: {exc}",
            hint=f"add {', '.join(map(str, plan.record))} to its dependencies by hand",
        ) from None
    return installed, removed, recorded


def _failure(out: str, plan: Plan, env: Path, spec: Spec) -> EnvshipError:
    return _uvpip.failure(out, plan.todo, plan.held, env, spec, install=plan.relocked, why=plan.why)


def _normalized(items: Iterable[str]) -> tuple[str, ...]:
    """``name==version`` with the name as PEP 503 normalizes it (the lock's form), not as
    a dist-info may spell it (``tomli_w``, ``PySocks``)."""
    out = []
    for item in items:
        name, _, version = item.partition("==")
        out.append(f"{canonicalize_name(name)}=={version}")
    return tuple(out)


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
    the lock already satisfies are not installed, and are recorded unless the spec
    already lists them so (a bare name asks only that the package be there); those whose
    marker is false for the environment are recorded, not installed. A requirement for
    a package the spec already lists replaces that entry (:attr:`AddResult.replaced`),
    unless it equals it. Raises
    :class:`AddConflictError` when a request needs a locked package at another version,
    and :class:`AddError` when a replacement would drop extras the spec asks for.
    """
    started = time.monotonic()
    say = log or (lambda _msg: None)
    reqs = parse_requirements(requirements)
    env = _addenv.environment(env)
    _addenv.before_lock(env)
    # Everything from reading the install marker to recording the addition holds the lock
    # install holds: an install running now marks the environment half installed until it
    # is done, and a concurrent add on it would plan against what this one changes.
    with _addenv.env_locked(env, say, dry_run=dry_run) as work:
        marker = _addenv.checked_marker(env)
        _addenv.refuse_shared(env, marker)
        the_spec = load_spec(_addenv.spec_path(spec, marker))
        spec_file = the_spec.path
        assert spec_file is not None
        sites = find_environment(env).site_packages
        if any(r.marker for r in reqs):
            here = _addspec.marker_environment(
                env, lambda: _addenv.lock_command("install", env, marker)
            )
        else:
            here = {}
        plan = plan_addition(env, sites, reqs, here, the_spec)
        installed: tuple[str, ...] = ()
        removed: tuple[str, ...] = ()
        recorded: list[str] = []
        replaced: tuple[tuple[str, str], ...] = ()
        if plan.record:
            # A bad edit fails before uv runs.
            replaced = _addspec.replacements(the_spec, plan.record, here)
            recorded = list(add_requirements(spec_file, plan.record, write=False))
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

            def run_uv(folder: Path, plan: Plan, *extra: str) -> tuple[int, str]:
                command = [*args, *extra, *constraints(folder, plan), *map(str, plan.todo)]
                return _uvpip.run(command, folder, uv_env, say)

            if dry_run and plan.todo:
                with tempfile.TemporaryDirectory(prefix="envship-add-") as tmp:
                    code, out = run_uv(Path(tmp), plan, "--dry-run")
                if code != 0:
                    raise _failure(out, plan, env, the_spec)
                installed, removed = map(_normalized, _uvpip.planned(out))
            elif not dry_run:
                installed, removed, recorded = _add_locked(
                    env, work, sites, plan, the_spec, run_uv, say
                )
    now = load_spec(spec_file) if recorded and not dry_run else the_spec
    stale = (dry_run and bool(recorded)) or _lock_stale(now)
    notes: tuple[str, ...] = ()
    if plan.note and plan.todo:
        notes = (
            f"the lock {env} was made from cannot be read ({plan.note}): versions it pins "
            "only for groups the environment was installed without are not held",
        )
    return AddResult(
        env=env,
        spec=spec_file,
        lock=lock_path_for(the_spec),
        requested=tuple(str(r) for r in reqs),
        already_locked=plan.already,
        installed=installed,
        removed=removed,
        recorded=tuple(recorded),
        replaced=replaced,
        not_applicable=tuple(str(r) for r in plan.elsewhere),
        applies_nowhere=_addspec.nowhere(the_spec, plan.elsewhere),
        group_locked=_addenv.group_locked(installed, plan.grouped),
        held=len(plan.held),
        lock_stale=stale,
        dry_run=dry_run,
        seconds=time.monotonic() - started,
        notes=notes,
    )

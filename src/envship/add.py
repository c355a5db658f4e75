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
* the edit to the spec is prepared (and validated) before anything is installed; a
  request for a name the spec already lists replaces that entry, and the result says
  so, but one that would drop extras the entry asks for is refused (what they brought
  stays installed while the next lock would leave it out);
* a request whose marker is false for the environment's interpreter is recorded (it
  applies elsewhere, and the result says whether any of the spec's targets is such a
  place) but not installed, and uv does not run for it;
* ``.envship-incomplete`` is written before uv runs and removed, even when uv failed,
  only if no file of a locked distribution changed (:mod:`envship._snapshot`); if one
  did, it stays and the error says so; and every package asked for must then be in
  the environment (a uv setting such as ``[pip] target`` sends it elsewhere);
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
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
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
    replaced: tuple[tuple[str, str], ...]  # (entry the spec had, requirement put in its place)
    not_applicable: tuple[str, ...]  # marker false here: recorded, not installed
    applies_nowhere: tuple[str, ...]  # of those, the ones no target of the spec has either
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
            "replaced": [{"old": old, "new": new} for old, new in self.replaced],
            "not_applicable": list(self.not_applicable),
            "applies_nowhere": list(self.applies_nowhere),
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


# -- what applies where ----------------------------------------------------------------

# PEP 508's marker environment as the environment's own interpreter sees it (it may be
# another Python than the one envship runs on); the PEP's reference code.
_MARKER_ENV = """\
import json, os, platform, sys
v = sys.implementation.version
iv = "%d.%d.%d" % (v.major, v.minor, v.micro)
if v.releaselevel != "final":
    iv += v.releaselevel[0] + str(v.serial)
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": iv,
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}))
"""


def _marker_environment(env: Path) -> dict[str, Any]:
    python = env / "bin" / "python"
    try:
        proc = subprocess.run(
            [str(python), "-I", "-c", _MARKER_ENV],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        data = json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise AddError(
            f"cannot ask {python} which requirement markers apply to it: {exc}",
            hint=f"`envship verify {env}` checks the environment; `envship install {env}` "
            "rebuilds it",
        ) from None
    if not isinstance(data, dict):
        raise AddError(f"{python} gave no marker environment")
    return data


def _applies(req: Requirement, environment: Mapping[str, Any]) -> bool:
    if req.marker is None:
        return True
    try:
        return req.marker.evaluate(dict(environment))
    except (UndefinedComparison, UndefinedEnvironmentName) as exc:
        raise SpecError(
            "a requirement's marker cannot be evaluated",
            problems=[Problem(str(req), str(exc))],
            hint="markers compare names of PEP 508's environment with quoted values",
        ) from None


def _replacements(
    spec: Spec, record: Sequence[Requirement], here: Mapping[str, Any]
) -> tuple[tuple[str, str], ...]:
    """(entry, requirement) for each requirement that takes the place of another entry
    of the spec's dependencies for the same package. One that would drop extras the
    entry asks for, or no longer apply here where the entry does, is refused: what the
    entry brought stays installed, but the next lock would leave it out."""
    listed: dict[str, str] = {}
    for text in spec.dependencies:
        listed.setdefault(canonicalize_name(Requirement(text).name), text)
    replaced: list[tuple[str, str]] = []
    problems: list[Problem] = []
    better: list[str] = []
    for req in record:
        old = listed.get(canonicalize_name(req.name))
        if old is None or old == str(req):
            continue
        replaced.append((old, str(req)))
        was = Requirement(old)
        had = {canonicalize_name(e): e for e in was.extras}
        lost = sorted(set(had) - {canonicalize_name(e) for e in req.extras})
        if lost:
            extras = ",".join(had[e] for e in lost)
            problems.append(Problem(str(req), f"would replace {old!r}, dropping [{extras}]"))
            both = Requirement(str(req))
            both.extras = set(req.extras) | {had[e] for e in lost}
            better.append(repr(str(both)))
        if not _applies(req, here) and _applies(was, here):
            problems.append(
                Problem(
                    str(req),
                    f"would replace {old!r}, which applies to this environment, with a "
                    "requirement that does not",
                )
            )
    if problems:
        asks = f"ask for them too (envship add {' '.join(better)}), or " if better else ""
        raise AddError(
            f"refusing to drop what {spec.path} asks for",
            problems=problems,
            hint=f"{asks}edit the spec's dependencies by hand to drop it",
        )
    return tuple(replaced)


def _nowhere(spec: Spec, reqs: Sequence[Requirement]) -> tuple[str, ...]:
    """Those of ``reqs`` whose marker no target of the spec satisfies."""
    return tuple(
        str(r) for r in reqs if not any(_applies(r, t.marker_environment()) for t in spec.targets)
    )


# -- the addition ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    marker: dict[str, Any]
    pins: dict[str, str]  # canonical name -> locked version, as installed from the lock
    installed: _snapshot.Installed
    todo: tuple[Requirement, ...]  # for uv
    already: tuple[str, ...]  # "name==version": locked, and satisfying the request
    elsewhere: tuple[Requirement, ...]  # a marker false here: recorded, not installed
    record: tuple[Requirement, ...]  # todo and elsewhere, in the order asked for


def _plan(
    env: Path, sites: Sequence[Path], reqs: Sequence[Requirement], here: Mapping[str, Any]
) -> _Plan:
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
    elsewhere: list[Requirement] = []
    record: list[Requirement] = []
    conflicts: list[Problem] = []
    for req in reqs:
        locked = pins.get(canonicalize_name(req.name))
        if not _applies(req, here):
            elsewhere.append(req)  # uv would skip it; the spec keeps it for where it applies
        elif locked is None:
            todo.append(req)
        elif not req.specifier.contains(locked, prereleases=True):
            conflicts.append(Problem(str(req), f"the lock pins {req.name}=={locked}"))
            continue
        elif req.extras:
            todo.append(req)  # the extras may bring new dependencies
        else:
            already.append(f"{installed[canonicalize_name(req.name)][0]}=={locked}")
            continue
        record.append(req)
    if conflicts:
        names = " ".join(f"-P {canonicalize_name(Requirement(p.where).name)}" for p in conflicts)
        raise AddConflictError(
            f"cannot add {', '.join(p.where for p in conflicts)}: the lock pins another version",
            problems=conflicts,
            hint="envship add never moves a locked package. Change the requirement in the "
            f"spec, then `envship lock {names}` and `envship install {env}`",
        )
    return _Plan(
        marker, pins, installed, tuple(todo), tuple(already), tuple(elsewhere), tuple(record)
    )


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


def _check_installed(env: Path, plan: _Plan, after: _snapshot.Installed, out: str) -> None:
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
    sites: Sequence[Path],
    reqs: Sequence[Requirement],
    here: Mapping[str, Any],
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
            plan = _plan(env, sites, reqs, here)  # again: another process may have changed it
            after = plan.installed
            if plan.todo:
                say(
                    f"adding {', '.join(map(str, plan.todo))} to {env}, holding "
                    f"{len(plan.pins)} locked packages at their versions"
                )
                code, out, after = _snapshot.guarded(
                    env, sites, plan.pins, plan.installed, lambda: run_uv(work, plan)
                )
                if code != 0:
                    raise _uvpip.failure(out, plan.todo, plan.pins, env, spec)
                _check_installed(env, plan, after, out)
                _record_added(env, plan, after)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    installed, removed = _snapshot.changes(plan.installed, after)
    try:
        recorded = list(add_requirements(spec.path, plan.record))
    except OSError as exc:
        raise AddError(
            f"installed {', '.join(installed) or 'nothing new'}, but cannot record it in "
            f"{spec.path}: {exc}",
            hint=f"add {', '.join(map(str, plan.record))} to its dependencies by hand",
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
    the lock already satisfies are left alone and not recorded; those whose marker is
    false for the environment are recorded, not installed. A requirement for a package
    the spec already lists replaces that entry (:attr:`AddResult.replaced`). Raises
    :class:`AddConflictError` when a request needs a locked package at another version,
    and :class:`AddError` when a replacement would drop extras the spec asks for.
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
    here = _marker_environment(env) if any(r.marker for r in reqs) else {}
    plan = _plan(env, sites, reqs, here)
    installed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    recorded: list[str] = []
    replaced: tuple[tuple[str, str], ...] = ()
    if plan.record:
        # A bad edit fails before uv runs.
        replaced = _replacements(the_spec, plan.record, here)
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

        def run_uv(work: Path, plan: _Plan, *extra: str) -> tuple[int, str]:
            command = [*args, *extra, *_constraints(work, plan), *map(str, plan.todo)]
            return _uvpip.run(command, work, uv_env, say)

        if dry_run and plan.todo:
            with tempfile.TemporaryDirectory(prefix="envship-add-") as tmp:
                code, out = run_uv(Path(tmp), plan, "--dry-run")
            if code != 0:
                raise _uvpip.failure(out, plan.todo, plan.pins, env, the_spec)
            installed, removed = _uvpip.planned(out)
        elif not dry_run:
            plan, installed, removed, recorded = _add_locked(
                env, sites, reqs, here, the_spec, run_uv, say
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
        replaced=replaced,
        not_applicable=tuple(str(r) for r in plan.elsewhere),
        applies_nowhere=_nowhere(the_spec, plan.elsewhere),
        held=len(plan.pins),
        lock_stale=stale,
        dry_run=dry_run,
        seconds=time.monotonic() - started,
    )

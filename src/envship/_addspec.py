"""Where a requirement ``envship add`` is asked for applies, and what it replaces in the spec.

A requirement with a PEP 508 marker applies where its marker is true: the environment's
own interpreter says whether that is here (it may be another Python than the one envship
runs on), each of the spec's targets whether it is anywhere the spec locks for. A
requirement for a package the spec already lists takes that entry's place; one that
would drop extras the entry asks for, or no longer apply here where the entry does, is
refused, because what the entry brought stays installed while the next lock would leave
it out. These are questions about the request and the spec, asked before anything is
installed, so they live apart from :mod:`envship.add`, which plans, installs and
records the addition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ._pyprobe import ProbeFailure, facts_of
from .errors import AddError, Problem, SpecError
from .spec import Spec

__all__ = ["applies", "marker_environment", "nowhere", "replacements"]


def marker_environment(env: Path, rebuild: Callable[[], str]) -> dict[str, Any]:
    """PEP 508's marker environment as the environment's own interpreter sees it (it may
    be another Python than the one envship runs on). ``rebuild`` gives the command that
    makes the environment again from its lock, for the hint when the interpreter fails
    (called only then: it reads the lock)."""
    python = env / "bin" / "python"
    try:
        # Run without site (_pyprobe): site would run the environment's .pth files.
        data = facts_of(str(python), timeout=120)
    except ProbeFailure as exc:
        raise AddError(
            f"cannot ask {python} which requirement markers apply to it: {exc.detail}",
            hint=f"{rebuild()} makes the environment again from its lock",
        ) from None
    markers: dict[str, Any] = data["markers"]
    return markers


def applies(req: Requirement, environment: Mapping[str, Any]) -> bool:
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


def replacements(
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
        if not applies(req, here) and applies(was, here):
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


def nowhere(spec: Spec, reqs: Sequence[Requirement]) -> tuple[str, ...]:
    """Those of ``reqs`` whose marker no target of the spec satisfies."""
    return tuple(
        str(r) for r in reqs if not any(applies(r, t.marker_environment()) for t in spec.targets)
    )

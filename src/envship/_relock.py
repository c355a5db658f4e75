"""Re-locking over a previous lock: its versions as uv's preferences, and what moved.

A re-lock must not move pins the spec change does not touch. ``uv lock`` keeps the
versions of an existing ``uv.lock`` where the project still allows them, so the lock
being replaced is handed to uv as a minimal ``uv.lock`` (name, version, registry, and
the targets each version of a package locked at several versions was chosen for),
without the packages ``upgrade`` / ``upgrade_packages`` let move; afterwards every
version that differs is a :class:`VersionChange`, so nothing moves silently. This is
all a lock needs of the one it replaces, kept apart from :mod:`envship.lock`, which
resolves and writes. So are the artifact sizes uv leaves out at random (:func:`keep_sizes`):
the same spec and index must give the same bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
from packaging.pylock import Package, Pylock
from packaging.utils import InvalidName, canonicalize_name
from packaging.version import Version

from ._uvproject import requires_python
from .errors import LockError, Problem
from .lockfile import LockFile
from .spec import Spec

__all__ = [
    "VersionChange",
    "keep_sizes",
    "locked_versions",
    "preferences_lock",
    "read_previous",
    "upgrade_names",
    "version_changes",
]


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


def read_previous(path: Path) -> tuple[Pylock | None, str | None]:
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


def locked_versions(pylock: Pylock | None) -> dict[str, tuple[str, ...]]:
    found: dict[str, set[str]] = {}
    for package in pylock.packages if pylock else ():
        if package.version is not None:
            found.setdefault(canonicalize_name(package.name), set()).add(str(package.version))
    return {name: tuple(sorted(v)) for name, v in found.items()}


def preferences_lock(
    spec: Spec, previous: Pylock | None, skip: Callable[[str], bool]
) -> str | None:
    """A ``uv.lock`` that hands uv the previous versions as preferences.

    ``uv lock`` keeps the versions of an existing ``uv.lock`` where the project still
    allows them (uv-requirements ``read_lock_requirements``) and moves only the rest;
    name, version, registry and, for a package locked at several versions, the forks
    each version was resolved in are all it reads for that. Constraints would be all or
    nothing: one pin the new spec rules out would fail them all.
    """
    # Keyed by Version: uv refuses a uv.lock with "1.0" and "1.0.0" of one package.
    pins: dict[tuple[str, Version, str], tuple[str, list[str]]] = {}
    groups = frozenset(previous.dependency_groups or ()) if previous else frozenset()
    for p in previous.packages if previous else ():
        key = canonicalize_name(p.name)
        if p.version is None or not p.index or skip(key):
            continue
        _, markers = pins.setdefault((key, p.version, p.index), (str(p.version), []))
        markers.extend(m for m in _target_markers(spec, groups, p) if m not in markers)
    if not pins:
        return None
    counts = Counter(name for name, _, _ in pins)
    packages = []
    for (name, _, index), (text, markers) in sorted(pins.items(), key=lambda kv: str(kv[0])):
        package: dict[str, Any] = {"name": name, "version": text, "source": {"registry": index}}
        if counts[name] > 1:
            # uv ranks a package's preferences by whether their ``resolution-markers``
            # meet the fork being resolved, else by version (uv-resolver
            # ``CandidateSelector::get_preferred``): without them every fork takes the
            # newest pin it allows and an older forked pin moves. uv writes them only for
            # packages with several versions (``Lock::from_resolution``), and so do we.
            if not markers:
                continue  # no target of the spec installs it: it would only mislead
            package["resolution-markers"] = markers
        packages.append(package)
    data = {"version": 1, "requires-python": requires_python(spec), "package": packages}
    return tomli_w.dumps(data)


def _target_markers(spec: Spec, groups: frozenset[str], package: Package) -> list[str]:
    """The markers of the spec's targets that install ``package`` of the previous lock.

    Each target is one of uv's starting forks (``tool.uv.environments``), so its marker
    names the fork a version was chosen in; the package's own marker may also hold
    ``dependency_groups``, which a uv.lock marker cannot. Every group counts: a version
    any group installs on a target is that target's pin.
    """
    if package.marker is None:
        return list(dict.fromkeys(t.marker for t in spec.targets))
    found = []
    for target in spec.targets:
        env: dict[str, str | frozenset[str]] = {
            k: str(v) for k, v in target.marker_environment().items()
        }
        env |= {"extras": frozenset(), "dependency_groups": groups}
        try:
            if package.marker.evaluate(env, context="lock_file"):
                found.append(target.marker)
        except (UndefinedComparison, UndefinedEnvironmentName):
            # A hand-edited marker that cannot be answered: a pin for every fork, as
            # before resolution-markers were written.
            return list(dict.fromkeys(t.marker for t in spec.targets))
    return list(dict.fromkeys(found))


def keep_sizes(data: Mapping[str, Any], previous: Pylock | None) -> int:
    """Give every artifact of ``data`` (a lock table) without a ``size`` the size the
    previous lock records for the same sha256; the number of sizes filled in.

    uv drops some artifacts' ``size`` at random when it downloads in parallel (seen with
    uv 0.13.9 against PyPI: 5 to 14 of 127 artifacts per run of one spec, none with
    ``UV_CONCURRENT_DOWNLOADS=1``; an ``--offline`` re-run keeps what its cache lost). A
    re-lock would then rewrite an unchanged lock and ``fetch`` would skip its size
    check. The sha256 names the bytes, so a size recorded for it still holds; a size
    uv does give is kept as it is.
    """
    known: dict[str, int] = {}
    for package in previous.packages if previous else ():
        for old in (*(package.wheels or ()), package.sdist, package.archive):
            sha = old.hashes.get("sha256") if old is not None else None
            if old is not None and old.size is not None and sha:
                known[sha.lower()] = old.size
    filled = 0
    for package in data.get("packages", []):
        for artifact in (*package.get("wheels", ()), package.get("sdist"), package.get("archive")):
            if not isinstance(artifact, dict) or "size" in artifact:
                continue
            size = known.get(str(artifact.get("hashes", {}).get("sha256", "")).lower())
            if size is None:
                continue
            # Where uv writes it (after upload-time, before the hashes), so the bytes
            # equal a lock uv gave every size.
            items = list(artifact.items())
            at = next((i for i, (k, _) in enumerate(items) if k == "hashes"), len(items))
            artifact.clear()
            artifact.update([*items[:at], ("size", size), *items[at:]])
            filled += 1
    return filled


def upgrade_names(names: Sequence[str]) -> frozenset[str]:
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


def version_changes(
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

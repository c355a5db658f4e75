"""Reading, validating and selecting from a PEP 751 ``pylock.toml``.

Validation and selection go through :mod:`packaging.pylock`; envship adds its own
``[tool.envship]`` table (spec digest, targets, groups) so that a lock alone says which
machines it serves. (The check that every target has an installable artifact for every
package runs when locking: :mod:`envship._lockcheck`.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from packaging.markers import Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.pylock import (
    Package,
    PackageArchive,
    PackageDirectory,
    PackageSdist,
    PackageVcs,
    PackageWheel,
    Pylock,
    PylockSelectError,
    PylockValidationError,
)
from packaging.utils import parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

from ._toml import read_toml
from .errors import (
    GroupError,
    InvalidLockError,
    Problem,
    TargetError,
    UnsupportedTargetError,
)
from .targets import DEFAULT_GLIBC, Target

__all__ = ["LOCK_FILENAME", "Artifact", "LockFile"]

LOCK_FILENAME = "pylock.toml"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REMAKE = "make the lock again with `envship lock` rather than editing it"


@dataclass(frozen=True, slots=True)
class Artifact:
    """One file a lock selects: what it is, where it comes from, what its bytes must be."""

    name: str
    version: str
    filename: str
    url: str | None
    path: str | None
    size: int | None
    sha256: str
    kind: Literal["wheel", "sdist"]
    targets: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "filename": self.filename,
            "url": self.url,
            "size": self.size,
            "sha256": self.sha256,
            "kind": self.kind,
            "targets": list(self.targets),
        }


def _filename(artifact: PackageWheel | PackageSdist, where: str) -> str:
    name = artifact.filename if isinstance(artifact, PackageWheel) else artifact.name
    if name:
        return name
    source = artifact.url or artifact.path or ""
    candidate = source.rstrip("/").rsplit("/", 1)[-1]
    if not candidate:
        raise InvalidLockError("lock entry has no file name", problems=[Problem(where, "no name")])
    return candidate


@dataclass(frozen=True, slots=True)
class LockFile:
    """A validated lock and envship's view of it."""

    path: Path
    # As packaging reads it, with each package's version taken from its file names where
    # the lock leaves ``version`` out (``_checked_packages``).
    pylock: Pylock
    digest: str  # sha256 of the file's bytes: identifies this exact lock
    spec_digest: str | None
    targets: tuple[Target, ...]
    allow_sdist: bool
    name: str | None = None  # the spec's name, from [tool.envship]
    display_name: str | None = None  # the spec's kernel display name

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LockFile:
        """Read and validate the lock at ``path``: :class:`InvalidLockError` (bad input)
        listing every problem with its place, or a permission error naming the folder
        that refuses this user."""
        path = Path(path)
        data, content = read_toml(
            path,
            InvalidLockError,
            what="the lock",
            missing_hint="`envship lock` writes it beside the spec; or name another lock "
            "(--lock FILE)",
            hint=_REMAKE,
        )
        try:
            pylock = Pylock.from_dict(data)
        except PylockValidationError as exc:
            raise InvalidLockError(
                f"{path} is not a valid PEP 751 lock",
                problems=[Problem(f"{path}: {exc.context or '(top)'}", exc.message)],
                hint=_REMAKE,
            ) from None
        tool, problems = _envship_table(data, f"{path}: tool.envship")
        targets: list[Target] = []
        for i, raw in enumerate(tool.get("targets", [])):
            target = _target(raw, f"{path}: tool.envship.targets[{i}]", problems)
            if target is not None:
                targets.append(target)
        in_table = len(problems)
        pylock = _checked_packages(pylock, f"{path}: packages", problems)
        problems.extend(_marker_problems(pylock, targets, f"{path}: "))
        if problems:
            raise InvalidLockError(
                f"{path} has an invalid [tool.envship] table"
                if in_table == len(problems)
                else f"{path} has invalid entries",
                problems=problems,
                hint=_REMAKE,
            )
        spec_digest = tool.get("spec-digest")
        return cls(
            path=path,
            pylock=pylock,
            digest=f"sha256:{hashlib.sha256(content).hexdigest()}",
            spec_digest=spec_digest if isinstance(spec_digest, str) else None,
            targets=tuple(targets),
            allow_sdist=tool.get("allow-sdist", False) is True,
            name=_optional_str(tool.get("name")),
            display_name=_optional_str(tool.get("display-name")),
        )

    def no_targets(self) -> InvalidLockError:
        """The error for a lock without ``[tool.envship] targets``: most often one another
        tool wrote (PEP 751 records environments as markers, not the platform, glibc and
        Python a target needs), which the message says."""
        by = self.pylock.created_by
        made = "" if by == "envship" else f": it was made by {by!r}, not `envship lock`"
        return InvalidLockError(
            f"{self.path} records no targets (tool.envship.targets){made}",
            hint="envship installs a lock for the targets `envship lock` checked it against: "
            "lock the spec (or the requirements the lock came from) with `envship lock`",
        )

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.pylock.dependency_groups or ())

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.targets) or "(none recorded)"
        raise TargetError(
            f"the lock has no target {name!r}",
            problems=[Problem(str(self.path), f"its targets: {known}")],
            hint=f"name one of them ({known}), or add the target to the spec and lock again"
            if self.targets
            else None,
        )

    def chosen_groups(self, groups: str | Collection[str] | None = None) -> tuple[str, ...]:
        """``groups`` (default: every group of the lock), sorted; unknown names refused.
        A bare string names one group."""
        if groups is None:
            return tuple(sorted(self.groups))
        if isinstance(groups, str):
            groups = (groups,)
        unknown = sorted(set(groups) - set(self.groups))
        if unknown:
            known = ", ".join(self.groups) or "(none)"
            raise GroupError(
                f"the lock has no dependency group {', '.join(map(repr, unknown))}",
                problems=[Problem(str(self.path), f"its groups: {known}")],
                hint=f"name one of them ({known}), or no --group for all of them"
                if self.groups
                else "the lock has no dependency groups: leave --group out",
            )
        return tuple(sorted(set(groups)))

    def select(
        self, target: Target, *, groups: str | Collection[str] | None = None
    ) -> list[tuple[Package, PackageWheel | PackageSdist]]:
        """The packages and artifacts an installer on ``target`` uses, per PEP 751."""
        chosen = self.chosen_groups(groups)
        try:
            selected = list(
                self.pylock.select(
                    environment=target.marker_environment(),
                    tags=target.tags(),
                    dependency_groups=chosen,
                )
            )
        except PylockSelectError as exc:
            # The target is the lock's own (tool.envship.targets): a lock whose packages
            # cannot be selected for it (two entries of one name, a requires-python or a
            # wheel set that excludes it) contradicts itself, as only an edit makes it.
            raise InvalidLockError(
                f"{self.path} cannot be installed on its own target {target.name!r}",
                problems=[Problem(str(self.path), str(exc))],
                hint=_REMAKE,
            ) from None
        out: list[tuple[Package, PackageWheel | PackageSdist]] = []
        for package, artifact in selected:
            if not isinstance(artifact, PackageWheel | PackageSdist):
                # A source tree or a direct URL (PEP 751 packages.vcs, .directory,
                # .archive): bad input, as the lock holds what envship cannot install.
                key, what = _DIRECT[type(artifact)]
                raise InvalidLockError(
                    f"{package.name} is locked from {what}, which envship cannot install",
                    problems=[
                        Problem(
                            f"{self.path}: packages[{self._index(package)}].{key}",
                            f"{what}; envship installs only wheels and sdists",
                        )
                    ],
                    hint="lock it from a package index: a requirement by name in the spec "
                    "(with an [[indexes]] entry where it is published), then `envship lock`",
                )
            if isinstance(artifact, PackageSdist) and not self.allow_sdist:
                where = f"{self.path}: packages[{self._index(package)}]"
                raise UnsupportedTargetError(
                    f"{package.name} {package.version} has no wheel for target {target.name!r}",
                    problems=[
                        Problem(
                            where,
                            "only its sdist fits, and the lock does not allow building "
                            "(tool.envship.allow-sdist)",
                        )
                    ],
                    hint="allow-sdist = true in the spec permits building it (runs its code)",
                )
            out.append((package, artifact))
        return out

    def _index(self, package: Package) -> int:
        return next(i for i, p in enumerate(self.pylock.packages) if p is package)

    def _where(self, package: Package, artifact: PackageWheel | PackageSdist) -> str:
        """``FILE: packages[3].wheels[0]`` (or ``.sdist``): the entry's place in the file."""
        index = self._index(package)
        if isinstance(artifact, PackageSdist):
            return f"{self.path}: packages[{index}].sdist"
        wheels = package.wheels or []
        return f"{self.path}: packages[{index}].wheels[{wheels.index(artifact)}]"

    def artifacts(
        self,
        targets: str | Sequence[str] | None = None,
        *,
        groups: str | Collection[str] | None = None,
    ) -> list[Artifact]:
        """Every artifact selected for ``targets`` (default: all), each file listed once.
        A bare string names one target (or group), not a sequence of one-letter names.

        Every entry is checked for what envship relies on: a sha256 hash (the store's
        name for the file) that is 64 hex digits; all such problems are raised at once.
        """
        names = (targets,) if isinstance(targets, str) else targets
        chosen = [self.target(n) for n in names] if names else list(self.targets)
        if not chosen:
            raise self.no_targets()
        found: dict[str, Artifact] = {}
        problems: dict[str, Problem] = {}
        for target in chosen:
            for package, artifact in self.select(target, groups=groups):
                where = self._where(package, artifact)
                sha = (artifact.hashes or {}).get("sha256")
                if not sha or not _SHA256.fullmatch(sha):
                    problems[where] = Problem(
                        where,
                        f"sha256 {sha!r} is not 64 lowercase hex digits"
                        if sha
                        else "no sha256 hash; envship requires one for every artifact",
                    )
                    continue
                prev = found.get(sha)
                if prev is not None:
                    found[sha] = _with_target(prev, target.name)
                    continue
                found[sha] = Artifact(
                    name=str(package.name),
                    version=str(package.version),
                    filename=_filename(artifact, where),
                    url=artifact.url,
                    path=artifact.path,
                    size=artifact.size,
                    sha256=sha,
                    kind="wheel" if isinstance(artifact, PackageWheel) else "sdist",
                    targets=(target.name,),
                )
        if problems:
            raise InvalidLockError(
                f"{self.path} has {len(problems)} artifact(s) without a usable sha256",
                problems=list(problems.values()),
                hint="the store keeps files by sha256: make the lock again with `envship lock` "
                "(an edited lock, or one made by a tool that records other hashes)",
            )
        return sorted(found.values(), key=lambda a: (a.name, a.filename))


def _with_target(artifact: Artifact, target: str) -> Artifact:
    if target in artifact.targets:
        return artifact
    return Artifact(
        artifact.name,
        artifact.version,
        artifact.filename,
        artifact.url,
        artifact.path,
        artifact.size,
        artifact.sha256,
        artifact.kind,
        (*artifact.targets, target),
    )


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


_DIRECT: dict[type[Any], tuple[str, str]] = {
    PackageVcs: ("vcs", "a VCS checkout"),
    PackageDirectory: ("directory", "a local folder"),
    PackageArchive: ("archive", "a direct archive"),
}
# What tomllib returns, for messages; anything else it returns is a date or a time.
_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
_TOML_TYPES |= {list: "an array", dict: "a table"}
_TOOL_KEYS = {"spec-digest": str, "name": str, "display-name": str, "allow-sdist": bool}
_TARGET_KEYS = ("name", "platform", "python", "glibc", "variant")
_TARGET_VERSIONS = [
    ("python", re.compile(r"3\.(0|[1-9][0-9]?)"), "3.11"),
    ("glibc", re.compile(r"2\.(0|[1-9][0-9]?)"), "2.28"),
]


def _a(value: object) -> str:
    return _TOML_TYPES.get(type(value), "a date or time")


def _envship_table(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[Problem]]:
    """``[tool.envship]`` (empty when absent) and what is wrong with its shape. packaging
    checked that ``tool`` is a table; what is inside is envship's to check (a string
    ``allow-sdist = "false"`` must not read as true)."""
    tool = data.get("tool")
    table = tool.get("envship") if isinstance(tool, dict) else None
    if table is None:
        return {}, []
    if not isinstance(table, dict):
        return {}, [Problem(where, f"expected a table, found {_a(table)}")]
    problems = [
        Problem(f"{where}.{key}", f"expected {_a(kind())}, found {_a(table[key])}")
        for key, kind in _TOOL_KEYS.items()
        if key in table and not isinstance(table[key], kind)
    ]
    if not isinstance(table.get("targets", []), list):
        found = _a(table.pop("targets"))
        problems.append(Problem(f"{where}.targets", f"expected an array of tables, found {found}"))
    return table, problems


def _target(raw: object, where: str, problems: list[Problem]) -> Target | None:
    """One ``[[tool.envship.targets]]`` entry as a Target; None, with its problems
    added, if it is not one."""
    if not isinstance(raw, dict) or "name" not in raw:
        found = f", found {_a(raw)}" if not isinstance(raw, dict) else ""
        problems.append(Problem(where, f"expected a table with a name{found}"))
        return None
    wrong = [
        Problem(f"{where}.{key}", f"expected a string, found {_a(raw[key])}")
        for key in _TARGET_KEYS
        if key in raw and not isinstance(raw[key], str)
    ]
    # As a spec's: ASCII digits ("3.²" passes str.isdigit) and no minor version that
    # would list tags without end (py3.99999999 down to py30).
    wrong += [
        Problem(f"{where}.{key}", f"expected a version such as {example!r}, got {raw[key]!r}")
        for key, pattern, example in _TARGET_VERSIONS
        if isinstance(raw.get(key), str) and not pattern.fullmatch(raw[key])
    ]
    problems.extend(wrong)
    if wrong:
        return None
    try:
        return Target.create(
            raw["name"],
            platform_id=raw.get("platform", raw["name"]),
            python=raw.get("python", ""),
            glibc=raw.get("glibc", DEFAULT_GLIBC),
            variant=raw.get("variant", "cpu"),
            where=where,
        )
    except TargetError as exc:
        problems.extend(exc.problems)
        return None


def _checked_packages(pylock: Pylock, where: str, problems: list[Problem]) -> Pylock:
    """``pylock`` with each package's version known; a file size that is not positive
    added to ``problems`` (a wheel is a zip file, never empty: fetch would blame the index).

    PEP 751 makes ``packages.version`` optional: it "SHOULD be specified when the version
    is known to be stable (i.e. when an sdist or wheels are specified)", and their file
    names carry it. A package that leaves it out takes it from its files, which must
    then agree (packaging checks them only against a version that is there): without
    one, install would ask uv for ``attrs==None`` and verify could never match. Source
    trees have none, as PEP 751 requires; ``select`` refuses them.
    """
    packages: list[Package] = []
    for i, package in enumerate(pylock.packages):
        files: list[tuple[str, PackageWheel | PackageSdist, Version]] = [
            (f"wheels[{j}]", w, parse_wheel_filename(w.filename)[1])
            for j, w in enumerate(package.wheels or ())
        ]
        if package.sdist is not None:
            sdist = package.sdist
            files.append(("sdist", sdist, parse_sdist_filename(sdist.filename)[1]))
        for key, file, version in files:
            size = file.size
            if size is not None and size <= 0:  # packaging checked it is an int
                problems.append(
                    Problem(f"{where}[{i}].{key}.size", f"{size!r} is not a positive size")
                )
            if package.version is None and version != files[0][2]:
                problems.append(
                    Problem(
                        f"{where}[{i}].{key}",
                        f"version {version} in its file name, {files[0][2]} in "
                        f"{files[0][0]}'s: a package without a version takes it from its "
                        "files, which must agree",
                    )
                )
        if package.version is None and files:
            package = dataclasses.replace(package, version=files[0][2])
        packages.append(package)
    return dataclasses.replace(pylock, packages=packages)


def _marker_problems(pylock: Pylock, targets: Sequence[Target], where: str) -> list[Problem]:
    """Markers ``select`` cannot evaluate for a target: a name PEP 751 does not define
    in a lock (``extra``; PEP 751 has ``extras``), a set compared with ``==``. packaging
    raises these only when it evaluates, mid-selection; each is named here instead."""
    problems: dict[str, Problem] = {}

    def check(place: str, marker: Marker, env: Any, context: Any) -> None:
        try:
            marker.evaluate(env, context=context)
        except (UndefinedComparison, UndefinedEnvironmentName) as exc:
            why = f"{exc.args[0]!r} is not defined" if isinstance(exc, KeyError) else str(exc)
            problems.setdefault(place, Problem(f"{where}{place}", f"{marker}: {why}"))

    groups = frozenset(pylock.dependency_groups or ())
    for target in targets:
        base = target.marker_environment()
        for i, marker in enumerate(pylock.environments or ()):
            check(f"environments[{i}]", marker, base, "requirement")
        # As Pylock.select evaluates packages': with the extras and groups asked for.
        env = dict(base, extras=frozenset(), dependency_groups=groups)
        for i, package in enumerate(pylock.packages):
            if package.marker is not None:
                check(f"packages[{i}].marker", package.marker, env, "lock_file")
    return list(problems.values())

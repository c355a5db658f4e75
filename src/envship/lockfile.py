"""Reading, validating and selecting from a PEP 751 ``pylock.toml``.

Validation and selection go through :mod:`packaging.pylock`; envship adds its own
``[tool.envship]`` table (spec digest, targets, groups) so that a lock alone says which
machines it serves. (The check that every target has an installable artifact for every
package runs when locking: :mod:`envship._lockcheck`.)
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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

from ._lockshape import checked_packages, envship_table, marker_problems, target_entry
from ._toml import read_toml
from .errors import (
    GroupError,
    InvalidLockError,
    Problem,
    TargetError,
    UnsupportedTargetError,
)
from .targets import Target

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
        tool, problems = envship_table(data, f"{path}: tool.envship")
        targets: list[Target] = []
        for i, raw in enumerate(tool.get("targets", [])):
            target = target_entry(raw, f"{path}: tool.envship.targets[{i}]", problems)
            if target is not None:
                targets.append(target)
        in_table = len(problems)
        pylock = checked_packages(pylock, f"{path}: packages", problems)
        problems.extend(marker_problems(pylock, targets, f"{path}: "))
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

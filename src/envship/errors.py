"""The one exception hierarchy of envship.

Every error carries structured fields so the CLI can render a message, a hint and an
exit code in one place, and so ``--json`` output can carry the same facts. Errors that
find several problems (a malformed spec, a lock with missing wheels) collect them all
and raise once, the way :mod:`packaging` reports validation problems.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AddConflictError",
    "AddError",
    "AddInputError",
    "ArtifactError",
    "EnvError",
    "EnvInputError",
    "EnvshipError",
    "GroupError",
    "HalfMadeError",
    "ImageError",
    "ImageInputError",
    "IndexExportError",
    "IndexExportInputError",
    "InstallError",
    "InstallInputError",
    "InvalidLockError",
    "KernelError",
    "KernelInputError",
    "LockError",
    "NetworkError",
    "PermissionDeniedError",
    "Problem",
    "RegistryAuthError",
    "RegistryError",
    "SpecError",
    "StaleLockError",
    "StoreError",
    "TargetError",
    "UnsafeLayerError",
    "UnsupportedBaseError",
    "UnsupportedTargetError",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong, and where: ``file:line``, a key path, or ``packages[3].wheels[0]``."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def to_json(self) -> dict[str, str]:
        return {"where": self.where, "message": self.message}


class EnvshipError(Exception):
    """Base of every error envship raises on purpose.

    ``exit_code`` follows a small table the CLI documents: 1 for a failed check, 2 for
    bad input, 3 for network trouble, 4 for an integrity failure. The CLI adds 130 for an
    interruption and 70 (EX_SOFTWARE) for an exception that is none of these: a bug.
    """

    exit_code: int = 1
    kind: str = "error"

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[Problem] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.hint = hint

    def __str__(self) -> str:
        lines = [self.message, *(f"  {p}" for p in self.problems)]
        return "\n".join(lines)

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take keyword-only fields, which Exception's own pickling cannot pass
        # back; rebuild from the state instead, so errors cross process pools intact.
        return (_restore, (type(self), self.args, self.__dict__))

    def to_json(self) -> dict[str, object]:
        return {
            "error": self.kind,
            "message": self.message,
            "problems": [p.to_json() for p in self.problems],
            "hint": self.hint,
        }


def _restore(cls: type[EnvshipError], args: tuple[object, ...], state: dict[str, object]) -> object:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class SpecError(EnvshipError):
    """A spec or an imported file (requirements, pyproject, environment.yml) is invalid."""

    exit_code = 2
    kind = "spec"


class TargetError(SpecError):
    """A target name or its settings are unknown or invalid."""

    kind = "target"


class PermissionDeniedError(EnvshipError):
    """This user may not read (or enter) a path the command needs: a version or root made
    by another user with a private umask, a base interpreter under a private home. A
    failure, not bad input (exit 1): the path is right, and its owner can open it."""

    exit_code = 1
    kind = "permission"


class LockError(EnvshipError):
    """Resolution failed, or a lock file is malformed or cannot serve a target."""

    exit_code = 1
    kind = "lock"


class InvalidLockError(LockError):
    """A lock file is malformed, or lacks what was asked of it (a dependency group), or a
    lock was asked to be written where none can be (a missing folder, a name PEP 751 does
    not allow): bad input (exit 2), as the CLI's usage error for the same ``-o``."""

    exit_code = 2
    kind = "invalid-lock"


class GroupError(LockError):
    """A dependency group was asked for that the lock does not have: bad input, while the
    lock itself is sound (``invalid-lock`` would send the user to remake it)."""

    exit_code = 2
    kind = "group"


class UnsupportedTargetError(LockError):
    """Some locked packages have no installable artifact for some targets."""

    kind = "unsupported-target"


class StaleLockError(LockError):
    """The lock no longer matches the spec."""

    kind = "stale-lock"


class NetworkError(EnvshipError):
    """An index or artifact URL could not be reached after retries."""

    exit_code = 3
    kind = "network"

    def __init__(self, message: str, *, url: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.url = url

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["url"] = self.url
        return data


class StoreError(EnvshipError):
    """The artifact store cannot be used (permissions, full disk, missing artifact)."""

    exit_code = 1
    kind = "store"


class ArtifactError(StoreError):
    """An artifact's bytes do not match the size or hash its lock entry promises."""

    exit_code = 4
    kind = "integrity"

    def __init__(
        self,
        message: str,
        *,
        artifact: str,
        expected: str,
        actual: str,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.artifact = artifact
        self.expected = expected
        self.actual = actual

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data.update(artifact=self.artifact, expected=self.expected, actual=self.actual)
        return data


class IndexExportError(EnvshipError):
    """The static index could not be written."""

    kind = "index"


class IndexExportInputError(IndexExportError):
    """The export was asked for with bad input: an output folder that is not an export
    and not empty (bad input, exit 2, where :class:`IndexExportError` is a failure)."""

    exit_code = 2
    kind = "index-input"


class HalfMadeError(EnvshipError):
    """The folder is an environment a run of ``install`` or ``add`` did not finish, with
    nothing yet to compare (killed before its venv was made). Exit 1, as verify's
    ``incomplete`` difference: a state the command in the hint changes, not bad input."""

    exit_code = 1
    kind = "incomplete"


class InstallError(EnvshipError):
    """``envship install`` could not make the environment (uv failed, say)."""

    exit_code = 1
    kind = "install"


class InstallInputError(InstallError):
    """A destination install never changes: a folder envship did not make, a shared
    version, the place of a root's ``current`` link. Bad input (exit 2), as ``add`` and
    ``kernel install`` refuse the same places."""

    exit_code = 2
    kind = "install-input"


class AddError(EnvshipError):
    """``envship add`` cannot make the addition: no usable environment, no spec, uv failed."""

    exit_code = 1
    kind = "add"


class AddInputError(AddError):
    """``envship add`` was pointed at something that is not an environment it can extend
    (no environment given, a path that does not exist, a venv envship did not make, a
    shared version, which is immutable), as ``kernel install`` refuses them. Bad input
    (exit 2)."""

    exit_code = 2
    kind = "add-input"


class AddConflictError(AddError):
    """A requested requirement needs a locked package at another version."""

    kind = "add-conflict"


class EnvError(EnvshipError):
    """A persistent environment cannot be created, found or used."""

    kind = "env"


class KernelError(EnvshipError):
    """A kernelspec could not be made, found or removed."""

    kind = "kernel"


class ImageError(EnvshipError):
    """An image cannot be assembled or written (a full disk, an output that cannot be
    written): a failure, exit 1. What the user named and cannot be used (a malformed
    reference, no such layout or tag) is :class:`ImageInputError` and a base that cannot
    carry the environment :class:`UnsupportedBaseError`, both bad input (exit 2); a
    layer escaping the root is :class:`UnsafeLayerError` (exit 4)."""

    kind = "image"


class ImageInputError(ImageError):
    """The image named is not there or cannot be used as given: a malformed reference or
    archive name, no such layout, tag or archive, a layout holding several images with
    none named, a truncated archive, an image envship did not build. Bad input (exit 2),
    where :class:`ImageError` itself is a failure to do the work (a full disk)."""

    exit_code = 2
    kind = "image-input"


class UnsupportedBaseError(ImageError):
    """A base image cannot carry the environment: no Python, or none of the lock's
    targets (another Python, architecture, too old a glibc). Bad input, like a target
    that does not fit the machine."""

    exit_code = 2
    kind = "unsupported-base"


class UnsafeLayerError(ImageError):
    """A layer holds an entry that would land outside the root (absolute, ``..``, escaping
    link). Reading it stops before anything is written. (Device nodes and FIFOs are read,
    never created: :func:`envship.layerfs.is_special`.)"""

    exit_code = 4
    kind = "unsafe-layer"

    def __init__(self, message: str, *, layer: str, entry: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.layer = layer
        self.entry = entry

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data.update(layer=self.layer, entry=self.entry)
        return data


class RegistryError(NetworkError):
    """A registry refused or failed a request of the distribution API after retries."""

    kind = "registry"

    def __init__(
        self,
        message: str,
        *,
        url: str,
        registry: str,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, url=url, hint=hint)
        self.registry = registry
        self.status = status

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data.update(registry=self.registry, status=self.status)
        return data


class RegistryAuthError(RegistryError):
    """Credentials for a registry are missing or wrong. The message names the registry
    and how to log in; it never carries the secret."""

    kind = "registry-auth"


class EnvInputError(EnvError):
    """A persistent environment was asked for with bad input: no root given, a root that
    does not exist, an invalid environment name. Bad input (exit 2), where
    :class:`EnvError` itself is a failure to do the work (a full disk)."""

    exit_code = 2
    kind = "env-input"


class KernelInputError(KernelError):
    """A kernel was asked for with bad input: an invalid kernel name, placements that
    exclude each other, a name with no kernelspec to remove or one envship did not make.
    Bad input (exit 2)."""

    exit_code = 2
    kind = "kernel-input"

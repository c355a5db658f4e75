"""The localized lock an index export writes beside its files.

PEP 751 lets an artifact give a ``path`` relative to the lock instead of a ``url``; the
export's ``pylock.toml`` points each artifact it holds at ``files/<filename>``, drops
what it holds no bytes for, and narrows what the lock claims (environments, groups,
``[tool.envship]`` targets) to what was chosen. Rewriting a lock is a concept of its
own, apart from laying out the simple index; :mod:`envship.index` calls it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

from packaging.markers import Marker
from packaging.pylock import Pylock, PylockValidationError
from packaging.utils import canonicalize_name

from .errors import IndexExportError, Problem
from .lockfile import Artifact, LockFile
from .targets import Target

__all__ = ["localized_lock"]


def localized_lock(
    lock: LockFile,
    selected: Collection[Artifact],
    targets: Sequence[Target],
    groups: Collection[str],
) -> dict[str, Any]:
    """The lock with each selected artifact at ``files/<filename>``, the rest dropped.

    PEP 751 lets an artifact give a ``path`` (relative to the lock file) instead of a
    ``url``. Packages and artifacts not selected for the chosen targets are dropped: the
    export holds no bytes for them, and a lock must not point at files that do not exist.
    What the lock claims is narrowed the same way (see :func:`_narrow_claims`).
    """
    by_sha = {a.sha256: a for a in selected}
    chosen = {t.name for t in targets}
    data = dict(lock.pylock.to_dict())
    _narrow_claims(data, lock, targets, groups)
    packages: list[dict[str, Any]] = []
    for package in data.get("packages", []):
        pkg = dict(package)
        wheels = [w for w in (_local(w, by_sha) for w in pkg.pop("wheels", [])) if w]
        sdist = _local(pkg.pop("sdist"), by_sha) if "sdist" in pkg else None
        if not wheels and sdist is None:
            continue
        pkg.update({"wheels": wheels} if wheels else {}, **({"sdist": sdist} if sdist else {}))
        # ``packages.index`` is kept: PEP 751 makes it informative (where the files were
        # found, for tools that want more data about the package); installers take each
        # artifact from its url/path, so it does not send them to the network, and it
        # keeps the provenance of the bytes for audits.
        packages.append(pkg)
    names = {canonicalize_name(str(p["name"])) for p in packages}
    for pkg in packages:
        # ``packages.dependencies`` refers to other entries; drop references to packages
        # this export left out so the lock stays self-consistent.
        deps = pkg.get("dependencies")
        if deps:
            pkg["dependencies"] = [
                d for d in deps if canonicalize_name(str(d.get("name", ""))) in names
            ]
    data["packages"] = packages
    envship = (data.get("tool") or {}).get("envship")  # to_dict() made fresh dicts
    if envship and envship.get("targets"):
        # [tool.envship] is kept, but lists only the targets this export serves: a lock
        # that names a target it has no files for would fail `envship` checks later.
        envship["targets"] = [t for t in envship["targets"] if t.get("name") in chosen]
    try:
        Pylock.from_dict(data)
    except PylockValidationError as exc:  # pragma: no cover - guards our own output
        raise IndexExportError(
            "the localized lock is not a valid PEP 751 lock",
            problems=[Problem(exc.context or "(top)", exc.message)],
        ) from None
    return data


def _narrow_claims(
    data: dict[str, Any], lock: LockFile, targets: Sequence[Target], groups: Collection[str]
) -> None:
    """Keep in ``data`` only the environments and groups the export has files for.

    PEP 751 installers refuse a lock none of whose ``environments`` matches the machine,
    and offer the ``dependency-groups`` it lists: left whole, an export for x86_64 would
    be installed on aarch64 with packages missing, and one without ``dev`` would accept
    ``--group dev`` and install nothing of it.
    """
    environments = lock.pylock.environments
    if environments:
        # Evaluated as Pylock.select does, for each chosen target's marker environment.
        envs = [cast("dict[str, str]", t.marker_environment()) for t in targets]
        data["environments"] = [str(m) for m in environments if any(_holds(m, env) for env in envs)]
    for key in ("dependency-groups", "default-groups"):
        if key in data:
            data[key] = [g for g in data[key] if g in groups]


def _holds(marker: Marker, environment: dict[str, str]) -> bool:
    return marker.evaluate(environment, context="requirement")


def _local(entry: dict[str, Any], by_sha: dict[str, Artifact]) -> dict[str, Any] | None:
    artifact = by_sha.get(str((entry.get("hashes") or {}).get("sha256", "")))
    if artifact is None:
        return None
    local = {k: v for k, v in entry.items() if k not in ("url", "path")}
    local["path"] = f"files/{artifact.filename}"
    return local

"""envship: one declared Python environment, reproducible and instantly available anywhere.

The library API mirrors the CLI: load a :class:`Spec`, ``envship.lock.lock`` it into a
PEP 751 ``pylock.toml``, ``envship.fetch.fetch`` the locked artifacts into a verified
:class:`Store`, :func:`export_index` a static package index for networks with no
internet, and ``envship.install.install`` it offline into a virtual environment. (Those
three functions share their module's name, so they are imported from the module.)
"""

from __future__ import annotations

import importlib

# Not ``typing.TYPE_CHECKING``: importing typing costs the quick path of ``envship
# install`` ~7 ms before uv starts; type checkers take the name alone (mypy, pyright).
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from .errors import (
        ArtifactError,
        EnvshipError,
        GroupError,
        ImageError,
        ImageInputError,
        IndexExportError,
        InvalidLockError,
        LockError,
        NetworkError,
        Problem,
        RegistryAuthError,
        RegistryError,
        SpecError,
        StaleLockError,
        StoreError,
        TargetError,
        UnsafeLayerError,
        UnsupportedBaseError,
        UnsupportedTargetError,
    )
    from .fetch import FetchedArtifact, FetchResult
    from .index import IndexExport, export_index
    from .install import InstallResult
    from .lock import LockResult, check_lock
    from .lockfile import Artifact, LockFile
    from .spec import IndexConfig, Spec, find_spec, load_spec, parse_spec
    from .store import Store
    from .targets import PLATFORMS, Platform, Target

# Loaded on first use (PEP 562): the CLI imports this package for every command, and a
# command should not pay for modules it does not run (`envship install` never needs the
# spec model: 3 ms of start-up, 6 ms when no bytecode cache can be written). The errors
# too: their dataclasses cost the quick path of `envship install` (envship._quickinstall)
# ~10 ms before uv starts.
_LAZY = {
    "ArtifactError": "errors",
    "EnvshipError": "errors",
    "GroupError": "errors",
    "ImageError": "errors",
    "ImageInputError": "errors",
    "IndexExportError": "errors",
    "InvalidLockError": "errors",
    "LockError": "errors",
    "NetworkError": "errors",
    "Problem": "errors",
    "RegistryAuthError": "errors",
    "RegistryError": "errors",
    "SpecError": "errors",
    "StaleLockError": "errors",
    "StoreError": "errors",
    "TargetError": "errors",
    "UnsafeLayerError": "errors",
    "UnsupportedBaseError": "errors",
    "UnsupportedTargetError": "errors",
    "Artifact": "lockfile",
    "LockFile": "lockfile",
    "IndexConfig": "spec",
    "Spec": "spec",
    "find_spec": "spec",
    "load_spec": "spec",
    "parse_spec": "spec",
    "Store": "store",
    "PLATFORMS": "targets",
    "Platform": "targets",
    "Target": "targets",
    "FetchedArtifact": "fetch",
    "FetchResult": "fetch",
    "IndexExport": "index",
    "export_index": "index",
    "InstallResult": "install",
    "LockResult": "lock",
    "check_lock": "lock",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "PLATFORMS",
    "Artifact",
    "ArtifactError",
    "EnvshipError",
    "FetchResult",
    "FetchedArtifact",
    "GroupError",
    "ImageError",
    "ImageInputError",
    "IndexConfig",
    "IndexExport",
    "IndexExportError",
    "InstallResult",
    "InvalidLockError",
    "LockError",
    "LockFile",
    "LockResult",
    "NetworkError",
    "Platform",
    "Problem",
    "RegistryAuthError",
    "RegistryError",
    "Spec",
    "SpecError",
    "StaleLockError",
    "Store",
    "StoreError",
    "Target",
    "TargetError",
    "UnsafeLayerError",
    "UnsupportedBaseError",
    "UnsupportedTargetError",
    "__version__",
    "check_lock",
    "export_index",
    "find_spec",
    "load_spec",
    "parse_spec",
]

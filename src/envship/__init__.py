"""envship: one declared Python environment, reproducible and instantly available anywhere.

The library API mirrors the CLI: load a :class:`Spec`, :func:`lock` it into a PEP 751
``pylock.toml``, :func:`fetch` the locked artifacts into a verified :class:`Store`, and
:func:`export_index` a static package index for networks with no internet.
"""

from __future__ import annotations

from .errors import (
    ArtifactError,
    EnvshipError,
    IndexExportError,
    LockError,
    NetworkError,
    Problem,
    SpecError,
    StaleLockError,
    StoreError,
    TargetError,
    UnsupportedTargetError,
)
from .spec import IndexConfig, Spec, find_spec, load_spec, parse_spec
from .targets import PLATFORMS, Platform, Target

__version__ = "0.1.0"

__all__ = [
    "PLATFORMS",
    "ArtifactError",
    "EnvshipError",
    "IndexConfig",
    "IndexExportError",
    "LockError",
    "NetworkError",
    "Platform",
    "Problem",
    "Spec",
    "SpecError",
    "StaleLockError",
    "StoreError",
    "Target",
    "TargetError",
    "UnsupportedTargetError",
    "__version__",
    "find_spec",
    "load_spec",
    "parse_spec",
]

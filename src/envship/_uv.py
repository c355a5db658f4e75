"""Finding the uv binary, in a module of its own.

``envship install`` needs uv but nothing else from :mod:`envship.lock`, whose imports
(the spec model, ``tomli_w``, the resolver glue) would cost every install start-up.
"""

from __future__ import annotations

import shutil

from .errors import LockError

__all__ = ["uv_bin"]


def uv_bin() -> str:
    """The uv binary shipped by the ``uv`` package (a dependency), else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):  # pragma: no cover - depends on install
        found = shutil.which("uv")
        if found is None:
            raise LockError("uv is not installed", hint="pip install uv") from None
        return found

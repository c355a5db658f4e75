"""Whether this machine has an NVIDIA GPU, as choosing a lock target's variant asks.

A module of its own so that the quick path of ``envship install``
(:mod:`envship._quickinstall`) asks exactly what the interpreter probe asks
(:func:`envship.host.probe`) without importing the lock model.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["has_gpu"]


def has_gpu() -> bool:
    """True when an NVIDIA GPU looks usable: a device node or ``nvidia-smi`` on PATH."""
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None

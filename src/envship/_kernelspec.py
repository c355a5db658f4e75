"""A kernelspec folder as envship makes it and finds it again.

The names of the files in it; the ``kernel.json`` envship writes (``argv`` through the
launcher, ``metadata.envship`` recording which environment the kernel is for and what it
was when registered) and that metadata read back, which is also how envship tells its
own kernelspecs from others; and the ``kernels`` folders Jupyter searches. Installing,
listing and removing kernels all need these, so they are spelled out once, here.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .targets import Target

if TYPE_CHECKING:
    from ._kernellist import KernelInfo
    from .kernels import KernelSpecResult

__all__ = [
    "KERNEL_JSON",
    "LAUNCHER_NAME",
    "MAGIC_NAME",
    "jupyter_kernel_dirs",
    "kernel_json",
    "read_facts",
    "result_json",
    "specs_in",
]

KERNEL_JSON = "kernel.json"
LAUNCHER_NAME = "envship-kernel-launcher"
MAGIC_NAME = "envship_magic.py"  # the launcher preloads it under this name (_launcher.py)
_FACTS_FORMAT = 1


def result_json(result: KernelSpecResult | KernelInfo) -> dict[str, Any]:
    def plain(value: object) -> object:
        if isinstance(value, Target):
            return value.to_json()
        if isinstance(value, Path):
            return str(value)
        return list(value) if isinstance(value, tuple) else value

    return {f.name: plain(getattr(result, f.name)) for f in fields(result)}


def jupyter_kernel_dirs() -> list[Path]:
    """The ``kernels`` folders Jupyter searches now, first match wins (env vars included)."""
    from jupyter_client.kernelspec import KernelSpecManager

    return [Path(d) for d in KernelSpecManager().kernel_dirs]


def read_facts(resource_dir: Path) -> dict[str, Any] | None:
    """``metadata.envship`` of a kernelspec, or None when envship did not make it."""
    try:
        spec = json.loads((resource_dir / KERNEL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    metadata = spec.get("metadata") if isinstance(spec, dict) else None
    facts = metadata.get("envship") if isinstance(metadata, dict) else None
    if not isinstance(facts, dict) or not isinstance(facts.get("env"), str):
        return None
    facts = dict(facts)
    facts["_display_name"] = str(spec.get("display_name", ""))
    return facts


def kernel_json(
    name: str,
    display_name: str,
    resource_dir: Path,
    env: Path,
    marker: dict[str, Any],
    t: Target,
    env_root: Path | None = None,
) -> dict[str, Any]:
    python = env / "bin" / "python"
    facts: dict[str, Any] = {
        "format": _FACTS_FORMAT,
        "kernel_name": name,
        "env": str(env),
        "python": str(python),
        "lock_digest": marker["lock"]["digest"],
        "target": t.to_json(),
        "sys_platform": t.platform.sys_platform,
        "machine": t.platform.machine,
        # %envship add runs this: the environment does not contain envship.
        "envship_command": [sys.executable, "-m", "envship"],
    }
    lock_path = marker["lock"].get("path")
    if isinstance(lock_path, str) and lock_path:
        # The lock the environment was made from, for the launcher's remedy when the
        # environment cannot tell it any more (gone, its root moved, its marker lost).
        facts["lock_path"] = lock_path
    if env_root is not None:
        # ROOT/NAME of a kernel on `current`: the launcher's sh part reads it (like
        # lock_path, one key a line, as json.dumps(indent=2) writes it) to advise
        # `env create` when it is gone.
        facts["env_root"] = str(env_root)
    return {
        # /bin/sh runs the launcher so that a missing interpreter (the env was made in
        # another image) is reported in words rather than as a failed exec.
        "argv": [
            "/bin/sh",
            str(resource_dir / LAUNCHER_NAME),
            str(python),
            "-f",
            "{connection_file}",
        ],
        "display_name": display_name,
        "language": "python",
        # ipykernel handles SIGINT as an interrupt; the launcher execs, keeping the pid.
        "interrupt_mode": "signal",
        "metadata": {"envship": facts},
    }


def specs_in(kernels_dir: Path) -> list[Path]:
    """Kernelspec folders directly in ``kernels_dir``, as Jupyter lists them."""
    try:
        children = sorted(kernels_dir.iterdir())
    except OSError:
        return []
    # os.path: Path.is_dir/is_file raise on a folder this user may not enter (3.11), and
    # Jupyter skips such a kernelspec too.
    return [c for c in children if os.path.isdir(c) and os.path.isfile(c / KERNEL_JSON)]

"""The two small layers of an image's environment that are written, not installed: the
virtual environment itself, and the install marker with the Jupyter kernelspec.

Kept apart from :mod:`envship.image`, which assembles layers and config, because these
decide how the image's Python sees the environment: a PEP 405 venv written as files
(``pyvenv.cfg`` and links to the base's interpreter; nothing runs to create it), and a
kernelspec in a folder every Jupyter searches. Both are rebuilt on every build (they
are tiny); the marker layer is the only one that changes with every lock, so it is last.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .imagebase import BaseFacts
from .install import MARKER_NAME
from .layer import LayerBlob, LayerWriter
from .lockfile import Artifact, LockFile

__all__ = ["KERNELS_DIR", "kernel_for", "skeleton_layer", "top_layer"]

KERNELS_DIR = "usr/local/share/jupyter/kernels"  # on every Jupyter's system search path


def _small_layer(tmp_dir: Path, epoch: int, fill: Callable[[LayerWriter], None]) -> LayerBlob:
    writer = LayerWriter(tmp_dir, mtime=epoch)
    try:
        fill(writer)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def skeleton_layer(tmp_dir: Path, epoch: int, prefix: str, facts: BaseFacts) -> LayerBlob:
    """The venv itself (PEP 405): pyvenv.cfg and interpreter links to the base's Python."""

    def fill(writer: LayerWriter) -> None:
        rel = prefix.strip("/")
        writer.add_dir(f"{rel}/bin")
        writer.add_dir(f"{rel}/include")
        writer.add_dir(f"{rel}/lib/python{facts.version}/site-packages")
        writer.add_symlink(f"{rel}/lib64", "lib")
        writer.add_symlink(f"{rel}/bin/python", facts.python)
        writer.add_symlink(f"{rel}/bin/python3", "python")
        writer.add_symlink(f"{rel}/bin/python{facts.version}", "python")
        cfg = (
            f"home = {facts.python_home}\n"
            "include-system-site-packages = false\n"
            f"version = {facts.version_full}\n"
            f"executable = {facts.python}\n"
        )
        writer.add_file(f"{rel}/pyvenv.cfg", cfg.encode())

    return _small_layer(tmp_dir, epoch, fill)


def kernel_for(
    lock: LockFile, artifacts: Sequence[Artifact], kernel_name: str | None
) -> tuple[str | None, list[str]]:
    """The kernelspec's name (None without ipykernel) and notes to the user."""
    if not any(a.name == "ipykernel" for a in artifacts):
        return None, ["no kernelspec: ipykernel is not in the locked environment"]
    name = kernel_name or lock.name or "envship"
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower())
    return cleaned, []


def _kernelspec(display_name: str, prefix: str) -> bytes:
    spec = {
        "argv": [f"{prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "metadata": {"debugger": True, "envship": {"env": prefix}},
    }
    return json.dumps(spec, indent=1, sort_keys=True).encode() + b"\n"


def top_layer(
    tmp_dir: Path,
    epoch: int,
    prefix: str,
    marker: dict[str, Any],
    kernel: str | None,
    display_name: str,
) -> LayerBlob:
    """The install marker, and the kernelspec named ``kernel`` when there is one."""

    def fill(writer: LayerWriter) -> None:
        rel = prefix.strip("/")
        data = (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode()
        writer.add_file(f"{rel}/{MARKER_NAME}", data)
        if kernel is not None:
            writer.add_file(
                f"{KERNELS_DIR}/{kernel}/kernel.json", _kernelspec(display_name, prefix)
            )

    return _small_layer(tmp_dir, epoch, fill)

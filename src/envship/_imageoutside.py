"""What an image build wrote outside the environment, and how verify holds it to that.

Besides the environment under its prefix, ``envship image build`` writes a kernelspec
(``--kernel-name``, under ``.../share/jupyter/kernels/NAME``) in the same layer as the
environment's marker, and sets ``PATH`` and ``VIRTUAL_ENV`` in the image config. A later
layer or a changed config that sends the kernel or the shell to another Python is a
difference: the kernelspec files must be as built and alone in their folder, ``PATH``
must start with ``PREFIX/bin`` and ``VIRTUAL_ENV`` must be the prefix. The base image's
own files and other settings are not the build's and are not compared.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Mapping
from pathlib import Path

from ._difference import Difference
from ._records import encode_record_hash
from .imageio import ImageSource
from .layer import WHITEOUT_PREFIX
from .layerfs import iter_layer
from .oci import ImageConfig

__all__ = [
    "CONFIG_ENV",
    "KERNELSPEC",
    "ancestors",
    "built_kernelspec",
    "config_differences",
    "kernels_folder",
    "kernelspec_differences",
]

#: The ``name`` of differences in the kernelspec files envship wrote beside the environment.
KERNELSPEC = "(kernelspec)"
#: The ``path`` of ``config`` differences in the image config's environment variables.
CONFIG_ENV = "config.Env"

_KERNELS = "/share/jupyter/kernels/"


def kernels_folder(name: str) -> str | None:
    """The Jupyter kernelspec folder (``.../share/jupyter/kernels``: every such place on
    Jupyter's search path, where image builds write theirs) a layer path is in, if any."""
    text = f"/{name}/"
    at = text.find(_KERNELS)
    return text[1 : at + len(_KERNELS) - 1] if at >= 0 else None


def ancestors(path: str) -> set[str]:
    """The folders ``a``, ``a/b`` above ``a/b/c``."""
    parts = path.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def built_kernelspec(source: ImageSource, holders: list[int], marker: str) -> dict[str, bytes]:
    """The kernelspec files envship wrote (layer path -> content), read from the first
    layer that holds the environment's marker: image builds write both in that layer,
    last of theirs; a later layer can only change what the image shows there."""
    for i in holders:
        path = source.image.layer_paths[i]
        files: dict[str, bytes] = {}
        has_marker = False
        for info, reader in iter_layer(path, layer=f"{source.name} layer {i}"):
            if reader is not None and info.name == marker:
                has_marker = True
            elif (
                reader is not None
                and kernels_folder(info.name) is not None
                and not info.name.rpartition("/")[2].startswith(WHITEOUT_PREFIX)
            ):  # a whiteout (the base's kernelspec hidden) is no file of the image
                files[info.name] = reader.read()
        if has_marker:
            return files
    return {}


def _described(data: bytes) -> str:
    # As a RECORD line spells a file, like every other file difference.
    return f"sha256={encode_record_hash(hashlib.sha256(data).digest())}, size {len(data)}"


def _linked(root: Path, rel: str) -> str | None:
    """The first folder on the way to ``rel`` that is a symbolic link now (it may point
    anywhere, on this machine too: nothing below it is read), if any."""
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        folder = "/".join(parts[:i])
        try:
            if stat.S_ISLNK(os.lstat(root / folder).st_mode):
                return folder
        except OSError:
            return None  # gone: what is missing below it says so
    return None


def kernelspec_differences(root: Path, built: Mapping[str, bytes]) -> list[Difference]:
    """Each kernelspec file envship wrote against what the image holds there now, and
    any file a later layer put beside them (``kernel.js`` runs in every browser that
    opens the notebook)."""
    diffs = []
    links: set[str] = set()
    for rel, data in sorted(built.items()):
        where = root / rel
        expected = f"{_described(data)} (as built)"
        if (link := _linked(root, rel)) is not None:
            if link not in links:
                links.add(link)
                to = f"a symbolic link to {os.readlink(root / link)}"
                diffs.append(Difference("changed", KERNELSPEC, f"/{link}", "a folder", to))
            continue
        try:
            mode = os.lstat(where).st_mode
            now = where.read_bytes() if stat.S_ISREG(mode) else None
        except FileNotFoundError:
            diffs.append(Difference("removed", KERNELSPEC, f"/{rel}", expected))
            continue
        except OSError as exc:  # unreadable
            diffs.append(Difference("changed", KERNELSPEC, f"/{rel}", expected, str(exc)))
            continue
        if now is None:
            actual = f"not a regular file ({stat.filemode(mode)})"
            diffs.append(Difference("changed", KERNELSPEC, f"/{rel}", expected, actual))
        elif now != data:
            diffs.append(Difference("changed", KERNELSPEC, f"/{rel}", expected, _described(now)))
        elif mode & stat.S_IWOTH:
            diffs.append(
                Difference(
                    "changed", KERNELSPEC, f"/{rel}", "not writable by others",
                    f"mode {stat.filemode(mode)}", "anyone in the container can change it",
                )
            )  # fmt: skip
    for folder in sorted({posixpath.dirname(rel) for rel in built}):
        if _linked(root, f"{folder}/-") is not None:
            continue  # named above
        for dirpath, dirnames, filenames in os.walk(root / folder):
            # os.walk does not enter links to folders: they are entries of their own.
            links_here = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in sorted([*filenames, *links_here]):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if rel not in built:
                    diffs.append(Difference("added", KERNELSPEC, f"/{rel}", None, "not built"))
    return diffs


def config_differences(config: ImageConfig, prefix: str) -> list[Difference]:
    """The config envship wrote: ``PATH`` runs the environment's ``python``, ``pip`` and
    scripts first, and ``VIRTUAL_ENV`` names it (:func:`envship.image._config`)."""
    env = config.env
    diffs = []
    path = env.get("PATH")
    first = path.split(":")[0] if path else ""
    if not first or posixpath.normpath(first) != f"{prefix}/bin":
        diffs.append(
            Difference(
                "config", "PATH", CONFIG_ENV, f"{prefix}/bin first",
                path if path is not None else "(not set)",
                "python, pip and scripts run from elsewhere, not from the environment",
            )
        )  # fmt: skip
    venv = env.get("VIRTUAL_ENV")
    if venv is None or posixpath.normpath(venv) != prefix:
        diffs.append(
            Difference(
                "config", "VIRTUAL_ENV", CONFIG_ENV, prefix,
                venv if venv is not None else "(not set)",
                "tools that look for the active environment find another one",
            )
        )  # fmt: skip
    return diffs

"""The two small layers of an image's environment that are written, not installed: the
virtual environment itself, and the install marker with the Jupyter kernelspec.

Kept apart from :mod:`envship.image`, which assembles layers and config, because these
decide how the image's Python sees the environment: a PEP 405 venv written as files
(``pyvenv.cfg`` and links to the base's interpreter; nothing runs to create it), and a
kernelspec in a folder every Jupyter searches. Both are rebuilt on every build (they
are tiny); the marker layer is the only one that changes with every lock, so it is last.
Directories of the base on the way keep the base's owner and mode
(:mod:`envship._imageprefix`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._imageprefix import KERNELS_DIR, BaseDir, Placement, placed_writer
from ._kernelenv import kernel_name_for
from .errors import ImageInputError, Problem, UnsupportedBaseError
from .imagebase import BaseFacts
from .install import MARKER_NAME
from .layer import LayerBlob, LayerWriter
from .lockfile import Artifact, LockFile

__all__ = ["check_kernel_name", "kernel_for", "skeleton_layer", "skeleton_record", "top_layer"]

# jupyter_client's rule (kernelspec._kernel_name_pat), lower case only: Jupyter lowercases
# the folder name it finds, and SageMaker's AppImageConfig must name the kernel exactly.
# fullmatch: "$" alone also matches before a final newline.
_KERNEL_NAME = re.compile(r"[a-z0-9._-]+")


def check_kernel_name(name: str) -> str:
    """``name`` if Jupyter lists a kernelspec folder of that name under that very name."""
    if not _KERNEL_NAME.fullmatch(name) or name.startswith("."):
        suggestion = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
        raise ImageInputError(
            f"invalid kernelspec name {name!r}",
            problems=[
                Problem(
                    "--kernel-name",
                    "only lower-case ASCII letters, digits, '-', '.' and '_', "
                    "not starting with '.'",
                )
            ],
            hint=f"for example {suggestion!r}, and the same name in SageMaker's "
            "AppImageConfig KernelSpecs"
            if suggestion
            else "use lower-case letters, digits, '-', '.' and '_'",
        )
    return name


def _small_layer(
    tmp_dir: Path, epoch: int, kept: tuple[BaseDir, ...], fill: Callable[[LayerWriter], None]
) -> LayerBlob:
    writer = placed_writer(tmp_dir, mtime=epoch, kept=kept)
    try:
        fill(writer)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _skeleton(facts: BaseFacts) -> tuple[dict[str, bytes], dict[str, str]]:
    """The venv's own files and links, prefix-relative: ``(path -> content, path -> link
    target)``; the folders are ``bin``, ``include`` and the site-packages."""
    cfg = (
        f"home = {facts.python_home}\n"
        "include-system-site-packages = false\n"
        f"version = {facts.version_full}\n"
        f"executable = {facts.python}\n"
    )
    links = {
        "lib64": "lib",
        "bin/python": facts.python,
        "bin/python3": "python",
        f"bin/python{facts.version}": "python",
    }
    return {"pyvenv.cfg": cfg.encode()}, links


def skeleton_record(facts: BaseFacts) -> tuple[dict[str, str], dict[str, str]]:
    """What :func:`skeleton_layer` writes, as an install marker records a venv's creation
    (:func:`envship._installmarker.venv_record`: path -> hex sha256, path -> link target),
    for :func:`envship._installmarker.marker_data`'s ``venv`` and ``links``: with them,
    ``verify --image`` holds the skeleton against the record instead of accepting
    ``pyvenv.cfg`` and ``bin/python*`` by name."""
    files, links = _skeleton(facts)
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}, links


def skeleton_layer(tmp_dir: Path, epoch: int, place: Placement, facts: BaseFacts) -> LayerBlob:
    """The venv itself (PEP 405): pyvenv.cfg and interpreter links to the base's Python."""
    files, links = _skeleton(facts)

    def fill(writer: LayerWriter) -> None:
        rel = place.prefix.strip("/")
        writer.add_dir(f"{rel}/bin")
        writer.add_dir(f"{rel}/include")
        writer.add_dir(f"{rel}/lib/python{facts.version}/site-packages")
        for path, target in links.items():
            writer.add_symlink(f"{rel}/{path}", target)
        for path, data in files.items():
            writer.add_file(f"{rel}/{path}", data)

    return _small_layer(tmp_dir, epoch, place.above_prefix, fill)


def kernel_for(
    lock: LockFile, artifacts: Sequence[Artifact], kernel_name: str | None, place: Placement
) -> tuple[str | None, list[str]]:
    """The kernelspec's name (None without ipykernel) and notes to the user. A name
    given is used as it is or refused; one made from the lock's name is cleaned.

    Without ipykernel there is no kernelspec: a note says so, unless ``kernel_name``
    was given. A name asked for is one SageMaker's AppImageConfig will name, and an
    image without that kernelspec would fail only when Studio starts it, so that is
    refused (:class:`ImageInputError`, exit 2) before any layer is built."""
    if kernel_name is not None:
        check_kernel_name(kernel_name)
    if not any(a.name == "ipykernel" for a in artifacts):
        if kernel_name is not None:
            raise ImageInputError(
                f"cannot write the kernelspec {kernel_name!r}: ipykernel is not in the "
                "locked environment",
                problems=[
                    Problem(
                        "--kernel-name",
                        "a kernelspec runs ipykernel, which the lock does not select "
                        "(for this target and these groups)",
                    )
                ],
                hint="add ipykernel to the spec's dependencies (envship.toml), then "
                "`envship lock` and `envship fetch`, and build again; or leave "
                "--kernel-name out to build without a kernelspec",
            )
        return None, ["no kernelspec: ipykernel is not in the locked environment"]
    name = kernel_name or kernel_name_for(lock.name or "envship")
    if place.kernels_blocked is not None:
        raise UnsupportedBaseError(
            f"the base image has no folder for the kernelspec at /{KERNELS_DIR}",
            problems=[Problem(place.kernels_blocked, "is a file or device, not a folder")],
            hint="use a base whose Jupyter data folder is a folder",
        )
    notes = []
    if name in place.base_kernels:
        notes.append(f"the base's kernelspec {name!r} in /{place.kernels} is replaced by this one")
    return name, notes


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
    place: Placement,
    marker: dict[str, Any],
    kernel: str | None,
    display_name: str,
) -> LayerBlob:
    """The install marker, and the kernelspec named ``kernel`` when there is one; a
    kernelspec of that name in the base is hidden whole (an opaque whiteout), so none
    of its other files (logos, kernel.js) is left beside ours."""

    def fill(writer: LayerWriter) -> None:
        rel = place.prefix.strip("/")
        data = (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode()
        writer.add_file(f"{rel}/{MARKER_NAME}", data)
        if kernel is not None:
            folder = f"{place.kernels}/{kernel}"
            writer.add_file(f"{folder}/kernel.json", _kernelspec(display_name, place.prefix))
            if kernel in place.base_kernels:
                writer.add_opaque(folder)

    kept = place.above_prefix + (place.above_kernels if kernel is not None else ())
    return _small_layer(tmp_dir, epoch, kept, fill)

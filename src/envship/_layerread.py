"""Reading untrusted OCI layers: opening a blob (gzip, zstd or plain tar) and walking its
entries, each checked before anyone sees it.

Absolute names, ``..`` and links that climb out of the root raise
:class:`~envship.errors.UnsafeLayerError` (:func:`iter_layer`); device nodes and FIFOs
(:func:`is_special`) are read like any entry. Asked to (``climb``: ``verify --image``
only), a relative link whose ``..`` climbs above the root is read as a runtime reads it,
stopping at ``/``. Applying entries onto a folder is :mod:`envship.layerfs`, which
re-exports this module's API.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import tarfile
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, BinaryIO, cast

from .errors import ImageError, Problem, UnsafeLayerError
from .layer import WHITEOUT_PREFIX

__all__ = [
    "CHUNK",
    "MAX_SYMLINK_HOPS",
    "is_special",
    "iter_layer",
    "open_layer",
    "reading",
    "unreadable",
    "unsafe",
]

MAX_SYMLINK_HOPS = 40  # as Linux's MAXSYMLINKS
CHUNK = 1 << 20
# tarfile's stream reader copies the rest of its buffer on every read it serves
# (tarfile._Stream.__read: ``self.buf = t[size:]``), so a large ``bufsize`` there costs a
# near-``bufsize`` copy per 512-byte header: 1 MiB made iter_layer 50% slower than gunzip.
# The big buffer sits below it (a BufferedReader), and tarfile keeps its record size.
_READ_BUFFER = 1 << 20
_TAR_BUFSIZE = tarfile.RECORDSIZE
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ_ERRORS = (tarfile.TarError, zlib.error, EOFError, OSError)


@contextlib.contextmanager
def open_layer(blob: Path, *, layer: str = "") -> Iterator[BinaryIO]:
    """The uncompressed tar stream of a layer blob, gzip or plain (sniffed, not trusted
    from a media type)."""
    name = layer or str(blob)
    with open(blob, "rb", buffering=_READ_BUFFER) as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_GZIP_MAGIC):
            # GzipFile serves reads from 8 KiB inflate steps; one big buffer over it turns
            # the tar reader's many small reads into memory copies.
            with (
                gzip.GzipFile(fileobj=raw, mode="rb") as gz,
                io.BufferedReader(gz, _READ_BUFFER) as stream,
            ):
                yield cast(BinaryIO, stream)
        elif magic == _ZSTD_MAGIC:
            raise ImageError(
                f"layer {name} is zstd-compressed, which envship does not read",
                hint="use a base image whose layers are gzip or uncompressed tar",
            )
        else:
            yield raw


def unsafe(layer: str, entry: str, why: str) -> UnsafeLayerError:
    return UnsafeLayerError(
        f"layer {layer} is unsafe: entry {entry!r} {why}",
        layer=layer,
        entry=entry,
        hint="the image was built wrongly or tampered with; nothing was written from it",
    )


def unreadable(layer: str, exc: BaseException) -> ImageError:
    """The error for a blob that is not a (gzip) tar, or ends or breaks early."""
    return ImageError(
        f"layer {layer} is not a readable tar archive: {exc}",
        problems=[Problem(layer, str(exc) or type(exc).__name__)],
    )


@contextlib.contextmanager
def reading(layer: str) -> Iterator[None]:
    """Turn what reading a layer's bytes can raise into :func:`unreadable`'s error."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise unreadable(layer, exc) from exc


def _clean_name(name: str, layer: str, entry: str) -> str:
    if name.startswith("/"):
        raise unsafe(layer, entry, "has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise unsafe(layer, entry, "has a '..' component")
    return "/".join(parts)


def is_special(info: tarfile.TarInfo) -> bool:
    """Whether an entry is a device node or a FIFO: read, never created (module docstring)."""
    return info.ischr() or info.isblk() or info.isfifo()


def _check_entry(info: tarfile.TarInfo, layer: str, climb: bool = False) -> None:
    """Normalize ``info.name`` (and a hard link's target) in place, or raise. ``climb``:
    a relative symbolic link may climb above the root (its ``..`` stop there, as in a
    container), as :func:`read_layer` reads one."""
    entry = info.name
    info.name = name = _clean_name(entry, layer, entry)
    base = name.rpartition("/")[2]
    hidden = base[len(WHITEOUT_PREFIX) :] if base.startswith(WHITEOUT_PREFIX) else None
    if hidden in ("", ".", ".."):
        raise unsafe(layer, entry, "is a whiteout of the directory itself or its parent")
    if info.issym():
        target = info.linkname
        if not target:
            raise unsafe(layer, entry, "is a symbolic link with an empty target")
        if not target.startswith("/") and not climb:
            # Absolute targets are image paths; a relative one must stay below the root.
            depth = name.count("/")
            for part in target.split("/"):
                if part == "..":
                    depth -= 1
                    if depth < 0:
                        raise unsafe(layer, entry, f"links to {target!r}, outside the root")
                elif part not in ("", "."):
                    depth += 1
    elif info.islnk():
        info.linkname = _clean_name(info.linkname, layer, entry)
        if not info.linkname:
            raise unsafe(layer, entry, "is a hard link to the root")


def iter_layer(
    blob: Path, *, layer: str, climb: bool = False
) -> Generator[tuple[tarfile.TarInfo, IO[bytes] | None], None, None]:
    """Each entry of a layer with a reader for regular files, checked before it is yielded.

    Names come back cleaned (no ``./``, no trailing ``/``); the root entry itself is
    skipped. A reader is valid only until the next entry. Raises
    :class:`UnsafeLayerError` for absolute names, ``..``, relative symlinks that climb out
    of the root and hard links outside it; :class:`ImageError` for a blob that is not a
    (gzip) tar. Device nodes and FIFOs come back as they are (:func:`is_special`).
    ``climb``: relative symbolic links that climb above the root come back too, for
    reading an image as a container's kernel does (it stops their ``..`` at ``/``, so
    they lead inside the image, as an absolute one does); extraction never asks for it.
    """
    try:
        with (
            open_layer(blob, layer=layer) as stream,
            tarfile.open(fileobj=stream, mode="r|", bufsize=_TAR_BUFSIZE) as tar,
        ):
            while (info := tar.next()) is not None:
                _check_entry(info, layer, climb)
                if not info.name:
                    continue
                yield info, tar.extractfile(info) if info.isreg() else None
    except _READ_ERRORS as exc:
        raise unreadable(layer, exc) from exc

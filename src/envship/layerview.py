"""The merged file system of an image, read from its layer tars without extracting them.

Whiteouts of a layer hide what the layers below hold and entries below a symbolic link
directory land where the link points, as a container engine would unpack them. The tars
are read through :func:`envship.layerfs.iter_layer`, so every safety check applies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, TypeVar

from .errors import ImageError, Problem
from .layer import OPAQUE_WHITEOUT, WHITEOUT_PREFIX
from .layerfs import MAX_SYMLINK_HOPS, iter_layer, reading, split_path

__all__ = ["FileInfo", "LayerView", "merged_files", "read_file", "view_of"]

_CHUNK = 1 << 20
T = TypeVar("T")

_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CHRTYPE: "chardev",  # a base's /dev, as `docker import` of a root keeps it
    tarfile.BLKTYPE: "blockdev",
}


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One path of an image's merged file system."""

    path: str  # where it is in the image (parent symlinks followed), no leading '/'
    kind: str  # "file", "dir", "symlink", "hardlink", "fifo", "chardev" or "blockdev"
    size: int
    mode: int
    uid: int
    gid: int
    target: str | None  # a symlink's target as stored, a hard link's target path
    layer: int  # index of the layer that provides it
    entry: str  # its name inside that layer's tar


def _sha256(reader: IO[bytes]) -> str:
    h = hashlib.sha256()
    while chunk := reader.read(_CHUNK):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


class LayerView:
    """The file system an image's ``layers`` (bottom first) add up to, read from the tars.

    Whiteouts (``.wh.<name>``, ``.wh..wh..opq``) of a layer hide what the layers below
    hold; entries below a symbolic link directory land where the link points, as they
    would when a container engine unpacks them. Building the view reads every layer's
    headers once; :meth:`read_many` and :meth:`hash_files` read file contents with one
    pass per layer needed, which stops after the last entry they need. ``climb``: a
    relative link climbing above the root is read, as a runtime reads it (``verify
    --image``), not refused (:func:`envship.layerfs.iter_layer`).
    """

    def __init__(
        self, layers: Sequence[Path], names: Sequence[str] | None = None, *, climb: bool = False
    ) -> None:
        self.layers = list(layers)
        self.climb = climb
        self.names = list(names) if names else [f"{i} ({p.name})" for i, p in enumerate(layers)]
        self.files: dict[str, FileInfo] = {}
        # Where each file's bytes are: (layer, position of the entry in that layer's tar),
        # the same entry whose header ``files`` shows; a hard link's is its target's.
        self._content: dict[str, tuple[int, int]] = {}
        # path -> the path it resolves to. Only symbolic links steer a resolution, so
        # this is emptied whenever one is added or removed, and only then.
        self._real: dict[str, str] = {}
        for index, blob in enumerate(self.layers):
            self._add_layer(index, blob)

    def _drop_below(self, path: str, keep: set[str]) -> None:
        prefix = path + "/" if path else ""
        for key in [k for k in self.files if k.startswith(prefix) and k not in keep]:
            if self.files.pop(key).kind == "symlink":
                self._real.clear()

    def _add_layer(self, index: int, blob: Path) -> None:
        ours: set[str] = set()
        contents: dict[str, int] = {}  # entry name -> position of its bytes, this layer
        for position, (info, _reader) in enumerate(
            iter_layer(blob, layer=self.names[index], climb=self.climb)
        ):
            parent, _, base = info.name.rpartition("/")
            where = self.real_path(parent)
            if base == OPAQUE_WHITEOUT:
                self._drop_below(where, ours)
                continue
            if base.startswith(WHITEOUT_PREFIX):
                hidden = f"{where}/{base[4:]}" if where else base[4:]
                if hidden not in ours:
                    gone = self.files.pop(hidden, None)
                    if gone is not None and gone.kind == "symlink":
                        self._real.clear()
                    self._drop_below(hidden, ours)
                continue
            path = f"{where}/{base}" if where else base
            kind = _KINDS.get(info.type, "file")
            old = self.files.get(path)
            if old is not None and old.kind == "dir" and kind != "dir":
                # Replaced whole, even what this layer put in it (moby's UnpackLayer
                # removes the directory), unlike a whiteout, which hides lower layers only.
                self._drop_below(path, set())
            if kind == "symlink" or (old is not None and old.kind == "symlink"):
                self._real.clear()
            self.files[path] = FileInfo(
                path=path,
                kind=kind,
                size=info.size if kind == "file" else 0,
                mode=info.mode & 0o7777,
                uid=info.uid,
                gid=info.gid,
                target=info.linkname if kind in ("symlink", "hardlink") else None,
                layer=index,
                entry=info.name,
            )
            # A hard link names an earlier entry of the same tar (POSIX pax, "linkname").
            at = position if kind == "file" else contents.get(info.linkname, -1)
            if kind in ("file", "hardlink") and at >= 0:
                contents[info.name] = at
                self._content[path] = (index, at)
            else:
                contents.pop(info.name, None)
                self._content.pop(path, None)
            ours.add(path)

    def real_path(self, path: str) -> str:
        """``path`` with every symbolic link on it followed, the last one too, whether or
        not anything is there in the end (:meth:`resolve` insists that something is)."""
        hit = self._real.get(path)
        if hit is not None:
            return hit
        parts = split_path(path)
        if ".." in parts:
            return self._walk(path)
        # Down from the nearest ancestor already known, one component at a time; only a
        # component that is a link needs the whole walk (which counts every hop).
        known = len(parts)
        real = ""
        while known:
            cached = self._real.get("/".join(parts[:known]))
            if cached is not None:
                real = cached
                break
            known -= 1
        for i in range(known, len(parts)):
            here = f"{real}/{parts[i]}" if real else parts[i]
            info = self.files.get(here)
            prefix = "/".join(parts[: i + 1])
            real = self._walk(prefix, path) if info is not None and info.kind == "symlink" else here
            self._real[prefix] = real
        self._real[path] = real
        return real

    def _walk(self, path: str, whole: str | None = None) -> str:
        todo = list(reversed(split_path(path)))
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            here = "/".join([*done, part])
            info = self.files.get(here)
            if info is not None and info.kind == "symlink":
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ImageError(
                        f"too many levels of symbolic links resolving /{whole or path}"
                    )
                assert info.target is not None
                if info.target.startswith("/"):
                    done = []
                todo.extend(reversed(split_path(info.target)))
                continue
            done.append(part)
        return "/".join(done)

    def resolve(self, path: str) -> str:
        """The path that ``path`` (``/usr/bin/python3``) names once every symlink is
        followed inside the image; raises :class:`ImageError` if nothing is there."""
        real = self.real_path(path)
        if real and real not in self.files:
            raise ImageError(
                f"/{path.lstrip('/')} does not exist in the image",
                problems=[Problem(path, f"resolved to /{real}, which no layer provides")],
            )
        return real

    def get(self, path: str) -> FileInfo | None:
        """What is at ``path`` itself (a final symlink is not followed), or None."""
        parent, _, base = path.strip("/").rpartition("/")
        where = self.real_path(parent)
        return self.files.get(f"{where}/{base}" if where else base)

    def _contents(
        self, wanted: dict[int, dict[int, list[str]]], consume: Callable[[IO[bytes]], T]
    ) -> Iterator[tuple[list[str], tarfile.TarInfo, T]]:
        """(requests, header, ``consume(reader)``) of each wanted entry: ``wanted`` maps a
        layer to entry positions to the paths asking for them. Each layer is read once, as
        far as its last wanted entry."""
        for index in sorted(wanted):
            positions = wanted[index]
            entries = iter_layer(self.layers[index], layer=self.names[index], climb=self.climb)
            with contextlib.closing(entries):
                for position, (tinfo, reader) in enumerate(islice(entries, max(positions) + 1)):
                    requests = positions.get(position)
                    if requests and reader is not None:
                        with reading(self.names[index]):
                            result = consume(reader)
                        yield requests, tinfo, result

    def hash_files(self, want: Callable[[str], bool] | None = None) -> dict[str, tuple[str, int]]:
        """``path -> (sha256 digest, size)`` of every visible regular file (and hard link)
        that ``want`` accepts, streaming each layer needed once; nothing is held whole."""
        wanted: dict[int, dict[int, list[str]]] = {}
        for path, info in self.files.items():
            if info.kind not in ("file", "hardlink") or (want is not None and not want(path)):
                continue
            where = self._content.get(path)
            if where is not None:  # a hard link to nothing in its layer has no bytes
                wanted.setdefault(where[0], {}).setdefault(where[1], []).append(path)
        result: dict[str, tuple[str, int]] = {}
        for paths, tinfo, digest in self._contents(wanted, _sha256):
            for path in paths:
                result[path] = (digest, tinfo.size)
        return result

    def read(self, path: str) -> bytes:
        """The content of the file at ``path``, following symlinks inside the image."""
        return self.read_many([path])[path]

    def read_many(self, paths: Iterable[str]) -> dict[str, bytes]:
        """Contents of several files, reading each layer needed once."""
        wanted: dict[int, dict[int, list[str]]] = {}
        for path in paths:
            where = self._where(path)
            wanted.setdefault(where[0], {}).setdefault(where[1], []).append(path)
        found: dict[str, bytes] = {}
        for requests, _tinfo, data in self._contents(wanted, lambda reader: reader.read()):
            for request in requests:
                found[request] = data
        return found

    def stream(self, path: str, consume: Callable[[IO[bytes]], object]) -> bool:
        """``consume`` given a reader of the file at ``path`` (symlinks in the image
        followed) as its layer streams it: nothing is held whole, whatever its size (a
        hard link in a hostile image may name any file). False, and nothing read, when
        ``path`` is no regular file with content in the image; what ``consume`` and the
        reading raise is raised."""
        try:
            where = self._where(path)
        except ImageError:
            return False
        for _requests, _tinfo, _result in self._contents({where[0]: {where[1]: [path]}}, consume):
            return True
        return False

    def _where(self, path: str) -> tuple[int, int]:
        """(layer, entry position) holding the bytes of the file at ``path``."""
        info = self.files.get(self.resolve(path))
        if info is None or info.kind not in ("file", "hardlink"):
            raise ImageError(
                f"/{path.lstrip('/')} is not a regular file in the image",
                problems=[Problem(path, f"it is a {info.kind if info else 'directory'}")],
            )
        where = self._content.get(info.path)
        if where is None:
            raise ImageError(
                f"layer {self.names[info.layer]} has no file content for {info.target!r}",
                problems=[Problem(path, "hard link to a file the layer does not hold")],
            )
        return where


def view_of(layers: Sequence[Path], *, climb: bool = False) -> LayerView:
    """One view per list of layer blobs in this process: a base image is read once,
    whether it is probed, has a prefix placed in it, or both (1.6 s for a Debian base).
    The paths are an OCI layout's content-addressed blobs, so a view never goes stale."""
    return _view_of(tuple(layers), climb)


@functools.lru_cache(maxsize=2)
def _view_of(layers: tuple[Path, ...], climb: bool) -> LayerView:
    return LayerView(layers, climb=climb)


def merged_files(layers: Sequence[Path], *, climb: bool = False) -> dict[str, FileInfo]:
    """Path (no leading ``/``) -> :class:`FileInfo` of the image made of ``layers``."""
    return LayerView(layers, climb=climb).files


def read_file(layers: Sequence[Path], path: str) -> bytes:
    """The content of ``path`` in the image made of ``layers``, following symlinks."""
    return LayerView(layers).read(path)

"""Images on disk: the OCI image layout (image-layout.md).

An OCI layout is a folder with ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``.
Blobs are content-addressed and immutable, so they are written under a temporary name and
renamed into place; ``index.json`` is rewritten the same way, so a reader sees the old
index or the new one. Every read of a blob checks its size and digest.

Tagging reads, edits and replaces ``index.json`` under an flock on ``.envship-index.lock``
in the layout folder; without it, two builds writing into one layout each replace the
index with their own edit of the same old one, and a tag is lost. Creating a layout
takes the same lock, so two builds starting on a fresh store both find one layout.
Readers need no lock.
The image-layout spec lists the entries a layout must have and forbids none besides
(``docker save`` puts ``manifest.json`` beside them); still, the holder removes the lock
file when done (waiters re-check its inode, :mod:`envship._flock`), so a layout at rest
holds only what the spec names.

Docker's ``docker save`` archive, itself a layout in a tar, is :mod:`envship.dockerarchive`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import write_atomic
from ._flock import locked
from .errors import ArtifactError, ImageError, Problem
from .oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    REF_NAME,
    Descriptor,
    ImageConfig,
    ImageManifest,
    canonical_json,
    check_digest,
    load_json,
    sha256_digest,
)

__all__ = [
    "INDEX_LOCK",
    "LAYOUT_FILE",
    "LayoutImage",
    "OciLayout",
    "default_platform",
    "empty_index",
    "file_digest",
    "parse_layout_ref",
]

LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}  # the `oci-layout` file's content
INDEX_LOCK = ".envship-index.lock"  # flock serializing index.json edits (module docstring)
_CHUNK = 1 << 20
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def default_platform() -> str:
    """``linux/<arch>`` of this machine, as image indexes name platforms."""
    machine = platform.machine().lower()
    return f"linux/{_ARCH.get(machine, machine)}"


def parse_layout_ref(text: str) -> tuple[Path, str | None]:
    """``oci:DIR[:TAG]`` -> (DIR, TAG or None). As in containers/image, DIR ends at the
    first ``:`` after the prefix, so it cannot itself hold one."""
    if not text.startswith("oci:"):
        raise ImageError(
            f"not an OCI layout reference: {text!r}", hint="write it as oci:DIR or oci:DIR:TAG"
        )
    rest = text[len("oci:") :]
    directory, sep, tag = rest.partition(":")
    if not directory or (sep and not tag):
        raise ImageError(
            f"invalid OCI layout reference {text!r}", hint="write it as oci:DIR or oci:DIR:TAG"
        )
    return Path(directory).expanduser(), tag or None


def empty_index() -> dict[str, Any]:
    """An OCI image index listing no manifest (a new layout's ``index.json``)."""
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def file_digest(path: Path) -> tuple[str, int]:
    """``sha256:<hex>`` and size of the file at ``path``, read in pieces."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


@contextlib.contextmanager
def _index_locked(root: Path) -> Iterator[None]:
    lock = root / INDEX_LOCK
    with locked(lock):
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # last, still held: see the module docstring


def _names(entry: object, tag: str) -> bool:
    """Whether an ``index.json`` entry carries the tag ``tag``."""
    return isinstance(entry, dict) and (entry.get("annotations") or {}).get(REF_NAME) == tag


def _matches(platform_obj: object, wanted: str) -> bool:
    if not isinstance(platform_obj, dict):
        return False
    os_, _, rest = wanted.partition("/")
    arch, _, variant = rest.partition("/")
    if platform_obj.get("os") != os_ or platform_obj.get("architecture") != arch:
        return False
    return not variant or platform_obj.get("variant") in (variant, None)


@dataclass(frozen=True, slots=True)
class OciLayout:
    """An OCI image layout folder."""

    root: Path

    @classmethod
    def open(cls, path: Path | str, *, create: bool = False) -> OciLayout:
        root = Path(path).expanduser()
        marker = root / "oci-layout"
        if marker.is_file():
            version = load_json(marker.read_bytes(), str(marker)).get("imageLayoutVersion")
            if not isinstance(version, str) or not version.startswith("1."):
                raise ImageError(f"{marker}: unsupported imageLayoutVersion {version!r}")
            return cls(root)
        if not create:
            raise ImageError(
                f"{root} is not an OCI image layout (no oci-layout file)",
                hint="pass an existing layout written by envship, skopeo or docker save",
            )
        if root.exists() and not root.is_dir():
            raise ImageError(f"{root} exists and is not a folder")
        try:
            # Checked and made under the index lock: two builds creating one new layout (a
            # fresh store's) would otherwise see each other's half-made folder as foreign.
            with _index_locked(root):
                if marker.is_file():
                    return cls.open(root)
                if any(p.name != INDEX_LOCK for p in root.iterdir()):
                    raise ImageError(f"{root} exists and is not an empty folder or an OCI layout")
                (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
                write_atomic(root / "index.json", canonical_json(empty_index()))
                write_atomic(marker, canonical_json(LAYOUT_FILE))
        except OSError as exc:
            raise ImageError(f"cannot create an OCI layout at {root}: {exc.strerror}") from exc
        return cls(root)

    # -- blobs -----------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        """Store ``data``; a blob already present is left as it is."""
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.is_file():
            write_atomic(path, data)
        return Descriptor(media_type, digest, len(data))

    def add_blob_file(
        self,
        path: Path,
        digest: str,
        size: int,
        media_type: str,
        *,
        link: bool = False,
        verify: bool = True,
    ) -> Descriptor:
        """Bring a finished blob file in: moved (or hard-linked/copied with ``link``, e.g.
        from the layer cache), after its size and digest are checked."""
        check_digest(digest)
        if verify:
            actual, actual_size = file_digest(path)
            if (actual, actual_size) != (digest, size):
                raise ArtifactError(
                    f"blob {path} does not match its descriptor",
                    artifact=str(path),
                    expected=f"{digest} ({size} bytes)",
                    actual=f"{actual} ({actual_size} bytes)",
                )
        dest = self.blob_path(digest)
        if dest.is_file():
            if not link:
                path.unlink()
            return Descriptor(media_type, digest, size)
        # A name of its own, so two builds adding the same blob at once do not collide.
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
        try:
            if link:
                try:
                    os.link(path, tmp)
                except OSError:
                    shutil.copyfile(path, tmp)
            else:
                try:
                    os.replace(path, dest)
                    return Descriptor(media_type, digest, size)
                except OSError:
                    shutil.copyfile(path, tmp)
                    path.unlink()
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ImageError(f"cannot write blob {digest} into {self.root}: {exc}") from exc
        return Descriptor(media_type, digest, size)

    def get_blob(self, descriptor: Descriptor) -> bytes:
        """The bytes of a (small) blob, checked against the descriptor."""
        path = self.blob_path(descriptor.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageError(
                f"blob {descriptor.digest} is missing from {self.root}",
                problems=[Problem(str(path), "no such file")],
            ) from exc
        self._check(descriptor, path, sha256_digest(data), len(data))
        return data

    def verify_blob(self, descriptor: Descriptor) -> Path:
        """Check a (large) blob file by streaming it; returns its path."""
        path = self.blob_path(descriptor.digest)
        if not path.is_file():
            raise ImageError(f"blob {descriptor.digest} is missing from {self.root}")
        self._check(descriptor, path, *file_digest(path))
        return path

    def _check(self, descriptor: Descriptor, path: Path, actual: str, size: int) -> None:
        if (actual, size) != (descriptor.digest, descriptor.size):
            raise ArtifactError(
                f"blob {descriptor.digest} in {self.root} is corrupt",
                artifact=str(path),
                expected=f"{descriptor.digest} ({descriptor.size} bytes)",
                actual=f"{actual} ({size} bytes)",
            )

    # -- index and tags --------------------------------------------------------------------

    def index(self) -> dict[str, Any]:
        data = load_json((self.root / "index.json").read_bytes(), f"{self.root}/index.json")
        if not isinstance(data.get("manifests"), list):
            raise ImageError(
                f"{self.root}/index.json has no manifests list",
                problems=[Problem("index.json.manifests", "missing or not a list")],
            )
        return data

    def tags(self) -> list[str]:
        return [
            str(m["annotations"][REF_NAME])
            for m in self.index()["manifests"]
            if isinstance(m, dict) and REF_NAME in (m.get("annotations") or {})
        ]

    def tag(self, name: str, manifest: Descriptor) -> None:
        """Point ``name`` at ``manifest`` in index.json (replacing what it named before)."""
        if not name or any(c.isspace() for c in name):
            raise ImageError(f"invalid tag {name!r} for an OCI layout")
        annotations = dict(manifest.annotations or {})
        annotations[REF_NAME] = name
        entry = Descriptor(
            manifest.media_type,
            manifest.digest,
            manifest.size,
            annotations=annotations,
            platform=manifest.platform,
        )
        # Read, edit and replace under one lock, or a concurrent tagger's edit is lost.
        with _index_locked(self.root):
            index = self.index()
            kept = [m for m in index["manifests"] if not _names(m, name)]
            index["manifests"] = [*kept, entry.to_json()]
            index.setdefault("mediaType", OCI_INDEX)
            write_atomic(self.root / "index.json", canonical_json(index))

    def resolve(
        self, tag: str | None = None, *, platform: str = "linux/amd64"
    ) -> tuple[Descriptor, dict[str, Any]]:
        """The image manifest that ``tag`` names (or the only one), as descriptor and JSON.

        An image index (multi-platform image) is followed to the manifest for
        ``platform`` (``os/arch[/variant]``).
        """
        where = f"{self.root}/index.json"
        entries = self.index()["manifests"]
        if tag is not None:
            chosen = [m for m in entries if _names(m, tag)]
            if not chosen:
                raise ImageError(
                    f"no image tagged {tag!r} in {self.root}",
                    hint=f"tags there: {', '.join(self.tags()) or 'none'}",
                )
            raw = chosen[-1]
        elif len(entries) == 1:
            raw = entries[0]
        else:
            raise ImageError(
                f"{self.root} holds {len(entries)} images; say which one",
                hint=f"write oci:{self.root}:TAG; tags there: {', '.join(self.tags()) or 'none'}",
            )
        descriptor = Descriptor.from_json(raw, where=f"{where}.manifests")
        return self._follow(descriptor, platform, depth=0)

    def _follow(
        self, descriptor: Descriptor, platform: str, *, depth: int
    ) -> tuple[Descriptor, dict[str, Any]]:
        data = load_json(self.get_blob(descriptor), f"blob {descriptor.digest}")
        media_type = data.get("mediaType", descriptor.media_type)
        if media_type in INDEX_TYPES or ("manifests" in data and media_type not in MANIFEST_TYPES):
            if depth > 2:
                raise ImageError(f"image indexes nested too deep at {descriptor.digest}")
            for i, item in enumerate(data.get("manifests") or []):
                if isinstance(item, dict) and _matches(item.get("platform"), platform):
                    child = Descriptor.from_json(item, f"index {descriptor.digest}.manifests[{i}]")
                    return self._follow(child, platform, depth=depth + 1)
            found = [
                "/".join(str(p.get(k)) for k in ("os", "architecture") if p.get(k))
                for p in (m.get("platform") for m in data.get("manifests") or [])
                if isinstance(p, dict)
            ]
            raise ImageError(
                f"the image has no manifest for {platform}",
                hint=f"platforms it has: {', '.join(found) or 'none'}",
            )
        ImageManifest.from_json(data, where=f"manifest {descriptor.digest}")
        return descriptor, data

    def image(self, tag: str | None = None, *, platform: str = "linux/amd64") -> LayoutImage:
        """The manifest, config and layer files of an image in the layout, all checked
        (the layer files by size only; stream them through :meth:`verify_blob` to hash)."""
        descriptor, data = self.resolve(tag, platform=platform)
        manifest = ImageManifest.from_json(data, where=f"manifest {descriptor.digest}")
        config = ImageConfig.from_json(
            self.get_blob(manifest.config), f"config {descriptor.digest}"
        )
        if len(config.diff_ids) != len(manifest.layers):
            raise ImageError(
                f"image {descriptor.digest}: {len(manifest.layers)} layers but "
                f"{len(config.diff_ids)} diff_ids in its config"
            )
        paths = []
        for layer in manifest.layers:
            path = self.blob_path(layer.digest)
            if not path.is_file() or path.stat().st_size != layer.size:
                raise ImageError(
                    f"layer blob {layer.digest} is missing or truncated in {self.root}"
                )
            paths.append(path)
        return LayoutImage(descriptor, manifest, config, tuple(paths))


@dataclass(frozen=True, slots=True)
class LayoutImage:
    """One image read from a layout or imported from a docker-archive."""

    descriptor: Descriptor
    manifest: ImageManifest
    config: ImageConfig
    layer_paths: tuple[Path, ...]

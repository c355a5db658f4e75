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

Every blob taken from a layout is checked against its digest before it is used, linked
or copied (:func:`~envship._blobcheck.check_file`, which remembers the files that matched,
so an unchanged base layer is hashed once).

A blob copied or written in, and ``index.json`` when tagging, go through a partial file
``.<name>.held-<pid>-<random>.partial`` that its writer holds a flock on until it is
renamed into place (:mod:`envship._heldfile`), so a writer killed with SIGKILL leaves
one whose lock anyone can take: :meth:`OciLayout.sweep` removes those at once, and other
``.partial`` files (an older envship's, a new layout's first files from
:func:`write_atomic`) once untouched for :data:`envship._swap.STALE_AFTER`: the rule
:func:`envship._swap.sweep` applies to staging folders. A write that fails removes the
blobs it added that no manifest references (:meth:`OciLayout.remove_unreferenced`), and
:meth:`OciLayout.tag` makes sure, under the index lock, that the blobs it is told of are
there before the index names them.

Docker's ``docker save`` archive, itself a layout in a tar, is :mod:`envship.dockerarchive`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import write_atomic
from ._blobcheck import SETTLE_NS, check_file, file_digest, mismatch
from ._flock import locked
from ._heldfile import COPY_CHUNK, link_new, sweep_partials, write_held
from .errors import ArtifactError, ImageError, ImageInputError, Problem
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
    "SETTLE_NS",
    "LayoutImage",
    "OciLayout",
    "as_input_error",
    "check_file",
    "default_platform",
    "empty_index",
    "file_digest",
    "parse_layout_ref",
]

LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}  # the `oci-layout` file's content
INDEX_LOCK = ".envship-index.lock"  # flock serializing index.json edits (module docstring)
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def default_platform() -> str:
    """``linux/<arch>`` of this machine, as image indexes name platforms."""
    machine = platform.machine().lower()
    return f"linux/{_ARCH.get(machine, machine)}"


def parse_layout_ref(text: str) -> tuple[Path, str | None]:
    """``oci:DIR[:TAG]`` -> (DIR, TAG or None). As in containers/image, DIR ends at the
    first ``:`` after the prefix, so it cannot itself hold one."""
    if not text.startswith("oci:"):
        raise ImageInputError(
            f"not an OCI layout reference: {text!r}", hint="write it as oci:DIR or oci:DIR:TAG"
        )
    rest = text[len("oci:") :]
    directory, sep, tag = rest.partition(":")
    if not directory or (sep and not tag):
        raise ImageInputError(
            f"invalid OCI layout reference {text!r}", hint="write it as oci:DIR or oci:DIR:TAG"
        )
    return Path(directory).expanduser(), tag or None


def empty_index() -> dict[str, Any]:
    """An OCI image index listing no manifest (a new layout's ``index.json``)."""
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


@contextlib.contextmanager
def as_input_error() -> Iterator[None]:
    """Around reading an image source the user named: a plain :class:`ImageError` raised
    there (layerfs's refusal of a zstd layer, say) is bad input here (exit 2), not a
    failure of envship's work. :mod:`envship.oci`'s parsers need no wrapping: they raise
    :class:`ImageInputError` themselves."""
    try:
        yield
    except ImageError as exc:
        if type(exc) is not ImageError:
            raise
        raise ImageInputError(exc.message, problems=exc.problems, hint=exc.hint) from exc


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
                raise ImageInputError(f"{marker}: unsupported imageLayoutVersion {version!r}")
            return cls(root)
        if not create:
            raise ImageInputError(
                f"{root} is not an OCI image layout (no oci-layout file)",
                hint="pass an existing layout written by envship, skopeo or docker save",
            )
        if root.exists() and not root.is_dir():
            raise ImageInputError(f"{root} exists and is not a folder")
        try:
            # Checked and made under the index lock: two builds creating one new layout (a
            # fresh store's) would otherwise see each other's half-made folder as foreign.
            with _index_locked(root):
                if marker.is_file():
                    return cls.open(root)
                if any(p.name != INDEX_LOCK for p in root.iterdir()):
                    raise ImageInputError(
                        f"{root} exists and is not an empty folder or an OCI layout"
                    )
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
        """Store ``data``; a blob already present is kept if it holds these bytes, and
        replaced if it does not (a damaged copy must not outlive a good one)."""
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        try:
            if path.read_bytes() == data:
                return Descriptor(media_type, digest, len(data))
        except OSError:
            pass
        write_held(path, lambda out: out.write(data))
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
        cache: Path | None = None,
    ) -> Descriptor:
        """Bring a finished blob file in: moved (or hard-linked/copied with ``link``, e.g.
        from the layer cache), after its size and digest are checked (:func:`check_file`;
        ``verify=False`` only for a file its writer hashed as it wrote it). A blob already
        in the layout is kept if it checks out, and replaced if it does not."""
        check_digest(digest)
        if verify:
            try:
                check_file(path, digest, size, cache=cache)
            except FileNotFoundError as exc:
                raise ImageInputError(f"blob {digest} is missing: no file {path}") from exc
        dest = self.blob_path(digest)
        if self._intact(dest, digest, size, cache):
            if not link:
                path.unlink()
            return Descriptor(media_type, digest, size)
        try:
            if link:
                if link_new(path, dest):
                    return Descriptor(media_type, digest, size)
            else:
                try:
                    os.replace(path, dest)
                    return Descriptor(media_type, digest, size)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
            self._copy_in(path, dest)
            if not link:
                path.unlink()
        except OSError as exc:
            raise ImageError(f"cannot write blob {digest} into {self.root}: {exc}") from exc
        return Descriptor(media_type, digest, size)

    def _copy_in(self, path: Path, dest: Path) -> None:
        with open(path, "rb") as src:
            write_held(dest, lambda out: shutil.copyfileobj(src, out, COPY_CHUNK))

    @staticmethod
    def _intact(dest: Path, digest: str, size: int, cache: Path | None) -> bool:
        try:
            check_file(dest, digest, size, cache=cache)
        except (FileNotFoundError, ArtifactError):
            return False
        return True

    def get_blob(self, descriptor: Descriptor) -> bytes:
        """The bytes of a (small) blob, checked against the descriptor."""
        path = self.blob_path(descriptor.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise self._missing(descriptor, path) from exc
        actual, size = sha256_digest(data), len(data)
        if (actual, size) != (descriptor.digest, descriptor.size):
            raise mismatch(path, descriptor.digest, descriptor.size, actual, size)
        return data

    def verify_blob(self, descriptor: Descriptor, *, cache: Path | None = None) -> Path:
        """Check a (large) blob file by streaming it (or by what :func:`check_file`
        remembers of it); returns its path."""
        path = self.blob_path(descriptor.digest)
        try:
            check_file(path, descriptor.digest, descriptor.size, cache=cache)
        except FileNotFoundError as exc:
            raise self._missing(descriptor, path) from exc
        return path

    def _missing(self, descriptor: Descriptor, path: Path) -> ImageInputError:
        return ImageInputError(
            f"blob {descriptor.digest} is missing from {self.root}",
            problems=[Problem(str(path), "no such file")],
            hint="the layout is incomplete; copy or save the image again",
        )

    def sweep(self, *, now: float | None = None) -> list[str]:
        """Remove the partial blobs dead writers left (the module docstring); returns
        their names. A running writer's are never touched."""
        # index.json's partial files beside it, the blobs' in their folder
        return sweep_partials((self.root, self.root / "blobs" / "sha256"), now=now)

    def referenced(self) -> set[str] | None:
        """The digests of every blob the index reaches (manifests, nested indexes,
        configs, layers); None when one of them cannot be read, as then what it
        references is unknown."""
        seen: set[str] = set()
        todo = [(m, 0) for m in self.index()["manifests"]]
        while todo:
            raw, depth = todo.pop()
            digest = raw.get("digest") if isinstance(raw, dict) else None
            if not isinstance(digest, str) or digest in seen:
                continue
            seen.add(digest)
            if depth > 3:
                return None
            try:
                data = load_json(self.blob_path(digest).read_bytes(), digest)
            except (OSError, ImageError):
                return None
            children = [data.get("config"), *(data.get("layers") or [])]
            seen.update(c["digest"] for c in children if isinstance(c, dict) and "digest" in c)
            todo += [(m, depth + 1) for m in data.get("manifests") or []]
        return seen

    def remove_unreferenced(self, digests: Collection[str]) -> list[str]:
        """Remove those of ``digests`` (blobs a failed write added) that no manifest the
        index reaches references, under the index lock, so that a tag being written
        meanwhile (:meth:`tag` checks its blobs under it) is either seen or re-checks.
        Nothing is removed when a manifest cannot be read. Returns the digests removed."""
        if not digests:
            return []
        removed = []
        with _index_locked(self.root):
            referenced = self.referenced()
            if referenced is None:
                return []
            for digest in digests:
                if digest not in referenced:
                    with contextlib.suppress(OSError):
                        self.blob_path(digest).unlink()
                        removed.append(digest)
        return removed

    # -- index and tags --------------------------------------------------------------------

    def index(self) -> dict[str, Any]:
        where = f"{self.root}/index.json"
        try:
            raw = (self.root / "index.json").read_bytes()
        except OSError as exc:
            raise ImageInputError(f"cannot read {where}: {exc.strerror or exc}") from exc
        data = load_json(raw, where)
        if not isinstance(data.get("manifests"), list):
            raise ImageInputError(
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

    def tag(self, name: str, manifest: Descriptor, *, needs: Collection[str] = ()) -> None:
        """Point ``name`` at ``manifest`` in index.json (replacing what it named before).

        ``needs``: digests of blobs that must be in the layout, checked under the index
        lock: a failed write of another image that shared one removes what no manifest
        references under the same lock, so a blob seen here stays. A missing one is
        :class:`ImageError` naming it (the caller may add it again and retry)."""
        if not name or any(c.isspace() for c in name):
            raise ImageInputError(f"invalid tag {name!r} for an OCI layout")
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
            gone = [d for d in dict.fromkeys(needs) if not self.has_blob(d)]
            if gone:
                raise ImageError(
                    f"blobs of the image went missing from {self.root} before it was tagged",
                    problems=[Problem(str(self.blob_path(d)), "no such file") for d in gone],
                    hint="write the image again",
                )
            index = self.index()
            kept = [m for m in index["manifests"] if not _names(m, name)]
            index["manifests"] = [*kept, entry.to_json()]
            index.setdefault("mediaType", OCI_INDEX)
            data, path = canonical_json(index), self.root / "index.json"
            try:
                mode = path.stat().st_mode & 0o7777
            except FileNotFoundError:
                mode = 0o644
            write_held(path, lambda out: out.write(data), mode)

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
                raise ImageInputError(
                    f"no image tagged {tag!r} in {self.root}",
                    hint=f"tags there: {', '.join(self.tags()) or 'none'}",
                )
            raw = chosen[-1]
        elif len(entries) == 1:
            raw = entries[0]
        elif not entries:
            # A layout with no image at all: nothing to choose from.
            raise ImageInputError(
                f"{self.root} holds no image (its index.json lists none)",
                hint="write an image into it, or name a layout that holds one",
            )
        else:
            raise ImageInputError(
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
                raise ImageInputError(f"image indexes nested too deep at {descriptor.digest}")
            for i, item in enumerate(data.get("manifests") or []):
                if isinstance(item, dict) and _matches(item.get("platform"), platform):
                    child = Descriptor.from_json(item, f"index {descriptor.digest}.manifests[{i}]")
                    return self._follow(child, platform, depth=depth + 1)
            found = [
                "/".join(str(p.get(k)) for k in ("os", "architecture") if p.get(k))
                for p in (m.get("platform") for m in data.get("manifests") or [])
                if isinstance(p, dict)
            ]
            raise ImageInputError(
                f"the image has no manifest for {platform}",
                hint=f"platforms it has: {', '.join(found) or 'none'}",
            )
        ImageManifest.from_json(data, where=f"manifest {descriptor.digest}")
        return descriptor, data

    def image(
        self,
        tag: str | None = None,
        *,
        platform: str = "linux/amd64",
        verify: bool = True,
        cache: Path | None = None,
    ) -> LayoutImage:
        """The manifest, config and layer files of an image in the layout, all checked
        against their digests (the layers through :func:`check_file`, remembering
        matches in ``cache``; with ``verify=False``, the layers by size only)."""
        descriptor, data = self.resolve(tag, platform=platform)
        manifest = ImageManifest.from_json(data, where=f"manifest {descriptor.digest}")
        config = ImageConfig.from_json(
            self.get_blob(manifest.config), f"config {descriptor.digest}"
        )
        if len(config.diff_ids) != len(manifest.layers):
            raise ImageInputError(
                f"image {descriptor.digest}: {len(manifest.layers)} layers but "
                f"{len(config.diff_ids)} diff_ids in its config"
            )
        paths = []
        for layer in manifest.layers:
            if verify:
                paths.append(self.verify_blob(layer, cache=cache))
                continue
            path = self.blob_path(layer.digest)
            if not path.is_file():
                raise self._missing(layer, path)
            if path.stat().st_size != layer.size:
                raise ArtifactError(
                    f"blob {layer.digest} in {self.root} is truncated or too long: {path} "
                    f"holds {path.stat().st_size} bytes, not {layer.size}",
                    artifact=str(path),
                    expected=f"{layer.digest} ({layer.size} bytes)",
                    actual=f"{path.stat().st_size} bytes",
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

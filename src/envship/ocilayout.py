"""Images on disk: the OCI image layout (image-layout.md) and Docker's ``docker save`` archive.

An OCI layout is a folder with ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``.
Blobs are content-addressed and immutable, so they are written under a temporary name and
renamed into place; ``index.json`` is rewritten the same way, so a reader sees the old
index or the new one. Every read of a blob checks its size and digest.

A docker-archive is what ``docker load`` reads: a tar with ``manifest.json`` naming a
config file and layer tars. envship writes it as ``docker save`` of Docker 25+ does, with
the files under ``blobs/sha256/`` beside an OCI ``index.json``, and reads both that and
the older per-layer-folder form.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ImageError, Problem
from .layerfs import open_layer
from .oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
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
    "LayoutImage",
    "OciLayout",
    "default_platform",
    "parse_layout_ref",
    "read_docker_archive",
    "write_docker_archive",
]

_CHUNK = 1 << 20
_LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}
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


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        if root.exists() and any(root.iterdir()):
            raise ImageError(f"{root} exists and is not an empty folder or an OCI layout")
        try:
            (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            _atomic_write(root / "index.json", canonical_json(cls._empty_index()))
            _atomic_write(marker, canonical_json(_LAYOUT_FILE))
        except OSError as exc:
            raise ImageError(f"cannot create an OCI layout at {root}: {exc.strerror}") from exc
        return cls(root)

    @staticmethod
    def _empty_index() -> dict[str, Any]:
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}

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
            _atomic_write(path, data)
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
            actual, actual_size = _hash_file(path)
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
        actual = sha256_digest(data)
        if actual != descriptor.digest or len(data) != descriptor.size:
            raise ArtifactError(
                f"blob {descriptor.digest} in {self.root} is corrupt",
                artifact=str(path),
                expected=f"{descriptor.digest} ({descriptor.size} bytes)",
                actual=f"{actual} ({len(data)} bytes)",
            )
        return data

    def verify_blob(self, descriptor: Descriptor) -> Path:
        """Check a (large) blob file by streaming it; returns its path."""
        path = self.blob_path(descriptor.digest)
        if not path.is_file():
            raise ImageError(f"blob {descriptor.digest} is missing from {self.root}")
        actual, size = _hash_file(path)
        if (actual, size) != (descriptor.digest, descriptor.size):
            raise ArtifactError(
                f"blob {descriptor.digest} in {self.root} is corrupt",
                artifact=str(path),
                expected=f"{descriptor.digest} ({descriptor.size} bytes)",
                actual=f"{actual} ({size} bytes)",
            )
        return path

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
        index = self.index()
        kept = [
            m
            for m in index["manifests"]
            if not (isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == name)
        ]
        annotations = dict(manifest.annotations or {})
        annotations[REF_NAME] = name
        entry = Descriptor(
            manifest.media_type,
            manifest.digest,
            manifest.size,
            annotations=annotations,
            platform=manifest.platform,
        )
        index["manifests"] = [*kept, entry.to_json()]
        index.setdefault("mediaType", OCI_INDEX)
        _atomic_write(self.root / "index.json", canonical_json(index))

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
            chosen = [
                m
                for m in entries
                if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == tag
            ]
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


# -- docker-archive ------------------------------------------------------------------------------


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info


def write_docker_archive(
    path: Path,
    *,
    config: bytes,
    layers: Sequence[Path],
    repo_tags: Sequence[str],
    layer_types: Sequence[str] | None = None,
) -> None:
    """Write an archive that ``docker load`` accepts: ``manifest.json`` (Docker's format)
    plus an OCI ``index.json``, with config and layer blobs (gzip or plain, as given)
    under ``blobs/sha256/``. Written to a temporary file and renamed."""
    image_config = ImageConfig.from_json(config)
    if len(image_config.diff_ids) != len(layers):
        raise ImageError(
            f"docker-archive: {len(layers)} layers but {len(image_config.diff_ids)} diff_ids"
        )
    config_digest = sha256_digest(config)
    blobs: list[tuple[str, int, str]] = []
    for i, layer in enumerate(layers):
        digest, size = _hash_file(layer)
        with layer.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        media = layer_types[i] if layer_types else (OCI_LAYER_GZIP if gz else OCI_LAYER)
        blobs.append((digest, size, media))
    manifest = ImageManifest(
        Descriptor(OCI_CONFIG, config_digest, len(config)),
        tuple(Descriptor(m, d, s) for d, s, m in blobs),
    )
    manifest_bytes = manifest.to_bytes()
    manifest_digest = sha256_digest(manifest_bytes)
    names = [f"blobs/sha256/{d.removeprefix('sha256:')}" for d, _, _ in blobs]
    docker_manifest = [
        {
            "Config": f"blobs/sha256/{config_digest.removeprefix('sha256:')}",
            "RepoTags": list(repo_tags),
            "Layers": names,
        }
    ]
    index: dict[str, Any] = OciLayout._empty_index()
    index["manifests"] = [
        Descriptor(
            OCI_MANIFEST,
            manifest_digest,
            len(manifest_bytes),
            annotations={REF_NAME: repo_tags[0]} if repo_tags else None,
        ).to_json()
    ]
    small = [
        ("oci-layout", canonical_json(_LAYOUT_FILE)),
        ("index.json", canonical_json(index)),
        ("manifest.json", canonical_json(docker_manifest)),
        (f"blobs/sha256/{config_digest.removeprefix('sha256:')}", config),
        (f"blobs/sha256/{manifest_digest.removeprefix('sha256:')}", manifest_bytes),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            done: set[str] = set()
            for name, data in small:
                if name not in done:
                    tar.addfile(_tar_member(name, len(data)), _BytesReader(data))
                    done.add(name)
            for name, layer, (_, size, _) in zip(names, layers, blobs, strict=True):
                if name in done:
                    continue  # the same layer twice in one image: one copy is enough
                with layer.open("rb") as f:
                    tar.addfile(_tar_member(name, size), f)
                done.add(name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _BytesReader:
    """The minimal file object tarfile.addfile reads from."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk


def read_docker_archive(path: Path, into: OciLayout, *, tag: str | None = None) -> LayoutImage:
    """Import the (first) image of a docker-archive into the layout ``into``.

    The config and every layer are copied in as blobs (layers keep their compression);
    each layer's uncompressed digest is checked against the config's ``diff_ids`` as
    ``docker load`` does. The result is tagged ``tag`` if given.
    """
    where = str(path)
    try:
        # Opened apart from the `with` so only opening errors become "not an archive".
        tar = tarfile.open(path, "r:*")  # noqa: SIM115
    except (OSError, tarfile.TarError) as exc:
        raise ImageError(f"{where} is not a docker-archive (tar): {exc}") from exc
    with tar:
        data = _read_member(tar, "manifest.json", where)
        entries = _json_list(data, f"{where}:manifest.json")
        if not entries or not isinstance(entries[0], dict):
            raise ImageError(f"{where}:manifest.json lists no image")
        first = entries[0]
        config_name, layer_names = first.get("Config"), first.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise ImageError(
                f"{where}:manifest.json[0] needs Config and Layers",
                problems=[Problem(f"{where}:manifest.json[0]", "missing Config or Layers")],
            )
        config_bytes = _read_member(tar, config_name, where)
        config = ImageConfig.from_json(config_bytes, f"{where}:{config_name}")
        if len(config.diff_ids) != len(layer_names):
            raise ImageError(
                f"{where}: {len(layer_names)} layers but {len(config.diff_ids)} diff_ids"
            )
        config_desc = into.add_blob(config_bytes, OCI_CONFIG)
        layers: list[Descriptor] = []
        for i, (name, diff_id) in enumerate(zip(layer_names, config.diff_ids, strict=True)):
            member = _member(tar, str(name), where)
            layers.append(_import_layer(tar, member, diff_id, into, f"{where}:{name}", i))
    manifest = ImageManifest(config_desc, tuple(layers))
    descriptor = into.add_blob(manifest.to_bytes(), OCI_MANIFEST)
    if tag:
        into.tag(tag, descriptor)
    return LayoutImage(
        descriptor, manifest, config, tuple(into.blob_path(d.digest) for d in layers)
    )


def _member(tar: tarfile.TarFile, name: str, where: str) -> tarfile.TarInfo:
    try:
        member = tar.getmember(name)
    except KeyError as exc:
        raise ImageError(f"{where} has no {name!r} although manifest.json names it") from exc
    if not member.isreg():
        raise ImageError(f"{where}: {name!r} is not a regular file")
    return member


def _read_member(tar: tarfile.TarFile, name: str, where: str) -> bytes:
    reader = tar.extractfile(_member(tar, name, where))
    assert reader is not None
    return reader.read()


def _json_list(data: bytes, where: str) -> list[Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(value, list):
        raise ImageError(f"{where}: not a JSON list")
    return value


def _import_layer(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    diff_id: str,
    into: OciLayout,
    where: str,
    index: int,
) -> Descriptor:
    reader = tar.extractfile(member)
    assert reader is not None
    blob_dir = into.blob_path(diff_id).parent
    fd, tmp = tempfile.mkstemp(dir=blob_dir, prefix=".import-", suffix=".partial")
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        blob = Path(tmp)
        uncompressed = _uncompressed_digest(blob, where)
        if uncompressed != diff_id:
            raise ArtifactError(
                f"layer {index} of {where} does not match the config's diff_ids[{index}]",
                artifact=where,
                expected=diff_id,
                actual=uncompressed,
            )
        with blob.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        return into.add_blob_file(
            blob,
            "sha256:" + digest.hexdigest(),
            size,
            OCI_LAYER_GZIP if gz else OCI_LAYER,
            verify=False,
        )
    finally:
        Path(tmp).unlink(missing_ok=True)


def _uncompressed_digest(blob: Path, where: str) -> str:
    h = hashlib.sha256()
    with open_layer(blob, layer=where) as stream:
        while chunk := stream.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()

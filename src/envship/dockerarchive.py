"""Docker's image archive: what ``docker save`` writes and ``docker load`` reads.

A docker-archive is a tar with ``manifest.json`` naming a config file and layer tars.
envship writes it as ``docker save`` of Docker 25+ does, with the files under
``blobs/sha256/`` beside an OCI ``index.json`` (so the archive is an OCI layout too), and
reads both that and the older per-layer-folder form into an OCI layout
(:class:`~envship.ocilayout.OciLayout`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ImageError, Problem
from .layerfs import open_layer
from .oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    ImageConfig,
    ImageManifest,
    canonical_json,
    sha256_digest,
)
from .ocilayout import LAYOUT_FILE, LayoutImage, OciLayout, empty_index, file_digest

__all__ = ["read_docker_archive", "write_docker_archive"]

_CHUNK = 1 << 20


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
        digest, size = file_digest(layer)
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
    index = empty_index()
    index["manifests"] = [
        Descriptor(
            OCI_MANIFEST,
            manifest_digest,
            len(manifest_bytes),
            annotations={REF_NAME: repo_tags[0]} if repo_tags else None,
        ).to_json()
    ]
    small = [
        ("oci-layout", canonical_json(LAYOUT_FILE)),
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

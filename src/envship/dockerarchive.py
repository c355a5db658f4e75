"""Docker's image archive: what ``docker save`` writes and ``docker load`` reads.

A docker-archive is a tar with ``manifest.json`` naming a config file and layer tars.
envship writes it as ``docker save`` of Docker 25+ does, with the files under
``blobs/sha256/`` beside an OCI ``index.json`` whose manifest is the built one, byte for
byte (so the archive is an OCI layout too, and the image keeps its digest), and reads both
that and the older per-layer-folder form into an OCI layout
(:class:`~envship.ocilayout.OciLayout`).

Everything read is checked: a blob named by its digest (``blobs/sha256/<hex>``,
``<hex>.json``) against that digest, every layer's uncompressed content against the
config's ``diff_ids`` as ``docker load`` does. A truncated or unreadable archive is bad
input (:class:`ImageInputError`, exit 2); bytes that do not match a digest or a gzip CRC
are an :class:`ArtifactError` (exit 4). Writing checks every layer against its descriptor
while it is copied, so a blob changed on disk never reaches an archive. Writing is here;
reading, the side that distrusts every byte, is :mod:`envship._archiveread`.

Names follow the distribution spec's reference grammar (distribution/reference's
``reference.go``): ``[host[:port]/]path[:tag]`` with lowercase path components; a name
without a tag gets ``latest``, as ``docker tag`` gives it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ._archiveread import read_docker_archive
from ._blobcheck import file_digest
from .errors import ArtifactError, ImageError, ImageInputError
from .oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    REF_NAME,
    Descriptor,
    ImageConfig,
    ImageManifest,
    canonical_json,
    check_repository,
    check_tag,
    sha256_digest,
)
from .ocilayout import LAYOUT_FILE, empty_index

__all__ = [
    "parse_archive_name",
    "parse_archive_ref",
    "read_docker_archive",
    "write_docker_archive",
]

_GZIP = b"\x1f\x8b"
# reference.go: domain-component ("." domain-component)* [":" port]
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?$"
)
_NAME_MAX = 255  # reference.go: NameTotalLengthMax
_CONTAINERD_NAME = "io.containerd.image.name"
_NAME_HINT = (
    "write docker-archive:FILE:NAME:TAG with a lowercase name, e.g. "
    "docker-archive:ds.tar:team/ds:1 (a name without a tag gets 'latest')"
)


def parse_archive_name(name: str) -> str:
    """``NAME[:TAG]`` as a docker-archive's ``RepoTags`` entry, ``NAME:TAG`` (``latest``
    when no tag is given); :class:`ImageInputError` for anything ``docker load`` would
    refuse: an uppercase or malformed path, a bad host or tag, a digest."""
    if "@" in name:
        raise ImageInputError(
            f"invalid docker-archive name {name!r}: an archive names images by tag, not by digest",
            hint=_NAME_HINT,
        )
    rest, tag = name, "latest"
    colon, slash = name.rfind(":"), name.rfind("/")
    if colon > slash:
        rest, tag = name[:colon], name[colon + 1 :]
    first, sep, path = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.match(first):
            raise ImageInputError(
                f"invalid docker-archive name {name!r}: bad registry host {first!r}",
                hint=_NAME_HINT,
            )
    else:
        path = rest
    try:
        check_repository(path)
        check_tag(tag)
    except ImageError as exc:
        raise ImageInputError(
            f"invalid docker-archive name {name!r}: {exc.message}", hint=_NAME_HINT
        ) from None
    if len(rest) > _NAME_MAX:
        raise ImageInputError(
            f"invalid docker-archive name {name!r}: longer than {_NAME_MAX} characters",
            hint=_NAME_HINT,
        )
    return f"{rest}:{tag}"


def parse_archive_ref(text: str) -> tuple[Path, str | None]:
    """``docker-archive:FILE[:NAME[:TAG]]`` -> (FILE, ``NAME:TAG`` or None). As in
    containers/image, FILE ends at the first ``:``; the name is checked by
    :func:`parse_archive_name`."""
    rest = text.removeprefix("docker-archive:")
    path, sep, name = rest.partition(":")
    if not path or (sep and not name):
        raise ImageInputError(
            f"invalid docker-archive reference {text!r}",
            hint="write it as docker-archive:FILE or docker-archive:FILE:NAME:TAG",
        )
    return Path(path).expanduser(), parse_archive_name(name) if name else None


def _normalized(name: str) -> str:
    """``x:1`` in full, as distribution/reference's ParseNormalizedNamed gives it:
    ``docker.io/library/x:1``."""
    first, sep, _ = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if sep else f"docker.io/library/{name}"


# -- writing -------------------------------------------------------------------------------------


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info


class _HashingReader:
    """A file read by tarfile.addfile, hashed on the way."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self.sha256.update(chunk)
        return chunk


def _descriptors(
    config: bytes,
    layers: Sequence[Path],
    layer_types: Sequence[str] | None,
    manifest: bytes | None,
) -> tuple[bytes, ImageManifest]:
    """The manifest bytes to write and their parsed form: ``manifest`` unchanged, checked
    against ``config`` and ``layers``; else one made from the files."""
    image_config = ImageConfig.from_json(config)
    if len(image_config.diff_ids) != len(layers):
        raise ImageInputError(
            f"docker-archive: {len(layers)} layers but {len(image_config.diff_ids)} diff_ids"
        )
    if manifest is not None:
        parsed = ImageManifest.from_json(manifest)
        if parsed.config.digest != sha256_digest(config) or len(parsed.layers) != len(layers):
            raise ImageInputError(
                "docker-archive: the manifest names another config or another number of layers"
            )
        return manifest, parsed
    made = []
    for i, layer in enumerate(layers):
        digest, size = file_digest(layer)
        with layer.open("rb") as f:
            gz = f.read(2) == _GZIP
        media = layer_types[i] if layer_types else (OCI_LAYER_GZIP if gz else OCI_LAYER)
        made.append(Descriptor(media, digest, size))
    parsed = ImageManifest(Descriptor(OCI_CONFIG, sha256_digest(config), len(config)), tuple(made))
    return parsed.to_bytes(), parsed


def _add_layer(tar: tarfile.TarFile, name: str, layer: Path, descriptor: Descriptor) -> None:
    """Copy ``layer`` into the archive, checking it against ``descriptor`` on the way."""
    with layer.open("rb") as f:
        reader = _HashingReader(f)
        try:
            tar.addfile(_tar_member(name, descriptor.size), reader)
        except OSError as exc:
            if "unexpected end of data" not in str(exc):
                raise
            actual = f"fewer than {descriptor.size} bytes"  # tarfile.copyfileobj ran short
        else:
            extra = f.read(1)
            actual = "sha256:" + reader.sha256.hexdigest()
            if extra:
                actual = f"more than {descriptor.size} bytes"
    if actual != descriptor.digest:
        raise ArtifactError(
            f"{layer} does not match blob {descriptor.digest}: it holds {actual}",
            artifact=str(layer),
            expected=f"{descriptor.digest} ({descriptor.size} bytes)",
            actual=actual,
            hint="the file was changed or damaged after it was written; build the image again",
        )


def write_docker_archive(
    path: Path,
    *,
    config: bytes,
    layers: Sequence[Path],
    repo_tags: Sequence[str],
    layer_types: Sequence[str] | None = None,
    manifest: bytes | None = None,
) -> None:
    """Write an archive that ``docker load`` accepts: ``manifest.json`` (Docker's format)
    plus an OCI ``index.json`` naming ``manifest`` (written unchanged, so the archive
    holds the image of that digest; without it, a manifest of the files, gzip or plain
    as sniffed or as ``layer_types`` say), with the blobs under ``blobs/sha256/``.

    ``repo_tags`` are checked by :func:`parse_archive_name`. Each layer is checked
    against its descriptor while copied (:class:`ArtifactError`). Written to a temporary
    file and renamed, so a failure leaves nothing behind."""
    tags = [parse_archive_name(t) for t in repo_tags]
    manifest_bytes, parsed = _descriptors(config, layers, layer_types, manifest)
    manifest_digest = sha256_digest(manifest_bytes)
    names = [f"blobs/sha256/{d.digest.removeprefix('sha256:')}" for d in parsed.layers]
    config_name = f"blobs/sha256/{parsed.config.digest.removeprefix('sha256:')}"
    docker_manifest = [{"Config": config_name, "RepoTags": tags, "Layers": names}]
    index = empty_index()
    index["manifests"] = [
        Descriptor(
            parsed.media_type,
            manifest_digest,
            len(manifest_bytes),
            # As Docker 25's `docker save` (moby image/tarexport): the full name is what
            # an engine with the containerd image store loads the image under.
            annotations={REF_NAME: t, _CONTAINERD_NAME: _normalized(t)} if t else None,
        ).to_json()
        for t in tags or [""]
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            done: set[str] = set()
            small = [
                ("oci-layout", canonical_json(LAYOUT_FILE)),
                ("index.json", canonical_json(index)),
                ("manifest.json", canonical_json(docker_manifest)),
                (config_name, config),
                (f"blobs/sha256/{manifest_digest.removeprefix('sha256:')}", manifest_bytes),
            ]
            for name, data in small:
                if name not in done:
                    tar.addfile(_tar_member(name, len(data)), io.BytesIO(data))
                    done.add(name)
            for name, layer, descriptor in zip(names, layers, parsed.layers, strict=True):
                if name not in done:  # the same layer twice in one image: one copy is enough
                    _add_layer(tar, name, layer, descriptor)
                    done.add(name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

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
while it is copied, so a blob changed on disk never reaches an archive.

Names follow the distribution spec's reference grammar (distribution/reference's
``reference.go``): ``[host[:port]/]path[:tag]`` with lowercase path components; a name
without a tag gets ``latest``, as ``docker tag`` gives it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import ArtifactError, ImageError, ImageInputError, Problem
from .layerfs import open_layer
from .oci import (
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    ImageConfig,
    ImageManifest,
    canonical_json,
    check_repository,
    check_tag,
    load_json,
    sha256_digest,
)
from .ocilayout import LAYOUT_FILE, LayoutImage, OciLayout, as_input_error, empty_index, file_digest

__all__ = [
    "parse_archive_name",
    "parse_archive_ref",
    "read_docker_archive",
    "write_docker_archive",
]

_CHUNK = 1 << 20
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
# reference.go: domain-component ("." domain-component)* [":" port]
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?$"
)
_NAME_MAX = 255  # reference.go: NameTotalLengthMax
_CONTAINERD_NAME = "io.containerd.image.name"
# Members named by their digest: Docker 25+ and OCI (blobs/sha256/<hex>), and the older
# form's config (<hex>.json).
_DIGEST_NAME = re.compile(r"(?:^|/)blobs/sha256/([0-9a-f]{64})$|^([0-9a-f]{64})\.json$")
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


def _familiar(name: str) -> str:
    """``docker.io/library/x:1`` as Docker shows it: ``x:1``."""
    for prefix in ("docker.io/", "index.docker.io/"):
        name = name.removeprefix(prefix)
    return name.removeprefix("library/") if name.count("/") == 1 else name


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


# -- reading -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reading(where: str) -> Iterator[None]:
    """What reading the archive's own bytes can raise, as errors: an early end is bad
    input (exit 2); a compressed archive whose CRC or deflate data is wrong is corrupt
    (exit 4)."""
    try:
        yield
    except (tarfile.TarError, EOFError) as exc:
        raise ImageInputError(
            f"{where} is not a readable docker-archive: {exc or type(exc).__name__}",
            problems=[Problem(where, str(exc) or type(exc).__name__)],
            hint="the file is truncated or is no `docker save` archive; save the image again",
        ) from None
    except (zlib.error, OSError) as exc:
        if not isinstance(exc, zlib.error) and "CRC" not in str(exc):
            raise
        raise ArtifactError(
            f"{where} is corrupt: {exc}",
            artifact=where,
            expected="a gzip stream with matching CRCs",
            actual=str(exc),
            hint="the file was damaged; save the image again",
        ) from None


def read_docker_archive(
    path: Path, into: OciLayout, *, tag: str | None = None, name: str | None = None
) -> LayoutImage:
    """Import an image of a docker-archive into the layout ``into``: the one it holds, or
    the one whose ``RepoTags`` has ``name`` (``NAME:TAG``).

    The config and every layer are copied in as blobs (layers keep their compression),
    each checked (module docstring). The archive's own OCI manifest of that image is kept
    unchanged when it has one (Docker 25+, envship), so the image keeps its digest and
    its annotations; otherwise a manifest is made. The result is tagged ``tag`` if given.
    """
    where = str(path)
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == _GZIP
    except FileNotFoundError as exc:
        raise ImageInputError(f"no docker-archive at {path}") from exc
    if compressed:
        # `docker save | gzip`: tarfile stops at the end-of-archive blocks and never
        # reaches the CRC, and damaged deflate data can inflate to garbage that reads as
        # the end of the archive. One pass to the gzip trailer tells damage from absence.
        with _reading(where), gzip.open(path, "rb") as stream:
            while stream.read(_CHUNK):
                pass
    try:
        # Opened apart from the `with` so only opening errors become "not an archive".
        tar = tarfile.open(path, "r:*")  # noqa: SIM115
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise ImageInputError(f"{where} is not a docker-archive (tar): {exc}") from exc
    with tar, _reading(where):
        members = {m.name: m for m in tar.getmembers()}
        entries = _json_list(_read_member(tar, members, "manifest.json", where), where)
        chosen = _choose(entries, name, where)
        config_name, layer_names = chosen.get("Config"), chosen.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise ImageInputError(
                f"{where}:manifest.json needs Config and Layers",
                problems=[Problem(f"{where}:manifest.json", "missing Config or Layers")],
            )
        config_bytes = _read_member(tar, members, config_name, where)
        with as_input_error():
            config = ImageConfig.from_json(config_bytes, f"{where}:{config_name}")
        if len(config.diff_ids) != len(layer_names):
            raise ImageInputError(
                f"{where}: {len(layer_names)} layers but {len(config.diff_ids)} diff_ids"
            )
        config_desc = into.add_blob(config_bytes, OCI_CONFIG)
        layers: list[Descriptor] = []
        for i, (layer_name, diff_id) in enumerate(zip(layer_names, config.diff_ids, strict=True)):
            member = _member(members, str(layer_name), where)
            at = f"{where}:{layer_name}"
            layers.append(_import_layer(tar, member, diff_id, into, at, i))
        own = _own_manifest(tar, members, where, config_desc, layers)
    made = (ImageManifest(config_desc, tuple(layers)).to_bytes(), OCI_MANIFEST)
    manifest_bytes, media_type = own if own is not None else made
    descriptor = into.add_blob(manifest_bytes, media_type)
    if tag:
        into.tag(tag, descriptor)
    manifest = ImageManifest.from_json(manifest_bytes)
    paths = tuple(into.blob_path(d.digest) for d in layers)
    return LayoutImage(descriptor, manifest, config, paths)


def _choose(entries: list[Any], name: str | None, where: str) -> dict[str, Any]:
    images = [e for e in entries if isinstance(e, dict)]
    if not images:
        raise ImageInputError(f"{where}:manifest.json lists no image")
    tags = [str(t) for e in images for t in e.get("RepoTags") or ()]
    shown = ", ".join(tags) or "none"
    if name is None:
        if len(images) > 1:
            raise ImageInputError(
                f"{where} holds {len(images)} images; say which one",
                hint=f"write docker-archive:{where}:NAME:TAG; names there: {shown}",
            )
        return images[0]
    for image in images:
        if _familiar(name) in {_familiar(str(t)) for t in image.get("RepoTags") or ()}:
            return image
    raise ImageInputError(f"no image named {name!r} in {where}", hint=f"names there: {shown}")


def _own_manifest(
    tar: tarfile.TarFile,
    members: dict[str, tarfile.TarInfo],
    where: str,
    config: Descriptor,
    layers: Sequence[Descriptor],
) -> tuple[bytes, str] | None:
    """The archive's OCI manifest for this config and these layers, if ``index.json``
    names one, as (bytes, media type)."""
    if "index.json" not in members:
        return None
    with as_input_error():
        index = load_json(_read_member(tar, members, "index.json", where), f"{where}:index.json")
    wanted = [d.digest for d in layers]
    for i, item in enumerate(index.get("manifests") or []):
        try:
            entry = Descriptor.from_json(item, f"{where}:index.json.manifests[{i}]")
        except ImageError:
            continue
        member = f"blobs/sha256/{entry.digest.removeprefix('sha256:')}"
        if entry.media_type not in MANIFEST_TYPES or member not in members:
            continue
        data = _read_member(tar, members, member, where)
        try:
            manifest = ImageManifest.from_json(data, f"{where}:{member}")
        except ImageError:
            continue
        if manifest.config.digest == config.digest and [d.digest for d in manifest.layers] == (
            wanted
        ):
            return data, entry.media_type
    return None


def _member(members: dict[str, tarfile.TarInfo], name: str, where: str) -> tarfile.TarInfo:
    member = members.get(name)
    if member is None:
        raise ImageInputError(f"{where} has no {name!r} although manifest.json names it")
    if not member.isreg():
        raise ImageInputError(f"{where}: {name!r} is not a regular file")
    return member


def _named_digest(name: str) -> str | None:
    found = _DIGEST_NAME.search(name)
    return f"sha256:{found.group(1) or found.group(2)}" if found else None


def _read_member(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, where: str
) -> bytes:
    reader = tar.extractfile(_member(members, name, where))
    assert reader is not None
    data = reader.read()
    named = _named_digest(name)
    if named is not None and sha256_digest(data) != named:
        raise ArtifactError(
            f"{where}: {name} does not match the digest it is named by: it has "
            f"{sha256_digest(data)}",
            artifact=f"{where}:{name}",
            expected=named,
            actual=sha256_digest(data),
        )
    return data


def _json_list(data: bytes, where: str) -> list[Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ImageInputError(f"{where}:manifest.json: not valid JSON ({exc})") from exc
    if not isinstance(value, list):
        raise ImageInputError(f"{where}:manifest.json: not a JSON list")
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
    try:
        blobs = into.root / "blobs" / "sha256"
        fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".import-", suffix=".partial")
    except OSError as exc:
        raise _cannot_write(into, exc) from None
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _cannot_write(into, exc) from None
                size += len(chunk)
        actual = "sha256:" + digest.hexdigest()
        named = _named_digest(member.name)
        if named is not None and actual != named:
            raise ArtifactError(
                f"layer {index} of {where} does not match the digest it is named by: it "
                f"has {actual}",
                artifact=where,
                expected=named,
                actual=actual,
                hint="the archive was damaged; save the image again",
            )
        blob = Path(tmp)
        with blob.open("rb") as f:
            magic = f.read(4)
        compressed = magic.startswith(_GZIP) or magic == _ZSTD
        # A plain tar is its own uncompressed content: no second pass over it.
        uncompressed = _uncompressed_digest(blob, where, diff_id) if compressed else actual
        if uncompressed != diff_id:
            raise ArtifactError(
                f"layer {index} of {where} does not match the config's diff_ids[{index}]",
                artifact=where,
                expected=diff_id,
                actual=uncompressed,
            )
        return into.add_blob_file(
            blob,
            actual,
            size,
            OCI_LAYER_GZIP if magic.startswith(_GZIP) else OCI_LAYER,
            verify=False,
        )
    finally:
        Path(tmp).unlink(missing_ok=True)


def _cannot_write(into: OciLayout, exc: OSError) -> ImageError:
    return ImageError(
        f"cannot write into {into.root}: {exc.strerror or exc}",
        hint="free disk space and try again",
    )


def _uncompressed_digest(blob: Path, where: str, diff_id: str) -> str:
    h = hashlib.sha256()
    try:
        with as_input_error(), open_layer(blob, layer=where) as stream:
            while chunk := stream.read(_CHUNK):
                h.update(chunk)
    except (EOFError, zlib.error, OSError) as exc:  # gzip.BadGzipFile is an OSError
        raise ArtifactError(
            f"layer {where} is corrupt: {exc or type(exc).__name__}",
            artifact=where,
            expected=diff_id,
            actual=f"an unreadable gzip stream ({exc or type(exc).__name__})",
            hint="the archive was damaged; save the image again",
        ) from None
    return "sha256:" + h.hexdigest()

"""Reading a docker-archive into an OCI layout: :func:`read_docker_archive`, re-exported
by :mod:`envship.dockerarchive`, whose docstring describes the format.

Apart from the writer because this side trusts nothing it reads: both forms of the
archive (Docker 25+'s ``blobs/sha256/`` with an OCI ``index.json``, and the older
per-layer folders) are read, every member named by its digest is checked against it,
every layer's uncompressed content against the config's ``diff_ids`` as ``docker load``
does, and a gzip-compressed archive is read to its trailer once, so damage is told from
a short file. A truncated or unreadable archive is bad input (:class:`ImageInputError`,
exit 2); bytes that do not match a digest or a gzip CRC are an :class:`ArtifactError`
(exit 4).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._blobcheck import open_to_all
from ._denied import is_denied
from ._diskfull import is_disk_full
from ._flock import denied, whom
from .errors import (
    ArtifactError,
    EnvshipError,
    ImageError,
    ImageInputError,
    PermissionDeniedError,
    Problem,
)
from .layerfs import open_layer
from .oci import (
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    ImageManifest,
    load_json,
    sha256_digest,
)
from .ocilayout import LayoutImage, OciLayout, as_input_error

__all__ = ["read_docker_archive"]

_CHUNK = 1 << 20
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
# Members named by their digest: Docker 25+ and OCI (blobs/sha256/<hex>), and the older
# form's config (<hex>.json).
_DIGEST_NAME = re.compile(r"(?:^|/)blobs/sha256/([0-9a-f]{64})$|^([0-9a-f]{64})\.json$")


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
        config = ImageConfig.from_json(config_bytes, f"{where}:{config_name}")
        if len(config.diff_ids) != len(layer_names):
            raise ImageInputError(
                f"{where}: {len(layer_names)} layers but {len(config.diff_ids)} diff_ids"
            )
        try:
            config_desc = into.add_blob(config_bytes, OCI_CONFIG)
        except OSError as exc:
            raise _cannot_write(into, exc) from None
        layers: list[Descriptor] = []
        for i, (layer_name, diff_id) in enumerate(zip(layer_names, config.diff_ids, strict=True)):
            member = _member(members, str(layer_name), where)
            at = f"{where}:{layer_name}"
            layers.append(_import_layer(tar, member, diff_id, into, at, i))
        own = _own_manifest(tar, members, where, config_desc, layers)
    made = (ImageManifest(config_desc, tuple(layers)).to_bytes(), OCI_MANIFEST)
    manifest_bytes, media_type = own if own is not None else made
    try:
        descriptor = into.add_blob(manifest_bytes, media_type)
        if tag:
            into.tag(tag, descriptor)
    except OSError as exc:
        raise _cannot_write(into, exc) from None
    manifest = ImageManifest.from_json(manifest_bytes)
    paths = tuple(into.blob_path(d.digest) for d in layers)
    return LayoutImage(descriptor, manifest, config, paths)


def _familiar(name: str) -> str:
    """``docker.io/library/x:1`` as Docker shows it: ``x:1``."""
    for prefix in ("docker.io/", "index.docker.io/"):
        name = name.removeprefix(prefix)
    return name.removeprefix("library/") if name.count("/") == 1 else name


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
            open_to_all(fd, Path(tmp))  # not mkstemp's 0600: a shared store's blob
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


def _cannot_write(into: OciLayout, exc: OSError) -> EnvshipError:
    """Why the archive's layers cannot go into the store: a store this user may not
    write is said as other commands say it (whose the folder is, its mode, who may
    change that), a full disk as a full disk; neither is the other's remedy."""
    # The folder the file was to be made in (mkstemp names the file it tried).
    folder = Path(exc.filename).parent if exc.filename else into.root / "blobs" / "sha256"
    if is_denied(exc):
        user = whom()
        return PermissionDeniedError(
            f"permission denied: {user} may not write the base image into the store's "
            f"layout {into.root}",
            problems=[Problem(str(folder), denied(folder, "create files in"))],
            hint=f"ask the store's owner to let {user} write there (a group-shared store: "
            "chmod 2775 and the same group), or pass --store DIR or set ENVSHIP_STORE to a "
            f"folder {user} can write",
        )
    return ImageError(
        f"cannot write into {into.root}: {exc.strerror or exc}",
        problems=[Problem(str(folder), exc.strerror or str(exc))],
        hint="free disk space and try again" if is_disk_full(exc) else None,
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

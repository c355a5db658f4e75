"""Where images come from and go to: OCI layouts, docker-archives and registries.

Image names on the command line follow containers/image's transports: ``oci:DIR[:TAG]``,
``docker-archive:FILE[:NAME[:TAG]]``, and anything else is a registry reference
(``[host[:port]/]repo[:tag][@digest]``). Every blob read in is verified against its digest
(pulled and archived blobs as they are copied in, the blobs of a layout in place) and
every blob written out or pushed is verified before it leaves, so a blob changed on disk
fails with exit 4 naming it instead of reaching an output or a registry. Registry and
archive images are kept in the store's OCI layout (``<store>/oci``), which doubles as the
cache of base images and built layers; which files were verified is remembered under
``<store>/images/verified`` (:func:`envship.ocilayout.check_file`).

A name that does not parse, an image that is not there (no layout, tag, archive or
registry manifest) is bad input: :class:`ImageInputError`, exit 2.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from ._diskfull import is_disk_full
from .dockerarchive import parse_archive_ref, read_docker_archive, write_docker_archive
from .errors import ArtifactError, ImageError, ImageInputError, Problem, RegistryError
from .image import BuiltImage
from .oci import (
    DOCKER_HUB,
    INDEX_TYPES,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    ImageManifest,
    Reference,
    load_json,
)
from .ocilayout import (
    LayoutImage,
    OciLayout,
    as_input_error,
    check_file,
    default_platform,
    parse_layout_ref,
)
from .registry import BlobProgress, RegistryClient, TransferStats
from .store import Store

__all__ = [
    "ImageSource",
    "PushResult",
    "check_output",
    "open_image",
    "parse_push_ref",
    "push_image",
    "store_layout",
    "verified_cache",
    "write_image",
]

ClientFactory = Callable[[str], RegistryClient]


@dataclass(frozen=True, slots=True)
class ImageSource:
    """An image read in: where it came from, and its parts in a layout on disk."""

    name: str
    image: LayoutImage
    reference: Reference | None = None  # set for images that came from a registry


@dataclass(frozen=True, slots=True)
class PushResult:
    reference: str
    digest: str
    stats: TransferStats

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "reference": self.reference,
            "digest": self.digest,
            "blobs_uploaded": s.blobs_uploaded,
            "blobs_mounted": s.blobs_mounted,
            "blobs_existing": s.blobs_existing,
            "bytes_uploaded": s.bytes_uploaded,
        }


def store_layout(store: Store) -> OciLayout:
    return OciLayout.open(store.root / "oci", create=True)


def verified_cache(store: Store) -> Path:
    """Where the store remembers which blob files were hashed and matched."""
    return store.root / "images" / "verified"


def default_client(
    *, insecure: bool = False, progress: Callable[[BlobProgress], None] | None = None
) -> ClientFactory:
    return lambda registry: RegistryClient(registry, insecure=insecure, progress=progress)


def check_output(text: str) -> None:
    """Refuse (exit 2) an output ``--output`` cannot write, before anything is built:
    ``oci:DIR[:TAG]`` and ``docker-archive:FILE[:NAME[:TAG]]`` with a valid name, whose
    path is free for it (a layout goes into a new or empty folder or an existing layout,
    an archive at a path that is not a folder), below a folder rather than a file."""
    if text.startswith("oci:"):
        directory, _ = parse_layout_ref(text)
        problem = _blocked(directory)
        if problem is None and directory.exists():
            if not directory.is_dir():
                problem = "it exists and is not a folder"
            elif not (directory / "oci-layout").is_file() and any(directory.iterdir()):
                problem = "it is a folder that is neither empty nor an OCI layout"
        where, hint = directory, "name a new or empty folder, or an existing OCI layout"
    elif text.startswith("docker-archive:"):
        path, _ = parse_archive_ref(text)
        problem = _blocked(path)
        if problem is None and path.is_dir():
            problem = "it is a folder; a docker-archive is one file"
        where, hint = path, f"name a file, e.g. docker-archive:{path / 'image.tar'}"
    else:
        raise ImageInputError(
            f"unknown output {text!r}",
            hint="write oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG]; push with --push REF",
        )
    if problem is not None:
        raise ImageInputError(
            f"cannot write the image to {where}: {problem}",
            problems=[Problem(text, problem)],
            hint=hint,
        )


def _blocked(path: Path) -> str | None:
    """Why ``path`` cannot be made: the nearest of its parents that exists is no folder."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is not a folder"
    return None


def parse_push_ref(text: str) -> Reference:
    """The registry reference an image is pushed to: ``[host[:port]/]repo[:tag]``. A
    digest is refused (exit 2): the pushed manifest's digest is what it is, so a pinned
    one is either redundant or a silent lie."""
    ref = Reference.parse(text)  # a malformed one is ImageInputError (exit 2) already
    if ref.digest is not None:
        raise ImageInputError(
            f"cannot push to {text!r}: a push reference names a tag, not a digest",
            hint="push to REPO:TAG; the registry answers with the manifest's digest",
        )
    return ref


def open_image(
    text: str,
    store: Store,
    *,
    platform: str | None = None,
    client: ClientFactory | None = None,
) -> ImageSource:
    """Read the image ``text`` names, every blob checked against its digest; registry and
    archive images are copied into the store's layout."""
    platform = platform or default_platform()
    if text.startswith("oci:"):
        directory, tag = parse_layout_ref(text)
        if not (directory / "oci-layout").is_file():
            raise ImageInputError(f"{directory} is not an OCI image layout (no oci-layout file)")
        layout = OciLayout.open(directory)
        image = layout.image(tag, platform=platform, cache=verified_cache(store))
        return ImageSource(text, image)
    if text.startswith("docker-archive:"):
        path, name = parse_archive_ref(text)
        if not path.is_file():
            raise ImageInputError(f"no docker-archive at {path}")
        return ImageSource(text, read_docker_archive(path, store_layout(store), name=name))
    with as_input_error():
        ref = mirrored(Reference.parse(text))
    factory = client or default_client()
    image = pull_image(
        factory(ref.registry), ref, store_layout(store), platform, cache=verified_cache(store)
    )
    return ImageSource(text, image, ref)


def mirrored(ref: Reference) -> Reference:
    """``ref`` with Docker Hub replaced by ``$ENVSHIP_REGISTRY_MIRROR`` (``host[:port]``)
    when set, as Docker's ``registry-mirrors`` does: networks without internet keep a copy
    of the Hub's images on an internal registry under the same names."""
    mirror = os.environ.get("ENVSHIP_REGISTRY_MIRROR", "").strip().rstrip("/")
    if mirror and ref.registry == DOCKER_HUB:
        return replace(ref, registry=mirror)
    return ref


def pull_image(
    client: RegistryClient,
    ref: Reference,
    layout: OciLayout,
    platform: str,
    *,
    cache: Path | None = None,
) -> LayoutImage:
    """Manifest, config and layers of ``ref`` for ``platform``, each verified, into
    ``layout``; blobs already there are checked (``cache`` remembers what matched) and
    fetched again only if damaged."""
    try:
        descriptor, data = client.get_manifest(ref.repository, ref.identifier)
    except RegistryError as exc:
        if exc.status != 404:
            raise
        # The registry answered: there is no such repository or tag (MANIFEST_UNKNOWN,
        # NAME_UNKNOWN). That is a wrong name, not network trouble.
        raise ImageInputError(
            f"no image {ref} in the registry {ref.registry}",
            problems=[Problem(str(ref), exc.message)],
            hint="check the repository name and the tag or digest",
        ) from None
    for _ in range(2):
        if descriptor.media_type not in INDEX_TYPES:
            break
        with as_input_error():
            descriptor = _pick(load_json(data, f"index {ref}"), platform, str(ref))
        descriptor, data = client.get_manifest(ref.repository, descriptor.digest)
    with as_input_error():
        manifest = ImageManifest.from_json(data, where=f"manifest of {ref}")
    layout.add_blob(data, descriptor.media_type)
    for blob in (manifest.config, *manifest.layers):
        try:
            layout.verify_blob(blob, cache=cache)
        except (ImageInputError, ArtifactError):  # absent, or the store's copy is damaged
            client.fetch_blob(ref.repository, blob, layout.blob_path(blob.digest))
    with as_input_error():
        config = ImageConfig.from_json(layout.get_blob(manifest.config), f"config of {ref}")
    if len(config.diff_ids) != len(manifest.layers):
        raise ImageInputError(
            f"{ref}: {len(manifest.layers)} layers but {len(config.diff_ids)} diff_ids"
        )
    paths = tuple(layout.blob_path(layer.digest) for layer in manifest.layers)
    return LayoutImage(descriptor, manifest, config, paths)


def _pick(index: dict[str, Any], platform: str, where: str) -> Descriptor:
    want = platform.split("/")
    found = []
    for i, item in enumerate(index.get("manifests") or []):
        p = item.get("platform") if isinstance(item, dict) else None
        if not isinstance(p, dict):
            continue
        have = [str(p.get("os", "")), str(p.get("architecture", ""))]
        found.append("/".join(have))
        if have == want[:2] and (len(want) < 3 or p.get("variant") == want[2]):
            return Descriptor.from_json(item, f"{where}.manifests[{i}]")
    raise ImageInputError(
        f"{where} has no image for {platform}",
        hint=f"platforms it has: {', '.join(found) or 'none'}",
    )


def write_image(built: BuiltImage, text: str, *, store: Store | None = None) -> str:
    """Write ``built`` to ``oci:DIR[:TAG]`` or ``docker-archive:FILE[:NAME[:TAG]]``;
    returns what was written, as a reference. Every layer is checked against its digest
    before it is linked or copied (with ``store``, through what it remembers)."""
    check_output(text)
    cache = verified_cache(store) if store is not None else None
    if text.startswith("oci:"):
        directory, tag = parse_layout_ref(text)
        new = _new_parts(directory)
        try:
            out = OciLayout.open(directory, create=True)
            for layer, path in zip(built.layers, built.layer_paths, strict=True):
                d = layer.descriptor
                out.add_blob_file(path, d.digest, d.size, d.media_type, link=True, cache=cache)
            out.add_blob(built.config_bytes, built.manifest.config.media_type)
            manifest = out.add_blob(built.manifest_bytes, OCI_MANIFEST)
            # Tagged last: until index.json names it, no reader sees a half-written image.
            out.tag(tag or "latest", manifest)
        except BaseException as exc:
            # A layout this call made and that did not get its image is removed (it would
            # pass for an output: an index.json naming nothing); an existing one keeps
            # whatever blobs arrived, which its index does not name.
            if new is not None:
                _remove(*new)
            if isinstance(exc, OSError) or (isinstance(exc, ImageError) and is_disk_full(exc)):
                raise _write_error(directory, exc) from exc
            raise
        return f"oci:{directory}:{tag or 'latest'}"
    path, name = parse_archive_ref(text)
    try:
        write_docker_archive(
            path,
            config=built.config_bytes,
            layers=list(built.layer_paths),
            repo_tags=[name] if name else [],
            manifest=built.manifest_bytes,  # one image, one digest: the one the build reports
        )
    except OSError as exc:  # the archive is written under a temporary name: none is left
        raise _write_error(path, exc) from exc
    return f"docker-archive:{path}" + (f":{name}" if name else "")


def _new_parts(directory: Path) -> tuple[Path, bool] | None:
    """What writing a layout at ``directory`` creates: None when a layout is there, else
    the folder to remove after a failure (``directory`` or the first missing folder
    above it) and whether it was there before (then only its contents go)."""
    if (directory / "oci-layout").is_file():
        return None
    made = directory.absolute()
    if made.is_dir():
        return made, True
    while not made.parent.exists():
        made = made.parent
    return made, False


def _remove(made: Path, existed: bool) -> None:
    if not existed:
        shutil.rmtree(made, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        for entry in list(made.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _write_error(where: Path, exc: OSError | ImageError) -> ImageError:
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
    # Only a full disk or a spent quota is helped by freeing space (envship._diskfull).
    hint = (
        "free disk space (or write the image elsewhere) and build again"
        if is_disk_full(exc)
        else "write the image elsewhere, or make that place writable"
    )
    return ImageError(f"cannot write the image to {where}: {reason}", hint=hint)


def push_image(
    built: BuiltImage,
    ref: Reference,
    client: RegistryClient,
    *,
    mount_from: str | None = None,
    workers: int = 4,
    store: Store | None = None,
) -> PushResult:
    """Push every blob ``built`` needs (skipping those there, mounting from
    ``mount_from``, uploading the rest, a few at a time), then the manifest. Each layer
    file is checked against its digest first (with ``store``, through what it remembers),
    so a damaged one fails here, named, rather than as the registry's DIGEST_INVALID."""
    if ref.digest is not None:
        raise ImageInputError(
            f"cannot push to {ref}: a push reference names a tag, not a digest",
            hint="push to REPO:TAG; the registry answers with the manifest's digest",
        )
    cache = verified_cache(store) if store is not None else None
    for layer, path in zip(built.layers, built.layer_paths, strict=True):
        try:
            check_file(path, layer.descriptor.digest, layer.descriptor.size, cache=cache)
        except FileNotFoundError:
            raise ImageError(
                f"layer {layer.descriptor.digest} is gone from {path.parent}",
                hint="build the image again",
            ) from None

    def opener(path: Path) -> Callable[[], BinaryIO]:
        return lambda: path.open("rb")

    jobs: list[tuple[Descriptor, Callable[[], BinaryIO]]] = [
        (layer.descriptor, opener(path))
        for layer, path in zip(built.layers, built.layer_paths, strict=True)
    ]
    config_bytes = built.config_bytes

    def open_config() -> BinaryIO:
        return io.BytesIO(config_bytes)

    jobs.append((built.manifest.config, open_config))
    unique = list({d.digest: (d, op) for d, op in jobs}.values())  # a layer twice: once
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [
            pool.submit(client.push_blob, ref.repository, d, op, mount_from=mount_from)
            for d, op in unique
        ]
        for future in futures:
            future.result()
    digest = client.put_manifest(
        ref.repository, ref.tag or built.digest, OCI_MANIFEST, built.manifest_bytes
    )
    shown = f"{ref.registry}/{ref.repository}" + (f":{ref.tag}" if ref.tag else "")
    return PushResult(shown, digest, client.stats())

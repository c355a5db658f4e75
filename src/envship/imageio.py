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
import errno
import io
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from ._diskfull import is_disk_full
from ._outputcheck import check_output, check_outputs
from ._swap import Staging, sweep
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
    sha256_digest,
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
    "check_outputs",
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
    mirror = os.environ.get(MIRROR_VARIABLE, "").strip().rstrip("/")
    if mirror and ref.registry == DOCKER_HUB:
        return replace(ref, registry=_check_mirror(mirror))
    return ref


MIRROR_VARIABLE = "ENVSHIP_REGISTRY_MIRROR"
# A registry host as the distribution reference grammar spells one (reference/regexp.go:
# domain components joined by dots, or a bracketed IPv6 address, then an optional port).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# Docker's registry-mirrors are URLs, and the registry client takes a scheme too.
_HOST = re.compile(
    rf"(?:https?://)?(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?"
)


def _check_mirror(mirror: str) -> str:
    """``mirror`` if it is ``[http[s]://]host[:port]``; else bad input (exit 2) naming the
    variable, before any request: a value with a space or a path would fail each retry."""
    found = _HOST.fullmatch(mirror)
    if found and (found["port"] is None or 0 < int(found["port"]) < 65536):
        return mirror
    raise ImageInputError(
        f"{MIRROR_VARIABLE}={mirror!r} is not a registry host",
        problems=[Problem(MIRROR_VARIABLE, "not host[:port]")],
        hint=f"set {MIRROR_VARIABLE} to host[:port] (as registry.example:5000), "
        "or unset it to pull from Docker Hub",
    )


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
    before it is linked or copied (with ``store``, through what it remembers).

    A new layout appears whole or not at all (:func:`_write_layout`); a failed write into
    an existing one leaves its index as it was and removes the blobs it added that no
    manifest references. An archive is written under a temporary name and renamed."""
    check_output(text)
    cache = verified_cache(store) if store is not None else None
    if text.startswith("oci:"):
        directory, tag = parse_layout_ref(text)
        try:
            _write_layout(built, directory, tag or "latest", cache)
        except (OSError, ImageError) as exc:
            if isinstance(exc, OSError) or is_disk_full(exc):
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


def _write_layout(built: BuiltImage, directory: Path, tag: str, cache: Path | None) -> None:
    """``built`` into the layout at ``directory``, tagged ``tag``.

    A new layout is written whole in a staging folder beside ``directory`` (a
    :class:`~envship._swap.Staging`, locked, removed however this ends, and swept by the
    next write when a SIGKILL left it) and renamed into place at the end: until then
    there is no layout there, never one without its image. The rename fails if something
    appeared at ``directory`` meanwhile; a layout made there is then written into.
    Folders above it this call made are removed again after a failure."""
    target = directory.absolute()
    if target.is_symlink():  # a link to an (empty) folder: the image goes there, as before
        target = Path(os.path.realpath(target))
    prefix = f".{target.name}.tmp-"
    if (target / "oci-layout").is_file():
        sweep(target.parent, prefix)  # what a killed write of a new layout left here
        _add_to_layout(built, OciLayout.open(target), tag, cache)
        return
    made = None if target.parent.exists() else target.parent  # the first folder made
    while made is not None and not made.parent.exists():
        made = made.parent
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with Staging(target.parent, prefix) as staging:
            new = staging.path / "layout"
            _add_to_layout(built, OciLayout.open(new, create=True), tag, cache)
            try:
                os.rename(new, target)  # replaces an empty folder, never one with files
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if not (target / "oci-layout").is_file():  # appeared meanwhile
                    raise ImageInputError(
                        f"cannot write the image to {directory}: something else was "
                        "written there meanwhile",
                        hint="name a new or empty folder, or an existing OCI layout",
                    ) from None
                _add_to_layout(built, OciLayout.open(target), tag, cache)
    except BaseException:
        # The folders this call made above the layout, each only if empty: another
        # writer may have started using them meanwhile.
        folder = target.parent
        while made is not None and folder.is_relative_to(made):
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
        raise


def _add_to_layout(built: BuiltImage, out: OciLayout, tag: str, cache: Path | None) -> None:
    """Add ``built``'s blobs to ``out`` and tag its manifest. What killed writers left in
    the layout goes first; the blobs this call added are removed again if it fails,
    unless a manifest references them (another image's write may share them)."""
    out.sweep()
    added: list[str] = []

    def add_file(path: Path, d: Descriptor) -> None:
        if not out.has_blob(d.digest):
            added.append(d.digest)
        out.add_blob_file(path, d.digest, d.size, d.media_type, link=True, cache=cache)

    def add_bytes(data: bytes, media_type: str) -> Descriptor:
        if not out.has_blob(sha256_digest(data)):
            added.append(sha256_digest(data))
        return out.add_blob(data, media_type)

    needs = [layer.descriptor.digest for layer in built.layers]
    try:
        for attempt in range(3):
            for layer, path in zip(built.layers, built.layer_paths, strict=True):
                add_file(path, layer.descriptor)
            config = add_bytes(built.config_bytes, built.manifest.config.media_type)
            manifest = add_bytes(built.manifest_bytes, OCI_MANIFEST)
            try:
                # Tagged last: until index.json names it, no reader sees a half-written
                # image; the tag checks, under the index lock, that every blob is there.
                out.tag(tag, manifest, needs=[*needs, config.digest, manifest.digest])
                return
            except ImageError:
                # Another write's failure removed a blob both images use before we tagged
                # (remove_unreferenced): add what is gone and tag again.
                gone = [d for d in (*needs, config.digest) if not out.has_blob(d)]
                if not gone or attempt == 2:
                    raise
    except BaseException:
        with contextlib.suppress(OSError, ImageError):
            out.remove_unreferenced(added)
        raise


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

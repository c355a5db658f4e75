"""Daemonless image builds: a locked environment as layers on top of a base image.

The environment becomes a virtual environment at a fixed path (``/opt/envship/venv`` by
default) that uses the base image's own interpreter. Nothing runs: the base is probed
from its layers (:mod:`envship.imagebase`), each wheel is installed straight into a tar
stream by pypa/installer (:mod:`envship._wheeltar`), and the manifest and config are
written by hand. Layers are cut so that a one-package change touches one small layer:
every distribution whose wheel is 1 MiB or more gets its own, and the small ones share
one of a few buckets chosen by a hash of their name (so adding or bumping a small package
changes one bucket, not every layer after it). Each layer is cached in the store under
a key made of everything that goes into it, so a rebuild writes only what changed; the
cut, the keys, the workers and the cache are :mod:`envship._imagelayers`', and the venv
skeleton and the marker and kernelspec layer :mod:`envship._imageenv`'s.

Reproducible: entries, modes, owners and times inside the layers are fixed
(SOURCE_DATE_EPOCH, else 0), JSON is canonical, and nothing depends on the build folder
or clock; the same lock on the same base gives the same manifest digest anywhere.
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from ._bytecode import BytecodeCompiler, find_compiler
from ._imageenv import kernel_for, skeleton_layer, top_layer
from ._imagelayers import (
    CachedLayer,
    LayerCache,
    LayerJob,
    LayerPlan,
    build_layers,
    plan_layers,
)
from .errors import ImageError, StoreError
from .imagebase import BaseFacts, match_base
from .install import marker_data
from .layer import DEFAULT_LEVEL
from .lockfile import LockFile
from .oci import (
    DOCKER_LAYER_GZIP,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    Descriptor,
    ImageConfig,
    ImageManifest,
)
from .ocilayout import LayoutImage, OciLayout
from .store import Store
from .targets import Target

__all__ = [
    "DEFAULT_PREFIX",
    "LABEL_PREFIX",
    "BuiltImage",
    "ImageLayer",
    "LayerEvent",
    "build_image",
    "source_date_epoch",
]

DEFAULT_PREFIX = "/opt/envship/venv"
LABEL_PREFIX = "org.envship"
DISTRIBUTIONS = f"{LABEL_PREFIX}.distributions"  # layer annotation: what a layer holds


@dataclass(frozen=True, slots=True)
class LayerEvent:
    """Progress of one environment layer: ``state`` is built, cached, or written."""

    index: int
    total: int
    label: str
    state: str
    size: int


LayerProgress = Callable[[LayerEvent], None]


@dataclass(frozen=True, slots=True)
class ImageLayer:
    """One layer of the built image, base layers included."""

    descriptor: Descriptor
    diff_id: str
    label: str  # "base", "numpy 2.3.1", "small packages 3", "environment"
    distributions: tuple[str, ...] = ()
    cached: bool = False  # taken from the store's layer cache rather than built now

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.descriptor.digest,
            "size": self.descriptor.size,
            "diff_id": self.diff_id,
            "label": self.label,
            "distributions": list(self.distributions),
            "cached": self.cached,
        }


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """An assembled image: blobs are in the store's layout, ready to be written out."""

    manifest: ImageManifest
    manifest_bytes: bytes
    config_bytes: bytes
    layers: tuple[ImageLayer, ...]
    layer_paths: tuple[Path, ...]
    base: BaseFacts
    target: Target
    prefix: str
    kernel: str | None
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    outputs: tuple[str, ...] = field(default=())
    bytecode: BytecodeCompiler | None = None  # what compiled the .pyc files, if any

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest_bytes).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "target": self.target.name,
            "base": self.base.to_json(),
            "prefix": self.prefix,
            "kernel": self.kernel,
            "bytecode": self.bytecode.to_json() if self.bytecode else None,
            "layers": [layer.to_json() for layer in self.layers],
            "built": sum(1 for layer in self.layers if layer.label != "base" and not layer.cached),
            "outputs": list(self.outputs),
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH (reproducible-builds.org) if set, else 0."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise ImageError(
            f"SOURCE_DATE_EPOCH must be a whole number of seconds, not {raw!r}",
            hint="see https://reproducible-builds.org/specs/source-date-epoch/",
        )
    return int(raw)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _config(
    base: ImageConfig,
    diff_ids: Iterable[str],
    history: Iterable[dict[str, Any]],
    *,
    prefix: str,
    labels: dict[str, str],
    created: str,
) -> ImageConfig:
    settings = dict(base.config)
    env = base.env
    path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["PATH"] = f"{prefix}/bin:{path}"
    env["VIRTUAL_ENV"] = prefix
    settings["Env"] = [f"{k}={v}" for k, v in env.items()]
    settings["Labels"] = {**(settings.get("Labels") or {}), **labels}
    return replace(
        base,
        diff_ids=(*base.diff_ids, *diff_ids),
        config=settings,
        history=(*base.history, *history),
        created=created,
    )


def build_image(
    lock: LockFile,
    store: Store,
    base: LayoutImage,
    facts: BaseFacts,
    *,
    base_name: str,
    target: str | None = None,
    groups: Collection[str] | None = None,
    prefix: str = DEFAULT_PREFIX,
    kernel_name: str | None = None,
    mtime: int | None = None,
    level: int = DEFAULT_LEVEL,
    jobs: int | None = None,
    compile_bytecode: bool = False,
    progress: LayerProgress | None = None,
) -> BuiltImage:
    """Assemble the image for ``lock`` on ``base``; its blobs end up in the store's layout.

    ``facts`` come from :func:`envship.imagebase.probe_base`; the target is the one they
    fit (or ``target``, checked against them). ``compile_bytecode`` adds the ``.pyc``
    files, compiled by a CPython of the base's minor version found on this machine
    (:mod:`envship._bytecode`). Write the result out with :mod:`envship.imageio`.
    """
    start = time.monotonic()
    if not prefix.startswith("/") or prefix.rstrip("/") in ("", "/usr", "/opt") or " " in prefix:
        raise ImageError(f"invalid environment path {prefix!r}", hint="e.g. /opt/envship/venv")
    prefix = prefix.rstrip("/")
    chosen = match_base([lock.target(target)] if target else lock, facts, where=base_name)
    chosen_groups = lock.chosen_groups(groups)
    artifacts = lock.artifacts([chosen.name], groups=chosen_groups)
    missing = [a for a in artifacts if not store.has(a.sha256)]
    if missing:
        raise StoreError(
            f"{len(missing)} locked artifact(s) for {chosen.name} are not in the store "
            f"{store.root}",
            hint=f"run `envship fetch --lock {lock.path} --target {chosen.name}` first",
        )
    sdists = [a.filename for a in artifacts if a.kind != "wheel"]
    if sdists:
        raise ImageError(
            "images are built from wheels only; the lock selects source distributions: "
            + ", ".join(sdists),
            hint="building an sdist runs its code; build wheels and lock them instead",
        )
    epoch = source_date_epoch() if mtime is None else mtime
    interpreter = f"{prefix}/bin/python"
    compiler = (
        find_compiler(facts.version, facts.version_full, where=base_name)
        if compile_bytecode
        else None
    )
    layout = OciLayout.open(store.root / "oci", create=True)
    cache = LayerCache(store, layout)
    inputs: dict[str, Any] = {
        "prefix": prefix,
        "interpreter": interpreter,
        "python": facts.version,
        "mtime": epoch,
        "level": level,
    }
    if compiler is not None:  # absent otherwise, so uncompiled layers keep their keys
        inputs["bytecode"] = compiler.key()
    plans = plan_layers(artifacts, store, inputs=inputs)
    total = len(plans) + 2
    results: dict[str, CachedLayer] = {}
    todo = []
    for plan in plans:
        hit = cache.get(plan.key)
        if hit is not None:
            results[plan.key] = hit
        else:
            todo.append(plan)
    tmp_dir = store.root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)

    def annotations(plan: LayerPlan) -> dict[str, str]:
        return {DISTRIBUTIONS: " ".join(f"{a.name}=={a.version}" for a in plan.artifacts)}

    def job(plan: LayerPlan) -> LayerJob:
        wheels = tuple(
            store.named_or_private(a.sha256, a.filename, tmp_dir / "wheels") for a in plan.artifacts
        )
        return LayerJob(wheels, tmp_dir, prefix, facts.version, interpreter, epoch, level, compiler)

    done = 0

    def report(label: str, state: str, size: int) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(LayerEvent(done, total, label, state, size))

    for plan in plans:
        if plan.key in results:
            report(plan.label, "cached", results[plan.key].descriptor.size)

    def built(plan: LayerPlan, layer: CachedLayer) -> None:
        results[plan.key] = layer
        report(plan.label, "built", layer.descriptor.size)

    build_layers(todo, job, cache, annotations, jobs=jobs, built=built)

    # The venv skeleton, then the marker and kernelspec: the only layer that changes with
    # every lock, so it is small and last. Both are cheap and always written; a blob the
    # store's layout already holds counts as cached, so a rebuild with nothing changed
    # reports no layer built.
    env_layers: list[ImageLayer] = []
    skeleton_blob = skeleton_layer(tmp_dir, epoch, prefix, facts)
    known = layout.has_blob(skeleton_blob.digest)
    skeleton = layout.add_blob_file(
        skeleton_blob.path, skeleton_blob.digest, skeleton_blob.size, skeleton_blob.media_type
    )
    env_layers.append(ImageLayer(skeleton, skeleton_blob.diff_id, "virtual environment", (), known))
    report("virtual environment", "cached" if known else "built", skeleton.size)
    kernel, notes = kernel_for(lock, artifacts, kernel_name)
    if "ng" in zlib.ZLIB_RUNTIME_VERSION.lower():
        notes.append(
            f"compressed with {zlib.ZLIB_RUNTIME_VERSION}: layer digests differ from builds "
            "on machines with zlib itself (the uncompressed diff_ids do not)"
        )
    marker = marker_data(
        lock,
        chosen,
        chosen_groups,
        facts.python,
        facts.version_full,
        artifacts,
        compiled=compiler is not None,
    )
    # The build folder must not reach the image: it would change the digest per machine.
    marker["lock"]["path"] = lock.path.name

    display = lock.display_name or f"Python ({lock.name or kernel})"
    top_blob = top_layer(tmp_dir, epoch, prefix, marker, kernel, display)
    uncompiled: list[str] = []
    for plan in plans:
        hit = results[plan.key]
        names = tuple(f"{a.name}=={a.version}" for a in plan.artifacts)
        env_layers.append(ImageLayer(hit.descriptor, hit.diff_id, plan.label, names, hit.cached))
        uncompiled += hit.uncompiled
        notes += [w for w in hit.warnings if w not in notes]
    if uncompiled:
        shown = ", ".join(sorted(uncompiled)[:3]) + (", ..." if len(uncompiled) > 3 else "")
        notes.append(f"{len(uncompiled)} source file(s) do not compile; left as source: {shown}")
    known = layout.has_blob(top_blob.digest)
    top_descriptor = layout.add_blob_file(
        top_blob.path, top_blob.digest, top_blob.size, top_blob.media_type
    )
    env_layers.append(
        ImageLayer(top_descriptor, top_blob.diff_id, "marker and kernelspec", (), known)
    )
    report("marker and kernelspec", "cached" if known else "built", top_descriptor.size)
    env_paths = [layout.blob_path(layer.descriptor.digest) for layer in env_layers]

    base_layers = [
        ImageLayer(_oci_type(d), diff, "base")
        for d, diff in zip(base.manifest.layers, base.config.diff_ids, strict=True)
    ]
    created = _iso(epoch)
    # One history entry per layer (OCI config.md); a base without history gets neutral
    # entries so ours line up with our layers.
    base_history = list(base.config.history)
    unrecorded = len(base_layers) - sum(1 for h in base_history if not h.get("empty_layer"))
    base_history += [{"created_by": "base layer"}] * max(0, unrecorded)
    labels = {
        f"{LABEL_PREFIX}.lock-digest": lock.digest,
        f"{LABEL_PREFIX}.spec-digest": lock.spec_digest or "",
        f"{LABEL_PREFIX}.version": __version__,
        f"{LABEL_PREFIX}.prefix": prefix,
        f"{LABEL_PREFIX}.target": chosen.name,
    }
    history = [
        {"created": created, "created_by": f"envship image build: {layer.label}"}
        for layer in env_layers
    ]
    config = _config(
        replace(base.config, history=tuple(base_history)),
        (layer.diff_id for layer in env_layers),
        history,
        prefix=prefix,
        labels=labels,
        created=created,
    )
    config_bytes = config.to_bytes()
    config_descriptor = layout.add_blob(config_bytes, OCI_CONFIG)
    layers = (*base_layers, *env_layers)
    manifest = ImageManifest(config_descriptor, tuple(layer.descriptor for layer in layers))
    manifest_bytes = manifest.to_bytes()
    return BuiltImage(
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        config_bytes=config_bytes,
        layers=layers,
        layer_paths=(*base.layer_paths, *env_paths),
        base=facts,
        target=chosen,
        prefix=prefix,
        kernel=kernel,
        notes=tuple(notes),
        seconds=time.monotonic() - start,
        bytecode=compiler,
    )


def _oci_type(descriptor: Descriptor) -> Descriptor:
    # Docker's gzip layer type names the same bytes as OCI's; one manifest, one vocabulary.
    if descriptor.media_type == DOCKER_LAYER_GZIP:
        return replace(descriptor, media_type=OCI_LAYER_GZIP)
    return descriptor

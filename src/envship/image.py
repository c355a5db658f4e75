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
skeleton and the marker and kernelspec layer :mod:`envship._imageenv`'s. Where the
environment goes in the base (symbolic links followed, the base's folders on the way
kept as they are, a base already holding the prefix refused) is
:mod:`envship._imageprefix`'s.

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
from ._fetchcommand import fetch_command
from ._imageenv import check_kernel_name, kernel_for, skeleton_layer, skeleton_record, top_layer
from ._imagelayers import (
    CachedLayer,
    LayerCache,
    LayerJob,
    LayerPlan,
    WorkDir,
    build_layers,
    plan_layers,
)
from ._imageprefix import check_prefix, sagemaker_notes
from ._imageprefix import place as place_env
from ._wheeltar import Locked
from .errors import ImageError, ImageInputError, Problem, TargetError
from .imagebase import BaseFacts, match_base
from .install import marker_data
from .layer import DEFAULT_LEVEL, MAX_MTIME, LayerBlob
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
    "BUILT_BY",
    "DEFAULT_PREFIX",
    "LABEL_PREFIX",
    "BuiltImage",
    "ImageLayer",
    "LayerEvent",
    "build_image",
    "check_kernel_name",
    "check_prefix",
    "lock_target",
    "source_date_epoch",
]

# How a layer's history entry names what the build made it of ("envship image build:
# numpy 2.3.1"); `image inspect` reads the label back from it.
BUILT_BY = "envship image build: "

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
            "target": self.target.to_json(),
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
    """SOURCE_DATE_EPOCH (reproducible-builds.org) if set, else 0. A value that is not a
    whole number of seconds a layer's tar headers can hold (0 to
    :data:`envship.layer.MAX_MTIME`) is bad input (:class:`ImageInputError`, exit 2)
    naming the variable, refused before anything is read or built."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    spec = "see https://reproducible-builds.org/specs/source-date-epoch/"
    # ASCII digits only: str.isdigit() also takes "²" and other digits int() refuses.
    if not (raw.isascii() and raw.isdigit()):
        raise ImageInputError(
            f"SOURCE_DATE_EPOCH must be a whole number of seconds, not {raw!r}",
            problems=[Problem("SOURCE_DATE_EPOCH", "not a whole number of seconds")],
            hint=f"set it to seconds since 1970-01-01 UTC, or unset it (0); {spec}",
        )
    # Leading zeros dropped and the length checked first: int() refuses more than 4300
    # digits (CPython's limit), which would be an internal error here.
    digits = raw.lstrip("0") or "0"
    value = int(digits) if len(digits) <= len(str(MAX_MTIME)) else MAX_MTIME + 1
    if value > MAX_MTIME:
        raise ImageInputError(
            f"SOURCE_DATE_EPOCH {digits if len(digits) <= 20 else digits[:20] + '...'} is "
            "too late for an image layer",
            problems=[
                Problem(
                    "SOURCE_DATE_EPOCH",
                    f"a layer's tar headers hold times from 0 to {MAX_MTIME} ({_iso(MAX_MTIME)})",
                )
            ],
            hint=f"set it to a time up to {MAX_MTIME}, or unset it (0); {spec}",
        )
    return value


def lock_target(lock: LockFile, name: str) -> Target:
    """The lock's target ``name``; a :class:`TargetError` (exit 2) whose hint lists the
    lock's targets when it has none of that name."""
    if not lock.targets:
        raise lock.no_targets()
    try:
        return lock.target(name)
    except TargetError as exc:
        known = ", ".join(t.name for t in lock.targets)
        exc.hint = (
            f"build for one of the lock's targets ({known}), or leave --target out to "
            "build for the one the base image fits"
        )
        raise


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
    fit (or ``target``, checked against them). ``prefix`` is resolved in the base
    (symbolic links followed: the environment is built at the real path, and a note
    says so); a base that already has something there is refused
    (:mod:`envship._imageprefix`). ``compile_bytecode`` adds the ``.pyc`` files,
    compiled by a CPython of the base's minor version found on this machine
    (:mod:`envship._bytecode`). Write the result out with :mod:`envship.imageio`.
    """
    start = time.monotonic()
    prefix = check_prefix(prefix)
    if kernel_name is not None:
        check_kernel_name(kernel_name)  # before the base is read
    chosen = match_base([lock_target(lock, target)] if target else lock, facts, where=base_name)
    chosen_groups = lock.chosen_groups(groups)
    artifacts = lock.artifacts([chosen.name], groups=chosen_groups)
    missing = [a for a in artifacts if not store.has(a.sha256)]
    if missing:
        fetch = fetch_command(lock.path, store, targets=[chosen.name])
        raise store.missing_error(missing, len(artifacts), fetch)
    sdists = [a.filename for a in artifacts if a.kind != "wheel"]
    if sdists:
        raise ImageError(
            "images are built from wheels only; the lock selects source distributions: "
            + ", ".join(sdists),
            hint="building an sdist runs its code; build wheels and lock them instead",
        )
    epoch = source_date_epoch() if mtime is None else mtime
    place = place_env(base, prefix, where=base_name, cache=store.root / "images" / "places")
    prefix = place.prefix
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
        # The base's directories on the way, written with the base's owner and mode.
        "kept": [d.to_json() for d in place.above_prefix],
    }
    if compiler is not None:  # absent otherwise, so uncompiled layers keep their keys
        inputs["bytecode"] = compiler.key()
    plans = plan_layers(artifacts, store, inputs=inputs)
    # Layer order: the venv skeleton, the distributions, then the marker and kernelspec,
    # the only layer that changes with every lock, so it is small and last.
    position = {plan.key: i + 2 for i, plan in enumerate(plans)}
    report = _InOrder(progress, len(plans) + 2)
    kernel, kernel_notes = kernel_for(lock, artifacts, kernel_name, place)
    notes = [*place.notes, *sagemaker_notes(place), *kernel_notes]
    with WorkDir(store.tmp_dir) as work:
        # The two small layers are cheap and always written; a blob the store's layout
        # already holds counts as cached, so a rebuild with nothing changed reports no
        # layer built.
        skeleton = _small(layout, skeleton_layer(work, epoch, place, facts), "virtual environment")
        report(1, skeleton)
        results: dict[str, CachedLayer] = {}
        todo = []
        for plan in plans:
            hit = cache.get(plan.key)
            if hit is None:
                todo.append(plan)
                continue
            results[plan.key] = hit
            report(position[plan.key], _env_layer(plan, hit))

        def annotations(plan: LayerPlan) -> dict[str, str]:
            return {DISTRIBUTIONS: " ".join(f"{a.name}=={a.version}" for a in plan.artifacts)}

        # A store file that no longer matches the lock fails its layer before the layer
        # is cached (under the lock's hash, it would be reused after the store's repair).
        repair = fetch_command(lock.path, store, targets=[chosen.name], verify=True)
        repair = f"`{repair}` replaces it"

        def job(plan: LayerPlan) -> LayerJob:
            wheels = tuple(
                (
                    store.named_or_private(a.sha256, a.filename, work / "wheels"),
                    Locked(a.sha256, a.size, repair),
                )
                for a in plan.artifacts
            )
            return LayerJob(
                wheels,
                work,
                prefix,
                facts.version,
                interpreter,
                epoch,
                level,
                compiler,
                place.above_prefix,
            )

        def built(plan: LayerPlan, layer: CachedLayer) -> None:
            results[plan.key] = layer
            report(position[plan.key], _env_layer(plan, layer))

        build_layers(todo, job, cache, annotations, jobs=jobs, built=built)

        # What the skeleton layer wrote, so verify holds pyvenv.cfg and bin/python* to it.
        venv_files, venv_links = skeleton_record(facts)
        marker = marker_data(
            lock,
            chosen,
            chosen_groups,
            facts.python,
            facts.version_full,
            artifacts,
            compiled=compiler is not None,
            venv=venv_files,
            links=venv_links,
        )
        # The build folder must not reach the image: it would change the digest per machine.
        marker["lock"]["path"] = lock.path.name
        display = lock.display_name or f"Python ({lock.name or kernel})"
        top_blob = top_layer(work, epoch, place, marker, kernel, display)
        top = _small(layout, top_blob, "marker and kernelspec")
        report(len(plans) + 2, top)

    if "ng" in zlib.ZLIB_RUNTIME_VERSION.lower():
        notes.append(
            f"compressed with {zlib.ZLIB_RUNTIME_VERSION}: layer digests differ from builds "
            "on machines with zlib itself (the uncompressed diff_ids do not)"
        )
    env_layers = [skeleton]
    uncompiled: list[str] = []
    for plan in plans:
        hit = results[plan.key]
        env_layers.append(_env_layer(plan, hit))
        uncompiled += hit.uncompiled
        notes += [w for w in hit.warnings if w not in notes]
    env_layers.append(top)
    if uncompiled:
        shown = ", ".join(sorted(uncompiled)[:3]) + (", ..." if len(uncompiled) > 3 else "")
        notes.append(f"{len(uncompiled)} source file(s) do not compile; left as source: {shown}")
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
        {"created": created, "created_by": f"{BUILT_BY}{layer.label}"} for layer in env_layers
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


def _env_layer(plan: LayerPlan, layer: CachedLayer) -> ImageLayer:
    names = tuple(f"{a.name}=={a.version}" for a in plan.artifacts)
    return ImageLayer(layer.descriptor, layer.diff_id, plan.label, names, layer.cached)


def _small(layout: OciLayout, blob: LayerBlob, label: str) -> ImageLayer:
    """A layer written in this process, moved into the layout (cached if it was there)."""
    known = layout.has_blob(blob.digest)
    descriptor = layout.add_blob_file(blob.path, blob.digest, blob.size, blob.media_type)
    return ImageLayer(descriptor, blob.diff_id, label, (), known)


class _InOrder:
    """Progress in layer order: a layer done early is reported after those before it."""

    def __init__(self, progress: LayerProgress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.waiting: dict[int, ImageLayer] = {}
        self.next = 1

    def __call__(self, index: int, layer: ImageLayer) -> None:
        if self.progress is None:
            return
        self.waiting[index] = layer
        while self.next in self.waiting:
            done = self.waiting.pop(self.next)
            state = "cached" if done.cached else "built"
            self.progress(
                LayerEvent(self.next, self.total, done.label, state, done.descriptor.size)
            )
            self.next += 1


def _oci_type(descriptor: Descriptor) -> Descriptor:
    # Docker's gzip layer type names the same bytes as OCI's; one manifest, one vocabulary.
    if descriptor.media_type == DOCKER_LAYER_GZIP:
        return replace(descriptor, media_type=OCI_LAYER_GZIP)
    return descriptor

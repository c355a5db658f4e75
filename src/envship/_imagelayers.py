"""The environment's layers in an image: how wheels are cut into layers, keyed, built and
cached.

Kept apart from :mod:`envship.image` (which assembles the image around them) because this
is the part a rebuild's speed depends on: every distribution whose wheel is 1 MiB or more
gets its own layer, and the small ones share one of a few buckets chosen by a hash of
their name, so adding or bumping a small package changes one bucket, not every layer
after it. Each layer's key is a hash of everything that goes into its bytes, and the
store keeps one blob per key, so a rebuild writes only what changed.

Layers are built on a process pool (gzip and installer are CPU-bound and hold the GIL);
:func:`build_layer` is the worker, at module level so the pool can pickle it. Errors come
back as themselves (``EnvshipError`` pickles with its fields).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._atomic import write_atomic
from ._bytecode import BytecodeCompiler, Compiler
from ._wheeltar import VenvScheme, write_wheel
from .errors import EnvshipError, ImageError
from .layer import LayerBlob, LayerWriter
from .lockfile import Artifact
from .oci import Descriptor
from .ocilayout import OciLayout
from .store import Store

__all__ = [
    "LAYER_FORMAT",
    "BuiltLayer",
    "CachedLayer",
    "LayerCache",
    "LayerJob",
    "LayerPlan",
    "build_layers",
    "plan_layers",
]

# Bumped whenever the bytes a layer gets from the same inputs change, so no stale cached
# layer is ever reused.
LAYER_FORMAT = 1
_OWN_LAYER = 1 << 20
_BUCKETS = 8


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """One layer to have: its label, its distributions and its cache key."""

    label: str
    artifacts: tuple[Artifact, ...]
    key: str


@dataclass(frozen=True, slots=True)
class LayerJob:
    """What a worker needs to build one layer (picklable)."""

    wheels: tuple[Path, ...]
    tmp_dir: Path
    prefix: str
    python: str
    interpreter: str
    mtime: int
    level: int
    compiler: BytecodeCompiler | None


@dataclass(frozen=True, slots=True)
class BuiltLayer:
    blob: LayerBlob
    uncompiled: tuple[str, ...]  # image paths of sources that do not compile
    warnings: tuple[str, ...] = ()  # what installing its wheels warned of


@dataclass(frozen=True, slots=True)
class CachedLayer:
    """A layer blob in the store's layout, with what the build reports about it."""

    descriptor: Descriptor
    diff_id: str
    cached: bool  # found in the cache rather than built by this run
    uncompiled: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def _bucket(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % _BUCKETS


def plan_layers(
    artifacts: Sequence[Artifact], store: Store, *, inputs: dict[str, Any]
) -> list[LayerPlan]:
    """Cut ``artifacts`` into layers; ``inputs`` (prefix, Python, mtime...) join each key."""
    own: list[tuple[Artifact, ...]] = []
    buckets: dict[int, list[Artifact]] = {}
    for a in sorted(artifacts, key=lambda a: a.name):
        if store.path(a.sha256).stat().st_size >= _OWN_LAYER:
            own.append((a,))
        else:
            buckets.setdefault(_bucket(a.name), []).append(a)
    groups = [(f"{g[0].name} {g[0].version}", g) for g in own]
    groups += [(f"small packages {b}", tuple(buckets[b])) for b in sorted(buckets)]
    plans = []
    for label, members in groups:
        key_data = dict(
            inputs,
            format=LAYER_FORMAT,
            # The compressed bytes are deflate's: another zlib (zlib-ng) makes others.
            zlib=zlib.ZLIB_RUNTIME_VERSION,
            wheels=[a.sha256 for a in members],
        )
        key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()
        plans.append(LayerPlan(label, members, key))
    return plans


def build_layer(job: LayerJob) -> BuiltLayer:
    """Worker: one layer from its wheels."""
    scheme = VenvScheme.for_python(job.prefix, job.python)
    writer = LayerWriter(job.tmp_dir, mtime=job.mtime, level=job.level)
    # One fresh compiler per layer: its output depends on what it compiled before.
    compiler = Compiler(job.compiler) if job.compiler is not None else None
    try:
        warned: list[str] = []
        for wheel in job.wheels:
            done = write_wheel(
                wheel, writer, scheme, interpreter=job.interpreter, compiler=compiler
            )
            warned += done.warnings
        uncompiled = tuple(path for path, _ in compiler.failures) if compiler else ()
        return BuiltLayer(writer.close(), uncompiled, tuple(warned))
    except BaseException:
        writer.abort()
        raise
    finally:
        if compiler is not None:
            compiler.close()


class LayerCache:
    """``<store>/layers/<key>.json`` -> a layer blob kept in the store's OCI layout."""

    def __init__(self, store: Store, layout: OciLayout) -> None:
        self.dir = store.root / "layers"
        self.layout = layout

    def get(self, key: str) -> CachedLayer | None:
        try:
            data = json.loads((self.dir / f"{key}.json").read_text(encoding="utf-8"))
            descriptor = Descriptor.from_json(data["descriptor"])
            diff_id = str(data["diff_id"])
            uncompiled = tuple(str(p) for p in data.get("uncompiled", ()))
            warned = tuple(str(w) for w in data.get("warnings", ()))
        except (OSError, ValueError, KeyError, TypeError, ImageError):
            return None
        path = self.layout.blob_path(descriptor.digest)
        if not path.is_file() or path.stat().st_size != descriptor.size:
            return None
        return CachedLayer(descriptor, diff_id, True, uncompiled, warned)

    def put(self, key: str, built: BuiltLayer, annotations: dict[str, str]) -> CachedLayer:
        blob = built.blob
        descriptor = self.layout.add_blob_file(
            blob.path, blob.digest, blob.size, blob.media_type, verify=False
        )
        descriptor = replace(descriptor, annotations=annotations)
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {
            "descriptor": descriptor.to_json(),
            "diff_id": blob.diff_id,
            "uncompiled": list(built.uncompiled),
            "warnings": list(built.warnings),
        }
        write_atomic(self.dir / f"{key}.json", json.dumps(record))
        return CachedLayer(descriptor, blob.diff_id, False, built.uncompiled, built.warnings)


def build_layers(
    todo: Sequence[LayerPlan],
    job: Callable[[LayerPlan], LayerJob],
    cache: LayerCache,
    annotations: Callable[[LayerPlan], dict[str, str]],
    *,
    jobs: int | None,
    built: Callable[[LayerPlan, CachedLayer], None],
) -> None:
    """Build every plan of ``todo`` on ``jobs`` processes (default: CPUs) into ``cache``;
    ``built`` hears of each, in plan order. The first error is raised after the others
    finished, so the layers that did finish go into the cache rather than being left as
    stray files in the store's tmp/."""
    if not todo:
        return
    workers = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    failed: EnvshipError | None = None
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
        futures = {plan.key: pool.submit(build_layer, job(plan)) for plan in todo}
        for plan in todo:
            try:
                layer = futures[plan.key].result()
            except EnvshipError as exc:  # errors pickle with their fields (errors.py)
                failed = failed or exc
                continue
            built(plan, cache.put(plan.key, layer, annotations(plan)))
    if failed is not None:
        raise failed


class _Inline:
    """A stand-in for a one-worker pool: runs each job at submit time, in this process."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[[LayerJob], BuiltLayer], arg: LayerJob) -> _Done:
        try:
            return _Done(fn(arg), None)
        except EnvshipError as exc:
            return _Done(None, exc)


@dataclass(frozen=True, slots=True)
class _Done:
    value: BuiltLayer | None
    error: EnvshipError | None

    def result(self) -> BuiltLayer:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value

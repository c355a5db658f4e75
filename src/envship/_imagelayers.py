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
back as themselves (``EnvshipError`` pickles with its fields). Every partial file of a
build is written in a folder of its own under the store's ``tmp/`` (:class:`WorkDir`),
removed when the build ends however it ends; one left by a build that was killed is
removed by the next build once its lock shows that nobody holds it any more.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from . import _flock
from ._atomic import write_atomic
from ._blobcheck import check_file
from ._bytecode import BytecodeCompiler, Compiler
from ._imageprefix import BaseDir, placed_writer
from ._swap import STALE_AFTER, last_write
from ._wheeltar import Locked, VenvScheme, write_wheel
from .errors import ArtifactError, EnvshipError, ImageError
from .layer import LayerBlob
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
    "WorkDir",
    "build_layers",
    "plan_layers",
    "sweep",
]

# Bumped whenever the bytes a layer gets from the same inputs change, or what a cached
# layer is known to be, so no stale cached layer is ever reused. 2: each wheel is hashed
# against the lock before its layer is built; a layer cached by an earlier envship may
# have been built from a changed store file (a wheel edited and its RECORD rehashed)
# under the lock's hash, so none of those is trusted.
LAYER_FORMAT = 2
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
    """What a worker needs to build one layer (picklable): each wheel with what the
    lock says its bytes are, checked before any of them is used."""

    wheels: tuple[tuple[Path, Locked], ...]
    tmp_dir: Path
    prefix: str
    python: str
    interpreter: str
    mtime: int
    level: int
    compiler: BytecodeCompiler | None
    kept: tuple[BaseDir, ...] = ()  # the base's directories on the way, with their headers


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


# A pool worker's state as its SIGINT handler sees it: whether it is building a layer
# (then the interrupt stops the build, whose writer removes its file), and whether an
# interrupt came (then the jobs already queued to it end at once).
_WORKER = {"busy": False, "interrupted": False}


def _worker_interrupted(signum: int, frame: FrameType | None) -> None:
    _WORKER["interrupted"] = True
    if _WORKER["busy"]:
        raise KeyboardInterrupt
    # Idle in the pool's queue: raising there would kill the worker with a traceback;
    # the pool is being shut down by the interrupted parent anyway.


# prctl(2) option: the signal a process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


def _worker_init(parent: int) -> None:
    signal.signal(signal.SIGINT, _worker_interrupted)
    _die_with(parent)


def _die_with(parent: int) -> None:
    """End this worker when the build process ``parent`` ends, however it ends.

    A worker outliving a build killed with SIGKILL would wait on the pool's queue for
    ever, holding the build's inherited lock, so no later build could sweep its work
    folder. PR_SET_PDEATHSIG (Linux, prctl(2)) has the kernel kill it when its parent
    dies (strictly, the thread that forked it: the one that submitted the build's
    jobs, which outlives the pool); a parent that died before that call is caught by
    the parent pid changing (the worker was reparented). Elsewhere there is no such
    call, and nothing is done.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def build_layer(job: LayerJob) -> BuiltLayer:
    """Worker: one layer from its wheels."""
    if _WORKER["interrupted"]:  # queued before Ctrl-C reached this worker
        raise KeyboardInterrupt
    _WORKER["busy"] = True
    try:
        return _build_layer(job)
    finally:
        _WORKER["busy"] = False


def _build_layer(job: LayerJob) -> BuiltLayer:
    scheme = VenvScheme.for_python(job.prefix, job.python)
    writer = placed_writer(job.tmp_dir, mtime=job.mtime, level=job.level, kept=job.kept)
    # One fresh compiler per layer: its output depends on what it compiled before.
    compiler = Compiler(job.compiler) if job.compiler is not None else None
    try:
        warned: list[str] = []
        for wheel, locked in job.wheels:
            done = write_wheel(
                wheel,
                writer,
                scheme,
                interpreter=job.interpreter,
                compiler=compiler,
                locked=locked,
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
    """``<store>/layers/<key>.json`` -> a layer blob kept in the store's OCI layout.

    A cached blob is checked against its digest before it is reused (:meth:`get`): the
    store's blobs are hard-linked into output layouts, so editing a file of one's own
    output changes the store's copy too, and a damaged blob taken as cached would fail
    every later build. One that fails is a miss: the layer is built again and
    :meth:`put` replaces the damaged file. The check costs no extra hashing: every
    layer is checked before it is written out or pushed anyway, with the same record
    of verified files (``<store>/images/verified``, :func:`envship.imageio.verified_cache`)
    and this process's memory of them, so the check here is the one that hashes and
    the one at the output finds it done (measured: 40 MiB of cached layers, 40 MiB
    hashed per build and write before and after). Only a blob written within the last
    :data:`~envship._blobcheck.SETTLE_NS` is hashed twice: nothing may remember it yet.
    """

    def __init__(self, store: Store, layout: OciLayout) -> None:
        self.dir = store.root / "layers"
        self.layout = layout
        # imageio.verified_cache(store), not imported: imageio imports image, which
        # imports this module.
        self.verified = store.root / "images" / "verified"

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
        try:
            check_file(path, descriptor.digest, descriptor.size, cache=self.verified)
        except (OSError, ArtifactError):  # gone, unreadable or changed: build it again
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
    finished, so the layers that did finish go into the cache. On an interrupt the jobs
    not started are dropped and the running ones stopped (Ctrl-C reaches the workers,
    whose writers remove their files); what they leave is in the caller's work folder."""
    if not todo:
        return
    workers = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    failed: EnvshipError | None = None
    pool: ProcessPoolExecutor | _Inline = (
        ProcessPoolExecutor(
            max_workers=workers,
            # Forked, as WorkDir's lock relies on (a forkserver's workers are not the
            # build's children, and Python 3.14 makes forkserver the default).
            mp_context=multiprocessing.get_context("fork"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )
        if workers > 1
        else _Inline()
    )
    try:
        futures: dict[str, Future[BuiltLayer] | _Done] = {
            plan.key: pool.submit(build_layer, job(plan)) for plan in todo
        }
        for plan in todo:
            try:
                layer = futures[plan.key].result()
            except EnvshipError as exc:  # errors pickle with their fields (errors.py)
                failed = failed or exc
                continue
            built(plan, cache.put(plan.key, layer, annotations(plan)))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if failed is not None:
        raise failed


class _Inline:
    """A stand-in for a one-worker pool: runs each job at submit time, in this process."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None

    def submit(self, fn: Callable[[LayerJob], BuiltLayer], arg: LayerJob, /) -> _Done:
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


class WorkDir:
    """A folder of one build's own under the store's ``tmp/`` for every partial file it
    writes (layer blobs before they join the layout, private wheel copies); removed
    when the build ends, however it ends.

    Its lock file, ``build-<id>.lock`` beside it, is held (flock) while the build runs
    and appears under that name already locked (locked under a temporary name, then
    renamed), so a lock file that can be taken proves its build gone, even one killed
    with SIGKILL; forked pool workers inherit the lock and hold it while they live,
    which is no longer than the build (:func:`_die_with`).
    Entering sweeps what dead builds left (:func:`sweep`).
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._held: tuple[int, Path, Path] | None = None  # lock fd, lock file, folder

    def __enter__(self) -> Path:
        sweep(self.tmp)
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.tmp, prefix=".build-", suffix=".new")
        except OSError as exc:
            raise ImageError(
                f"cannot create a work folder in {self.tmp}: {exc.strerror}",
                hint="check that the store is writable and the disk has room",
            ) from exc
        token = f"build-{os.getpid()}-{secrets.token_hex(4)}"
        lock, folder = self.tmp / f"{token}.lock", self.tmp / token
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a file only this process knows of yet
            os.rename(name, lock)
            folder.mkdir()
        except BaseException:
            os.close(fd)
            Path(name).unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
            raise
        self._held = (fd, lock, folder)
        return folder

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            fd, lock, folder = self._held
            self._held = None
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
            os.close(fd)


def sweep(tmp: Path, *, now: float | None = None) -> list[str]:
    """Remove from ``tmp`` what image builds that are gone left there; the names removed.

    A ``build-<id>`` folder goes when its lock file can be locked (its build is gone);
    without a lock file, and for an older envship's ``.layer-*.partial`` files, when
    nothing in it was written for :data:`STALE_AFTER` seconds. Nothing another running
    build holds is touched.
    """
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return []
    names = {e.name for e in entries}
    removed = []
    for entry in entries:
        name = entry.name
        if name.startswith("build-") and name.endswith(".lock"):
            fd = _flock.acquire(Path(entry.path), wait=False)
            if fd is None:
                continue  # its build is running
            try:
                shutil.rmtree(tmp / name.removesuffix(".lock"), ignore_errors=True)
                Path(entry.path).unlink(missing_ok=True)
            finally:
                os.close(fd)
            removed.append(name)
        elif (
            (name.startswith("build-") and f"{name}.lock" not in names)
            or (name.startswith(".layer-") and name.endswith(".partial"))
            or (name.startswith(".build-") and name.endswith(".new"))
        ) and now - last_write(Path(entry.path)) > STALE_AFTER:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)
            removed.append(name)
    return removed

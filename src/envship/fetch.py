"""Fetch every artifact a lock selects into a verified, content-addressed store.

Each artifact is downloaded to ``partial/<sha256>.part`` under an exclusive
``flock`` on ``partial/<sha256>.lock``, so processes sharing a store (CI jobs, a
cluster's nodes on one volume) never write the same partial file at once; whoever
waits behind the lock finds the artifact committed and reuses it. A finished part is
moved into ``tmp/`` and committed by :meth:`Store.commit`, which checks size and
sha256 and renames atomically. An interrupted fetch leaves only partial files, and
the next run resumes them with HTTP ``Range`` requests.

An artifact already in the store costs one ``stat``: its size is checked against the
lock (:meth:`Store.check`), and one that is damaged is downloaded again and replaces the
damaged file atomically (a *repair*). ``verify=True`` re-hashes every present artifact,
which reads every byte; a warm fetch stays as cheap as a directory listing without it.
It also hashes the separate copies under ``named/`` that installers read (made where hard
links fail) and replaces each damaged one from the verified content file; the result
counts those apart from the artifacts downloaded again.

Sources are checked before any download starts (:mod:`envship._sourcecheck`): a URL
scheme no downloader speaks, or a local ``path`` with no file, is bad input in the lock,
reported with its place.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._diskfull import is_disk_full
from ._flock import acquire
from ._sourcecheck import check_sources
from .errors import ArtifactError, EnvshipError, NetworkError, Problem, StoreError
from .lockfile import Artifact, LockFile
from .store import State, Store, corrupt_source

if TYPE_CHECKING:
    # Imported when something must be downloaded: http.client, ssl and urllib cost
    # more than the whole of a fetch that finds everything in the store.
    from ._http import Credential, HttpClient

__all__ = ["FetchResult", "FetchedArtifact", "fetch"]

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True, slots=True)
class FetchedArtifact:
    artifact: Artifact
    path: Path  # the verified file in the store
    downloaded: bool  # False: it was already in the store (no request was made)
    repaired: bool = False  # downloaded to replace a damaged file in the store
    # Damaged separate copies under named/ replaced from the content file (verify only).
    named_repaired: tuple[Path, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            **self.artifact.to_json(),
            "path": str(self.path),
            "downloaded": self.downloaded,
            "repaired": self.repaired,
            "named_repaired": [str(p) for p in self.named_repaired],
        }


@dataclass(frozen=True, slots=True)
class FetchResult:
    store: Store
    artifacts: tuple[FetchedArtifact, ...]
    downloaded: int
    reused: int
    bytes_downloaded: int  # bytes read from sources in this run (resumed ones excluded)
    repaired: int = 0  # of ``downloaded``: replacing a damaged file found in the store
    # Separate copies under named/ damaged on their own (the content file whole) and
    # replaced from it: verify only, no download, any number per artifact, so apart from
    # ``repaired`` (a repaired content file takes its named copies along, uncounted).
    named_repaired: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "store": str(self.store.root),
            "downloaded": self.downloaded,
            "reused": self.reused,
            "repaired": self.repaired,
            "named_repaired": self.named_repaired,
            "bytes_downloaded": self.bytes_downloaded,
            "artifacts": [a.to_json() for a in self.artifacts],
        }


class _Tally:
    """Thread-safe byte counts for the progress callback (which is called under the lock,
    so a callback that is not thread-safe, like a terminal line, needs no lock of its own).

    A lock need not give sizes (PEP 751 makes ``size`` optional, and an index without
    PEP 700 sizes gives none): the total then grows as each download's length becomes
    known, and the detail says how many are not known yet, so a total that is still a
    lower bound never reads as the whole.
    """

    def __init__(self, done: int, total: int, unknown: int, callback: Progress | None) -> None:
        self._lock = threading.Lock()
        self._base = done
        self._total = total
        self._unknown = unknown
        self._files: dict[str, int] = {}
        self._callback = callback

    def learned_size(self, size: int) -> None:
        with self._lock:
            self._total += size
            self._unknown = max(self._unknown - 1, 0)

    def update(self, key: str, done: int, detail: str) -> None:
        with self._lock:
            self._files[key] = done
            self._emit(detail)

    def report(self, detail: str = "") -> None:
        with self._lock:
            self._emit(detail)

    def _emit(self, detail: str) -> None:
        if self._callback is None:
            return
        if self._unknown:
            detail += f" (sizes of {self._unknown} not known yet)"
        done = self._base + sum(self._files.values())
        self._callback(done, max(self._total, done), detail.strip())


@contextlib.contextmanager
def _artifact_lock(path: Path, cancel: threading.Event) -> Iterator[None]:
    """An exclusive lock on ``path``, whose file is removed on release (see ``_flock``)."""
    # Poll rather than block, so Ctrl-C does not wait for another process's download of
    # this artifact to finish.
    while (fd := acquire(path, wait=False)) is None:
        if cancel.wait(0.05):
            from ._http import Cancelled

            raise Cancelled from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _disk_full(store: Store) -> StoreError:
    # Parallel downloads each keep what they had: partial files can hold the space one
    # download at a time would have needed, so the hint says how much and where.
    held = 0
    with contextlib.suppress(OSError):
        held = sum(p.stat().st_size for p in store.partial_dir.iterdir() if p.is_file())
    partial = (
        f"; partial downloads ({held / (1 << 20):.1f} MiB in {store.partial_dir}) resume, "
        "or free their space if removed (`-j 1` then downloads one at a time)"
        if held
        else ""
    )
    return StoreError(
        f"the disk holding the store {store.root} is full",
        hint="free some space (or pass --store DIR on a larger disk) and re-run: "
        f"finished artifacts are kept{partial}",
    )


class _Oversize(Exception):
    """Raised from the byte callback: the source has more bytes than the lock says."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _size_mismatch(artifact: Artifact, actual: int, source: str | Path) -> ArtifactError:
    return ArtifactError(
        f"{artifact.filename}: size mismatch (at least {actual} bytes, the lock says "
        f"{artifact.size}), refusing it",
        artifact=artifact.filename,
        expected=str(artifact.size),
        actual=f">={actual}",
        hint=corrupt_source(source),  # the store's words for the same mismatch, found later
    )


class _Worker:
    def __init__(
        self,
        store: Store,
        client: HttpClient,
        base: Path,
        tally: _Tally,
        cancel: threading.Event,
        verify: bool,
    ) -> None:
        self.store = store
        self.client = client
        self.base = base
        self.tally = tally
        self.cancel = cancel
        self.verify = verify

    def __call__(self, artifact: Artifact) -> tuple[FetchedArtifact, int]:
        sha = artifact.sha256
        final = self.store.path(sha)  # validates the digest before it names any file
        partial = self.store.partial_dir
        try:
            with _artifact_lock(partial / f"{sha}.lock", self.cancel):
                # Again under the lock: another process may have fetched or repaired it
                # while we waited.
                state = self.store.check(sha, artifact.size, full=self.verify)
                if state == "ok":
                    size = self.store.size(sha, artifact.size)
                    if artifact.size is None:  # counted as not known yet
                        self.tally.learned_size(size)
                    self.tally.update(sha, size, artifact.filename)
                    return FetchedArtifact(artifact, final, downloaded=False), 0
                fetched, received = self._download(artifact, partial / f"{sha}.part")
                if state == "damaged":
                    fetched = FetchedArtifact(artifact, fetched.path, True, repaired=True)
                return fetched, received
        except OSError as exc:
            if is_disk_full(exc):
                raise _disk_full(self.store) from None
            raise StoreError(
                f"cannot write to the store {self.store.root}: {exc.strerror}",
                hint="pass --store DIR or set ENVSHIP_STORE to a writable folder",
            ) from None

    def _download(self, artifact: Artifact, part: Path) -> tuple[FetchedArtifact, int]:
        sha = artifact.sha256
        size = artifact.size
        if size is not None and part.exists() and part.stat().st_size > size:
            part.unlink()  # longer than the file can be: garbage, not a prefix
        learned = False

        def on_bytes(done: int, total: int | None) -> None:
            nonlocal learned
            if size is not None and max(done, total or 0) > size:
                # Stop at once: a lock that says 1 KiB must not make us read 1 GiB, and
                # the progress total must hold. HttpClient lets the exception through
                # (it closes the response and keeps the part file).
                raise _Oversize(max(done, total or 0))
            if size is None and total is not None and not learned:
                learned = True
                self.tally.learned_size(total)
            self.tally.update(sha, done, artifact.filename)

        received = 0
        while True:
            resumed = part.exists() and part.stat().st_size > 0
            # tmp/ is on the store's filesystem, so commit's rename stays atomic; the
            # unique name keeps concurrent writers (or a stale leftover) from colliding.
            staged = self.store.tmp_dir / f"{sha}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            try:
                if not (size is not None and resumed and part.stat().st_size == size):
                    try:
                        received += self.client.download(
                            self._source(artifact), part, progress=on_bytes, cancel=self.cancel
                        ).received
                    except _Oversize as exc:
                        part.unlink(missing_ok=True)
                        raise _size_mismatch(artifact, exc.size, self._source(artifact)) from None
                os.replace(part, staged)
                path = self.store.commit(
                    staged, sha, name=artifact.filename, size=size, source=self._source(artifact)
                )
            except ArtifactError:
                self.tally.update(sha, 0, artifact.filename)
                if resumed:
                    # The kept prefix may be what was wrong (an older run, another file
                    # at that URL back then): it is deleted, so try once from byte 0.
                    continue
                raise
            finally:
                staged.unlink(missing_ok=True)
            return FetchedArtifact(artifact, path, downloaded=True), received

    def _source(self, artifact: Artifact) -> str | Path:
        # check_sources made sure there is one before any download started.
        return artifact.url if artifact.url else self.base / (artifact.path or "")


def fetch(
    lock: LockFile,
    store: Store | str | os.PathLike[str],
    *,
    targets: Sequence[str] | None = None,
    groups: Collection[str] | None = None,
    jobs: int = 8,
    verify: bool = False,
    credentials: Sequence[Credential] | Callable[[], Sequence[Credential]] = (),
    progress: Progress | None = None,
    client: HttpClient | None = None,
) -> FetchResult:
    """Download (or reuse) every artifact ``lock`` selects for ``targets`` and ``groups``.

    A present artifact is reused when its size matches the lock (``verify``: when its
    sha256 does); a damaged one is downloaded again and replaced. Every failure is
    collected and reported in one error; artifacts that did verify stay in the store.
    ``credentials`` may be a callable, called only when something must be downloaded
    (finding them can cost more than a fetch that downloads nothing). ``client``
    overrides ``credentials`` (and sets retries/timeouts). ``store`` may be its folder.
    """
    if not isinstance(store, Store):
        store = Store.at(Path(store))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number of at least 1, not {jobs!r}")
    artifacts = lock.artifacts(targets, groups=groups)
    store.ensure()
    states, named = _states(store, artifacts, verify, jobs)
    todo = [a for a in artifacts if states[a.sha256] != "ok"]
    check_sources(lock, todo)
    present = sum(store.size(a.sha256, a.size) for a in artifacts if states[a.sha256] == "ok")
    tally = _Tally(
        present,
        present + sum(a.size or 0 for a in todo),
        sum(1 for a in todo if a.size is None),
        progress,
    )
    # Every progress line names what it is about (this one: the plan).
    n = len(artifacts)
    tally.report(f"{len(todo)} of {n} artifacts to download" if todo else f"all {n} in the store")
    cancel = threading.Event()
    results: dict[str, tuple[FetchedArtifact, int]] = {}
    failures: list[tuple[Artifact, EnvshipError]] = []
    if todo:
        if client is None:
            from ._http import HttpClient

            found = credentials() if callable(credentials) else credentials
            client = HttpClient(credentials=found)
        worker = _Worker(store, client, lock.path.parent, tally, cancel, verify)
        pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo))))
        try:
            futures: dict[Future[tuple[FetchedArtifact, int]], Artifact] = {
                pool.submit(worker, a): a for a in todo
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    artifact = futures[future]
                    try:
                        results[artifact.sha256] = future.result()
                    except StoreError as exc:
                        if not isinstance(exc, ArtifactError):
                            # A full disk or unwritable store fails every artifact alike:
                            # stop now and say it once, and never let it hide damage
                            # found in the store (exit 4, each damaged file named).
                            cancel.set()
                            raise _unreplaced(store, todo, states, exc) or exc from None
                        failures.append((artifact, exc))
                    except EnvshipError as exc:
                        failures.append((artifact, exc))
        except BaseException:
            # Ctrl-C (or a store failure): stop workers at their next chunk, keep partials,
            # and end the reads that wait on a server, which no chunk would end soon.
            cancel.set()
            client.abort()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            client.resume()  # every download has ended: the client may serve another fetch
    if failures:
        raise _combine(failures, len(artifacts))
    fetched = []
    for a in artifacts:
        if a.sha256 in results:
            fetched.append(results[a.sha256][0])
        else:
            path = store.path(a.sha256)
            fixed = named.get(a.sha256, ())
            fetched.append(FetchedArtifact(a, path, downloaded=False, named_repaired=fixed))
    downloaded = sum(1 for f in fetched if f.downloaded)
    return FetchResult(
        store=store,
        artifacts=tuple(fetched),
        downloaded=downloaded,
        reused=len(fetched) - downloaded,
        bytes_downloaded=sum(r[1] for r in results.values()),
        repaired=sum(1 for f in fetched if f.repaired),
        # An artifact the lock lists twice is checked twice: each copy counts once.
        named_repaired=len({p for paths in named.values() for p in paths}),
    )


def _states(
    store: Store, artifacts: Sequence[Artifact], verify: bool, jobs: int
) -> tuple[dict[str, State], dict[str, tuple[Path, ...]]]:
    """What the store holds of each artifact: a stat each, or a hash each with ``verify``,
    which also replaces damaged separate copies under ``named/`` (Store.repair_named);
    and, by sha256, the copies it replaced."""

    def state(a: Artifact) -> tuple[State, tuple[Path, ...]]:
        found = store.check(a.sha256, a.size, full=verify)
        if verify and found == "ok":
            try:
                return found, store.repair_named(a.sha256)  # uv reads those, not the content
            except StoreError as exc:
                # Damage found and not repaired (a store this user cannot write) is an
                # integrity failure still: installs read the named copy.
                raise ArtifactError(
                    f"{a.filename}: {exc.message}",
                    artifact=a.filename,
                    expected=f"sha256:{a.sha256}",
                    actual="a damaged copy under named/",
                    hint=exc.hint,
                ) from None
        return found, ()

    if not verify or len(artifacts) < 2:
        found = [state(a) for a in artifacts]
    else:
        # hashlib releases the GIL on large buffers, so threads hash on several cores.
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(artifacts)))) as pool:
            found = list(pool.map(state, artifacts))
    states: dict[str, State] = {}
    named: dict[str, tuple[Path, ...]] = {}
    for a, (s, fixed) in zip(artifacts, found, strict=True):
        states[a.sha256] = s
        if fixed:
            named[a.sha256] = tuple(sorted({*named.get(a.sha256, ()), *fixed}))
    return states, named


def _unreplaced(
    store: Store, todo: Sequence[Artifact], states: dict[str, State], exc: StoreError
) -> ArtifactError | None:
    """The damaged artifacts a failure to write the store (no permission, a full disk)
    leaves in place, as one integrity error (exit 4) naming each, with why they could not
    be replaced; None when none of ``todo`` was damaged, only missing."""
    damaged = [
        a for a in dict((a.sha256, a) for a in todo).values() if states[a.sha256] == "damaged"
    ]
    if not damaged:
        return None
    names = ", ".join(a.filename for a in damaged)
    error = ArtifactError(
        f"{names}: damaged in the store, and not replaced: {exc.message}"
        if len(damaged) == 1
        else f"{len(damaged)} artifacts are damaged in the store, and not replaced: {exc.message}",
        artifact=names,
        expected=f"sha256:{damaged[0].sha256}" if len(damaged) == 1 else "",
        actual="damaged in the store",
        hint="a user who can write the store runs the same `envship fetch --verify` to replace "
        "them (or fetch into a store you can write: --store DIR); until then installs from this "
        "store refuse them",
    )
    error.problems = tuple(
        Problem(
            a.filename,
            f"{store.path(a.sha256)}: its bytes do not match the lock's sha256 {a.sha256}",
        )
        for a in damaged
    )
    return error


def _combine(failures: list[tuple[Artifact, EnvshipError]], total: int) -> EnvshipError:
    """One error for all failures; its class (hence exit code) is the gravest one's."""
    failures.sort(key=lambda f: f[0].filename)
    # The problem's place is the file name already; do not say it twice.
    problems = [Problem(a.filename, e.message.removeprefix(f"{a.filename}: ")) for a, e in failures]
    integrity = [e for _, e in failures if isinstance(e, ArtifactError)]
    network = [e for _, e in failures if isinstance(e, NetworkError)]
    kept = total - len(failures)
    message = (
        failures[0][1].message
        if len(failures) == 1
        else f"{len(failures)} of {total} artifacts could not be fetched"
    )
    error: EnvshipError
    if integrity:
        first = integrity[0]
        error = ArtifactError(
            message,
            artifact=", ".join(e.artifact for e in integrity),
            expected=first.expected if len(integrity) == 1 else "",
            actual=first.actual if len(integrity) == 1 else "",
            hint=first.hint,
        )
    elif network:
        error = NetworkError(message, url=network[0].url, hint=network[0].hint)
    else:
        error = EnvshipError(message, hint=failures[0][1].hint)
    if kept:
        extra = f"the {kept} other artifacts are verified and kept in the store"
        error.hint = f"{error.hint}; {extra}" if error.hint else extra
    # The specific error classes take no problems= argument; attach the list afterwards.
    error.problems = tuple(problems)
    return error

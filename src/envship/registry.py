"""A client of the OCI distribution API: pull manifests and blobs, push them back.

Follows the distribution spec (opencontainers/distribution-spec, spec.md): blobs are
HEADed before upload and skipped when present, mounted across repositories when asked,
uploaded as one streamed ``PUT`` or, above ``chunk_size``, as ``PATCH`` chunks with
``Content-Range`` that resume from the registry's ``Range`` after a failure
(:mod:`envship._registry_upload`); manifests are ``PUT`` last. Nothing reads a whole blob
into memory: bodies are streamed in :data:`IO_BLOCK` pieces. Pulls are verified: a
manifest against the digest it was asked by and against ``Docker-Content-Digest``; a blob
by size and sha256 before it is renamed into place.

Transport (:mod:`envship._registry_http`) is :mod:`envship._http`'s opener (proxies, CA
bundle, DNS cache); connection errors, 429 and 5xx are retried with its
:class:`~envship._http.RetryPolicy`. Plain HTTP is used only for loopback hosts unless
the caller allows it, and that check is made before any connection. Auth lives in
:mod:`envship._registry_auth`.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.client
import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal

from ._blobcheck import open_to_all
from ._denied import unwritable
from ._http import RetryPolicy, _describe
from ._registry_http import IO_BLOCK, Channel, Response, Transient
from ._registry_upload import Source, head_blob, start_upload, upload
from .errors import (
    ArtifactError,
    EnvshipError,
    ImageError,
    RegistryAuthError,
    RegistryError,
)
from .oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    check_digest,
    check_repository,
    check_tag,
    sha256_digest,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "IO_BLOCK",
    "MANIFEST_TYPES",
    "BlobProgress",
    "PushStatus",
    "RegistryClient",
    "TransferStats",
]

MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
DEFAULT_CHUNK_SIZE = 16 << 20  # blobs above this go up as PATCH chunks of this size
MANIFEST_LIMIT = 4 << 20  # spec: registries SHOULD accept manifests of at least 4 MiB

PushStatus = Literal["exists", "mounted", "uploaded"]
_Action = Literal["upload", "download", "exists", "mounted"]


@dataclass(frozen=True, slots=True)
class BlobProgress:
    """One progress report: ``action`` is "upload" or "download" while bytes move
    (``done`` may go back after a retry), "exists" or "mounted" when none had to."""

    action: _Action
    repository: str
    digest: str
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What a client moved so far; ``bytes_uploaded`` counts blob bytes put on the wire,
    retransmissions included, and excludes manifests."""

    blobs_existing: int = 0
    blobs_mounted: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    manifests_pushed: int = 0
    blobs_fetched: int = 0
    bytes_fetched: int = 0


def _check_reference(reference: str) -> str:
    if reference.startswith("sha256:"):
        return check_digest(reference, where="reference")
    return check_tag(reference)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


class RegistryClient:
    """A client of one registry. Thread-safe: one client may serve parallel pushes.

    ``registry`` is ``host[:port]``, optionally with ``https://`` or ``http://``.
    Without a scheme it is HTTPS; a loopback host, or any host when ``insecure`` is
    set, falls back to plain HTTP when the TLS handshake fails, and ``insecure`` also
    accepts certificates that do not verify.
    """

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        docker_config: Path | None = None,
        retry: RetryPolicy | None = None,
        progress: Callable[[BlobProgress], None] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float = 60.0,
        seed: int | None = None,
    ) -> None:
        text = registry.strip().rstrip("/")
        scheme, sep, rest = text.partition("://")
        scheme = scheme.lower() if sep else ""
        host = (rest if sep else text).lower()
        if not host or "/" in host or scheme not in ("", "http", "https"):
            raise ImageError(f"not a registry host: {registry!r}", hint="expected host[:port]")
        # Docker Hub's names for humans; its API answers on one host only.
        host = "registry-1.docker.io" if host in ("docker.io", "index.docker.io") else host
        self.registry = host
        self.insecure = insecure
        self.chunk_size = max(1, chunk_size)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._progress = progress
        self._lock = threading.Lock()
        self._stats = TransferStats()
        self._http = Channel(
            host,
            scheme,
            insecure=insecure,
            retry=self.retry,
            timeout=timeout,
            seed=seed,
            docker_config=docker_config,
        )
        self.auth = self._http.auth

    # ---- the public API -------------------------------------------------------------

    def base_url(self) -> str:
        """``scheme://host[:port]`` of the registry, chosen at first use."""
        return self._http.base_url()

    def stats(self) -> TransferStats:
        with self._lock:
            return self._stats

    def get_manifest(
        self, repository: str, reference: str, accept: Sequence[str] = MANIFEST_TYPES
    ) -> tuple[Descriptor, bytes]:
        """The manifest (or index) ``reference`` names, verified, and its descriptor."""
        repo, ref = check_repository(repository), _check_reference(reference)
        url = f"{self._http.base_url()}/v2/{repo}/manifests/{ref}"
        what = f"get manifest {self.registry}/{repo}:{ref}"
        headers = {"Accept": ", ".join(accept)}

        def attempt() -> tuple[Response, bytes]:
            with self._http.exchange("GET", url, self._pull(repo), headers) as resp:
                self._http.expect(resp, (200,), what)
                try:
                    data = resp.read(MANIFEST_LIMIT + 1)
                except (OSError, http.client.HTTPException) as exc:
                    raise Transient(f"connection lost: {_describe(exc)}") from None
                return resp, data

        resp, data = self._http.retrying(what, url, attempt)
        if len(data) > MANIFEST_LIMIT:
            raise RegistryError(
                f"{what}: the manifest is larger than {MANIFEST_LIMIT} bytes",
                url=url,
                registry=self.registry,
            )
        digest = sha256_digest(data)
        claimed = resp.headers.get("Docker-Content-Digest", "")
        for expected, why in ((ref, "the digest it was asked by"), (claimed, "the registry's")):
            # A digest of another algorithm cannot be checked here; the pinned one must be.
            if expected.startswith("sha256:") and expected != digest:
                raise ArtifactError(
                    f"manifest {self.registry}/{repo}@{expected} does not match {why} digest",
                    artifact=f"{self.registry}/{repo}:{ref}",
                    expected=expected,
                    actual=digest,
                    hint="the registry's copy is corrupt or was changed on the way",
                )
        media_type = _media_type(resp.headers.get("Content-Type"))
        if media_type not in accept:
            try:
                parsed = json.loads(data)
                media_type = str(parsed.get("mediaType") or media_type)
            except (ValueError, AttributeError):
                pass
        return Descriptor(media_type, digest, len(data)), data

    def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """The descriptor of ``reference`` without its bytes, None when it is absent."""
        repo, ref = check_repository(repository), _check_reference(reference)
        url = f"{self._http.base_url()}/v2/{repo}/manifests/{ref}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}

        def attempt() -> Descriptor | None:
            with self._http.exchange("HEAD", url, self._pull(repo), headers) as resp:
                self._http.expect(resp, (200, 404), f"check manifest {self.registry}/{repo}:{ref}")
                if resp.status == 404:
                    return None
                digest = resp.headers.get("Docker-Content-Digest", "")
                size = resp.headers.get("Content-Length", "")
            if not digest.startswith("sha256:") or not size.isdigit():
                return self.get_manifest(repo, ref)[0]
            return Descriptor(_media_type(resp.headers.get("Content-Type")), digest, int(size))

        return self._http.retrying(f"check manifest {repo}:{ref}", url, attempt)

    def fetch_blob(self, repository: str, descriptor: Descriptor, dest: Path) -> Path:
        """Stream a blob into ``dest`` (atomically, verified); return ``dest``."""
        repo, digest = check_repository(repository), check_digest(descriptor.digest)
        url = f"{self._http.base_url()}/v2/{repo}/blobs/{digest}"
        name = f"{self.registry}/{repo}@{digest}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(
                dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"
            )
        except OSError as exc:
            raise _unwritable(dest.parent, exc) from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "r+b") as out:
                open_to_all(out.fileno(), tmp)  # not mkstemp's 0600: a shared store's blob
                hasher = self._download(url, repo, descriptor, out)
                if out.tell() != descriptor.size:
                    raise ArtifactError(
                        f"blob {name} has {out.tell()} bytes, not the {descriptor.size} "
                        "its descriptor says",
                        artifact=name,
                        expected=f"{descriptor.size} bytes",
                        actual=f"{out.tell()} bytes",
                        hint="the registry's copy is corrupt; nothing was written",
                    )
                actual = "sha256:" + hasher.hexdigest()
                if actual != digest:
                    raise ArtifactError(
                        f"blob {name} does not match its digest",
                        artifact=name,
                        expected=digest,
                        actual=actual,
                        hint="the registry's copy is corrupt or was changed; nothing was written",
                    )
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _REFUSED:
                raise _unwritable(dest.parent, exc) from None
            raise ImageError(f"cannot write {dest}: {exc.strerror or exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def blob_exists(self, repository: str, digest: str) -> bool:
        repo = check_repository(repository)
        return head_blob(self._http, repo, check_digest(digest), self._pull(repo))

    def push_blob(
        self,
        repository: str,
        descriptor: Descriptor,
        open_blob: Callable[[], BinaryIO],
        *,
        mount_from: str | None = None,
    ) -> PushStatus:
        """Make the blob present in ``repository``: skip it if there, mount it from
        ``mount_from`` if the registry agrees, else upload it from ``open_blob()``."""
        repo, digest = check_repository(repository), check_digest(descriptor.digest)
        source = check_repository(mount_from) if mount_from and mount_from != repo else None
        scopes = self._push(repo, source)
        if head_blob(self._http, repo, digest, scopes):
            self._count(blobs_existing=1)
            self._report("exists", repo, digest, descriptor.size, descriptor.size)
            return "exists"
        location: str | None = None
        min_chunk = 0
        if source is not None:
            try:
                status, location, min_chunk = start_upload(
                    self._http, repo, scopes, (digest, source)
                )
            except RegistryAuthError:
                # No read access to the source: a plain upload may still be allowed.
                scopes = self._push(repo)
            else:
                if status == 201:
                    self._count(blobs_mounted=1)
                    self._report("mounted", repo, digest, descriptor.size, descriptor.size)
                    return "mounted"
        self._upload(repo, descriptor, open_blob, scopes, location, min_chunk)
        self._count(blobs_uploaded=1)
        return "uploaded"

    def put_manifest(self, repository: str, reference: str, media_type: str, data: bytes) -> str:
        """Store a manifest under a tag (or its digest); return its digest."""
        repo, ref = check_repository(repository), _check_reference(reference)
        digest = sha256_digest(data)
        if ref.startswith("sha256:") and ref != digest:
            raise ImageError(f"manifest bytes have digest {digest}, not {ref}")
        url = f"{self._http.base_url()}/v2/{repo}/manifests/{ref}"
        what = f"put manifest {self.registry}/{repo}:{ref}"

        def attempt() -> None:
            headers = {"Content-Type": media_type}
            with self._http.exchange("PUT", url, self._push(repo), headers, data) as resp:
                self._http.expect(resp, (200, 201, 202, 204), what)

        self._http.retrying(what, url, attempt)
        self._count(manifests_pushed=1)
        return digest

    # ---- blobs ----------------------------------------------------------------------

    def _download(
        self, url: str, repo: str, descriptor: Descriptor, out: IO[bytes]
    ) -> hashlib._Hash:
        hasher = hashlib.sha256()
        what = f"fetch blob {self.registry}/{repo}@{descriptor.digest}"

        def attempt() -> None:
            nonlocal hasher
            have = out.tell()
            headers = {"Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            with self._http.exchange("GET", url, self._pull(repo), headers) as resp:
                self._http.expect(resp, (200, 206), what)
                start = 0
                if resp.status == 206:
                    given = resp.headers.get("Content-Range", "")
                    start = int(given[6:].split("-", 1)[0]) if given[6:7].isdigit() else -1
                if start != have:  # a 200 (Range ignored) or another range: start over
                    out.seek(0)
                    out.truncate()
                    hasher = hashlib.sha256()
                    if start != 0:
                        raise Transient(f"unexpected Content-Range {given!r}")
                length = resp.headers.get("Content-Length", "")
                expected = int(length) if length.isdigit() else None
                got = 0
                while True:
                    try:
                        block = resp.read(IO_BLOCK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise Transient(f"connection lost: {_describe(exc)}") from None
                    if not block:
                        break
                    if out.tell() + len(block) > descriptor.size:
                        # More bytes than promised: a wrong blob, however it ends.
                        raise ArtifactError(
                            f"blob {self.registry}/{repo}@{descriptor.digest} is larger "
                            f"than the {descriptor.size} bytes its descriptor says",
                            artifact=f"{self.registry}/{repo}@{descriptor.digest}",
                            expected=f"{descriptor.size} bytes",
                            actual=f"more than {descriptor.size} bytes",
                        )
                    out.write(block)
                    hasher.update(block)
                    got += len(block)
                    self._count(bytes_fetched=len(block))
                    self._report("download", repo, descriptor.digest, out.tell(), descriptor.size)
                if expected is not None and got < expected:
                    raise Transient(f"connection closed after {got} of {expected} bytes")

        self._http.retrying(what, url, attempt)
        self._count(blobs_fetched=1)
        return hasher

    def _upload(
        self,
        repo: str,
        descriptor: Descriptor,
        open_blob: Callable[[], BinaryIO],
        scopes: Sequence[str],
        location: str | None,
        min_chunk: int,
    ) -> None:
        digest = descriptor.digest

        def sent(n: int, position: int) -> None:
            self._count(bytes_uploaded=n)
            self._report("upload", repo, digest, position, descriptor.size)

        source = Source(open_blob, sent)
        try:
            upload(
                self._http,
                repo,
                descriptor,
                source,
                scopes,
                location=location,
                min_chunk=min_chunk,
                chunk_size=self.chunk_size,
            )
        finally:
            source.close()

    # ---- scopes and bookkeeping ---------------------------------------------------------

    def _pull(self, repo: str) -> tuple[str, ...]:
        return (f"repository:{repo}:pull",)

    def _push(self, repo: str, source: str | None = None) -> tuple[str, ...]:
        scopes = [f"repository:{repo}:pull,push"]
        if source:
            scopes.append(f"repository:{source}:pull")
        return tuple(scopes)

    def _count(self, **amounts: int) -> None:
        with self._lock:
            fields = {k: getattr(self._stats, k) + v for k, v in amounts.items()}
            self._stats = dataclasses.replace(self._stats, **fields)

    def _report(self, action: _Action, repo: str, digest: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(BlobProgress(action, repo, digest, done, total))


# Refusals of the place itself, as opposed to a failing disk: said with whose it is.
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _unwritable(folder: Path, exc: OSError) -> EnvshipError:
    """A blob that cannot be written into ``folder``: a refusal says whose the folder
    is and the remedy, as the store does (pulls go to a store's image cache)."""
    if exc.errno not in _REFUSED:
        return ImageError(f"cannot write {folder}: {exc.strerror or exc}")
    return unwritable(
        str(folder),
        folder,
        "ask its owner for write access (a store shared by a group: chmod 2775 and the "
        "same group for every user), or pass --store DIR or set ENVSHIP_STORE to a folder "
        "you can write",
    )

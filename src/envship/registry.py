"""A client of the OCI distribution API: pull manifests and blobs, push them back.

Follows the distribution spec (opencontainers/distribution-spec, spec.md): blobs are
HEADed before upload and skipped when present, mounted across repositories when asked,
uploaded as one streamed ``PUT`` or, above ``chunk_size``, as ``PATCH`` chunks with
``Content-Range`` that resume from the registry's ``Range`` after a failure; manifests
are ``PUT`` last. Nothing reads a whole blob into memory: bodies are streamed in
:data:`IO_BLOCK` pieces. Pulls are verified: a manifest against the digest it was asked
by and against ``Docker-Content-Digest``; a blob by size and sha256 before it is renamed
into place.

Transport is :mod:`envship._http`'s opener (proxies, CA bundle, DNS cache); connection
errors, 429 and 5xx are retried with its :class:`~envship._http.RetryPolicy`. Plain
HTTP is used only for loopback hosts unless the caller allows it, and that check is
made before any connection. Auth lives in :mod:`envship._registry_auth`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import ipaddress
import json
import os
import random
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from functools import partial
from pathlib import Path
from typing import IO, BinaryIO, Literal, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from ._http import RetryPolicy, _describe, make_opener, redact
from ._registry_auth import Authenticator, docker_config_file, parse_challenges
from .errors import ArtifactError, ImageError, RegistryAuthError, RegistryError
from .oci import (
    _REPOSITORY,
    _TAG,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    check_digest,
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
IO_BLOCK = 1 << 20  # the most bytes of a blob held at once
DEFAULT_CHUNK_SIZE = 16 << 20  # blobs above this go up as PATCH chunks of this size
MANIFEST_LIMIT = 4 << 20  # spec: registries SHOULD accept manifests of at least 4 MiB
_OCTET = "application/octet-stream"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_NETWORK_HINT = "check that the registry is up and reachable, and the proxy settings"
_INVALID_CONTENT = frozenset({"DIGEST_INVALID", "SIZE_INVALID", "BLOB_UPLOAD_INVALID"})

PushStatus = Literal["exists", "mounted", "uploaded"]
_Action = Literal["upload", "download", "exists", "mounted"]
T = TypeVar("T")


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


class _Transient(Exception):
    """One attempt failed in a way a later attempt may not."""

    def __init__(self, message: str, status: int | None = None, after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.after = after  # Retry-After, seconds


class _SessionLost(Exception):
    """The upload session is gone or unusable: start a new one."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by the client, which decides where credentials go."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class _Response:
    """A response, or an HTTP error (which urllib raises), read the same way."""

    def __init__(self, status: int, headers: Message, body: IO[bytes], url: str) -> None:
        self.status = status
        self.headers = headers
        self.url = url
        self._body = body

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size)

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Body = bytes | Iterator[bytes]


class _Source:
    """A blob's bytes, streamed from ``open_blob`` handles at any offset."""

    def __init__(
        self, open_blob: Callable[[], BinaryIO], on_bytes: Callable[[int, int], None]
    ) -> None:
        self._open = open_blob
        self._on_bytes = on_bytes
        self._file: BinaryIO | None = None
        self._pos = 0

    def stream(self, offset: int, length: int, digest: str) -> Iterator[bytes]:
        f = self._at(offset)
        left = length
        while left:
            block = f.read(min(IO_BLOCK, left))
            if not block:
                self._pos = -1
                raise ArtifactError(
                    f"blob {digest} ended after {offset + length - left} bytes, "
                    f"short of its descriptor's {offset + length}",
                    artifact=digest,
                    expected=f"at least {offset + length} bytes",
                    actual=f"{offset + length - left} bytes",
                )
            left -= len(block)
            self._pos += len(block)
            self._on_bytes(len(block), self._pos)
            yield block

    def _at(self, offset: int) -> BinaryIO:
        if self._file is not None and self._pos == offset:
            return self._file
        if self._file is not None and self._file.seekable():
            self._file.seek(offset)
        else:
            self.close()
            self._file = self._open()
            skip = offset
            while skip:  # a pipe: read up to the offset
                got = len(self._file.read(min(IO_BLOCK, skip)))
                if not got:
                    break
                skip -= got
        self._pos = offset
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _loopback(host: str) -> bool:
    name = (urlsplit("//" + host).hostname or "").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _check_repository(name: str) -> str:
    if not _REPOSITORY.match(name):
        raise ImageError(
            f"invalid repository name {name!r}",
            hint="repository names are lowercase letters, digits and . _ - separated by /",
        )
    return name


def _check_reference(reference: str) -> str:
    if reference.startswith("sha256:"):
        return check_digest(reference, where="reference")
    if not _TAG.match(reference):
        raise ImageError(f"invalid tag {reference!r}")
    return reference


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + "digest=" + quote(digest, safe="")


def _range_end(value: str | None) -> int | None:
    """The next offset an upload's ``Range: [bytes=]0-<last>`` asks for."""
    if not value:
        return None
    text = value.strip().removeprefix("bytes=")
    first, _, last = text.partition("-")
    if not (first.isdigit() and last.isdigit()):
        return None
    # "0-0" is what the spec's registries say for an empty upload, too.
    return int(last) + 1 if int(last) > 0 else 0


def _retry_after(headers: Message) -> float:
    value = headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else 0.0


def _oci_errors(data: bytes) -> tuple[frozenset[str], str]:
    """The codes and messages of a distribution error body (spec: "Error Codes")."""
    try:
        errors = json.loads(data)["errors"]
        codes = [str(e.get("code", "")) for e in errors]
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)
        return frozenset(codes), text
    except (ValueError, KeyError, TypeError, AttributeError):
        return frozenset(), ""


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
        self._plain_ok = insecure or _loopback(host)
        if scheme == "http":
            self._allow_url(f"http://{host}/v2/")
        self._schemes = [scheme] if scheme else ["https", "http"] if self._plain_ok else ["https"]
        self._base: str | None = None
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._stats = TransferStats()
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._opener = make_opener(context, _NoRedirect())
        self.auth = Authenticator(
            host, docker_config_file(docker_config), self._token_transport, self._allow_url
        )

    # ---- the public API -------------------------------------------------------------

    def base_url(self) -> str:
        """``scheme://host[:port]`` of the registry, chosen at first use."""
        return self._url()

    def stats(self) -> TransferStats:
        with self._lock:
            return self._stats

    def get_manifest(
        self, repository: str, reference: str, accept: Sequence[str] = MANIFEST_TYPES
    ) -> tuple[Descriptor, bytes]:
        """The manifest (or index) ``reference`` names, verified, and its descriptor."""
        repo, ref = _check_repository(repository), _check_reference(reference)
        url = f"{self._url()}/v2/{repo}/manifests/{ref}"
        what = f"get manifest {self.registry}/{repo}:{ref}"
        headers = {"Accept": ", ".join(accept)}

        def attempt() -> tuple[_Response, bytes]:
            with self._exchange("GET", url, self._pull(repo), headers) as resp:
                self._expect(resp, (200,), what)
                try:
                    data = resp.read(MANIFEST_LIMIT + 1)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(f"connection lost: {_describe(exc)}") from None
                return resp, data

        resp, data = self._retrying(what, url, attempt)
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
        repo, ref = _check_repository(repository), _check_reference(reference)
        url = f"{self._url()}/v2/{repo}/manifests/{ref}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}

        def attempt() -> Descriptor | None:
            with self._exchange("HEAD", url, self._pull(repo), headers) as resp:
                self._expect(resp, (200, 404), f"check manifest {self.registry}/{repo}:{ref}")
                if resp.status == 404:
                    return None
                digest = resp.headers.get("Docker-Content-Digest", "")
                size = resp.headers.get("Content-Length", "")
            if not digest.startswith("sha256:") or not size.isdigit():
                return self.get_manifest(repo, ref)[0]
            return Descriptor(_media_type(resp.headers.get("Content-Type")), digest, int(size))

        return self._retrying(f"check manifest {repo}:{ref}", url, attempt)

    def fetch_blob(self, repository: str, descriptor: Descriptor, dest: Path) -> Path:
        """Stream a blob into ``dest`` (atomically, verified); return ``dest``."""
        repo, digest = _check_repository(repository), check_digest(descriptor.digest)
        url = f"{self._url()}/v2/{repo}/blobs/{digest}"
        name = f"{self.registry}/{repo}@{digest}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(
                dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"
            )
        except OSError as exc:
            raise ImageError(f"cannot write {dest.parent}: {exc.strerror}") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "r+b") as out:
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
            raise ImageError(f"cannot write {dest}: {exc.strerror or exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def blob_exists(self, repository: str, digest: str) -> bool:
        repo = _check_repository(repository)
        return self._head_blob(repo, check_digest(digest), self._pull(repo))

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
        repo, digest = _check_repository(repository), check_digest(descriptor.digest)
        source = _check_repository(mount_from) if mount_from and mount_from != repo else None
        scopes = self._push(repo, source)
        if self._head_blob(repo, digest, scopes):
            self._count(blobs_existing=1)
            self._report("exists", repo, digest, descriptor.size, descriptor.size)
            return "exists"
        location: str | None = None
        min_chunk = 0
        if source is not None:
            try:
                status, location, min_chunk = self._start_upload(repo, scopes, (digest, source))
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
        repo, ref = _check_repository(repository), _check_reference(reference)
        digest = sha256_digest(data)
        if ref.startswith("sha256:") and ref != digest:
            raise ImageError(f"manifest bytes have digest {digest}, not {ref}")
        url = f"{self._url()}/v2/{repo}/manifests/{ref}"
        what = f"put manifest {self.registry}/{repo}:{ref}"

        def attempt() -> None:
            headers = {"Content-Type": media_type}
            with self._exchange("PUT", url, self._push(repo), headers, data) as resp:
                self._expect(resp, (200, 201, 202, 204), what)

        self._retrying(what, url, attempt)
        self._count(manifests_pushed=1)
        return digest

    # ---- blobs ----------------------------------------------------------------------

    def _head_blob(self, repo: str, digest: str, scopes: Sequence[str]) -> bool:
        url = f"{self._url()}/v2/{repo}/blobs/{digest}"

        def attempt() -> bool:
            with self._exchange("HEAD", url, scopes) as resp:
                self._expect(resp, (200, 404), f"check blob {self.registry}/{repo}@{digest}")
                return resp.status == 200

        return self._retrying(f"check blob {repo}@{digest}", url, attempt)

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
            with self._exchange("GET", url, self._pull(repo), headers) as resp:
                self._expect(resp, (200, 206), what)
                start = 0
                if resp.status == 206:
                    given = resp.headers.get("Content-Range", "")
                    start = int(given[6:].split("-", 1)[0]) if given[6:7].isdigit() else -1
                if start != have:  # a 200 (Range ignored) or another range: start over
                    out.seek(0)
                    out.truncate()
                    hasher = hashlib.sha256()
                    if start != 0:
                        raise _Transient(f"unexpected Content-Range {given!r}")
                length = resp.headers.get("Content-Length", "")
                expected = int(length) if length.isdigit() else None
                got = 0
                while True:
                    try:
                        block = resp.read(IO_BLOCK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Transient(f"connection lost: {_describe(exc)}") from None
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
                    raise _Transient(f"connection closed after {got} of {expected} bytes")

        self._retrying(what, url, attempt)
        self._count(blobs_fetched=1)
        return hasher

    def _start_upload(
        self, repo: str, scopes: Sequence[str], mount: tuple[str, str] | None = None
    ) -> tuple[int, str, int]:
        """POST an upload (or a mount): (status, upload URL, the registry's min chunk)."""
        url = f"{self._url()}/v2/{repo}/blobs/uploads/"
        if mount is not None:
            url += f"?mount={quote(mount[0], safe='')}&from={quote(mount[1], safe='/')}"
        what = f"start an upload to {self.registry}/{repo}"

        def attempt() -> tuple[int, str, int]:
            with self._exchange("POST", url, scopes, {"Content-Type": _OCTET}, b"") as resp:
                self._expect(resp, (201, 202), what)
                if resp.status == 201:
                    return 201, "", 0
                location = resp.headers.get("Location")
                if not location:
                    raise RegistryError(
                        f"{what}: the registry gave no upload Location",
                        url=url,
                        registry=self.registry,
                        status=resp.status,
                    )
                minimum = resp.headers.get("OCI-Chunk-Min-Length", "")
                return 202, urljoin(resp.url, location), int(minimum) if minimum.isdigit() else 0

        return self._retrying(what, url, attempt)

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

        source = _Source(open_blob, sent)
        restarts = 0
        try:
            while True:
                if location is None:
                    _, location, min_chunk = self._start_upload(repo, scopes)
                try:
                    chunk = max(self.chunk_size, min_chunk)
                    if descriptor.size <= chunk:
                        self._put_whole(location, descriptor, source, scopes)
                    else:
                        self._put_chunks(repo, location, descriptor, source, scopes, chunk)
                    return
                except _SessionLost as exc:
                    restarts += 1
                    if restarts >= self.retry.attempts:
                        raise RegistryError(
                            f"upload of blob {digest} to {self.registry}/{repo} failed: "
                            f"{exc} (after {restarts} attempts)",
                            url=redact(location),
                            registry=self.registry,
                            hint=_NETWORK_HINT,
                        ) from None
                    self._pause(restarts - 1, 0.0)
                    location = None
        finally:
            source.close()

    def _put_whole(
        self, location: str, descriptor: Descriptor, source: _Source, scopes: Sequence[str]
    ) -> None:
        """A monolithic upload: one streamed PUT with the digest."""
        headers = {"Content-Type": _OCTET, "Content-Length": str(descriptor.size)}
        what = f"upload blob {descriptor.digest}"
        try:
            resp = self._exchange(
                "PUT",
                _with_digest(location, descriptor.digest),
                scopes,
                headers,
                lambda: source.stream(0, descriptor.size, descriptor.digest),
            )
        except _Transient as exc:
            # The session may hold part of the body now; only a new one is clean.
            raise _SessionLost(str(exc)) from None
        with resp:
            if resp.status == 404:
                raise _SessionLost("the registry forgot the upload session")
            self._expect(resp, (201, 204), what, descriptor.digest)

    def _put_chunks(
        self,
        repo: str,
        location: str,
        descriptor: Descriptor,
        source: _Source,
        scopes: Sequence[str],
        chunk: int,
    ) -> None:
        """A chunked upload: PATCH ``chunk`` bytes at a time, then PUT the digest."""
        digest, size = descriptor.digest, descriptor.size
        offset = 0
        failures = 0
        while offset < size:
            n = min(chunk, size - offset)
            headers = {
                "Content-Type": _OCTET,
                "Content-Length": str(n),
                "Content-Range": f"{offset}-{offset + n - 1}",
            }
            start = offset
            try:
                resp = self._exchange(
                    "PATCH", location, scopes, headers, partial(source.stream, start, n, digest)
                )
                with resp:
                    if resp.status == 404:
                        raise _SessionLost("the registry forgot the upload session")
                    if resp.status == 416:  # not where the registry is: ask, below
                        raise _Transient("HTTP 416 for an upload chunk", 416)
                    self._expect(resp, (202, 204), f"upload blob {digest}", digest)
                    location = urljoin(resp.url, resp.headers.get("Location") or location)
                    end = _range_end(resp.headers.get("Range"))
                    offset = end if end is not None and end > start else start + n
            except _Transient as exc:
                if failures + 1 >= self.retry.attempts:
                    raise _SessionLost(str(exc)) from None
                self._pause(failures, exc.after)
                failures += 1
                offset, location = self._upload_status(location, scopes)
        url = _with_digest(location, digest)

        def commit() -> None:
            headers = {"Content-Type": _OCTET, "Content-Length": "0"}
            with self._exchange("PUT", url, scopes, headers, b"") as resp:
                if resp.status == 404 and self._head_blob(repo, digest, scopes):
                    return  # an earlier attempt committed it and its answer was lost
                if resp.status == 404:
                    raise _SessionLost("the registry forgot the upload session")
                self._expect(resp, (201, 204), f"complete upload of blob {digest}", digest)

        self._retrying(f"complete upload of blob {digest}", url, commit)

    def _upload_status(self, location: str, scopes: Sequence[str]) -> tuple[int, str]:
        """Where an upload stands (spec: GET on the upload URL -> 204 with Range)."""

        def attempt() -> tuple[int, str]:
            with self._exchange("GET", location, scopes) as resp:
                if resp.status == 404:
                    raise _SessionLost("the registry forgot the upload session")
                self._expect(resp, (202, 204), "check an upload")
                new = urljoin(resp.url, resp.headers.get("Location") or location)
                return _range_end(resp.headers.get("Range")) or 0, new

        return self._retrying("check an upload", location, attempt)

    # ---- transport ------------------------------------------------------------------

    def _pull(self, repo: str) -> tuple[str, ...]:
        return (f"repository:{repo}:pull",)

    def _push(self, repo: str, source: str | None = None) -> tuple[str, ...]:
        scopes = [f"repository:{repo}:pull,push"]
        if source:
            scopes.append(f"repository:{source}:pull")
        return tuple(scopes)

    def _refuse_plain(self, url: str) -> None:
        host = urlsplit(url).netloc.rsplit("@", 1)[-1]
        raise RegistryError(
            f"refusing plain HTTP to {host}: without TLS, credentials and images "
            "travel unprotected; only localhost is exempt",
            url=redact(url),
            registry=self.registry,
            hint=f"use HTTPS, or allow plain HTTP for {self.registry} with --insecure",
        )

    def _allow_url(self, url: str) -> None:
        """Refuse, before connecting, plain HTTP to a host that is not loopback (a token
        realm or a redirect target is judged by its own host, not the registry's)."""
        parts = urlsplit(url)
        if parts.scheme.lower() == "http" and not (self.insecure or _loopback(parts.netloc)):
            self._refuse_plain(url)

    def _url(self) -> str:
        """The base URL, chosen at first use (HTTPS, else HTTP where allowed) by the
        spec's version check ``GET /v2/``, whose challenge also tells how to log in."""
        with self._lock:
            if self._base is not None:
                return self._base
        base = ""
        for i, scheme in enumerate(self._schemes):
            base = f"{scheme}://{self.registry}"
            last = i + 1 == len(self._schemes)
            try:
                if last:
                    self._retrying(
                        f"reach {self.registry}", base + "/v2/", partial(self._ping, base)
                    )
                else:
                    self._ping(base)
                break
            except _Transient:
                continue  # no TLS there (or nothing at all): the next scheme says which
        with self._lock:
            self._base = self._base or base
            return self._base

    def _ping(self, base: str) -> None:
        with self._send("GET", base + "/v2/", {}, None) as resp:
            if resp.status in _RETRY_STATUS:
                raise _Transient(f"HTTP {resp.status}", resp.status, _retry_after(resp.headers))
            if resp.status == 401:
                self.auth.learn(parse_challenges(resp.headers.get_all("WWW-Authenticate") or []))

    def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: Body | None
    ) -> _Response:
        """One HTTP exchange; failures of the connection raise :class:`_Transient`."""
        sent = {"User-Agent": "envship", **headers}
        request = urllib.request.Request(url, data=body, headers=sent, method=method)
        try:
            raw = self._opener.open(request, timeout=self.timeout)
            return _Response(raw.status, raw.headers, raw, url)
        except urllib.error.HTTPError as exc:
            return _Response(exc.code, exc.headers, exc, url)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise RegistryError(
                    f"TLS certificate of {self.registry} not trusted: {exc.reason.verify_message}",
                    url=redact(url),
                    registry=self.registry,
                    hint="set SSL_CERT_FILE to a CA bundle that includes the registry's "
                    "certificate authority",
                ) from None
            raise _Transient(_describe(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(_describe(exc)) from None

    def _exchange(
        self,
        method: str,
        url: str,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: Body | Callable[[], Body] | None = None,
    ) -> _Response:
        """A request with credentials for ``scopes`` (answering one 401 challenge) and
        redirects (credentials only to the registry itself). A 429/5xx answer or a lost
        connection raises :class:`_Transient`; other answers are returned."""
        base = self._url()
        for round_ in range(2):
            target = url
            for _hop in range(_MAX_REDIRECTS + 1):
                sent = dict(headers or {})
                own = target.startswith(base + "/")
                if own:
                    auth = self.auth.authorization(scopes)
                    if auth:
                        sent["Authorization"] = auth
                data = body() if callable(body) else body
                resp = self._send(method, target, sent, data)
                location = resp.headers.get("Location")
                if resp.status in _REDIRECTS and method in ("GET", "HEAD") and location:
                    resp.close()
                    target = urljoin(target, location)
                    self._allow_url(target)
                    continue
                break
            else:
                raise RegistryError(
                    f"too many redirects from {redact(url)}",
                    url=redact(url),
                    registry=self.registry,
                )
            if resp.status == 401 and own and round_ == 0:
                challenges = parse_challenges(resp.headers.get_all("WWW-Authenticate") or [])
                resp.close()
                if self.auth.learn(challenges, scopes):
                    continue
                raise self.auth.error(401, scopes, url=redact(target))
            if resp.status in (401, 403) and own:
                challenges = parse_challenges(resp.headers.get_all("WWW-Authenticate") or [])
                short = any(c.params.get("error") == "insufficient_scope" for c in challenges)
                _, detail = _oci_errors(resp.read(1 << 16))
                resp.close()
                raise self.auth.error(
                    resp.status,
                    scopes,
                    url=redact(target),
                    denied=resp.status == 403 or short,
                    detail=detail,
                )
            if resp.status in _RETRY_STATUS:
                resp.close()
                raise _Transient(f"HTTP {resp.status}", resp.status, _retry_after(resp.headers))
            return resp
        raise AssertionError("unreachable")

    def _expect(
        self, resp: _Response, ok: Container[int], what: str, digest: str | None = None
    ) -> None:
        if resp.status in ok:
            return
        codes, detail = _oci_errors(resp.read(1 << 16))
        if digest is not None and codes & _INVALID_CONTENT:
            raise ArtifactError(
                f"{what}: the registry refused the bytes ({detail})",
                artifact=digest,
                expected=digest,
                actual="other bytes (the registry computed another digest or size)",
                hint="the local copy of this blob does not match its descriptor",
            )
        hint = "check the repository name and the tag or digest" if resp.status == 404 else None
        raise RegistryError(
            f"{what}: HTTP {resp.status}" + (f" ({detail})" if detail else ""),
            url=redact(resp.url),
            registry=self.registry,
            status=resp.status,
            hint=hint,
        )

    def _retrying(self, what: str, url: str, attempt: Callable[[], T]) -> T:
        last: _Transient | None = None
        for i in range(self.retry.attempts):
            try:
                return attempt()
            except _Transient as exc:
                last = exc
            if i + 1 < self.retry.attempts:
                self._pause(i, last.after)
        assert last is not None
        raise RegistryError(
            f"cannot {what}: {last} (after {self.retry.attempts} attempts)",
            url=redact(url),
            registry=self.registry,
            status=last.status,
            hint=_NETWORK_HINT,
        )

    def _pause(self, attempt: int, after: float) -> None:
        with self._lock:
            pause = self.retry.delay(attempt, self._rng)
        threading.Event().wait(max(pause, min(after, self.retry.max_delay)))

    def _token_transport(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        def attempt() -> tuple[int, bytes]:
            with self._send(method, url, headers, body) as resp:
                if resp.status in _RETRY_STATUS:
                    raise _Transient(f"HTTP {resp.status}", resp.status, _retry_after(resp.headers))
                try:
                    return resp.status, resp.read(1 << 20)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(f"connection lost: {_describe(exc)}") from None

        return self._retrying(f"get a token for {self.registry}", url.split("?", 1)[0], attempt)

    def _count(self, **amounts: int) -> None:
        with self._lock:
            fields = {k: getattr(self._stats, k) + v for k, v in amounts.items()}
            self._stats = dataclasses.replace(self._stats, **fields)

    def _report(self, action: _Action, repo: str, digest: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(BlobProgress(action, repo, digest, done, total))

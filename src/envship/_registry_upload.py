"""Blob uploads to an OCI registry (distribution spec, "Pushing blobs").

A blob goes up as one streamed ``PUT`` (monolithic) or, above the chunk size, as ``PATCH``
chunks with ``Content-Range`` and a closing ``PUT`` with the digest. A failed chunk asks
the registry where the upload stands (``GET`` on the upload URL, its ``Range``) and
resumes from there; a session the registry forgot, or a monolithic ``PUT`` that failed
half-way, starts a new session. The bytes are streamed from the caller's ``open_blob``
in :data:`~envship._registry_http.IO_BLOCK` pieces, reopened (or re-read up to the
offset, for a pipe) when an upload must go back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import BinaryIO
from urllib.parse import quote, urljoin

from ._http import redact
from ._registry_http import IO_BLOCK, NETWORK_HINT, Channel, SessionLost, Transient
from .errors import ArtifactError, RegistryError
from .oci import Descriptor

__all__ = ["Source", "head_blob", "start_upload", "upload"]

_OCTET = "application/octet-stream"


class Source:
    """A blob's bytes, streamed from ``open_blob`` handles at any offset; ``on_bytes``
    gets (bytes just read, position) for every block."""

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


def head_blob(http: Channel, repo: str, digest: str, scopes: Sequence[str]) -> bool:
    """Whether ``repo`` has blob ``digest`` (``HEAD`` on it: 200 or 404)."""
    url = f"{http.base_url()}/v2/{repo}/blobs/{digest}"

    def attempt() -> bool:
        with http.exchange("HEAD", url, scopes) as resp:
            http.expect(resp, (200, 404), f"check blob {http.registry}/{repo}@{digest}")
            return resp.status == 200

    return http.retrying(f"check blob {repo}@{digest}", url, attempt)


def start_upload(
    http: Channel, repo: str, scopes: Sequence[str], mount: tuple[str, str] | None = None
) -> tuple[int, str, int]:
    """POST an upload, or a mount of ``(digest, from repository)``: (status, upload URL,
    the registry's minimum chunk). Status 201 means mounted, with no upload URL."""
    url = f"{http.base_url()}/v2/{repo}/blobs/uploads/"
    if mount is not None:
        url += f"?mount={quote(mount[0], safe='')}&from={quote(mount[1], safe='/')}"
    what = f"start an upload to {http.registry}/{repo}"

    def attempt() -> tuple[int, str, int]:
        with http.exchange("POST", url, scopes, {"Content-Type": _OCTET}, b"") as resp:
            http.expect(resp, (201, 202), what)
            if resp.status == 201:
                return 201, "", 0
            location = resp.headers.get("Location")
            if not location:
                raise RegistryError(
                    f"{what}: the registry gave no upload Location",
                    url=url,
                    registry=http.registry,
                    status=resp.status,
                )
            minimum = resp.headers.get("OCI-Chunk-Min-Length", "")
            return 202, urljoin(resp.url, location), int(minimum) if minimum.isdigit() else 0

    return http.retrying(what, url, attempt)


def upload(
    http: Channel,
    repo: str,
    descriptor: Descriptor,
    source: Source,
    scopes: Sequence[str],
    *,
    location: str | None,
    min_chunk: int,
    chunk_size: int,
) -> None:
    """Upload ``source`` as blob ``descriptor`` into the session at ``location`` (a new
    one when None), starting new sessions while the registry loses them."""
    restarts = 0
    while True:
        if location is None:
            _, location, min_chunk = start_upload(http, repo, scopes)
        try:
            chunk = max(chunk_size, min_chunk)
            if descriptor.size <= chunk:
                _put_whole(http, location, descriptor, source, scopes)
            else:
                _put_chunks(http, repo, location, descriptor, source, scopes, chunk)
            return
        except SessionLost as exc:
            restarts += 1
            if restarts >= http.retry.attempts:
                raise RegistryError(
                    f"upload of blob {descriptor.digest} to {http.registry}/{repo} failed: "
                    f"{exc} (after {restarts} attempts)",
                    url=redact(location),
                    registry=http.registry,
                    hint=NETWORK_HINT,
                ) from None
            http.pause(restarts - 1, 0.0)
            location = None


def _put_whole(
    http: Channel, location: str, descriptor: Descriptor, source: Source, scopes: Sequence[str]
) -> None:
    """A monolithic upload: one streamed PUT with the digest."""
    headers = {"Content-Type": _OCTET, "Content-Length": str(descriptor.size)}
    what = f"upload blob {descriptor.digest}"
    try:
        resp = http.exchange(
            "PUT",
            _with_digest(location, descriptor.digest),
            scopes,
            headers,
            lambda: source.stream(0, descriptor.size, descriptor.digest),
        )
    except Transient as exc:
        # The session may hold part of the body now; only a new one is clean.
        raise SessionLost(str(exc)) from None
    with resp:
        if resp.status == 404:
            raise SessionLost("the registry forgot the upload session")
        http.expect(resp, (201, 204), what, descriptor.digest)


def _put_chunks(
    http: Channel,
    repo: str,
    location: str,
    descriptor: Descriptor,
    source: Source,
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
            resp = http.exchange(
                "PATCH", location, scopes, headers, partial(source.stream, start, n, digest)
            )
            with resp:
                if resp.status == 404:
                    raise SessionLost("the registry forgot the upload session")
                if resp.status == 416:  # not where the registry is: ask, below
                    raise Transient("HTTP 416 for an upload chunk", 416)
                http.expect(resp, (202, 204), f"upload blob {digest}", digest)
                location = urljoin(resp.url, resp.headers.get("Location") or location)
                end = _range_end(resp.headers.get("Range"))
                offset = end if end is not None and end > start else start + n
        except Transient as exc:
            if failures + 1 >= http.retry.attempts:
                raise SessionLost(str(exc)) from None
            http.pause(failures, exc.after)
            failures += 1
            offset, location = _upload_status(http, location, scopes, digest)
    url = _with_digest(location, digest)

    def commit() -> None:
        headers = {"Content-Type": _OCTET, "Content-Length": "0"}
        with http.exchange("PUT", url, scopes, headers, b"") as resp:
            if resp.status == 404 and head_blob(http, repo, digest, scopes):
                return  # an earlier attempt committed it and its answer was lost
            if resp.status == 404:
                raise SessionLost("the registry forgot the upload session")
            http.expect(resp, (201, 204), f"complete upload of blob {digest}", digest)

    http.retrying(f"complete upload of blob {digest}", url, commit)


def _upload_status(
    http: Channel, location: str, scopes: Sequence[str], digest: str
) -> tuple[int, str]:
    """Where the upload of blob ``digest`` stands (spec: GET on the upload URL -> 204
    with Range)."""

    def attempt() -> tuple[int, str]:
        with http.exchange("GET", location, scopes) as resp:
            if resp.status == 404:
                raise SessionLost("the registry forgot the upload session")
            http.expect(resp, (202, 204), f"check the upload of blob {digest}")
            new = urljoin(resp.url, resp.headers.get("Location") or location)
            return _range_end(resp.headers.get("Range")) or 0, new

    return http.retrying(f"check the upload of blob {digest}", location, attempt)

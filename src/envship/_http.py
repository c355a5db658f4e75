"""A small stdlib HTTP client for artifact downloads: retries, resume, credentials.

Only :mod:`urllib.request`, so envship adds no dependency; how a connection is made
(proxies, the CA store, DNS, redirects) is :mod:`envship._opener`'s.

Secrets stay in these two modules: credentials travel only in an ``Authorization`` header
that is re-derived for every URL (so a redirect to another host gets none), and every
URL in an error or a log is passed through :func:`redact` first.
"""

from __future__ import annotations

import base64
import http.client
import netrc
import os
import random
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

from ._opener import AuthRedirect, Resolver, make_opener
from .errors import NetworkError
from .spec import IndexConfig

__all__ = [
    "Cancelled",
    "Credential",
    "DownloadResult",
    "HttpClient",
    "RetryPolicy",
    "index_credentials",
    "make_opener",
    "redact",
]

_CHUNK = 1 << 16
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_NETWORK_HINT = "check the network, the proxy settings (HTTPS_PROXY, NO_PROXY) and the URL"

#: ``(done_bytes_in_file, total_bytes_of_file_or_None)``, called as bytes arrive.
FileProgress = Callable[[int, int | None], None]


class Credential(NamedTuple):
    """Basic-auth credentials for every URL under ``prefix`` (an index URL)."""

    prefix: str
    username: str
    password: str


class Cancelled(Exception):
    """The caller asked the download to stop (the partial file is kept for a resume)."""


def index_credentials(
    indexes: Iterable[IndexConfig], environ: Mapping[str, str] | None = None
) -> list[Credential]:
    """Credentials named by the indexes' ``username-env``/``password-env`` variables."""
    env = os.environ if environ is None else environ
    out: list[Credential] = []
    for index in indexes:
        user = env.get(index.username_env, "") if index.username_env else ""
        password = env.get(index.password_env, "") if index.password_env else ""
        if user or password:
            out.append(Credential(index.url, user, password))
    return out


def redact(url: str) -> str:
    """``url`` without any ``user:password@`` part, safe to show and log."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return "<unparseable URL>"
    if "@" not in netloc:
        return url
    host = netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    # A segment boundary, so an index at /simple does not cover /simple-evil.
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded attempts with exponential backoff and full jitter (AWS's recommendation:
    jitter spreads the retries of many clients hitting one index after an outage)."""

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass(frozen=True, slots=True)
class DownloadResult:
    size: int  # bytes in the file now
    received: int  # bytes read from the source in this call (resumed bytes excluded)
    resumed_from: int  # offset of the last successful range request, 0 if none


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received  # wire bytes so far, so the total stays honest


@dataclass
class HttpClient:
    """Downloads with retries and resume. Thread-safe: one client serves all workers."""

    credentials: Sequence[Credential] = ()
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    netrc_file: Path | None = None  # default: $NETRC, else ~/.netrc
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    _netrc: netrc.netrc | None = field(init=False, repr=False, default=None)
    _opener: urllib.request.OpenerDirector | None = field(init=False, repr=False, default=None)
    _resolver: Resolver = field(init=False, repr=False, default_factory=Resolver)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._netrc = self._load_netrc()

    def _open(self, request: urllib.request.Request) -> http.client.HTTPResponse:
        # Built on first use: loading the CA store costs tens of milliseconds, and a fetch
        # that finds everything in the store should not pay it.
        with self._lock:
            if self._opener is None:
                context = ssl.create_default_context()
                self._opener = make_opener(
                    context, AuthRedirect(self.authorization), resolver=self._resolver
                )
            opener = self._opener
        response: http.client.HTTPResponse = opener.open(request, timeout=self.timeout)
        return response

    def abort(self) -> None:
        """Stop every download of this client in flight now, and refuse new ones until
        :meth:`resume` (Ctrl-C, a full disk): a read that waits on a stalled server ends
        at once instead of at the timeout."""
        self._resolver.abort()

    def resume(self) -> None:
        """Download again after :meth:`abort`, once the downloads it stopped have ended."""
        self._resolver.resume()

    def _load_netrc(self) -> netrc.netrc | None:
        path = self.netrc_file
        if path is None:
            env = os.environ.get("NETRC")
            path = Path(env) if env else Path.home() / ".netrc"
        try:
            return netrc.netrc(str(path))
        except (OSError, netrc.NetrcParseError):
            # A missing or unreadable netrc means "no credentials"; a 401 then says so.
            return None

    def credentials_for(self, url: str) -> tuple[str, str] | None:
        """(username, password) for ``url``: in the URL, then an index, then netrc."""
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            return unquote(parts.username or ""), unquote(parts.password or "")
        origin = _origin(url)
        same_origin = [c for c in self.credentials if _origin(c.prefix) == origin]
        under = [c for c in same_origin if _under(parts.path, urlsplit(c.prefix).path)]
        # The longest index URL the path is under wins; else the first declared index on
        # the same origin, because indexes often serve files from a sibling path (/simple/
        # links to /packages/) on one host, and an origin is the boundary that matters.
        if under:
            best = max(under, key=lambda c: len(c.prefix))
            return best.username, best.password
        if same_origin:
            return same_origin[0].username, same_origin[0].password
        if self._netrc is not None and origin[1]:
            entry = self._netrc.authenticators(origin[1])
            if entry is not None:
                return entry[0] or "", entry[2] or ""
        return None

    def authorization(self, url: str) -> str | None:
        creds = self.credentials_for(url)
        if creds is None:
            return None
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode("ascii")
        return f"Basic {token}"

    def download(
        self,
        source: str | Path,
        dest: Path,
        *,
        progress: FileProgress | None = None,
        cancel: threading.Event | None = None,
    ) -> DownloadResult:
        """Bring ``source`` (URL, ``file://`` URL or local path) to ``dest``.

        Bytes already in ``dest`` are kept and only the rest is requested; a server
        that ignores ``Range`` makes the download restart from byte 0.
        """
        if isinstance(source, Path):
            return _copy_local(source, dest, progress, cancel)
        scheme = urlsplit(source).scheme.lower()
        if scheme == "file":
            return _copy_local(
                Path(urllib.request.url2pathname(urlsplit(source).path)), dest, progress, cancel
            )
        if scheme not in ("http", "https"):
            raise NetworkError(f"unsupported URL scheme in {redact(source)}", url=redact(source))
        received = 0
        last_error = ""
        for attempt in range(self.retry.attempts):
            if cancel is not None and cancel.is_set():
                raise Cancelled
            try:
                return self._attempt(source, dest, progress, cancel, received)
            except _Retryable as exc:
                last_error = str(exc)
                received = exc.received
            if attempt + 1 < self.retry.attempts:
                with self._lock:
                    pause = self.retry.delay(attempt, self._rng)
                # An Event wait, not time.sleep: a cancel (Ctrl-C) ends the pause at once.
                if cancel is not None:
                    if cancel.wait(pause):
                        raise Cancelled
                else:
                    threading.Event().wait(pause)
        url = redact(source)
        raise NetworkError(
            f"cannot download {url}: {last_error} (after {self.retry.attempts} attempts)",
            url=url,
            hint=_NETWORK_HINT,
        )

    def _attempt(
        self,
        url: str,
        dest: Path,
        progress: FileProgress | None,
        cancel: threading.Event | None,
        received: int,
    ) -> DownloadResult:
        offset = dest.stat().st_size if dest.exists() else 0
        parts = urlsplit(url)
        clean = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], *parts[2:4], ""))
        request = urllib.request.Request(clean, headers={"Accept-Encoding": "identity"})
        auth = self.authorization(url)
        if auth:
            request.add_unredirected_header("Authorization", auth)
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        shown = redact(url)
        try:
            response = self._open(request)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:
                # The partial is as long as (or longer than) the file: start over.
                dest.unlink()
                raise _Retryable(f"HTTP 416 for a resume at byte {offset}", received) from None
            if exc.code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {exc.code} {exc.reason}", received) from None
            raise _http_error(exc.code, str(exc.reason), shown) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                # No retry fixes a certificate the local trust store does not accept.
                raise NetworkError(
                    f"TLS certificate not trusted for {shown}: {exc.reason.verify_message}",
                    url=shown,
                    hint="set SSL_CERT_FILE to a CA bundle that includes your "
                    "organisation's (proxy's) certificate authority",
                ) from None
            raise _Retryable(_describe(exc), received) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(_describe(exc), received) from None
        with response:
            start = 0
            if response.status == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != offset:
                    # Not the range we asked for: these bytes fit nowhere, start over.
                    dest.unlink(missing_ok=True)
                    raise _Retryable(f"unexpected Content-Range for byte {offset}", received)
            # Otherwise a 200 means the server ignored Range: restart from byte 0.
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            total = start + expected if expected is not None else None
            got = 0
            try:
                # r+b keeps the resumed prefix; the lock in fetch means nobody removed it.
                with dest.open("r+b" if start else "wb") as out:
                    out.seek(start)
                    out.truncate()
                    if progress:
                        progress(start, total)
                    while True:
                        if cancel is not None and cancel.is_set():
                            raise Cancelled
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        _write_all(out, chunk)
                        got += len(chunk)
                        received += len(chunk)
                        if progress:
                            progress(start + got, total)
            except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
                raise _Retryable(f"connection lost: {_describe(e)}", received) from None
            if expected is not None and got < expected:
                # urllib returns a short body without error when the peer closes early.
                raise _Retryable(f"connection closed after {got} of {expected} bytes", received)
        return DownloadResult(size=start + got, received=received, resumed_from=start)


def _write_all(out: IO[bytes], data: bytes) -> None:
    # One seam for the disk: ENOSPC and friends surface here as OSError.
    out.write(data)


def _content_range_start(value: str | None) -> int:
    # "bytes 100-999/1000" -> 100; anything else is treated as "not what we asked for".
    if not value or not value.startswith("bytes "):
        return -1
    first = value[6:].split("-", 1)[0].strip()
    return int(first) if first.isdigit() else -1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        return str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__ if not str(exc) else str(exc)


def _http_error(code: int, reason: str, url: str) -> NetworkError:
    if code == 404:
        return NetworkError(
            f"not found (HTTP 404): {url}",
            url=url,
            hint="the index no longer serves this file; re-lock, or check the index URL",
        )
    if code in (401, 403):
        return NetworkError(
            f"access denied (HTTP {code}): {url}",
            url=url,
            hint="set the index's username-env/password-env variables or add a netrc entry",
        )
    return NetworkError(f"HTTP {code} {reason}: {url}", url=url, hint=_NETWORK_HINT)


def _copy_local(
    source: Path,
    dest: Path,
    progress: FileProgress | None,
    cancel: threading.Event | None,
) -> DownloadResult:
    try:
        total = source.stat().st_size
        src = source.open("rb")
    except FileNotFoundError:
        raise NetworkError(
            f"not found: {source}",
            url=str(source),
            hint="the lock names a local file that is not there; paths are relative to "
            "the lock file's folder",
        ) from None
    except OSError as exc:
        raise NetworkError(f"cannot read {source}: {exc.strerror}", url=str(source)) from None
    done = 0
    # Local copies are fast and cheap to redo, so they always start from byte 0.
    with src, dest.open("wb") as out:
        if progress:
            progress(0, total)
        while chunk := src.read(_CHUNK):
            if cancel is not None and cancel.is_set():
                raise Cancelled
            _write_all(out, chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return DownloadResult(size=done, received=done, resumed_from=0)

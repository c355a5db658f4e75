"""HTTP to one OCI registry: scheme choice, credentials, redirects, retries, error mapping.

This is the transport under :class:`envship.registry.RegistryClient` and the uploads of
:mod:`envship._registry_upload`. The base URL is chosen at first use by the distribution
spec's version check ``GET /v2/`` (HTTPS, then plain HTTP where allowed), whose 401
challenge also tells how to log in. Plain HTTP is refused before any connection unless the
host is loopback or the caller said ``insecure``; a token realm or a redirect target is
judged by its own host. Connection errors, 429 and 5xx raise :class:`Transient`, which
:meth:`Channel.retrying` retries with :mod:`envship._http`'s :class:`RetryPolicy`.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import random
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from email.message import Message
from functools import partial
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import urljoin, urlsplit

from ._http import RetryPolicy, _describe, make_opener, redact
from ._registry_auth import Authenticator, docker_config_file, parse_challenges
from .errors import ArtifactError, RegistryError

__all__ = [
    "IO_BLOCK",
    "NETWORK_HINT",
    "Body",
    "Channel",
    "Response",
    "SessionLost",
    "Transient",
    "is_loopback",
]

IO_BLOCK = 1 << 20  # the most bytes of a blob held at once
NETWORK_HINT = "check that the registry is up and reachable, and the proxy settings"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_INVALID_CONTENT = frozenset({"DIGEST_INVALID", "SIZE_INVALID", "BLOB_UPLOAD_INVALID"})

T = TypeVar("T")
Body = bytes | Iterator[bytes]


class Transient(Exception):
    """One attempt failed in a way a later attempt may not."""

    def __init__(self, message: str, status: int | None = None, after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.after = after  # Retry-After, seconds


class SessionLost(Exception):
    """The upload session is gone or unusable: start a new one."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by the channel, which decides where credentials go."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Response:
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

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` names this machine (``localhost`` or a loopback address)."""
    name = (urlsplit("//" + host).hostname or "").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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


class Channel:
    """Requests to one registry ``host`` (``host[:port]``), thread-safe.

    ``scheme`` is "https" or "http" when the user named one, else "" (HTTPS, falling back
    to plain HTTP for a loopback host or when ``insecure``).
    """

    def __init__(
        self,
        host: str,
        scheme: str,
        *,
        insecure: bool,
        retry: RetryPolicy,
        timeout: float,
        seed: int | None,
        docker_config: Path | None,
    ) -> None:
        self.registry = host
        self.insecure = insecure
        self.retry = retry
        self.timeout = timeout
        plain_ok = insecure or is_loopback(host)
        if scheme == "http":
            self.allow_url(f"http://{host}/v2/")
        self._schemes = [scheme] if scheme else ["https", "http"] if plain_ok else ["https"]
        self._base: str | None = None
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._opener = make_opener(context, _NoRedirect())
        self.auth = Authenticator(
            host, docker_config_file(docker_config), self._token_transport, self.allow_url
        )

    def allow_url(self, url: str) -> None:
        """Refuse, before connecting, plain HTTP to a host that is not loopback (a token
        realm or a redirect target is judged by its own host, not the registry's)."""
        parts = urlsplit(url)
        if parts.scheme.lower() == "http" and not (self.insecure or is_loopback(parts.netloc)):
            host = parts.netloc.rsplit("@", 1)[-1]
            raise RegistryError(
                f"refusing plain HTTP to {host}: without TLS, credentials and images "
                "travel unprotected; only localhost is exempt",
                url=redact(url),
                registry=self.registry,
                hint=f"use HTTPS, or allow plain HTTP for {self.registry} with --insecure",
            )

    def base_url(self) -> str:
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
                    self.retrying(
                        f"reach {self.registry}", base + "/v2/", partial(self._ping, base)
                    )
                else:
                    self._ping(base)
                break
            except Transient:
                continue  # no TLS there (or nothing at all): the next scheme says which
        with self._lock:
            self._base = self._base or base
            return self._base

    def _ping(self, base: str) -> None:
        with self._send("GET", base + "/v2/", {}, None) as resp:
            if resp.status in _RETRY_STATUS:
                raise Transient(f"HTTP {resp.status}", resp.status, _retry_after(resp.headers))
            if resp.status == 401:
                self.auth.learn(parse_challenges(resp.headers.get_all("WWW-Authenticate") or []))

    def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: Body | None
    ) -> Response:
        """One HTTP exchange; failures of the connection raise :class:`Transient`."""
        sent = {"User-Agent": "envship", **headers}
        request = urllib.request.Request(url, data=body, headers=sent, method=method)
        try:
            raw = self._opener.open(request, timeout=self.timeout)
            return Response(raw.status, raw.headers, raw, url)
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.headers, exc, url)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise RegistryError(
                    f"TLS certificate of {self.registry} not trusted: {exc.reason.verify_message}",
                    url=redact(url),
                    registry=self.registry,
                    hint="set SSL_CERT_FILE to a CA bundle that includes the registry's "
                    "certificate authority",
                ) from None
            raise Transient(_describe(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Transient(_describe(exc)) from None

    def exchange(
        self,
        method: str,
        url: str,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: Body | Callable[[], Body] | None = None,
    ) -> Response:
        """A request with credentials for ``scopes`` (answering one 401 challenge) and
        redirects (credentials only to the registry itself). A 429/5xx answer or a lost
        connection raises :class:`Transient`; other answers are returned."""
        base = self.base_url()
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
                    self.allow_url(target)
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
                raise Transient(f"HTTP {resp.status}", resp.status, _retry_after(resp.headers))
            return resp
        raise AssertionError("unreachable")

    def expect(
        self, resp: Response, ok: Container[int], what: str, digest: str | None = None
    ) -> None:
        """Raise the error an answer outside ``ok`` means (a refused digest or size of
        blob ``digest`` is an :class:`ArtifactError`)."""
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

    def retrying(self, what: str, url: str, attempt: Callable[[], T]) -> T:
        """``attempt()``, again after a pause while it raises :class:`Transient`."""
        last: Transient | None = None
        for i in range(self.retry.attempts):
            try:
                return attempt()
            except Transient as exc:
                last = exc
            if i + 1 < self.retry.attempts:
                self.pause(i, last.after)
        assert last is not None
        # Which registry: a push or pull talks to one, but a message may reach a log alone.
        at = "" if self.registry in what else f" at {self.registry}"
        raise RegistryError(
            f"cannot {what}{at}: {last} (after {self.retry.attempts} attempts)",
            url=redact(url),
            registry=self.registry,
            status=last.status,
            hint=NETWORK_HINT,
        )

    def pause(self, attempt: int, after: float) -> None:
        """Wait before retry ``attempt`` (0-based), at least ``after`` (Retry-After)."""
        with self._lock:
            pause = self.retry.delay(attempt, self._rng)
        threading.Event().wait(max(pause, min(after, self.retry.max_delay)))

    def _token_transport(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        def attempt() -> tuple[int, bytes]:
            with self._send(method, url, headers, body) as resp:
                if resp.status in _RETRY_STATUS:
                    raise Transient(f"HTTP {resp.status}", resp.status, _retry_after(resp.headers))
                try:
                    return resp.status, resp.read(1 << 20)
                except (OSError, http.client.HTTPException) as exc:
                    raise Transient(f"connection lost: {_describe(exc)}") from None

        return self.retrying(f"get a token for {self.registry}", url.split("?", 1)[0], attempt)

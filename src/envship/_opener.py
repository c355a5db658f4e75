"""How envship's HTTP connections are made: proxies, TLS, DNS, redirects with credentials.

One opener recipe serves the artifact downloads (:class:`envship._http.HttpClient`) and
the registry client (:mod:`envship._registry_http`): urllib's default handlers, which
honour ``HTTP(S)_PROXY``/``NO_PROXY``; the default SSL context, with which OpenSSL reads
``SSL_CERT_FILE``/``SSL_CERT_DIR`` before the system store (what corporate networks with
their own CA need); and connections that ask the DNS once per host and client. The
downloads add :class:`AuthRedirect`, which re-derives the ``Authorization`` header for a
redirect's URL instead of copying it (the registry client brings its own policy). It is
apart from the download logic (retries, resume, error wording) because it is the one
place that decides what a connection is, for both clients.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.request
import weakref
from collections.abc import Callable
from typing import IO, Any

__all__ = ["AuthRedirect", "Resolver", "make_opener"]


class AuthRedirect(urllib.request.HTTPRedirectHandler):
    """Re-derive credentials for the redirect target, never copy the original header.

    The header is set with ``add_unredirected_header`` so urllib itself never forwards it;
    this handler adds the right one (or none) for the new URL.
    """

    def __init__(self, auth: Callable[[str], str | None]) -> None:
        self._auth = auth

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            value = self._auth(new.full_url)
            if value:
                new.add_unredirected_header("Authorization", value)
        return new


class Resolver:
    """Resolve each host once per client and reuse the answer for every connection.

    urllib opens a connection per request, and so a name lookup per artifact. A lost
    DNS packet costs the resolver's 5 s retry timeout: measured here, a fetch of 44
    wheels stalled 5 s on one such lookup while pip, with one keep-alive connection,
    paid for one lookup. Caching the answer for the life of a fetch removes that.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._aborted = False

    def abort(self) -> None:
        """End every connection made here, at once, and refuse new ones until
        :meth:`resume` (Ctrl-C).

        A worker blocked reading a stalled server returns from its read when its socket
        is shut down; otherwise the interrupted command waits for the read timeout
        (30 s) before it can stop. Shutdown, not close: the socket still belongs to the
        thread reading it, which closes it as it unwinds. New connections are refused
        so that one a worker was about to make is not left to wait in its place.
        """
        with self._lock:
            self._aborted = True
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def resume(self) -> None:
        """Make connections again, once whatever :meth:`abort` stopped has ended."""
        with self._lock:
            self._aborted = False

    def _addresses(self, host: str, port: int) -> list[tuple[Any, ...]]:
        with self._lock:
            found = self._cache.get((host, port))
        if found is None:
            found = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            with self._lock:
                self._cache[(host, port)] = found
        return found

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
        **_: Any,
    ) -> socket.socket:
        host, port = address
        error: OSError | None = None
        for *_rest, sockaddr in self._addresses(host, port):
            try:
                sock = socket.create_connection(
                    (str(sockaddr[0]), int(sockaddr[1])), timeout, source_address
                )
            except OSError as exc:
                error = exc
                continue
            with self._lock:
                if not self._aborted:
                    self._open.add(sock)
                    return sock
            sock.close()
            raise ConnectionAbortedError(f"connection to {host} not made: interrupted")
        raise error or OSError(f"no address for {host}")


def _handlers(context: ssl.SSLContext, resolver: Resolver) -> list[urllib.request.BaseHandler]:
    class Http(http.client.HTTPConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = resolver.create_connection

    class Https(http.client.HTTPSConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = resolver.create_connection

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Http, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Https, req, context=context)

    return [HttpHandler(), HttpsHandler(context=context)]


def make_opener(
    context: ssl.SSLContext | None = None,
    *extra: urllib.request.BaseHandler,
    resolver: Resolver | None = None,
) -> urllib.request.OpenerDirector:
    """An opener like :class:`HttpClient`'s: proxies from the environment, this module's
    DNS cache (``resolver``, whose :meth:`Resolver.abort` ends its connections; default:
    a new one), ``context`` for TLS (default: the system store, which honours
    ``SSL_CERT_FILE``), plus ``extra`` handlers (the registry client brings its own
    redirect policy)."""
    tls = context if context is not None else ssl.create_default_context()
    return urllib.request.build_opener(*_handlers(tls, resolver or Resolver()), *extra)

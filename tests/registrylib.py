"""A real OCI registry for tests: Debian's ``docker-registry`` (CNCF Distribution 2.8).

Each registry runs ``docker-registry serve CONFIG.yml`` on 127.0.0.1 with a free port
and its storage in a temporary folder, is started by pid, waited for until ``/v2/``
answers, and stopped by the same pid. Three flavours, one per auth mode:

- ``registry``: open;
- ``auth_registry``: htpasswd (``htpasswd -Bbn``), Basic challenges;
- ``token_registry``: ``auth.token`` with a token server written here, so the Bearer
  flow runs against the real registry: JWTs signed RS256 by ``openssl`` with a key and
  self-signed certificate made in tmp, the certificate in the JWT header's ``x5c`` and
  in the registry's ``rootcertbundle``.

``FaultProxy`` sits in front of a registry to log requests and inject failures (503s,
a body cut short). A missing binary fails the session: no skips.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

__all__ = [
    "FaultProxy",
    "Registry",
    "TokenServer",
    "auth_registry",
    "free_port",
    "registry",
    "registry_proxy",
    "start_registry",
    "tls_registry",
    "token_registry",
]

REGISTRY_HINT = "install it: apt-get install -y docker-registry apache2-utils"
START_TIMEOUT = 30.0
SERVICE = "envship-test-registry"
ISSUER = "envship-test-issuer"


def _require(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} is not installed; {REGISTRY_HINT}", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Registry:
    """A running registry: ``host`` is ``127.0.0.1:PORT``; blobs live under ``root``."""

    host: str
    root: Path
    pid: int
    username: str | None = None
    password: str | None = None

    def blob_file(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (to tamper with them)."""
        algorithm, hexdigest = digest.split(":", 1)
        return (
            self.root / "docker/registry/v2/blobs" / algorithm / hexdigest[:2] / hexdigest / "data"
        )


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-30:])
    except OSError as exc:
        return f"(no log: {exc})"


@contextlib.contextmanager
def start_registry(
    workdir: Path,
    *,
    auth: Mapping[str, Any] | None = None,
    users: tuple[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[Registry]:
    """Run a registry until the block ends; ``auth`` is its config's ``auth`` section,
    ``tls`` a (certificate, key) pair to serve HTTPS with."""
    binary = _require("docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    root = workdir / "storage"
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "error", "accesslog": {"disabled": True}},
        # No blob descriptor cache: a test that corrupts a blob on disk must see it served.
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    if auth:
        config["auth"] = dict(auth)
    if tls:
        config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config_file = workdir / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = workdir / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/"):
            if proc.poll() is not None:
                pytest.fail(f"docker-registry exited {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not answer in {START_TIMEOUT} s:\n{_tail(log)}")
            time.sleep(0.05)
        user, password = users if users else (None, None)
        yield Registry(f"127.0.0.1:{port}", root, proc.pid, user, password)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answers(url: str) -> bool:
    unverified = ssl._create_unverified_context()  # only asks "is it up?"
    try:
        with urllib.request.urlopen(url, timeout=2, context=unverified):
            return True
    except urllib.error.HTTPError:
        return True  # 401 from an auth registry: it is up
    except (OSError, http.client.HTTPException):
        return False


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An open registry shared by the session; tests use their own repositories."""
    with start_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry behind htpasswd (bcrypt) Basic auth; its user and password are on it."""
    htpasswd = _require("htpasswd")
    workdir = tmp_path_factory.mktemp("auth-registry")
    password = "pw-" + secrets.token_hex(12)
    entry = subprocess.run(
        [htpasswd, "-Bbn", "alice", password], capture_output=True, text=True, check=True
    ).stdout
    (workdir / "htpasswd").write_text(entry.strip() + "\n")
    auth = {"htpasswd": {"realm": "envship-tests", "path": str(workdir / "htpasswd")}}
    with start_registry(workdir, auth=auth, users=("alice", password)) as running:
        yield running


def self_signed(workdir: Path, name: str, *, san: str = "") -> tuple[Path, Path]:
    """A certificate and key made by ``openssl`` (``san``: e.g. ``IP:127.0.0.1``)."""
    cert, key = workdir / f"{name}.pem", workdir / f"{name}.key"
    extra = ("-addext", f"subjectAltName={san}") if san else ()
    subprocess.run(
        [
            *(_require("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"),
            *("-days", "2", "-subj", f"/CN={name}", *extra),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
        check=True,
    )
    return cert, key


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An open registry serving HTTPS with a self-signed certificate for 127.0.0.1;
    the certificate is ``root / "../tls.pem"`` (trust it through SSL_CERT_FILE)."""
    workdir = tmp_path_factory.mktemp("tls-registry")
    with start_registry(workdir, tls=self_signed(workdir, "tls", san="IP:127.0.0.1")) as running:
        yield running


# -- the token server -----------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class TokenServer:
    """A distribution token service (token.md, oauth.md) on 127.0.0.1.

    ``users`` maps a name to (password, actions it may get); anonymous callers get
    ``anonymous`` actions; ``refresh_tokens`` maps an identity token to a user. Every
    request lands in ``log`` as (method, user or "", scopes).
    """

    workdir: Path
    users: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    anonymous: frozenset[str] = frozenset({"pull"})
    log: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    url: str = ""
    key: Path = field(init=False)
    cert: Path = field(init=False)

    def __post_init__(self) -> None:
        self.cert, self.key = self_signed(self.workdir, "envship-test-token-issuer")
        pem = self.cert.read_text()
        body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        self._x5c = "".join(body.split())  # standard base64 of the DER, as x5c wants

    def grant(self, user: str, scopes: list[str]) -> list[dict[str, Any]]:
        allowed = self.users[user][1] if user else self.anonymous
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a in allowed]
            if kind == "repository" and granted:
                access.append({"type": kind, "name": name, "actions": granted})
        return access

    def issue(self, user: str, scopes: list[str]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 60,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": self.grant(user, scopes),
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"


def _token_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            scopes = query.get("scope", [])
            user = ""
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if name not in server.users or server.users[name][0] != password:
                    server.log.append(("GET", "!" + name, tuple(scopes)))
                    self._answer(401, {"details": "wrong user or password"})
                    return
                user = name
            server.log.append(("GET", user, tuple(scopes)))
            token = server.issue(user, scopes)
            self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = parse_qs(self.rfile.read(length).decode())
            scopes = " ".join(form.get("scope", [])).split()
            user = server.refresh_tokens.get(form.get("refresh_token", [""])[0])
            ok = form.get("grant_type") == ["refresh_token"] and user is not None
            server.log.append(("POST", user or "!", tuple(scopes)))
            if not ok or user is None:
                self._answer(401, {"error": "invalid_grant"})
                return
            self._answer(200, {"access_token": server.issue(user, scopes), "expires_in": 300})

    return Handler


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Registry, TokenServer]]:
    """A registry with ``auth.token`` and its token server. Users: ``alice`` may pull
    and push, ``reader`` may only pull, anonymous callers may pull; the identity token
    ``refresh-alice`` stands for alice."""
    workdir = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(workdir)
    password = "pw-" + secrets.token_hex(12)
    tokens.users["alice"] = (password, frozenset({"pull", "push"}))
    tokens.users["reader"] = ("reader-" + secrets.token_hex(8), frozenset({"pull"}))
    tokens.refresh_tokens["refresh-alice-" + secrets.token_hex(8)] = "alice"
    with _serving(_token_handler(tokens)) as httpd:
        tokens.url = f"http://127.0.0.1:{httpd.server_address[1]}/token"
        auth = {
            "token": {
                "realm": tokens.url,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(tokens.cert),
            }
        }
        with start_registry(workdir, auth=auth, users=("alice", password)) as running:
            yield running, tokens


# -- a proxy that logs and fails on demand ----------------------------------------------

_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-connection"})


@dataclass
class Fault:
    method: str
    path_part: str  # the fault applies to requests whose path contains this
    times: int
    status: int = 503  # answered instead of relaying; 0 relays but cuts the body
    cut_after: int = 0  # with status 0: body bytes sent before the connection is closed


@dataclass
class FaultProxy:
    """Relays to ``upstream`` (``host:port``) and keeps the Host header, so the
    registry's upload Locations point back at the proxy."""

    upstream: str
    host: str = ""
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    injected: list[tuple[str, str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, method: str, path_part: str, times: int = 1, status: int = 503) -> None:
        with self._lock:
            self.faults.append(Fault(method, path_part, times, status))

    def cut(self, method: str, path_part: str, after: int, times: int = 1) -> None:
        with self._lock:
            self.faults.append(Fault(method, path_part, times, 0, after))

    def requests(self, method: str, path_part: str = "") -> list[dict[str, str]]:
        return [h for m, p, h in self.log if m == method and path_part in p]

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.path_part in path and fault.times > 0:
                    fault.times -= 1
                    self.injected.append((method, path, fault.status))
                    return fault
        return None


def _proxy_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _relay(self) -> None:
            method = self.command
            proxy.log.append((method, self.path, dict(self.headers.items())))
            length = int(self.headers.get("Content-Length", "0") or 0)
            fault = proxy.take(method, self.path)
            if fault is not None and fault.status:
                _drain(self.rfile, length)
                self.send_response(fault.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
            upstream.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP:
                    upstream.putheader(name, value)
            upstream.endheaders()
            left = length
            while left:
                block = self.rfile.read(min(left, 1 << 20))
                if not block:
                    break
                upstream.send(block)
                left -= len(block)
            response = upstream.getresponse()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP:
                    self.send_header(name, value)
            self.end_headers()
            sent = 0
            while block := response.read(1 << 16):
                if fault is not None and sent + len(block) > fault.cut_after:
                    self.wfile.write(block[: fault.cut_after - sent])
                    self.close_connection = True
                    break
                self.wfile.write(block)
                sent += len(block)
            upstream.close()

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    return Handler


def _drain(stream: Any, length: int) -> None:
    while length > 0:
        got = len(stream.read(min(length, 1 << 20)))
        if not got:
            return
        length -= got


@pytest.fixture
def registry_proxy(registry: Registry) -> Iterator[FaultProxy]:
    """A fresh proxy (empty log, no faults) in front of the shared open registry."""
    proxy = FaultProxy(registry.host)
    with _serving(_proxy_handler(proxy)) as httpd:
        proxy.host = f"127.0.0.1:{httpd.server_address[1]}"
        yield proxy


def write_random(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes, written a MiB at a time."""
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            out.write(block)
            left -= len(block)
    return path

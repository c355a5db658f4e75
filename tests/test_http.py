"""The download client: resume, restarts, retries, proxies and credentials.

A tiny server of our own (rather than indexlib's) so each test can make it ignore
``Range``, demand a password, redirect elsewhere or act as a proxy.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envship._http import (
    Cancelled,
    Credential,
    HttpClient,
    RetryPolicy,
    index_credentials,
    redact,
)
from envship.errors import NetworkError
from envship.spec import IndexConfig

FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01)


@dataclass
class State:
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    password: str | None = None  # demand basic auth "user:<password>"
    redirects: dict[str, str] = field(default_factory=dict)
    stall_once: set[str] = field(default_factory=set)  # first request hangs
    log: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class Server:
    url: str
    state: State

    def headers(self, header: str) -> list[str | None]:
        return [h.get(header) for _, h in self.state.log]


@contextmanager
def serve(tls: tuple[Path, Path] | None = None) -> Iterator[Server]:
    """Serve on 127.0.0.1; ``tls`` is (certificate, key) for HTTPS."""
    state = State()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.log.append((self.path, dict(self.headers.items())))
            key = self.path.split("://", 1)[-1].split("/", 1)[-1]
            key = "/" + key
            if key in state.stall_once:
                state.stall_once.discard(key)
                state.release.wait(10)
                return
            if key in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[key])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if state.password is not None:
                expected = base64.b64encode(f"user:{state.password}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    self.send_error(401)
                    return
            data = state.files.get(key)
            if data is None:
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            start = 0
            if state.honour_range and rng and rng.startswith("bytes="):
                start = int(rng[6:].rstrip("-"))
                if start >= len(data):
                    self.send_error(416)
                    return
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"{scheme}://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    with serve() as s:
        yield s


@pytest.fixture(autouse=True)
def _no_user_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


CONTENT = bytes(range(256)) * 20


# --- resume -----------------------------------------------------------------------


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.binary(min_size=1, max_size=3000),
    prefix_len=st.integers(min_value=0, max_value=3100),
    prefix_is_true=st.booleans(),
    honour_range=st.booleans(),
)
def test_resume_property(
    server: Server, content: bytes, prefix_len: int, prefix_is_true: bool, honour_range: bool
) -> None:
    """Whatever is in the partial file and whether or not the server honours Range,
    the result is exactly what a resume from that partial must give."""
    server.state.files["/f"] = content
    server.state.honour_range = honour_range
    prefix = content[:prefix_len] if prefix_is_true else b"\xaa" * prefix_len
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "f.part"
        if prefix:
            dest.write_bytes(prefix)
        result = HttpClient(retry=FAST).download(f"{server.url}/f", dest)
        got = dest.read_bytes()
    resumable = honour_range and 0 < len(prefix) < len(content)
    if resumable:
        # A resume trusts the prefix: a wrong prefix is the store's sha256 check to catch.
        assert got == prefix + content[len(prefix) :]
        assert result.received == len(content) - len(prefix)
        assert result.resumed_from == len(prefix)
    else:
        assert got == content
        assert result.received == len(content)


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.state.files["/f"] = CONTENT
    server.state.honour_range = False
    dest = tmp_path / "f.part"
    dest.write_bytes(CONTENT[:1000])
    seen: list[tuple[int, int | None]] = []
    result = HttpClient(retry=FAST).download(
        f"{server.url}/f", dest, progress=lambda d, t: seen.append((d, t))
    )
    assert dest.read_bytes() == CONTENT and result.resumed_from == 0
    assert server.headers("Range") == ["bytes=1000-"]
    assert seen[0] == (0, len(CONTENT)) and seen[-1] == (len(CONTENT), len(CONTENT))


# --- errors and retries -------------------------------------------------------------


def test_404_is_not_found_and_not_retried(server: Server, tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="not found") as info:
        HttpClient(retry=FAST).download(f"{server.url}/missing", tmp_path / "x")
    assert info.value.url == f"{server.url}/missing"
    assert len(server.state.log) == 1


def test_timeout_is_retried(server: Server, tmp_path: Path) -> None:
    server.state.files["/f"] = CONTENT
    server.state.stall_once.add("/f")
    dest = tmp_path / "f"
    HttpClient(retry=FAST, timeout=0.5).download(f"{server.url}/f", dest)
    assert dest.read_bytes() == CONTENT
    assert len(server.state.log) == 2


def test_abort_ends_a_read_that_waits_on_a_stalled_server(server: Server, tmp_path: Path) -> None:
    """Ctrl-C during a fetch: the worker waiting for a server that sends nothing must
    stop now, not when its 60 s read timeout ends (the server here holds for 10 s)."""
    server.state.files["/f"] = CONTENT
    server.state.stall_once.add("/f")
    client, cancel = HttpClient(retry=FAST, timeout=60), threading.Event()
    outcome: list[BaseException | None] = []

    def download() -> None:
        try:
            client.download(f"{server.url}/f", tmp_path / "f", cancel=cancel)
            outcome.append(None)
        except BaseException as exc:  # what the worker ends with is the point
            outcome.append(exc)

    worker = threading.Thread(target=download)
    worker.start()
    try:
        while not server.state.log:
            assert worker.is_alive(), outcome
            threading.Event().wait(0.01)
        cancel.set()
        client.abort()
        worker.join(5)  # a bound for liveness, far under the server's 10 s hold
        assert not worker.is_alive(), "the read did not end"
        assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
        assert len(server.state.log) == 1  # and no new request was made
        with pytest.raises(NetworkError, match="interrupted"):
            client.download(f"{server.url}/f", tmp_path / "g")
        client.resume()  # as fetch does once its workers ended: the client serves again
        client.download(f"{server.url}/f", tmp_path / "f")
        assert (tmp_path / "f").read_bytes() == CONTENT
    finally:
        server.state.release.set()
        worker.join()


def test_unreachable_host_names_url_with_hint(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://user:hunter2secret@127.0.0.1:{port}/f"
    with pytest.raises(NetworkError) as info:
        HttpClient(retry=FAST).download(url, tmp_path / "f")
    text = str(info.value) + (info.value.hint or "") + info.value.url
    assert f"http://127.0.0.1:{port}/f" in str(info.value)
    assert "hunter2secret" not in text
    assert "after 3 attempts" in str(info.value) and info.value.hint


def test_tls_trusts_ssl_cert_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    with serve(tls=(cert, key)) as server:
        server.state.files["/f"] = CONTENT
        # A self-signed certificate is not trusted by default, and no retry changes that.
        with pytest.raises(NetworkError, match="not trusted") as info:
            HttpClient(retry=FAST).download(f"{server.url}/f", tmp_path / "f")
        assert info.value.hint and "SSL_CERT_FILE" in info.value.hint
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        HttpClient(retry=FAST).download(f"{server.url}/f", tmp_path / "f")
        assert (tmp_path / "f").read_bytes() == CONTENT
        assert len(server.state.log) == 1  # only the trusted attempt reached HTTP


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="unsupported"):
        HttpClient().download("ftp://example.invalid/f", tmp_path / "f")


def test_local_copy_and_missing_local_file(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(CONTENT)
    dest = tmp_path / "dest"
    dest.write_bytes(b"stale stale stale")
    HttpClient().download(src, dest)
    assert dest.read_bytes() == CONTENT
    HttpClient().download(src.as_uri(), tmp_path / "dest2")
    assert (tmp_path / "dest2").read_bytes() == CONTENT
    with pytest.raises(NetworkError, match="not found"):
        HttpClient().download(tmp_path / "nope", dest)


def test_proxy_from_environment(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.state.files["/f"] = CONTENT
    monkeypatch.setenv("http_proxy", server.url)
    HttpClient(retry=FAST).download("http://pypi.example.invalid/f", tmp_path / "f")
    # A proxy sees the absolute URL in the request line.
    assert server.state.log[0][0] == "http://pypi.example.invalid/f"
    assert (tmp_path / "f").read_bytes() == CONTENT


# --- credentials --------------------------------------------------------------------


def test_index_credentials_are_sent(server: Server, tmp_path: Path) -> None:
    server.state.files["/simple/f"] = CONTENT
    server.state.password = "pw-index"
    creds = index_credentials(
        [IndexConfig("internal", f"{server.url}/simple", username_env="U", password_env="P")],
        {"U": "user", "P": "pw-index"},
    )
    assert creds == [Credential(f"{server.url}/simple", "user", "pw-index")]
    HttpClient(credentials=creds, retry=FAST).download(f"{server.url}/simple/f", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == CONTENT


def test_netrc_from_env_var(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.state.files["/f"] = CONTENT
    server.state.password = "pw-netrc"
    rc = tmp_path / "netrc"
    rc.write_text("machine 127.0.0.1 login user password pw-netrc\n")
    rc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(rc))
    HttpClient(retry=FAST).download(f"{server.url}/f", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == CONTENT


def test_denied_error_does_not_leak_password(server: Server, tmp_path: Path) -> None:
    server.state.files["/f"] = CONTENT
    server.state.password = "right"
    creds = [Credential(server.url, "user", "wrong-TOPSECRET")]
    with pytest.raises(NetworkError, match="access denied") as info:
        HttpClient(credentials=creds, retry=FAST).download(f"{server.url}/f", tmp_path / "f")
    assert "TOPSECRET" not in str(info.value) + str(info.value.to_json())


def test_redirect_to_other_host_drops_credentials(server: Server, tmp_path: Path) -> None:
    with serve() as other:
        other.state.files["/f"] = CONTENT
        # Same port-less host name differs: localhost vs 127.0.0.1 is another origin.
        server.state.redirects["/f"] = other.url.replace("127.0.0.1", "localhost") + "/f"
        creds = [Credential(server.url, "user", "pw-secret")]
        HttpClient(credentials=creds, retry=FAST).download(f"{server.url}/f", tmp_path / "f")
        assert (tmp_path / "f").read_bytes() == CONTENT
        assert server.headers("Authorization")[0] is not None
        assert other.headers("Authorization") == [None]


def test_credentials_match_on_segment_and_origin() -> None:
    client = HttpClient(
        credentials=[
            Credential("https://pypi.example/simple", "a", "pa"),
            Credential("https://pypi.example/simple/private", "b", "pb"),
        ]
    )
    assert client.credentials_for("https://pypi.example/simple/private/x.whl") == ("b", "pb")
    assert client.credentials_for("https://pypi.example/simple/x.whl") == ("a", "pa")
    # Same origin, sibling path (files served beside /simple): the first declared index.
    assert client.credentials_for("https://pypi.example/packages/x.whl") == ("a", "pa")
    assert client.credentials_for("https://PYPI.example:443/simple/x") == ("a", "pa")
    for other in (
        "https://pypi.example.evil.com/simple/x.whl",
        "http://pypi.example/simple/x.whl",  # not over plain http
        "https://pypi.example:8443/simple/x.whl",
        "https://evil.com/https://pypi.example/simple/",
    ):
        assert client.credentials_for(other) is None, other


_SECRET = st.text(alphabet="QWXZqwxz!$%&*+;=~", min_size=8, max_size=20)
_HOST = st.from_regex(r"[a-z]{1,10}(\.[a-z]{2,5}){0,2}", fullmatch=True)


@settings(max_examples=200)
@given(
    user=_SECRET,
    password=_SECRET,
    host=_HOST,
    path=st.from_regex(r"(/[a-z0-9._-]{0,8}){0,4}", fullmatch=True),
)
def test_redact_never_shows_credentials(user: str, password: str, host: str, path: str) -> None:
    from urllib.parse import quote

    url = f"https://{quote(user, safe='')}:{quote(password, safe='')}@{host}{path}"
    shown = redact(url)
    assert password not in shown and quote(password, safe="") not in shown
    assert shown == f"https://{host}{path}"
    assert HttpClient().credentials_for(url) == (user, password)


@settings(max_examples=200)
@given(
    password=_SECRET,
    index_host=_HOST,
    url_host=_HOST,
    path=st.from_regex(r"(/[a-z]{0,5}){0,3}", fullmatch=True),
)
def test_credentials_never_cross_hosts(
    password: str, index_host: str, url_host: str, path: str
) -> None:
    client = HttpClient(credentials=[Credential(f"https://{index_host}/simple", "u", password)])
    creds = client.credentials_for(f"https://{url_host}{path}")
    assert (creds is not None) == (index_host == url_host)

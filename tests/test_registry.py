"""The registry client against a real registry (Debian's docker-registry on 127.0.0.1).

Failures are injected by :class:`registrylib.FaultProxy` in front of the real registry
(503s, a body cut short) or, where the real registry cannot misbehave in the needed way
(a redirect to another host, a token realm on a remote host), by a tiny server here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import threading
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from envship._http import RetryPolicy
from envship.errors import ArtifactError, ImageError, RegistryError
from envship.oci import OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor
from envship.oci import sha256_digest as digest_of
from envship.registry import IO_BLOCK, BlobProgress, RegistryClient
from registrylib import FaultProxy, Registry, free_port, write_random
from userlib import SYSTEM_PY, as_user, world_readable

FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01)
MiB = 1 << 20


def client(host: str, **kwargs: Any) -> RegistryClient:
    kwargs.setdefault("retry", FAST)
    return RegistryClient(host, **kwargs)


@pytest.fixture
def repo() -> str:
    return f"envship-tests/{uuid.uuid4().hex[:12]}"


def blob(data: bytes, media_type: str = OCI_LAYER) -> Descriptor:
    return Descriptor(media_type, digest_of(data), len(data))


def opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def manifest(config: Descriptor, layers: list[Descriptor], note: str = "") -> bytes:
    data: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if note:
        data["annotations"] = {"note": note}
    return json.dumps(data, sort_keys=True).encode()


def push_image(c: RegistryClient, repo: str, blobs: list[bytes], tag: str = "v1") -> str:
    """Push a config (blobs[0]) and layers, then the manifest; return its digest."""
    config = blob(blobs[0], OCI_CONFIG)
    layers = [blob(b) for b in blobs[1:]]
    for descriptor, data in zip([config, *layers], blobs, strict=True):
        c.push_blob(repo, descriptor, opener(data))
    return c.put_manifest(repo, tag, OCI_MANIFEST, manifest(config, layers))


def sample(n: int = 3, size: int = 50_000) -> list[bytes]:
    return [b'{"architecture": "amd64", "os": "linux"}'] + [
        uuid.uuid4().bytes * (size // 16) for _ in range(n - 1)
    ]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return "sha256:" + h.hexdigest()


# -- push and pull ----------------------------------------------------------------------


def test_push_then_pull_gives_the_same_bytes(registry: Registry, repo: str, tmp_path: Path) -> None:
    blobs = sample()
    pusher = client(registry.host)
    digest = push_image(pusher, repo, blobs)
    assert pusher.stats().blobs_uploaded == 3
    assert pusher.stats().bytes_uploaded == sum(map(len, blobs))
    assert pusher.stats().manifests_pushed == 1

    puller = client(registry.host)
    by_tag, data = puller.get_manifest(repo, "v1")
    assert by_tag == Descriptor(OCI_MANIFEST, digest, len(data))
    assert puller.get_manifest(repo, digest) == (by_tag, data)
    assert puller.head_manifest(repo, "v1") == by_tag
    parsed = json.loads(data)
    for i, entry in enumerate([parsed["config"], *parsed["layers"]]):
        descriptor = Descriptor.from_json(entry)
        out = puller.fetch_blob(repo, descriptor, tmp_path / "pulled" / str(i))
        assert out.read_bytes() == blobs[i]
    assert puller.stats().blobs_fetched == 3
    assert puller.stats().bytes_fetched == sum(map(len, blobs))
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == ["0", "1", "2"]


def test_second_push_uploads_nothing(registry: Registry, repo: str) -> None:
    blobs = sample(4)
    first = client(registry.host)
    push_image(first, repo, blobs)
    second = client(registry.host)
    push_image(second, repo, blobs)
    stats = second.stats()
    assert (stats.blobs_existing, stats.blobs_uploaded, stats.bytes_uploaded) == (4, 0, 0)


def test_one_changed_layer_uploads_only_that_layer(registry: Registry, repo: str) -> None:
    blobs = sample(4)
    push_image(client(registry.host), repo, blobs)
    changed = [*blobs[:2], b"a new layer" * 100, blobs[3]]
    again = client(registry.host)
    push_image(again, repo, changed, tag="v2")
    assert again.stats().blobs_uploaded == 1
    assert again.stats().bytes_uploaded == len(changed[2])


def test_mount_across_repositories(registry: Registry, repo: str, tmp_path: Path) -> None:
    data = b"shared layer " * 5000
    c = client(registry.host)
    assert c.push_blob(repo + "/base", blob(data), opener(data)) == "uploaded"
    events: list[BlobProgress] = []
    mounter = client(registry.host, progress=events.append)
    assert mounter.push_blob(
        repo + "/app", blob(data), opener(data), mount_from=repo + "/base"
    ) == ("mounted")
    assert mounter.stats().bytes_uploaded == 0
    assert [e.action for e in events] == ["mounted"]
    assert mounter.blob_exists(repo + "/app", blob(data).digest)
    out = mounter.fetch_blob(repo + "/app", blob(data), tmp_path / "b")
    assert out.read_bytes() == data


def test_mount_from_a_repository_without_the_blob_falls_back_to_upload(
    registry: Registry, repo: str, registry_proxy: FaultProxy
) -> None:
    data = b"not in the source " * 3000
    c = client(f"http://{registry_proxy.host}")
    assert c.push_blob(repo + "/b", blob(data), opener(data), mount_from=repo + "/a") == "uploaded"
    posts = [p for m, p, _ in registry_proxy.log if m == "POST"]
    assert len(posts) == 1 and "mount=" in posts[0]  # the 202 session was used, not a new one
    assert c.stats().bytes_uploaded == len(data)
    assert c.blob_exists(repo + "/b", blob(data).digest)


def test_small_blob_is_one_streamed_put(registry_proxy: FaultProxy, repo: str) -> None:
    data = b"small" * 1000
    c = client(f"http://{registry_proxy.host}", chunk_size=MiB)
    assert c.push_blob(repo, blob(data), opener(data)) == "uploaded"
    assert registry_proxy.requests("PATCH") == []
    (put,) = registry_proxy.requests("PUT", "/blobs/uploads/")
    assert put["Content-Length"] == str(len(data))


class RecordingFile(io.RawIOBase):
    """A file that records the size of every read it serves."""

    def __init__(self, path: Path, reads: list[int]) -> None:
        self._f = path.open("rb")
        self.reads = reads

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        self.reads.append(size)
        return self._f.read(size)

    def close(self) -> None:
        self._f.close()
        super().close()


def traced_peak(action: Callable[[], object]) -> int:
    """Peak bytes Python allocated (in every thread) while ``action`` ran."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_big_blob_goes_up_in_chunks_with_bounded_memory(
    registry: Registry, registry_proxy: FaultProxy, repo: str, tmp_path: Path
) -> None:
    size, chunk = 64 * MiB, 8 * MiB
    path = write_random(tmp_path / "big", size)
    descriptor = Descriptor(OCI_LAYER_GZIP, file_sha256(path), size)
    reads: list[int] = []
    proxied = client(f"http://{registry_proxy.host}", chunk_size=chunk)
    status = proxied.push_blob(repo, descriptor, lambda: RecordingFile(path, reads))  # type: ignore[arg-type,return-value]
    assert status == "uploaded"
    assert 0 < max(reads) <= IO_BLOCK < chunk
    assert sum(reads) == size and proxied.stats().bytes_uploaded == size
    ranges = [h["Content-Range"] for h in registry_proxy.requests("PATCH")]
    assert ranges == [f"{i}-{i + chunk - 1}" for i in range(0, size, chunk)]
    (commit,) = registry_proxy.requests("PUT", "/blobs/uploads/")
    assert commit["Content-Length"] == "0"

    # Memory is measured without the proxy, whose threads tracemalloc would count too.
    direct = client(registry.host, chunk_size=chunk)
    direct.blob_exists(repo, descriptor.digest)  # connect outside the measurement
    peak = traced_peak(lambda: direct.push_blob(repo + "/2", descriptor, lambda: path.open("rb")))
    assert peak < 3 * IO_BLOCK, f"peak Python memory {peak} bytes while pushing {size}"
    peak = traced_peak(lambda: direct.fetch_blob(repo + "/2", descriptor, tmp_path / "back"))
    assert peak < 3 * IO_BLOCK, f"peak Python memory {peak} bytes while pulling {size}"
    assert file_sha256(tmp_path / "back") == descriptor.digest


def test_progress_reports_every_block_up_to_the_total(registry: Registry, repo: str) -> None:
    data = b"p" * (3 * IO_BLOCK + 5)
    events: list[BlobProgress] = []
    c = client(registry.host, progress=events.append, chunk_size=2 * IO_BLOCK)
    c.push_blob(repo, blob(data), opener(data))
    c.push_blob(repo, blob(data), opener(data))
    done = [e.done for e in events if e.action == "upload"]
    assert done == sorted(done) and done[-1] == len(data) and len(done) == 4
    assert events[-1] == BlobProgress("exists", repo, blob(data).digest, len(data), len(data))


# -- blobs pulled into a shared store ---------------------------------------------------------


@pytest.fixture(name="world_readable")
def _world_readable() -> Iterator[Path]:
    with world_readable("envship-registry-") as top:
        yield top


@pytest.mark.parametrize(
    ("folder_mode", "blob_mode"),
    [(0o755, 0o644), (0o2775, 0o664)],
    ids=["store", "group-shared-store"],
)
def test_a_pulled_blob_is_readable_by_every_user_of_the_store(
    registry: Registry, repo: str, world_readable: Path, folder_mode: int, blob_mode: int
) -> None:
    """A base pulled by one user is used by the next one's build and linked into outputs:
    never mkstemp's 0600, whatever the puller's umask; group-writable in a store shared
    with its group (setgid and group-writable folders), as the store's other files."""
    data = uuid.uuid4().bytes * 4096
    descriptor = blob(data)
    c = client(registry.host)
    c.push_blob(repo, descriptor, opener(data))
    blobs = world_readable / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    os.chown(blobs, 0, 100)
    blobs.chmod(folder_mode)
    dest = blobs / descriptor.digest.removeprefix("sha256:")
    old = os.umask(0o077)  # a private umask must not make a private blob
    try:
        c.fetch_blob(repo, descriptor, dest)
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == blob_mode
    other = as_user(dest.parent, "sha256sum", str(dest))
    assert other.returncode == 0, other.stderr
    assert other.stdout.split()[0] == descriptor.digest.removeprefix("sha256:")


# What uid 1000 runs: pull one blob into DEST, print the error as JSON (or "ok").
PULL_AS_USER = """
import json, sys
from pathlib import Path
from envship.errors import EnvshipError
from envship.oci import Descriptor
from envship.registry import RegistryClient
host, repo, media_type, digest, size, dest = sys.argv[1:]
try:
    RegistryClient(host).fetch_blob(repo, Descriptor(media_type, digest, int(size)), Path(dest))
except EnvshipError as exc:
    print(json.dumps(exc.to_json()))
else:
    print("ok")
"""


@pytest.mark.parametrize("missing", [False, True], ids=["blobs-folder", "store-folder"])
def test_a_pull_into_a_store_this_user_cannot_write_says_whose_it_is(
    registry: Registry, repo: str, world_readable: Path, missing: bool
) -> None:
    """A store made by root (0755), used by uid 1000: its image cache cannot take the
    blob, and the error names the folder, its owner and mode, and the remedy; nothing is
    written. ``missing``: the blobs folder is not there yet and cannot be made."""
    data = uuid.uuid4().bytes * 64
    descriptor = blob(data)
    client(registry.host).push_blob(repo, descriptor, opener(data))
    store = world_readable / "store"
    blobs = store / "images" / "blobs" / "sha256"
    (store if missing else blobs).mkdir(parents=True)
    dest = blobs / descriptor.digest.removeprefix("sha256:")
    args = [registry.host, repo, descriptor.media_type, descriptor.digest, str(descriptor.size)]
    done = as_user(world_readable, SYSTEM_PY, "-c", PULL_AS_USER, *args, str(dest))
    assert done.returncode == 0, done.stderr
    error = json.loads(done.stdout)
    assert error["error"] == "permission"
    assert error["message"].startswith("permission denied: ")
    assert error["message"].endswith(f"(uid 1000) may not write to {blobs}")
    refusing = store if missing else blobs
    (problem,) = error["problems"]
    assert problem["where"] == str(refusing)
    assert "owned by root" in problem["message"]
    assert problem["message"].endswith("(uid 1000) cannot create files in it")
    assert "ENVSHIP_STORE" in error["hint"]
    assert not dest.exists() and (missing or list(blobs.iterdir()) == [])


# -- bad content ---------------------------------------------------------------------------


def test_tampered_blob_is_refused_and_nothing_is_written(
    registry: Registry, repo: str, tmp_path: Path
) -> None:
    data = uuid.uuid4().bytes * 4096
    descriptor = blob(data)
    c = client(registry.host)
    c.push_blob(repo, descriptor, opener(data))
    stored = registry.blob_file(descriptor.digest)
    raw = bytearray(stored.read_bytes())
    raw[1000] ^= 0xFF
    stored.write_bytes(bytes(raw))  # same size, other bytes
    with pytest.raises(ArtifactError) as caught:
        c.fetch_blob(repo, descriptor, tmp_path / "out" / "layer")
    assert caught.value.artifact == f"{registry.host}/{repo}@{descriptor.digest}"
    assert caught.value.expected == descriptor.digest
    assert caught.value.actual == digest_of(bytes(raw))
    assert list((tmp_path / "out").iterdir()) == []


def test_blob_longer_than_its_descriptor_is_refused(
    registry: Registry, repo: str, tmp_path: Path
) -> None:
    data = b"longer" * 1000
    c = client(registry.host)
    c.push_blob(repo, blob(data), opener(data))
    short = Descriptor(OCI_LAYER, blob(data).digest, len(data) - 1)
    with pytest.raises(ArtifactError, match="larger than"):
        c.fetch_blob(repo, short, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_tampered_manifest_is_refused(registry: Registry, repo: str) -> None:
    config = blob(b"{}", OCI_CONFIG)
    c = client(registry.host)
    c.push_blob(repo, config, opener(b"{}"))
    data = manifest(config, [], note="aaaa")
    digest = c.put_manifest(repo, "v1", OCI_MANIFEST, data)
    stored = registry.blob_file(digest)
    stored.write_bytes(stored.read_bytes().replace(b"aaaa", b"aaab"))
    for reference in (digest, "v1"):
        with pytest.raises(ArtifactError) as caught:
            c.get_manifest(repo, reference)
        assert caught.value.expected == digest
        assert caught.value.actual == digest_of(data.replace(b"aaaa", b"aaab"))


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (b"other bytes, of the same length!!", "refused the bytes"),
        (b"too short", "ended after 9 bytes"),
    ],
    ids=["wrong-bytes", "short"],
)
def test_pushing_bytes_that_do_not_match_the_descriptor(
    registry: Registry, repo: str, source: bytes, match: str
) -> None:
    descriptor = blob(b"the bytes the descriptor promises")
    with pytest.raises(ArtifactError, match=match) as caught:
        client(registry.host).push_blob(repo, descriptor, opener(source))
    assert descriptor.digest in str(caught.value)


def test_missing_manifest_and_blob(registry: Registry, repo: str, tmp_path: Path) -> None:
    c = client(registry.host)
    assert c.head_manifest(repo, "nope") is None
    assert not c.blob_exists(repo, digest_of(b"absent"))
    with pytest.raises(RegistryError) as caught:
        c.get_manifest(repo, "nope")
    assert caught.value.status == 404 and "MANIFEST_UNKNOWN" in str(caught.value)
    with pytest.raises(RegistryError) as caught:
        c.fetch_blob(repo, blob(b"absent"), tmp_path / "x")
    assert caught.value.status == 404
    assert list(tmp_path.iterdir()) == []


def test_manifest_naming_a_missing_blob_is_refused(registry: Registry, repo: str) -> None:
    data = manifest(blob(b"{}", OCI_CONFIG), [blob(b"never pushed")])
    with pytest.raises(RegistryError) as caught:
        client(registry.host).put_manifest(repo, "v1", OCI_MANIFEST, data)
    assert caught.value.status == 400 and "MANIFEST_BLOB_UNKNOWN" in str(caught.value)


@pytest.mark.parametrize(
    ("repository", "reference"),
    [("UPPER/case", "v1"), ("a/../b", "v1"), ("a", "bad tag"), ("a", "sha256:1234")],
)
def test_invalid_names_are_refused_before_any_request(repository: str, reference: str) -> None:
    c = client(f"127.0.0.1:{free_port()}")
    with pytest.raises(ImageError):
        c.get_manifest(repository, reference)


# -- transient failures ------------------------------------------------------------------------


def test_manifest_503_twice_then_success(registry_proxy: FaultProxy, repo: str) -> None:
    c = client(f"http://{registry_proxy.host}")
    digest = push_image(c, repo, sample(2))
    registry_proxy.fail("GET", "/manifests/", times=2)
    descriptor, _ = c.get_manifest(repo, "v1")
    assert descriptor.digest == digest
    assert len(registry_proxy.injected) == 2
    assert len(registry_proxy.requests("GET", "/manifests/")) == 3


class Pipe(io.BytesIO):
    """A source that cannot seek: a resume must reopen it and read up to the offset."""

    opened = 0

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        Pipe.opened += 1

    def seekable(self) -> bool:
        return False


@pytest.mark.parametrize("source", [io.BytesIO, Pipe], ids=["seekable", "pipe"])
def test_chunk_503_resumes_from_the_registry_range(
    registry_proxy: FaultProxy, repo: str, tmp_path: Path, source: type[io.BytesIO]
) -> None:
    data = uuid.uuid4().bytes * (5 * IO_BLOCK // 16)
    registry_proxy.fail("PATCH", "/blobs/uploads/", times=1)
    c = client(f"http://{registry_proxy.host}", chunk_size=2 * IO_BLOCK)
    Pipe.opened = 0
    assert c.push_blob(repo, blob(data), lambda: source(data)) == "uploaded"
    assert Pipe.opened == (2 if source is Pipe else 0)
    # The refused chunk went out twice; the registry's Range said where to go on.
    assert c.stats().bytes_uploaded == len(data) + 2 * IO_BLOCK
    assert len(registry_proxy.requests("GET", "/blobs/uploads/")) == 1
    assert c.fetch_blob(repo, blob(data), tmp_path / "b").read_bytes() == data


def test_monolithic_put_503_restarts_with_a_new_session(
    registry_proxy: FaultProxy, repo: str
) -> None:
    data = b"m" * 10_000
    registry_proxy.fail("PUT", "/blobs/uploads/", times=2)
    c = client(f"http://{registry_proxy.host}")
    assert c.push_blob(repo, blob(data), opener(data)) == "uploaded"
    assert len(registry_proxy.requests("POST", "/blobs/uploads/")) == 3
    assert c.blob_exists(repo, blob(data).digest)


def test_blob_download_cut_short_resumes_with_range(
    registry_proxy: FaultProxy, repo: str, tmp_path: Path
) -> None:
    data = uuid.uuid4().bytes * (3 * IO_BLOCK // 16)
    c = client(f"http://{registry_proxy.host}")
    c.push_blob(repo, blob(data), opener(data))
    registry_proxy.cut("GET", "/blobs/sha256:", after=IO_BLOCK + 100)
    out = c.fetch_blob(repo, blob(data), tmp_path / "b")
    assert out.read_bytes() == data
    gets = registry_proxy.requests("GET", "/blobs/sha256:")
    assert [g.get("Range") for g in gets] == [None, f"bytes={IO_BLOCK + 100}-"]
    assert c.stats().bytes_fetched == len(data)


def test_registry_failing_every_time_gives_up_with_the_status(
    registry_proxy: FaultProxy, repo: str
) -> None:
    c = client(f"http://{registry_proxy.host}")
    c.blob_exists(repo, digest_of(b"x"))  # connect first: the ping is not what fails
    registry_proxy.fail("GET", "/manifests/", times=100, status=503)
    with pytest.raises(RegistryError) as caught:
        c.get_manifest(repo, "v1")
    assert caught.value.status == 503
    assert "after 3 attempts" in str(caught.value)
    assert len(registry_proxy.injected) == 3


def test_a_blob_check_failing_every_time_names_the_registry(
    registry_proxy: FaultProxy, repo: str
) -> None:
    c = client(f"http://{registry_proxy.host}")
    c.blob_exists(repo, digest_of(b"x"))  # connect first: the ping is not what fails
    registry_proxy.fail("HEAD", "/blobs/sha256:", times=100, status=503)
    with pytest.raises(RegistryError) as caught:
        c.blob_exists(repo, digest_of(b"y"))
    assert caught.value.message == (
        f"cannot check blob {repo}@{digest_of(b'y')} at {registry_proxy.host}: HTTP 503 "
        "(after 3 attempts)"
    )


def test_unreachable_registry_fails_after_retries() -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RegistryError) as caught:
        client(host).get_manifest("library/x", "v1")
    error = caught.value
    assert error.registry == host and error.status is None
    assert "after 3 attempts" in str(error) and "refused" in str(error).lower()
    assert f"reach {host}: " in error.message  # the message alone names the registry
    assert error.exit_code == 3


# -- plain HTTP policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "registry_url",
    ["http://registry.example:5000", "http://10.1.2.3:5000", "http://127.example.com"],
)
def test_plain_http_to_a_remote_host_is_refused_before_connecting(registry_url: str) -> None:
    # Raised by the constructor, which opens no connection: nothing can have been sent.
    with pytest.raises(RegistryError) as caught:
        RegistryClient(registry_url)
    assert "--insecure" in (caught.value.hint or "")
    assert caught.value.registry == registry_url.removeprefix("http://")
    RegistryClient(registry_url, insecure=True)  # allowed when asked for


@pytest.mark.parametrize("host", ["localhost", "127.0.0.5", "[::1]", "LOCALHOST"])
def test_plain_http_to_loopback_is_allowed(host: str) -> None:
    assert RegistryClient(f"http://{host}:5000").registry == f"{host}:5000".lower()


@contextmanager
def tiny_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_token_realm_on_a_remote_plain_http_host_is_refused() -> None:
    class Challenging(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(401)
            realm = 'Bearer realm="http://tokens.example/token",service="s"'
            self.send_header("WWW-Authenticate", realm)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with tiny_server(Challenging) as host, pytest.raises(RegistryError) as caught:
        client(f"http://{host}").get_manifest("a", "v1")
    assert "refusing plain HTTP to tokens.example" in str(caught.value)


def test_redirect_to_another_host_carries_no_credentials(tmp_path: Path) -> None:
    data = b"served by the storage host"
    seen: list[str | None] = []

    class Storage(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with tiny_server(Storage) as storage:

        class Registry(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.headers.get("Authorization") is None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="r"')
                elif self.path.startswith("/v2/a/blobs/"):
                    self.send_response(307)
                    self.send_header("Location", f"http://{storage}/bucket/blob?sig=1")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET

        config = tmp_path / "config.json"
        with tiny_server(Registry) as host:
            config.write_text(json.dumps({"auths": {host: {"username": "u", "password": "p"}}}))
            c = client(f"http://{host}", docker_config=config)
            out = c.fetch_blob("a", blob(data), tmp_path / "b")
    assert out.read_bytes() == data
    assert seen == [None]


def test_parallel_pushes_share_one_client(registry: Registry, repo: str) -> None:
    blobs = [uuid.uuid4().bytes * 1000 for _ in range(8)]
    c = client(registry.host)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda b: c.push_blob(repo, blob(b), opener(b)), blobs + blobs))
    assert statuses.count("uploaded") + statuses.count("exists") == 16
    assert statuses.count("uploaded") >= 8
    assert c.stats().bytes_uploaded == statuses.count("uploaded") * 16000
    assert all(c.blob_exists(repo, blob(b).digest) for b in blobs)


# -- HTTPS -------------------------------------------------------------------------------------


def test_https_is_used_when_the_certificate_is_trusted(
    tls_registry: Registry, repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.root.parent / "tls.pem"))
    c = client(tls_registry.host)
    assert c.base_url() == f"https://{tls_registry.host}"
    data = b"over TLS" * 100
    c.push_blob(repo, blob(data), opener(data))
    assert c.fetch_blob(repo, blob(data), tmp_path / "b").read_bytes() == data


def test_untrusted_certificate_is_refused_unless_insecure(
    tls_registry: Registry, repo: str
) -> None:
    with pytest.raises(RegistryError) as caught:
        client(tls_registry.host).blob_exists(repo, digest_of(b"x"))
    assert f"TLS certificate of {tls_registry.host} not trusted" in str(caught.value)
    assert "SSL_CERT_FILE" in (caught.value.hint or "")
    insecure = client(tls_registry.host, insecure=True)
    assert insecure.base_url() == f"https://{tls_registry.host}"
    assert not insecure.blob_exists(repo, digest_of(b"x"))

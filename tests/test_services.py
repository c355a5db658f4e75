"""The test services themselves: a Docker engine that runs a container of the bookworm
root with no network, a throw-away engine that starts and stops cleanly, and the cache
that builds a root once, atomically, for concurrent sessions."""

from __future__ import annotations

import os
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from serviceslib import DockerEngine, _own_engine, cached_build, is_bookworm_root

# -- the engine and a container of the bookworm root -------------------------------------


def test_engine_answers(docker_engine: DockerEngine) -> None:
    out = docker_engine.docker("version", "--format", "{{.Server.Os}}").stdout
    assert out.strip() == "linux"


@pytest.fixture(scope="module")
def bookworm_image(docker_engine: DockerEngine, bookworm_root: Path) -> Iterator[str]:
    """The whole bookworm root ``docker import``-ed, streamed as a tar (never on disk)."""
    tag = f"envship-test/bookworm:{uuid.uuid4().hex[:12]}"
    try:
        proc = subprocess.Popen(
            ["docker", "import", "-", tag],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=docker_engine.env(),
        )
        assert proc.stdin is not None
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(bookworm_root, arcname=".")
        _out, err = proc.communicate(timeout=300)  # closes stdin: the end of the tar
        assert proc.returncode == 0, err.decode(errors="replace")
        yield tag
    finally:  # also after a failed import that may have stored the image anyway
        if docker_engine.docker("image", "inspect", tag, check=False).returncode == 0:
            docker_engine.docker("rmi", tag)


RUNS = [
    pytest.param(["/usr/bin/python3", "-c", "print(42)"], "42", id="print"),
    pytest.param(
        ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        "3.11",
        id="python-3.11",
    ),
    pytest.param(
        ["/usr/bin/python3", "-c", "import os; print(sorted(os.listdir('/sys/class/net')))"],
        "['lo']",
        id="no-network",
    ),
    pytest.param(["/usr/bin/python3", "-m", "venv", "--help"], "usage: venv", id="venv"),
]


@pytest.mark.parametrize(("command", "expected"), RUNS)
def test_container_of_bookworm_root(
    docker_engine: DockerEngine, bookworm_image: str, command: list[str], expected: str
) -> None:
    out = docker_engine.docker("run", "--rm", "--network", "none", bookworm_image, *command)
    assert out.stdout.strip().startswith(expected)


def test_own_engine_starts_and_stops() -> None:
    with _own_engine() as engine:
        assert engine.own
        base = Path(engine.host.removeprefix("unix://")).parent
        assert len(engine.host) < 108  # sun_path, with room for containerd's own sockets
        info = engine.docker("info", "--format", "{{.DockerRootDir}}").stdout.strip()
        assert info == f"{base}/root"
        pid = int((base / "docker.pid").read_text())
        assert os.path.exists(f"/proc/{pid}")
    assert not base.exists()
    assert not os.path.exists(f"/proc/{pid}")


# -- the cache: one build, atomic, shared ------------------------------------------------


def _complete(root: Path) -> bool:
    return (root / "done").is_file()


class Builder:
    """Builds a tiny 'root'; counts its calls; can be told to fail half-way."""

    def __init__(self, *, fail: bool = False, finish: bool = True) -> None:
        self.fail = fail
        self.finish = finish
        self.calls = 0
        self.lock = threading.Lock()
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, tmp: Path) -> None:
        with self.lock:
            self.calls += 1
        (tmp / "half").write_text("x")
        self.started.set()
        self.release.wait()
        if self.fail:
            raise RuntimeError("interrupted")
        if self.finish:
            (tmp / "done").write_text("x")


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.glob(f"{dest.name}.tmp-*"))


def test_cache_builds_once(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "root"
    build = Builder()
    assert cached_build(dest, build, _complete) == dest
    assert cached_build(dest, build, _complete) == dest
    assert build.calls == 1
    assert _complete(dest)
    assert _leftovers(dest) == []
    assert (dest.stat().st_mode & 0o777) == 0o755


@pytest.mark.parametrize(
    ("builder", "error"),
    [
        pytest.param(Builder(fail=True), RuntimeError, id="build-raises"),
        pytest.param(Builder(finish=False), pytest.fail.Exception, id="build-incomplete"),
    ],
)
def test_cache_failed_build_leaves_nothing(
    tmp_path: Path, builder: Builder, error: type[BaseException]
) -> None:
    dest = tmp_path / "root"
    with pytest.raises(error):
        cached_build(dest, builder, _complete)
    assert not dest.exists()
    assert _leftovers(dest) == []


def test_cache_removes_a_killed_build(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    stale = tmp_path / "root.tmp-killed"  # what a SIGKILLed build leaves behind
    (stale / "usr").mkdir(parents=True)
    build = Builder()
    cached_build(dest, build, _complete)
    assert build.calls == 1
    assert _leftovers(dest) == []
    assert _complete(dest)


def test_cache_refuses_a_foreign_incomplete_root(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    (dest / "usr").mkdir(parents=True)
    with pytest.raises(pytest.fail.Exception, match="incomplete"):
        cached_build(dest, Builder(), _complete)
    assert (dest / "usr").is_dir()


def test_cache_concurrent_sessions_build_once(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    build = Builder()
    build.release.clear()  # the first builder holds the lock until the others queue up
    results: list[Path] = []
    errors: list[BaseException] = []

    def session() -> None:
        try:
            results.append(cached_build(dest, build, _complete))
        except BaseException as exc:  # reported below: a thread cannot fail the test
            errors.append(exc)

    threads = [threading.Thread(target=session) for _ in range(4)]
    for t in threads:
        t.start()
    assert build.started.wait(60)
    assert not dest.exists()  # mid-build: nothing under the final name yet
    build.release.set()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == [dest] * 4
    assert build.calls == 1
    assert _leftovers(dest) == []


def test_bookworm_root_is_complete(bookworm_root: Path) -> None:
    assert is_bookworm_root(bookworm_root)

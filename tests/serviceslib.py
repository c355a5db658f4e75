"""Fixtures for the real services the image tests need: a Docker engine and a Debian root.

``docker_engine`` uses the engine ``DOCKER_HOST`` names when it answers, and otherwise
starts a throw-away ``dockerd`` of its own: no bridge and no iptables rules (DESIGN.md:
this machine must send no traffic to private ranges; containers use ``--network none``
or ``host``), its own socket, data and exec roots, stopped by its pid at session end.

``bookworm_root`` is a Debian 12 root with Python 3.11 from ``debootstrap``, built once
and cached between sessions. It is built in a temporary folder beside the cache entry
and renamed into place under a lock, so concurrent sessions build it once and an
interrupted build never leaves a half root under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from envship import _flock

__all__ = [
    "BOOKWORM_PACKAGES",
    "DockerEngine",
    "bookworm_root",
    "cached_build",
    "docker_engine",
    "is_bookworm_root",
]

APT_HINT = (
    "install it: apt-get install -y --no-install-recommends "
    "docker.io docker-registry debootstrap apache2-utils (scripts/test does this as root)"
)
BOOKWORM_PACKAGES = ("python3", "python3-venv", "ca-certificates")
ENGINE_START_TIMEOUT = 60.0
ENGINE_STOP_TIMEOUT = 30.0
DEBOOTSTRAP_TIMEOUT = 1800.0


# -- the Docker engine ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DockerEngine:
    """A Docker engine that answers on ``host`` (a ``DOCKER_HOST`` value)."""

    host: str
    own: bool  # started by this session (a throw-away engine) rather than found

    def env(self) -> dict[str, str]:
        """The environment for a ``docker`` client talking to this engine."""
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS`` against this engine; ``check`` fails the test on non-zero."""
        result = _docker(self.host, args, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(
                f"docker {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stderr.strip()}\n{result.stdout.strip()}"[-4000:],
                pytrace=False,
            )
        return result


def _docker(
    host: str, args: tuple[str, ...], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        env={**os.environ, "DOCKER_HOST": host},
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )


def _answers(host: str) -> bool:
    try:
        return _docker(host, ("info", "--format", "{{.ID}}"), timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _require(command: str) -> str:
    # dockerd and debootstrap live in /usr/sbin, which a non-root PATH may lack.
    path = shutil.which(command, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if path is None:
        pytest.fail(f"{command} is not installed; {APT_HINT}", pytrace=False)
    return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets dockerd stop its containerd and unmount; SIGKILL only if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(ENGINE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # dockerd runs in a session of its own (start_new_session), so its process
            # group holds only what this fixture started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo, field 5)."""
    prefix = str(path.resolve())
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


@contextlib.contextmanager
def _own_engine() -> Iterator[DockerEngine]:
    dockerd = _require("dockerd")
    _require("docker")
    if os.geteuid() != 0:
        pytest.fail(
            "no Docker engine answers and starting dockerd needs root",
            pytrace=False,
        )
    # A short folder in /tmp: the engine's unix sockets (its API socket, containerd's)
    # must stay under the 108-byte sun_path limit, which pytest's tmp paths can exceed.
    base = Path(tempfile.mkdtemp(prefix="envship-dockerd-", dir="/tmp"))
    config = base / "daemon.json"
    config.write_text("{}\n")  # ignore /etc/docker/daemon.json: it may set hosts or a bridge
    host = f"unix://{base}/docker.sock"
    log = base / "dockerd.log"
    command = [
        dockerd,
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        f"--config-file={config}",
        f"--data-root={base}/root",
        f"--exec-root={base}/exec",
        f"--pidfile={base}/docker.pid",
        f"--host={host}",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + ENGINE_START_TIMEOUT
        while not _answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                state = f"exited {proc.returncode}" if proc.poll() is not None else "no answer"
                pytest.fail(
                    f"dockerd did not start ({state} within {ENGINE_START_TIMEOUT:.0f} s); "
                    f"log {log}:\n{_tail(log)}",
                    pytrace=False,
                )
            time.sleep(0.2)
        yield DockerEngine(host, own=True)
    finally:
        _stop(proc)
        left = _mounts_under(base)
        if left:  # never delete through a mount: report it instead
            raise RuntimeError(f"dockerd left mounts under {base}: {left}")
        shutil.rmtree(base)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A Docker engine that answers: ``$DOCKER_HOST``'s, or a throw-away one of our own."""
    host = os.environ.get("DOCKER_HOST")
    if host and shutil.which("docker") and _answers(host):
        yield DockerEngine(host, own=False)
        return
    with _own_engine() as engine:
        yield engine


# -- the Debian bookworm root -----------------------------------------------------------


def is_bookworm_root(root: Path) -> bool:
    """Whether ``root`` holds what the tests rely on: Python 3.11 with venv and ensurepip."""
    return (
        (root / "usr/bin/python3.11").is_file()
        and (root / "usr/lib/python3.11/venv/__init__.py").is_file()
        and any((root / "usr/share/python-wheels").glob("pip-*.whl"))
    )


def _remove_stale(path: Path) -> None:
    mounts = _mounts_under(path)
    if mounts:  # debootstrap mounts /proc and /sys inside its target while it runs
        pytest.fail(
            f"an interrupted build left mounts under {path}: {', '.join(mounts)}; "
            "unmount them, then remove the folder",
            pytrace=False,
        )
    shutil.rmtree(path)


def cached_build(
    dest: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]
) -> Path:
    """``dest``, built by ``build(tmp)`` once and renamed into place.

    The build runs in ``dest.name + ".tmp-*"`` beside ``dest`` while holding
    ``dest.name + ".lock"``; whoever waited on that lock finds ``dest`` complete and
    returns it. Temporary folders found while holding the lock were left by an
    interrupted build (nobody else can be building) and are removed first.
    """
    if complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _flock.locked(dest.parent / f"{dest.name}.lock"):
        if complete(dest):
            return dest
        if dest.exists():
            pytest.fail(
                f"{dest} exists but is incomplete (not made by this fixture); remove it",
                pytrace=False,
            )
        for stale in sorted(dest.parent.glob(f"{dest.name}.tmp-*")):
            _remove_stale(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-", dir=dest.parent))
        try:
            build(tmp)
            if not complete(tmp):
                pytest.fail(f"the build of {dest.name} finished incomplete", pytrace=False)
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the root from other users
            os.rename(tmp, dest)
        except BaseException:
            # Left in place if the build left mounts in it; the next build reports them.
            if tmp.exists() and not _mounts_under(tmp):
                shutil.rmtree(tmp)
            raise
    return dest


def _debootstrap(target: Path) -> None:
    debootstrap = _require("debootstrap")
    if os.geteuid() != 0:
        pytest.fail("debootstrap needs root to build the bookworm root", pytrace=False)
    log = target.parent / f"{target.name}.log"
    with open(log, "wb") as out:
        result = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BOOKWORM_PACKAGES)}",
                "bookworm",
                str(target),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=DEBOOTSTRAP_TIMEOUT,
            check=False,
        )
    if result.returncode != 0:
        pytest.fail(f"debootstrap exited {result.returncode}:\n{_tail(log)}", pytrace=False)
    log.unlink()


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


@pytest.fixture(scope="session")
def bookworm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Debian 12 root with Python 3.11 (read-only for tests: it is shared)."""
    cache = Path(os.environ.get("ENVSHIP_TEST_CACHE") or "/var/cache/envship-tests")
    dest = cache / "bookworm-root"
    if is_bookworm_root(dest):
        return dest
    if not _writable(cache):
        dest = tmp_path_factory.mktemp("bookworm") / "bookworm-root"
    return cached_build(dest, _debootstrap, is_bookworm_root)

"""``envship.fetch`` against a real HTTP index on 127.0.0.1 (see indexlib.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from packaging.utils import parse_sdist_filename, parse_wheel_filename

import envship._http
from disklib import MIB, SmallDisk
from envship._http import HttpClient, RetryPolicy
from envship.errors import (
    ArtifactError,
    EnvshipError,
    InvalidLockError,
    NetworkError,
    StoreError,
)
from envship.fetch import FetchResult, fetch
from envship.index import export_index
from envship.lockfile import Artifact, LockFile
from envship.store import Store, sha256_file
from indexlib import IndexServer, serve, write_simple_index
from test_install import build_huge

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

X86 = "gamma-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
ARM = "gamma-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
BETA = "beta-1.0-py3-none-any.whl"
WHEELS = ("alpha-1.0-py3-none-any.whl", BETA, X86, ARM, "tool-1.0-py3-none-any.whl")
TARGETS = [
    {"name": n, "platform": n, "python": "3.11", "glibc": "2.28", "variant": "cpu"}
    for n in ("linux-x86_64", "linux-aarch64")
]
FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_lock(
    lock_path: Path,
    files: Iterable[Path],
    *,
    base_url: str | None = None,
    sizes: bool = True,
    targets: Sequence[dict[str, str]] = TARGETS,
    groups: Mapping[str, str] | None = None,
) -> Path:
    """A valid PEP 751 lock for ``files``: by URL under ``base_url``, else by relative path.

    ``groups`` puts packages (by name) into dependency groups, as ``envship lock`` does.
    """
    packages: dict[tuple[str, str], dict[str, Any]] = {}
    for f in files:
        if f.name.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(f.name)
        else:
            name, version = parse_sdist_filename(f.name)
        entry: dict[str, Any] = {"name": f.name, "hashes": {"sha256": sha256_of(f)}}
        if base_url is not None:
            entry["url"] = f"{base_url}/files/{f.name}"
        else:
            entry["path"] = os.path.relpath(f, lock_path.parent)
        if sizes:
            entry["size"] = f.stat().st_size
        pkg = packages.setdefault((name, str(version)), {"name": name, "version": str(version)})
        if groups and name in groups:
            pkg["marker"] = f"'{groups[name]}' in dependency_groups"
        if f.name.endswith(".whl"):
            pkg.setdefault("wheels", []).append(entry)
        else:
            pkg["sdist"] = entry
    data: dict[str, Any] = {"lock-version": "1.0", "created-by": "envship-tests"}
    if groups:
        data["dependency-groups"] = sorted(set(groups.values()))
        data["default-groups"] = []
    data["packages"] = list(packages.values())
    data["tool"] = {"envship": {"targets": list(targets)}}
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path.write_text(tomli_w.dumps(data))
    return lock_path


def artifact_named(lock: LockFile, filename: str) -> Artifact:
    return next(a for a in lock.artifacts() if a.filename == filename)


def assert_store_complete(store: Store, lock: LockFile, targets: list[str] | None = None) -> None:
    """Every selected artifact present and verified; no staging or partial leftovers."""
    for artifact in lock.artifacts(targets):
        path = store.path(artifact.sha256)
        assert path.is_file(), artifact.filename
        assert sha256_file(path) == artifact.sha256
    assert list(store.tmp_dir.iterdir()) == []
    assert list(store.partial_dir.iterdir()) == []


@pytest.fixture(autouse=True)
def _no_user_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture
def client() -> HttpClient:
    return HttpClient(retry=FAST, timeout=10)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def lock(tmp_path: Path, index_root: Path, index_server: IndexServer) -> LockFile:
    files = [index_root / "files" / n for n in WHEELS]
    return LockFile.load(write_lock(tmp_path / "pylock.toml", files, base_url=index_server.url))


def test_cold_fetch_downloads_and_verifies_everything(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    result = fetch(lock, store, client=client)
    assert isinstance(result, FetchResult)
    assert result.downloaded == len(WHEELS) and result.reused == 0
    assert result.bytes_downloaded == sum(a.size or 0 for a in lock.artifacts())
    assert {a.artifact.filename for a in result.artifacts} == set(WHEELS)
    assert all(a.downloaded and a.path == store.path(a.artifact.sha256) for a in result.artifacts)
    assert index_server.file_requests() == len(WHEELS)
    assert_store_complete(store, lock)
    # Store files are immutable: a stray write must not corrupt an artifact silently.
    assert all(a.path.stat().st_mode & 0o222 == 0 for a in result.artifacts)


def test_second_fetch_makes_no_request(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    fetch(lock, store, client=client)
    index_server.knobs.requests.clear()
    result = fetch(lock, store, client=client)
    assert sum(index_server.knobs.requests.values()) == 0
    assert result.downloaded == 0 and result.reused == len(WHEELS)
    assert result.bytes_downloaded == 0


def test_transient_503_is_retried(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    index_server.knobs.fail_times[BETA] = 2
    result = fetch(lock, store, client=client)
    assert result.downloaded == len(WHEELS)
    assert index_server.knobs.requests[f"/files/{BETA}"] == 3
    assert_store_complete(store, lock)


def test_permanent_500_names_the_url_after_bounded_attempts(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    index_server.knobs.fail_always.add(BETA)
    with pytest.raises(NetworkError) as info:
        fetch(lock, store, client=client)
    url = f"{index_server.url}/files/{BETA}"
    assert url in str(info.value) and info.value.url == url
    assert "500" in str(info.value)
    assert index_server.knobs.requests[f"/files/{BETA}"] == FAST.attempts
    # The other artifacts verified and stay; the failed one is absent.
    for artifact in lock.artifacts():
        assert store.has(artifact.sha256) == (artifact.filename != BETA)


def test_tampered_file_is_refused_and_deleted(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    index_server.knobs.tamper.add(BETA)
    with pytest.raises(ArtifactError) as info:
        fetch(lock, store, client=client)
    assert BETA in str(info.value) and info.value.artifact == BETA
    assert info.value.exit_code == 4
    # The problem's place names the file; its message does not say it again.
    assert [(p.where, p.message) for p in info.value.problems] == [
        (BETA, "sha256 mismatch, refusing it")
    ]
    beta = next(a for a in lock.artifacts() if a.filename == BETA)
    assert not store.path(beta.sha256).exists()
    assert not list(store.partial_dir.glob(f"{beta.sha256}*"))
    assert list(store.tmp_dir.iterdir()) == []
    assert sum(store.has(a.sha256) for a in lock.artifacts()) == len(WHEELS) - 1


def test_all_failures_reported_at_once(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    index_server.knobs.tamper.add(BETA)
    index_server.knobs.fail_always.add(X86)
    with pytest.raises(EnvshipError) as info:
        fetch(lock, store, client=client)
    err = info.value
    # The gravest failure decides the class (and so the exit code): integrity.
    assert isinstance(err, ArtifactError)
    assert [p.where for p in err.problems] == sorted([BETA, X86])
    assert "500" in err.problems[1].message
    assert not any(p.message.startswith(p.where) for p in err.problems)
    assert err.hint is not None and "3 other artifacts" in err.hint


def test_cut_connection_resumes_with_range(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    index_server.knobs.cut_after[BETA] = 300
    result = fetch(lock, store, client=client)
    assert index_server.knobs.requests[f"/files/{BETA}"] == 2
    # Had the retry started over, the first 300 bytes would have crossed the wire twice.
    assert result.bytes_downloaded == sum(a.size or 0 for a in lock.artifacts())
    assert_store_complete(store, lock)


def test_corrupt_partial_is_redownloaded_once_from_zero(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    beta = next(a for a in lock.artifacts() if a.filename == BETA)
    store.ensure()
    (store.partial_dir / f"{beta.sha256}.part").write_bytes(b"\0" * 300)
    result = fetch(lock, store, client=client)
    assert index_server.knobs.requests[f"/files/{BETA}"] == 2  # resume, then from byte 0
    total = sum(a.size or 0 for a in lock.artifacts())
    assert result.bytes_downloaded == total + (beta.size or 0) - 300
    assert_store_complete(store, lock)


def test_tampered_index_is_not_retried_forever(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    beta = next(a for a in lock.artifacts() if a.filename == BETA)
    store.ensure()
    (store.partial_dir / f"{beta.sha256}.part").write_bytes(b"\0" * 300)
    index_server.knobs.tamper.add(BETA)
    with pytest.raises(ArtifactError, match=re.escape(BETA)):
        fetch(lock, store, client=client)
    assert index_server.knobs.requests[f"/files/{BETA}"] == 2
    assert not store.has(beta.sha256)


def test_targets_selection(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    result = fetch(lock, store, targets=["linux-x86_64"], client=client)
    names = {a.artifact.filename for a in result.artifacts}
    assert X86 in names and ARM not in names
    assert index_server.knobs.requests[f"/files/{ARM}"] == 0
    arm = next(a for a in lock.artifacts() if a.filename == ARM)
    assert not store.has(arm.sha256)


def test_a_full_disk_is_reported_and_a_rerun_completes(
    tmp_path: Path, index_root: Path, client: HttpClient, small_disk: SmallDisk
) -> None:
    # A real disk too small for one of the artifacts: the store's own writes run out.
    files = [index_root / "files" / n for n in WHEELS] + [build_huge(tmp_path / "dist")]
    write_simple_index(tmp_path / "served", files)
    store = Store(small_disk.path / "store")
    small_disk.resize(1 * MIB)
    with serve(tmp_path / "served") as server:
        lock = LockFile.load(write_lock(tmp_path / "pylock.toml", files, base_url=server.url))
        with pytest.raises(StoreError) as info:
            fetch(lock, store, client=client)
        assert not isinstance(info.value, ArtifactError)
        assert info.value.message == f"the disk holding the store {store.root} is full"
        assert info.value.hint is not None and "re-run" in info.value.hint
        # What the huge download got before the disk filled stays, to resume; the hint
        # says where and how much, since that space is the user's to reclaim.
        held = sum(p.stat().st_size for p in store.partial_dir.iterdir())
        assert held > 0
        size = f"{held / MIB:.1f} MiB"
        assert f"partial downloads ({size} in {store.partial_dir}) resume" in info.value.hint
        assert not any(p.is_file() for p in (store.root / "sha256").rglob("*.*"))
        assert list(store.tmp_dir.iterdir()) == []

        small_disk.resize(32 * MIB)
        fetch(lock, store, client=client)
        assert_store_complete(store, lock)


def test_progress_reports_bytes_until_total(
    lock: LockFile, store: Store, client: HttpClient
) -> None:
    calls: list[tuple[int, int, str]] = []
    lock_ = threading.Lock()

    def progress(done: int, total: int, detail: str) -> None:
        with lock_:
            calls.append((done, total, detail))

    fetch(lock, store, client=client, progress=progress)
    total = sum(a.size or 0 for a in lock.artifacts())
    assert calls[0][:2] == (0, total)
    assert calls[-1][:2] == (total, total)
    assert all(0 <= d <= t for d, t, _ in calls)
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    # Every line says what it is about: the plan first, then the files.
    assert calls[0][2] == f"{len(WHEELS)} of {len(WHEELS)} artifacts to download"
    assert {detail for _, _, detail in calls[1:]} <= set(WHEELS)
    calls.clear()
    fetch(lock, store, client=client, progress=progress)
    assert calls == [(total, total, f"all {len(WHEELS)} in the store")]


def test_progress_total_learned_from_content_length(
    tmp_path: Path, index_root: Path, index_server: IndexServer, client: HttpClient, store: Store
) -> None:
    files = [index_root / "files" / n for n in (BETA, "alpha-1.0-py3-none-any.whl")]
    lock = LockFile.load(
        write_lock(tmp_path / "pylock.toml", files, base_url=index_server.url, sizes=False)
    )
    calls: list[tuple[int, int, str]] = []
    fetch(lock, store, client=client, jobs=1, progress=lambda *call: calls.append(call))
    sizes = sorted(f.stat().st_size for f in files)
    total = sum(sizes)
    # Until a download starts its size is unknown: the total is a lower bound, and says so.
    assert calls[0] == (0, 0, "2 of 2 artifacts to download (sizes of 2 not known yet)")
    assert "(sizes of 1 not known yet)" in calls[1][2] and calls[1][1] in sizes
    assert calls[-1][:2] == (total, total) and "not known" not in calls[-1][2]
    assert all(0 <= d <= t <= total for d, t, _ in calls)

    # A warm store counts what it holds by the stored files' sizes.
    calls.clear()
    fetch(lock, store, client=client, progress=lambda *call: calls.append(call))
    assert calls == [(total, total, "all 2 in the store")]


def test_local_paths_relative_to_the_lock(
    tmp_path: Path, index_root: Path, store: Store, client: HttpClient
) -> None:
    project = tmp_path / "project"
    (project / "wheels").mkdir(parents=True)
    src = index_root / "files" / BETA
    (project / "wheels" / BETA).write_bytes(src.read_bytes())
    lock = LockFile.load(write_lock(project / "pylock.toml", [project / "wheels" / BETA]))
    assert lock.artifacts()[0].path == f"wheels/{BETA}"
    result = fetch(lock, store, client=client)
    assert result.downloaded == 1 and result.bytes_downloaded == src.stat().st_size
    assert_store_complete(store, lock)


@pytest.mark.parametrize("change", ["same-size", "longer"])
@pytest.mark.parametrize("kind", ["path", "file-url"])
def test_a_local_file_that_changed_is_not_blamed_on_an_index(
    tmp_path: Path, index_root: Path, store: Store, client: HttpClient, kind: str, change: str
) -> None:
    """A lock's local ``path`` (or ``file:`` URL) whose file now holds other bytes, or
    more than the lock's size (refused while read): no index served them, so the hint
    must not send the user after one."""
    project = tmp_path / "project"
    (project / "wheels").mkdir(parents=True)
    wheel = project / "wheels" / BETA
    wheel.write_bytes((index_root / "files" / BETA).read_bytes())
    base = (project / "wheels").as_uri().removesuffix("/wheels") if kind == "file-url" else None
    if base is not None:
        (project / "files").symlink_to(project / "wheels")  # write_lock's <base>/files/
    lock = LockFile.load(write_lock(project / "pylock.toml", [wheel], base_url=base))
    data = bytearray(wheel.read_bytes())
    data[-1] ^= 0xFF  # same size: only the hash finds it
    wheel.write_bytes(bytes(data) + (b"more" if change == "longer" else b""))
    with pytest.raises(ArtifactError) as info:
        fetch(lock, store, client=client)
    assert info.value.exit_code == 4 and info.value.artifact == BETA
    hint = info.value.hint or ""
    named = wheel if base is None else project / "files" / BETA  # the path the lock names
    assert hint.startswith(f"the local file {named} holds other bytes"), hint
    assert not store.has(sha256_of(index_root / "files" / BETA))


def test_file_url(tmp_path: Path, index_root: Path, store: Store, client: HttpClient) -> None:
    files = [index_root / "files" / BETA]
    lock = LockFile.load(write_lock(tmp_path / "pylock.toml", files, base_url=index_root.as_uri()))
    assert (lock.artifacts()[0].url or "").startswith("file:///")
    fetch(lock, store, client=client)
    assert_store_complete(store, lock)


def test_missing_file_is_not_found(
    tmp_path: Path, index_root: Path, index_server: IndexServer, store: Store, client: HttpClient
) -> None:
    files = [index_root / "files" / BETA]
    gone = f"{index_server.url}/gone"
    lock = LockFile.load(write_lock(tmp_path / "pylock.toml", files, base_url=gone))
    with pytest.raises(NetworkError, match="not found"):
        fetch(lock, store, client=client)
    assert index_server.knobs.requests[f"/gone/files/{BETA}"] == 1  # a 404 is not retried


# --- a store that was damaged after the fact ---------------------------------------------


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _empty(data: bytes) -> bytes:
    return b""


def _grow(data: bytes) -> bytes:
    return data + b"\0"


def _flip(data: bytes) -> bytes:  # same size, other bytes: only a hash finds it
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def damage(store: Store, artifact: Artifact, how: Callable[[bytes], bytes]) -> Path:
    """Rewrite the stored file in place (same inode), as a stray writer on a share would."""
    path = store.path(artifact.sha256)
    os.chmod(path, 0o644)
    data = path.read_bytes()
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(how(data))
    return path


@pytest.mark.parametrize(
    ("how", "sizes", "verify", "found"),
    [
        (_truncate, True, False, True),
        (_empty, True, False, True),
        (_grow, True, False, True),
        # Without --verify a present file costs one stat: same-size damage goes unseen.
        (_flip, True, False, False),
        (_flip, True, True, True),
        # Locks from HTML indexes carry no size: an empty file is still known to be wrong.
        (_empty, False, False, True),
        (_truncate, False, False, False),
        (_truncate, False, True, True),
    ],
    ids=[
        "truncated",
        "emptied",
        "grown",
        "same-size",
        "same-size-verify",
        "sizeless-emptied",
        "sizeless-truncated",
        "sizeless-truncated-verify",
    ],
)
def test_damaged_store_file_is_downloaded_again_and_replaced(
    tmp_path: Path,
    index_root: Path,
    index_server: IndexServer,
    store: Store,
    client: HttpClient,
    how: Callable[[bytes], bytes],
    sizes: bool,
    verify: bool,
    found: bool,
) -> None:
    files = [index_root / "files" / n for n in WHEELS]
    lock_path = write_lock(tmp_path / "pylock.toml", files, base_url=index_server.url, sizes=sizes)
    lock = LockFile.load(lock_path)
    fetch(lock, store, client=client)
    beta = artifact_named(lock, BETA)
    damaged = damage(store, beta, how)
    index_server.knobs.requests.clear()
    result = fetch(lock, store, client=client, verify=verify)
    if not found:
        assert result.repaired == 0 and result.downloaded == 0
        assert index_server.file_requests() == 0
        return
    assert (result.downloaded, result.repaired, result.reused) == (1, 1, len(WHEELS) - 1)
    assert [a.artifact.filename for a in result.artifacts if a.repaired] == [BETA]
    assert index_server.file_requests() == 1  # only the damaged one, and once
    assert_store_complete(store, lock)
    assert damaged.stat().st_mode & 0o222 == 0  # a committed, read-only file again
    # The export that used to fail on the damaged file (exit 4) now works.
    assert export_index(lock, store, tmp_path / "out").files == len(WHEELS)
    index_server.knobs.requests.clear()
    again = fetch(lock, store, client=client, verify=verify)
    assert again.downloaded == 0 and index_server.file_requests() == 0


def test_repair_that_cannot_download_reports_and_keeps_others(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    fetch(lock, store, client=client)
    damage(store, artifact_named(lock, BETA), _truncate)
    index_server.knobs.fail_always.add(BETA)
    with pytest.raises(NetworkError) as info:
        fetch(lock, store, client=client)
    assert [p.where for p in info.value.problems] == [BETA]
    others = [a for a in lock.artifacts() if a.filename != BETA]
    assert all(store.check(a.sha256, a.size) == "ok" for a in others)


# --- what the lock says, checked before anything is downloaded ---------------------------

GAMMA_ARM_PLACE = "packages[2].wheels[1]"  # write_lock keeps WHEELS' order; gamma has two


def _source(tmp_path: Path, kind: str) -> dict[str, str]:
    return {
        "ftp": {"url": f"ftp://127.0.0.1/files/{ARM}"},
        "no-scheme": {"url": f"files/{ARM}"},
        "missing-path": {"path": f"wheels/{ARM}"},
        "missing-file-url": {"url": (tmp_path / "gone" / ARM).as_uri()},
    }[kind]


@pytest.mark.parametrize("kind", ["ftp", "no-scheme", "missing-path", "missing-file-url"])
def test_unusable_source_is_bad_input_found_before_any_download(
    tmp_path: Path,
    index_root: Path,
    index_server: IndexServer,
    store: Store,
    client: HttpClient,
    kind: str,
) -> None:
    files = [index_root / "files" / n for n in WHEELS]
    lock_path = write_lock(tmp_path / "pylock.toml", files, base_url=index_server.url)
    data = tomllib.loads(lock_path.read_text())
    entry = data["packages"][2]["wheels"][1]
    assert entry["name"] == ARM
    del entry["url"]
    entry.update(_source(tmp_path, kind))
    lock_path.write_text(tomli_w.dumps(data))
    lock = LockFile.load(lock_path)
    with pytest.raises(InvalidLockError) as info:
        fetch(lock, store, client=client)
    assert info.value.exit_code == 2
    [problem] = info.value.problems
    assert problem.where == f"{lock_path}: {GAMMA_ARM_PLACE}"
    assert ARM in problem.message
    assert index_server.file_requests() == 0  # found before the others were downloaded
    # Only the sources a fetch uses matter: a store that has the file needs none.
    arm = artifact_named(lock, ARM)
    store.add_file(index_root / "files" / ARM, arm.sha256)
    result = fetch(lock, store, client=client)
    assert result.downloaded == len(WHEELS) - 1


def test_a_library_caller_may_name_the_store_by_its_folder(
    tmp_path: Path, index_root: Path, index_server: IndexServer, client: HttpClient
) -> None:
    files = [index_root / "files" / n for n in WHEELS]
    lock = LockFile.load(write_lock(tmp_path / "pylock.toml", files, base_url=index_server.url))
    for jobs in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="jobs must be a whole number of at least 1"):
            fetch(lock, str(tmp_path / "st"), client=client, jobs=jobs)  # type: ignore[arg-type]
    result = fetch(lock, str(tmp_path / "st"), client=client)
    assert result.downloaded == len(WHEELS)
    assert fetch(lock, tmp_path / "st", client=client).downloaded == 0


def test_unknown_group_is_refused_before_any_download(
    tmp_path: Path, index_root: Path, index_server: IndexServer, store: Store, client: HttpClient
) -> None:
    files = [index_root / "files" / n for n in WHEELS]
    lock = LockFile.load(
        write_lock(
            tmp_path / "pylock.toml", files, base_url=index_server.url, groups={"tool": "dev"}
        )
    )
    with pytest.raises(EnvshipError, match="no dependency group 'nope'") as info:
        fetch(lock, store, client=client, groups=["nope"])
    assert info.value.exit_code == 2
    assert [p.message for p in info.value.problems] == ["its groups: dev"]
    assert sum(index_server.knobs.requests.values()) == 0
    result = fetch(lock, store, client=client, groups=[])
    assert "tool-1.0-py3-none-any.whl" not in {a.artifact.filename for a in result.artifacts}


@pytest.mark.parametrize("factor", [0.5, 2.0], ids=["lock-says-smaller", "lock-says-larger"])
def test_wrong_size_in_lock_is_refused_and_progress_stays_within_total(
    tmp_path: Path,
    index_root: Path,
    index_server: IndexServer,
    store: Store,
    client: HttpClient,
    factor: float,
) -> None:
    wheel = index_root / "files" / BETA
    lock_path = write_lock(tmp_path / "pylock.toml", [wheel], base_url=index_server.url)
    data = tomllib.loads(lock_path.read_text())
    stated = int(wheel.stat().st_size * factor)
    data["packages"][0]["wheels"][0]["size"] = stated
    lock_path.write_text(tomli_w.dumps(data))
    calls: list[tuple[int, int, str]] = []
    with pytest.raises(ArtifactError) as info:
        fetch(
            LockFile.load(lock_path),
            store,
            client=client,
            progress=lambda d, t, detail: calls.append((d, t, detail)),
        )
    assert info.value.expected == str(stated)
    [problem] = info.value.problems
    assert problem.where == BETA and problem.message.startswith("size mismatch")
    assert calls and all(0 <= d <= t == stated and detail for d, t, detail in calls)
    assert list(store.partial_dir.iterdir()) == [] and list(store.tmp_dir.iterdir()) == []


def test_credentials_are_looked_up_only_when_something_is_downloaded(
    lock: LockFile, store: Store
) -> None:
    looked_up: list[int] = []

    def credentials() -> list[envship._http.Credential]:
        looked_up.append(1)
        return []

    fetch(lock, store, credentials=credentials)
    assert looked_up == [1]
    fetch(lock, store, credentials=credentials)
    assert looked_up == [1]


# --- several processes, interrupts: real subprocesses --------------------------------

_FETCH_SCRIPT = """
import json, sys
from pathlib import Path
from envship._http import HttpClient, RetryPolicy
from envship.fetch import fetch
from envship.lockfile import LockFile
from envship.store import Store
client = HttpClient(retry=RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01))
result = fetch(LockFile.load(Path(sys.argv[1])), Store(Path(sys.argv[2])), client=client, jobs=2)
print(json.dumps({"downloaded": result.downloaded, "reused": result.reused}))
"""


def test_concurrent_processes_share_one_store(
    lock: LockFile, store: Store, index_server: IndexServer
) -> None:
    index_server.knobs.delay = 0.05  # long enough that the processes overlap
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FETCH_SCRIPT, str(lock.path), str(store.root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
    counts = [json.loads(out) for out, _ in outputs]
    # The per-artifact lock means each file crossed the wire exactly once in total.
    assert sum(c["downloaded"] for c in counts) == len(WHEELS)
    assert index_server.file_requests() == len(WHEELS)
    assert_store_complete(store, lock)


_CLI_SCRIPT = """
import functools, sys
import envship._http
from envship._http import HttpClient, RetryPolicy
from envship.cli import fetch as fetch_cli, main

class Hold(RetryPolicy):
    # After the cut connection, wait 'forever' before retrying, so the test can
    # interrupt us while a partial file is on disk.
    def delay(self, attempt, rng):
        return 3600.0

envship._http.HttpClient = functools.partial(HttpClient, retry=Hold())
main._register = lambda: main.cli.add_command(fetch_cli.command)
sys.exit(main.main(sys.argv[1:]))
"""


def _wait_for(condition: Any, what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"process ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_interrupt_leaves_partials_and_rerun_completes(
    lock: LockFile, store: Store, client: HttpClient, index_server: IndexServer
) -> None:
    index_server.knobs.cut_after[BETA] = 300
    beta = next(a for a in lock.artifacts() if a.filename == BETA)
    part = store.partial_dir / f"{beta.sha256}.part"
    others = [a for a in lock.artifacts() if a.filename != BETA]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CLI_SCRIPT,
            "fetch",
            *("--lock", str(lock.path)),
            *("--store", str(store.root)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(
        lambda: (
            part.exists()
            and part.stat().st_size == 300
            and all(store.has(a.sha256) for a in others)
        ),
        "the partial download",
        proc,
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not store.has(beta.sha256)
    assert part.stat().st_size == 300  # kept for the resume
    assert list(store.tmp_dir.iterdir()) == []

    result = fetch(lock, store, client=client)
    assert result.downloaded == 1 and result.reused == len(WHEELS) - 1
    assert result.bytes_downloaded == (beta.size or 0) - 300  # resumed, not restarted
    assert_store_complete(store, lock)


# --- named copies (what uv reads) damaged on their own -----------------------------------------


@pytest.mark.parametrize(
    ("links", "how", "install_fails"),
    [
        (True, _flip, False),  # links work: install puts the link back by itself
        (False, _flip, True),  # a copy of the right size: only a hash tells
        (False, _truncate, False),  # a copy of the wrong size is copied again
        (False, _grow, False),
    ],
    ids=["links-same-size", "copies-same-size", "copies-truncated", "copies-grown"],
)
def test_a_damaged_named_copy_is_named_by_install_and_replaced_by_fetch_verify(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    links: bool,
    how: Callable[[bytes], bytes],
    install_fails: bool,
) -> None:
    """The audit's case: ``named/<sha256>/<file>`` a separate file (the copy made where
    hard links fail) with other bytes than the content file, which is whole."""
    from envship.install import install
    from test_install import build_wheels, stocked_store
    from test_install import write_lock as write_host_lock

    wheels = build_wheels(tmp_path / "dist")
    lock = write_host_lock(tmp_path / "pylock.toml", [wheels[k] for k in ("alpha", "beta")])
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    if not links:  # named/ on another file system: hard links fail (EXDEV), copies are made
        (store.root / "named").symlink_to(request.getfixturevalue("small_disk").path)
    install(lock, store, tmp_path / "first")
    beta = next(a for a in lock.artifacts() if a.name == "beta")
    named = store.root / "named" / beta.sha256 / beta.filename
    stray = named.with_name("stray")
    stray.write_bytes(how(named.read_bytes()))
    os.replace(stray, named)  # `mv -f`, as the audit did

    if install_fails:
        with pytest.raises(ArtifactError) as err:
            install(lock, store, tmp_path / "second")
        assert err.value.exit_code == 4 and err.value.artifact == str(named)
        assert err.value.actual == f"sha256:{sha256_file(named)}"
        assert beta.filename in err.value.message
        assert [p.where for p in err.value.problems] == [str(named)]
        hint = err.value.hint or ""
        assert hint.startswith("envship fetch --verify --lock ")
        # The hint works: nothing to download (the content file is whole), the copy is
        # hashed and replaced, and the install then succeeds.
        result = fetch(lock, store, verify=True)
        assert result.downloaded == 0 and sha256_file(named) == beta.sha256
        assert sorted(p.name for p in named.parent.iterdir()) == [beta.filename]
    install(lock, store, tmp_path / "second")
    assert sha256_file(named) == beta.sha256
    assert (named.stat().st_ino == store.path(beta.sha256).stat().st_ino) is links


def _named_copies(
    tmp_path: Path, request: pytest.FixtureRequest, links: bool
) -> tuple[LockFile, Store, dict[str, Path]]:
    """A host lock of alpha and beta, a store holding them, and each one's named copy
    (hard links, or separate copies when ``named/`` is on another file system)."""
    from test_install import build_wheels, stocked_store
    from test_install import write_lock as write_host_lock

    wheels = build_wheels(tmp_path / "dist")
    lock = write_host_lock(tmp_path / "pylock.toml", [wheels[k] for k in ("alpha", "beta")])
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    if not links:  # hard links fail across file systems (EXDEV): copies are made
        (store.root / "named").symlink_to(request.getfixturevalue("small_disk").path)
    named = {a.name: store.named(a.sha256, a.filename) for a in lock.artifacts()}
    return lock, store, named


@pytest.mark.parametrize(
    ("links", "damages", "verify"),
    [
        (True, {"beta": _flip}, True),  # another file put over the link
        (False, {"beta": _flip}, True),  # a copy of the right size: only a hash tells
        (False, {"alpha": _grow, "beta": _truncate}, True),  # one per artifact, counted apart
        (False, {}, True),  # whole copies are hashed and kept
        (False, {"beta": _flip}, False),  # without --verify nothing hashes them
    ],
    ids=["links-flipped", "copies-flipped", "two-copies", "whole-copies", "no-verify"],
)
def test_the_result_counts_the_named_copies_fetch_verify_replaced(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    links: bool,
    damages: dict[str, Callable[[bytes], bytes]],
    verify: bool,
) -> None:
    lock, store, named = _named_copies(tmp_path, request, links)
    for name, how in damages.items():
        stray = named[name].with_name("stray")
        stray.write_bytes(how(named[name].read_bytes()))
        os.replace(stray, named[name])  # `mv -f`: a separate file where the link was

    result = fetch(lock, store, verify=verify)

    replaced = {name: (named[name],) for name in damages} if verify else {}
    assert {f.artifact.name: f.named_repaired for f in result.artifacts} == {
        name: replaced.get(name, ()) for name in named
    }
    assert result.named_repaired == len(replaced)
    assert (result.downloaded, result.repaired) == (0, 0)  # the content files are whole
    data = result.to_json()
    assert data["named_repaired"] == len(replaced)
    assert {a["name"]: a["named_repaired"] for a in data["artifacts"]} == {
        name: [str(p) for p in replaced.get(name, ())] for name in named
    }
    by_name = {a.name: a for a in lock.artifacts()}
    for name, path in named.items():
        whole = name not in damages or verify
        assert (sha256_file(path) == by_name[name].sha256) is whole
    if verify:  # replaced once: a second run finds every copy whole
        assert fetch(lock, store, verify=True).named_repaired == 0

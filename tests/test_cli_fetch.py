"""``envship fetch`` end to end: exit codes, output, --json, credentials from the spec."""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import envship._http
from disklib import SmallDisk
from envship._http import Credential, HttpClient, RetryPolicy
from envship.cli import fetch as fetch_cli
from envship.cli import main as cli_main
from envship.lockfile import LockFile
from envship.store import Store
from indexlib import IndexServer
from test_fetch import (
    ARM,
    BETA,
    WHEELS,
    X86,
    artifact_named,
    assert_store_complete,
    write_lock,
)

FAST = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01)


@pytest.fixture(autouse=True)
def _fast_and_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    # The CLI uses the default retry policy; shrink its pauses so failing tests stay fast.
    monkeypatch.setattr(envship._http, "HttpClient", functools.partial(HttpClient, retry=FAST))
    # Register only this command: the other command modules are not ours to depend on.
    monkeypatch.setattr(cli_main, "_register", lambda: cli_main.cli.add_command(fetch_cli.command))
    yield


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli_main.main(["fetch", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def lock_path(tmp_path: Path, index_root: Path, index_server: IndexServer) -> Path:
    files = [index_root / "files" / n for n in WHEELS]
    return write_lock(tmp_path / "pylock.toml", files, base_url=index_server.url)


def test_text_output(capsys: pytest.CaptureFixture[str], lock_path: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    code, out, _ = run(capsys, "--lock", str(lock_path), "--store", str(store))
    assert code == 0
    assert f"{len(WHEELS)} artifacts in {store}" in out
    assert f"{len(WHEELS)} downloaded" in out and "0 already in the store" in out
    code, out, _ = run(capsys, "--lock", str(lock_path), "--store", str(store))
    assert code == 0 and f"0 downloaded (0 B), {len(WHEELS)} already in the store" in out


def test_defaults_lock_in_cwd_and_store_from_env(
    capsys: pytest.CaptureFixture[str],
    lock_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(lock_path.parent)
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "env-store"))
    code, _, err = run(capsys, "-j", "2")
    assert code == 0, err
    assert_store_complete(Store(tmp_path / "env-store"), LockFile.load(lock_path))


def test_json_shape(capsys: pytest.CaptureFixture[str], lock_path: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "--lock", str(lock_path), "--store", str(tmp_path / "s"), "--json")
    assert code == 0 and err == ""  # progress is silent in --json mode
    data = json.loads(out)
    assert set(data) == {
        "store",
        "downloaded",
        "reused",
        "repaired",
        "named_repaired",
        "bytes_downloaded",
        "artifacts",
    }
    assert data["store"] == str(tmp_path / "s")
    assert data["downloaded"] == len(WHEELS)
    assert data["reused"] == data["repaired"] == data["named_repaired"] == 0
    entry = data["artifacts"][0]
    keys = {"name", "version", "filename", "sha256", "size", "path", "downloaded", "repaired"}
    assert keys | {"named_repaired"} <= set(entry) and entry["named_repaired"] == []
    assert Path(entry["path"]).is_file() and entry["downloaded"] is True


def test_target_option(
    capsys: pytest.CaptureFixture[str],
    lock_path: Path,
    tmp_path: Path,
    index_server: IndexServer,
) -> None:
    code, out, _ = run(
        capsys,
        "--lock",
        str(lock_path),
        "--store",
        str(tmp_path / "s"),
        "--target",
        "linux-x86_64",
        "--json",
    )
    assert code == 0
    names = {a["filename"] for a in json.loads(out)["artifacts"]}
    assert X86 in names and ARM not in names
    assert index_server.knobs.requests[f"/files/{ARM}"] == 0


def test_unknown_target_is_bad_input(
    capsys: pytest.CaptureFixture[str], lock_path: Path, tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "--lock", str(lock_path), "--store", str(tmp_path / "s"), "--target", "win"
    )
    assert code == 2 and "no target 'win'" in err


def test_permanent_500_exits_3_naming_the_url(
    capsys: pytest.CaptureFixture[str],
    lock_path: Path,
    tmp_path: Path,
    index_server: IndexServer,
) -> None:
    index_server.knobs.fail_always.add(BETA)
    code, _, err = run(capsys, "--lock", str(lock_path), "--store", str(tmp_path / "s"))
    assert code == 3
    assert f"{index_server.url}/files/{BETA}" in err and "Traceback" not in err


def test_unreachable_port_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index_root: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    lock_path = write_lock(tmp_path / "pylock.toml", [index_root / "files" / BETA], base_url=dead)
    code, _, err = run(capsys, "--lock", str(lock_path), "--store", str(tmp_path / "s"))
    assert code == 3
    assert f"error: cannot download {dead}/files/{BETA}" in err
    assert "hint:" in err and "Traceback" not in err


def test_tampered_exits_4(
    capsys: pytest.CaptureFixture[str],
    lock_path: Path,
    tmp_path: Path,
    index_server: IndexServer,
) -> None:
    index_server.knobs.tamper.add(BETA)
    code, out, _ = run(capsys, "--lock", str(lock_path), "--store", str(tmp_path / "s"), "--json")
    assert code == 4
    data = json.loads(out)
    assert data["error"] == "integrity" and data["artifact"] == BETA
    assert [p["where"] for p in data["problems"]] == [BETA]


def test_missing_lock_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--lock", str(tmp_path / "nope.toml"))
    assert code == 2 and "does not exist" in err


def test_unknown_group_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index_root: Path, index_server: IndexServer
) -> None:
    files = [index_root / "files" / n for n in WHEELS]
    lock_path = write_lock(
        tmp_path / "pylock.toml", files, base_url=index_server.url, groups={"tool": "dev"}
    )
    store = tmp_path / "s"
    code, out, err = run(capsys, "--lock", str(lock_path), "--store", str(store), "--group", "nope")
    assert code == 2, (out, err)
    assert "no dependency group 'nope'" in err and "its groups: dev" in err
    code, out, _ = run(capsys, "--lock", str(lock_path), "--group", "nope", "--json")
    data = json.loads(out)
    assert (code, data["error"], data["hint"]) == (
        2,
        "group",  # the lock is sound: not "invalid-lock", which says to make it again
        "name one of them (dev), or no --group for all of them",
    )
    assert sum(index_server.knobs.requests.values()) == 0
    code, out, err = run(capsys, "--lock", str(lock_path), "--store", str(store), "--group", "dev")
    assert code == 0 and f"{len(WHEELS)} downloaded" in out


def test_damaged_artifact_is_repaired_and_said_so(
    capsys: pytest.CaptureFixture[str], lock_path: Path, tmp_path: Path, index_server: IndexServer
) -> None:
    store = tmp_path / "s"
    assert run(capsys, "--lock", str(lock_path), "--store", str(store))[0] == 0
    beta = artifact_named(LockFile.load(lock_path), BETA)
    stored = Store(store).path(beta.sha256)
    os.chmod(stored, 0o644)
    os.truncate(stored, 100)
    code, out, err = run(capsys, "--lock", str(lock_path), "--store", str(store))
    assert code == 0, err
    assert "1 downloaded" in out and "1 of them replacing a damaged copy" in out
    assert f"{len(WHEELS) - 1} already in the store" in out
    assert_store_complete(Store(store), LockFile.load(lock_path))
    os.chmod(stored, 0o644)
    with stored.open("r+b") as f:  # same size, other bytes: only --verify finds it
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    code, out, _ = run(capsys, "--lock", str(lock_path), "--store", str(store), "--json")
    assert code == 0 and json.loads(out)["repaired"] == 0
    index_server.knobs.requests.clear()
    args = ("--lock", str(lock_path), "--store", str(store), "--verify", "--json")
    code, out, _ = run(capsys, *args)
    assert code == 0 and json.loads(out)["repaired"] == 1
    assert index_server.file_requests() == 1
    assert_store_complete(Store(store), LockFile.load(lock_path))


def test_help_documents_verify(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "--verify" in out and "Re-hash every artifact already in the store" in out


@pytest.mark.parametrize(
    "source",
    [{"url": f"ftp://127.0.0.1/files/{ARM}"}, {"path": f"nowhere/{ARM}"}],
    ids=["ftp", "missing-path"],
)
def test_unusable_source_exits_2_before_downloading(
    capsys: pytest.CaptureFixture[str],
    lock_path: Path,
    tmp_path: Path,
    index_server: IndexServer,
    source: dict[str, str],
) -> None:
    text = lock_path.read_text()
    old = f'url = "{index_server.url}/files/{ARM}"'
    assert text.count(old) == 1
    key, value = next(iter(source.items()))
    lock_path.write_text(text.replace(old, f'{key} = "{value}"'))
    code, out, _ = run(capsys, "--lock", str(lock_path), "--store", str(tmp_path / "s"), "--json")
    assert code == 2
    data = json.loads(out)
    assert data["error"] == "invalid-lock"
    assert [p["where"] for p in data["problems"]] == [f"{lock_path}: packages[2].wheels[1]"]
    assert index_server.file_requests() == 0


def test_credentials_from_spec_beside_the_lock(
    capsys: pytest.CaptureFixture[str],
    lock_path: Path,
    tmp_path: Path,
    index_server: IndexServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (lock_path.parent / "envship.toml").write_text(
        'name = "t"\npython = "3.11"\ndependencies = []\n'
        f'[[indexes]]\nname = "i"\nurl = "{index_server.url}/simple"\n'
        'username-env = "T_USER"\npassword-env = "T_PASS"\n'
    )
    monkeypatch.setenv("T_USER", "alice")
    monkeypatch.setenv("T_PASS", "s3cret")
    seen: list[HttpClient] = []

    def spy(*, credentials: Sequence[Credential]) -> HttpClient:
        client = HttpClient(credentials=credentials, retry=FAST)
        seen.append(client)
        return client

    monkeypatch.setattr(envship._http, "HttpClient", spy)
    code, _, err = run(capsys, "--lock", str(lock_path), "--store", str(tmp_path / "s"))
    assert code == 0, err
    assert seen[0].credentials_for(f"{index_server.url}/files/{BETA}") == ("alice", "s3cret")
    assert "s3cret" not in err


def test_replaced_named_copies_are_counted_in_text_and_json(
    capsys: pytest.CaptureFixture[str], lock_path: Path, tmp_path: Path, small_disk: SmallDisk
) -> None:
    """Separate copies under named/ (hard links fail across file systems), damaged on
    their own: --verify replaces them, and the summary counts them apart from downloads."""
    store = Store(tmp_path / "s")
    store.ensure()
    (store.root / "named").symlink_to(small_disk.path)
    assert run(capsys, "--lock", str(lock_path), "--store", str(store.root))[0] == 0
    lock = LockFile.load(lock_path)
    copies = {a.filename: store.named(a.sha256, a.filename) for a in lock.artifacts()}

    def damage(*names: str) -> None:
        for name in names:
            stray = copies[name].with_name("stray")
            stray.write_bytes(copies[name].read_bytes()[:-1] + b"!")  # same size
            os.replace(stray, copies[name])

    verify = ("--lock", str(lock_path), "--store", str(store.root), "--verify")
    damage(BETA)
    code, out, err = run(capsys, *verify)
    assert code == 0, err
    assert out.strip().endswith(
        f"0 downloaded (0 B), {len(WHEELS)} already in the store; "
        "1 damaged copy under named/ (what installers read) replaced"
    )
    damage(BETA, X86)
    code, out, err = run(capsys, *verify, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["named_repaired"], data["downloaded"], data["repaired"]) == (2, 0, 0)
    assert {
        a["filename"]: a["named_repaired"] for a in data["artifacts"] if a["named_repaired"]
    } == {
        BETA: [str(copies[BETA])],
        X86: [str(copies[X86])],
    }
    code, out, _ = run(capsys, *verify)
    assert code == 0 and out.strip().endswith(f"{len(WHEELS)} already in the store")
    assert_store_complete(store, lock)

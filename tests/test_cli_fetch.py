"""``envship fetch`` end to end: exit codes, output, --json, credentials from the spec."""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import envship._http
from envship._http import Credential, HttpClient, RetryPolicy
from envship.cli import fetch as fetch_cli
from envship.cli import main as cli_main
from envship.lockfile import LockFile
from envship.store import Store
from indexlib import IndexServer
from test_fetch import ARM, BETA, WHEELS, X86, assert_store_complete, write_lock

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
    assert set(data) == {"store", "downloaded", "reused", "bytes_downloaded", "artifacts"}
    assert data["store"] == str(tmp_path / "s")
    assert data["downloaded"] == len(WHEELS) and data["reused"] == 0
    entry = data["artifacts"][0]
    assert {"name", "version", "filename", "sha256", "size", "path", "downloaded"} <= set(entry)
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


def test_missing_lock(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--lock", str(tmp_path / "nope.toml"))
    assert code == 1 and "does not exist" in err


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

"""``envship index export`` through the real entry point: exit codes and ``--json``."""

from __future__ import annotations

import contextvars
import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from disklib import SmallDisk
from envship.cli import main as cli_main
from envship.cli.index import command as index_group
from envship.index import MARKER_FILENAME
from envship.lockfile import LockFile
from indexlib import X86
from test_index import Universe, make_grouped, make_universe, static_server


def run_cli(*args: str) -> int:
    # ``--json`` sets a ContextVar; a fresh context per call keeps one call's --json from
    # leaking into the next, whatever main() resets.
    return contextvars.copy_context().run(cli_main.main, list(args))


@pytest.fixture
def universe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Universe:
    u = make_universe(tmp_path / "u")
    monkeypatch.setenv("ENVSHIP_STORE", str(u.store.root))
    return u


@pytest.fixture(autouse=True)
def _index_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test the command itself even while main.py's table is being edited;
    test_index_is_registered_in_main checks the table."""
    cli_main._register()
    monkeypatch.setitem(cli_main.cli.commands, "index", index_group)


def test_index_is_registered_in_main(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(cli_main.cli.commands, "index")
    cli_main._register()
    assert cli_main.cli.commands.get("index") is index_group


def test_export_json(universe: Universe, capsys: pytest.CaptureFixture[str]) -> None:
    out = universe.root / "out"
    code = run_cli(
        *("index", "export", str(out), "--lock", str(universe.lock.path)),
        *("--store", str(universe.store.root), "--target", "linux-x86_64", "--json"),
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""  # --json: no progress on stderr
    data = json.loads(captured.out)
    assert data == {
        "out": str(out),
        "projects": 3,
        "files": 3,
        "lock": str(out / "pylock.toml"),
        "index_url": (out / "simple").resolve().as_uri(),
        "targets": ["linux-x86_64"],
        "groups": [],
    }
    assert LockFile.load(out / "pylock.toml").artifacts()  # a usable lock


def test_export_defaults_lock_in_cwd_and_store_from_env(
    universe: Universe, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(universe.root)  # ./pylock.toml; the store from $ENVSHIP_STORE
    assert run_cli("index", "export", "out") == 0
    captured = capsys.readouterr()
    assert "exported 5 files of 4 projects" in captured.out
    assert (universe.root / "out" / "simple").as_uri() in captured.out
    assert (universe.root / "out" / MARKER_FILENAME).is_file()


def test_text_output_shows_normalized_paths_and_the_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    grouped = make_grouped(tmp_path / "g")
    (grouped.root / "w").mkdir()
    monkeypatch.chdir(grouped.root / "w")
    code = run_cli(
        *("index", "export", "../w/../exp", "--lock", "../pylock.toml"),
        *("--store", str(grouped.store.root), "--group", "dev", "--group", "docs"),
    )
    out = capsys.readouterr().out
    assert code == 0
    exp = grouped.root / "exp"
    assert out.splitlines() == [
        f"exported 6 files of 5 projects to {exp}",
        f"  pip install --index-url {(exp / 'simple').as_uri()} NAME",
        f"  uv pip install --offline -r {exp / 'pylock.toml'} --group dev --group docs",
    ]


def test_missing_artifact_exit_1_names_files(
    universe: Universe, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = universe.root / "empty-store"
    code = run_cli(
        *("index", "export", str(universe.root / "out"), "--lock", str(universe.lock.path)),
        *("--store", str(empty), "--json"),
    )
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["error"] == "store"
    assert {p["message"].split(" (sha256")[0] for p in data["problems"]} >= {
        "alpha-1.0-py3-none-any.whl",
        "beta_lib-1.1-py3-none-any.whl",
    }
    assert "envship fetch --lock" in data["hint"]
    assert not (universe.root / "out").exists()


def test_corrupt_artifact_exit_4(universe: Universe, capsys: pytest.CaptureFixture[str]) -> None:
    wheel = universe.wheels["alpha-1.0-py3-none-any.whl"]
    stored = universe.store.path(hashlib.sha256(wheel.read_bytes()).hexdigest())
    os.chmod(stored, 0o644)
    stored.write_bytes(b"not the wheel the lock names")
    out = universe.root / "out"
    code = run_cli("index", "export", str(out), "--lock", str(universe.lock.path))
    captured = capsys.readouterr()
    assert code == 4
    assert "error: alpha-1.0-py3-none-any.whl: the store's copy does not match" in captured.err
    assert not out.exists()


def test_refuses_foreign_directory_without_force(
    universe: Universe, capsys: pytest.CaptureFixture[str]
) -> None:
    out = universe.root / "docs"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ("index", "export", str(out), "--lock", str(universe.lock.path), "--json")
    assert run_cli(*args) == 2  # bad input: OUT is someone else's folder
    assert json.loads(capsys.readouterr().out)["error"] == "index-input"
    assert (out / "keep.txt").read_text() == "mine"
    assert run_cli(*args, "--force") == 0
    assert json.loads(capsys.readouterr().out)["files"] == 5
    assert not (out / "keep.txt").exists()


def test_unknown_target_exit_2(universe: Universe, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(
        *("index", "export", str(universe.root / "out"), "--lock", str(universe.lock.path)),
        *("--target", "windows-arm64", "--json"),
    )
    assert code == 2
    assert json.loads(capsys.readouterr().out)["error"] == "target"


def test_missing_lock_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = tmp_path / "nope.toml"
    assert run_cli("index", "export", str(tmp_path / "out"), "--lock", str(lock)) == 2
    assert f"{lock} does not exist" in capsys.readouterr().err


def test_unknown_group_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grouped = make_grouped(tmp_path / "g")
    out = grouped.root / "out"
    code = run_cli(
        *("index", "export", str(out), "--lock", str(grouped.lock.path)),
        *("--store", str(grouped.store.root), "--group", "dev", "--group", "nope"),
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "no dependency group 'nope'" in err and "its groups: dev, docs" in err
    assert not out.exists()


def test_a_full_disk_is_named_with_its_remedy(
    universe: Universe, small_disk: SmallDisk, capsys: pytest.CaptureFixture[str]
) -> None:
    """As install, env create, fetch and image build say it: the disk holding OUT is full
    (a real tmpfs filled up; the store is on another file system, so files are copied)."""
    out = small_disk.path / "ix"
    args = ["index", "export", str(out), "--lock", str(universe.lock.path)]
    args += ["--store", str(universe.store.root)]
    filler = small_disk.fill(leave=0)
    assert run_cli(*args, "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "index" and doc["message"] == f"the disk holding {out} is full"
    assert doc["problems"][0]["message"] == os.strerror(errno.ENOSPC)
    assert doc["hint"].startswith("free space there (or export to a larger disk) and re-run")
    assert "OUT's files are copies of the store's artifacts, never links" in doc["hint"]
    assert doc["problems"][0]["where"].startswith(str(small_disk.path))  # what was written
    assert sorted(p.name for p in small_disk.path.iterdir()) == ["filler"]  # nothing kept
    assert run_cli(*args) == 1
    err = capsys.readouterr().err
    assert f"error: the disk holding {out} is full" in err and "hint: free space" in err
    filler.unlink()  # the remedy, and the same command then succeeds
    assert run_cli(*args) == 0
    assert (out / MARKER_FILENAME).is_file()


@pytest.mark.parametrize("narrowed", [(), ("--target", "linux-x86_64")], ids=["all", "target"])
def test_the_integrity_hint_repairs_the_store_pasted_from_any_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], narrowed: tuple[str, ...]
) -> None:
    """The hint's command, run as printed from another folder (no ./pylock.toml, no
    ENVSHIP_STORE), replaces the damaged store file; the export then succeeds. Paths with
    a space: the command quotes them."""
    universe = make_universe(tmp_path / "my project")
    name = f"gamma-1.0-{X86}.whl"
    wheel = universe.wheels[name]
    (wheel.parent / "files").symlink_to(wheel.parent)  # the lock's URLs end in files/<name>
    stored = universe.store.path(hashlib.sha256(wheel.read_bytes()).hexdigest())
    os.chmod(stored, 0o644)
    with stored.open("r+b") as f:  # same size, other bytes: only a hash finds it
        f.write(b"\0" * 16)
    out = universe.root / "out"
    args = ["index", "export", str(out), "--lock", str(universe.lock.path), *narrowed]
    args += ["--store", str(universe.store.root)]
    with static_server(wheel.parent) as (url, _seen):
        lock = universe.lock.path
        lock.write_text(lock.read_text().replace("https://example.invalid", url))
        assert run_cli(*args, "--json") == 4
        doc = json.loads(capsys.readouterr().out)
        assert doc["error"] == "integrity" and name in doc["message"]
        command = doc["hint"].split("`")[1]
        assert command.startswith("envship fetch --verify --lock '/")  # absolute, quoted
        assert ("--target linux-x86_64" in command) == bool(narrowed)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "ENVSHIP_STORE"}
        env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # not the store: the default one
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        proc = subprocess.run(
            ["sh", "-c", command], cwd=elsewhere, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert "1 of them replacing a damaged copy" in proc.stdout
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == stored.name
    assert run_cli(*args) == 0
    assert (out / "files" / name).read_bytes() == wheel.read_bytes()
    assert not (tmp_path / "cache").exists()  # nothing went to the default store

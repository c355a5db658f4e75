"""``envship env`` through the real CLI entry point, with real venvs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from envship.cli.env import command
from envship.cli.main import cli, main
from envship.envs import USED_NAME
from test_install import HOST, build_wheels, stocked_store, target, write_lock
from test_unreadable import USER_1000, Shared, _json, shared  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def _registered() -> None:
    cli.add_command(command)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """A lock (alpha, beta, tool), a store holding it, and an env root in ENVSHIP_ROOT."""
    wheels = build_wheels(tmp_path / "dist")
    picked = [wheels[k] for k in ("alpha", "beta", "tool")]
    lock = write_lock(tmp_path / "pylock.toml", picked, targets=[target()])
    stocked_store(tmp_path / "store", picked)
    root = tmp_path / "envs"
    monkeypatch.delenv("ENVSHIP_ROOT", raising=False)
    return lock.path, tmp_path / "store", root


def test_create_list_check_gc(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lock, store, root = setup
    create = ["env", "create", "ds", "--root", str(root), "--lock", str(lock)]
    create += ["--store", str(store)]

    assert main([*create, "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["created"] is True and made["current"] is True
    assert made["target"]["name"] == HOST and made["name"] == "ds"
    path = Path(made["path"])
    assert path == root / "ds" / "versions" / made["key"]
    assert os.readlink(root / "ds" / "current") == f"versions/{made['key']}"
    run = subprocess.run([str(path / "bin" / "tool")], capture_output=True, text=True)
    assert run.stdout == "tool ran\n"

    assert main(create) == 0
    assert capsys.readouterr().out == (
        f"ds is current at existing version {made['key']}: {path / 'bin' / 'python'}\n"
    )
    assert main([*create, "--reinstall", "--json"]) == 0  # made again, in place
    remade = json.loads(capsys.readouterr().out)
    assert (remade["key"], remade["repaired"], remade["created"]) == (made["key"], True, True)
    assert main([*create, "--reinstall"]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"made ds version {made['key']} again, in place (target {HOST})")

    assert main(["env", "list", "--root", str(root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["root"] == str(root)
    listed = doc["envs"]
    assert [e["name"] for e in listed] == ["ds"] and listed[0]["current"] == made["key"]
    (version,) = listed[0]["versions"]
    assert version["complete"] is True and version["target"] == made["target"]  # one form
    assert set(version) >= {"key", "path", "lock_digest", "last_used", "size", "groups"}

    assert main(["env", "list", "--root", str(root), "--sizes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"ds  current: {made['key']}"
    assert lines[1].startswith(f"  * {made['key']}  {HOST}  used ")
    assert lines[1].endswith("KiB") or lines[1].endswith("MiB")

    stamp = time.time() - 3 * 24 * 3600
    os.utime(path / USED_NAME, (stamp, stamp))
    assert main(["env", "check", "ds", "--root", str(root)]) == 0
    assert capsys.readouterr().out.startswith(f"ds version {made['key']} (target {HOST}) runs")
    assert time.time() - (path / USED_NAME).stat().st_mtime < 3600  # resolving is a use
    assert main(["env", "check", "ds", "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["key"] == made["key"]

    gc = ["env", "gc", "--root", str(root), "--older-than", "0s"]
    assert main([*gc, "--dry-run"]) == 0
    kept = "kept 1 current or recently used"
    assert capsys.readouterr().out == f"would remove 0 version(s), 0 B; {kept}\n"
    assert main([*gc, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {
        "removed": [],
        "busy": [],
        "in_use": [],
        "kept": 1,
        "freed": 0,
        "dry_run": False,
        "stale_locks": [],
        "empty_envs": [],
        "denied": [],
        "leftovers_freed": 0,
        "strays": [],
    }
    assert path.is_dir()


def test_gc_text_names_what_it_removes(
    tmp_path: Path,
    setup: tuple[Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lock, store, root = setup
    monkeypatch.setenv("ENVSHIP_ROOT", str(root))  # instead of --root
    base = ["env", "create", "ds", "--lock", str(lock), "--store", str(store), "--json"]
    assert main(base) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*base, "--python", "/usr/bin/python3.11"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["created"] and second["key"] != first["key"]

    stamp = time.time() - 2 * 3600
    os.utime(Path(first["path"]) / USED_NAME, (stamp, stamp))
    assert main(["env", "gc", "--older-than", "3h"]) == 0
    assert capsys.readouterr().out == "removed 0 version(s), 0 B; kept 2 current or recently used\n"
    assert main(["env", "gc", "--older-than", "90m"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"removed ds/{first['key']} ") and out[0].endswith("iB")
    assert out[1].startswith("removed 1 version(s), ")
    assert out[1].endswith("; kept 1 current or recently used")
    assert not Path(first["path"]).exists()

    stray = root / "ds" / "versions" / "notes.txt"  # a file someone left: no version
    stray.write_text("x\n")
    assert main(["env", "gc", "--older-than", "0s"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"left {stray}: not a version (a file or link in versions/)"
    assert out[1] == "removed 0 version(s), 0 B; kept 1 current or recently used"
    assert stray.read_text() == "x\n"


@pytest.mark.parametrize(
    "args",
    [
        ["env", "list"],
        ["env", "gc"],
        ["env", "check", "ds"],
        ["env", "create", "ds", "--lock", "pylock.toml"],
    ],
)
def test_missing_root_is_bad_input_with_a_hint(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: no environment root given" in err
    assert "hint: pass --root DIR or set ENVSHIP_ROOT" in err

    assert main([*args, "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["error"] == "env-input" and "ENVSHIP_ROOT" in data["hint"]


def test_bad_input(
    tmp_path: Path, setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lock, store, root = setup
    root.mkdir()
    assert main(["env", "gc", "--root", str(root), "--older-than", "7 days"]) == 2
    assert "not a duration like 30s, 15m, 12h or 7d" in capsys.readouterr().err

    assert main(["env", "list", "--root", str(root)]) == 0
    assert capsys.readouterr().out == f"no environments under {root}\n"

    args = ["env", "create", "../up", "--root", str(root), "--lock", str(lock)]
    assert main([*args, "--store", str(store)]) == 2
    assert "invalid environment name '../up'" in capsys.readouterr().err
    assert main(["env", "list", "--root", str(tmp_path / "not-mounted")]) == 2
    assert "does not exist" in capsys.readouterr().err

    # timedelta stops at 999999999 days: longer is refused as a usage error, not a crash.
    assert main(["env", "gc", "--root", str(root), "--older-than", "100000000000d"]) == 2
    err = capsys.readouterr().err
    assert "'100000000000d' is too long; the longest is 999999999d" in err
    assert "Traceback" not in err
    assert main(["env", "gc", "--root", str(root), "--older-than", "999999999d"]) == 0
    assert capsys.readouterr().out == "removed 0 version(s), 0 B; kept 0 current or recently used\n"

    assert main(["env", "check", "nope", "--root", str(root), "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["error"] == "env-input" and "no environment 'nope'" in data["message"]


def test_check_refusal_exits_2(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lock, store, root = setup
    args = ["env", "create", "ds", "--root", str(root), "--lock", str(lock), "--store", str(store)]
    assert main([*args, "--json"]) == 0
    path = Path(json.loads(capsys.readouterr().out)["path"])
    marker = json.loads((path / ".envship-install.json").read_text())
    marker["target"]["glibc"] = "2.99"  # as if built on a newer image
    (path / ".envship-install.json").write_text(json.dumps(marker))

    assert main(["env", "check", "ds", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "cannot run on this machine" in err and "glibc 2.99 needed" in err


def test_gc_names_the_process_that_keeps_a_version(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lock, store, root = setup
    base = ["env", "create", "ds", "--root", str(root), "--lock", str(lock), "--store", str(store)]
    assert main([*base, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*base, "--python", "/usr/bin/python3.11", "--json"]) == 0
    capsys.readouterr()
    path = Path(first["path"])
    stamp = time.time() - 30 * 24 * 3600
    os.utime(path / USED_NAME, (stamp, stamp))
    code = "import sys; print('ready', flush=True); sys.stdin.read()"
    proc = subprocess.Popen(
        [str(path / "bin" / "python"), "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert main(["env", "gc", "--root", str(root), "--older-than", "1s"]) == 0
    finally:
        proc.communicate("")
    lines = capsys.readouterr().out.splitlines()
    comm = "python"  # the name the process was started by: VERSION/bin/python
    assert lines == [
        f"kept ds/{first['key']}: in use by process {proc.pid} ({comm})",
        "removed 0 version(s), 0 B; kept 1 current or recently used, 1 in use",
    ]
    assert path.is_dir()


def test_gc_help_states_what_it_can_and_cannot_see(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "gc", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a process on THIS machine runs from it" in text
    assert "every start of a kernel envship registered refresh its use stamp" in text
    assert (
        "Processes on other machines sharing the root (and in containers with a process "
        "namespace of their own) cannot be seen" in text
    )
    assert "matched by device and inode: a symlinked or bind-mounted root too" in text
    assert "Give --older-than longer than such jobs run." in text


def test_list_text_says_what_cannot_be_read_and_by_whom(
    shared: Shared,  # noqa: F811
) -> None:
    """What --json says of a folder another user keeps private, the text says too: the
    folder, its owner and mode for a version; for an environment folder, that its
    `current` cannot be read (not that it has none)."""
    private = shared.create("private", umask=0o077).parent.parent  # ROOT/private is 0700
    shared.create("mixed")
    for folder in (shared.root / "mixed" / "versions").iterdir():
        folder.chmod(0o700)  # as the auditor did: every version hidden, versions/ open
    doc = _json(shared.run("env", "list", "--root", str(shared.root), "--json"))
    (hidden,) = next(e for e in doc["envs"] if e["name"] == "mixed")["versions"]
    assert hidden["unreadable"] is not None
    proc = shared.run("env", "list", "--root", str(shared.root))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    mixed = lines.index(f"mixed  current: {hidden['key']}")
    assert lines[mixed + 1].startswith(f"  * {hidden['key']}  unreadable  used ")
    assert lines[mixed + 2] == f"      {hidden['unreadable']}"
    assert "owned by root (uid 0), mode 0700" in lines[mixed + 2]
    assert f"private  current: cannot be read by {USER_1000}" in lines
    assert "private  current: (none)" not in lines
    said = f"  unreadable: {private}: permission denied: {USER_1000} cannot read it"
    assert said in "\n".join(lines)


@pytest.mark.parametrize("damage", ["a distribution removed", "its record's target damaged"])
def test_checks_hint_repairs_the_version_it_names_in_place(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
) -> None:
    """Made with --no-groups on another interpreter than envship's: the printed command
    must repeat both (and the store), or it makes another version current and leaves
    the damaged one as it is."""
    wheels = build_wheels(tmp_path / "dist")
    picked = [wheels[k] for k in ("alpha", "beta", "tool")]
    lock = write_lock(
        tmp_path / "pylock.toml", picked, targets=[target()], groups={"dev": ["tool"]}
    )
    store = stocked_store(tmp_path / "stock", picked)  # not the default store
    root = tmp_path / "envs"
    base = "/usr/bin/python3.11"  # not envship's own interpreter
    create = ["env", "create", "ds", "--root", str(root), "--lock", str(lock.path)]
    assert main([*create, "--store", str(store.root), "--no-groups", "--python", base]) == 0
    made = Path(os.path.realpath(root / "ds" / "current"))
    if damage == "a distribution removed":
        next(made.glob("lib/python*/site-packages/beta-1.0.dist-info")).rename(tmp_path / "gone")
    else:
        marker = made / ".envship-install.json"
        record = json.loads(marker.read_text())
        record["target"] = "x"
        marker.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["env", "check", "ds", "--root", str(root), "--json"]) == 1
    hint = json.loads(capsys.readouterr().out)["hint"]
    printed = hint.split(" makes it again in place")[0]
    # A damaged target is left out: the one lock target that fits here is the same.
    pick = f" --target {HOST}" if damage == "a distribution removed" else ""
    assert printed == (
        f"envship env create ds --root {root} --store {store.root} --lock {lock.path}"
        f"{pick} --python {base} --no-groups"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "empty-store"))
    assert main([*printed.split()[1:], "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["path"] == str(made) and again["repaired"] is True
    assert main(["env", "check", "ds", "--root", str(root)]) == 0

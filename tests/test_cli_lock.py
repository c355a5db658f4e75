"""``envship lock`` through the real CLI entry point: bad input is exit 2 with the option
named, moved versions and notes are shown in text and ``--json``."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from envship.cli.main import main
from indexlib import IndexServer
from test_lock import relock_root, relock_server, write_spec  # noqa: F401  (fixtures)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def spec_dir(tmp_path: Path, index_server: IndexServer) -> Path:
    write_spec(tmp_path / "spec", index_server.simple_url, dependencies=["alpha"])
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("")
    for folder in ("fifo", "linked"):
        (tmp_path / folder).mkdir()
    os.mkfifo(tmp_path / "fifo" / "pylock.toml")
    (tmp_path / "linked" / "pylock.toml").symlink_to(tmp_path / "fifo" / "pylock.toml")
    return tmp_path / "spec"


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("../missing-folder/pylock.toml", "missing-folder does not exist"),
        ("../folder", "is a folder; name the lock file"),
        ("../afile/pylock.toml", "afile is not a folder"),
        ("../lock.toml", "'lock.toml' is not a PEP 751 lock file name"),
        ("../pylock.a.b.toml", "use pylock.toml or pylock.<name>.toml"),
        ("../pylock.toml\n", "is not a PEP 751 lock file name"),  # "$" matched before it
        # The write replaces what a link ends at: never a FIFO or a device.
        ("../fifo/pylock.toml", "is not a regular file"),
        ("../linked/pylock.toml", "is not a regular file"),
    ],
)
def test_bad_output_is_exit_2_naming_the_option(
    spec_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    output: str,
    reason: str,
    as_json: bool,
) -> None:
    monkeypatch.chdir(spec_dir)
    code, out, err = run(capsys, "lock", "-o", output, *(["--json"] if as_json else []))
    assert code == 2
    if as_json:
        data = json.loads(out)
        assert data["error"] == "usage"
        message = data["message"]
    else:
        assert "Traceback" not in err
        message = err
    assert "'-o' / '--output'" in message and reason in message, message
    assert not [p for p in spec_dir.parent.rglob("pylock*.toml") if p.is_file()]
    assert stat.S_ISFIFO(os.stat(spec_dir.parent / "linked" / "pylock.toml").st_mode)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-P", "Bad Name!"], "'Bad Name!' is not a valid package name"),
        (["--check", "-U"], "--check only reads the lock"),
        (["--check", "-P", "alpha"], "--check only reads the lock"),
        (["--check", "-o", "../folder"], "is a folder"),
        (["--check", "-o", "../lock.toml"], "not a PEP 751 lock file name"),
    ],
)
def test_bad_combinations_are_exit_2(
    spec_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    says: str,
) -> None:
    monkeypatch.chdir(spec_dir)
    code, _, err = run(capsys, "lock", *args)
    assert code == 2 and says in err, err
    code, out, _ = run(capsys, "lock", *args, "--json")
    assert code == 2 and says in json.loads(out)["message"]
    assert not (spec_dir / "pylock.toml").exists()


def test_named_output_is_written(spec_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = spec_dir / "pylock.cpu.toml"
    code, out, _ = run(capsys, "lock", "--spec", spec_dir, "-o", out_path)
    assert code == 0 and f"wrote {out_path}" in out
    code, out, _ = run(capsys, "lock", "--spec", spec_dir, "--check", "-o", out_path)
    assert code == 0 and "is current" in out


def test_relock_shows_what_moved(
    tmp_path: Path,
    relock_server: IndexServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = relock_server.simple_url
    write_spec(tmp_path, url, dependencies=["alpha<1.1", "beta<1.3"])
    assert run(capsys, "lock", "--spec", tmp_path)[0] == 0
    write_spec(tmp_path, url, dependencies=["alpha", "beta>=1.3"])
    code, out, _ = run(capsys, "lock", "--spec", tmp_path)
    assert code == 0
    assert out.splitlines()[1:] == ["  beta 1.1 -> 1.3"]
    code, out, _ = run(capsys, "lock", "--spec", tmp_path, "-P", "alpha", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["changes"] == [{"name": "alpha", "old": ["1.0"], "new": ["1.1"], "requested": True}]
    assert data["notes"] == []


def test_notes_are_warnings(spec_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (spec_dir / "pylock.toml").write_text("lock-version = \n")
    code, out, err = run(capsys, "lock", "--spec", spec_dir, "-P", "nonexistent")
    assert code == 0 and out.startswith("wrote ")
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 2
    assert "could not be read" in warnings[0]
    assert "'nonexistent' was named to upgrade but is not locked" in warnings[1]
    code, out, _ = run(capsys, "lock", "--spec", spec_dir, "-P", "nonexistent", "--json")
    assert json.loads(out)["notes"] == ["'nonexistent' was named to upgrade but is not locked"]


def test_check_on_a_lock_envship_did_not_write(
    spec_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "lock", "--spec", spec_dir)[0] == 0
    path = spec_dir / "pylock.toml"
    data = tomllib.loads(path.read_text())
    text = path.read_text().split("[tool.envship]")[0]
    assert "tool" in data and "[tool" not in text
    path.write_text(text.replace('created-by = "envship"', 'created-by = "uv"'))
    code, _, err = run(capsys, "lock", "--check", "--spec", spec_dir)
    assert code == 1
    assert "was not written by `envship lock`: it records no spec digest" in err
    assert "spec changed" not in err


# -- hints that work as printed, from the folder the check ran in -----------------------

HERE = ["here", "elsewhere", "elsewhere, named output"]


@pytest.mark.parametrize("case", HERE)
def test_a_stale_check_hints_the_lock_command_that_fixes_it_from_here(
    spec_dir: Path,
    tmp_path: Path,
    index_server: IndexServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    """Each hint is run as printed, in the folder where the check ran: a bare `envship
    lock` there would lock the spec of that folder (or find none), and write the default
    lock, not the one checked."""
    spec_file = (spec_dir / "envship.toml").resolve()
    check = ["lock", "--check"]
    expected = "envship lock"
    if case == "here":
        monkeypatch.chdir(spec_dir)
    else:
        monkeypatch.chdir(tmp_path / "folder")
        check += ["--spec", str(spec_dir)]
        expected += f" --spec {spec_file}"
    if case.endswith("named output"):
        output = spec_dir / "pylock.gpu.toml"
        check += ["-o", str(output)]
        expected += f" -o {output}"
    # No lock yet, then a lock the spec moved away from: the same command fixes both.
    for step in ("missing", "stale"):
        if step == "stale":
            write_spec(spec_dir, index_server.simple_url, dependencies=[])
        code, out, _ = run(capsys, *check, "--json")
        assert code == 1
        doc = json.loads(out)
        assert doc["error"] == "stale-lock" and doc["hint"] == f"run `{expected}`", doc
        code, _, err = run(capsys, *shlex.split(expected)[1:])
        assert code == 0, err
        code, out, err = run(capsys, *check)
        assert code == 0 and out.endswith("is current\n"), err
    assert not (tmp_path / "folder" / "pylock.toml").exists()


def test_a_spec_path_with_a_space_is_quoted_in_the_hint(
    tmp_path: Path, index_server: IndexServer, capsys: pytest.CaptureFixture[str]
) -> None:
    write_spec(tmp_path / "my spec", index_server.simple_url, dependencies=[])
    code, _, err = run(capsys, "lock", "--check", "--spec", tmp_path / "my spec")
    assert code == 1
    quoted = shlex.quote(str((tmp_path / "my spec" / "envship.toml").resolve()))
    assert f"hint: run `envship lock --spec {quoted}`" in err

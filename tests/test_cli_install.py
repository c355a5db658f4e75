"""``envship install`` through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from envship.cli.install import command
from envship.cli.main import cli, main
from envship.install import MARKER_NAME
from test_install import HOST, OTHER_MACHINE, build_wheels, stocked_store, target, write_lock


@pytest.fixture(autouse=True)
def _registered() -> None:
    cli.add_command(command)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A lock (alpha, beta, tool) and a store holding all of it."""
    wheels = build_wheels(tmp_path / "dist")
    picked = [wheels[k] for k in ("alpha", "beta", "tool")]
    lock = write_lock(tmp_path / "pylock.toml", picked, targets=[target()])
    stocked_store(tmp_path / "store", picked)
    return lock.path, tmp_path / "store"


def test_install_json_then_up_to_date(
    tmp_path: Path, setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lock, store = setup
    dest = tmp_path / "env"
    args = ["install", str(dest), "--lock", str(lock), "--store", str(store), "--json"]

    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "created" and out["changed"] is True
    assert out["dest"] == str(dest) and out["python"] == str(dest / "bin" / "python")
    assert out["target"]["name"] == HOST
    assert sorted(p["name"] for p in out["packages"]) == ["alpha", "beta", "tool"]
    assert set(out) >= {"lock_digest", "groups", "installed", "removed", "seconds"}
    run = subprocess.run([str(dest / "bin" / "tool")], capture_output=True, text=True)
    assert run.stdout == "tool ran\n"

    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["changed"] is False and again["action"] == "unchanged"


def test_install_text_and_options(
    tmp_path: Path,
    setup: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lock, store = setup
    monkeypatch.chdir(lock.parent)  # --lock defaults to ./pylock.toml
    monkeypatch.setenv("ENVSHIP_STORE", str(store))  # --store defaults to $ENVSHIP_STORE
    dest = tmp_path / "env"
    assert main(["install", str(dest), "--compile", "--target", HOST]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"created {dest} (3 packages, target {HOST})")
    assert "  + alpha==1.0" in out
    assert list(dest.glob("lib/python*/site-packages/alpha/__pycache__/*.pyc"))

    assert main(["install", str(dest)]) == 0
    assert capsys.readouterr().out.strip() == f"{dest} is up to date (3 packages, target {HOST})"


@pytest.mark.parametrize(
    ("options", "packages", "groups"),
    [
        ([], ["alpha", "beta", "tool"], ["dev"]),  # every group of the lock
        (["--group", "dev"], ["alpha", "beta", "tool"], ["dev"]),
        (["--no-groups"], ["alpha", "beta"], []),  # a lock's only group left out
    ],
    ids=["default", "group", "no-groups"],
)
def test_groups_are_every_one_named_or_none(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    packages: list[str],
    groups: list[str],
) -> None:
    wheels = build_wheels(tmp_path / "dist")
    picked = [wheels[k] for k in ("alpha", "beta", "tool")]
    lock = write_lock(tmp_path / "pylock.toml", picked, groups={"dev": ["tool"]})
    store = stocked_store(tmp_path / "store", picked)
    dest = tmp_path / "env"
    args = ["install", str(dest), "--lock", str(lock.path), "--store", str(store.root)]
    assert main([*args, *options, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (sorted(p["name"] for p in out["packages"]), out["groups"]) == (packages, groups)
    assert json.loads((dest / MARKER_NAME).read_text())["groups"] == groups


def test_group_and_no_groups_exclude_each_other(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock, store = setup
    args = ["install", str(tmp_path / "env"), "--lock", str(lock), "--store", str(store)]
    assert main([*args, "--group", "dev", "--no-groups"]) == 2
    assert "--group and --no-groups exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "env").exists()


@pytest.mark.parametrize(("first", "then"), [("beta11", "beta"), ("beta", "beta11")])
def test_an_upgrade_or_downgrade_shows_the_old_version_above_the_new(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str, then: str
) -> None:
    wheels = build_wheels(tmp_path / "dist")
    store = stocked_store(tmp_path / "store", list(wheels.values())).root
    locks = [
        write_lock(tmp_path / f"{k}.toml", [wheels["alpha"], wheels[k]], targets=[target()]).path
        for k in (first, then)
    ]
    dest = tmp_path / "env"
    for lock in locks:
        assert main(["install", str(dest), "--lock", str(lock), "--store", str(store)]) == 0
    old, new = ("1.1", "1.0") if first == "beta11" else ("1.0", "1.1")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].startswith(f"updated {dest} (2 packages, ")
    assert lines[-2:] == [f"  - beta=={old}", f"  + beta=={new}"]


def test_relative_paths_everywhere(
    tmp_path: Path, setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: a relative --store once reached uv as a file:// URL and crashed.
    monkeypatch.chdir(tmp_path)
    args = ["install", "env", "--lock", "pylock.toml", "--store", "store"]
    assert main(args) == 0
    run = subprocess.run([str(tmp_path / "env" / "bin" / "tool")], capture_output=True, text=True)
    assert run.stdout == "tool ran\n"


@pytest.mark.parametrize(
    ("case", "code", "kind"),
    [("foreign", 2, "install-input"), ("no-store", 1, "store"), ("other-target", 2, "target")],
)
def test_errors_have_exit_codes_and_json(
    tmp_path: Path,
    setup: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    case: str,
    code: int,
    kind: str,
) -> None:
    lock, store = setup
    dest = tmp_path / "env"
    if case == "foreign":
        dest.mkdir()
        (dest / "mine.txt").write_text("keep")
    elif case == "no-store":
        store = tmp_path / "empty-store"
    else:
        lock.write_text(
            lock.read_text().replace(f'platform = "{HOST}"', f'platform = "{OTHER_MACHINE}"')
        )
    args = ["install", str(dest), "--lock", str(lock), "--store", str(store), "--json"]

    assert main(args) == code
    out = json.loads(capsys.readouterr().out)
    assert out["error"] == kind
    assert out["problems"], out
    assert not (dest / MARKER_NAME).exists()
    if case == "no-store":
        fetch = f"envship fetch --lock {lock} --target {HOST} --store {store}"
        assert out["hint"].endswith(f"; else fetch them: {fetch}")
        assert out["hint"].startswith(f"{store} holds none of them")
        assert len(out["problems"]) == 3
    if case == "foreign":
        assert [p.name for p in dest.iterdir()] == ["mine.txt"]


def test_error_text_goes_to_stderr(
    tmp_path: Path, setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lock, _ = setup
    args = ["install", str(tmp_path / "env"), "--lock", str(lock), "--store", str(tmp_path / "x")]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error: 3 of 3 locked artifacts are not in the store" in captured.err
    fetch = f"envship fetch --lock {lock} --target {HOST} --store {tmp_path / 'x'}"
    assert f"fetch them: {fetch}" in captured.err


def test_reinstall_puts_a_deleted_file_back(
    tmp_path: Path, setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lock, store = setup
    dest = tmp_path / "env"
    args = ["install", str(dest), "--lock", str(lock), "--store", str(store)]
    assert main(args) == 0
    module = next(dest.glob("lib/python*/site-packages/beta/__init__.py"))
    module.unlink()
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out  # metadata alone: not seen

    assert main([*args, "--reinstall"]) == 0

    assert capsys.readouterr().out.startswith(f"rebuilt {dest} (3 packages")
    assert module.is_file()

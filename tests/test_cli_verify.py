"""``envship verify`` through ``envship.cli.main.main``: exit codes, text and ``--json``."""

from __future__ import annotations

import importlib.util
import json
import marshal
import shutil
import subprocess
from pathlib import Path

import pytest

from envship.cli.main import cli, main
from envship.cli.verify import command
from test_verify import Venv, Wheels, make_venv, wheels  # noqa: F401  (wheels: a fixture)

cli.add_command(command)

REPORT_KEYS = {
    "identical",
    "lock",
    "target",
    "env",
    "site_packages",
    "search_path",
    "python",
    "mode",
    "distributions",
    "checked_files",
    "checked_bytecode",
    "differences",
}


@pytest.fixture
def venv(tmp_path: Path, wheels: Wheels) -> Venv:  # noqa: F811
    return make_venv(tmp_path, wheels)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_identical_env_exits_0(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--full")
    assert code == 0
    assert out.startswith("ok: ") and "identical" in out and "hashed" in out

    code, out, err = run(capsys, "--lock", wheels.lock_no_omega, venv.python, "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert set(data) == REPORT_KEYS
    assert data["identical"] is True and data["differences"] == []
    assert data["site_packages"] == str(venv.site)
    assert data["env"] == str(venv.python)
    assert (data["target"], data["mode"], data["distributions"]) == ("linux-x86_64", "quick", 3)
    assert data["checked_files"] > 3


def _break(venv: Venv, wheels: Wheels) -> dict[str, str]:  # noqa: F811
    """One of each difference; returns kind -> the path the report must name."""
    venv.install(wheels.beta_11, wheels.omega)
    shutil.rmtree(venv.site / "tool-1.0.dist-info")
    stray = venv.site / "alpha" / "stray.py"
    stray.write_text("x = 1\n")
    init = venv.site / "alpha" / "__init__.py"
    init.write_text(init.read_text().upper())  # same size: only --full sees it
    (venv.site / "alpha" / "data.bin").unlink()
    return {
        "missing": str(venv.site),
        "extra": str(venv.site / "omega-1.0.dist-info"),
        "version": str(venv.site / "beta-1.1.dist-info"),
        "changed": str(init),
        "removed": str(venv.site / "alpha" / "data.bin"),
        "added": str(stray),
    }


def test_differences_exit_1_grouped_with_paths(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = _break(venv, wheels)
    code, out, err = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--full")
    assert code == 1
    assert "differs from" in err and "6 differences" in err
    headings = [line for line in out.splitlines() if not line.startswith(" ")][1:]
    assert [h.split(" ")[0] for h in headings] == [
        "missing", "extra", "wrong", "changed", "removed", "added",
    ]  # fmt: skip
    for path in paths.values():
        assert path in out
    assert "locked 1.0, installed 1.1" in out

    code, out, err = run(capsys, "--lock", wheels.lock_no_omega, venv.root)
    assert code == 1
    assert paths["changed"] not in out  # quick mode: same-size edit unseen...
    assert "--full" in err  # ...and the hint says how to see it


def test_json_lists_every_difference(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = _break(venv, wheels)
    code, out, err = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--full", "--json")
    assert code == 1 and err == ""
    data = json.loads(out)  # one document: the report, with the error's fields
    assert set(data) >= REPORT_KEYS and data["error"] == "mismatch"
    assert data["identical"] is False and data["mode"] == "full"
    found = {d["kind"]: d for d in data["differences"]}
    assert len(data["differences"]) == 6
    assert {k: d["path"] for k, d in found.items()} == paths
    for d in data["differences"]:
        assert set(d) == {"kind", "name", "path", "expected", "actual"}
    assert (found["version"]["expected"], found["version"]["actual"]) == ("1.0", "1.1")
    assert (found["missing"]["name"], found["missing"]["expected"]) == ("tool", "1.0")
    assert found["extra"]["actual"] == "1.0"


def test_defaults_lock_in_cwd_and_active_venv(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    shutil.copy(wheels.lock_no_omega, tmp_path / "pylock.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIRTUAL_ENV", str(venv.root))
    code, out, _ = run(capsys)
    assert code == 0 and str(venv.root) in out
    monkeypatch.delenv("VIRTUAL_ENV")
    code, _, err = run(capsys)
    assert code == 2
    assert "no environment to verify" in err and "hint:" in err


def test_ignore_and_site_packages_argument(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    venv.install(wheels.omega)
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.site)
    assert code == 1 and "omega 1.0" in out
    code, _, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.site, "--ignore", "omega")
    assert code == 0


def test_groups_and_target_options(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "--lock", wheels.lock, venv.root)  # default: every group
    assert code == 1 and "omega 1.0" in out
    code, _, _ = run(capsys, "--lock", wheels.lock, venv.root, "--target", "linux-x86_64")
    assert code == 1
    venv.install(wheels.omega)
    code, _, _ = run(capsys, "--lock", wheels.lock, venv.root, "--group", "dev")
    assert code == 0
    code, _, err = run(capsys, "--lock", wheels.lock, venv.root, "--target", "nope")
    assert code == 2 and "no target 'nope'" in err


def test_bytecode_option_finds_a_pyc_that_holds_other_code(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As an installer with --compile would: the env's own interpreter writes the caches.
    subprocess.run([str(venv.python), "-m", "compileall", "-q", str(venv.site)], check=True)
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--bytecode")
    assert code == 0 and "3 cached .pyc compared with their sources" in out

    source = venv.site / "alpha" / "__init__.py"
    pyc = Path(importlib.util.cache_from_source(str(source)))
    header = pyc.read_bytes()[:16]  # still matching the source: importlib would use it
    pyc.write_bytes(header + marshal.dumps(compile("evil = 1", str(source), "exec")))
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--bytecode")
    assert code == 1
    assert f"alpha  {pyc}" in out and "found    other code than its source" in out
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--bytecode", "--json")
    data = json.loads(out)
    assert data["checked_bytecode"] == 3
    assert [(d["kind"], d["path"]) for d in data["differences"]] == [("changed", str(pyc))]
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--full")
    assert code == 0  # without --bytecode, RECORD's view: identical

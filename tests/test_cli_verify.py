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
from indexlib import _record_hash
from test_install import stocked_store
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
    "interpreter",
    "mode",
    "distributions",
    "checked_files",
    "checked_bytecode",
    "differences",
    "notes",
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
    assert data["env"] == data["interpreter"] == str(venv.python)
    # the (empty) store vouches for no wheel: the installed RECORDs were all there was
    (note,) = [n for n in data["notes"] if "installed RECORD only" in n]
    assert "holds none of the 3 locked wheels" in note
    assert (data["target"]["name"], data["mode"], data["distributions"]) == (
        "linux-x86_64",
        "quick",
        3,
    )
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
    pth = venv.site / "zz.pth"
    pth.write_text('import sys; sys.stderr.write("pth code ran\\n")\n')
    cfg = venv.root / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace("site-packages = false", "site-packages = true"))
    return {
        "missing": str(venv.site),
        "config": str(cfg),
        "extra": str(venv.site / "omega-1.0.dist-info"),
        "version": str(venv.site / "beta-1.1.dist-info"),
        "changed": str(init),
        "removed": str(venv.site / "alpha" / "data.bin"),
        "added": str(stray),
        "unowned": str(pth),  # and tool/, whose dist-info is gone
    }


def test_differences_exit_1_grouped_with_paths(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = _break(venv, wheels)
    code, out, err = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--full")
    assert code == 1
    # 9: the tool package left without its dist-info is unowned too
    # The tool package and its bin/tool script, left without their dist-info, are unowned.
    assert "differs from" in err and "10 differences" in err
    headings = [ln for ln in out.splitlines() if not ln.startswith((" ", "note:"))][1:]
    assert [h.split(" ")[0] for h in headings] == [
        "missing", "extra", "wrong", "settings", "changed", "removed", "added", "unowned",
    ]  # fmt: skip
    for path in paths.values():
        assert path in out
    assert "locked 1.0, installed 1.1" in out
    assert f"{paths['config']}: include-system-site-packages = true, expected false" in out
    assert f"  {paths['unowned']}  (a file)\n      a .pth file: at every start" in out
    assert "pth code ran" not in err  # checking the env ran none of its .pth files

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
    assert len(data["differences"]) == 10  # tool/ and bin/tool, unowned without their dist-info
    assert {k: d["path"] for k, d in found.items()} == paths
    keys = {"kind", "name", "path", "expected", "actual"}
    for d in data["differences"]:  # a note says why outside code runs: pyvenv.cfg, a .pth
        noted = d["kind"] == "config" or d["path"].endswith(".pth") or d["name"].startswith("bin/")
        assert set(d) == (keys | {"note"} if noted else keys)
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


def test_a_venv_without_its_interpreter_exits_2_in_both_forms(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    venv.python.unlink()
    code, out, err = run(capsys, "--lock", wheels.lock_no_omega, venv.root)
    assert (code, out) == (2, "")
    assert f"the interpreter of {venv.root} is missing" in err and str(venv.python) in err
    code, _, err = run(capsys, "--lock", wheels.lock_no_omega, venv.python)
    assert code == 2 and f"{venv.python} does not exist" in err
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--json")
    data = json.loads(out)
    assert code == 2 and data["error"] == "spec"
    assert data["problems"] == [{"where": str(venv.python), "message": "no such file"}]
    code, _, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.site)
    assert code == 0  # a site-packages folder is its files alone


def test_notes_say_what_could_not_be_checked(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    (venv.site / "_virtualenv.pth").write_text("import _virtualenv")  # as uv writes it
    (venv.site / "_virtualenv.py").write_text('"""Patches."""\n')
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root)
    assert code == 0 and out.startswith("ok: ")
    assert f"\nnote: {venv.site / '_virtualenv.py'} (imported at every start" in out
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--json")
    (note,) = [n for n in json.loads(out)["notes"] if "_virtualenv" in n]
    assert code == 0 and "could not be checked" in note


def test_store_ties_the_files_to_the_locked_wheels(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    store = stocked_store(tmp_path / "wheels-store", [wheels.alpha, wheels.beta, wheels.tool])
    path = venv.site / "beta" / "__init__.py"
    path.write_text(path.read_text() + "import os\n")
    data = path.read_bytes()
    record = venv.site / "beta-1.0.dist-info" / "RECORD"
    lines = [
        f"beta/__init__.py,{_record_hash(data)},{len(data)}"
        if ln.startswith("beta/__init__")
        else ln
        for ln in record.read_text().splitlines()
    ]
    record.write_text("\n".join(lines) + "\n")  # the installed RECORD agrees with the edit
    code, _, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--full")
    assert code == 0  # the store given (ENVSHIP_STORE) holds none of the wheels
    code, out, err = run(capsys, "--lock", wheels.lock_no_omega, venv.root, "--store", store.root)
    assert code == 1 and "1 difference" in err
    assert f"beta  {path}" in out and "installed RECORD only" not in out


def test_a_folder_that_is_no_environment_exits_2(
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    (tmp_path / "e").mkdir()
    code, out, err = run(capsys, "--lock", wheels.lock_no_omega, tmp_path / "e")
    assert (code, out) == (2, "")
    assert "is not an environment" in err and "hint: name a venv" in err


def test_a_duplicate_is_its_own_heading(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = venv.site / "Beta-1.0.dist-info"
    shutil.copytree(venv.site / "beta-1.0.dist-info", copy)
    code, out, _ = run(capsys, "--lock", wheels.lock_no_omega, venv.root)
    assert code == 1
    assert "duplicate distributions (a second metadata folder of a locked name) (1):" in out
    assert f"  beta 1.0  {copy}  (locked: 1.0 only, in beta-1.0.dist-info)" in out

"""``envship kernel install|list|remove`` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from envship.cli.kernel import command
from envship.cli.main import cli, main
from envship.install import MARKER_NAME
from envship.kernels import KERNEL_JSON, LAUNCHER_NAME
from test_install import HOST
from test_kernels import GLIBC, isolate_jupyter, make_env


@pytest.fixture(autouse=True)
def user_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cli.add_command(command)
    return isolate_jupyter(tmp_path, monkeypatch)


@pytest.fixture
def env(tmp_path: Path) -> Path:
    return make_env(tmp_path / "work")


def test_install_list_remove_json(
    env: Path, user_kernels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kernel", "install", str(env), "--display-name", "DS", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["name"] == "ds-env" and made["display_name"] == "DS"
    assert made["resource_dir"] == str(user_kernels / "ds-env")
    assert made["placement"] == "user" and made["on_jupyter_path"] is True
    assert made["target"]["name"] == HOST and made["env"] == str(env)
    assert KernelSpecManager().get_kernel_spec("ds-env").display_name == "DS"

    assert main(["kernel", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["kernels"]
    assert [(k["name"], k["env"], k["env_exists"]) for k in listed] == [("ds-env", str(env), True)]

    assert main(["kernel", "remove", "ds-env", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"]["name"] == "ds-env"
    assert not (user_kernels / "ds-env").exists()
    assert main(["kernel", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"kernels": []}


def test_text_output_and_placement_options(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kernel", "install", str(env), "--name", "team"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("installed kernel 'team' (Python (ds-env)) in ")
    assert f"after checking the machine fits {HOST}" in out.out and out.err == ""

    kd = tmp_path / "kd"
    assert main(["kernel", "install", str(env), "--kernel-dir", str(kd)]) == 0
    out = capsys.readouterr()
    assert (kd / "ds-env" / KERNEL_JSON).is_file()
    assert f"note: {kd} is not on Jupyter's search path" in out.err

    prefix = tmp_path / "prefix"
    assert main(["kernel", "install", str(env), "--prefix", str(prefix)]) == 0
    out = capsys.readouterr()
    assert (prefix / "share/jupyter/kernels/ds-env" / KERNEL_JSON).is_file()
    assert f"add {prefix / 'share/jupyter'} to JUPYTER_PATH" in out.err

    assert main(["kernel", "list"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[:3] == ["team", "fits", str(env)]
    assert main(["kernel", "list", "--kernel-dir", str(kd)]) == 0
    assert capsys.readouterr().out.split()[:2] == ["ds-env", "fits"]
    assert main(["kernel", "remove", "ds-env", "--kernel-dir", str(kd)]) == 0
    assert capsys.readouterr().out == f"removed kernel 'ds-env' ({kd / 'ds-env'})\n"

    usage = ["kernel", "install", str(env), "--prefix", str(prefix), "--kernel-dir", str(kd)]
    assert main(usage) == 2
    assert "choose one of --user, --prefix, --kernel-dir" in capsys.readouterr().err
    assert main(["kernel", "install", str(env), "--user", "--prefix", str(prefix)]) == 2
    missing = tmp_path / "no-such-kernels"
    assert main(["kernel", "list", "--kernel-dir", str(missing)]) == 2
    assert f"{missing} does not exist" in capsys.readouterr().err


def test_errors_are_rendered_with_kind_and_exit_code(
    env: Path, tmp_path: Path, user_kernels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kernel", "install", str(tmp_path / "nowhere"), "--json"]) == 2
    err = json.loads(capsys.readouterr().out)
    assert err["error"] == "kernel-input" and err["message"].startswith("there is no environment")

    foreign = user_kernels / "python-other"
    foreign.mkdir(parents=True)
    (foreign / KERNEL_JSON).write_text(json.dumps({"argv": ["x"], "display_name": "x"}))
    assert main(["kernel", "remove", "python-other"]) == 2  # never ours to remove
    text = capsys.readouterr().err
    assert "was not made by envship; refusing to remove it" in text
    assert "hint: remove it with `jupyter kernelspec remove python-other`" in text
    assert (foreign / KERNEL_JSON).is_file()

    assert main(["kernel", "list"]) == 0
    assert capsys.readouterr().out == "no envship kernels found\n"


def test_list_shows_the_launchers_verdict(
    env: Path, user_kernels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kernel", "install", str(env)]) == 0
    capsys.readouterr()
    marker = json.loads((env / MARKER_NAME).read_text())
    marker["target"]["glibc"] = "2.99"  # the environment, re-made on a newer image
    (env / MARKER_NAME).write_text(json.dumps(marker))

    assert main(["kernel", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["ds-env", "refuses", str(env)]
    assert lines[2].strip() == f"refuses: glibc >= 2.99 needed, this machine has {GLIBC}"
    assert main(["kernel", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["kernels"]
    assert listed["fits"] is False and listed["env_exists"] is True
    assert listed["reasons"] == [f"glibc >= 2.99 needed, this machine has {GLIBC}"]

    # A kernelspec an older envship wrote: listed with the command that renews it.
    marker["target"]["glibc"] = "2.28"
    (env / MARKER_NAME).write_text(json.dumps(marker))
    launcher = user_kernels / "ds-env" / LAUNCHER_NAME
    launcher.write_text(launcher.read_text() + "\n# an older launcher\n")
    assert main(["kernel", "list"]) == 0
    last = capsys.readouterr().out.splitlines()[-1].strip()
    renew = f"envship kernel install {env} --name ds-env --kernel-dir {user_kernels}"
    assert last == f"its launcher is an older envship's; renew it: {renew}"
    assert main(renew.split()[1:]) == 0
    capsys.readouterr()
    assert main(["kernel", "list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize("name", ["my kernel/..", "../up", ".hidden", "???", "ds\n"])
def test_an_invalid_kernel_name_is_bad_input(
    env: Path, user_kernels: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["kernel", "install", str(env), "--name", name]) == 2
    assert f"error: invalid kernel name {name!r}" in capsys.readouterr().err
    assert main(["kernel", "install", str(env), "--name", name, "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "kernel-input"
    assert not user_kernels.exists()


def test_the_hint_for_a_plain_venv_works(
    tmp_path: Path, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(plain)], check=True)
    assert main(["kernel", "install", str(plain)]) == 2  # a folder envship cannot use
    hint = capsys.readouterr().err.split("hint: ", 1)[1]
    assert f"envship install {plain}" not in hint  # it would refuse a folder it did not make

    # Following it: a new folder from the lock, then its kernel.
    lock = json.loads((env / MARKER_NAME).read_text())["lock"]["path"]
    store = tmp_path / "work" / "store"
    new = tmp_path / "new-env"
    assert "`envship install NEW_DIR --lock LOCK`" in hint
    assert main(["install", str(new), "--lock", lock, "--store", str(store)]) == 0
    assert "`envship kernel install NEW_DIR`" in hint
    assert main(["kernel", "install", str(new)]) == 0
    capsys.readouterr()
    assert main(["kernel", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["kernels"]
    assert listed["env"] == str(new) and listed["fits"] is True


@pytest.mark.parametrize("folder", ["kd", "kd/kernels"])
def test_the_jupyter_path_note_is_true(
    env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    folder: str,
) -> None:
    """Following the note makes real `jupyter kernelspec list` find the kernel."""
    kd = tmp_path / folder
    assert main(["kernel", "install", str(env), "--kernel-dir", str(kd), "--name", "k"]) == 0
    note = capsys.readouterr().err
    entry = note.split("add ", 1)[1].split(" to JUPYTER_PATH", 1)[0]
    if "--kernel-dir " in note:  # not a `kernels` folder: install where the note says
        again = note.split("--kernel-dir ", 1)[1].split()[0]
        assert main(["kernel", "install", str(env), "--kernel-dir", again, "--name", "k"]) == 0
        assert "note: " in capsys.readouterr().err
    jupyter = Path(sys.executable).parent / "jupyter"
    listed = subprocess.run(
        [str(jupyter), "kernelspec", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "JUPYTER_PATH": entry},
    )
    found = json.loads(listed.stdout)["kernelspecs"]
    assert found["k"]["spec"]["metadata"]["envship"]["env"] == str(env)
    monkeypatch.setenv("JUPYTER_PATH", entry)
    assert "k" in KernelSpecManager().find_kernel_specs()


@pytest.mark.parametrize(
    "args",
    [
        ["kernel", "install", "{missing}", "--kernel-dir", "{tmp}/kd"],
        ["kernel", "list", "--kernel-dir", "{missing}"],
        ["kernel", "remove", "k", "--kernel-dir", "{missing}"],
    ],
)
def test_a_path_that_does_not_exist_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    filled = [a.format(missing=tmp_path / "nonexist", tmp=tmp_path) for a in args]
    assert main(filled) == 2
    assert str(tmp_path / "nonexist") in capsys.readouterr().err


def test_remove_of_an_unknown_name_hints_a_list_that_searches_the_same_folders(
    env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kd = tmp_path / "kd"
    assert main(["kernel", "install", str(env), "--kernel-dir", str(kd)]) == 0
    capsys.readouterr()
    assert main(["kernel", "remove", "typo", "--kernel-dir", str(kd), "--json"]) == 2
    hint = json.loads(capsys.readouterr().out)["hint"]
    listed = f"envship kernel list --kernel-dir {kd}"
    assert hint == f"`{listed}` shows the kernels envship made there"
    # As printed, from another folder: it lists the kernel a bare `kernel list` misses.
    monkeypatch.chdir(tmp_path / "work")
    assert main(listed.split()[1:]) == 0
    assert capsys.readouterr().out.split()[:2] == ["ds-env", "fits"]
    assert main(["kernel", "list"]) == 0
    assert capsys.readouterr().out == "no envship kernels found\n"


def test_remove_without_folders_says_how_to_reach_a_prefix_kernel(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "prefix"
    assert main(["kernel", "install", str(env), "--prefix", str(prefix)]) == 0
    capsys.readouterr()
    assert main(["kernel", "remove", "ds-env"]) == 2  # not on Jupyter's path
    err = capsys.readouterr().err
    hint = " ".join(err.split("hint: ", 1)[1].split())
    assert hint.startswith("`envship kernel list` shows the kernels envship made on Jupyter's")
    said = "`envship kernel remove NAME --kernel-dir P/share/jupyter/kernels`"
    assert f"one installed with --prefix P is removed with {said}" in hint
    follow = said.strip("`").replace("NAME", "ds-env").replace("P/", f"{prefix}/")
    assert main(follow.split()[1:]) == 0
    assert not (prefix / "share/jupyter/kernels/ds-env").exists()

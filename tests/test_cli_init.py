"""``envship init`` through the real entry point: output, JSON shape and exit codes."""

from __future__ import annotations

import contextvars
import json
from pathlib import Path

import pytest

from envship.cli import init
from envship.cli.main import cli, main
from envship.spec import load_spec


def run(*argv: str) -> int:
    # ``--json`` sets a context variable; a copied context keeps it from leaking into
    # the next test. Registering here keeps the test independent of main's table.
    cli.add_command(init.command)
    return contextvars.copy_context().run(main, list(argv))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "requirements.txt").write_text("numpy>=2\npandas\n", encoding="utf-8")
    (tmp_path / "runtime.txt").write_text("python-3.12\n", encoding="utf-8")
    return tmp_path


def test_text_output(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("init", str(project), "--name", "ds") == 0
    out = capsys.readouterr().out
    assert f"wrote {project / 'envship.toml'} from requirements.txt, runtime.txt" in out
    assert "ds: Python 3.12, 2 dependencies; targets: linux-x86_64, linux-aarch64" in out
    assert load_spec(project).name == "ds"


def test_json_output(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("init", str(project), "--target", "linux-aarch64", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "path": str(project / "envship.toml"),
        "sources": ["requirements.txt", "runtime.txt"],
        "name": load_spec(project).name,
        "python": ["3.12"],
        "dependencies": ["numpy>=2", "pandas"],
        "groups": {},
        "indexes": [],
        "targets": ["linux-aarch64"],
        "notes": [],
    }


def test_refuses_to_overwrite_without_force(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "envship.toml").write_text("# mine\n", encoding="utf-8")
    assert run("init", str(project)) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert (project / "envship.toml").read_text() == "# mine\n"
    assert run("init", str(project), "--force") == 0
    assert load_spec(project).dependencies == ("numpy>=2", "pandas")


def test_bad_input_exit_2_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "requirements.txt").write_text("ok\n-e .\n", encoding="utf-8")
    assert run("init", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "requirements.txt:2: editable installs are not supported" in err
    assert not (tmp_path / "envship.toml").exists()


def test_bad_input_json_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = "dependencies:\n  - python=3.11\n  - numpy\n"
    (tmp_path / "environment.yml").write_text(env, encoding="utf-8")
    assert run("init", str(tmp_path), "--json") == 2
    data = json.loads(capsys.readouterr().out)
    assert data["error"] == "spec"
    assert data["problems"] == [
        {
            "where": "environment.yml: dependencies[1]",
            "message": "conda package 'numpy' is not under 'pip:'; envship installs from "
            "Python package indexes only",
        }
    ]
    assert "pip:" in data["hint"]


def test_self_referencing_extra_becomes_its_requirements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Written as "my-pkg[extra1]", the lock asked the index for a package named my-pkg.
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "My_Pkg"\ndependencies = ["requests", "my-pkg[extra1]"]\n'
        '[project.optional-dependencies]\nextra1 = ["attrs"]\n',
        encoding="utf-8",
    )
    assert run("init", str(tmp_path), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["dependencies"], data["groups"]) == (["requests", "attrs"], {"extra1": ["attrs"]})
    assert load_spec(tmp_path).dependencies == ("requests", "attrs")


@pytest.mark.parametrize(
    ("files", "where", "message"),
    [
        (
            {"pyproject.toml": '[project]\nname = "p"\ndependencies = ["p[gone]"]\n'},
            "pyproject.toml: project.dependencies[0]",
            "no extra 'gone'",
        ),
        ({"requirements.txt": "six\nfoo===\n"}, "requirements.txt:2", "'===' has no version"),
    ],
)
def test_what_the_lock_could_not_use_is_refused_with_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str],
    where: str,
    message: str,
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert run("init", str(tmp_path), "--json") == 2
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["where"], message in p["message"]) for p in problems] == [(where, True)]
    assert not (tmp_path / "envship.toml").exists()


def test_nothing_to_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("init", str(tmp_path)) == 2
    assert "nothing to import" in capsys.readouterr().err


def test_default_folder_is_cwd(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(project)
    assert run("init") == 0
    assert (project / "envship.toml").is_file()
    assert "wrote envship.toml" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "where", "message"),
    [
        (["--name", "bad name!"], "--name", "invalid name 'bad name!'"),
        (["--target", "windows-arm"], "--target windows-arm", "unknown platform 'windows-arm'"),
    ],
)
def test_bad_options_are_named_as_options(
    project: Path, capsys: pytest.CaptureFixture[str], argv: list[str], where: str, message: str
) -> None:
    assert run("init", str(project), *argv, "--json") == 2
    data = json.loads(capsys.readouterr().out)
    assert [(p["where"], message in p["message"]) for p in data["problems"]] == [(where, True)]
    assert not (project / "envship.toml").exists()


def test_several_options_on_one_requirements_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "requirements.txt").write_bytes(
        "-i https://a.org/simple --extra-index-url https://b.org/simple\nsix\n".encode("utf-8-sig")
    )
    assert run("init", str(tmp_path), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dependencies"] == ["six"]
    assert data["indexes"] == [
        {"name": "a-org", "url": "https://a.org/simple", "default": True},
        {"name": "b-org", "url": "https://b.org/simple"},
    ]
    assert [i.url for i in load_spec(tmp_path).indexes] == [
        "https://a.org/simple",
        "https://b.org/simple",
    ]


@pytest.mark.parametrize(
    ("cwd", "argv", "expected"),
    [
        (".", ["init", "p", "--force"], "next: envship lock --spec p"),
        (".", ["init", "a folder", "--force"], "next: envship lock --spec 'a folder'"),
        ("p", ["init", "--force"], "next: envship lock"),
        ("p", ["init", ".", "--force"], "next: envship lock"),
        ("p", ["init", "../p", "--force"], "next: envship lock"),
        ("p/sub", ["init", "..", "--force"], "next: envship lock --spec .."),
    ],
)
def test_the_next_command_works_from_where_the_user_is(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cwd: str,
    argv: list[str],
    expected: str,
) -> None:
    """`envship lock` finds the spec in the current folder only: from anywhere else the
    command must name the folder, quoted for the shell."""
    for folder in ("p", "a folder"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        (tmp_path / folder / "requirements.txt").write_text("six\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path / cwd)
    assert run(*argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == expected

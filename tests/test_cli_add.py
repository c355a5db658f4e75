"""``envship add`` through the real CLI entry point: text, ``--json``, exit codes, and what
``envship lock --check`` and ``envship verify`` say afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envship.cli.add import command
from envship.cli.main import cli, main
from indexlib import IndexServer
from test_add import Project, add_index_root, add_server, make_project  # noqa: F401  (fixtures)
from test_install import REPLACEMENTS, _site


@pytest.fixture(autouse=True)
def _registered() -> None:
    cli.add_command(command)


@pytest.fixture
def project(tmp_path: Path, add_server: IndexServer) -> Project:  # noqa: F811
    return make_project(tmp_path, add_server.simple_url)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_add_json_then_lock_check_and_verify_report_it(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "add", "kappa", "beta", "--env", project.env, "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["installed"] == ["kappa==1.0"] and data["recorded"] == ["kappa"]
    assert data["already_locked"] == ["beta==1.0"] and data["requested"] == ["kappa", "beta"]
    assert data["lock_stale"] is True and data["changed"] is True and data["held"] == 2
    assert (data["env"], data["spec"]) == (str(project.env), str(project.spec))

    code, _, err = run(capsys, "lock", "--check", "--spec", project.spec)
    assert code == 1 and "is stale: the spec changed since it was locked" in err

    code, out, _ = run(capsys, "verify", project.env, "--lock", project.lock, "--json")
    report = json.loads(out)
    assert code == 1 and report["identical"] is False
    assert [(d["kind"], d["name"], d["note"]) for d in report["differences"]] == [
        ("extra", "kappa", "added by envship add (kappa): run envship lock to take it in")
    ]
    code, out, err = run(capsys, "verify", project.env, "--lock", project.lock)
    assert code == 1 and "kappa 1.0" in out
    assert "hint: kappa came from `envship add`: `envship lock` takes it in;" in err


def test_text_output(
    project: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIRTUAL_ENV", str(project.env))  # --env defaults to it
    code, out, err = run(capsys, "add", "kappa", "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        f"would change {project.env} (2 locked packages held at their versions):",
        "  + kappa==1.0",
        f"would record in {project.spec}: kappa",
        f"the lock would be stale: run `envship lock` to take the addition into {project.lock}",
    ]
    assert "Would install 1 package" in err  # uv's plan, as progress on stderr

    code, out, err = run(capsys, "add", "kappa")
    assert code == 0
    assert out.splitlines()[1:3] == ["  + kappa==1.0", f"record in {project.spec}: kappa"]
    assert "holding 2 locked packages at their versions" in err

    code, out, _ = run(capsys, "add", "beta<1.1", "kappa")
    assert code == 0
    assert out.splitlines()[:2] == [
        "beta==1.0 is already locked; nothing to do",
        f"{project.env} already has kappa",
    ]


@pytest.mark.parametrize(
    ("args", "code", "kind"),
    [
        (["omega"], 1, "add-conflict"),
        (["beta>=1.1"], 1, "add-conflict"),
        (["kappa>="], 2, "spec"),
        (["kappa", "--index-url", "http://127.0.0.1:9/simple"], 3, "network"),
        (["kappa", "--env", "{tmp}/nowhere"], 2, "add-input"),
    ],
)
def test_errors_have_exit_codes_and_json(
    project: Project,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    args: list[str],
    code: int,
    kind: str,
) -> None:
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    monkeypatch.setenv("VIRTUAL_ENV", str(project.env))
    spec_before = project.spec.read_bytes()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]

    got, out, err = run(capsys, "add", *args, "--json")
    assert got == code and err == ""
    data = json.loads(out)
    assert data["error"] == kind and data["hint"]
    if kind == "add-conflict":
        assert "beta==1.0" in data["problems"][0]["message"]
        assert "envship lock -P beta" in data["hint"]
    assert project.spec.read_bytes() == spec_before


def test_error_text_goes_to_stderr(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "add", "omega", "--env", project.env)
    assert code == 1 and out == ""
    assert "error: cannot add omega: it needs a locked package at another version" in err
    assert "  - omega: omega requires beta>=1.1; the lock pins beta==1.0" in err
    assert "hint: envship add never moves a locked package." in err


def test_a_kernels_colour_settings_do_not_hide_the_plan(
    project: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ipykernel sets FORCE_COLOR=1 in every kernel: uv's plan came out coloured, and
    `--dry-run` said the environment already had what it lacked."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    code, out, err = run(capsys, "add", "kappa", "--env", project.env, "--dry-run", "--json")
    assert code == 0 and err == ""
    assert json.loads(out)["installed"] == ["kappa==1.0"]

    code, out, err = run(capsys, "add", "kappa", "--env", project.env, "--dry-run")
    assert code == 0 and "\x1b[" not in out + err
    assert out.splitlines()[:2] == [
        f"would change {project.env} (2 locked packages held at their versions):",
        "  + kappa==1.0",
    ]


def test_a_replaced_entry_is_named_in_text_and_json(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    first = 'rho[socks]>=1; python_version >= "3.8"'
    assert run(capsys, "add", first, "--env", project.env)[0] == 0

    code, out, _ = run(capsys, "add", "Rho[socks]", "--env", project.env, "--dry-run")
    assert code == 0
    assert out.splitlines()[:3] == [
        f"{project.env} already has Rho[socks]",
        f"would record in {project.spec}: Rho[socks]",
        f"  would replace {first!r} with 'Rho[socks]'",
    ]
    code, out, _ = run(capsys, "add", "Rho[socks]", "--env", project.env, "--json")
    assert code == 0
    assert json.loads(out)["replaced"] == [{"old": first, "new": "Rho[socks]"}]

    code, out, err = run(capsys, "add", "rho", "--env", project.env)
    assert code == 1 and out == ""
    assert f"error: refusing to drop what {project.spec} asks for" in err
    assert "  - rho: would replace 'Rho[socks]', dropping [socks]" in err


def test_a_requirement_for_other_machines_is_said_so(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    req = 'kappa; sys_platform == "win32"'
    code, out, _ = run(capsys, "add", req, "--env", project.env)
    assert code == 0
    assert out.splitlines()[:2] == [
        f"{req!r} does not apply to this environment (its marker is false), nor to any "
        "target of the spec: not installed",
        f"record in {project.spec}: {req}",
    ]
    code, out, _ = run(capsys, "add", req, "--env", project.env, "--json", "--dry-run")
    data = json.loads(out)
    assert data["not_applicable"] == data["applies_nowhere"] == [req]
    assert data["installed"] == data["recorded"] == []


def test_a_replaced_locked_distribution_is_named_with_its_path(
    project: Project, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    REPLACEMENTS[0](project.env, tmp_path, {})  # another wheel of beta 1.0, by uv
    info = _site(project.env) / "beta-1.0.dist-info"
    spec_before = project.spec.read_bytes()

    code, out, err = run(capsys, "add", "kappa", "--env", project.env, "--json")
    assert code == 1 and err == ""
    data = json.loads(out)
    assert data["error"] == "add" and "already differs from its lock" in data["message"]
    assert [p["where"] for p in data["problems"]] == [str(info)]
    assert data["hint"].startswith(
        f"`envship install {project.env} --lock {project.lock}` repairs it"
    )

    code, out, err = run(capsys, "add", "kappa", "--env", project.env)
    assert code == 1 and out == ""
    assert f"  - {info}: beta 1.0 was re-installed at its locked version" in err
    assert (
        f"hint: `envship install {project.env} --lock {project.lock}` repairs it from its lock;"
        in err
    )
    assert project.spec.read_bytes() == spec_before


def test_uv_offline_is_exit_3_saying_the_network_is_off(
    project: Project, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was exit 1, "uv could not add rich", and uv's own text."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    spec_before = project.spec.read_bytes()

    code, out, err = run(capsys, "add", "kappa", "--env", project.env)
    assert code == 3 and out == ""
    assert "error: cannot reach the package index: UV_OFFLINE=1 turns uv's network access off" in (
        err.splitlines()
    )
    assert "uv could not add" not in err
    code, out, err = run(capsys, "add", "kappa", "--env", project.env, "--json")
    data = json.loads(out)
    assert code == 3 and err == "" and data["error"] == "network"
    assert "--index-url file://OUT/simple" in data["hint"]
    assert project.spec.read_bytes() == spec_before

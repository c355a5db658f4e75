"""The entry point: usage errors and interruptions, as text and as ``--json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from envship.cli import main
from envship.cli._common import json_option
from indexlib import IndexServer


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["fetch", "-j", "0", "--json"], "'--jobs': 0 is not in the range"),
        (["--json", "nosuch"], "No such command 'nosuch'"),
        (["--json", "fetch", "-j", "0"], "'--jobs': 0 is not in the range"),
        (["nosuch", "--json"], "No such command 'nosuch'"),
        (["index", "export", "--json"], "Missing argument 'OUT'"),
        (["lock", "--json", "-P"], "Option '-P' requires an argument"),
        (["install", "--json", "a", "b"], "Got unexpected extra argument (b)"),
    ],
)
def test_a_usage_error_with_json_is_one_json_document(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main.main(argv) == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["error"] == "usage" and needle in doc["message"]
    assert doc["hint"].endswith("--help") and doc["problems"] == []
    assert err == ""


@pytest.mark.parametrize(
    ("argv", "as_json"),
    [(["--version"], False), (["--version", "--json"], True), (["--json", "--version"], True)],
)
def test_the_version_follows_json(
    argv: list[str], as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from envship import __version__

    assert main.main(argv) == 0
    out = capsys.readouterr().out
    if as_json:
        assert json.loads(out) == {"name": "envship", "version": __version__}
    else:
        assert out == f"envship, version {__version__}\n"


def test_a_usage_error_without_json_is_click_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["fetch", "-j", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Usage: envship fetch" in err and "'--jobs': 0 is not in the range" in err


def test_json_after_a_double_dash_is_an_argument_not_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main.main(["install", "a", "b", "--", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "unexpected extra argument" in err


@pytest.mark.parametrize("first", [True, False], ids=["before", "after"])
def test_json_before_the_command_counts_for_its_result(
    first: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "requirements.txt").write_text("six\n")
    argv = ["init", str(tmp_path)]
    assert main.main(["--json", *argv] if first else [*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dependencies"] == ["six"]


def _slow_lock(tmp_path: Path, server: IndexServer) -> Path:
    url = f"{server.url}/files/slow-1.0-py3-none-any.whl"
    lock = tmp_path / "pylock.toml"
    lock.write_text(
        'lock-version = "1.0"\ncreated-by = "test"\n'
        '[[packages]]\nname = "slow"\nversion = "1.0"\n'
        f'wheels = [{{name = "slow-1.0-py3-none-any.whl", url = "{url}", '
        f'hashes = {{sha256 = "{"a" * 64}"}}}}]\n'
        '[tool.envship]\ntargets = [{name = "x86", platform = "linux-x86_64", '
        'python = "3.11", glibc = "2.28"}]\n',
        encoding="utf-8",
    )
    return lock


@pytest.mark.parametrize(
    ("as_json", "sig"),
    [(True, signal.SIGINT), (False, signal.SIGINT), (False, signal.SIGTERM)],
    ids=["json", "text", "sigterm"],
)
def test_an_interrupted_command_says_so_and_exits_130(
    tmp_path: Path, index_server: IndexServer, as_json: bool, sig: signal.Signals
) -> None:
    # The download hangs until the signal comes (and the server's thread sleeps it out).
    index_server.knobs.delay = 8.0
    cmd = [
        sys.executable,
        "-m",
        "envship",
        "fetch",
        "--lock",
        str(_slow_lock(tmp_path, index_server)),
    ]
    cmd += ["--store", str(tmp_path / "store")] + (["--json"] if as_json else [])
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    deadline = time.monotonic() + 60
    while index_server.file_requests() == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    if as_json:
        doc = json.loads(out)
        assert doc["error"] == "interrupted" and "re-run" in doc["message"]
        assert err == ""  # only the document: click's blank line for "^C" is text's
    else:
        assert out == "" and "interrupted; re-run the same command" in err


# -- a bug: an exception no command turned into an error of its own -------------------


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> str:
    """A throw-away command that fails as a bug would: real code raising on real input
    (a truncated JSON document), not an error envship raises on purpose."""

    @click.command("broken")
    @json_option
    def command(as_json: bool) -> None:
        json.loads('{"cut": ')

    monkeypatch.setitem(main.cli.commands, "broken", command)
    return "broken"


@pytest.mark.parametrize("where", ["after", "before"])
def test_a_bug_with_json_is_one_document_and_a_traceback_on_stderr(
    broken: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [broken, "--json"] if where == "after" else ["--json", broken]
    assert main.main(argv) == 70
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert sorted(doc) == ["error", "hint", "message", "problems"]  # every error's shape
    assert doc["error"] == "internal"
    assert doc["message"].startswith("internal error (JSONDecodeError): Expecting value")
    assert "bug in envship" in doc["hint"] and "stderr" in doc["hint"]
    (problem,) = doc["problems"]
    assert problem["where"].startswith(json.decoder.__file__)  # where it was raised
    # The bug stays visible: the whole traceback, down to the command that failed.
    assert err.startswith("Traceback (most recent call last):")
    assert "json.loads('{\"cut\": ')" in err and "JSONDecodeError" in err


def test_a_bug_without_json_is_the_traceback_and_an_error_line(
    broken: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main.main([broken]) == 70
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("Traceback (most recent call last):")
    lines = err.splitlines()
    assert lines[-3].startswith("error: internal error (JSONDecodeError): Expecting value")
    assert lines[-2].startswith(f"  - {json.decoder.__file__}:")  # where it was raised
    assert lines[-1].startswith("hint: this is a bug in envship")


def test_the_help_documents_exit_code_70(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "70 internal error (a bug in envship)" in help_text

"""The entry point: usage errors and interruptions, as text and as ``--json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envship.cli import main
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
    else:
        assert out == "" and "interrupted; re-run the same command" in err

"""``envship._pyprobe``: the one interpreter probe, run for real against venvs and fakes."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.markers import default_environment

from envship._pyprobe import ProbeFailure, facts_here, facts_of


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe") / "v"
    venv.create(root, with_pip=False, symlinks=True)
    return root


def test_a_venv_is_seen_as_site_would_see_it(env: Path) -> None:
    python = env / "bin" / "python"
    with_site = subprocess.run(
        [
            str(python),
            "-I",
            "-c",
            "import sys, sysconfig; print(sys.prefix); "
            "print(sysconfig.get_paths()['purelib']); print(sysconfig.get_paths()['platlib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    facts = facts_of(str(python))
    assert [facts["prefix"], facts["purelib"], facts["platlib"]] == with_site[:3]
    assert facts["venv"] == str(env) and facts["config"] == str(env / "pyvenv.cfg")
    assert facts["base_prefix"] == sys.base_prefix


def test_the_markers_are_packagings_and_the_same_in_process() -> None:
    child = facts_of(sys.executable)
    here = facts_here(sys.executable)
    assert child["markers"] == here["markers"] == default_environment()
    assert child == here


@pytest.mark.parametrize(
    ("script", "ran", "detail"),
    [
        (None, False, "No such file"),
        ("#!/bin/sh\necho not json\n", True, "not json"),
        ("#!/bin/sh\necho 'boom' >&2\nexit 3\n", True, "boom"),
        ("#!/bin/sh\necho '[1, 2]'\n", True, "[1, 2]"),  # JSON, but not the facts
    ],
)
def test_no_answer_is_a_probe_failure(
    tmp_path: Path, script: str | None, ran: bool, detail: str
) -> None:
    fake = tmp_path / "python"
    if script is not None:
        fake.write_text(script)
        fake.chmod(0o755)
    with pytest.raises(ProbeFailure) as err:
        facts_of(str(fake))
    assert err.value.python == str(fake) and err.value.ran is ran
    assert detail in err.value.detail

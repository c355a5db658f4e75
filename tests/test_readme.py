"""The README's first command, run as a user would: on a copy of the project, in a shell."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from imagelib import BaseImage, push_base
from registrylib import Registry

ROOT = Path(__file__).resolve().parent.parent


def _first_sh_block(readme: str) -> str:
    match = re.search(r"```sh\n(.*?)\n```", readme, re.S)
    assert match, "README has no ```sh block"
    return match.group(1)


@pytest.mark.pypi
def test_readme_main_job_runs_on_a_fresh_copy(
    tmp_path: Path, registry: Registry, bookworm_layout: BaseImage
) -> None:
    command = _first_sh_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "envship kernel install" in command and "envship verify" in command
    # This machine cannot reach Docker Hub, so the command's `python:3.11-slim` is pulled
    # through ENVSHIP_REGISTRY_MIRROR from a real local registry holding, under that
    # name, the test suite's Debian 12 + CPython 3.11 base (debootstrap), not the Hub's
    # image. Everything else runs exactly as written.
    assert "--base python:3.11-slim" in command
    push_base(bookworm_layout, registry.host, "library/python", "3.11-slim")
    project = tmp_path / "project"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, tracked):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (project / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, project / src.relative_to(ROOT))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVSHIP_", "JUPYTER"))}
    env.update(
        HOME=str(home),
        UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        ENVSHIP_REGISTRY_MIRROR=registry.host,
    )
    run = subprocess.run(
        ["bash", "-c", f"set -e\n{command}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "identical" in run.stdout
    # The command leaves the checkout as it was: the bundled lock is current, so locking
    # it again changes nothing (it once lacked the sizes a fresh lock records).
    lock = "examples/quickstart/pylock.toml"
    assert (project / lock).read_bytes() == (ROOT / lock).read_bytes()
    said = [ln for ln in run.stdout.splitlines() if f"{lock} (" in ln]
    assert said and said[0].startswith("unchanged: "), said
    # Held against the wheels in the example's store, not the installed RECORDs alone.
    assert "installed RECORD only" not in run.stdout + run.stderr
    kernels = list(home.glob(".local/share/jupyter/kernels/*/kernel.json"))
    assert len(kernels) == 1, kernels
    spec = json.loads(kernels[0].read_text(encoding="utf-8"))
    assert spec["display_name"] == "Python (quickstart)"
    env_python = project / "examples/quickstart/out/quickstart/bin/python"
    check = subprocess.run(
        [str(env_python), "-c", "import numpy, requests, ipykernel; print(numpy.__version__)"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    layout = project / "examples/quickstart/out/image"
    verify = subprocess.run(
        [
            str(project / ".venv/bin/envship"),
            "verify",
            "--image",
            f"oci:{layout}:quickstart",
            "--lock",
            "examples/quickstart/pylock.toml",
            "--store",
            "examples/quickstart/out/store",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "identical" in verify.stdout

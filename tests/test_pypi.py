"""The real thing: lock and fetch the data-science set from PyPI for two architectures.

These tests need PyPI (marked ``pypi``; deselect with ``-m "not pypi"``). Under CI they
run: the machine reaches PyPI, and a failure to reach it is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from envship.fetch import fetch
from envship.index import export_index
from envship.lock import lock, uv_bin
from envship.lockfile import LockFile
from envship.spec import load_spec
from envship.store import Store, sha256_file
from envship.targets import host_platform

pytestmark = pytest.mark.pypi

DS_SET = ["numpy", "pandas", "scikit-learn", "matplotlib", "ipykernel"]
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def ds_lock(tmp_path_factory: pytest.TempPathFactory) -> LockFile:
    folder = tmp_path_factory.mktemp("ds")
    spec = {
        "name": "ds",
        "python": PY,
        "dependencies": DS_SET,
        "targets": {"linux-x86_64": {"glibc": "2.28"}, "linux-aarch64": {"glibc": "2.28"}},
    }
    (folder / "envship.toml").write_text(tomli_w.dumps(spec))
    result = lock(load_spec(folder))
    return LockFile.load(result.path)


def test_lock_selects_a_wheel_per_architecture(ds_lock: LockFile) -> None:
    x86 = {a.name: a.filename for a in ds_lock.artifacts(["linux-x86_64"])}
    arm = {a.name: a.filename for a in ds_lock.artifacts(["linux-aarch64"])}
    assert set(DS_SET) <= set(x86) and set(DS_SET) <= set(arm)
    assert "x86_64" in x86["numpy"] and "aarch64" in arm["numpy"]
    assert all(f.endswith(".whl") for f in [*x86.values(), *arm.values()])


def test_fetch_both_targets_then_install_offline(ds_lock: LockFile, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    first = fetch(ds_lock, store)
    assert first.downloaded == len(first.artifacts) > 40
    for item in first.artifacts:
        assert sha256_file(item.path) == item.artifact.sha256
    second = fetch(ds_lock, store)
    assert second.downloaded == 0 and second.bytes_downloaded == 0

    if host_platform() != "linux-x86_64":
        pytest.fail("this test installs the x86_64 set; run it on an x86_64 machine")
    out = tmp_path / "index"
    export_index(ds_lock, store, out, targets=["linux-x86_64"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env["UV_CACHE_DIR"] = str(tmp_path / "uv-cache")
    venv = tmp_path / "venv"
    subprocess.run(
        [uv_bin(), "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env
    )
    subprocess.run(
        [
            uv_bin(),
            "pip",
            "install",
            "-q",
            "--offline",
            "--no-config",
            "--python",
            str(venv / "bin" / "python"),
            "-r",
            str(out / "pylock.toml"),
        ],
        check=True,
        env=env,
    )
    code = "import numpy, pandas, sklearn, matplotlib, ipykernel; print(numpy.__version__)"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    locked = {a.name: a.version for a in ds_lock.artifacts(["linux-x86_64"])}
    assert done.stdout.strip() == locked["numpy"]

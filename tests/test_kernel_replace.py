"""``kernel install`` over an earlier kernelspec, and ``kernel remove``: Jupyter never
finds a replaced kernelspec missing or half made, and what killed runs left in the
``kernels`` folder is removed by the next run there.

A real environment (test_kernels' ``make_env``), real kernelspec folders read by
jupyter_client; ``envship kernel install`` in its own process, SIGKILLed by strace as it
enters each rename in turn, on a file system with RENAME_EXCHANGE and on one stood in
for without it (every renameat2 fails with EINVAL, as on NFS); a reader process
polling ``kernel.json`` while installs replace it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from envship.kernels import KERNEL_JSON, install_kernel
from test_kernels import isolate_jupyter, make_env
from test_swap import each_kill, polling, strace, traced, tree

STAGING = ".envship-staging-"


@pytest.fixture(autouse=True)
def user_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_jupyter(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_env(tmp_path_factory.mktemp("kr") / "work")


def staged(kd: Path) -> list[str]:
    return sorted(p.name for p in kd.iterdir() if p.name.startswith(STAGING))


def jupyter_sees(kd: Path) -> list[str]:
    return sorted(KernelSpecManager(kernel_dirs=[str(kd)]).find_kernel_specs())


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive: neither gone nor a zombie (whose files are closed)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "envship", "kernel", *map(str, args)]


def test_a_reader_never_finds_kernel_json_missing_while_it_is_replaced(
    env: Path, tmp_path: Path
) -> None:
    kd = tmp_path / "kd"
    install_kernel(env, kernel_dir=kd, name="ds")
    with polling(kd / "ds" / KERNEL_JSON, tmp_path) as polled:
        for n in range(30):
            assert install_kernel(env, kernel_dir=kd, name="ds", display_name=f"DS {n}").replaced
    assert polled.reads > 0 and polled.misses == 0
    assert sorted(p.name for p in kd.iterdir()) == ["ds"]


@pytest.mark.parametrize("has_exchange", [True, False], ids=["exchange", "two-renames"])
def test_an_install_killed_at_any_rename_leaves_a_whole_kernelspec(
    env: Path, tmp_path: Path, has_exchange: bool
) -> None:
    """With RENAME_EXCHANGE, Jupyter finds the old kernelspec or the new one, whole,
    after any kill. Without it, a kill between the two renames leaves it missing, and
    the next install into that folder, of any kernel, first puts the old one back."""
    kd = tmp_path / "kd"
    install_kernel(env, kernel_dir=kd, name="ds", display_name="New")
    new = tree(kd / "ds")
    install_kernel(env, kernel_dir=kd, name="ds", display_name="Old")
    old = tree(kd / "ds")
    missing: list[str] = []

    def before() -> None:
        install_kernel(env, kernel_dir=kd, name="ds", display_name="Old")

    def after(point: str) -> None:
        if not (kd / "ds").exists():
            missing.append(point)
            other = traced(cli("install", env, "--kernel-dir", kd, "--name", "other"))
            assert other.returncode == 0, other.stderr
            shutil.rmtree(kd / "other")
        assert tree(kd / "ds") in (old, new), point
        assert jupyter_sees(kd) == ["ds"]

    argv = cli("install", env, "--kernel-dir", kd, "--name", "ds", "--display-name", "New")
    points = each_kill(argv, exchange=has_exchange, before=before, after=after)
    assert points == (
        ["rename#1", "renameat2#1"] if has_exchange else ["rename#1", "rename#2", "rename#3"]
    )
    assert missing == ([] if has_exchange else ["rename#3"])
    assert tree(kd / "ds") == new
    assert sorted(p.name for p in kd.iterdir()) == ["ds"]  # each run cleared the last


def test_a_killed_remove_stays_removed(env: Path, user_kernels: Path) -> None:
    """Killed after the kernelspec left Jupyter's sight, before it was deleted: the next
    run deletes it, and never puts it back."""
    install_kernel(env, name="ds")
    install_kernel(env, name="keep")
    killed = traced(cli("remove", "ds"), kill_before=("?unlink,unlinkat,rmdir", 1))
    assert killed.returncode == -signal.SIGKILL
    assert jupyter_sees(user_kernels) == ["keep"] and len(staged(user_kernels)) == 2
    install_kernel(env, name="keep", display_name="Again")
    assert sorted(p.name for p in user_kernels.iterdir()) == ["keep"]


def test_a_running_installs_staging_is_kept_then_cleared_once_it_is_killed(
    env: Path, tmp_path: Path
) -> None:
    """An install held (by strace) just before its exchange keeps its staging folder
    while another install into the same folder runs; SIGKILLed, the next run clears it."""
    kd = tmp_path / "kd"
    install_kernel(env, kernel_dir=kd, name="ds", display_name="Old")
    pidfile = tmp_path / "pid"
    argv = cli("install", env, "--kernel-dir", kd, "--name", "ds", "--display-name", "New")
    hold = [strace(), "-qq", "-o", os.devnull, "-e", "inject=renameat2:delay_enter=600s"]
    held = subprocess.Popen(
        [*hold, "--", "sh", "-c", f'echo $$ > {pidfile}; exec "$@"', "sh", *argv],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        stderr=subprocess.DEVNULL,
    )
    try:
        while not any(kd.glob(f"{STAGING}*/new/{KERNEL_JSON}")):  # written: at the exchange
            assert held.poll() is None
            time.sleep(0.02)
        live = staged(kd)
        assert len(live) == 2  # its folder and lock
        install_kernel(env, kernel_dir=kd, name="other")
        assert staged(kd) == live
        assert jupyter_sees(kd) == ["ds", "other"]
    finally:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        held.kill()  # strace would sit out the delay, the install held in its exit
        held.wait(timeout=60)
        while _running(pid):  # let go by strace, it finishes dying (closing its lock)
            time.sleep(0.02)
    install_kernel(env, kernel_dir=kd, name="other", display_name="Again")
    assert sorted(p.name for p in kd.iterdir()) == ["ds", "other"]
    assert '"display_name": "Old"' in (kd / "ds" / KERNEL_JSON).read_text()

"""A kernel at once: the data-science environment as a Jupyter kernel on a new instance.

Issue 3's promise: on an instance that shares a volume with the others, a data scientist
gets the locked environment as a Jupyter kernel in under a second. Measured here as the
two commands an instance runs at start, with the version already on the shared root:
``envship env create`` (finds it, points ``current``) and ``envship kernel install``
(writes the kernelspec). Beside them, the usual manual way for the same environment,
``python -m ipykernel install``, which checks nothing.

Then the price of envship's launcher at every kernel start (it checks the machine, the
environment's record and its interpreter link before ipykernel runs): the time from
starting the kernel to its first ``kernel_info`` reply through jupyter_client, with the
kernelspec envship wrote and with the one ipykernel writes for the same interpreter.
Run: ``python benchmarks/bench_kernel.py`` (needs PyPI once, to fill the store).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _util import clean_env, envship_cmd, locked_ds_set, median, report, row, timed
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager


def first_reply(kernels: Path, name: str) -> float:
    """Seconds from starting kernel ``name`` (found in ``kernels``) to its first
    ``kernel_info`` reply."""
    manager = KernelManager(
        kernel_name=name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    start = time.perf_counter()
    manager.start_kernel()
    try:
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=120)
        elapsed = time.perf_counter() - start
        client.stop_channels()
    finally:
        manager.shutdown_kernel(now=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="envship-bench-") as tmp:
        work = Path(tmp)
        env = clean_env(UV_CACHE_DIR=str(work / "uv-cache"), ENVSHIP_STORE=str(work / "store"))
        lock = str(locked_ds_set(work, env))
        root = work / "root"
        create = [*envship_cmd(), "env", "create", "ds", "--root", str(root), "--lock", lock]
        create += ["--python", sys.executable]
        timed(create, env=env)  # the version every instance then finds on the shared root
        current = root / "ds" / "current"
        version_python = Path(os.path.realpath(current)) / "bin" / "python"

        ours, manual = [], []
        for i in range(args.repeat):
            kernels = work / f"kernels{i}"
            install = [*envship_cmd(), "kernel", "install", str(current), "--name", "ds"]
            ours.append(
                timed(create, env=env) + timed([*install, "--kernel-dir", str(kernels)], env=env)
            )
            ipykernel = [str(version_python), "-m", "ipykernel", "install", "--name", "ds"]
            manual.append(timed([*ipykernel, "--prefix", str(work / f"prefix{i}")], env=env))

        # Kernel starts, alternating the two kernelspecs so that a slower moment of the
        # machine falls on both.
        ours_kernels = work / "kernels0"
        plain_kernels = work / "prefix0" / "share" / "jupyter" / "kernels"
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the kernels inherit it
        first_reply(ours_kernels, "ds")  # the first start compiles nothing twice after
        first_reply(plain_kernels, "ds")
        launcher, plain = [], []
        for _ in range(args.repeat):
            launcher.append(first_reply(ours_kernels, "ds"))
            plain.append(first_reply(plain_kernels, "ds"))
        report(
            "kernel",
            [
                row(
                    "env create (exists) + kernel install vs ipykernel",
                    median(ours),
                    median(manual),
                    "<1 s",
                ),
                row("kernel start to reply: launcher vs plain", median(launcher), median(plain)),
            ],
        )
        verdict = "met" if median(ours) < 1.0 else "NOT met"
        print(f"kernel ready on a new instance in {median(ours):.3f} s: under 1 s {verdict}")


if __name__ == "__main__":
    main()

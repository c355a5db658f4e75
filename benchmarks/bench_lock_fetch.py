"""Lock and fetch the data-science set; compare with uv pip compile and pip download.

Goals (issue 2): ``envship lock`` at most 1.2x ``uv pip compile`` alone (both with a
warm uv cache); fetch into an empty store at most 0.5x ``pip download`` of the same
files; a repeated fetch at most 0.05x. Both sides download from PyPI in the same run,
alternating, so the network affects them alike. Run: ``python benchmarks/bench_lock_fetch.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import tomli_w
from _util import DS_SET, clean_env, envship_cmd, median, report, row, timed

from envship.lock import uv_bin
from envship.lockfile import LockFile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="envship-bench-") as tmp:
        work = Path(tmp)
        env = clean_env(UV_CACHE_DIR=str(work / "uv-cache"))
        spec = {
            "name": "ds",
            "python": "3.11",
            "dependencies": DS_SET,
            "targets": {"linux-x86_64": {"glibc": "2.28"}, "linux-aarch64": {"glibc": "2.28"}},
        }
        (work / "req.in").write_text("\n".join(DS_SET) + "\n")
        compile_cmd = [
            uv_bin(),
            "pip",
            "compile",
            "--universal",
            "--python-version",
            "3.11",
            "--quiet",
            "req.in",
            "-o",
            "pylock.toml",
        ]
        timed(compile_cmd, env=env, cwd=work)  # warm uv's cache for both sides
        uv_times, our_times = [], []
        for i in range(args.repeat):
            uv_times.append(timed(compile_cmd, env=env, cwd=work))
            folder = work / f"spec{i}"
            folder.mkdir()
            (folder / "envship.toml").write_text(tomli_w.dumps(spec))
            our_times.append(timed([*envship_cmd(), "lock", "--spec", str(folder)], env=env))
        lock_path = work / "spec0" / "pylock.toml"
        lockfile = LockFile.load(lock_path)
        x86 = lockfile.artifacts(["linux-x86_64"])
        pins = work / "pins.txt"
        pins.write_text("".join(f"{a.name}=={a.version}\n" for a in x86))
        # pip takes platforms literally: list every manylinux level the target accepts.
        platforms = [f"--platform={p}" for p in lockfile.target("linux-x86_64").platform_tags()]
        pip_cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--isolated",
            "--no-cache-dir",
            "--no-deps",
            "--only-binary",
            ":all:",
            *platforms,
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "--abi",
            "abi3",
            "--abi",
            "none",
            "--quiet",
            "-r",
            str(pins),
        ]
        fetch_cmd = [
            *envship_cmd(),
            "fetch",
            "--lock",
            str(lock_path),
            "--target",
            "linux-x86_64",
            "--json",
        ]
        # Alternate the two sides so a slow minute of the network hits both alike.
        pip_times, cold_times = [], []
        for i in range(args.repeat):
            pip_times.append(timed([*pip_cmd, "-d", str(work / f"pip-dl{i}")], env=env))
            cold_times.append(timed([*fetch_cmd, "--store", str(work / f"store{i}")], env=env))
        warm = median(
            [
                timed([*fetch_cmd, "--store", str(work / "store0")], env=env)
                for _ in range(args.repeat)
            ]
        )
        pip_time, cold = median(pip_times), median(cold_times)
        size = sum((work / "pip-dl0" / a.filename).stat().st_size for a in x86)
        print(f"data-science set: {len(x86)} wheels for linux-x86_64, {size / 1e6:.0f} MB")
        uv_lock = median(uv_times)
        ours = median(our_times)
        report(
            "lock_fetch",
            [
                row("lock (2 targets) vs uv pip compile", ours, uv_lock, 1.2),
                row("fetch, empty store vs pip download", cold, pip_time, 0.5),
                row("fetch again (warm store) vs pip download", warm, pip_time, 0.05),
            ],
        )


if __name__ == "__main__":
    main()

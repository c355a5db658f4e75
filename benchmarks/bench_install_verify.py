"""Install and verify the data-science set from a warm store; compare with uv, pip, sha256sum.

Goals (issue 3): ``envship install`` at most 1.1x ``uv pip install`` of the same wheel
files and at most 0.15x pip's time; ``envship env create`` of a version that already
exists under 0.5 s and at least 10x faster than creating it fresh; ``envship verify
--full`` within 2x of ``sha256sum`` over the same files. Every side gets the same
inputs: the wheels the lock selects for this machine. Install is measured twice: with one
warm uv cache shared by envship and the uv baseline, and as on a new instance, where each
side starts with an empty uv cache. The interpreter's bare start-up (``python -c pass``)
is printed next to them, since it is a fixed part of every envship run, and so is a
stdlib-only Python script making the same two uv calls: the floor for any Python tool
that drives uv. A new environment from a lock installed before on the machine takes
install's quick path (a plan remembered in the user cache, uv started before anything
but ``os`` is imported); the first one from a lock takes the full path, measured apart.
``verify --bytecode`` on an environment installed with ``--compile`` is
set beside ``compileall -f`` of the same files, the cost of compiling them once. pip
compiles bytecode by default and envship does not; the table says so rather than hiding
it.
Run: ``python benchmarks/bench_install_verify.py`` (needs PyPI once, to fill the store).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _util import clean_env, envship_cmd, locked_ds_set, median, report, row, timed

from envship.lock import uv_bin
from envship.lockfile import LockFile

# The least any Python program that drives uv as envship does can cost: the same two uv
# steps (venv, then sync of hashed ``name @ file://`` lines) and a marker, stdlib only.
FLOOR = """
import os, subprocess, sys
uv, python, reqs, dest = sys.argv[1:]
os.makedirs(dest)
open(os.path.join(dest, ".incomplete"), "w").close()
subprocess.run([uv, "venv", "-q", "--offline", "--allow-existing", "--python", python, dest],
               check=True)
subprocess.run([uv, "pip", "sync", "-q", "--python", dest + "/bin/python", "--offline",
                "--no-index", "--require-hashes", "--no-build", reqs], check=True)
with open(os.path.join(dest, ".marker.json"), "w") as f:
    f.write("{}")
os.unlink(os.path.join(dest, ".incomplete"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="envship-bench-") as tmp:
        work = Path(tmp)
        env = clean_env(
            UV_CACHE_DIR=str(work / "uv-cache"),
            ENVSHIP_STORE=str(work / "store"),
            XDG_CACHE_HOME=str(work / "user-cache"),  # where install remembers its plans
        )
        lock_path = locked_ds_set(work, env)
        lockfile = LockFile.load(lock_path)
        wheels = work / "wheels"
        wheels.mkdir()
        for a in lockfile.artifacts():
            shutil.copy(work / "store" / "sha256" / a.sha256[:2] / a.sha256, wheels / a.filename)
        files = sorted(str(p) for p in wheels.iterdir())
        reqs = work / "floor-requirements.txt"
        reqs.write_text(
            "".join(
                f"{a.name} @ {(wheels / a.filename).as_uri()} --hash=sha256:{a.sha256}\n"
                for a in lockfile.artifacts()
            )
        )
        install = [*envship_cmd(), "install", "--lock", str(lock_path), "--python", sys.executable]
        timed([*install, str(work / "warmup")], env=env)  # warms uv's cache for both sides

        def uv_install(venv: Path, uv_env: dict[str, str]) -> float:
            return timed(
                [uv_bin(), "venv", "-q", "--python", sys.executable, str(venv)], env=uv_env
            ) + timed(
                [
                    uv_bin(),
                    "pip",
                    "install",
                    "-q",
                    "--offline",
                    "--no-deps",
                    "--python",
                    str(venv / "bin" / "python"),
                    *files,
                ],
                env=uv_env,
            )

        ours, uv_times, pip_times, ours_cold, uv_cold, floor = [], [], [], [], [], []
        first = []  # the full path: no plan remembered for this lock yet
        for i in range(args.repeat):
            ours.append(timed([*install, str(work / f"ours{i}")], env=env))
            no_plan = dict(env, XDG_CACHE_HOME=str(work / f"user-cache-{i}"))
            first.append(timed([*install, str(work / f"first{i}")], env=no_plan))
            uv_times.append(uv_install(work / f"uv{i}", env))
            floor_cmd = [sys.executable, "-c", FLOOR, uv_bin(), sys.executable, str(reqs)]
            floor.append(timed([*floor_cmd, str(work / f"floor{i}")], env=env))
        # A new instance: the store is warm (it lives on the shared volume) but uv's cache
        # is local and starts empty, so uv unpacks every wheel: both sides get a new cache.
        for i in range(args.repeat):
            cold_env = dict(env, UV_CACHE_DIR=str(work / f"uv-cache-ours{i}"))
            ours_cold.append(timed([*install, str(work / f"ours-cold{i}")], env=cold_env))
            cold_env = dict(env, UV_CACHE_DIR=str(work / f"uv-cache-uv{i}"))
            uv_cold.append(uv_install(work / f"uv-venv-cold{i}", cold_env))
        startup = [timed([sys.executable, "-c", "pass"], env=env) for _ in range(5)]
        for i in range(1 if args.repeat < 3 else 2):
            venv = work / f"pip{i}"
            pip_times.append(
                timed([sys.executable, "-m", "venv", str(venv)], env=env)
                + timed(
                    [
                        str(venv / "bin" / "python"),
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--isolated",
                        "--no-index",
                        "--no-deps",
                        *files,
                    ],
                    env=env,
                )
            )
        target = work / "ours0"
        verify = [
            *envship_cmd(),
            "verify",
            str(target),
            "--lock",
            str(lock_path),
            "--full",
            "--json",
        ]
        # Exit 0 means identical: the timed runs below measure a passing verification.
        subprocess.run(verify, env=env, capture_output=True, check=True)
        record_files = [
            str(p)
            for p in target.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.name != "RECORD"
        ]
        file_list = work / "files.txt"
        file_list.write_text("\0".join(record_files))
        sha_cmd = ["sh", "-c", f"xargs -0 sha256sum < {file_list} > /dev/null"]
        verify_times = [timed(verify, env=env) for _ in range(args.repeat)]
        sha_times = [timed(sha_cmd, env=env) for _ in range(args.repeat)]

        # Byte-code: an environment installed with --compile, checked against its sources,
        # beside recompiling the same files with the interpreter's own compileall.
        compiled = work / "compiled"
        timed([*install, "--compile", str(compiled)], env=env)
        check = [*envship_cmd(), "verify", str(compiled), "--lock", str(lock_path)]
        check += ["--bytecode", "--json"]
        subprocess.run(check, env=env, capture_output=True, check=True)  # exit 0: identical
        bytecode_times = [timed(check, env=env) for _ in range(args.repeat)]
        site = next((compiled / "lib").glob("python*/site-packages"))
        recompile = [str(compiled / "bin" / "python"), "-m", "compileall", "-q", "-f", "-j", "2"]
        compileall_times = [timed([*recompile, str(site)], env=env) for _ in range(args.repeat)]

        # env create: a fresh version on a new root, then the same lock again, which finds
        # the version already there and only re-points ``current``. "Fresh" is measured
        # twice: on a new instance (uv's cache is local, so it starts empty: the case the
        # shared root is for) and with this machine's warm uv cache.
        create = [*envship_cmd(), "env", "create", "ds", "--lock", str(lock_path)]
        create += ["--python", sys.executable]
        fresh_cold, fresh_warm, existing_times = [], [], []
        for i in range(args.repeat):
            root = ["--root", str(work / f"root{i}")]
            cold_env = dict(env, UV_CACHE_DIR=str(work / f"uv-cold{i}"))
            fresh_cold.append(timed([*create, *root], env=cold_env))
            existing_times.append(timed([*create, *root], env=env))
            fresh_warm.append(timed([*create, "--root", str(work / f"warm{i}")], env=env))
        print(f"{len(files)} wheels; {len(record_files)} installed files hashed by sha256sum")
        report(
            "install_verify",
            [
                row(
                    "install vs uv pip install (warm uv cache)", median(ours), median(uv_times), 1.1
                ),
                row(
                    "install, first of this lock here, vs uv (warm)",
                    median(first),
                    median(uv_times),
                ),
                row(
                    "install vs uv pip install (empty uv caches)",
                    median(ours_cold),
                    median(uv_cold),
                    1.1,
                ),
                row("stdlib-only Python driving uv vs uv (warm)", median(floor), median(uv_times)),
                row("python -c pass vs uv pip install (warm)", median(startup), median(uv_times)),
                row(
                    "install vs pip install (pip compiles .pyc)",
                    median(ours),
                    median(pip_times),
                    0.15,
                ),
                row(
                    "env create existing vs fresh, new instance",
                    median(existing_times),
                    median(fresh_cold),
                    0.1,
                ),
                row(
                    "env create existing vs fresh, warm uv cache",
                    median(existing_times),
                    median(fresh_warm),
                ),
                row("verify --full vs sha256sum", median(verify_times), median(sha_times), 2.0),
                row(
                    "verify --bytecode vs compileall -f -j2",
                    median(bytecode_times),
                    median(compileall_times),
                ),
            ],
        )


if __name__ == "__main__":
    main()

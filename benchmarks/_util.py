"""Shared helpers for the benchmarks: run a command, time it, report ratios."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DS_SET = [
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "seaborn",
    "pyarrow",
    "ipykernel",
    "requests",
]  # the data-science set of DESIGN.md (about 51 packages, 162 MB of wheels)


def locked_ds_set(work: Path, env: Mapping[str, str]) -> Path:
    """The data-science set locked in ``work`` for this machine (this interpreter's
    Python, glibc 2.28) and fetched into the store ``env`` names; the lock's path."""
    import tomli_w

    from envship.targets import host_platform

    platform = host_platform()
    if platform is None:
        raise SystemExit("needs a Linux x86_64 or aarch64 machine")
    spec = {
        "name": "ds",
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "dependencies": DS_SET,
        "targets": {platform: {"glibc": "2.28"}},
    }
    (work / "envship.toml").write_text(tomli_w.dumps(spec))
    timed([*envship_cmd(), "lock", "--spec", str(work)], env=env)
    lock = work / "pylock.toml"
    timed([*envship_cmd(), "fetch", "--lock", str(lock)], env=env)
    return lock


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without pip's machine-wide extras, so baselines use PyPI only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    # Installed users have .pyc files; a machine-wide "write no bytecode" would make every
    # timed run of envship recompile its own sources.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    env.update(extra)
    return env


def timed(cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        list(cmd), env=dict(env), cwd=cwd, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"benchmark step failed: {' '.join(cmd)}")
    return elapsed


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def envship_cmd() -> list[str]:
    return [sys.executable, "-m", "envship"]


def row(what: str, ours: float, baseline: float, goal: float | str = "-") -> dict[str, object]:
    """One measurement: ours against the baseline, their ratio, and the issue's goal."""
    return {
        "what": what,
        "ours": ours,
        "baseline": baseline,
        "ratio": ours / baseline,
        "goal": goal,
    }


def report(name: str, rows: Sequence[Mapping[str, object]]) -> None:
    """Print a table and write results/NAME.json; each row has what, ours, baseline, ratio."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(list(rows), indent=2) + "\n")
    print(f"{'measure':46} {'envship s':>10} {'baseline s':>11} {'ratio':>7} {'goal':>6}")
    for r in rows:
        print(
            f"{r['what']!s:46} {r['ours']:>10.3f} {r['baseline']:>11.3f} "
            f"{r['ratio']:>7.3f} {r['goal']!s:>6}"
        )

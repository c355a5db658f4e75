"""``kernel list``: the kernelspecs envship made, where Jupyter finds them, and whether
each would start on this machine.

Each kernelspec's own launcher is run in its check mode, so the verdict is what a start
would do, by the launcher that start would run (an older envship's, if one wrote the
kernelspec); a launcher that is not this envship's is reported outdated. The
environment's lock digest and target are read from its marker as it is now
(``current`` followed), else as the kernelspec recorded them. Kept apart from
:mod:`envship.kernels`, which writes and removes kernelspecs.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ._kernelspec import (
    KERNEL_JSON,
    LAUNCHER_NAME,
    jupyter_kernel_dirs,
    read_facts,
    result_json,
    specs_in,
)
from ._launcher import CHECK_FLAG
from ._markerread import MarkerDamaged, read_record
from .errors import TargetError
from .install import MARKER_NAME
from .targets import Target

__all__ = ["KernelInfo", "kernel_info", "list_kernels"]

_CHECK_SECONDS = 60  # one interpreter start; generous for a cold shared volume


@dataclass(frozen=True, slots=True)
class KernelInfo:
    """One kernelspec envship made, as found in a ``kernels`` folder."""

    name: str
    display_name: str
    resource_dir: Path
    env: Path
    env_exists: bool  # the environment's install marker is still there
    lock_digest: str | None  # the environment's now (following `current`), else as registered
    target: Target | None  # likewise; the same object form as `env create --json`
    shadowed: bool  # a kernelspec of the same name earlier on the path wins
    fits: bool | None  # the launcher's verdict on this machine; None when not asked
    reasons: tuple[str, ...]  # why the launcher would refuse to start
    remedies: tuple[str, ...]  # the commands the launcher says would make it start
    launcher_outdated: bool  # its launcher is not this envship's: `kernel install` again

    def to_json(self) -> dict[str, Any]:
        return result_json(self)


def _verdict(resource_dir: Path) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """What the kernelspec's own launcher says of this machine, run as Jupyter would run
    it but in its check mode (it starts nothing and stamps no use): ``(fits, reasons,
    remedies)``.

    Its own copy, not this envship's: a kernelspec written by an older envship starts
    with the launcher it holds, so that is the one whose answer counts.
    """
    try:
        spec = json.loads((resource_dir / KERNEL_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return False, (f"cannot read its {KERNEL_JSON}: {exc}",), ()
    argv = spec.get("argv") if isinstance(spec, dict) else None
    if not (
        isinstance(argv, list)
        and len(argv) >= 3
        and all(isinstance(a, str) for a in argv)
        and os.path.basename(argv[1]) == LAUNCHER_NAME
    ):
        # Anything else might start a kernel when asked to check: never run it.
        return False, ("kernel.json does not start envship's launcher",), ()
    try:
        proc = subprocess.run(
            [*argv[:3], CHECK_FLAG],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_CHECK_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, (f"its launcher could not be run: {exc}",), ()
    if proc.returncode == 0:
        return True, (), ()
    # The launcher's refusal: a head line, "  - " reasons, then "envship: " remedies (its
    # sh part says a relinked interpreter so too; what is gone, in one line and one
    # remedy).
    lines = proc.stderr.splitlines()
    reasons = [line[4:] for line in lines if line.startswith("  - ")]
    reasons = reasons or [line.removeprefix("envship: ") for line in lines[:1]]
    remedies = [line[9:] for line in lines[1:] if line.startswith("envship: ")]
    return (
        False,
        tuple(reasons or [f"its launcher exited with code {proc.returncode}"]),
        tuple(remedies),
    )


def _recorded(env: Path, facts: dict[str, Any]) -> tuple[str | None, Target | None]:
    """``(lock digest, target)`` of the environment as it is now (``current``
    followed), else as the kernelspec recorded them."""
    try:
        marker = read_record(env / MARKER_NAME)  # never trusted: no links, FIFOs, devices
        return str(marker["lock"]["digest"]), Target.from_json(marker["target"])
    except (MarkerDamaged, KeyError, TypeError, TargetError):
        pass
    digest = facts.get("lock_digest")
    try:
        target: Target | None = Target.from_json(facts.get("target"))
    except TargetError:
        target = None
    return digest if isinstance(digest, str) else None, target


def kernel_info(
    resource_dir: Path, facts: dict[str, Any], *, shadowed: bool, check: bool
) -> KernelInfo:
    env = Path(facts["env"])
    digest, target = _recorded(env, facts)
    fits, reasons, remedies = _verdict(resource_dir) if check else (None, (), ())
    ours = resources.files("envship").joinpath("_launcher.py").read_bytes()
    try:
        outdated = (resource_dir / LAUNCHER_NAME).read_bytes() != ours
    except OSError:
        outdated = True
    return KernelInfo(
        name=resource_dir.name.lower(),
        display_name=facts["_display_name"],
        resource_dir=resource_dir,
        env=env,
        # os.path: an environment this user may not read (another user's private
        # umask) is not there for it; Path.is_file would raise (EACCES) and end the list.
        env_exists=os.path.isfile(env / MARKER_NAME),
        lock_digest=digest,
        target=target,
        shadowed=shadowed,
        fits=fits,
        reasons=reasons,
        remedies=remedies,
        launcher_outdated=outdated,
    )


def _specs_in(kernels_dir: Path) -> list[Path]:
    """``specs_in``, never refused: a kernelspec folder this user may not read is one
    Jupyter skips too (jupyter_client's ``_is_kernel_dir`` is ``os.path.isfile``, which
    takes EACCES for "no"), so it is no kernel of theirs; the others are listed."""
    try:
        return specs_in(kernels_dir)
    except PermissionError:
        pass
    try:
        children = sorted(kernels_dir.iterdir())
    except OSError:
        return []
    return [c for c in children if os.path.isfile(c / KERNEL_JSON)]


def list_kernels(
    kernel_dirs: Sequence[Path] | None = None, *, check: bool = True
) -> list[KernelInfo]:
    """The kernelspecs envship made in ``kernel_dirs`` (default: Jupyter's search path).

    Each is listed where it is found, in search order; one hidden by an earlier
    kernelspec of the same name (envship's or not) is marked ``shadowed``. With
    ``check``, each kernelspec's launcher is asked (one interpreter start each) whether
    this machine can run its environment, exactly as it decides at a kernel start.
    """
    dirs = list(kernel_dirs) if kernel_dirs is not None else jupyter_kernel_dirs()
    seen: set[str] = set()
    found: list[KernelInfo] = []
    for kernels_dir in dirs:
        for resource_dir in _specs_in(kernels_dir):
            key = resource_dir.name.lower()
            facts = read_facts(resource_dir)
            if facts is not None:
                found.append(kernel_info(resource_dir, facts, shadowed=key in seen, check=check))
            seen.add(key)
    return found

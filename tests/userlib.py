"""Acting as another user: uid 1000 / gid 100, SageMaker's default user, through setpriv.

Tests that check what another user of a shared store or root can read run as root and
drop privileges for one command. pytest's tmp_path lies under a 0700 folder no other user
may enter, so their files go in a world-readable folder under /tmp instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import envship

AS_USER = ["setpriv", "--reuid", "1000", "--regid", "100", "--clear-groups"]
SYSTEM_PY = "/usr/bin/python3.11"  # readable by uid 1000, unlike this suite's interpreter
SRC = Path(envship.__file__).resolve().parents[1]  # the envship this suite imported
SITE = sysconfig.get_paths()["purelib"]


@contextmanager
def world_readable(prefix: str) -> Iterator[Path]:
    """A new folder under /tmp every user may enter, removed afterwards."""
    assert os.getuid() == 0, "these tests act as uid 1000 through setpriv: run them as root"
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed"
    top = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        top.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top)


def as_user(top: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as uid 1000 in ``top`` (its HOME), with this suite's envship importable
    by the system interpreter."""
    env = {"HOME": str(top), "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{SRC}{os.pathsep}{SITE}"}
    return subprocess.run(
        [*AS_USER, *argv], cwd=top, env=env, capture_output=True, text=True, check=False
    )

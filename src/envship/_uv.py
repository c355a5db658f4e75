"""Finding the uv binary and running it, in a module of its own.

``envship install`` needs uv but nothing else from :mod:`envship.lock`, whose imports
(the spec model, ``tomli_w``, the resolver glue) would cost every install start-up.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from ._uvargs import plain_environment

if TYPE_CHECKING:
    import ctypes

__all__ = ["plain_environment", "run_uv", "uv_bin"]


def uv_bin() -> str:
    """The uv binary shipped by the ``uv`` package (a dependency), else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):  # pragma: no cover - depends on install
        found = shutil.which("uv")
        if found is None:
            from .errors import LockError  # here: the quick path imports this module

            raise LockError("uv is not installed", hint="pip install uv") from None
        return found


@functools.cache
def _libc() -> ctypes.CDLL:
    """This process's C library, loaded once (prctl has no wrapper in the stdlib)."""
    import ctypes  # only here: the import costs every other command's start-up

    return ctypes.CDLL(None, use_errno=True)


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` making the child die when ``parent`` does (Linux).

    A SIGKILLed envship (the OOM killer, ``docker stop`` after its grace period) must not
    leave uv writing into an environment the next run is about to clear or rebuild.
    """
    libc = _libc()
    pr_set_pdeathsig = 1  # <linux/prctl.h>

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def run_uv(
    args: Sequence[str], *, keep_fds: Collection[int] = ()
) -> subprocess.CompletedProcess[str]:
    """Run uv to completion with its output captured and uncoloured.

    ``keep_fds`` stay open in the child: passing the fd of a held ``flock`` keeps the
    lock held for as long as uv runs, even if this process is killed before the child
    (on Linux it is then killed too, but the signal is not instantaneous).
    """
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        check=False,
        env=plain_environment(os.environ),
        pass_fds=tuple(keep_fds),
        preexec_fn=_die_with(os.getpid()) if sys.platform == "linux" else None,
    )

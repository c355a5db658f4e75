"""Telling a full disk from other write failures, for envship's own writes and uv's.

A full disk is not a bug or bad input: the user frees space (or picks another folder)
and re-runs. Each writer (fetch into the store, install, env create) says so in its own
words, and needs to recognise the condition first, also when it happened inside uv,
where only uv's message reaches us.
"""

from __future__ import annotations

import errno
import os

from .errors import EnvshipError

__all__ = ["DISK_FULL_ERRNOS", "is_disk_full"]

# ENOSPC: no blocks or inodes left. EDQUOT: the user's quota is spent; network shares
# (NFS, and so EFS) report it where a local disk would say ENOSPC.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# uv reports an io::Error as "<strerror> (os error N)" (Rust's Display for io::Error).
_UV_WORDS = tuple(f"{os.strerror(n)} (os error {n})".lower() for n in sorted(DISK_FULL_ERRNOS))


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk or a spent quota, raised here or reported by uv."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    if isinstance(exc, EnvshipError):
        said = "\n".join([exc.message, *(p.message for p in exc.problems)]).lower()
        if any(words in said for words in _UV_WORDS):
            return True
    # An error raised `from` a full disk (install's own message, say) is one too.
    return exc.__cause__ is not None and is_disk_full(exc.__cause__)

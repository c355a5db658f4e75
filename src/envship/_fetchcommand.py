"""The ``envship fetch`` command a hint tells someone to run, ready to paste anywhere.

A bare ``envship fetch --verify`` reads ``./pylock.toml`` and the default store, so run
from another folder it repairs some other store, or fails. The command names the lock
(absolute) and the store, each shell-quoted, and the targets and groups the failing
command was narrowed to, so that fetch selects at least the artifacts in question
without downloading the rest of the lock.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Collection, Sequence
from pathlib import Path

from .store import Store

__all__ = ["fetch_command"]


def fetch_command(
    lock: Path,
    store: Store,
    *,
    targets: Sequence[str] | None = None,
    groups: Collection[str] | None = None,
    verify: bool = False,
) -> str:
    """``envship fetch [--verify] --lock LOCK [--target T]... [--group G]... --store
    STORE``. ``groups``: as the library takes them (None: every group, no option; empty:
    ``--no-groups``)."""
    q = shlex.quote  # pasted into a shell as it is
    words = ["envship", "fetch", *(["--verify"] if verify else [])]
    words += ["--lock", q(os.path.abspath(lock))]
    words += [f"--target {q(t)}" for t in targets or ()]
    if groups is not None:
        words += [f"--group {q(g)}" for g in sorted(groups)] or ["--no-groups"]
    words += ["--store", q(str(store.root))]
    return " ".join(words)

"""The store's side of an install: every artifact there, staged under its real name.

uv reads a wheel's tags from its file name, while the store names files by sha256, so
each artifact is handed to uv from the store's ``named/<sha256>/<filename>`` link (or a
private copy when the store is read-only). Missing artifacts are named all at once
before anything is touched; a damaged one is named after uv refuses it, since uv only
says a wheel is unreadable, not which file to fetch again.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable
from pathlib import Path

from ._fetchcommand import fetch_command
from ._uvargs import requirement_line
from .errors import ArtifactError, InvalidLockError, Problem
from .lockfile import Artifact, LockFile
from .store import Store, sha256_file
from .targets import Target

__all__ = ["ProgressFn", "check_store", "name_damaged", "stage"]

ProgressFn = Callable[[int, int, str], None]  # bytes done, bytes in all, the file


def check_store(
    lock: LockFile, store: Store, target: Target, artifacts: list[Artifact]
) -> list[int]:
    """Every artifact's size in the store; a StoreError naming all that are missing."""
    sizes: list[int] = []
    missing: list[Artifact] = []
    for a in artifacts:
        try:
            st = store.path(a.sha256).stat()
        except OSError:  # as Path.is_file: unreadable counts as absent
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            missing.append(a)
        else:
            sizes.append(st.st_size)
    if missing:
        fetch = fetch_command(lock.path, store, targets=[target.name])
        raise store.missing_error(missing, len(artifacts), fetch)
    for a in artifacts:
        # The file name comes from the lock; it must not climb out of the staging folder.
        if "/" in a.filename or a.filename in ("", ".", ".."):
            raise InvalidLockError(f"unsafe artifact file name {a.filename!r} for {a.name}")
    return sizes


def name_damaged(lock: LockFile, store: Store, target: Target, artifacts: list[Artifact]) -> None:
    """After uv failed: an ArtifactError naming the store files whose bytes are not the
    lock's (uv only says a wheel is unreadable, not which file to fetch again). Hashing
    every artifact is paid only here, on the way out of a failed install. Besides each
    content file, the named copy uv read is hashed when it is a separate file (made
    where hard links fail): it can be damaged while the content file is whole."""
    damaged: list[tuple[Artifact, Path, str]] = []
    for a in artifacts:
        content = store.path(a.sha256)
        with contextlib.suppress(OSError):  # unreadable: uv's own error says enough
            actual = sha256_file(content)
            if actual != a.sha256:
                # Its named links share the damage; fetch replaces them with the file.
                damaged.append((a, content, actual))
                continue
        damaged += [
            (a, path, actual)
            for path, actual in store.damaged_named(a.sha256)
            if path.name == a.filename
        ]
    if damaged:
        first, path, actual = damaged[0]
        names = ", ".join(a.filename for a, _, _ in damaged)
        error = ArtifactError(
            f"the store {store.root} holds damaged copies of {len(damaged)} artifact(s): {names}",
            artifact=str(path),
            expected=f"sha256:{first.sha256}",
            actual=f"sha256:{actual}",
            # fetch --verify hashes content files and named copies, replacing bad ones.
            hint=fetch_command(lock.path, store, targets=[target.name], verify=True),
        )
        # ArtifactError takes no problems= argument (as in fetch); one per file.
        error.problems = tuple(
            Problem(str(p), f"sha256 {got}, the lock says {a.sha256}") for a, p, got in damaged
        )
        raise error


def stage(
    store: Store,
    artifacts: list[Artifact],
    sizes: list[int],
    wheels: Path,
    progress: ProgressFn | None,
) -> str:
    """Give each artifact its real file name next to ``dest``; return the requirements text."""
    total = sum(sizes)
    done = 0
    lines: list[str] = []
    for artifact, size in zip(artifacts, sizes, strict=True):
        staged = store.named_or_private(artifact.sha256, artifact.filename, wheels)
        done += size
        if progress is not None:
            progress(done, total, artifact.filename)
        lines.append(requirement_line(artifact.name, staged, artifact.sha256))
    return "\n".join(lines) + "\n"

"""Blob files checked against their digests, and which of them were already checked.

A blob taken from an OCI layout (a base, the store's layer cache) is checked against its
digest before it is used, linked, copied or pushed (:func:`check_file`), so a file
changed on disk fails with exit 4 naming it instead of reaching an image. This module
owns that check, the cache that makes it cheap and the file hash itself
(:func:`file_digest`); :mod:`envship.ocilayout` and :mod:`envship.imageio` call it, and
:mod:`envship.ocilayout` re-exports its public names.

Hashing a 137 MB base layer at every build would be the slowest step of a rebuild, so a
match is remembered by the file's identity (device, inode, size, mtime and ctime in ns),
in this process and, given a folder, on disk. Writing a file moves its mtime and ctime,
and nothing but the kernel sets a ctime, so neither a restored mtime (``touch -r``,
``tar x``) nor a recycled inode can pass for a remembered file. The one gap, a second
write within the clock tick of the mtime just read (git's "racy clean" problem,
Documentation/technical/racy-git.txt), is closed as git closes it: a file whose mtime is
less than :data:`SETTLE_NS` before the hash began is not remembered. A new hard link
moves the ctime too: the first use after it hashes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from ._atomic import write_atomic
from ._flock import share_with_group
from .errors import ArtifactError
from .oci import check_digest

__all__ = ["BLOB_MODE", "SETTLE_NS", "check_file", "file_digest", "mismatch", "open_to_all"]

_CHUNK = 1 << 20
#: A file whose mtime is less than this before a hash began may still change within the
#: same mtime tick (coarse kernel clocks; 1 s or 2 s on some file systems): not remembered.
SETTLE_NS = 2_000_000_000
_REMEMBERED = 8  # identities kept per digest in the on-disk cache (copies, hard links)
# This process's verified files: (device, inode, size, mtime_ns, ctime_ns) -> digest.
_Identity = tuple[int, int, int, int, int]
_VERIFIED: dict[_Identity, str] = {}


#: A blob file's mode: content, readable by every user of a shared store, as the store's
#: artifacts are (its own writes replace a blob by rename, never through the file).
BLOB_MODE = 0o644


def open_to_all(fd: int, path: Path) -> None:
    """Give the blob file ``path`` (open on ``fd``; a ``mkstemp`` file starts 0600) the
    mode every blob has: :data:`BLOB_MODE`, plus group write under a folder shared with
    its group (setgid and group-writable), as :func:`envship._flock.share_with_group`
    decides for the store's other files. A blob left 0600 would be refused to every
    other user of the store and to every reader of an output it is linked into."""
    os.fchmod(fd, BLOB_MODE)
    share_with_group(path, fd)


def file_digest(path: Path) -> tuple[str, int]:
    """``sha256:<hex>`` and size of the file at ``path``, read in pieces."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _known(cache: Path | None, digest: str, identity: _Identity) -> bool:
    if _VERIFIED.get(identity) == digest:
        return True
    if cache is None:
        return False
    try:
        entries = json.loads((cache / digest.removeprefix("sha256:")).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(entries, list) and list(identity) in entries


def _remember(cache: Path | None, digest: str, identity: _Identity) -> None:
    _VERIFIED[identity] = digest
    if cache is None:
        return
    path = cache / digest.removeprefix("sha256:")
    try:
        entries = json.loads(path.read_bytes())
    except (OSError, ValueError):
        entries = []
    if not isinstance(entries, list):
        entries = []
    entries = [e for e in entries if e != list(identity)][-(_REMEMBERED - 1) :]
    try:
        cache.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps([*entries, list(identity)]).encode())
    except OSError:
        pass  # a read-only store: hash again next time


def mismatch(path: Path, digest: str, size: int, actual: str, actual_size: int) -> ArtifactError:
    """The error for a blob file whose bytes are not the ones its digest names."""
    return ArtifactError(
        f"{path} does not match blob {digest}: it holds {actual_size} bytes with digest {actual}",
        artifact=str(path),
        expected=f"{digest} ({size} bytes)",
        actual=f"{actual} ({actual_size} bytes)",
        hint="the file was changed or damaged after it was written; restore it (pull, "
        "save or build the image again) rather than use it",
    )


def check_file(path: Path, digest: str, size: int, *, cache: Path | None = None) -> None:
    """Raise :class:`ArtifactError` (exit 4), naming the blob and the file, unless the
    file at ``path`` holds ``size`` bytes with sha256 ``digest``.

    A match is remembered by the file's identity (module docstring), in this process and
    in the folder ``cache`` if given, so an unchanged file is hashed once. A missing file
    raises :class:`FileNotFoundError`.
    """
    check_digest(digest)
    before = _identity(os.stat(path))
    if before[2] == size and _known(cache, digest, before):
        return
    started = time.time_ns()
    actual, actual_size = file_digest(path)
    if (actual, actual_size) != (digest, size):
        raise mismatch(path, digest, size, actual, actual_size)
    if _identity(os.stat(path)) == before and before[3] < started - SETTLE_NS:
        _remember(cache, digest, before)

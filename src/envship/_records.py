"""Installed distributions' RECORD files against the files on disk.

Each distribution's ``RECORD`` (PEP 376, with the PEP 427 hash format: ``sha256=`` +
urlsafe base64, no padding) lists every file its installer wrote, with hash and size.
Quick mode stats every listed file (missing -> ``removed``, size differs ->
``changed``); ``full`` also hashes it, which is what catches a same-size edit. Both
walk the distributions' top-level package folders and ``.dist-info`` folders for files
no RECORD lists (``added``). Reading and checking RECORD is kept apart from
:mod:`envship.verify`, which decides which distributions are checked against the lock
and reports the outcome; :mod:`envship.verify` re-exports the hash helpers.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import Distribution, FileHash
from pathlib import Path

from packaging.utils import canonicalize_name

from ._difference import Difference

__all__ = [
    "CHUNK",
    "Entry",
    "Installed",
    "added_files",
    "check_all",
    "decode_record_hash",
    "encode_record_hash",
    "hash_file",
    "installed",
]

CHUNK = 1 << 20  # read files in 1 MiB chunks: hashlib releases the GIL on large updates
_BUFFERS = threading.local()


# -- RECORD hash format (PEP 376 / PEP 427) ---------------------------------------------


def encode_record_hash(digest: bytes) -> str:
    """A raw digest as RECORD writes it: urlsafe base64 without ``=`` padding (PEP 427)."""
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def decode_record_hash(value: str) -> bytes:
    """The raw digest of a RECORD hash value; tolerates padding some tools leave in."""
    value = value.rstrip("=")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def hash_file(path: Path, algorithm: str = "sha256") -> tuple[int, bytes]:
    """``(size, digest)`` of a file, read in :data:`CHUNK` pieces."""
    h = hashlib.new(algorithm)
    size = 0
    buf: bytearray | None = getattr(_BUFFERS, "buf", None)
    if buf is None:  # one buffer per thread, reused: most RECORD files are small
        buf = _BUFFERS.buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return size, h.digest()


# -- the comparison ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One RECORD line: ``path`` absolute and normalized, as :func:`os.walk` spells it."""

    name: str
    rel: str
    path: str
    hash: FileHash | None
    size: int | None


@dataclass(frozen=True, slots=True)
class Installed:
    key: str  # canonical name
    name: str
    version: str
    dist_info: Path
    record: tuple[Entry, ...] | None  # None: no RECORD


def installed(sites: Iterable[Path]) -> list[Installed]:
    found: list[Installed] = []
    for site in sites:
        for info in sorted([*site.glob("*.dist-info"), *site.glob("*.egg-info")]):
            if not info.is_dir():
                continue
            dist = Distribution.at(info)
            name = dist.metadata["Name"] or info.name.split("-")[0]
            version = dist.metadata["Version"] or "(unknown)"
            files = dist.files  # parsed once: it re-reads RECORD on every access
            record = None
            if files is not None:
                record = tuple(
                    Entry(name, rel, os.path.normpath(os.path.join(site, rel)), f.hash, f.size)
                    for f in files
                    for rel in (str(f),)
                )
            found.append(Installed(canonicalize_name(name), name, version, info, record))
    return found


def _expected(entry: Entry) -> str:
    parts = [f"{entry.hash.mode}={entry.hash.value}"] if entry.hash else []
    if entry.size is not None:
        parts.append(f"size {entry.size}")
    return ", ".join(parts) or "listed in RECORD"


def _check(entry: Entry, full: bool) -> Difference | None:
    digest = None
    try:
        if full and entry.hash is not None:
            size, digest = hash_file(Path(entry.path), entry.hash.mode)
        else:
            size = os.stat(entry.path).st_size
    except FileNotFoundError:
        return Difference("removed", entry.name, entry.path, _expected(entry))
    except (OSError, ValueError) as exc:  # a folder where a file was, unreadable, bad algorithm
        return Difference("changed", entry.name, entry.path, _expected(entry), str(exc))
    if (entry.size is not None and size != entry.size) or (
        digest is not None and entry.hash is not None
        and digest != decode_record_hash(entry.hash.value)
    ):  # fmt: skip
        actual = f"size {size}"
        if digest is not None and entry.hash is not None:
            actual = f"{entry.hash.mode}={encode_record_hash(digest)}, {actual}"
        return Difference("changed", entry.name, entry.path, _expected(entry), actual)
    return None


def check_all(entries: list[Entry], full: bool, workers: int | None) -> list[Difference]:
    """Stat or hash every entry on a thread pool (hashlib and os.stat release the GIL).

    Files of a chunk or more are one task each and go first; small ones go in batches,
    so a pool task costs far less than the work in it.
    """
    big = [[e] for e in entries if (e.size or 0) >= CHUNK]
    small = [e for e in entries if (e.size or 0) < CHUNK]
    batches = sorted(big, key=lambda b: -(b[0].size or 0))
    batches += [small[i : i + 256] for i in range(0, len(small), 256)]

    def run(batch: list[Entry]) -> list[Difference]:
        return [d for e in batch if (d := _check(e, full)) is not None]

    with ThreadPoolExecutor(max_workers=workers) as pool:  # None: the stdlib's default
        return [d for found in pool.map(run, batches) for d in found]


def added_files(checked: list[Installed], everyone: list[Installed]) -> list[Difference]:
    """Files inside the checked distributions' top-level folders that no RECORD lists.

    The ``.dist-info`` folder counts too: installers record every file they write there.
    """
    known = {e.path for inst in everyone for e in inst.record or ()}
    owners: dict[str, list[str]] = {}
    for inst in checked:
        for e in inst.record or ():
            top, sep, _ = e.rel.partition("/")
            if not sep or top in ("", "..", "__pycache__") or top.endswith(".egg-info"):
                continue  # a top-level module, outside site-packages, byte-code, legacy
            top = os.path.join(str(inst.dist_info.parent), top)
            if inst.name not in owners.setdefault(top, []):
                owners[top].append(inst.name)
    diffs = []
    for top, names in sorted(owners.items()):
        for dirpath, _dirs, filenames in os.walk(top):
            in_cache = os.path.basename(dirpath) == "__pycache__"
            for fn in filenames:
                path = os.path.join(dirpath, fn)
                if path not in known and not (in_cache and fn.endswith(".pyc")):
                    diffs.append(Difference("added", ", ".join(names), path, None, "not in RECORD"))
    return diffs

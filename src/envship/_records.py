"""Installed distributions' RECORD files against the files on disk.

Each distribution's ``RECORD`` (PEP 376, with the PEP 427 hash format: ``sha256=`` +
urlsafe base64, no padding) lists every file its installer wrote, with hash and size.
Quick mode stats every listed file (missing -> ``removed``, size differs ->
``changed``); ``full`` also hashes it, which is what catches a same-size edit. Both
walk the distributions' top-level package folders and ``.dist-info`` folders for files
no RECORD lists (``added``): links (to a folder too, never followed), FIFOs and device
nodes as well, and in a ``__pycache__`` anything but a regular ``.pyc`` (:func:`unlisted`).
The same ``lstat`` checks what installers make: a regular file (a symbolic link only
where uv was asked for them, ``--link-mode symlink``; a folder on the way that is a link
is found by :func:`linked_folders`), executable where the wheel
or the installer made it so, without the setuid or setgid bit (no installer keeps them:
:mod:`envship._verifymodes`), and not writable by others (anyone on the machine could
change the code; group-writable files are common under a umask of 002, so they are only
counted, for a note). Reading and checking RECORD is kept apart from
:mod:`envship.verify`, which decides which distributions are checked against the lock
and reports the outcome; :mod:`envship.verify` re-exports the hash helpers.

RECORD is read here rather than through ``Distribution.files``: that gives None for an
empty RECORD (as for none at all) and raises on a blank line or a size that is not a
number. A RECORD that is there but lists nothing, cannot be read, or lacks a line an
installer always writes (its own, METADATA's and WHEEL's, every file of the locked wheel)
is itself ``changed`` (:func:`record_differences`).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import stat
import threading
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import Distribution, FileHash
from pathlib import Path, PurePosixPath

from packaging.utils import canonicalize_name

from ._difference import Difference
from ._verifymodes import files_under, setid_difference

__all__ = [
    "CHUNK",
    "Checked",
    "Entry",
    "Installed",
    "added_files",
    "check_all",
    "decode_record_hash",
    "describe",
    "encode_record_hash",
    "hash_file",
    "installed",
    "linked_folders",
    "record_differences",
    "unlisted",
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
    executable: bool = False  # the wheel (zip mode) or the installer made it so


@dataclass(frozen=True, slots=True)
class Installed:
    key: str  # canonical name
    name: str
    version: str
    dist_info: Path
    record: tuple[Entry, ...] | None  # None: no RECORD, or none that could be read
    # Why the RECORD is not one an installer writes, when it is there: "empty",
    # "unreadable: ...", "line 3: size 'x' is not a number".
    record_problem: str | None = None


def installed(sites: Iterable[Path]) -> list[Installed]:
    found: list[Installed] = []
    for site in sites:
        for info in sorted([*site.glob("*.dist-info"), *site.glob("*.egg-info")]):
            if not info.is_dir():
                continue
            dist = Distribution.at(info)
            name = dist.metadata["Name"] or info.name.split("-")[0]
            version = dist.metadata["Version"] or "(unknown)"
            if info.name.endswith(".dist-info"):
                record, problem = _read_record(info / "RECORD", site, name)
            else:  # legacy egg-info: installed-files.txt or SOURCES.txt, as importlib reads
                record, problem = _egg_files(dist, site, name)
            found.append(Installed(canonicalize_name(name), name, version, info, record, problem))
    return found


def _entry(name: str, site: Path, rel: str, hash: str | None, size: int | None) -> Entry:
    rel = str(PurePosixPath(rel))  # as importlib.metadata's PackagePath spells it
    path = os.path.normpath(os.path.join(site, rel))
    return Entry(name, rel, path, FileHash(hash) if hash else None, size)


def _read_record(path: Path, site: Path, name: str) -> tuple[tuple[Entry, ...] | None, str | None]:
    """A RECORD's entries (None: no RECORD) and what is wrong with it, if anything."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable: {exc}"
    entries: list[Entry] = []
    problems: list[str] = []
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if not any(row):
                continue  # a blank line: nothing listed, nothing claimed
            where = f"line {reader.line_num}"
            if len(row) > 3:
                problems.append(f"{where}: {len(row)} fields, not path,hash,size")
            rel, hash, size = (*row, "", "")[:3]
            if not rel:
                problems.append(f"{where}: no path")
                continue
            number = None
            if size:
                try:
                    number = int(size)
                except ValueError:
                    problems.append(f"{where}: size {size!r} is not a number")
            entries.append(_entry(name, site, rel, hash or None, number))
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: {exc}")
    if not entries and not problems:
        problems.append("empty")
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    return tuple(entries), "; ".join(problems[:3]) + more or None


def _egg_files(
    dist: Distribution, site: Path, name: str
) -> tuple[tuple[Entry, ...] | None, str | None]:
    try:
        files = dist.files  # parsed once: it re-reads the file on every access
    except (TypeError, ValueError) as exc:  # a blank line, a size that is no number
        return None, f"unreadable: {exc}"
    if files is None:
        return None, None
    return tuple(
        _entry(name, site, str(f), f"{f.hash.mode}={f.hash.value}" if f.hash else None, f.size)
        for f in files
    ), None


def _expected(entry: Entry) -> str:
    parts = [f"{entry.hash.mode}={entry.hash.value}"] if entry.hash else []
    if entry.size is not None:
        parts.append(f"size {entry.size}")
    return ", ".join(parts) or "listed in RECORD"


def _check(entry: Entry, full: bool, links: bool) -> tuple[Difference | None, bool]:
    """The difference found in one file, if any, and whether it is group-writable."""
    digest = None
    try:
        st = os.lstat(entry.path)
        if stat.S_ISLNK(st.st_mode) and not links:
            to = os.readlink(entry.path)
            return Difference(
                "changed", entry.name, entry.path, "a regular file", f"a symbolic link to {to}"
            ), False
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(entry.path)  # uv's --link-mode symlink: what it points at counts
        if not stat.S_ISREG(st.st_mode):
            return Difference(
                "changed", entry.name, entry.path, "a regular file", _kind(st.st_mode)
            ), False
        if full and entry.hash is not None:
            size, digest = hash_file(Path(entry.path), entry.hash.mode)
        else:
            size = st.st_size
    except FileNotFoundError:
        return Difference("removed", entry.name, entry.path, _expected(entry)), False
    except (OSError, ValueError) as exc:  # unreadable, a bad algorithm
        return Difference("changed", entry.name, entry.path, _expected(entry), str(exc)), False
    mode = st.st_mode
    if (entry.size is not None and size != entry.size) or (
        digest is not None and entry.hash is not None
        and digest != decode_record_hash(entry.hash.value)
    ):  # fmt: skip
        actual = f"size {size}"
        if digest is not None and entry.hash is not None:
            actual = f"{entry.hash.mode}={encode_record_hash(digest)}, {actual}"
        return Difference("changed", entry.name, entry.path, _expected(entry), actual), False
    if (setid := setid_difference(entry.name, entry.path, mode)) is not None:
        return setid, False
    if entry.executable and not mode & stat.S_IXUSR:
        return Difference(
            "changed", entry.name, entry.path, "executable", f"mode {stat.filemode(mode)}"
        ), False
    if mode & stat.S_IWOTH:
        return Difference(
            "changed", entry.name, entry.path, "not writable by others",
            f"mode {stat.filemode(mode)}", "anyone on this machine can change it",
        ), False  # fmt: skip
    return None, bool(mode & stat.S_IWGRP)


def _kind(mode: int) -> str:
    return "a folder" if stat.S_ISDIR(mode) else f"not a regular file ({stat.filemode(mode)})"


@dataclass(frozen=True, slots=True)
class Checked:
    differences: list[Difference]
    group_writable: list[str]  # paths, for a note


def check_all(
    entries: list[Entry], full: bool, workers: int | None, *, links: bool = False
) -> Checked:
    """Stat or hash every entry on a thread pool (hashlib and os.stat release the GIL).

    Files of a chunk or more are one task each and go first; small ones go in batches,
    so a pool task costs far less than the work in it. ``links``: a symbolic link where
    a file was is followed (uv's ``--link-mode symlink``), not a difference.
    """
    big = [[e] for e in entries if (e.size or 0) >= CHUNK]
    small = [e for e in entries if (e.size or 0) < CHUNK]
    batches = sorted(big, key=lambda b: -(b[0].size or 0))
    batches += [small[i : i + 256] for i in range(0, len(small), 256)]

    def run(batch: list[Entry]) -> list[tuple[Entry, Difference | None, bool]]:
        return [(e, *_check(e, full, links)) for e in batch]

    diffs: list[Difference] = []
    writable: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # None: the stdlib's default
        for found in pool.map(run, batches):
            for e, diff, group in found:
                if diff is not None:
                    diffs.append(diff)
                elif group:
                    writable.append(e.path)
    return Checked(diffs, writable)


def linked_folders(entries: list[Entry], root: Path) -> list[Difference]:
    """Folders under ``root`` on the way to an entry that are symbolic links (a package
    folder swapped for a link to elsewhere): installers make real folders, in every link
    mode. One ``lstat`` per distinct folder."""
    top = os.path.normpath(root)
    seen: dict[str, str] = {}
    diffs = []
    for e in entries:
        folder = os.path.dirname(e.path)
        while folder.startswith(top + os.sep) and folder not in seen:
            seen[folder] = e.name
            try:
                linked = stat.S_ISLNK(os.lstat(folder).st_mode)
            except OSError:
                linked = False  # gone: the file check names what is missing
            if linked:
                to = os.readlink(folder)
                diffs.append(
                    Difference("changed", e.name, folder, "a folder", f"a symbolic link to {to}")
                )
            folder = os.path.dirname(folder)
    return diffs


def added_files(
    checked: list[Installed], everyone: list[Installed], vouched: Iterable[Entry] = ()
) -> list[Difference]:
    """Files inside the checked distributions' top-level folders that no RECORD lists.

    The ``.dist-info`` folder counts too: installers record every file they write there.
    ``vouched``: the files the locked wheels vouch for (:mod:`envship._wheelrecord`),
    listed or not; their folders are walked as well, and they are not added files.
    """
    vouched = list(vouched)
    known = {e.path for inst in everyone for e in inst.record or ()}
    known.update(e.path for e in vouched)
    by_name: dict[str, list[Entry]] = {}
    for e in vouched:
        by_name.setdefault(e.name, []).append(e)
    owners: dict[str, list[str]] = {}
    for inst in checked:
        prefix = str(inst.dist_info.parent) + os.sep
        n = len(prefix)
        tops = set()
        for e in (*(inst.record or ()), *by_name.get(inst.name, ())):
            if e.path.startswith(prefix):  # else outside site-packages (bin/, the prefix)
                top, sep, _ = e.path[n:].partition(os.sep)
                if sep:  # else a top-level module
                    tops.add(top)
        for top in sorted(tops):
            if top == "__pycache__" or top.endswith(".egg-info"):
                continue  # byte-code, legacy
            if inst.name not in owners.setdefault(prefix + top, []):
                owners[prefix + top].append(inst.name)
    diffs = []
    for top, names in sorted(owners.items()):
        if os.path.islink(top):
            # linked_folders reports the link; what it points at is not the environment's
            # (in an unpacked image it may be this machine's /etc), so it is not walked.
            continue
        name = ", ".join(names)
        for path, actual in unlisted(top, known):
            diffs.append(Difference("added", name, path, None, actual))
    return diffs


def describe(entry: os.DirEntry[str]) -> str:
    """What a file no RECORD lists is, for an ``added`` or ``unowned`` difference's
    ``actual``: a link names its target (never followed), a FIFO or device node its kind,
    and a setuid or setgid file says so (no installer makes one). Only such a file costs
    an ``lstat``: ``d_type`` tells the rest."""
    if entry.is_symlink():
        try:
            return f"a link to {os.readlink(entry.path)}"
        except OSError as exc:
            return f"a link ({exc})"
    if entry.is_dir(follow_symlinks=False):
        return "a folder"
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return "a file"
    if not stat.S_ISREG(mode):
        return _kind(mode)
    if mode & (stat.S_ISUID | stat.S_ISGID):
        return f"a file, mode {stat.filemode(mode)}: runs with its owner's or group's rights"
    return "a file"


def unlisted(top: str, known: Collection[str]) -> Iterator[tuple[str, str]]:
    """``(path, actual)`` of each entry under the folder ``top`` that is not in ``known``
    and not a folder: files, links (a link to a folder too, which ``os.walk`` would list
    among the folders and never report: ``import pkg.sub.mod`` runs what it points at),
    FIFOs and device nodes. Links are never followed. In a ``__pycache__`` folder only a
    regular ``.pyc`` file is expected (RECORD leaves byte-code out; ``verify --bytecode``
    compares it with its source); anything else there is reported, a folder named
    ``__pycache__`` that is a link too. One ``scandir`` per folder; a folder this user
    may not read is a :class:`~envship.errors.PermissionDeniedError`, never a pass."""
    for entry in files_under(top):
        if entry.path not in known:
            actual = describe(entry)
            yield entry.path, "not in RECORD" if actual == "a file" else f"{actual}, not in RECORD"


#: What a RECORD must list (PEP 376: every installed file, itself included), beyond the
#: locked wheel's files: the metadata files every wheel carries (PEP 427).
_ALWAYS = ("RECORD", "METADATA", "WHEEL")


def _files_in(folder: Path) -> set[str]:
    return {path for path, _ in unlisted(str(folder), ())}  # links to folders too


def _named(paths: list[str], site: Path, limit: int = 5) -> str:
    rels = [os.path.relpath(p, site).replace(os.sep, "/") for p in paths]
    more = f" and {len(rels) - limit} more" if len(rels) > limit else ""
    return ", ".join(rels[:limit]) + more


def record_differences(checked: list[Installed], vouched: Iterable[Entry]) -> list[Difference]:
    """The RECORD of each checked distribution, where it is not one an installer wrote:
    gone (``removed``), or there but empty, unreadable, malformed or short of lines
    (``changed``). A line is missing when a file there that the locked wheel vouches for
    (``vouched``), or the RECORD, METADATA or WHEEL file in its own folder, has none: an
    edit that cut the RECORD short (the files it no longer lists become nobody's). The
    other files of its folder that it does not list are then named with them."""
    wheel_files: dict[str, set[str]] = {}
    for e in vouched:
        wheel_files.setdefault(e.name, set()).add(e.path)
    diffs = []
    expected = "a line for every file installed, itself included (PEP 376)"
    for inst in checked:
        path = inst.dist_info / "RECORD"
        if inst.record is None and inst.record_problem is None:
            # PEP 376: RECORD is mandatory; without it nothing is known
            diffs.append(Difference("removed", inst.name, str(path), "RECORD"))
            continue
        problems = [inst.record_problem] if inst.record_problem is not None else []
        # An empty one says so: listing every file it lacks would add nothing.
        if inst.record and inst.dist_info.name.endswith(".dist-info"):
            must = {*wheel_files.get(inst.name, ()), *(str(inst.dist_info / n) for n in _ALWAYS)}
            listed = {e.path for e in inst.record}
            # A file gone with its line is the file's difference (``removed``), not twice.
            missing = sorted(p for p in must - listed if os.path.lexists(p))
            if missing or problems:
                # Then the files of its own folder it does not list are named here, not
                # each as an added file: the RECORD lost their lines (verify drops those).
                missing = sorted({*missing, *(_files_in(inst.dist_info) - listed)})
            if missing:
                problems.append(f"no line for {_named(missing, inst.dist_info.parent)}")
        if problems:
            diffs.append(Difference("changed", inst.name, str(path), expected, "; ".join(problems)))
    return diffs

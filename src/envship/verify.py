"""Verify an installed environment against a PEP 751 lock, down to the RECORD hashes.

Three questions, answered without running any installed code:

1. Are exactly the locked distributions installed, at the locked versions? The expected
   set is what :meth:`LockFile.select` picks for the target (PEP 751); the installed set
   is every ``*.dist-info`` (PEP 376 / PEP 627) read through :mod:`importlib.metadata`.
2. Are their files the files the installer wrote? Each distribution's ``RECORD``
   (PEP 376, with the PEP 427 hash format: ``sha256=`` + urlsafe base64, no padding)
   lists every file with its hash and size.
3. Does anything else get in? Every top-level entry of a site-packages folder that no
   installed distribution claims is ``unowned`` (a ``.pth`` file runs code at every
   start), and a venv whose ``pyvenv.cfg`` includes the system site-packages is a
   ``config`` difference (:mod:`envship._strays`); both in every mode.

Quick mode (the default) stats every RECORD-listed file (missing -> ``removed``, size
differs -> ``changed``) and walks the distributions' top-level package folders and
``.dist-info`` folders for files no RECORD lists (``added``). ``full`` also hashes every
listed file, which is what catches a same-size edit. Byte-code under ``__pycache__`` is
not in that comparison: installers (pip lists it in RECORD without a hash) or Python
itself may (re)compile it at any time. ``bytecode`` compares it with what its source
compiles to instead (:mod:`envship._pycheck`). Entries without a hash (``RECORD``
itself) are checked for existence and size only. Anything installed but not locked is
``extra`` -- pip, setuptools and wheel too; ``ignore`` names distributions to leave out
of the comparison entirely (uv-created venvs have no pip, the normal case). A
distribution at the wrong version is reported once, as ``version``, and its files are
not checked.

Finding the environment, running its interpreter (for a venv, once, as ``-I -S``, so no
``.pth`` file runs) and choosing its lock target (:func:`find_environment`,
:func:`choose_target`) is :mod:`envship._environment`'s. The interpreter must exist and
be the target's Python, or nothing is compared (exit 2, as for a lock no target fits).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import threading
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import Distribution, FileHash
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._environment import (
    InstalledEnvironment,
    choose_target,
    find_environment,
    interpreter_mismatches,
    run_interpreter,
)
from ._strays import VENV_CREATION, site_differences
from .errors import EnvshipError, Problem, SpecError, TargetError
from .lockfile import LockFile
from .targets import Target

if TYPE_CHECKING:
    from ._bytecode import BytecodeCompiler

__all__ = [
    "KINDS",
    "VENV_CREATION",
    "Difference",
    "DifferenceKind",
    "InstalledEnvironment",
    "VerifyMismatchError",
    "choose_target",
    "decode_record_hash",
    "encode_record_hash",
    "find_environment",
    "hash_file",
    "verify",
]

DifferenceKind = Literal[
    "missing", "extra", "version", "config", "changed", "removed", "added", "unowned"
]
#: Report order: distribution-level differences, the environment's settings, then files.
KINDS: tuple[DifferenceKind, ...] = (
    "missing", "extra", "version", "config", "changed", "removed", "added", "unowned",
)  # fmt: skip
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


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the environment differs from the lock, and where."""

    kind: DifferenceKind
    # The distribution concerned; for ``unowned`` the entry's name, for ``config`` the
    # setting, for a file the venv's creation wrote :data:`VENV_CREATION`.
    name: str
    path: str  # a dist-info folder, a file or folder, pyvenv.cfg, or (missing) site-packages
    expected: str | None = None
    actual: str | None = None
    note: str | None = None  # why it is there or why it matters, when known

    def to_json(self) -> dict[str, str | None]:
        data = {f: getattr(self, f) for f in ("kind", "name", "path", "expected", "actual")}
        if self.note is not None:
            data["note"] = self.note
        return data


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify`; ``identical`` only when there is no difference."""

    lock: Path
    target: Target
    environment: InstalledEnvironment
    full: bool
    distributions: int  # distributions the lock expects
    checked_files: int  # RECORD entries stat-ed (quick) or hashed (full)
    differences: tuple[Difference, ...]
    checked_bytecode: int | None = None  # cached .pyc files compared; None: not asked
    notes: tuple[str, ...] = ()  # what could not be checked, and why

    @property
    def identical(self) -> bool:
        return not self.differences

    def by_kind(self) -> dict[DifferenceKind, list[Difference]]:
        groups: dict[DifferenceKind, list[Difference]] = {}
        for d in self.differences:
            groups.setdefault(d.kind, []).append(d)
        return groups

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "lock": str(self.lock),
            "target": self.target.name,
            "env": str(self.environment.root),
            "site_packages": str(self.environment.site_packages[0]),
            "search_path": [str(p) for p in self.environment.site_packages],
            "python": self.environment.python,
            "interpreter": (
                str(self.environment.interpreter) if self.environment.interpreter else None
            ),
            "mode": "full" if self.full else "quick",
            "distributions": self.distributions,
            "checked_files": self.checked_files,
            "checked_bytecode": self.checked_bytecode,
            "differences": [d.to_json() for d in self.differences],
            "notes": list(self.notes),
        }


def _hint(report: VerifyReport) -> str | None:
    hints = []
    added = [d.name for d in report.differences if d.kind == "extra" and d.note]
    if added:
        it = "them" if len(added) > 1 else "it"
        hints.append(f"{', '.join(added)} came from `envship add`: `envship lock` takes {it} in")
    kinds = {d.kind for d in report.differences}
    if "unowned" in kinds:
        hint = "no installed distribution claims the unowned paths: remove them"
        if "missing" in kinds:
            hint += " (or reinstall the missing distributions they may belong to)"
        hints.append(hint)
    if "config" in kinds:
        hints.append("set include-system-site-packages = false in pyvenv.cfg")
    if not report.full:
        hints.append("--full also compares every file's sha256")
    return "; ".join(hints) or None


class VerifyMismatchError(EnvshipError):
    """The environment differs from the lock; carries the whole report (exit code 1)."""

    exit_code = 1
    kind = "mismatch"

    def __init__(self, report: VerifyReport) -> None:
        n = len(report.differences)
        super().__init__(
            f"{report.environment.root} differs from {report.lock} "
            f"(target {report.target.name}): {n} difference{'s' if n != 1 else ''}",
            hint=_hint(report),
        )
        self.report = report

    def to_json(self) -> dict[str, object]:
        return {**self.report.to_json(), **super().to_json()}


# -- the comparison ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """One RECORD line: ``path`` absolute and normalized, as :func:`os.walk` spells it."""

    name: str
    rel: str
    path: str
    hash: FileHash | None
    size: int | None


@dataclass(frozen=True, slots=True)
class _Installed:
    key: str  # canonical name
    name: str
    version: str
    dist_info: Path
    record: tuple[_Entry, ...] | None  # None: no RECORD


def _installed(sites: Iterable[Path]) -> list[_Installed]:
    found: list[_Installed] = []
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
                    _Entry(name, rel, os.path.normpath(os.path.join(site, rel)), f.hash, f.size)
                    for f in files
                    for rel in (str(f),)
                )
            found.append(_Installed(canonicalize_name(name), name, version, info, record))
    return found


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _is_bytecode(rel: str) -> bool:
    return rel.endswith(".pyc") and "__pycache__/" in rel


def _expected(entry: _Entry) -> str:
    parts = [f"{entry.hash.mode}={entry.hash.value}"] if entry.hash else []
    if entry.size is not None:
        parts.append(f"size {entry.size}")
    return ", ".join(parts) or "listed in RECORD"


def _check(entry: _Entry, full: bool) -> Difference | None:
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


def _check_all(entries: list[_Entry], full: bool, workers: int | None) -> list[Difference]:
    """Stat or hash every entry on a thread pool (hashlib and os.stat release the GIL).

    Files of a chunk or more are one task each and go first; small ones go in batches,
    so a pool task costs far less than the work in it.
    """
    big = [[e] for e in entries if (e.size or 0) >= CHUNK]
    small = [e for e in entries if (e.size or 0) < CHUNK]
    batches = sorted(big, key=lambda b: -(b[0].size or 0))
    batches += [small[i : i + 256] for i in range(0, len(small), 256)]

    def run(batch: list[_Entry]) -> list[Difference]:
        return [d for e in batch if (d := _check(e, full)) is not None]

    with ThreadPoolExecutor(max_workers=workers) as pool:  # None: the stdlib's default
        return [d for found in pool.map(run, batches) for d in found]


def _added(checked: list[_Installed], everyone: list[_Installed]) -> list[Difference]:
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


def _added_by_envship_add(environment: InstalledEnvironment) -> dict[tuple[str, str], str]:
    """(name, version) -> note for what ``envship add`` installed, from the install marker
    (``ENV/.envship-install.json``, ``added``) of the venv holding the site-packages."""
    notes: dict[tuple[str, str], str] = {}
    marker = environment.marker()
    entries = marker.get("added") if marker is not None else None
    for e in entries if isinstance(entries, list) else ():
        if isinstance(e, dict) and isinstance(e.get("name"), str):
            why = f" ({e['requested']})" if e.get("requested") else " as a dependency"
            note = f"added by envship add{why}: run envship lock to take it in"
            notes[(canonicalize_name(e["name"]), str(e.get("version")))] = note
    return notes


def verify(
    lock: LockFile,
    env: Path | InstalledEnvironment | None,
    *,
    target: Target | None = None,
    groups: Collection[str] | None = None,
    full: bool = False,
    ignore: Collection[str] = (),
    workers: int | None = None,
    bytecode: bool | BytecodeCompiler = False,
    interpreter: bool = True,
) -> VerifyReport:
    """Compare the distributions (and their RECORD files) in ``env`` with the lock.

    ``env`` is anything :func:`find_environment` accepts (``None``: ``$VIRTUAL_ENV``);
    ``target`` defaults to :func:`choose_target` for the environment's Python; ``groups``
    as in :meth:`LockFile.select` (``None``: every group the lock has). ``bytecode``
    also compares each cached ``.pyc`` with its source (:mod:`envship._pycheck`), with
    the environment's interpreter (``True``) or the given one. ``interpreter``: run a
    venv's ``bin/python`` (:func:`envship._environment.run_interpreter`) and refuse one
    that is missing or is not the target's Python; False for an environment that is not
    meant to run on this machine (one read out of an image). Never prints.
    """
    environment = env if isinstance(env, InstalledEnvironment) else find_environment(env)
    if interpreter:
        environment = run_interpreter(environment)
    if target is None:
        target = choose_target(lock, environment.python)
    runs = environment.runs
    if runs is not None and (reasons := interpreter_mismatches(runs, target)):
        # The same exit code (2) as a lock no target fits: nothing was compared.
        raise TargetError(
            f"{runs.path} cannot run the lock target {target.name}",
            problems=[Problem(str(runs.path), r) for r in reasons],
            hint="name the target the environment was made for with --target",
        )
    skip = {canonicalize_name(n) for n in ignore}
    expected: dict[str, tuple[str, str]] = {
        canonicalize_name(str(p.name)): (str(p.name), str(p.version))
        for p, _artifact in lock.select(target, groups=groups)
    }
    expected = {k: v for k, v in expected.items() if k not in skip}
    installed = _installed(environment.site_packages)
    added = _added_by_envship_add(environment)
    diffs: list[Difference] = []
    verified: list[_Installed] = []
    accounted: set[str] = set()  # locked names found installed, at any version
    for inst in installed:
        if inst.key in skip:
            continue
        want = expected.get(inst.key)
        if want is None or (inst.key in accounted and _same_version(inst.version, want[1])):
            # not locked, or a second dist-info of a name already installed as locked
            note = added.get((inst.key, inst.version))
            diffs.append(
                Difference("extra", inst.name, str(inst.dist_info), None, inst.version, note)
            )
        elif _same_version(inst.version, want[1]):
            verified.append(inst)
        else:
            diffs.append(
                Difference("version", inst.name, str(inst.dist_info), want[1], inst.version)
            )
        accounted.add(inst.key)
    where = str(environment.site_packages[0])
    for key, (name, version) in expected.items():
        if key not in accounted:
            diffs.append(Difference("missing", name, where, version, None))
    entries: list[_Entry] = []
    for inst in verified:
        if inst.record is None:  # PEP 376: RECORD is mandatory; without it nothing is known
            path = str(inst.dist_info / "RECORD")
            diffs.append(Difference("removed", inst.name, path, "RECORD"))
        else:
            entries.extend(e for e in inst.record if not _is_bytecode(e.rel))
    diffs.extend(_check_all(entries, full, workers))
    diffs.extend(_added(verified, installed))
    claimed = [str(inst.dist_info) for inst in installed]
    claimed += [e.path for inst in installed for e in inst.record or ()]
    found, notes = site_differences(environment, claimed)
    diffs.extend(found)
    checked_bytecode = None
    if bytecode is not False:
        # Imported here: only a byte-code check needs them.
        from ._bytecode import BytecodeCompiler
        from ._pycheck import Source, check_bytecode

        compiler = bytecode if isinstance(bytecode, BytecodeCompiler) else _own(environment)
        sources = [Source(e.name, e.path) for e in entries if e.rel.endswith(".py")]
        bad, checked_bytecode = check_bytecode(sources, compiler, workers=workers or 2)
        diffs.extend(
            Difference("changed", b.name, b.pyc, f"the code of {b.source}", b.reason) for b in bad
        )
    diffs.sort(key=lambda d: (KINDS.index(d.kind), canonicalize_name(d.name), d.path))
    return VerifyReport(
        lock=lock.path,
        target=target,
        environment=environment,
        full=full,
        distributions=len(expected),
        checked_files=len(entries),
        differences=tuple(diffs),
        checked_bytecode=checked_bytecode,
        notes=tuple(notes),
    )


def _own(environment: InstalledEnvironment) -> BytecodeCompiler:
    """The environment's interpreter, to compile its sources (run with no site, so none of
    its installed code runs); for a bare site-packages folder, this one if it fits."""
    from ._bytecode import compiler_for

    root = environment.root
    interpreter = environment.interpreter or (root / "bin" / "python" if root.is_dir() else None)
    candidates = [str(interpreter)] if interpreter is not None and interpreter.exists() else []
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not candidates and environment.python == here:
        candidates.append(sys.executable)
    for python in candidates:
        compiler = compiler_for(python)
        if compiler is not None:
            return compiler
    raise SpecError(
        f"cannot check the byte-code of {root}: no interpreter for it runs here",
        problems=[Problem(str(root), f"Python {environment.python or '(unknown)'}")],
        hint="pass the environment's bin/python, or verify without --bytecode",
    )

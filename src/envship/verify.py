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
Reading RECORD and checking files against it is :mod:`envship._records`'s, the
:class:`Difference` type :mod:`envship._difference`'s, and the notes on what
``envship add`` installed :mod:`envship._addedrecord`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from . import _records
from ._addedrecord import added_notes
from ._difference import KINDS, Difference, DifferenceKind
from ._environment import (
    InstalledEnvironment,
    choose_target,
    find_environment,
    interpreter_mismatches,
    run_interpreter,
)
from ._records import CHUNK as CHUNK  # kept importable from here, where it was
from ._records import decode_record_hash, encode_record_hash, hash_file
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

# -- results ----------------------------------------------------------------------------


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


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _is_bytecode(rel: str) -> bool:
    return rel.endswith(".pyc") and "__pycache__/" in rel


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
    installed = _records.installed(environment.site_packages)
    added = added_notes(environment)
    diffs: list[Difference] = []
    verified: list[_records.Installed] = []
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
    entries: list[_records.Entry] = []
    for inst in verified:
        if inst.record is None:  # PEP 376: RECORD is mandatory; without it nothing is known
            path = str(inst.dist_info / "RECORD")
            diffs.append(Difference("removed", inst.name, path, "RECORD"))
        else:
            entries.extend(e for e in inst.record if not _is_bytecode(e.rel))
    diffs.extend(_records.check_all(entries, full, workers))
    diffs.extend(_records.added_files(verified, installed))
    claimed = [str(inst.dist_info) for inst in installed]
    claimed += [e.path for inst in installed for e in inst.record or ()]
    found, notes = site_differences(environment, claimed)
    diffs.extend(found)
    venv_above = environment.record_root
    if (
        environment.venv is None
        and environment.interpreter is None
        and venv_above is not None
        and (venv_above / "pyvenv.cfg").is_file()
    ):
        notes.append(
            f"named by its site-packages folder: the venv {venv_above} around it (its "
            "interpreter and pyvenv.cfg) was not checked; name the venv to check them"
        )
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

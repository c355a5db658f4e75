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

With a ``store`` holding the locked wheels, each verified distribution's installed RECORD
is first held against the locked wheel's own RECORD (:mod:`envship._wheelrecord`): every
file must carry the wheel's hash, and a line the wheel does not have is ``added``; the
files are then checked against the wheel's hashes. Without it (or for a wheel the store
lacks) the installed RECORD is all there is, and the report's notes say so.

Quick mode (the default) stats every RECORD-listed file (missing -> ``removed``, size
differs -> ``changed``; a symbolic link, a lost executable bit, a setuid or setgid bit
or a file others can write -> ``changed``) and walks the distributions' top-level
package folders and ``.dist-info`` folders for files no RECORD lists (``added``; a link,
to a folder too, a FIFO or device node, and in a ``__pycache__`` anything but a regular
``.pyc``). Modes no installer gives anywhere else in the environment, a folder others
can write into or a setuid or setgid file, are ``changed`` too
(:mod:`envship._verifymodes`; the byte-code's in ``__pycache__`` only in ``full`` or
``bytecode`` mode). A folder this user may not read is a
:class:`~envship.errors.PermissionDeniedError`. ``full`` also hashes every listed file,
which is what catches a same-size edit. Byte-code under ``__pycache__`` is not in that
comparison: installers (pip lists it in RECORD without a hash) or Python itself may
(re)compile it at any time. ``bytecode`` compares it with what its source compiles to
instead (:mod:`envship._pycheck`). Entries without a hash (``RECORD`` itself) are
checked for existence and size only; a RECORD that is there but empty, unreadable or
short of a line its installer writes is itself ``changed`` (the files the locked wheel
vouches for are still checked, and claimed). Anything installed but not locked is
``extra`` -- pip, setuptools and wheel too; one the lock holds in a dependency group
verify was not asked for is an ``extra`` that names the group (``locked_in``; and, as
``expected``, the version it locks there when another is installed); ``ignore`` names
distributions to leave out of the comparison entirely (uv-created venvs have no pip, the
normal case). A distribution at the wrong version is reported once, as ``version``, and
its files are not checked. A second metadata folder of a locked name is a ``duplicate``;
the one at the locked version (spelled as the locked wheel spells it, if several) is
checked. Every difference names its distribution by the normalized name (PEP 503),
however the lock or the metadata folder spells it.

A run of ``envship install`` or ``envship add`` marks the environment with
``.envship-incomplete`` before it changes anything and removes the mark only once the
environment is whole; the kernel launcher and ``envship add`` refuse an environment that
still carries it. So does ``verify``: the mark is the first difference (``incomplete``,
with the text it holds, e.g. "install in progress"), and the report's ``remedy`` is the
command that finishes the environment. A half-made folder that is not yet a venv at all
(killed before ``uv venv`` ended) is refused as no environment, naming the mark.

Finding the environment, running its interpreter (for a venv, once, as ``-I -S``, so no
``.pth`` file runs) and choosing its lock target (:func:`find_environment`,
:func:`choose_target`) is :mod:`envship._environment`'s. The interpreter must exist and
be the target's Python, or nothing is compared (exit 2, as for a lock no target fits).
Reading RECORD and checking files against it is :mod:`envship._records`'s, the
:class:`Difference` type :mod:`envship._difference`'s, and the notes on what
``envship add`` installed :mod:`envship._addedrecord`'s.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from . import _records, _wheelrecord
from ._addedrecord import added_notes
from ._difference import KINDS, Difference, DifferenceKind
from ._environment import (
    InstalledEnvironment,
    choose_target,
    find_environment,
    interpreter_mismatches,
    read_venv_config,
    relock_hint,
    run_interpreter,
)
from ._halfmade import finish, half_made, incomplete
from ._installmarker import FILES_KEY
from ._records import CHUNK as CHUNK  # kept importable from here, where it was
from ._records import decode_record_hash, encode_record_hash, hash_file
from ._shebang import Interpreter, check_heads
from ._strays import VENV_CREATION, site_differences
from ._verifyasked import asked_groups, asked_store, target_of, unasked
from ._verifymodes import mode_differences
from ._verifyreport import VerifyMismatchError, VerifyReport
from .errors import Problem, SpecError, TargetError
from .lockfile import LockFile
from .targets import Target

if TYPE_CHECKING:
    from ._bytecode import BytecodeCompiler
    from .store import Store

__all__ = [
    "KINDS",
    "VENV_CREATION",
    "Difference",
    "DifferenceKind",
    "InstalledEnvironment",
    "VerifyMismatchError",
    "VerifyReport",
    "choose_target",
    "decode_record_hash",
    "encode_record_hash",
    "find_environment",
    "hash_file",
    "verify",
]

# -- the comparison ---------------------------------------------------------------------


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _distributions(
    installed: list[_records.Installed],
    expected: dict[str, tuple[str, str]],
    skip: Collection[str],
    locked: dict[str, _wheelrecord.Locked],
    added: dict[tuple[str, str], str],
    where: str,
    unasked: Mapping[str, list[tuple[str, str]]],
) -> tuple[list[Difference], list[_records.Installed]]:
    """Differences in the set of distributions, and the ones whose files are checked.

    Every metadata folder of a name is looked at, whatever order they sort in: one at the
    locked version is checked (the one spelled as the locked wheel's, if several), the
    others are ``duplicate``; with none at that version the first is ``version``. An
    extra the lock holds at that version in groups verify was not asked for
    (``unasked``: name -> (version, group)s) says in which.
    """
    diffs: list[Difference] = []
    verified: list[_records.Installed] = []
    by_key: dict[str, list[_records.Installed]] = {}
    for inst in installed:
        if inst.key not in skip:
            by_key.setdefault(inst.key, []).append(inst)
    for key, group in by_key.items():
        want = expected.get(key)
        if want is None:  # not locked
            for inst in group:
                note = added.get((inst.key, inst.version))
                held = unasked.get(key, [])
                locked_in = sorted({g for v, g in held if _same_version(v, inst.version)})
                locked_at = None
                if held and not locked_in:
                    # The lock holds it in a group not asked for, at another version: not
                    # "not locked" either; the version that group would install is named.
                    locked_in = sorted({g for _, g in held})
                    locked_at = ", ".join(sorted({v for v, _ in held}))
                diffs.append(
                    Difference(
                        "extra", inst.name, str(inst.dist_info), locked_at, inst.version, note,
                        tuple(locked_in),
                    )
                )  # fmt: skip
            continue
        same = [inst for inst in group if _same_version(inst.version, want[1])]
        if same:
            pin = locked.get(key)
            wheel_info = "-".join(pin.filename.split("-")[:2]) + ".dist-info" if pin else ""
            spelled = f"{key.replace('-', '_')}-{want[1]}.dist-info"
            chosen = min(
                same, key=lambda i: (i.dist_info.name != wheel_info, i.dist_info.name != spelled)
            )
            verified.append(chosen)
        else:
            chosen = group[0]
            diffs.append(
                Difference("version", chosen.name, str(chosen.dist_info), want[1], chosen.version)
            )
        for other in group:
            if other is not chosen:
                diffs.append(
                    Difference(
                        "duplicate", other.name, str(other.dist_info),
                        f"{want[1]} only, in {chosen.dist_info.name}", other.version,
                        "a second metadata folder of a locked distribution: importlib.metadata "
                        "may read either",
                    )
                )  # fmt: skip
    for key, (name, version) in expected.items():
        if key not in by_key:
            diffs.append(Difference("missing", name, where, version, None))
    return diffs, verified


def _script_interpreter(
    environment: InstalledEnvironment, prefix: Path | None, layout: _wheelrecord.Layout
) -> Interpreter | None:
    """What the environment's scripts must run; None for a folder that is no prefix."""
    if environment.record_root is None:
        return None
    relocatable = False
    if environment.venv is not None:
        with contextlib.suppress(OSError):
            cfg = read_venv_config(environment.venv / "pyvenv.cfg")
            relocatable = cfg.get("relocatable", "").lower() == "true"
    where = prefix if prefix is not None else Path(layout.data)  # the prefix: .data/data
    return Interpreter(str(where), environment.python, relocatable, resolve=prefix is None)


def verify(
    lock: LockFile,
    env: Path | InstalledEnvironment | None,
    *,
    target: Target | str | None = None,
    groups: Collection[str] | str | None = None,
    full: bool = False,
    ignore: Collection[str] | str = (),
    workers: int | None = None,
    bytecode: bool | BytecodeCompiler = False,
    interpreter: bool = True,
    store: Store | None = None,
    prefix: Path | None = None,
) -> VerifyReport:
    """Compare the distributions (and their RECORD files) in ``env`` with the lock.

    ``env`` is anything :func:`find_environment` accepts (``None``: ``$VIRTUAL_ENV``);
    ``target`` (a lock target or its name) defaults to :func:`choose_target` for the
    environment's Python; ``groups`` as in :meth:`LockFile.select` (``None``: every group
    the lock has). A bare string for ``groups`` or ``ignore`` is one name. ``bytecode``
    also compares each cached ``.pyc`` with its source (:mod:`envship._pycheck`), with
    the environment's interpreter (``True``) or the given one. ``interpreter``: run a
    venv's ``bin/python`` (:func:`envship._environment.run_interpreter`) and refuse one
    that is missing or is not the target's Python; False for an environment that is not
    meant to run on this machine (one read out of an image). ``store``: where the locked
    wheels are, to check each installed RECORD against its wheel's (None: the installed
    RECORDs alone, which the report's notes say). ``prefix``: where the environment runs,
    which its scripts' interpreter lines must name (default: where it is; an image's
    environment runs at its prefix inside the image). Never prints.
    """
    target = target_of(lock, target)
    # A str is a Collection[str] of its characters: "six" would ignore "s", "i", "x".
    groups = (groups,) if isinstance(groups, str) else groups
    ignore = (ignore,) if isinstance(ignore, str) else ignore
    try:
        environment = env if isinstance(env, InstalledEnvironment) else find_environment(env)
        if interpreter:
            environment = run_interpreter(environment)
    except SpecError as exc:
        # Killed before its venv was made: no environment to compare, but a half-made one.
        raise half_made(exc, env, lock) from None
    if target is None:
        target = choose_target(lock, environment.python)
    runs = environment.runs
    if runs is not None and (reasons := interpreter_mismatches(runs, target)):
        # The same exit code (2) as a lock no target fits: nothing was compared. Only a
        # target this interpreter can run is worth naming; with none, the lock lacks one.
        fit = [t.name for t in lock.targets if not interpreter_mismatches(runs, t)]
        raise TargetError(
            f"{runs.path} cannot run the lock target {target.name}",
            problems=[Problem(str(runs.path), r) for r in reasons],
            hint=f"name the target the environment was made for with --target: {', '.join(fit)}"
            if fit
            else relock_hint(lock, runs.implementation, runs.python, runs.platform),
        )
    # A lock install would refuse (an artifact without a usable sha256) is refused here
    # too, naming each entry: without it no wheel can vouch for what is installed.
    lock.artifacts([target.name], groups=groups)
    skip = {canonicalize_name(n) for n in ignore}
    expected: dict[str, tuple[str, str]] = {}
    locked: dict[str, _wheelrecord.Locked] = {}
    for p, artifact in lock.select(target, groups=groups):
        key = canonicalize_name(str(p.name))
        if key not in skip:
            expected[key] = (str(p.name), str(p.version))
            if (pin := _wheelrecord.locked_of(artifact)) is not None:
                locked[key] = pin
    installed = _records.installed(environment.site_packages)
    diffs, verified = _distributions(
        installed,
        expected,
        skip,
        locked,
        added_notes(environment),
        str(environment.site_packages[0]),
        unasked(lock, target, groups, {*expected, *skip}),
    )
    layout = _wheelrecord.layout_of(environment.site_packages, environment.python)
    trusted = _wheelrecord.trust(
        verified, locked, store, layout, full=full, workers=workers, lock=lock.path
    )
    entries = list(trusted.entries)
    # A RECORD gone, emptied, unreadable or cut short: one difference, on the RECORD.
    records = _records.record_differences(verified, entries)
    diffs.extend(records)
    marker = environment.marker() or {}
    links = marker.get("link_mode") == "symlink"  # uv links each file into its cache
    checked = _records.check_all(entries, full, workers, links=links)
    named = {d.path for d in checked.differences} | {d.path for d in records}
    # One difference per file: what the file is beats what its RECORD line says.
    diffs.extend(d for d in trusted.differences if d.path not in named)
    diffs.extend(checked.differences)
    # Every script an installer wrote must run this environment's interpreter (a moved
    # or copied venv's still name the old place); in full mode their bodies too.
    heads = {(s.name, s.path) for s in trusted.scripts}
    heads.update(_wheelrecord.launchers_of(verified, layout))
    runs_here = _script_interpreter(environment, prefix, layout)
    if runs_here is not None:
        wrong = check_heads(sorted(h for h in heads if h[1] not in named), runs_here)
        diffs.extend(wrong)
        named.update(d.path for d in wrong)
    if full:
        diffs.extend(_wheelrecord.check_scripts(s for s in trusted.scripts if s.path not in named))
    linked = _records.linked_folders(entries, environment.record_root or Path(layout.purelib))
    diffs.extend(linked)
    named.update(d.path for d in linked)  # not an added file as well
    # The files of a .dist-info folder whose RECORD lost lines are named by that RECORD's
    # difference, not each as an added file.
    short = tuple(os.path.dirname(d.path) + os.sep for d in records if d.kind == "changed")
    diffs.extend(
        d
        for d in _records.added_files(verified, installed, entries)
        if d.path not in named and not d.path.startswith(short)
    )
    own_notes = list(trusted.notes)
    if links:
        own_notes.append(
            "installed with --link-mode symlink: files are links into uv's cache, checked "
            "where they point; whoever can write that cache can change them"
        )
    if checked.group_writable:
        n = len(checked.group_writable)
        own_notes.append(
            f"{n} file{'s are' if n > 1 else ' is'} group-writable (e.g. "
            f"{checked.group_writable[0]}): whoever is in the group can change "
            f"{'them' if n > 1 else 'it'}"
        )
    claimed = [str(inst.dist_info) for inst in installed]
    claimed += [e.path for inst in installed for e in inst.record or ()]
    claimed += [e.path for e in entries]  # the locked wheel's files, listed or not
    found, notes = site_differences(environment, claimed, lock.path.absolute())
    diffs.extend(found)
    notes = [*own_notes, *notes]
    if (note := _venv_around(environment, marker)) is not None:
        notes.append(note)
    checked_bytecode = None
    if bytecode is not False:
        # Imported here: only a byte-code check needs them.
        from ._bytecode import BytecodeCompiler
        from ._pycheck import Source, check_bytecode

        compiler = bytecode if isinstance(bytecode, BytecodeCompiler) else _own(environment)
        sources = [Source(e.name, e.path) for e in entries if e.rel.endswith(".py")]
        bad, checked_bytecode = check_bytecode(sources, compiler, workers=workers or 2)
        # One difference per path: a cached file (or its folder) already named as an
        # added link or special file is not named again.
        told = {d.path for d in diffs}
        diffs.extend(
            Difference("changed", b.name, b.pyc, f"the code of {b.source}", b.reason)
            for b in bad
            if b.pyc not in told and os.path.dirname(b.pyc) not in told
        )
    # Modes no installer gives (setuid, setgid; folders anyone may write into), in what
    # no difference names yet: RECORD's files were lstat-ed above, the rest is walked.
    roots = [environment.venv] if environment.venv is not None else environment.site_packages
    diffs.extend(
        mode_differences(
            roots,
            environment.site_packages,
            {e.path for e in entries},
            {d.path for d in diffs if d.kind != "missing"},  # whose path is site-packages
            [*entries, *(e for inst in installed for e in inst.record or ())],
            full=full or bytecode is not False,  # the byte-code compared is read anyway
            nobody=VENV_CREATION,
        )
    )
    remedy = None
    if (half := incomplete(environment.record_root)) is not None:
        diffs.append(half)
        remedy = finish(environment.record_root, lock, target)
    diffs = [_normalized(d) for d in diffs]
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
        remedy=remedy,
        asked_groups=asked_groups(lock, groups),
        asked_store=asked_store(store),
        groups=lock.chosen_groups(groups),
        lock_groups=tuple(sorted(lock.groups)),
    )


# Differences whose ``name`` is a distribution's (or, for an added file, several joined by
# ", "), but for the files the venv's creation wrote.
_OF_DISTRIBUTIONS = frozenset(
    {"missing", "extra", "version", "duplicate", "changed", "removed", "added"}
)


def _normalized(d: Difference) -> Difference:
    """``d`` with its distribution named by its normalized name (PEP 503), however the lock
    or the metadata folder spells it: ``typing-extensions``, never ``typing_extensions``."""
    if d.kind not in _OF_DISTRIBUTIONS or d.name == VENV_CREATION:
        return d
    name = ", ".join(canonicalize_name(n) for n in d.name.split(", "))
    return d if name == d.name else replace(d, name=name)


def _venv_around(environment: InstalledEnvironment, marker: Mapping[str, Any]) -> str | None:
    """What was not checked of the venv around a site-packages folder named alone: never
    its interpreter (not run) nor what else is in it; the files its creation wrote only
    when envship's record of them is there (:mod:`envship._strays` holds them to it)."""
    venv = environment.record_root
    if (
        environment.venv is not None
        or environment.interpreter is not None
        or venv is None
        or not (venv / "pyvenv.cfg").is_file()
    ):
        return None
    if isinstance(marker.get(FILES_KEY), Mapping):
        return (
            f"named by its site-packages folder: of the venv {venv} around it, only the "
            "files its creation wrote (pyvenv.cfg, bin/python, ...) were checked, against "
            "envship's record of them; its interpreter was not run and its other files (in "
            "bin/ and elsewhere) were not looked at; name the venv to check them"
        )
    return (
        f"named by its site-packages folder: the venv {venv} around it (its interpreter, "
        "pyvenv.cfg and bin/) was not checked; name the venv to check them"
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

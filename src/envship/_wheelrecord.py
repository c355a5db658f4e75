"""An installed distribution against the locked wheel's own RECORD, read from the store.

An installed ``RECORD`` is written by the installer and can be rewritten by anyone who
can write the files it lists: a trojaned wheel of the same name and version, a file edited
with its RECORD line, or a hash-less line (``zzz.pth,,``) all leave a RECORD that agrees
with the disk. The lock pins each wheel's sha256 and the store holds those wheels, so the
wheel's RECORD (PEP 427: every file but RECORD itself, hashed) is the trust anchor. Only
the ``RECORD``, ``WHEEL`` and ``entry_points.txt`` members (and, in full mode, the
``#!python`` scripts) are read; the wheel file itself is trusted by its size in quick mode
and by its sha256 against the lock in full mode (:meth:`Store.check`).

Each wheel file is mapped to where installers put it (PEP 427's ``.data`` scheme keys, as
uv's ``install_data`` and pypa/installer's ``SchemeDictionaryDestination`` place them):
the archive root and ``.data/purelib|platlib`` into site-packages, ``.data/scripts`` into
``bin/``, ``.data/headers`` into ``include/site/pythonX.Y/<name>``, ``.data/data`` into the
prefix. The installed RECORD line of each must carry the wheel's hash (so a same-size edit
shows in quick mode too, with no hashing), and the file is then checked against the wheel's
hash, not the installed line. Two kinds of file are rewritten by the installer and so are
compared otherwise: ``.data/scripts`` members starting with ``#!python`` (their first line
becomes the interpreter; the rest must be the wheel's) and the console/gui launchers
generated from ``entry_points.txt`` (they must be exactly uv's, pip's or pypa/installer's
launcher for that entry point, under any shebang: envship's image builds install with
pypa/installer). The installer's own files (``INSTALLER``, ``REQUESTED``,
``direct_url.json``, uv's ``uv_cache.json``, ``RECORD``) are checked against the installed
RECORD as before. Any other installed RECORD line is ``added``: it is not the wheel's.
"""

from __future__ import annotations

import configparser
import csv
import io
import os
import re
import shlex
import stat
import zipfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib.metadata import FileHash
from pathlib import Path

from packaging.pylock import PackageWheel
from packaging.utils import canonicalize_name

from ._difference import Difference
from ._records import Entry, Installed
from ._shebang import read_head
from ._wheeltar import INSTALLER as PYPA_INSTALLER
from .store import Store

__all__ = [
    "Layout",
    "Locked",
    "ScriptCheck",
    "Trusted",
    "check_scripts",
    "launchers_of",
    "layout_of",
    "locked_of",
    "trust",
]

#: Files an installer writes into the ``.dist-info`` folder (PEP 376 / 610; uv_cache.json:
#: uv-install-wheel's write_installer_metadata). They are not in the wheel.
INSTALLER_FILES = frozenset(
    {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json"}
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SITE = re.compile(r"^python(\d+\.\d+)t?$")
_ENTRY_POINT = re.compile(r"^\s*([\w.-]+)\s*:\s*([\w.-]+)\s*(\[.*\])?\s*$")
# The launcher bodies below the shebang: uv's (uv-install-wheel get_script_launcher) and
# pip's (distlib's ScriptMaker template).
_UV_LAUNCHER = (
    "# -*- coding: utf-8 -*-\nimport sys\nfrom {module} import {name}\n"
    'if __name__ == "__main__":\n    if sys.argv[0].endswith("-script.pyw"):\n'
    "        sys.argv[0] = sys.argv[0][:-11]\n"
    '    elif sys.argv[0].endswith(".exe"):\n        sys.argv[0] = sys.argv[0][:-4]\n'
    "    sys.exit({function}())\n"
)
_PIP_LAUNCHER = (
    "# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom {module} import {name}\n"
    "if __name__ == '__main__':\n"
    "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
    "    sys.exit({function}())\n"
)
# pypa/installer's (installer.scripts._SCRIPT_TEMPLATE, the same from 0.7 to 1.1), which
# envship's image builds write (_wheeltar): pip's, with double quotes.
_INSTALLER_LAUNCHER = (
    "# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom {module} import {name}\n"
    'if __name__ == "__main__":\n'
    '    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])\n'
    "    sys.exit({function}())\n"
)
NO_STORE = (
    "checked against the installed RECORD only (which whoever changed a file can rewrite): "
    "pass --store with the locked wheels to tie them to the locked wheels"
)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where an installer puts each part of a wheel (absolute, normalized)."""

    purelib: str
    platlib: str
    scripts: str
    data: str
    include: str  # headers go into include/<project name>
    python_minor: int | None


def layout_of(sites: tuple[Path, ...], python: str | None) -> Layout:
    """A venv's (or prefix's) scheme from its ``PREFIX/lib/pythonX.Y/site-packages``; for
    any other folder, the layout of ``uv pip install --target`` (everything inside it)."""
    site = os.path.normpath(sites[0])
    plat = os.path.normpath(sites[-1])
    parts = Path(site).parts
    minor = int(python.split(".")[1]) if python else None
    if len(parts) >= 4 and parts[-1] == "site-packages" and _SITE.match(parts[-2]):
        prefix = str(Path(site).parents[2])
        include = os.path.join(prefix, "include", "site", parts[-2])
        return Layout(site, plat, os.path.join(prefix, "bin"), prefix, include, minor)
    return Layout(site, plat, os.path.join(site, "bin"), site, os.path.join(site, "include"), minor)


@dataclass(frozen=True, slots=True)
class Locked:
    """The locked artifact of a distribution: where the store keeps it, and its pins."""

    filename: str
    sha256: str
    size: int | None
    wheel: bool


def locked_of(artifact: object) -> Locked | None:
    """The store's key (sha256) and pins of a locked artifact; None without a sha256."""
    hashes = getattr(artifact, "hashes", None) or {}
    sha = hashes.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        return None
    where = getattr(artifact, "name", None) or getattr(artifact, "url", None) or ""
    where = where or getattr(artifact, "path", None) or ""
    filename = str(where).rstrip("/").rsplit("/", 1)[-1]
    size = getattr(artifact, "size", None)
    wheel = isinstance(artifact, PackageWheel)
    return Locked(filename, sha, size if isinstance(size, int) else None, wheel)


@dataclass(frozen=True, slots=True)
class ScriptCheck:
    """A file the installer rewrote: its content is checked in full mode, not its hash."""

    name: str  # the distribution
    path: str
    bodies: tuple[bytes, ...]  # what must follow the shebang (any of them)


@dataclass(frozen=True, slots=True)
class Trusted:
    """What to check the verified distributions' files against."""

    entries: tuple[Entry, ...]  # stat-ed or hashed by _records.check_all
    scripts: tuple[ScriptCheck, ...]  # content checked in full mode
    differences: tuple[Difference, ...]  # RECORD lines the wheel does not vouch for
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _WheelFile:
    rel: str
    hash: str | None
    size: int | None
    executable: bool


@dataclass(frozen=True, slots=True)
class _Wheel:
    dist_info: str
    purelib: bool
    files: tuple[_WheelFile, ...]
    launchers: Mapping[str, tuple[str, str]]  # script name -> (module, function)
    rewritten: Mapping[str, bytes]  # .data/scripts member -> its text after line 1 (full)


def _read_wheel(path: Path, full: bool) -> _Wheel:
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        records = [n for n in infos if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise ValueError(f"{len(records)} .dist-info/RECORD members")
        dist_info = records[0].split("/")[0]
        text = zf.read(records[0]).decode("utf-8")
        files = []
        for row in csv.reader(io.StringIO(text)):
            if not row or not row[0]:
                continue
            info = infos.get(row[0])
            mode = (info.external_attr >> 16) if info is not None else 0
            size = int(row[2]) if len(row) > 2 and row[2] else None
            files.append(_WheelFile(row[0], (row[1] or None) if len(row) > 1 else None, size,
                                    bool(mode & 0o111)))  # fmt: skip
        wheel = zf.read(f"{dist_info}/WHEEL").decode("utf-8")
        purelib = any(
            line.partition(":")[2].strip().lower() == "true"
            for line in wheel.splitlines()
            if line.partition(":")[0].strip().lower() == "root-is-purelib"
        )
        launchers: dict[str, tuple[str, str]] = {}
        if f"{dist_info}/entry_points.txt" in infos:
            launchers = _entry_points(zf.read(f"{dist_info}/entry_points.txt").decode("utf-8"))
        rewritten: dict[str, bytes] = {}
        scripts = dist_info.removesuffix(".dist-info") + ".data/scripts/"
        for f in files:
            if f.rel.startswith(scripts):
                with zf.open(f.rel) as member:
                    head = member.read(8)
                    if head == b"#!python":
                        rest = member.read() if full else b""
                        rewritten[f.rel] = rest.partition(b"\n")[2]
    return _Wheel(dist_info, purelib, tuple(files), launchers, rewritten)


def _entry_points(text: str) -> dict[str, tuple[str, str]]:
    """The console and gui scripts of an ``entry_points.txt``: name -> (module, function)."""
    ini = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    ini.optionxform = str  # type: ignore[assignment,method-assign]  # case-sensitive
    ini.read_string(text)
    return {
        name: (m.group(1), m.group(2))
        for section in ("console_scripts", "gui_scripts")
        for name, value in (ini.items(section) if ini.has_section(section) else ())
        if (m := _ENTRY_POINT.match(value))
    }


def launchers_of(verified: Iterable[Installed], layout: Layout) -> list[tuple[str, str]]:
    """``(distribution, path)`` of each console/gui launcher the installed metadata names:
    the scripts an installer wrote whatever the store holds."""
    found = []
    for inst in verified:
        try:
            text = (inst.dist_info / "entry_points.txt").read_text(encoding="utf-8")
            names = _entry_points(text)
        except (OSError, UnicodeDecodeError, configparser.Error):
            continue
        found += [(inst.name, os.path.normpath(os.path.join(layout.scripts, n))) for n in names]
    return found


def _load(store: Store, locked: Locked, full: bool) -> _Wheel | str:
    """The wheel, or why it cannot vouch for anything."""
    state = store.check(locked.sha256, locked.size, full=full)
    if state == "missing":
        return "not in the store"
    if state == "damaged":
        return "damaged in the store (envship fetch --verify replaces it)"
    try:
        return _read_wheel(store.path(locked.sha256), full)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, configparser.Error) as exc:
        return f"unreadable in the store ({exc})"


def _pip_names(
    launchers: Mapping[str, tuple[str, str]], minor: int | None
) -> dict[str, tuple[str, str]]:
    # uv's and pip's special case: no pip3.N launcher from the wheel; pip3.<this minor>
    # made from pip3 (uv-install-wheel script.rs, pypa/pip#12536).
    out = {n: v for n, v in launchers.items() if not re.fullmatch(r"pip3\.\d+", n)}
    if "pip3" in out and minor is not None:
        out[f"pip3.{minor}"] = out["pip3"]
    return out


def _destination(rel: str, wheel: _Wheel, layout: Layout, headers: str) -> str | None:
    data = wheel.dist_info.removesuffix(".dist-info") + ".data/"
    if not rel.startswith(data):
        return os.path.normpath(
            os.path.join(layout.purelib if wheel.purelib else layout.platlib, rel)
        )
    key, _, rest = rel[len(data) :].partition("/")
    base = {
        "purelib": layout.purelib,
        "platlib": layout.platlib,
        "scripts": layout.scripts,
        "data": layout.data,
        "headers": headers,
    }.get(key)
    return os.path.normpath(os.path.join(base, rest)) if base is not None and rest else None


def _compare(inst: Installed, wheel: _Wheel, layout: Layout) -> Trusted:
    record = inst.record or ()
    by_path = {e.path: e for e in record}
    # Headers: uv names the folder by the normalized project name, pip as spelled.
    spellings = [canonicalize_name(inst.name), inst.name, wheel.dist_info.split("-")[0]]
    headers = os.path.join(layout.include, spellings[0])
    for spelling in spellings:
        if any(p.startswith(os.path.join(layout.include, spelling) + os.sep) for p in by_path):
            headers = os.path.join(layout.include, spelling)
            break
    launchers = _pip_names(wheel.launchers, layout.python_minor)
    skips_pycache = _installer(inst) == PYPA_INSTALLER
    entries: list[Entry] = []
    scripts: list[ScriptCheck] = []
    diffs: list[Difference] = []
    seen: set[str] = set()
    scripts_data = wheel.dist_info.removesuffix(".dist-info") + ".data/scripts/"
    for f in wheel.files:
        if f.rel.startswith(scripts_data) and f.rel[len(scripts_data) :] in launchers:
            seen.add(os.path.normpath(os.path.join(layout.purelib, f.rel)))
            continue  # installers generate these from entry_points.txt instead
        if f.rel == f"{wheel.dist_info}/RECORD":
            continue  # the installer rewrites it: checked below, as its own file
        if _in_pycache(f.rel) and (_is_bytecode(f.rel) or skips_pycache):
            # Byte-code is never held to RECORD, the wheel's no more than the installed
            # one's (numpy 2.1.0 lists a .pyc): Python or a --compile build rewrites it,
            # and --bytecode compares it with its source. pypa/installer (envship's image
            # builds) skips every member under __pycache__ (installer._core.install);
            # uv installs them, so there the other ones are expected.
            continue
        where = _destination(f.rel, wheel, layout, headers)
        if where is None:
            continue  # a .data key no installer knows: uv refuses such a wheel
        seen.add(where)
        line = by_path.get(where)
        entry = Entry(inst.name, f.rel, where, _hash(f.hash), f.size, executable=f.executable)
        if f.rel in wheel.rewritten:
            # the installer wrote the interpreter into line 1: no hash to compare
            entries.append(replace(entry, hash=None, size=None, executable=True))
            scripts.append(ScriptCheck(inst.name, where, (wheel.rewritten[f.rel],)))
            continue
        if f.rel.startswith(scripts_data):
            entry = replace(entry, executable=True)
        if line is not None and f.hash is not None and _spelled(line) != f.hash:
            diffs.append(
                Difference(
                    "changed", inst.name, where, f"{f.hash} (the locked wheel's)",
                    f"RECORD lists {_spelled(line) or 'no hash'}",
                    "the installed RECORD was rewritten for this file",
                )
            )  # fmt: skip
        entries.append(entry)
    for name, (module, function) in sorted(launchers.items()):
        where = os.path.normpath(os.path.join(layout.scripts, name))
        seen.add(where)
        entries.append(Entry(inst.name, name, where, None, None, executable=True))
        bodies = tuple(
            t.format(module=module, name=function.split(".")[0], function=function).encode()
            for t in (_UV_LAUNCHER, _PIP_LAUNCHER, _INSTALLER_LAUNCHER)
        )
        scripts.append(ScriptCheck(inst.name, where, bodies))
    info = os.path.normpath(os.path.join(str(inst.dist_info.parent), wheel.dist_info))
    for e in record:
        if e.path in seen or _is_bytecode(e.rel):
            continue
        parent, _, base = e.path.rpartition(os.sep)
        if parent == info and base in INSTALLER_FILES:
            entries.append(e)  # the installer's own: its RECORD line is all there is
            continue
        diffs.append(
            Difference(
                "added", inst.name, e.path, None,
                "listed in its RECORD, not in the locked wheel",
            )
        )  # fmt: skip
    return Trusted(tuple(entries), tuple(scripts), tuple(diffs), ())


def _hash(value: str | None) -> FileHash | None:
    return FileHash(value) if value else None


def _spelled(e: Entry) -> str | None:
    return f"{e.hash.mode}={e.hash.value}" if e.hash is not None else None


def _is_bytecode(rel: str) -> bool:
    return rel.endswith(".pyc") and _in_pycache(rel)


def _in_pycache(rel: str) -> bool:
    """Under a ``__pycache__`` folder, as pypa/installer tells the members it skips."""
    return "__pycache__" in rel.split("/")[:-1]


def _installer(inst: Installed) -> bytes | None:
    """The installed ``INSTALLER`` file (PEP 376), which names the installer."""
    try:
        return (inst.dist_info / "INSTALLER").read_bytes()
    except OSError:
        return None


def trust(
    verified: Iterable[Installed],
    locked: Mapping[str, Locked],
    store: Store | None,
    layout: Layout,
    *,
    full: bool,
    workers: int | None = None,
    lock: Path | None = None,
) -> Trusted:
    """The entries to check for each verified distribution: from its locked wheel where the
    store has it, else (with a note) from its installed RECORD, as before. ``lock``: the
    lock file verified against, which the note's ``envship fetch`` names (without it,
    fetch reads ``./pylock.toml``, which may be another lock or none)."""
    verified = list(verified)
    plain: list[Installed] = []
    jobs: list[tuple[Installed, Locked]] = []
    reasons: list[str] = []
    for inst in verified:
        art = locked.get(inst.key)
        if store is None or art is None or inst.record is None:
            plain.append(inst)
        elif not art.wheel:
            plain.append(inst)
            reasons.append(f"{inst.name} (locked as an sdist: no wheel RECORD)")
        else:
            jobs.append((inst, art))

    def load(job: tuple[Installed, Locked]) -> _Wheel | str:
        assert store is not None
        return _load(store, job[1], full)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # hashing releases the GIL
        loaded = list(pool.map(load, jobs))
    entries: list[Entry] = []
    scripts: list[ScriptCheck] = []
    diffs: list[Difference] = []
    for (inst, art), wheel in zip(jobs, loaded, strict=True):
        if isinstance(wheel, str):
            plain.append(inst)
            reasons.append(f"{inst.name} ({art.filename} {wheel})")
            continue
        found = _compare(inst, wheel, layout)
        entries.extend(found.entries)
        scripts.extend(found.scripts)
        diffs.extend(found.differences)
    for inst in plain:
        for e in inst.record or ():
            if not _is_bytecode(e.rel):
                inside = e.path.startswith(layout.scripts + os.sep)
                entries.append(replace(e, executable=True) if inside else e)
    notes: list[str] = []
    # Pasted from any folder: both paths absolute and quoted.
    named = shlex.quote(os.path.abspath(lock)) if lock is not None else "LOCK"
    into = shlex.quote(str(store.root)) if store is not None else ""
    fetch = f"`envship fetch --lock {named} --store {into}`"
    tie = "(or --store naming the store that holds them) ties them to the locked wheels"
    absent = sum(w == "not in the store" for w in loaded)
    if store is None:
        if plain:
            notes.append(NO_STORE)
    elif absent > 1 and absent == len(jobs) == len(reasons):
        # A store that holds none of them is most likely not the one they were fetched
        # into: one sentence, not one per distribution.
        notes.append(
            f"checked against the installed RECORD only: the store {store.root} holds none "
            f"of the {absent} locked wheels; {fetch} {tie}"
        )
    elif reasons:
        notes.append(
            "checked against the installed RECORD only, as no locked wheel could vouch for "
            f"them: {'; '.join(reasons)}; {fetch} {tie}"
        )
    return Trusted(tuple(entries), tuple(scripts), tuple(diffs), tuple(notes))


def check_scripts(scripts: Iterable[ScriptCheck]) -> list[Difference]:
    """Each rewritten script: a shebang, then exactly one of its expected bodies."""
    diffs = []
    for s in scripts:
        try:
            if not stat.S_ISREG(os.lstat(s.path).st_mode):
                continue  # the stat check names it
            with open(s.path, "rb") as f:
                data = f.read()
        except OSError:
            continue  # the stat check names it
        end = read_head(data).end
        if end < 0 or data[end:] not in s.bodies:
            diffs.append(
                Difference(
                    "changed", s.name, s.path, "the locked wheel's script under a shebang",
                    "other content",
                )
            )  # fmt: skip
    return diffs

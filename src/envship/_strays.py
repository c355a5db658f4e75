"""What lets code into an environment besides its installed distributions.

Python imports whatever sits at the top of a site-packages folder, and at every start it
runs the ``import`` lines of each ``.pth`` file there and adds its other lines to the
import path (``site.addpackage``), so an entry no installed distribution claims is code
no lock vouches for. Each top-level entry of each checked site-packages folder must be

* an installed distribution's metadata folder (``*.dist-info``; checked as a
  distribution: missing, extra, version, its RECORD),
* the first part of a path some installed distribution's RECORD lists (PEP 376: every
  file an installer wrote is listed; a folder is claimed by the files in it),
* a ``__pycache__`` folder (byte-code of top-level modules: RECORD leaves it out, and a
  cached ``.pyc`` only ever runs in place of its source, which ``verify --bytecode``
  checks) holding regular ``.pyc`` files only: anything else in it, and a
  ``__pycache__`` that is a link, is unowned, as in every cache of the venv,
* or a file the venv's creation wrote: the install marker's ``venv_files``
  (env-relative POSIX path -> hex sha256), every one of which is hashed in every mode
  (they are tiny, and a ``.pth`` among them runs at every start). Without that record
  (a venv envship did not make, or made before it kept one), exactly uv's and
  virtualenv's ``_virtualenv.pth`` and ``_virtualenv.py`` (written for Python < 3.10:
  astral-sh/uv#20222, pypa/virtualenv#3184) are accepted: the ``.pth`` only when it is
  the one line both write, the module unchecked, which the report's notes say.

The rest of a venv is code too: ``bin/`` is first on ``PATH`` once the venv is
activated (a ``bin/pip`` nobody installed runs instead of the real one), the shell
sources ``bin/activate``, every run starts ``bin/python``, Python reads ``pyvenv.cfg``
at every start, and Jupyter run from the venv reads ``share/jupyter`` (kernelspecs,
whose ``argv`` it runs) and ``etc/jupyter``. So every file and link in the venv outside
the checked site-packages folders must be listed in some installed distribution's
RECORD (console scripts, data files), be one the venv's creation wrote as the marker
records it (``venv_files`` hashed, ``venv_links`` by target: a ``bin/python3`` turned
into a script is a change), or be a bookkeeping file at the venv's top (envship's
marker, incomplete marker and use stamp; the ``.lock`` uv flocks while installing,
also at the top of a ``uv pip install --target`` folder);
anything else is ``unowned``. A file the creation wrote, or a bookkeeping file, that
anyone may write is ``changed``, as an installed one is, but for the use stamp, which
every user refreshes, and uv's ``.lock`` in a private venv (0666 on purpose,
astral-sh/uv#11328), which is a change only when it holds anything. A marker
without ``venv_links`` (made before envship recorded the whole venv) or none at all (a
venv envship did not make) cannot say what the creation wrote outside site-packages:
the files venv creators write are accepted by name (``bin/activate*``, ``bin/python*``,
``pyvenv.cfg``, ...) and the notes name them as unchecked, except that an interpreter
that is a ``#!`` script is never what a creator wrote. Folders are not reported (an
empty one runs nothing); links are never followed.

Everything else is an ``unowned`` difference. The check is one ``scandir`` per folder,
so quick mode runs it too. ``include-system-site-packages`` in the venv's ``pyvenv.cfg``
lets in the base interpreter's (and the user's) site-packages, so it is a ``config``
difference unless it is off.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._difference import Difference
from ._environment import InstalledEnvironment, read_venv_config
from ._envroot import USED_NAME
from ._halfmade import remake
from ._installmarker import FILES_KEY, INCOMPLETE_NAME, LINKS_KEY, MARKER_NAME
from ._records import describe
from ._verifymodes import CACHE, files_under

__all__ = ["VENV_CREATION", "site_differences"]

#: The ``name`` of differences in files the venv's creation wrote (no distribution did).
VENV_CREATION = "(venv creation)"
_VIRTUALENV_PTH = "_virtualenv.pth"
_VIRTUALENV_PY = "_virtualenv.py"
_VIRTUALENV_LINE = b"import _virtualenv"  # all that uv and virtualenv write into the .pth
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_STARTUP_MODULES = ("sitecustomize", "usercustomize")  # imported by site at every start
_PTH_NOTE = (
    "a .pth file: at every start Python runs its import lines and adds its other lines "
    "to the import path"
)
_SYSTEM_SITE = "include-system-site-packages"
_CACHE_NOTE = "in a byte-code cache, where Python writes only regular .pyc files"
# At the venv's top: envship's marker, incomplete marker and use stamp, and the file uv
# flocks while it installs into the venv (``.lock``); none is read as code or config.
_BOOKKEEPING = frozenset({MARKER_NAME, INCOMPLETE_NAME, USED_NAME, ".lock"})
# What venv creators write outside site-packages, by name: uv, the stdlib's venv and
# virtualenv (activation scripts for each shell, Windows helpers, cache and VCS markers).
_CREATED_TOP = frozenset({"pyvenv.cfg", ".gitignore", "CACHEDIR.TAG", "lib64"})
_CREATED_BIN = frozenset(
    {
        "activate", "activate.bat", "activate.csh", "activate.fish", "activate.nu",
        "activate.ps1", "Activate.ps1", "activate.xsh", "activate_this.py",
        "deactivate.bat", "deactivate.nu", "pydoc.bat",
    }
)  # fmt: skip
_INTERPRETER = re.compile(r"^python(3(\.\d+t?)?)?$")  # bin/python, python3, python3.11(t)


def _note(name: str) -> str | None:
    if name.endswith(".pth"):
        return _PTH_NOTE
    if name.partition(".")[0] in _STARTUP_MODULES:
        return "Python imports it at every start"
    return None


def _venv_note(rel: str, executable: bool = False) -> str | None:
    """Why a file outside site-packages matters, by where it is in the venv."""
    folder, _, name = rel.rpartition("/")
    if folder == "bin" and _INTERPRETER.match(name):
        return "the environment's interpreter: every run of the environment starts it"
    if folder == "bin" and name.startswith("activate"):
        return "the shell that activates the environment runs it"
    if folder == "bin":
        first = "an executable" if executable else "a file"
        return (
            f"{first} in bin/, which is first on PATH while the environment is activated: "
            f"`{name}` there runs it"
        )
    if rel == "pyvenv.cfg":
        return "Python reads it at every start of the environment"
    if rel.startswith("share/jupyter/"):
        return (
            "Jupyter run from the environment reads its data files here: a kernelspec's "
            "argv is the command it runs"
        )
    if rel.startswith("etc/jupyter/"):
        return "Jupyter run from the environment reads its configuration here"
    return None


def _found(data: bytes) -> str:
    return f"sha256={hashlib.sha256(data).hexdigest()}, size {len(data)}"


def _entries(root: Path, listed: Mapping[Any, Any]) -> dict[str, tuple[str, str]]:
    """Absolute path -> (env-relative path, value) of the marker's entries that name a
    path in ``root``."""
    out: dict[str, tuple[str, str]] = {}
    for rel, value in listed.items():
        if not isinstance(rel, str) or not isinstance(value, str):
            continue  # claims nothing: the file, if any, is then unowned
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            continue
        out[os.path.normpath(os.path.join(root, *parts))] = (rel, value)
    return out


def _is_now(path: str) -> str:
    """What is at ``path`` now, for a difference's ``actual``."""
    if os.path.islink(path):
        return f"a link to {os.readlink(path)}"
    if os.path.isdir(path):
        return "a folder"
    try:
        return f"a file, {_found(Path(path).read_bytes())}"
    except OSError as exc:
        return str(exc)


def _check_file(path: str, rel: str, digest: str) -> Difference | None:
    expected = f"sha256={digest}" if _SHA256.match(digest) else f"sha256 {digest!r}"
    note = _note(os.path.basename(path)) or _venv_note(rel)
    if os.path.islink(path):  # a link where the file was: not what the creation wrote
        return Difference("changed", VENV_CREATION, path, expected, _is_now(path), note)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return Difference("removed", VENV_CREATION, path, expected)
    except OSError as exc:  # a folder where the file was, unreadable
        return Difference("changed", VENV_CREATION, path, expected, str(exc), note)
    if hashlib.sha256(data).hexdigest() != digest:
        return Difference("changed", VENV_CREATION, path, expected, _found(data), note)
    return _world_writable(path)


def _world_writable(path: str) -> Difference | None:
    """A file of the venv's own that anyone may rewrite, as ``_records`` reports an
    installed file: what it holds now proves nothing about what it will hold."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if not mode & stat.S_IWOTH:
        return None
    return Difference(
        "changed", VENV_CREATION, path, "not writable by others",
        f"mode {stat.filemode(mode)}", "anyone on this machine can change it",
    )  # fmt: skip


def _check_link(path: str, rel: str, target: str) -> Difference | None:
    expected = f"a link to {target}"
    if not os.path.lexists(path):
        return Difference("removed", VENV_CREATION, path, expected)
    if os.path.islink(path) and os.readlink(path) == target:
        return None
    return Difference("changed", VENV_CREATION, path, expected, _is_now(path), _venv_note(rel))


def _damaged_marker(environment: InstalledEnvironment, lock: Path | None) -> Difference | None:
    """The install marker, when it is there but cannot be used: ``changed``, never a
    pass. Without it nothing says what the venv's creation wrote (those files are then
    accepted by name), and ``envship install`` takes the environment for a half-made one
    and makes it again."""
    damage = environment.marker_damage()
    root = environment.record_root
    if damage is None or root is None:
        return None
    again = f"`envship {remake(root, {})} --lock {shlex.quote(str(lock)) if lock else 'LOCK'}`"
    return Difference(
        "changed",
        VENV_CREATION,
        str(damage.path),
        "envship's install record (JSON, as envship install writes it)",
        f"{damage.key}: {damage.reason}" if damage.key else damage.reason,
        "the record of how the environment was made and what its creation wrote: without "
        f"it those files cannot be checked; {again} makes the environment again",
    )


def _venv_files(
    environment: InstalledEnvironment, sites: list[str]
) -> tuple[set[str], bool, list[Difference], list[str]]:
    """The files the venv's creation wrote: (accepted paths, whether the record covers
    the whole venv, differences, notes)."""
    root = environment.record_root
    marker = environment.marker()
    listed = marker.get(FILES_KEY) if marker is not None else None
    links = marker.get(LINKS_KEY) if marker is not None else None
    diffs: list[Difference] = []
    if root is not None and isinstance(listed, Mapping):
        files = _entries(root, listed)
        linked = _entries(root, links) if isinstance(links, Mapping) else {}
        for path, (rel, digest) in sorted(files.items()):
            if (diff := _check_file(path, rel, digest.lower())) is not None:
                diffs.append(diff)
        for path, (rel, target) in sorted(linked.items()):
            if (diff := _check_link(path, rel, target)) is not None:
                diffs.append(diff)
        return set(files) | set(linked), isinstance(links, Mapping), diffs, []
    accepted: set[str] = set()
    notes: list[str] = []
    for site in sites:
        pth = os.path.join(site, _VIRTUALENV_PTH)
        module = os.path.join(site, _VIRTUALENV_PY)
        if os.path.isfile(pth) and not os.path.islink(pth):
            accepted.add(pth)
            expected = f"the one line {_VIRTUALENV_LINE.decode()!r} uv and virtualenv write"
            try:
                data = Path(pth).read_bytes()
            except OSError as exc:  # unreadable to us, maybe not to Python
                diffs.append(
                    Difference("changed", VENV_CREATION, pth, expected, str(exc), _PTH_NOTE)
                )
            else:
                if data.strip() != _VIRTUALENV_LINE:
                    found = _found(data)
                    diffs.append(
                        Difference("changed", VENV_CREATION, pth, expected, found, _PTH_NOTE)
                    )
        if os.path.isfile(module) and not os.path.islink(module):
            accepted.add(module)
            notes.append(
                f"{module} (imported at every start by {_VIRTUALENV_PTH}) was written by the "
                "venv's creator (uv or virtualenv, for Python < 3.10); with no envship record "
                "of the venv's own files, its content could not be checked"
            )
    return accepted, False, diffs, notes


def _site_cache(site: str, cache: os.DirEntry[str], claimed: set[str]) -> Iterator[Difference]:
    """What is in a site-packages folder's own ``__pycache__`` (the byte-code of its
    top-level modules) besides regular ``.pyc`` files: each file, link or special file
    (in a folder inside it too) is unowned."""
    for entry in files_under(cache.path):
        if entry.path in claimed:
            continue
        rel = os.path.relpath(entry.path, site).replace(os.sep, "/")
        yield Difference("unowned", rel, entry.path, None, describe(entry), _CACHE_NOTE)


def _by_name(rel: str) -> bool:
    folder, _, name = rel.rpartition("/")
    if not folder:
        return name in _CREATED_TOP
    return folder == "bin" and (name in _CREATED_BIN or bool(_INTERPRETER.match(name)))


def _is_script(entry: os.DirEntry[str]) -> bool:
    """A regular file that starts as a ``#!`` script (the kernel runs its interpreter)."""
    if entry.is_symlink():
        return False
    try:
        with open(entry.path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _bookkeeping(path: str, rel: str, shared: bool) -> Difference | None:
    """A bookkeeping file anyone may write, or a ``.lock`` holding anything.

    The use stamp is meant to be writable: every user who runs a version refreshes it
    (``_envroot.touch_used``), and only its mtime is read. uv makes its ``.lock`` 0666 on
    purpose (astral-sh/uv#11328) and never writes into it, so in a private venv only
    content is a change; ``env create`` removes it from shared versions, where a world-
    writable one is a file anyone may add to an immutable version."""
    if rel == USED_NAME:
        return None
    if rel == ".lock":
        try:
            size = os.lstat(path).st_size
        except OSError:
            return None
        if size:
            return Difference(
                "changed", VENV_CREATION, path, "empty (uv's lock file)", f"size {size}",
                "uv never writes into it: anyone may have",
            )  # fmt: skip
        if not shared:
            return None
    return _world_writable(path)


def _shared(venv: Path) -> bool:
    """Whether ``venv`` is a version under an environment root (its ``.locks`` beside
    ``versions``, as ``_envroot.shared_version`` tells them)."""
    real = Path(os.path.realpath(venv))
    return real.parent.name == "versions" and (real.parent.parent / ".locks").is_dir()


def _outside(
    venv: Path, sites: list[str], claimed: set[str], accepted: set[str], whole: bool
) -> tuple[list[Difference], list[str]]:
    """Files and links in the venv outside its site-packages that nobody accounts for."""
    root = os.path.normpath(venv)
    shared = _shared(venv)
    diffs: list[Difference] = []
    unchecked: list[str] = []
    for entry in files_under(root, set(sites) | accepted):  # a folder at the marker's place
        path = entry.path
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if path in claimed or path in accepted:
            continue
        if rel in _BOOKKEEPING and entry.is_file(follow_symlinks=False):
            if (diff := _bookkeeping(path, rel, shared)) is not None:
                diffs.append(diff)
            continue
        if not whole and _by_name(rel):
            if rel.startswith("bin/python") and _is_script(entry):
                expected = "the interpreter: a link to it, or its binary"
                actual = "a #! script, " + _is_now(path).removeprefix("a file, ")
                diffs.append(
                    Difference("changed", VENV_CREATION, path, expected, actual, _venv_note(rel))
                )
            else:
                unchecked.append(rel)
            continue
        executable = entry.is_file(follow_symlinks=False) and os.access(path, os.X_OK)
        note = _venv_note(rel, executable)
        if os.path.basename(os.path.dirname(path)) == CACHE:
            note = _CACHE_NOTE
        diffs.append(Difference("unowned", rel, path, None, describe(entry), note))
    notes = []
    if unchecked:
        notes.append(
            f"{root}: {', '.join(sorted(unchecked))} (what venv creators write) accepted by "
            "name: with no envship record of the venv's own files (a venv envship did not "
            "make, or made before it recorded them), their content could not be checked"
        )
    return diffs, notes


def _system_site(environment: InstalledEnvironment) -> Difference | None:
    runs = environment.runs
    cfg = runs.config if runs is not None else None
    if cfg is None and environment.venv is not None:
        cfg = environment.venv / "pyvenv.cfg"
    if cfg is None:
        return None
    try:
        value = read_venv_config(cfg).get(_SYSTEM_SITE)
    except OSError:
        return None
    # site.venv(): the base's site-packages are added unless the value is not "true",
    # and a pyvenv.cfg that does not say at all means "true".
    if value is not None and value.lower() != "true":
        return None
    return Difference(
        "config",
        _SYSTEM_SITE,
        str(cfg),
        expected="false",
        actual=value if value is not None else "(not set: Python's default is true)",
        note="the environment also imports the base interpreter's site-packages, and the "
        "user's, none of which the lock covers",
    )


def site_differences(
    environment: InstalledEnvironment,
    claimed: Iterable[str],
    lock: Path | None = None,
) -> tuple[list[Difference], list[str]]:
    """Differences from code the installed distributions did not bring, and notes.

    ``claimed``: absolute, normalized paths that installed distributions account for
    (their ``.dist-info`` folders and every RECORD-listed path); an entry of a
    site-packages folder is theirs when one of them is, or lies under, that entry, and
    a file or link elsewhere in the venv when it is one of them. An install marker that
    is there but damaged is a difference itself (``lock``: named in its remedy).
    """
    sites = [os.path.normpath(s) for s in environment.site_packages]
    paths = list(claimed)
    known = set(paths)
    tops: set[str] = set()
    for site in sites:  # a set comprehension: ~15k RECORD lines in a data-science env
        prefix = site + os.sep
        n = len(prefix)
        tops |= {
            p if (j := p.find(os.sep, n)) == -1 else p[:j] for p in paths if p.startswith(prefix)
        }
    accepted, whole, diffs, notes = _venv_files(environment, sites)
    if (damaged := _damaged_marker(environment, lock)) is not None:
        diffs.append(damaged)
        accepted.add(os.path.normpath(damaged.path))  # one difference for it, not two
    system = _system_site(environment)
    if system is not None:
        diffs.append(system)
    for site in dict.fromkeys(sites):  # one folder named twice is listed once
        try:
            with os.scandir(site) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # gone or unreadable: its distributions are reported missing
        for entry in entries:
            if entry.name == CACHE and entry.is_dir(follow_symlinks=False):
                # RECORD leaves the byte-code of top-level modules out (pip lists it
                # without a hash): a regular .pyc there only runs in place of its source.
                diffs.extend(_site_cache(site, entry, known))
                continue
            if entry.path in tops or entry.path in accepted:
                continue
            if (
                entry.name == ".lock"
                and environment.venv is None
                and entry.is_file(follow_symlinks=False)
            ):
                # `uv pip install --target DIR` flocks DIR/.lock as it does a venv's top.
                if (diff := _bookkeeping(entry.path, ".lock", shared=False)) is not None:
                    diffs.append(diff)
                continue
            diffs.append(
                Difference(
                    "unowned", entry.name, entry.path, None, describe(entry), _note(entry.name)
                )
            )
    if environment.venv is not None:  # a bare site-packages folder: verify's note says so
        found, more = _outside(environment.venv, sites, known, accepted, whole)
        diffs += found
        notes += more
    return diffs, notes

"""What lets code into an environment besides its installed distributions.

Python imports whatever sits at the top of a site-packages folder, and at every start it
runs the ``import`` lines of each ``.pth`` file there and adds its other lines to the
import path (``site.addpackage``), so an entry no installed distribution claims is code
no lock vouches for. Each top-level entry of each checked site-packages folder must be

* an installed distribution's metadata folder (``*.dist-info``; checked as a
  distribution: missing, extra, version, its RECORD),
* the first part of a path some installed distribution's RECORD lists (PEP 376: every
  file an installer wrote is listed; a folder is claimed by the files in it),
* a ``__pycache__`` (byte-code of top-level modules: RECORD leaves it out, and a cached
  ``.pyc`` only ever runs in place of its source, which ``verify --bytecode`` checks),
* or a file the venv's creation wrote: the install marker's ``venv_files``
  (env-relative POSIX path -> hex sha256), every one of which is hashed in every mode
  (they are tiny, and a ``.pth`` among them runs at every start). Without that record
  (a venv envship did not make, or made before it kept one), exactly uv's and
  virtualenv's ``_virtualenv.pth`` and ``_virtualenv.py`` (written for Python < 3.10:
  astral-sh/uv#20222, pypa/virtualenv#3184) are accepted: the ``.pth`` only when it is
  the one line both write, the module unchecked, which the report's notes say.

Everything else is an ``unowned`` difference. The check is one ``scandir`` per folder,
so quick mode runs it too. ``include-system-site-packages`` in the venv's ``pyvenv.cfg``
lets in the base interpreter's (and the user's) site-packages, so it is a ``config``
difference unless it is off.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._difference import Difference
from ._environment import InstalledEnvironment, read_venv_config

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


def _note(name: str) -> str | None:
    if name.endswith(".pth"):
        return _PTH_NOTE
    if name.partition(".")[0] in _STARTUP_MODULES:
        return "Python imports it at every start"
    return None


def _found(data: bytes) -> str:
    return f"sha256={hashlib.sha256(data).hexdigest()}, size {len(data)}"


def _recorded_venv_files(root: Path, listed: Mapping[Any, Any]) -> dict[str, str]:
    """Absolute path -> hex sha256 of the marker's entries that name a file in ``root``."""
    out: dict[str, str] = {}
    for rel, digest in listed.items():
        if not isinstance(rel, str) or not isinstance(digest, str):
            continue  # claims nothing: the file, if any, is then unowned
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            continue
        out[os.path.normpath(os.path.join(root, *parts))] = digest.lower()
    return out


def _venv_files(
    environment: InstalledEnvironment, sites: list[str]
) -> tuple[set[str], list[Difference], list[str]]:
    """The files the venv's creation wrote: (accepted paths, differences, notes)."""
    root = environment.record_root
    marker = environment.marker()
    listed = marker.get("venv_files") if marker is not None else None
    diffs: list[Difference] = []
    if root is not None and isinstance(listed, Mapping):
        recorded = _recorded_venv_files(root, listed)
        for path, digest in sorted(recorded.items()):
            expected = f"sha256={digest}" if _SHA256.match(digest) else f"sha256 {digest!r}"
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                diffs.append(Difference("removed", VENV_CREATION, path, expected))
                continue
            except OSError as exc:  # a folder where the file was, unreadable
                diffs.append(Difference("changed", VENV_CREATION, path, expected, str(exc)))
                continue
            if hashlib.sha256(data).hexdigest() != digest:
                note = _note(os.path.basename(path))
                diffs.append(
                    Difference("changed", VENV_CREATION, path, expected, _found(data), note)
                )
        return set(recorded), diffs, []
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
    return accepted, diffs, notes


def _what(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return f"a link to {os.readlink(entry.path)}"
    return "a folder" if entry.is_dir() else "a file"


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
) -> tuple[list[Difference], list[str]]:
    """Differences from code the installed distributions did not bring, and notes.

    ``claimed``: absolute, normalized paths that installed distributions account for
    (their ``.dist-info`` folders and every RECORD-listed path); an entry of a
    site-packages folder is theirs when one of them is, or lies under, that entry.
    """
    sites = [os.path.normpath(s) for s in environment.site_packages]
    paths = list(claimed)
    tops: set[str] = set()
    for site in sites:  # a set comprehension: ~15k RECORD lines in a data-science env
        prefix = site + os.sep
        n = len(prefix)
        tops |= {
            p if (j := p.find(os.sep, n)) == -1 else p[:j] for p in paths if p.startswith(prefix)
        }
    accepted, diffs, notes = _venv_files(environment, sites)
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
            if entry.name == "__pycache__" or entry.path in tops or entry.path in accepted:
                continue
            diffs.append(
                Difference("unowned", entry.name, entry.path, None, _what(entry), _note(entry.name))
            )
    return diffs, notes

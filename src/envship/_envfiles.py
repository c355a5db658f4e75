"""The names an environment's install marker is kept under, and what a new environment's
files are, read with the standard library alone.

Shared by ``envship install`` (:mod:`envship.install`) and its quick path
(:mod:`envship._quickinstall`), which must not import more than ``os`` before uv runs:
every module here imports others only inside the functions that need them, so the quick
path pays for ``hashlib`` and ``json`` while uv installs, not before. What each record
means is told in :mod:`envship._installmarker`.
"""

from __future__ import annotations

import os

# Not ``typing.TYPE_CHECKING``: importing typing costs the quick path of ``envship
# install`` ~7 ms before uv starts; type checkers take the name alone (mypy, pyright).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "FILES_KEY",
    "INCOMPLETE_NAME",
    "LINKS_KEY",
    "LINK_MODES",
    "MARKER_FORMAT",
    "MARKER_NAME",
    "RECORDS_KEY",
    "REINSTALLING",
    "STORE_KEY",
    "WORK_SUFFIX",
    "canonical_name",
    "dist_infos",
    "record_digest",
    "record_digests",
    "site_packages",
    "venv_digests",
    "venv_snapshot",
    "write_marker_file",
]

MARKER_NAME = ".envship-install.json"
INCOMPLETE_NAME = ".envship-incomplete"
MARKER_FORMAT = 1
# The marker's keys (module docstring of _installmarker): env-relative POSIX path -> hex
# sha256 of a file the venv's creation wrote; -> target of a link it made; canonical name
# -> hex sha256 of the installed dist-info/RECORD; the absolute path of the store the
# wheels came from.
FILES_KEY = "venv_files"
LINKS_KEY = "venv_links"
RECORDS_KEY = "records"
STORE_KEY = "store"
# In the marker of an environment being made again, while it is: made through a private
# uv cache (a reinstall), so a run after an interrupted one finishes it that way too.
REINSTALLING = "reinstalling"
# uv's ``--link-mode`` values, as install takes and the marker records them.
LINK_MODES = ("hardlink", "copy", "clone", "symlink")
# ``DEST.envship-tmp``: the work folder beside an environment (its lock, a private uv
# cache, requirements, a failed new environment set aside).
WORK_SUFFIX = ".envship-tmp"

# Metadata folders: ``name-version.dist-info`` (wheels) and ``name-version[-pyX.Y]
# .egg-info`` (anything installed the old way, e.g. ``setup.py install``).
_METADATA = (".dist-info", ".egg-info")


def canonical_name(name: str) -> str:
    """PEP 503's normalized name, as ``packaging.utils.canonicalize_name`` spells it
    (tested to agree): here so that reading metadata folder names does not import
    packaging, whose import alone costs the quick path more than uv's venv step. ``re``
    too is imported on first use (``re.sub`` keeps the compiled pattern)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages(dest: str | os.PathLike[str], python: str | None = None) -> str | None:
    """``dest/lib/pythonX.Y/site-packages`` of a POSIX venv: the one of ``python``
    ("3.11") when given, else the only one there is."""
    lib = os.path.join(dest, "lib")
    if python is not None:
        found = os.path.join(lib, f"python{python}", "site-packages")
        return found if os.path.isdir(found) else None
    try:
        names = sorted(n for n in os.listdir(lib) if n.startswith("python"))
    except OSError:
        return None
    candidates = [os.path.join(lib, n, "site-packages") for n in names]
    candidates = [c for c in candidates if os.path.isdir(c)]
    return candidates[0] if len(candidates) == 1 else None


def venv_snapshot(dest: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """What a freshly made venv holds: ``(files, links)``, env-relative POSIX paths -> the
    file's bytes and -> the link's target. A link is recorded, never followed
    (``bin/python`` names the base interpreter); ``__pycache__`` and the marker files are
    left out. The venv's own files are a few small scripts: read whole, hashed later by
    :func:`venv_digests` (the quick path does it while uv installs)."""
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    start = len(dest.rstrip("/")) + 1
    folders = [dest]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                rel = entry.path[start:]
                if entry.is_symlink():
                    links[rel] = os.readlink(entry.path)
                elif entry.is_dir():
                    if entry.name != "__pycache__":
                        folders.append(entry.path)
                elif entry.is_file() and rel not in (INCOMPLETE_NAME, MARKER_NAME):
                    with open(entry.path, "rb") as f:
                        files[rel] = f.read()
    return files, links


def venv_digests(
    snapshot: tuple[dict[str, bytes], dict[str, str]],
) -> tuple[dict[str, str], dict[str, str]]:
    """:func:`venv_snapshot`'s files as hex sha256 (the marker's ``venv_files``), links as
    they were (``venv_links``)."""
    import hashlib

    files, links = snapshot
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}, dict(links)


def dist_infos(site: str | os.PathLike[str]) -> dict[str, list[tuple[str, str]]]:
    """Installed distributions by canonical name -> (version, metadata folder), from the
    metadata folder names."""
    found: dict[str, list[tuple[str, str]]] = {}
    with os.scandir(site) as entries:
        for entry in entries:
            suffix = next((s for s in _METADATA if entry.name.endswith(s)), None)
            if suffix is None:
                continue
            parts = entry.name[: -len(suffix)].split("-")
            if len(parts) < 2:
                continue
            found.setdefault(canonical_name(parts[0]), []).append((parts[1], entry.path))
    return found


def record_digest(info: str | os.PathLike[str]) -> str:
    """The hex sha256 of ``info/RECORD``; empty when there is none or it is unreadable
    (an empty digest matches no recorded one)."""
    import hashlib

    try:
        with open(os.path.join(info, "RECORD"), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def record_digests(dest: str | os.PathLike[str], python: str | None = None) -> dict[str, str]:
    """Canonical name -> sha256 of its ``RECORD``, for each distribution installed in
    ``dest``'s site-packages (of ``python``). An installer writes RECORD last, listing
    every file with its hash (PEP 376/427), so a re-install of the same name and version
    from another wheel, or by another tool, writes another RECORD."""
    site = site_packages(dest, python)
    found = dist_infos(site) if site is not None else {}
    return {
        name: record_digest(info) for name, infos in sorted(found.items()) for _v, info in infos[:1]
    }


def write_marker_file(path: str, data: dict[str, Any]) -> None:
    """Write a marker's JSON at ``path`` (where nothing but an old marker, a regular file,
    may be: :func:`envship._installmarker.write_marker` clears anything else first) in
    one rename, 0644 whatever the old one's mode was (``write_atomic`` would keep it: a
    setuid or world-writable marker would outlive every remake verify asks for)."""
    import json
    from pathlib import Path

    from ._atomic import write_atomic

    write_atomic(Path(path), json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o644)

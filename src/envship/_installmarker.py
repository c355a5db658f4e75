"""The record an environment keeps of how envship made it, and the quick look at its state.

``.envship-install.json`` (the marker) says which lock, target, groups and interpreter
an environment was made from, and what the venv's creation itself put into
site-packages (uv's ``_virtualenv.py``/``.pth``) with their hashes, so ``verify`` can
tell them from stray files. ``.envship-incomplete`` says it is being made. The quick
look (:func:`drift`) compares the installed distributions' metadata folders with the
marker, as ``envship verify`` does without ``--full``: a listing, no hashing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._atomic import write_atomic

if TYPE_CHECKING:
    from .lockfile import Artifact, LockFile
    from .targets import Target

__all__ = [
    "INCOMPLETE_NAME",
    "MARKER_NAME",
    "artifact_entry",
    "drift",
    "marker_data",
    "read_marker",
    "site_packages",
    "venv_files",
    "write_marker",
]

MARKER_NAME = ".envship-install.json"
INCOMPLETE_NAME = ".envship-incomplete"
MARKER_FORMAT = 1


def artifact_entry(a: Artifact) -> dict[str, str]:
    return {"name": a.name, "version": a.version, "filename": a.filename, "sha256": a.sha256}


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The marker at ``dest``, or None when it is missing, unreadable or another format."""
    try:
        data = json.loads((dest / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        return None
    return data


def marker_data(
    lock: LockFile,
    target: Target,
    groups: tuple[str, ...],
    base_python: str,
    python_full: str,
    artifacts: Sequence[Artifact],
    compiled: bool = False,
    venv: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What an environment made from ``lock`` records about itself (the install marker);
    image builds write the same record into the image. ``compiled``: every installed
    module's byte-code was written at install time. ``venv``: the files the venv's
    creation wrote into site-packages (env-relative POSIX path -> hex sha256); None when
    unknown (an environment made before envship recorded them)."""
    data: dict[str, Any] = {
        "format": MARKER_FORMAT,
        "lock": {"path": str(lock.path.absolute()), "digest": lock.digest},
        "name": lock.name,
        "display_name": lock.display_name,
        "target": target.to_json(),
        "groups": list(groups),
        "python": {"base": base_python, "version": python_full},
        "packages": [artifact_entry(a) for a in artifacts],
        "compiled": compiled,
    }
    if venv is not None:
        data["venv_files"] = dict(sorted(venv.items()))
    return data


def write_marker(dest: Path, data: dict[str, Any]) -> None:
    """Replace the install marker of the environment at ``dest`` in one rename."""
    write_atomic(dest / MARKER_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")


def site_packages(dest: Path) -> Path | None:
    """``dest/lib/pythonX.Y/site-packages`` of a POSIX venv, when there is exactly one."""
    found = sorted((dest / "lib").glob("python*/site-packages"))
    return found[0] if len(found) == 1 else None


def venv_files(dest: Path) -> dict[str, str]:
    """Every file in a freshly made venv's site-packages, with its sha256: what the venv's
    creation put there (uv writes ``_virtualenv.py`` and a ``.pth`` that imports it)."""
    site = site_packages(dest)
    if site is None:
        return {}
    out: dict[str, str] = {}
    for path in sorted(site.rglob("*")):
        if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts:
            out[path.relative_to(dest).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _dist_info(site: Path) -> dict[str, str]:
    """Installed distributions by canonical name -> version, from ``*.dist-info`` names."""
    found: dict[str, str] = {}
    with os.scandir(site) as entries:
        for entry in entries:
            if entry.name.endswith(".dist-info") and entry.is_dir():
                name, _, version = entry.name[: -len(".dist-info")].rpartition("-")
                # A second folder for one name is drift too: keep both visible.
                key = canonicalize_name(name)
                found[key] = f"{found[key]}+{version}" if key in found else version
    return found


def drift(dest: Path, marker: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(present, missing)``: ``name==version`` installed but not in the marker, and in
    the marker but not installed (a wrong version is in both). Metadata only, no hashing,
    like ``envship verify`` without ``--full``."""
    site = site_packages(dest)
    installed = _dist_info(site) if site is not None else {}
    expected: dict[str, str] = {
        canonicalize_name(p["name"]): p["version"] for p in marker["packages"]
    }
    present = [f"{n}=={v}" for n, v in sorted(installed.items()) if not _same(expected.get(n), v)]
    missing = [f"{n}=={v}" for n, v in sorted(expected.items()) if not _same(installed.get(n), v)]
    return present, missing


def _same(a: str | None, b: str) -> bool:
    if a is None or a == b:
        return a == b
    try:  # a folder name may spell the version unnormalized (1.0 vs 1.0.0)
        return Version(a) == Version(b)
    except InvalidVersion:
        return False

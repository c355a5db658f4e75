"""The folder layout of a shared environment root, and the small steps on it.

Layout::

    ROOT/<name>/versions/<key>/    one immutable venv per (lock, target, groups, base python)
    ROOT/<name>/current            symlink -> versions/<key>, switched atomically
    ROOT/<name>/.locks/<key>.lock  flock taken by whoever creates, uses or removes <key>
    ROOT/<name>/.trash/            versions being deleted (renamed here first)

Naming a version, reading whether it is complete, pointing ``current``, stamping a use
and discarding a version are shared by creating, checking, listing and collecting
garbage; :mod:`envship.envs` and :mod:`envship._envgc` decide when each happens and
under which lock. Keeping the layout here means the paths and names above are spelled
out in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._installmarker import INCOMPLETE_NAME, MARKER_NAME
from .errors import EnvInputError

__all__ = [
    "USED_NAME",
    "current_key",
    "discard",
    "disk_size",
    "env_dirs",
    "env_folder",
    "key_lock",
    "last_used",
    "point_current",
    "read_marker",
    "require_root",
    "shared_version",
    "touch_used",
    "version_key",
    "version_keys",
]

USED_NAME = ".envship-used"  # its mtime is the version's last use
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_KEY_CHARS = 20


def version_key(
    lock_digest: str,
    target: str,
    groups: Collection[str],
    base_python: str,
    *,
    compiled: bool = False,
) -> str:
    """The version folder's name: everything that decides an environment's contents.

    Byte-code makes another version (versions are immutable, so one made without it is
    never compiled in place); it joins the key only when asked for, so the keys of
    versions without it are what they always were.
    """
    parts = [lock_digest, target, ",".join(sorted(groups)), base_python]
    if compiled:
        parts.append("compiled")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:_KEY_CHARS]


def shared_version(env: Path, marker: dict[str, Any]) -> tuple[str, Path] | None:
    """``(name, root)`` when ``env`` (or what it links to, e.g. ``current``) is a version
    under an environment root: such versions are immutable and shared, never changed."""
    real = Path(os.path.realpath(env))
    if real.parent.name != "versions":
        return None
    try:
        key = version_key(
            marker["lock"]["digest"],
            marker["target"]["name"],
            marker["groups"],
            marker["python"]["base"],
            compiled=bool(marker.get("compiled")),
        )
    except (KeyError, TypeError):
        key = ""
    if real.name != key and not (real.parent.parent / ".locks").is_dir():
        return None
    return real.parent.parent.name, real.parent.parent.parent


def env_folder(root: Path, name: str) -> Path:
    """``ROOT/<name>``, after checking ``name`` is a plain folder name."""
    if not _NAME.match(name):
        raise EnvInputError(
            f"invalid environment name {name!r}",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return Path(os.path.abspath(root)) / name


def key_lock(env_dir: Path, key: str) -> Path:
    return env_dir / ".locks" / f"{key}.lock"


def read_marker(path: Path) -> dict[str, Any] | None:
    """The install marker of a *complete* version, else None."""
    if (path / INCOMPLETE_NAME).exists():
        return None
    try:
        data = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # lexists: bin/python links to the base interpreter, which another machine sharing
    # the root may lack; that makes the env unusable there, not half made.
    if not isinstance(data, dict) or not os.path.lexists(path / "bin" / "python"):
        return None
    return data


def current_key(env_dir: Path) -> str | None:
    try:
        link = os.readlink(env_dir / "current")
    except OSError:
        return None
    return Path(link).name


def point_current(env_dir: Path, key: str) -> None:
    """Make ``current`` name ``versions/<key>``; readers see the old link or the new."""
    link = env_dir / "current"
    relative = f"versions/{key}"  # relative: the link stays right wherever ROOT is mounted
    with contextlib.suppress(OSError):
        if os.readlink(link) == relative:
            return
    tmp = env_dir / f"current.tmp-{secrets.token_hex(4)}"
    os.symlink(relative, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def touch_used(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only mount still lets us use the env
        (path / USED_NAME).touch()


def discard(env_dir: Path, key: str) -> None:
    """Remove a version and its install staging; the caller holds the key's lock.

    The rename comes first so the version path never shows a half-deleted tree.
    """
    version = env_dir / "versions" / key
    staging = env_dir / "versions" / f"{key}.envship-tmp"
    if version.exists() or version.is_symlink():
        trash = env_dir / ".trash" / f"{key}-{secrets.token_hex(4)}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(version, trash)
        shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def last_used(path: Path) -> datetime:
    """Last use: the used-stamp's mtime, or the folder's for a version never finished."""
    for p in (path / USED_NAME, path):
        with contextlib.suppress(OSError):
            return datetime.fromtimestamp(p.lstat().st_mtime, timezone.utc)
    return datetime.fromtimestamp(0, timezone.utc)


def disk_size(path: Path) -> int:
    total = 0
    for folder, dirs, files in os.walk(path):
        for entry in (*dirs, *files):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, entry)).st_blocks * 512
    return total


def require_root(root: Path) -> Path:
    if not root.is_dir():
        raise EnvInputError(
            f"the environment root {root} does not exist",
            hint="pass --root DIR (or set ENVSHIP_ROOT) naming the shared folder",
        )
    return Path(os.path.abspath(root))


def env_dirs(root: Path) -> list[Path]:
    return sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and (p / "versions").is_dir()
    )


def version_keys(env_dir: Path) -> list[str]:
    # "<key>.envship-tmp" is install's staging beside a version: same key, not a version.
    names = {p.name.split(".", 1)[0] for p in (env_dir / "versions").iterdir()}
    return sorted(n for n in names if n)

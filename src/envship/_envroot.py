"""The folder layout of a shared environment root, and the small steps on it.

Layout::

    ROOT/<name>/versions/<key>/    one immutable venv per (lock, target, groups, base python)
    ROOT/<name>/current            symlink -> versions/<key>, switched atomically
    ROOT/<name>/.locks/<key>.lock  flock taken by whoever creates, uses or removes <key>
    ROOT/<name>/.trash/            versions being deleted (renamed here first)

Only folders in ``versions/`` are versions: a file or link someone left there is named
(:func:`strays`), never taken for one, locked or removed.

Naming a version, reading whether it is complete, pointing ``current``, stamping a use
and discarding a version are shared by creating, checking, listing and collecting
garbage; :mod:`envship.envs` and :mod:`envship._envgc` decide when each happens and
under which lock. Keeping the layout here means the paths and names above are spelled
out in one place.

A root is written by one user (an admin, CI, often root) and used by others (a notebook
user, uid 1000 on SageMaker), so each step here says whose file stopped it rather than
failing with a bare errno, and the use stamp is writable by everyone who can run the
version (:func:`touch_used`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._flock import denied, make_folders, owner, whom
from ._installmarker import INCOMPLETE_NAME, MarkerDamaged, load_marker, work_folder
from .errors import EnvInputError

__all__ = [
    "USED_NAME",
    "Leftover",
    "current_key",
    "discard",
    "disk_size",
    "env_dirs",
    "env_folder",
    "key_lock",
    "last_used",
    "point_current",
    "read_marker",
    "removal_denied",
    "remove_tree",
    "require_root",
    "shared_version",
    "stamp_problem",
    "strays",
    "touch_used",
    "version_key",
    "version_keys",
    "version_marker",
    "version_size",
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
    except (KeyError, TypeError, ValueError):  # a damaged marker (ValueError: encode())
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


def version_marker(path: Path) -> dict[str, Any] | None:
    """The install marker of a *complete* version, else None (half made, no marker, no
    ``bin/python``); :class:`MarkerDamaged` when it has one envship cannot use, which
    ``env create`` makes again and ``env check`` refuses, naming the key."""
    if (path / INCOMPLETE_NAME).exists():
        return None
    data = load_marker(path)
    # lexists: bin/python links to the base interpreter, which another machine sharing
    # the root may lack; that makes the env unusable there, not half made.
    if data is None or not os.path.lexists(path / "bin" / "python"):
        return None
    return data


def read_marker(path: Path) -> dict[str, Any] | None:
    """The install marker of a *complete* version, else None (damaged too)."""
    try:
        return version_marker(path)
    except MarkerDamaged:
        return None


def current_key(env_dir: Path) -> str | None:
    try:
        link = os.readlink(env_dir / "current")
    except OSError:
        return None
    return Path(link).name


def point_current(env_dir: Path, key: str) -> None:
    """Make ``current`` name ``versions/<key>``; readers see the old link or the new.

    PermissionError, saying whose ``env_dir`` is, when this user may not change it."""
    link = env_dir / "current"
    relative = f"versions/{key}"  # relative: the link stays right wherever ROOT is mounted
    with contextlib.suppress(OSError):
        if os.readlink(link) == relative:
            return
    tmp = env_dir / f"current.tmp-{secrets.token_hex(4)}"
    try:
        os.symlink(relative, tmp)
    except PermissionError as exc:
        raise PermissionError(exc.errno, denied(env_dir, "change"), str(link)) from None
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# The use stamp is everyone's: gc removes a version unused for --older-than, and a use
# by any user who can run the version must count. Setting a file's times to "now" needs
# only write permission (utimensat(2): UTIME_NOW with no ownership), so the stamp is
# made 0666 and anyone can refresh it, never backdate it (explicit times need the
# owner). Its content is never read, and ``verify`` passes it by name (``_strays``).
_STAMP_MODE = 0o666


def touch_used(path: Path) -> str | None:
    """Record a use of the version at ``path``: its stamp's mtime becomes now.

    None when recorded, else why not (a read-only mount, another user's stamp from
    before stamps were made writable): the version still runs, but ``gc`` cannot see
    this use. A stamp this user owns is made writable for all on the way (one that
    older versions of envship made 0644).
    """
    stamp = path / USED_NAME
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = os.open(stamp, flags)
        except FileNotFoundError:
            fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except FileExistsError:
        return touch_used(path)  # made by another user of it meanwhile
    except OSError as exc:
        return _unrecorded(stamp, exc)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return f"{stamp} is not a regular file; this use is not recorded"
        # fchmod through the fd: a link put there would never be followed (O_NOFOLLOW).
        if stat.S_IMODE(st.st_mode) & _STAMP_MODE != _STAMP_MODE and (
            st.st_uid == os.geteuid() or os.geteuid() == 0
        ):
            with contextlib.suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | _STAMP_MODE)
        try:
            os.utime(fd)
        except OSError as exc:
            return _unrecorded(stamp, exc)
        return None
    finally:
        os.close(fd)


def _unrecorded(stamp: Path, exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        where = stamp if os.path.lexists(stamp) else stamp.parent
        why = denied(where, "write" if where == stamp else "create files in")
    else:
        why = f"{stamp}: {exc.strerror or exc}"
    return f"this use is not recorded: {why}"


def stamp_problem(path: Path) -> str | None:
    """Without writing: why :func:`touch_used` cannot record a use of ``path`` by this
    user (and what makes it possible), or None when it can."""
    stamp = path / USED_NAME
    try:
        st = os.lstat(stamp)
    except FileNotFoundError:
        if os.access(path, os.W_OK | os.X_OK):
            return None
        why = denied(path, "create files in")
    except OSError as exc:
        why = f"{stamp}: {exc.strerror or exc}"
    else:
        me = os.geteuid()
        if stat.S_ISREG(st.st_mode) and (me in (0, st.st_uid) or os.access(stamp, os.W_OK)):
            return None
        why = denied(stamp, "write")
    return (
        f"this use is not recorded ({why}), so `envship env gc --older-than` may remove "
        "the version while it is used here; a use by the stamp's owner (or root) with "
        "this envship makes it writable for every user"
    )


def discard(env_dir: Path, key: str) -> tuple[Leftover, ...]:
    """Remove a version and its install staging; the caller holds the key's lock.

    The rename comes first so the version path never shows a half-deleted tree. What
    could not be deleted afterwards (a file marked immutable, a folder of another
    user's) is returned, with where it stayed and why; PermissionError, saying whose
    folder refused it, when the version could not even be moved away.
    """
    version = env_dir / "versions" / key
    staging = work_folder(env_dir / "versions" / key)
    left: list[Leftover] = []
    if version.exists() or version.is_symlink():
        trash = env_dir / ".trash" / f"{key}-{secrets.token_hex(4)}"
        make_folders(trash.parent)
        try:
            os.rename(version, trash)
        except PermissionError as exc:
            why = removal_denied(version) or denied(version.parent, "remove folders from")
            raise PermissionError(exc.errno, why, str(version)) from None
        left.extend(remove_tree(trash))
    left.extend(remove_tree(staging))
    return tuple(left)


@dataclass(frozen=True, slots=True)
class Leftover:
    """What a removal left on disk: where, how many bytes, and the first error met."""

    path: Path
    size: int
    reason: str


def remove_tree(path: Path) -> tuple[Leftover, ...]:
    """``rm -rf path`` going on past errors; what stayed, if anything (nothing for a path
    that does not exist)."""
    errors: list[str] = []

    def note(function: Callable[..., Any], failed: str, exc: BaseException) -> None:
        if not isinstance(exc, FileNotFoundError) and not errors:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            errors.append(f"{failed}: {why}")

    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        # A file or link where a folder is expected (one put in versions/ by hand, moved
        # to .trash): rmtree refuses both (ENOTDIR; links never followed), forever.
        try:
            os.unlink(path)
        except OSError as exc:
            note(os.unlink, str(path), exc)
    elif sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=note)
    else:
        shutil.rmtree(path, onerror=lambda f, p, info: note(f, p, info[1]))
    if not os.path.lexists(path):
        return ()
    return (Leftover(path, disk_size(path), errors[0] if errors else "not removed"),)


def removal_denied(path: Path) -> str | None:
    """Without writing: why this user cannot remove the folder ``path`` (move it out of
    its folder, then delete everything in it), or None when nothing in the way shows.

    Moving a folder to another parent needs write on it (its ``..`` changes) and on its
    folder, which, when sticky, also wants the mover to own one of the two; deleting
    needs write, search and read on every folder inside. Root passes all of these.
    """
    parent = path.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return denied(parent, "remove folders from")
    me = os.geteuid()
    try:
        top, above = os.lstat(path), os.stat(parent)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if above.st_mode & stat.S_ISVTX and me not in (0, top.st_uid, above.st_uid):
        return (
            f"{parent} is sticky (mode {stat.filemode(above.st_mode)}) and {path.name} "
            f"is owned by {owner(top)}: {whom()} cannot remove it"
        )
    if not stat.S_ISDIR(top.st_mode):
        return None
    unreadable: list[str] = []
    for folder, _dirs, _files in os.walk(path, onerror=lambda e: unreadable.append(e.filename)):
        if not os.access(folder, os.W_OK | os.X_OK | os.R_OK):
            return denied(Path(folder), "remove" if folder == str(path) else "delete files in")
    if unreadable:
        return denied(Path(unreadable[0]), "list")
    return None


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


def version_size(env_dir: Path, key: str) -> int:
    """Bytes a version takes, with its install staging (``<key>.envship-tmp``, where a
    half-made version's unpacked wheels are until its install ends)."""
    versions = env_dir / "versions"
    return disk_size(versions / key) + disk_size(work_folder(versions / key))


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
    """The keys of the versions in ``env_dir/versions``: its folders. ``<key>.envship-tmp``
    is install's staging beside a version: same key, not a version. Anything else there
    (a file, a link) is no version: :func:`strays` names it, and nothing removes it."""
    names = {name.split(".", 1)[0] for name, folder in _entries(env_dir) if folder}
    return sorted(n for n in names if n)


def strays(env_dir: Path) -> list[Path]:
    """What ``env_dir/versions`` holds that is not a folder (a note someone left, a link):
    no version, so neither listed nor collected, only named."""
    return sorted(env_dir / "versions" / name for name, folder in _entries(env_dir) if not folder)


def _entries(env_dir: Path) -> list[tuple[str, bool]]:
    """Each entry of ``versions/`` and whether it is a folder (a link never is), from the
    listing's own file types where the file system gives them: no stat that another
    user's mode could refuse."""
    with os.scandir(env_dir / "versions") as entries:
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]

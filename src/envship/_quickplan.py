"""The plans of ``envship install``'s quick path (:mod:`envship._quickinstall`): where
they are kept, what keys them, what they hold, and writing one.

After the full path *created* an environment, the CLI remembers what it decided
(:func:`remember`): a plan file in the user cache (``$XDG_CACHE_HOME`` or ``~/.cache``,
``envship/install-plans/``) under a key of all that decision read which ``os.stat`` can
tell: the lock's absolute path, size, inode and modification time; the store's root
(or, for the default store, what locates it); the base interpreter's path, real path and
that file's size and modification time; the ``--target`` and the groups asked; the
machine, glibc's version; envship's version and the interpreter running envship, whose
uv binary the plan names. The file's name comes from what does not change when the lock
is edited, so an edited lock replaces its plan; the whole key is inside, compared in
full.

No change times, though uv keys its interpreter cache by one (its issue 1060: ``touch``
and ``cp -p`` can set a modification time back, not a change time). The lock's bytes
are confirmed by their digest anyway. An interpreter from a container image is unpacked
afresh on each new instance, with a new change time but the image's modification time:
keyed by its size and modification time, a plan kept in a home on a shared volume serves
the next instance too. What that misses is an interpreter replaced in place by one of
the same size and modification time; a Python upgrade changes both.

The key is taken before the full path runs (:func:`facts_before`), so a lock, an
interpreter or a GPU that changes while it runs does not key a plan of what it was. An
interpreter that is a script (a wrapper, a pyenv shim: it may run another Python each
time) keys no plan (:func:`native`), and the quick path holds the ``version_info`` uv
writes into ``pyvenv.cfg`` to the plan's before it goes on (:func:`venv_version`).

A plan is a text file of tagged lines (no JSON is parsed before uv starts): the key, uv,
the store's root, the GPU answer, one ``artifact`` line (size, sha256, file name) per
wheel, and the final marker without the keys each run writes, whose packages give the
requirement lines and must be the artifacts. It is read only when it is this user's
alone (:func:`read_plan`); plans no install used for :data:`UNUSED_DAYS` are removed
when the next one is written. Standard library only, ``os`` at import.
"""

from __future__ import annotations

import os
import stat
import sys

from . import __version__
from ._envfiles import FILES_KEY, LINKS_KEY, MARKER_FORMAT, RECORDS_KEY, STORE_KEY
from ._uvargs import requirement_line

# Not ``typing.TYPE_CHECKING``: importing typing costs the quick path of ``envship
# install`` ~7 ms before uv starts; type checkers take the name alone (mypy, pyright).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any

__all__ = [
    "MAX_PLAN_BYTES",
    "PLAN_KEYS_PER_RUN",
    "UNUSED_DAYS",
    "Facts",
    "Plan",
    "executable",
    "facts_before",
    "native",
    "plan_key",
    "plans_dir",
    "read_plan",
    "remember",
    "requirements",
    "store_holds",
    "store_place",
    "venv_version",
]

_FORMAT = "envship install plan 2"
# Larger than any plan: ~0.6 KB per wheel (the data-science set's 51 take 29 KB).
MAX_PLAN_BYTES = 4 << 20
UNUSED_DAYS = 30
# Keys of the final marker that each run writes for itself; the plan keeps the others.
PLAN_KEYS_PER_RUN = ("compiled", "link_mode", FILES_KEY, LINKS_KEY, RECORDS_KEY, STORE_KEY)
_FIELDS = ("key", "uv", "store", "gpu", "marker")


def plans_dir() -> str:
    """Where plans are kept: ``envship/install-plans`` in the user's cache folder."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):  # unset, empty or relative: the XDG default
        cache = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "envship", "install-plans")


def executable(path: str) -> bool:
    # shutil.which's test for a path with a folder in it.
    return os.path.exists(path) and os.access(path, os.X_OK) and not os.path.isdir(path)


def store_place(store: str | None) -> object:
    """The store as the key has it: its absolute root as ``Store.at`` makes it, or, for
    the default store, what ``Store.default`` reads to find it."""
    if store:
        return os.path.abspath(os.path.expanduser(store))
    return ("default", os.environ.get("XDG_CACHE_HOME"), os.environ.get("HOME"), os.getuid())


def plan_key(
    lock: str, store: object, base: str, target: str | None, groups: tuple[str, ...] | None
) -> tuple[str, str]:
    """``(name, key)``: the plan file's name (from what does not change when the lock is
    edited, so an edited lock replaces its plan) and the whole key, compared in full.
    OSError when the lock or the interpreter cannot be looked at."""
    import binascii  # built in, unlike hashlib: a name needs no cryptographic hash

    machine = os.uname().machine
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        glibc = None
    # envship's version too, and its package as installed (a reinstall rewrites it): a
    # plan is read only by the envship that wrote it, with its marker format.
    ours = os.stat(os.path.join(os.path.dirname(__file__), "__init__.py"))
    made_by = (__version__, MARKER_FORMAT, ours.st_size, ours.st_mtime_ns)
    place = repr((made_by, sys.executable, sys.prefix, lock, store, base, target, groups))
    lock_st = os.stat(lock)
    real = os.path.realpath(base)
    base_st = os.stat(real)
    facts = (
        (lock_st.st_size, lock_st.st_ino, lock_st.st_mtime_ns),
        (real, base_st.st_size, base_st.st_mtime_ns),
        machine,
        glibc,
    )
    name = f"{binascii.crc32(place.encode('utf-8', 'surrogateescape')):08x}.plan"
    return name, repr((place, facts))


def native(base: str) -> bool:
    """Whether ``base`` runs as itself: its real path an ELF program, not a script (a
    wrapper, a pyenv shim) that may pick another interpreter on each run, which a key
    by ``os.stat`` cannot tell apart. Dispatchers that are one program for every
    version (mise's shims) are caught after ``uv venv`` (:func:`venv_version`)."""
    try:
        fd = os.open(os.path.realpath(base), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 4) == b"\x7fELF"
    except OSError:
        return False
    finally:
        os.close(fd)


def venv_version(dest: str) -> str | None:
    """``version_info`` from the ``pyvenv.cfg`` uv just wrote: the interpreter uv ran,
    which must be the one the plan was made for."""
    try:
        with open(os.path.join(dest, "pyvenv.cfg"), encoding="utf-8") as f:
            for line in f.read(65536).splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip() == "version_info":
                    return value.strip()
    except (OSError, UnicodeDecodeError):
        pass
    return None


class Plan:
    """A plan file as read: where it is, the uv binary, the store's absolute root, the
    GPU answer, the artifacts (size, sha256, file name) and the JSON of the final marker
    without the keys each run writes."""

    __slots__ = ("artifacts", "gpu", "marker", "path", "store", "uv")

    def __init__(
        self,
        *,
        path: str,
        uv: str,
        store: str,
        gpu: bool,
        artifacts: tuple[tuple[int, str, str], ...],
        marker: str,
    ) -> None:
        self.path, self.uv, self.store, self.gpu = path, uv, store, gpu
        self.artifacts, self.marker = artifacts, marker


def _own_file(path: str) -> bytes | None:
    """The bytes of the plan at ``path`` when it is this user's alone: a regular file
    (never through a link; a FIFO never waited on), owned by this user, writable by
    nobody else, no larger than any plan is. A plan names a program to run and what
    to install: one another user could write is never read (as git's safe.directory
    refuses a repository another user owns, CVE-2022-24765)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_size > MAX_PLAN_BYTES:
            return None
        data = os.read(fd, MAX_PLAN_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= MAX_PLAN_BYTES else None


def read_plan(name: str, key: str, store: object) -> Plan | None:
    """The plan ``name`` if it holds ``key`` and is whole and this user's; None for
    anything else. ``store``: the key's store (a root given: the plan's must be it)."""
    path = os.path.join(plans_dir(), name)
    data = _own_file(path)
    if data is None:
        return None
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    if lines[:1] != [_FORMAT] or lines[-1] != "":
        return None
    fields: dict[str, str] = {}
    artifacts: list[tuple[int, str, str]] = []
    for line in lines[1:-1]:
        tag, _, value = line.partition(" ")
        if tag == "artifact":
            size, sha256, filename = [*value.split(" ", 2), "", ""][:3]
            if not size.isdigit() or len(sha256) != 64 or not filename or "/" in filename:
                return None
            artifacts.append((int(size), sha256, filename))
        elif tag in _FIELDS and tag not in fields:
            fields[tag] = value
        else:
            return None
    if fields.keys() != set(_FIELDS) or fields["key"] != key or fields["gpu"] not in "01":
        return None
    if not os.path.isabs(fields["store"]) or not os.path.isabs(fields["uv"]):
        return None
    if isinstance(store, str) and fields["store"] != store:
        return None
    return Plan(
        path=path,
        uv=fields["uv"],
        store=fields["store"],
        gpu=fields["gpu"] == "1",
        artifacts=tuple(artifacts),
        marker=fields["marker"],
    )


def requirements(plan: Plan, packages: Sequence[Mapping[str, Any]]) -> str:
    """The lines ``uv pip sync`` installs, as the full path stages them (each wheel's
    stable name in the store): from the marker's packages, which must be the plan's
    artifacts in their order. ValueError when they are not."""
    from pathlib import Path

    lines = []
    if len(packages) != len(plan.artifacts):
        raise ValueError("the plan's marker and artifacts differ")
    for p, (_size, sha256, filename) in zip(packages, plan.artifacts, strict=True):
        if (p["sha256"], p["filename"]) != (sha256, filename):
            raise ValueError(f"the plan's marker and artifacts differ at {filename}")
        named = Path(plan.store, "named", sha256, filename)
        lines.append(requirement_line(str(p["name"]), named, sha256))
    return "".join(f"{line}\n" for line in lines)


def store_holds(plan: Plan) -> bool:
    """Every artifact as the full path would stage it, at once: its real name a hard
    link of the content file (``Store.named``'s quick answer), of the locked size."""
    for size, sha256, filename in plan.artifacts:
        try:
            content = os.stat(os.path.join(plan.store, "sha256", sha256[:2], sha256))
            named = os.stat(os.path.join(plan.store, "named", sha256, filename))
        except OSError:
            return False
        if not stat.S_ISREG(content.st_mode) or content.st_size != size:
            return False
        if (named.st_dev, named.st_ino) != (content.st_dev, content.st_ino):
            return False
    return True


class Facts:
    """What a plan is keyed by, taken before the full path runs (the lock, the
    interpreter or the GPU may change while it does)."""

    __slots__ = ("base", "gpu", "key", "name")

    def __init__(self, name: str, key: str, base: str, gpu: bool) -> None:
        self.name, self.key, self.base, self.gpu = name, key, base, gpu


def facts_before(
    lock: Path,
    store: Path | None,
    base: str,
    target: str | None,
    groups: tuple[str, ...] | None,
) -> Facts | None:
    """The key of the run about to happen (the full path's), for :func:`remember`; None
    when there is nothing to key it by."""
    from ._gpu import has_gpu

    try:
        name, key = plan_key(
            os.path.abspath(lock), store_place(str(store) if store else None), base, target, groups
        )
    except OSError:
        return None
    return Facts(name, key, base, has_gpu())


def remember(facts: Facts | None, *, store_root: Path, dest: Path) -> bool:
    """After the full path created ``dest``, keyed by ``facts`` taken before it ran:
    keep its decisions as a plan for the quick path (True when one was written), and
    remove plans unused for :data:`UNUSED_DAYS`. A cache: anything in the way (no
    marker, another interpreter than the key's, an sdist, which uv builds, a file name
    or path a line cannot hold, a cache folder that cannot be written) means no plan,
    never an error."""
    import json
    from pathlib import Path

    from ._atomic import write_atomic
    from ._markerread import read_marker
    from ._uv import uv_bin

    marker = read_marker(dest) if facts is not None else None
    if facts is None or marker is None or not native(facts.base):
        return False
    try:
        if str(marker["python"]["base"]) != facts.base:
            return False
        artifacts = []
        for p in marker["packages"]:
            sha256, filename = str(p["sha256"]), str(p["filename"])
            if not filename.endswith(".whl"):
                return False
            size = os.stat(store_root / "sha256" / sha256[:2] / sha256).st_size
            artifacts.append(f"artifact {size} {sha256} {filename}")
        template = {k: v for k, v in marker.items() if k not in PLAN_KEYS_PER_RUN}
        lines = [
            _FORMAT,
            f"key {facts.key}",
            f"uv {uv_bin()}",
            f"store {store_root}",
            f"gpu {int(facts.gpu)}",
            *artifacts,
            f"marker {json.dumps(template, sort_keys=True)}",
        ]
        if any("\n" in line or "\r" in line for line in lines):
            return False
        folder = plans_dir()
        os.makedirs(folder, mode=0o700, exist_ok=True)
        _prune(folder)
        # 0600 whatever was at its place (write_atomic keeps a replaced file's mode, and
        # what stood there may have been a link to a device): this user's alone.
        text = "".join(f"{line}\n" for line in lines)
        write_atomic(Path(folder) / facts.name, text, mode=0o600)
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return True


def _prune(folder: str) -> None:
    """Remove the plans no install used for :data:`UNUSED_DAYS` (each use touches one)."""
    import time

    old = time.time() - UNUSED_DAYS * 86400
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.name.endswith(".plan") and entry.stat().st_mtime < old:
                    os.unlink(entry.path)
            except OSError:
                continue

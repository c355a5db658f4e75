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

A plan is a text file of tagged lines (no JSON is parsed before uv starts): the key, uv,
the store's root, the GPU answer, one ``artifact`` (size, sha256, file name) and one
``requirement`` line per wheel, and the final marker without the keys each run writes.
Standard library only, ``os`` at import.
"""

from __future__ import annotations

import os
import stat
import sys

from . import __version__
from ._envfiles import FILES_KEY, LINKS_KEY, RECORDS_KEY, STORE_KEY
from ._uvargs import requirement_line

# Not ``typing.TYPE_CHECKING``: importing typing costs the quick path of ``envship
# install`` ~7 ms before uv starts; type checkers take the name alone (mypy, pyright).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "PLAN_KEYS_PER_RUN",
    "Plan",
    "executable",
    "plan_key",
    "plans_dir",
    "read_plan",
    "remember",
    "store_holds",
    "store_place",
]

_FORMAT = "envship install plan 1"
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
    edited, so an edited lock replaces its plan) and the whole key, compared in full."""
    import binascii  # built in, unlike hashlib: a name needs no cryptographic hash

    machine = os.uname().machine
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        glibc = None
    # envship's version too: a plan is read only by the envship that wrote it.
    place = repr(
        (__version__, sys.executable, sys.prefix, lock, store, base, target, groups, machine)
    )
    lock_st = os.stat(lock)
    real = os.path.realpath(base)
    base_st = os.stat(real)
    facts = (
        (lock_st.st_size, lock_st.st_ino, lock_st.st_mtime_ns),
        (real, base_st.st_size, base_st.st_mtime_ns),
        glibc,
    )
    name = f"{binascii.crc32(place.encode('utf-8', 'surrogateescape')):08x}.plan"
    return name, repr((place, facts))


class Plan:
    """A plan file as read: the uv binary, the store's absolute root, the GPU answer, the
    artifacts (size, sha256, file name), the requirements text and the JSON of the final
    marker without the keys each run writes."""

    __slots__ = ("artifacts", "gpu", "marker", "requirements", "store", "uv")

    def __init__(
        self,
        *,
        uv: str,
        store: str,
        gpu: bool,
        artifacts: tuple[tuple[int, str, str], ...],
        requirements: str,
        marker: str,
    ) -> None:
        self.uv, self.store, self.gpu = uv, store, gpu
        self.artifacts, self.requirements, self.marker = artifacts, requirements, marker


def read_plan(name: str, key: str) -> Plan | None:
    fields: dict[str, str] = {}
    artifacts: list[tuple[int, str, str]] = []
    requirements: list[str] = []
    try:
        with open(os.path.join(plans_dir(), name), encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    if lines[:1] != [_FORMAT] or lines[-1] != "":
        return None
    for line in lines[1:-1]:
        tag, _, value = line.partition(" ")
        if tag == "artifact":
            size, sha256, filename = [*value.split(" ", 2), "", ""][:3]
            if not size.isdigit() or len(sha256) != 64 or not filename or "/" in filename:
                return None
            artifacts.append((int(size), sha256, filename))
        elif tag == "requirement":
            requirements.append(value)
        elif tag in _FIELDS and tag not in fields:
            fields[tag] = value
        else:
            return None
    if fields.keys() != set(_FIELDS) or fields["key"] != key:
        return None
    if len(requirements) != len(artifacts) or fields["gpu"] not in ("0", "1"):
        return None
    if not os.path.isabs(fields["store"]) or not os.path.isabs(fields["uv"]):
        return None
    return Plan(
        uv=fields["uv"],
        store=fields["store"],
        gpu=fields["gpu"] == "1",
        artifacts=tuple(artifacts),
        requirements="".join(f"{r}\n" for r in requirements),
        marker=fields["marker"],
    )


def store_holds(root: str, plan: Plan) -> bool:
    """Every artifact as the full path would stage it, at once: its real name a hard
    link of the content file (``Store.named``'s quick answer), of the locked size."""
    for size, sha256, filename in plan.artifacts:
        try:
            content = os.stat(os.path.join(root, "sha256", sha256[:2], sha256))
            named = os.stat(os.path.join(root, "named", sha256, filename))
        except OSError:
            return False
        if not stat.S_ISREG(content.st_mode) or content.st_size != size:
            return False
        if (named.st_dev, named.st_ino) != (content.st_dev, content.st_ino):
            return False
    return True


def remember(
    *,
    lock: Path,
    store: Path | None,
    store_root: Path,
    target: str | None,
    groups: tuple[str, ...] | None,
    dest: Path,
) -> bool:
    """After the full path created ``dest``: keep its decisions as a plan for the quick
    path (True when one was written). A cache: anything in the way (no marker, an sdist,
    which uv builds, a file name or path a line cannot hold, a cache folder that cannot
    be written) means no plan, never an error."""
    import json
    from pathlib import Path

    from ._atomic import write_atomic
    from ._gpu import has_gpu
    from ._markerread import read_marker
    from ._uv import uv_bin

    marker = read_marker(dest)
    if marker is None:
        return False
    try:
        uv = uv_bin()
        base = str(marker["python"]["base"])
        name, key = plan_key(
            os.path.abspath(lock), store_place(str(store) if store else None), base, target, groups
        )
        artifacts, requirements = [], []
        for p in marker["packages"]:
            sha256, filename = str(p["sha256"]), str(p["filename"])
            if not filename.endswith(".whl"):
                return False
            size = os.stat(store_root / "sha256" / sha256[:2] / sha256).st_size
            artifacts.append(f"artifact {size} {sha256} {filename}")
            named = store_root / "named" / sha256 / filename
            requirements.append(f"requirement {requirement_line(str(p['name']), named, sha256)}")
        template = {k: v for k, v in marker.items() if k not in PLAN_KEYS_PER_RUN}
        lines = [
            _FORMAT,
            f"key {key}",
            f"uv {uv}",
            f"store {store_root}",
            f"gpu {int(has_gpu())}",
            *artifacts,
            *requirements,
            f"marker {json.dumps(template, sort_keys=True)}",
        ]
        if any("\n" in line or "\r" in line for line in lines):
            return False
        folder = plans_dir()
        os.makedirs(folder, exist_ok=True)
        write_atomic(Path(folder) / name, "".join(f"{line}\n" for line in lines))
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return True

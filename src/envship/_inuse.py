"""Which processes on this machine use a folder: ``env gc`` must not delete a version
that something still runs from.

A venv leaves few traces in ``/proc`` (proc(5)). Its ``bin/python`` is a symlink to the
base interpreter, so ``/proc/PID/exe`` names the base; Python closes every module file
after importing it, so a pure-Python environment has no open or mapped file. What does
name the version is how the process was started: CPython finds its venv from
``argv[0]`` (``pyvenv.cfg`` beside it), so ``VERSION/bin/python script.py`` carries the
version in ``/proc/PID/cmdline``. A process counts as a user of a folder when any of
these names a path inside it:

- ``cmdline``: any argument that is a path (relative ones against the process's cwd);
- ``environ``: ``VIRTUAL_ENV`` and the ``PATH`` entries (an activated venv);
- ``exe`` and ``cwd``;
- ``maps``: mapped files (extension modules, shared libraries);
- ``fd``: open files.

"Inside" is decided by identity, not by the text of the path: a path lies in a folder
when it, or one of its parents, has the folder's ``(st_dev, st_ino)``. The same version
is reached by many paths (a symlinked root, a bind mount of the root, a second mount of
the same volume), and a process started through one of them names that one only; each
parent is stat'ed once per scan (:class:`_Within`). The device and inode printed in a
``maps`` line are not used: on kernels before 6.8 a file mapped through overlayfs shows
the underlying layer's device there, not the one ``stat`` reports for the folder.

A bind mount of a folder *inside* a version (``mount --bind V/lib/python3.11/site-packages
/sub``, or a container given only that folder) defeats the walk: the parents of
``/sub/numpy/x.so`` are ``/sub`` and ``/``, never ``V``. Each mount's line in ``mountinfo``
(proc(5)) names the folder of its filesystem the mount shows (the 4th field, "root"). Where
that is not the filesystem's root, the folder is found by its path in this namespace and
walked up from there; if it lies in a version, its ``(st_dev, st_ino)``, which the mount
point has too, counts as part of that version (:meth:`_Within.learn`). Every namespace's
mounts are learnt, each ``mountinfo`` read once, before any process's paths are walked. A
single *file* mounted out of a version is not followed: a file's identity may be shared by
hard links in other versions, a folder's never is.

Paths the kernel writes (``exe``, ``cwd``, ``maps``, ``fd``) and those a process names
are in the process's own mount namespace; for a process in another one (a container
sharing this machine's PID namespace) they are looked up under ``/proc/PID/root``.

``cmdline`` is readable for every process; the others need the right to trace the
process (ptrace access mode, proc(5)), so for another user's processes only the command
line is seen unless the scan runs as root. Processes in another PID namespace (another
container, another machine sharing the volume) are not seen at all: the caller must
cover those some other way (``env gc`` keeps versions used recently).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessUse", "users_of"]

_PROC = Path("/proc")
_DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class ProcessUse:
    """One process found using a folder, and the first trace that showed it."""

    pid: int
    command: str  # /proc/PID/comm: the program's name, at most 15 characters
    how: str  # "cmdline", "environ", "exe", "cwd", "maps" or "fd"
    path: str  # the path inside the folder, as the process names it

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "command": self.command, "how": self.how, "path": self.path}


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # gone, or not ours to read (EACCES): that trace is unknown
        return None


def _link(path: Path | str) -> str | None:
    try:
        target = os.readlink(path)
    except OSError:
        return None
    return target.removesuffix(_DELETED)


def _named(text: str, cwd: str | None) -> str | None:
    """A path a process named, made absolute against its cwd; ``None`` for an argument
    that is not a path."""
    if "/" not in text or "\n" in text or text.startswith("-") or len(text) > 4096:
        return None
    if not os.path.isabs(text):
        if cwd is None:
            return None
        text = os.path.join(cwd, text)
    return os.path.normpath(text)


# A trace: how it was found, the path, and whether that path is a file (a mapped file or
# an executable: only its parents can be a folder, so the file itself is not stat'ed).
_Trace = tuple[str, str, bool]


def _traces(pid_dir: Path) -> Iterator[_Trace]:
    """Every path the process at ``pid_dir`` names; cheap ones first."""
    cwd = _link(pid_dir / "cwd")
    cmdline = _read(pid_dir / "cmdline") or b""
    for arg in cmdline.split(b"\0"):
        if found := _named(os.fsdecode(arg), cwd):
            yield "cmdline", found, False
    if (exe := _link(pid_dir / "exe")) is not None:
        yield "exe", exe, True
    if cwd is not None:
        yield "cwd", cwd, False
    environ = _read(pid_dir / "environ") or b""
    for item in environ.split(b"\0"):
        key, _, value = os.fsdecode(item).partition("=")
        if key == "VIRTUAL_ENV" and (found := _named(value, cwd)):
            yield "environ", found, False
        elif key == "PATH":
            for entry in value.split(os.pathsep):
                if os.path.isabs(entry):
                    yield "environ", os.path.normpath(entry), False
    for line in (_read(pid_dir / "maps") or b"").splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith(b"/"):
            yield "maps", os.fsdecode(parts[5]).removesuffix(_DELETED), True
    with contextlib.suppress(OSError):
        for fd in os.listdir(pid_dir / "fd"):
            if (target := _link(pid_dir / "fd" / fd)) is not None and target.startswith("/"):
                yield "fd", target, False


class _Within:
    """Which of the wanted folders a path lies in: the folders whose ``(st_dev, st_ino)``
    the path or one of its parents has. Each parent's answer is kept, so a scan stats
    every folder processes name once (``/usr/lib``, a version's ``site-packages``)."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self._wanted: dict[tuple[int, int], set[int]] = {}
        for i, folder in enumerate(folders):
            with contextlib.suppress(OSError):  # gone already: no one can use it
                st = os.stat(folder)
                self._wanted.setdefault((st.st_dev, st.st_ino), set()).add(i)
        self._known: dict[str, frozenset[int]] = {}
        self._looked: set[tuple[str, str]] = set()  # mounts' (device, root) learnt from

    def learn(self, mounts: Iterable[_Mount], ours: _Places, *, view: str = "") -> None:
        """Count as part of a wanted folder every mount (of a process's namespace, whose
        root is reached by ``view``) that shows a folder inside it, by that folder's
        identity. The folder is found by its path here (under ``ours``, this namespace's
        mounts), where the version folders were stat'ed, and walked up from there. A
        folder is looked at once per scan: the same filesystem's folder is the same in
        every namespace (``unshare`` and containers copy most of ours)."""
        learnt = False
        for mount in mounts:
            looked = (mount.device, mount.root)
            if mount.root == "/" or looked in self._looked:
                continue  # a whole filesystem (its paths have their own parents), or known
            # Not through the mount itself (when it is one of ours): its parents are
            # the mount's, not the folder's.
            heres = [
                (h, inside)
                for h in _here(mount, ours)
                if h != view + mount.point and (inside := self.folders(h))
            ]
            if not heres:  # in no wanted folder, whichever namespace shows it
                self._looked.add(looked)
                continue
            try:
                at = os.stat(view + mount.point)
            except OSError:
                continue
            for here, inside in heres:
                try:
                    same = os.stat(here)
                except OSError:
                    continue
                # A file may be a hard link of one in another version (a store's link
                # mode): only a folder's identity names one place.
                if not stat.S_ISDIR(same.st_mode):
                    self._looked.add(looked)
                    break
                if (at.st_dev, at.st_ino) != (same.st_dev, same.st_ino):
                    continue  # another mount covers one of the two paths
                known = self._wanted.setdefault((at.st_dev, at.st_ino), set())
                learnt |= not inside <= known
                known.update(inside)
                self._looked.add(looked)
                break
        if learnt:  # a path walked before may have passed through that folder
            self._known.clear()

    def wanted(self) -> set[int]:
        """The indexes of the folders that exist (only those can be used)."""
        return set().union(*self._wanted.values())

    def folders(self, path: str, *, view: str = "", is_file: bool = False) -> frozenset[int]:
        """The indexes of the folders ``path`` lies in. ``view`` is where the process's
        root is reached from here (``/proc/PID/root``), or ``""`` for this one."""
        start = os.path.dirname(path) if is_file else path
        chain: list[str] = []  # from start up to the first parent already known
        at = start
        while (view + at) not in self._known:
            chain.append(at)
            up = os.path.dirname(at)
            if up == at:
                break
            at = up
        inside = self._known.get(view + at, frozenset())
        for at in reversed(chain):
            try:
                st = os.stat(view + at)  # follows links: a symlinked root is its target
            except OSError:
                own: Iterable[int] = ()
            else:
                own = self._wanted.get((st.st_dev, st.st_ino), ())
            inside = inside.union(own)
            self._known[view + at] = inside
        return inside


@dataclass(frozen=True, slots=True)
class _Mount:
    """One line of ``/proc/PID/mountinfo`` (proc(5)), the fields used here."""

    device: str  # "major:minor": mounts of the same filesystem share it
    root: str  # the folder of that filesystem the mount shows, from its root
    point: str  # where the mount is, in its namespace


_ESCAPED = re.compile(rb"\\([0-7]{3})")  # the kernel writes space, tab, newline, \ as \ooo


def _mounts(path: Path) -> list[_Mount]:
    """The mounts ``path`` (a ``mountinfo``) lists; ``[]`` when it cannot be read."""
    mounts = []
    for line in (_read(path) or b"").splitlines():
        fields = line.split(b" ")
        if len(fields) < 5 or fields[3].endswith(b"//deleted"):  # its folder is gone
            continue
        if not fields[3].startswith(b"/"):
            # No folder of a filesystem: a namespace file bind-mounted by `ip netns`,
            # container runtimes or systemd (root "net:[4026532177]", nsfs).
            continue
        root, point = (
            os.fsdecode(_ESCAPED.sub(lambda m: bytes([int(m[1], 8)]), f)) for f in fields[3:5]
        )
        mounts.append(_Mount(os.fsdecode(fields[2]), root, point))
    return mounts


# This namespace's mounts: the places each folder of a filesystem is mounted at, by
# ("major:minor", that folder's path from the filesystem's root).
_Places = dict[tuple[str, str], list[str]]


def _places(mounts: Iterable[_Mount]) -> _Places:
    places: _Places = {}
    for mount in mounts:
        places.setdefault((mount.device, mount.root), []).append(mount.point)
    return places


def _here(mount: _Mount, ours: _Places) -> Iterator[str]:
    """The paths in this namespace of the folder ``mount`` shows: under each of our mounts
    of the same filesystem whose folder holds it, the nearest first."""
    holder = mount.root
    while True:
        rest = mount.root if holder == "/" else mount.root[len(holder) :]
        for point in ours.get((mount.device, holder), ()):
            yield point.rstrip("/") + rest or "/"
        if holder in ("/", ""):  # "": not a path at all, which _mounts leaves out
            return
        holder = os.path.dirname(holder)


def _space(pid_dir: Path, ours: str | None) -> tuple[str, str | None]:
    """Where paths of the process at ``pid_dir`` are looked up from here (``""`` when it
    shares our mount namespace, or that cannot be read; else its root through /proc), and
    its mount namespace when that is another one."""
    theirs = _link(pid_dir / "ns" / "mnt")
    if theirs is None or theirs == ours:
        return "", None
    return str(pid_dir / "root"), theirs


def _pids(proc: Path) -> Iterable[Path]:
    try:
        return [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def users_of(folders: Sequence[Path], *, proc: Path = _PROC) -> dict[Path, tuple[ProcessUse, ...]]:
    """The processes using each of ``folders`` (keys as given; folders no one uses are
    left out). Two passes over ``proc``: every mount namespace's mounts first (each
    ``mountinfo`` read once), then each process's paths; one that exits meanwhile is
    skipped."""
    within = _Within(folders)
    wanted = within.wanted()
    found: dict[Path, list[ProcessUse]] = {}
    if not wanted:
        return {}
    ours = _link(proc / "self" / "ns" / "mnt")
    our_mounts = _mounts(proc / "self" / "mountinfo")
    places = _places(our_mounts)
    within.learn(our_mounts, places)
    spaces: set[str] = set()  # other mount namespaces whose mounts are learnt
    views: list[tuple[Path, str]] = []
    for pid_dir in _pids(proc):
        view, space = _space(pid_dir, ours)
        if space is not None and space not in spaces:
            spaces.add(space)
            within.learn(_mounts(pid_dir / "mountinfo"), places, view=view)
        views.append((pid_dir, view))
    # Only now, with every mount learnt, is a path's answer final (:meth:`_Within.learn`).
    for pid_dir, view in views:
        left = set(wanted)
        for how, path, is_file in _traces(pid_dir):
            hits = within.folders(path, view=view, is_file=is_file) & left
            for i in sorted(hits):
                comm = (_read(pid_dir / "comm") or b"?").decode(errors="replace").strip()
                use = ProcessUse(int(pid_dir.name), comm, how, path)
                found.setdefault(folders[i], []).append(use)
            left -= hits
            if not left:
                break
    return {f: tuple(uses) for f, uses in found.items()}

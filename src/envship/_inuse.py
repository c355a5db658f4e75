"""Which processes on this machine use a folder: ``env gc`` must not delete a version
that something still runs from.

A venv leaves few traces in ``/proc`` (proc(5)). Its ``bin/python`` is a symlink to the
base interpreter, so ``/proc/PID/exe`` names the base; Python closes every module file
after importing it, so a pure-Python environment has no open or mapped file. What does
name the version is how the process was started: CPython finds its venv from
``argv[0]`` (``pyvenv.cfg`` beside it), so ``VERSION/bin/python script.py`` carries the
version in ``/proc/PID/cmdline``. A process counts as a user of a folder when any of
these names a path inside it:

- ``cmdline``: any argument that is a path (relative ones against the process's cwd),
  its folders resolved, its last part not (``bin/python`` would resolve to the base);
- ``environ``: ``VIRTUAL_ENV`` and the ``PATH`` entries (an activated venv);
- ``exe`` and ``cwd``;
- ``maps``: mapped files (extension modules, shared libraries);
- ``fd``: open files.

``cmdline`` is readable for every process; the others need the right to trace the
process (ptrace access mode, proc(5)), so for another user's processes only the command
line is seen unless the scan runs as root. Processes in another PID namespace (another
container, another machine sharing the volume) are not seen at all: the caller must
cover those some other way (``env gc`` keeps versions used recently).
"""

from __future__ import annotations

import contextlib
import os
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
    path: str  # the path that lies inside the folder

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "command": self.command, "how": self.how, "path": self.path}


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # gone, or not ours to read (EACCES): that trace is unknown
        return None


def _link(path: Path) -> str | None:
    try:
        target = os.readlink(path)
    except OSError:
        return None
    return target.removesuffix(_DELETED)


def _named(text: str, cwd: str | None) -> str | None:
    """A path a process named, as it resolves here: its folders followed, its last part
    kept (a venv's ``bin/python`` is a link to the base interpreter)."""
    if "/" not in text or "\n" in text or text.startswith("-") or len(text) > 4096:
        return None
    if not os.path.isabs(text):
        if cwd is None:
            return None
        text = os.path.join(cwd, text)
    text = os.path.normpath(text)
    head, tail = os.path.split(text)
    return os.path.join(os.path.realpath(head), tail)


def _traces(pid_dir: Path) -> Iterator[tuple[str, str]]:
    """``(how, path)`` for every path the process at ``pid_dir`` names; cheap ones first."""
    cwd = _link(pid_dir / "cwd")
    cmdline = _read(pid_dir / "cmdline") or b""
    for arg in cmdline.split(b"\0"):
        if found := _named(os.fsdecode(arg), cwd):
            yield "cmdline", found
    for how in ("exe", "cwd"):
        if (target := _link(pid_dir / how)) is not None:
            yield how, target
    environ = _read(pid_dir / "environ") or b""
    for item in environ.split(b"\0"):
        key, _, value = os.fsdecode(item).partition("=")
        if key == "VIRTUAL_ENV" and (found := _named(value, cwd)):
            yield "environ", found
        elif key == "PATH":
            for entry in value.split(os.pathsep):
                if os.path.isabs(entry):
                    yield "environ", os.path.realpath(entry)
    for line in (_read(pid_dir / "maps") or b"").splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith(b"/"):
            yield "maps", os.fsdecode(parts[5]).removesuffix(_DELETED)
    with contextlib.suppress(OSError):
        for fd in os.listdir(pid_dir / "fd"):
            if (target := _link(pid_dir / "fd" / fd)) is not None and target.startswith("/"):
                yield "fd", target


def _pids(proc: Path) -> Iterable[Path]:
    try:
        return [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def users_of(folders: Sequence[Path], *, proc: Path = _PROC) -> dict[Path, tuple[ProcessUse, ...]]:
    """The processes using each of ``folders`` (keys as given; folders no one uses are
    left out). One pass over ``proc``; a process that exits meanwhile is skipped."""
    wanted = [(os.path.realpath(f).rstrip("/") + "/", f) for f in folders]
    found: dict[Path, list[ProcessUse]] = {}
    for pid_dir in _pids(proc):
        left = list(wanted)
        for how, path in _traces(pid_dir):
            inside = path + "/"
            hits = [(prefix, f) for prefix, f in left if inside.startswith(prefix)]
            for hit in hits:
                left.remove(hit)
                comm = (_read(pid_dir / "comm") or b"?").decode(errors="replace").strip()
                found.setdefault(hit[1], []).append(ProcessUse(int(pid_dir.name), comm, how, path))
            if not left:
                break
    return {f: tuple(uses) for f, uses in found.items()}

"""Where the environment goes in the base image's file system.

A layer entry replaces what the layers below hold at its path, so an environment's
layers must not name anything of the base's they do not mean to change:

- a directory entry resets the base's owner, mode and time of that directory (a conda
  base's ``/opt/conda``, 1000:100, would become root's; ``/tmp`` would lose its 1777);
- a directory entry over a symbolic link replaces the link (moby's ``UnpackLayer``), so
  ``/bin/env`` on a merged-``/usr`` base, where ``/bin -> usr/bin``, would turn ``/bin``
  into a folder and the image could not start;
- an environment written over one the base already holds at the same path leaves the
  old one's files in place (packages it has and the lock has not).

So before any layer is written the prefix (and the kernelspec folder) are resolved in
the base as the kernel resolves them at run time: symbolic links are followed and the
environment is built at the real path. Directories on the way that the base has are
written with the base's own owner and mode (their time is the layer's); leaving them out
would not do, as Docker's layer unpacking creates a missing parent 0755, root-owned, in
the new layer (moby's ``createImpliedDirectories``), and overlayfs shows the upper one.
The ones the base lacks are created 0755, 0:0. A non-directory on the way, or anything
at the prefix but an empty directory, is refused. What is read of the base is cached in
the store by manifest digest and path, since reading a large base takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import write_atomic
from .errors import ImageError, ImageInputError, Problem, UnsupportedBaseError
from .layer import DEFAULT_LEVEL, LayerWriter
from .layerview import LayerView, view_of
from .ocilayout import LayoutImage

__all__ = [
    "KERNELS_DIR",
    "MOUNTED",
    "SAGEMAKER_HIDDEN",
    "BaseDir",
    "BasePaths",
    "Placement",
    "check_prefix",
    "place",
    "placed_writer",
    "sagemaker_notes",
]

KERNELS_DIR = "usr/local/share/jupyter/kernels"  # on every Jupyter's system search path
EXAMPLE_PREFIX = "/opt/envship/venv"
# A script's "#!" line holds at most 127 bytes (Linux before 5.1): "#!" + prefix +
# "/bin/python" + newline.
MAX_PREFIX = 127 - len("#!/bin/python\n")
_TOO_WIDE = frozenset({"/", "/usr", "/opt"})
# Every OCI runtime mounts proc, sysfs and a tmpfs for /dev over the image's folders
# (runtime-spec config-linux.md, "Default Filesystems"; runc's and Docker's defaults),
# so an environment there is hidden the moment the container starts.
MOUNTED = ("/proc", "/sys", "/dev")
# Often, not always, a tmpfs at run time (podman and systemd mount /tmp and /run, Docker
# --tmpfs, Kubernetes emptyDir volumes): the environment may vanish, so a note.
_OFTEN_MOUNTED = ("/tmp", "/run", "/var/run")
# DESIGN.md, platform facts: SageMaker Studio reserves these, and mounts the user's home
# over whatever the image has there.
SAGEMAKER_HIDDEN = {
    "/opt/ml": "reserved by SageMaker",
    "/opt/.sagemakerinternal": "reserved by SageMaker",
    "/var/log/studio": "reserved by SageMaker Studio",
    "/home/sagemaker-user": "hidden by the home folder SageMaker Studio mounts there",
}
_FORMAT = 1  # of the cached records; bumped when what they hold changes
LABEL = "org.envship.prefix"  # where an image envship built has its environment
KERNEL_DIRS = (None, "dir", "empty dir")  # what the kernelspec folder may be in the base


def _under(path: str, roots: Iterable[str]) -> str | None:
    """The one of ``roots`` that ``path`` is or is below, if any."""
    return next((r for r in roots if path == r or path.startswith(r + "/")), None)


def check_prefix(prefix: str) -> str:
    """``prefix`` without a trailing ``/``, if it can hold an environment; else an
    :class:`ImageInputError` (exit 2) naming what is wrong."""
    text = prefix.rstrip("/") if prefix not in ("", "/") else prefix
    problem = None
    if not text.startswith("/"):
        problem = "not an absolute path"
    elif posixpath.normpath(text) != text or text.startswith("//"):
        # normpath keeps a leading "//" (POSIX leaves its meaning to the system).
        problem = "not a normalized path (no '.', '..' or '//' components)"
    elif any(c.isspace() or c in "\0:" for c in text):
        problem = "spaces, ':' (it would split PATH) and NUL are not allowed"
    elif text in _TOO_WIDE:
        problem = "a system folder, not a folder of its own"
    elif (mount := _under(text, MOUNTED)) is not None:
        problem = f"container runtimes mount over {mount}, which would hide the environment"
    elif len(text.encode()) > MAX_PREFIX:
        problem = f"longer than {MAX_PREFIX} bytes (a script's '#!' line holds 127)"
    if problem is not None:
        raise ImageInputError(
            f"invalid environment path {prefix!r}",
            problems=[Problem("--prefix", problem)],
            hint=f"give a folder of its own, e.g. --prefix {EXAMPLE_PREFIX}",
        )
    return text


@dataclass(frozen=True, slots=True)
class BaseDir:
    """A directory of the base that a layer names: written with the base's header."""

    path: str  # no leading "/"
    mode: int  # permission bits with setuid, setgid and sticky
    uid: int
    gid: int

    def to_json(self) -> list[object]:
        return [self.path, self.mode, self.uid, self.gid]

    @classmethod
    def from_json(cls, data: object) -> BaseDir:
        if not isinstance(data, list) or len(data) != 4:
            raise ValueError("not a [path, mode, uid, gid] list")
        path, mode, uid, gid = data
        if not isinstance(path, str) or not all(type(v) is int for v in (mode, uid, gid)):
            raise ValueError("not a [path, mode, uid, gid] list")
        return cls(path, mode, uid, gid)


@dataclass(frozen=True, slots=True)
class BasePaths:
    """What the base has along one path, as read from its layers (cached as JSON)."""

    real: str  # the path with every symbolic link followed, no leading "/"
    present: tuple[BaseDir, ...]  # directories on the way the base has, shallowest first
    blocked: str | None  # the first non-directory on the way, if any
    found: str | None  # what is at ``real``: "empty dir", "dir", "file"...; None if nothing
    children: tuple[str, ...] = ()  # names inside ``real`` when it is a directory
    itself: BaseDir | None = None  # ``real`` when it is a directory

    @classmethod
    def read(cls, view: LayerView, path: str) -> BasePaths:
        try:
            real = view.real_path(path)
        except ImageError as exc:  # a loop of links: this base cannot take the prefix
            raise UnsupportedBaseError(
                f"{exc.message} in the base image", hint="choose another --prefix"
            ) from None
        present: list[BaseDir] = []
        blocked = None
        parts = real.split("/")
        for i in range(1, len(parts)):
            info = view.files.get("/".join(parts[:i]))
            if info is None:
                break
            if info.kind != "dir":
                blocked = info.path
                break
            present.append(BaseDir(info.path, info.mode, info.uid, info.gid))
        info = None if blocked else view.files.get(real)
        children: tuple[str, ...] = ()
        if info is not None and info.kind == "dir":
            below = real + "/"
            children = tuple(
                sorted(
                    {k[len(below) :].split("/", 1)[0] for k in view.files if k.startswith(below)}
                )
            )
        found = None if info is None else info.kind
        itself = None
        if info is not None and found == "dir":
            itself = BaseDir(info.path, info.mode, info.uid, info.gid)
            found = "dir" if children else "empty dir"
        return cls(real, tuple(present), blocked, found, children, itself)

    def to_json(self) -> dict[str, Any]:
        return {
            "real": self.real,
            "present": [d.to_json() for d in self.present],
            "blocked": self.blocked,
            "found": self.found,
            "children": list(self.children),
            "itself": self.itself.to_json() if self.itself else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BasePaths:
        real, blocked, found = data["real"], data["blocked"], data["found"]
        present, children = data["present"], data["children"]
        if (
            not isinstance(real, str)
            or not all(v is None or isinstance(v, str) for v in (blocked, found))
            or not isinstance(present, list)
            or not isinstance(children, list)
            or not all(isinstance(v, str) for v in children)
        ):
            raise ValueError("malformed record")
        dirs = tuple(BaseDir.from_json(d) for d in present)
        itself = None if data["itself"] is None else BaseDir.from_json(data["itself"])
        return cls(real, dirs, blocked, found, tuple(children), itself)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the environment and its kernelspec go in a base, and what is kept of it."""

    prefix: str  # the real path the environment is built at, "/opt/conda/envs/ds"
    requested: str  # the prefix as asked for
    above_prefix: tuple[BaseDir, ...]  # the base's folders on the way, an empty prefix too
    kernels: str  # the real kernelspec folder, "usr/local/share/jupyter/kernels"
    above_kernels: tuple[BaseDir, ...]  # the base's folders on the way, itself too
    base_kernels: tuple[str, ...]  # kernelspecs the base has there
    notes: tuple[str, ...] = ()
    kernels_blocked: str | None = None  # a non-directory where the kernelspec must go


def _cache_file(cache: Path, digest: str, path: str) -> Path:
    key = hashlib.sha256(f"{_FORMAT}\0{digest}\0{path}".encode()).hexdigest()
    return cache / f"{key}.json"


def _read_paths(
    base: LayoutImage, paths: tuple[str, ...], cache: Path | None
) -> dict[str, BasePaths]:
    found: dict[str, BasePaths] = {}
    digest = base.descriptor.digest
    for path in paths:
        if cache is None:
            break
        try:
            data = json.loads(_cache_file(cache, digest, path).read_text(encoding="utf-8"))
            found[path] = BasePaths.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    missing = [p for p in paths if p not in found]
    if missing:
        view = view_of(base.layer_paths)
        for path in missing:
            found[path] = BasePaths.read(view, path)
            if cache is not None:
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                    write_atomic(
                        _cache_file(cache, digest, path), json.dumps(found[path].to_json())
                    )
                except OSError:
                    pass  # a read-only store: read the base again next time
    return found


def place(base: LayoutImage, prefix: str, *, where: str, cache: Path | None = None) -> Placement:
    """Where an environment asked for at ``prefix`` goes in ``base`` (named ``where``), or
    an :class:`UnsupportedBaseError` (exit 2) when the base cannot take it there."""
    prefix = check_prefix(prefix)
    paths = _read_paths(base, (prefix.lstrip("/"), KERNELS_DIR), cache)
    env, kernels = paths[prefix.lstrip("/")], paths[KERNELS_DIR]
    real = "/" + env.real
    notes: list[str] = []
    hint = f"choose another --prefix, e.g. {EXAMPLE_PREFIX}-2"
    if env.blocked is not None:
        raise UnsupportedBaseError(
            f"cannot put the environment at {prefix} in the base image {where}: "
            f"/{env.blocked} is not a directory there",
            problems=[Problem(prefix, f"/{env.blocked} is a file or device in the base")],
            hint=hint,
        )
    if real != prefix:
        try:
            check_prefix(real)
        except ImageError as exc:
            raise UnsupportedBaseError(
                f"{prefix} is {real} in the base image {where} (symbolic links followed), "
                "which cannot hold an environment",
                problems=exc.problems,
                hint=hint,
            ) from None
        notes.append(
            f"{prefix} is {real} in the base (a symbolic link on the way); "
            "the environment is built there"
        )
    for path in dict.fromkeys((prefix, real)):
        if (mount := _under(path, _OFTEN_MOUNTED)) is not None:
            notes.append(
                f"{path} is under {mount}, where many runtimes mount an empty tmpfs "
                "(podman, systemd, Kubernetes volumes, docker run --tmpfs), which hides "
                "the environment; a folder such as /opt/envship/venv is safer"
            )
    if env.found not in (None, "empty dir"):
        if env.children:
            held = ", ".join(env.children[:4]) + (", ..." if len(env.children) > 4 else "")
            what = f"a folder holding {held}; they would remain beside the environment"
        else:
            what = f"a {env.found}, not a folder"
        labels = base.config.config.get("Labels") or {}
        ours = " (an environment envship built)" if labels.get(LABEL) == real else ""
        shown = prefix if real == prefix else f"{prefix} (that is {real})"
        raise UnsupportedBaseError(
            f"the base image {where} already has {shown}{ours}",
            problems=[Problem(real, what)],
            hint=hint + (", or build on the image this base was built from" if ours else ""),
        )
    notes += [
        f"/{d.path} is mode {stat.S_IMODE(d.mode):04o} (uid {d.uid}, gid {d.gid}) in the base: "
        f"uid {SAGEMAKER_UID} / gid {SAGEMAKER_GID}, the user SageMaker Studio runs as, "
        "cannot reach the environment below it"
        for d in (*env.present, *((env.itself,) if env.itself else ()))
        if not _enters(d, SAGEMAKER_UID, SAGEMAKER_GID)
    ]
    unusable = kernels.blocked or (kernels.real if kernels.found not in KERNEL_DIRS else None)
    # An empty folder at the prefix is the base's, as is the kernelspec folder.
    return Placement(
        prefix=real,
        requested=prefix,
        above_prefix=env.present + ((env.itself,) if env.itself else ()),
        kernels=kernels.real,
        above_kernels=kernels.present + ((kernels.itself,) if kernels.itself else ()),
        base_kernels=kernels.children,
        notes=tuple(notes),
        kernels_blocked=None if unusable is None else "/" + unusable,
    )


SAGEMAKER_UID, SAGEMAKER_GID = 1000, 100  # Studio's default user (DESIGN.md)


def _enters(d: BaseDir, uid: int, gid: int) -> bool:
    """Whether ``uid`` (in group ``gid`` alone) may pass through the base's folder ``d``:
    the owner's, the group's or the others' search bit, whichever applies (as the kernel
    checks it, root aside)."""
    if uid == d.uid:
        return bool(d.mode & stat.S_IXUSR)
    return bool(d.mode & (stat.S_IXGRP if gid == d.gid else stat.S_IXOTH))


def sagemaker_notes(placement: Placement) -> list[str]:
    """Warnings for a prefix SageMaker Studio reserves or hides (DESIGN.md)."""
    notes = []
    for path in dict.fromkeys((placement.requested, placement.prefix)):
        for hidden, why in SAGEMAKER_HIDDEN.items():
            if path == hidden or path.startswith(hidden + "/"):
                notes.append(
                    f"{path} is under {hidden}, which is {why}: the environment will not "
                    "be usable there on SageMaker"
                )
    return notes


def placed_writer(
    dest_dir: Path, *, mtime: int, level: int = DEFAULT_LEVEL, kept: Iterable[BaseDir] = ()
) -> LayerWriter:
    """A layer writer whose first entries are the base's directories ``kept``, with the
    base's owner and mode (setgid and sticky bits too), so the layer changes neither.

    The writer is ``exact`` for that: modes are kept as given. Everything else envship
    writes in an environment's layers is given normalized modes (0644/0755) already.
    """
    writer = LayerWriter(dest_dir, mtime=mtime, level=level, exact=True)
    try:
        for d in sorted(set(kept), key=lambda d: d.path):  # a parent sorts before its children
            writer.add_dir(d.path, d.mode, uid=d.uid, gid=d.gid)
    except BaseException:
        writer.abort()
        raise
    return writer

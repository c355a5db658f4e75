"""What an image build wrote outside the environment, and how verify holds it to that.

Besides the environment under its prefix, ``envship image build`` writes a kernelspec
(``--kernel-name``, under ``.../share/jupyter/kernels/NAME``) in the same layer as the
environment's marker, and sets ``PATH`` and ``VIRTUAL_ENV`` in the image config. A later
layer or a changed config that sends the kernel or the shell to another Python is a
difference: the kernelspec files must be as built and alone in their folder, ``PATH``
must start with ``PREFIX/bin`` and ``VIRTUAL_ENV`` must be the prefix. The base image's
own files and other settings are not the build's and are not compared.

The same layer holds the install marker as built, the one record verify takes its
expectations from (groups, the venv's own files and links): a later layer that rewrites
or removes it is a difference on it (:func:`as_built`), never a new expectation. And the
unpacked tree verify reads is the image's, not this machine's: a folder on the way to the
environment that is a link now is a difference and is not followed (:func:`blocked_way`),
and every other link is made to resolve inside the tree (:func:`contain_links`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._difference import Difference
from ._markerread import LINKS_KEY, MAX_MARKER_BYTES, MarkerDamaged, check_marker
from ._records import encode_record_hash
from ._strays import VENV_CREATION
from ._verifyreport import CONFIG_ENV
from .errors import ImageInputError
from .imageio import ImageSource
from .layer import WHITEOUT_PREFIX
from .layerfs import MAX_SYMLINK_HOPS, iter_layer
from .oci import ImageConfig

__all__ = [
    "CONFIG_ENV",
    "KERNELSPEC",
    "MARKER_NOTE",
    "BuiltLayer",
    "ancestors",
    "as_built",
    "blocked_way",
    "built_layer",
    "config_differences",
    "Links",
    "contain_links",
    "kernels_folder",
    "kernelspec_differences",
    "parse_marker",
    "put_marker",
]

#: The ``name`` of differences in the kernelspec files envship wrote beside the environment.
KERNELSPEC = "(kernelspec)"

_KERNELS = "/share/jupyter/kernels/"


def kernels_folder(name: str) -> str | None:
    """The Jupyter kernelspec folder (``.../share/jupyter/kernels``: every such place on
    Jupyter's search path, where image builds write theirs) a layer path is in, if any."""
    text = f"/{name}/"
    at = text.find(_KERNELS)
    return text[1 : at + len(_KERNELS) - 1] if at >= 0 else None


def ancestors(path: str) -> set[str]:
    """The folders ``a``, ``a/b`` above ``a/b/c``."""
    parts = path.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


@dataclass(frozen=True, slots=True)
class BuiltLayer:
    """What envship's build wrote in the layer that holds the environment's marker."""

    index: int  # of the layer in the image
    marker: bytes  # the install marker, as built
    kernelspec: dict[str, bytes]  # layer path -> content of each kernelspec file


def built_layer(source: ImageSource, holders: list[int], marker: str) -> BuiltLayer | None:
    """The marker and kernelspec files envship wrote, read from the first layer that
    holds the environment's marker as a file: image builds write both in that layer,
    last of theirs (a base may hold nothing at the prefix, :mod:`envship._imageprefix`),
    so a later layer can only change what the image shows there. None: no layer holds
    it (not an image of envship's)."""
    for i in holders:
        path = source.image.layer_paths[i]
        files: dict[str, bytes] = {}
        found: bytes | None = None
        # Read as verify --image reads every layer: links climbing above / stop there.
        for info, reader in iter_layer(path, layer=f"{source.name} layer {i}", climb=True):
            if reader is not None and info.name == marker:
                found = _capped(reader, f"{source.name} layer {i}: /{marker}")
            elif (
                reader is not None
                and kernels_folder(info.name) is not None
                and not info.name.rpartition("/")[2].startswith(WHITEOUT_PREFIX)
            ):  # a whiteout (the base's kernelspec hidden) is no file of the image
                files[info.name] = reader.read()
        if found is not None:
            return BuiltLayer(i, found, files)
    return None


def _capped(reader: IO[bytes], where: str) -> bytes:
    # A marker is tens of KB; an image's claim to one of gigabytes is not read whole.
    data = reader.read(MAX_MARKER_BYTES + 1)
    if len(data) > MAX_MARKER_BYTES:
        raise ImageInputError(
            f"{where} is larger than any install marker envship writes",
            hint="verify images built with `envship image build`",
        )
    return data


def _described(data: bytes) -> str:
    # As a RECORD line spells a file, like every other file difference.
    return f"sha256={encode_record_hash(hashlib.sha256(data).digest())}, size {len(data)}"


def as_built(
    root: Path, rel: str, data: bytes, name: str, *, mode: bool = True
) -> Difference | None:
    """The file at image path ``rel`` (its folders checked by the caller: none is a link)
    against the bytes the build wrote there: ``removed``, or ``changed`` when it differs,
    is not a regular file (read without following a link or opening a FIFO) or, with
    ``mode``, anyone may write it."""
    where = root / rel
    expected = f"{_described(data)} (as built)"
    try:
        st_mode = os.lstat(where).st_mode
        now = where.read_bytes() if stat.S_ISREG(st_mode) else None
    except FileNotFoundError:
        return Difference("removed", name, f"/{rel}", expected)
    except OSError as exc:  # unreadable
        return Difference("changed", name, f"/{rel}", expected, str(exc))
    if stat.S_ISLNK(st_mode):
        return Difference("changed", name, f"/{rel}", expected, f"a link to {os.readlink(where)}")
    if now is None:
        actual = f"not a regular file ({stat.filemode(st_mode)})"
        return Difference("changed", name, f"/{rel}", expected, actual)
    if now != data:
        return Difference("changed", name, f"/{rel}", expected, _described(now))
    if mode and st_mode & stat.S_IWOTH:
        return Difference(
            "changed", name, f"/{rel}", "not writable by others",
            f"mode {stat.filemode(st_mode)}", "anyone in the container can change it",
        )  # fmt: skip
    return None


def blocked_way(root: Path, prefix: str) -> Difference | None:
    """The first folder on the way to the environment (``opt``, ``opt/envship``, the
    prefix itself) that is no folder in the image now: a symbolic link (to anywhere, this
    machine's files too: it is never followed) or a file. None when each is a folder or
    the way ends at one that is gone (what is missing below says so). The build resolves
    the prefix to a path of folders (:mod:`envship._imageprefix`), so either is a change."""
    parts = prefix.split("/")
    for i in range(1, len(parts) + 1):
        rel = "/".join(parts[:i])
        try:
            mode = os.lstat(root / rel).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(mode):
            continue
        if stat.S_ISLNK(mode):
            actual = f"a symbolic link to {os.readlink(root / rel)}"
        else:
            actual = f"not a folder ({stat.filemode(mode)})"
        return Difference(
            "changed", VENV_CREATION, f"/{rel}", "a folder", actual,
            f"a link is never followed here: nothing below /{rel} was compared",
        )  # fmt: skip
    return None


def _linked(root: Path, rel: str) -> str | None:
    """The first folder on the way to ``rel`` that is a symbolic link now (it may point
    anywhere, on this machine too: nothing below it is read), if any."""
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        folder = "/".join(parts[:i])
        try:
            if stat.S_ISLNK(os.lstat(root / folder).st_mode):
                return folder
        except OSError:
            return None  # gone: what is missing below it says so
    return None


def kernelspec_differences(root: Path, built: Mapping[str, bytes]) -> list[Difference]:
    """Each kernelspec file envship wrote against what the image holds there now, and
    any file a later layer put beside them (``kernel.js`` runs in every browser that
    opens the notebook)."""
    diffs = []
    links: set[str] = set()
    for rel, data in sorted(built.items()):
        if (link := _linked(root, rel)) is not None:
            if link not in links:
                links.add(link)
                to = f"a symbolic link to {os.readlink(root / link)}"
                diffs.append(Difference("changed", KERNELSPEC, f"/{link}", "a folder", to))
            continue
        if (diff := as_built(root, rel, data, KERNELSPEC)) is not None:
            diffs.append(diff)
    for folder in sorted({posixpath.dirname(rel) for rel in built}):
        if _linked(root, f"{folder}/-") is not None:
            continue  # named above
        for dirpath, dirnames, filenames in os.walk(root / folder):
            # os.walk does not enter links to folders: they are entries of their own.
            links_here = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in sorted([*filenames, *links_here]):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if rel not in built:
                    diffs.append(Difference("added", KERNELSPEC, f"/{rel}", None, "not built"))
    return diffs


def config_differences(config: ImageConfig, prefix: str) -> list[Difference]:
    """The config envship wrote: ``PATH`` runs the environment's ``python``, ``pip`` and
    scripts first, and ``VIRTUAL_ENV`` names it (:func:`envship.image._config`)."""
    env = config.env
    diffs = []
    path = env.get("PATH")
    first = path.split(":")[0] if path else ""
    if not first or posixpath.normpath(first) != f"{prefix}/bin":
        diffs.append(
            Difference(
                "config", "PATH", CONFIG_ENV, f"{prefix}/bin first",
                path if path is not None else "(not set)",
                "python, pip and scripts run from elsewhere, not from the environment",
            )
        )  # fmt: skip
    venv = env.get("VIRTUAL_ENV")
    if venv is None or posixpath.normpath(venv) != prefix:
        diffs.append(
            Difference(
                "config", "VIRTUAL_ENV", CONFIG_ENV, prefix,
                venv if venv is not None else "(not set)",
                "tools that look for the active environment find another one",
            )
        )  # fmt: skip
    return diffs


class Links:
    """The links of an unpacked tree, made to resolve inside it (:func:`contain_links`)."""

    def __init__(self, root: Path, targets: dict[str, str]) -> None:
        self.root = root
        self.targets = targets  # root-relative path of each link -> its target in the image
        self.moved: dict[str, str] = {}  # each new target -> the image's, when only one

    def now(self, rel: str) -> str:
        """The target the tree's link at ``rel`` (root-relative) has now."""
        return os.readlink(self.root / rel)

    def inside(self, folder: str, target: str) -> str:
        """What a link in ``folder`` (root-relative) to ``target`` is pointed at: itself
        when it only descends, else ``root`` plus where it resolves in the image."""
        if not target.startswith("/") and ".." not in target.split("/"):
            return target
        where = _resolve(self.root, folder, target, self.targets)
        return f"{self.root}/{where}" if where else str(self.root)

    def told(self, text: str) -> str:
        """``text`` (a difference's "a link to X") with X as the image gives it."""
        head, sep, tail = text.rpartition("link to ")
        return head + sep + self.moved[tail] if sep and self.moved.get(tail) else text


def contain_links(root: Path) -> Links:
    """Make every symbolic link in the unpacked tree at ``root`` lead to a place inside it,
    as it would in a container.

    In the image, an absolute target starts at the image's root and ``..`` stops there;
    on this machine ``/etc/passwd`` is this machine's, and ``s/../..`` climbs out of
    ``root`` when ``s`` leads to a shallow folder. Any read of the tree that followed such
    a link would read this machine's files as the image's (and vouch for them). So each
    link whose target is absolute or holds ``..`` is pointed at ``root`` plus the path its
    target resolves to in the image (links on the way followed image-style, as
    :class:`envship.layerfs._Tree` does): a path of real folders inside ``root``. A
    relative target without ``..`` only descends from a folder inside ``root`` through
    links that, by the same rule, stay inside it, and is kept: the venv's ``lib64 -> lib``
    and ``bin/python3 -> python`` read as built."""
    targets: dict[str, str] = {}
    folders = [str(root)]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    targets[os.path.relpath(entry.path, root)] = os.readlink(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if mode & 0o500 != 0o500:
                        # A folder a layer made unlistable could hide a link from this
                        # walk and not from a read by its path (root reads through it).
                        os.chmod(entry.path, stat.S_IMODE(mode) | 0o700)
                    folders.append(entry.path)
    links = Links(root, targets)
    for rel, target in sorted(targets.items()):
        new = links.inside(posixpath.dirname(rel), target)
        if new != target:
            os.unlink(root / rel)
            os.symlink(new, root / rel)
            # "": two targets resolve alike, and the text cannot tell which it was.
            links.moved[new] = target if links.moved.get(new, target) == target else ""
    return links


def _resolve(root: Path, folder: str, target: str, links: Mapping[str, str]) -> str:
    """Where ``target`` of a link in ``folder`` leads in the image, relative to its root,
    with no ``..`` in it: links on the way are followed (``links``: their targets in the
    image) up to a name that is no folder in the tree (a file, or not unpacked); the rest
    is taken as it is written, ``..`` stopping at the root, for the kernel never walks
    past that name here."""
    todo = list(reversed(target.split("/")))
    done = [] if target.startswith("/") else [p for p in folder.split("/") if p]
    hops = 0
    follow = True
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = "/".join([*done, part])
        if follow and here in links:
            hops += 1
            if hops > MAX_SYMLINK_HOPS:  # a loop: the kernel says ELOOP; a name that is nowhere
                return here
            linked = links[here]
            if linked.startswith("/"):
                done = []
            todo.extend(reversed(linked.split("/")))
            continue
        done.append(part)
        follow = follow and os.path.isdir(root / here)
    return "/".join(done)


MARKER_NOTE = (
    "envship's record of the environment as built (its groups, the venv's own files and "
    "links), rewritten or removed by a later layer: the environment is held to the one "
    "built in layer {}"
)


def parse_marker(data: bytes, where: str) -> dict[str, Any]:
    """The marker as built, read as :func:`envship._markerread.load_marker` reads one."""
    try:
        return check_marker(json.loads(data), Path(where))
    except (ValueError, RecursionError) as exc:
        raise ImageInputError(
            f"cannot read the environment's marker {where}", hint=f"not JSON: {exc}"
        ) from None
    except MarkerDamaged as exc:
        raise ImageInputError(
            f"cannot read the environment's marker {where}", hint=str(exc)
        ) from None


def put_marker(path: Path, marker: dict[str, Any], links: Links, prefix: str) -> None:
    """The marker as built at ``path``, for verify to read. A venv link that is as built
    is recorded as :func:`contain_links` left it (so it compares equal); any other keeps
    the target as built, which the tree's link (moved inside the tree, or another
    target) is not: a difference. A file there keeps its mode (verify names one anyone
    may write); anything else is replaced."""
    record = dict(marker)
    if isinstance(marker.get(LINKS_KEY), dict):
        linked: dict[str, str] = {}
        for rel, to in marker[LINKS_KEY].items():
            here = f"{prefix}/{rel}"
            linked[rel] = links.now(here) if links.targets.get(here) == to else to
        record[LINKS_KEY] = linked
    data = json.dumps(record, indent=2, sort_keys=True).encode()
    try:
        st_mode = os.lstat(path).st_mode
    except FileNotFoundError:
        st_mode = 0
    if st_mode and not stat.S_ISREG(st_mode):
        if stat.S_ISDIR(st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        st_mode = 0
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if st_mode else os.O_CREAT)
    fd = os.open(path, flags, 0o644)
    with open(fd, "wb") as f:
        f.write(data)

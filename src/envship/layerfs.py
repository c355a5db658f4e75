"""Reading untrusted OCI layers: their entries (:mod:`envship._layerread`, re-exported
here), and applying them onto a folder.

Every layer is treated as hostile: absolute names, ``..`` and links that climb out of the
root raise :class:`~envship.errors.UnsafeLayerError`; extraction never writes through a
symbolic link and never outside its destination. Reading an image as a container would
see it (:func:`read_layer`, for ``verify --image``) follows the links the tree holds,
inside it, and takes a relative link's ``..`` as stopping at the root (``climb``).

Device nodes and FIFOs (:func:`is_special`) are read like any entry: a root file system
imported with ``docker import`` keeps ``/dev/null``, ``/dev/full`` and the rest, and a
container engine runs it. Such an entry names no bytes and reaches nothing outside the
image, so reading it is safe; creating it is not (a device node on the build machine
opens that machine's device), so extraction never makes one: it removes what the entry
replaces and reports the entry's name to its caller, who decides whether one is
allowed there. envship's own layers never hold one (:mod:`envship.layer` writes files,
folders and links only), so a special entry in an environment's folder is a sign of
tampering, which the verifier (:mod:`envship.imageinspect`) reports. Writing layers is
:mod:`envship.layer`; the merged file system of several layers is :mod:`envship.layerview`.

Speed matters here (a base layer has ~10k entries, and ``verify --image`` reads every
layer): the tar stream is read through one large buffer, entries that ``only`` does not
select cost their header check and nothing else, and resolved directories are cached.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO

from ._layerread import (
    CHUNK,
    MAX_SYMLINK_HOPS,
    is_special,
    iter_layer,
    open_layer,
    reading,
    unreadable,
    unsafe,
)
from .errors import ImageError, Problem
from .layer import OPAQUE_WHITEOUT, WHITEOUT_PREFIX

__all__ = [
    "MAX_SYMLINK_HOPS",
    "Special",
    "extract_layer",
    "is_special",
    "iter_layer",
    "open_layer",
    "read_layer",
    "reading",
    "split_path",
    "unreadable",
]


def split_path(rel: str) -> list[str]:
    """The components of a relative path, without empty and ``.`` ones."""
    return [p for p in rel.split("/") if p not in ("", ".")]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _selected(name: str, only: Callable[[str], bool] | None) -> bool:
    """Whether applying entry ``name`` would touch a path ``only`` accepts."""
    if only is None:
        return True
    parent, _, base = name.rpartition("/")
    if base == OPAQUE_WHITEOUT:
        return only(parent)
    if base.startswith(WHITEOUT_PREFIX):
        return only(_join(parent, base[len(WHITEOUT_PREFIX) :]))
    return only(name)


class _Tree:
    """The folder a layer is applied onto: image directories resolved to real ones.

    Symbolic links met on the way are followed the way they would be inside the
    container (absolute targets start at the root, ``..`` stops there), so a Debian
    ``lib -> usr/lib`` laid by a lower layer is honoured and nothing can reach outside.
    Answers are cached; one can only go stale when a directory or symbolic link that
    existed is removed or replaced, and every such change goes through :meth:`remove` or
    :meth:`forget`. Paths handled here are relative to the root, as strings.
    """

    def __init__(self, root: str, layer: str) -> None:
        self.root = root
        self.layer = layer
        self._dirs: dict[str, str] = {"": ""}

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def forget(self) -> None:
        self._dirs = {"": ""}

    def remove(self, rel: str) -> None:
        """Remove whatever is at ``rel`` (a directory with its contents, never following
        a link)."""
        path = self.path(rel)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            self.forget()
            shutil.rmtree(path)  # never follows symlinks inside
        else:
            if stat.S_ISLNK(mode):
                self.forget()
            os.unlink(path)

    def real_dir(self, rel: str, *, create: bool, entry: str) -> str | None:
        """The real directory for image directory ``rel``, made (0755) where missing if
        ``create``, else None where missing."""
        hit = self._dirs.get(rel)
        if hit is not None:
            return hit
        parent, _, base = rel.rpartition("/")
        if base and base != "..":
            # The walk to ``rel`` passes through ``parent``'s answer; only a link at
            # ``base`` itself needs the whole walk (which counts its hops).
            up = self.real_dir(parent, create=create, entry=entry)
            if up is None:
                return None
            here = _join(up, base)
            try:
                mode = os.lstat(self.path(here)).st_mode
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(self.path(here), 0o755)
                mode = stat.S_IFDIR
            if stat.S_ISDIR(mode):
                self._dirs[rel] = here
                return here
        found = self._walk(rel, create=create, entry=entry)
        if found is not None:
            self._dirs[rel] = found
        return found

    def locate(self, rel: str) -> str:
        """Where an entry named ``rel`` lands: its parent resolved through the links the
        tree holds now, the part that is not in the tree yet taken as written (``rel``
        itself when the way runs into a file or a link loop: applying it would fail)."""
        parent, _, base = rel.rpartition("/")
        try:
            up = self.real_dir(parent, create=False, entry=rel)
            if up is None:
                up = self._walk(parent, create=False, entry=rel, partial=True)
        except ImageError:
            return rel
        assert up is not None
        return _join(up, base)

    def _walk(self, rel: str, *, create: bool, entry: str, partial: bool = False) -> str | None:
        todo = list(reversed(split_path(rel)))
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            here = self.path("/".join([*done, part]))
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                if partial:  # the rest is made as folders where the entry is applied
                    for rest in [part, *reversed(todo)]:
                        if rest != "..":
                            done.append(rest)
                        elif done:
                            done.pop()
                    return "/".join(done)
                if not create:
                    return None
                os.mkdir(here, 0o755)
                done.append(part)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise unsafe(self.layer, entry, "sits below a symbolic link loop")
                target = os.readlink(here)
                if target.startswith("/"):
                    done = []
                todo.extend(reversed(split_path(target)))
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ImageError(
                    f"layer {self.layer}: entry {entry!r} is below "
                    f"{'/'.join([*done, part])!r}, which is not a directory",
                    problems=[Problem(entry, "parent is not a directory")],
                )
            done.append(part)
        return "/".join(done)

    def plain_dirs(self, rels: list[str]) -> set[str]:
        """Those of ``rels`` that are real directories all the way down from the root."""
        known: dict[str, bool] = {"": True}

        def plain(rel: str) -> bool:
            if rel not in known:
                parent = rel.rpartition("/")[0]
                try:
                    is_dir = stat.S_ISDIR(os.lstat(self.path(rel)).st_mode)
                except FileNotFoundError:
                    is_dir = False
                known[rel] = is_dir and plain(parent)
            return known[rel]

        return {rel for rel in rels if plain(rel)}


def extract_layer(
    blob: Path,
    dest: Path,
    *,
    layer: str,
    only: Callable[[str], bool] | None = None,
) -> tuple[str, ...]:
    """Apply a layer onto ``dest``, honouring OCI whiteouts, never writing outside it;
    returns the names (in the layer) of the device nodes and FIFOs it selected, which are
    not created: whatever they replace is removed and nothing takes its place.

    A new ``dest`` is built in a sibling temporary folder and renamed into place at the
    end, so a failure leaves nothing. Onto an existing ``dest`` (the next layer of an
    image), the whole layer is checked first, so an unsafe layer changes nothing; a file
    that replaces another is written under a temporary name and renamed over it. Owners
    are not applied; modes and mtimes are. ``only`` selects entries by their path in the
    layer; the others are checked, never applied.
    """
    if dest.exists():
        last = -1
        for index, (info, _) in enumerate(iter_layer(blob, layer=layer, climb=False)):
            if _selected(info.name, only):
                last = index
        if last >= 0:  # a second pass, which stops after the last entry it needs
            return tuple(s.name for s in _apply(blob, str(dest), layer, only, count=last + 1))
        return ()
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    try:
        os.chmod(stage, 0o755)
        skipped = _apply(blob, stage, layer, only, count=None)
        os.rename(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return tuple(s.name for s in skipped)


@dataclass(frozen=True, slots=True)
class Special:
    """A device node or FIFO a layer holds (:func:`is_special`)."""

    name: str  # in the layer
    path: str  # where it landed in the tree (root-relative, links on the way followed)
    kind: str  # "a FIFO", "a character device", "a block device"
    inode: int  # of the empty file :func:`read_layer` put there in its place, else 0


def _kind(info: tarfile.TarInfo) -> str:
    return "a FIFO" if info.isfifo() else "a character device" if info.ischr() else "a block device"


# read_layer's source of a hard link's bytes: (target name, writer of the link's file)
# -> whether the target was found and streamed into the writer.
Missing = Callable[[str, Callable[[IO[bytes]], None]], bool]


def read_layer(
    blob: Path,
    dest: Path,
    *,
    layer: str,
    only: Callable[[str], bool],
    missing: Missing | None = None,
) -> tuple[Special, ...]:
    """Apply a layer onto the folder ``dest`` (which exists) as a container runtime
    would, for reading what the image holds at the paths ``only`` accepts.

    Unlike :func:`extract_layer`, an entry is selected by where it lands: its name
    resolved through the links the tree holds at that point, inside the root (a runtime
    writes ``opt/x/evil.pth`` into the environment when ``opt/x`` links there). So every
    symbolic link and whiteout is applied, and any entry that replaces something the tree
    holds. A relative link may climb above the root (``..`` stops there, as at ``/``).
    A device node or FIFO is stood in for by an empty regular file, which the returned
    :class:`Special` names with its inode, so a caller can tell whether a later layer
    removed or replaced it. A hard link whose target is not in the tree (outside what
    is read) gets the target's bytes from ``missing(name, write)``, which streams them
    into ``write`` and says whether it found them (:meth:`LayerView.stream` does, for
    the layers below): nothing is held whole, whatever the target's size. Unsafe
    entries raise as they are met: ``dest`` is a scratch folder, left half applied.
    """
    return tuple(_apply(blob, str(dest), layer, only, count=None, read=True, missing=missing))


def _reached(tree: _Tree, info: tarfile.TarInfo, only: Callable[[str], bool]) -> bool:
    """Whether :func:`read_layer` applies entry ``info`` (see there)."""
    base = info.name.rpartition("/")[2]
    if info.issym() or base.startswith(WHITEOUT_PREFIX) or _selected(info.name, only):
        return True
    where = tree.locate(info.name)
    return (where != info.name and only(where)) or os.path.lexists(tree.path(where))


def _apply(
    blob: Path,
    root: str,
    layer: str,
    only: Callable[[str], bool] | None,
    *,
    count: int | None,
    read: bool = False,
    missing: Missing | None = None,
) -> list[Special]:
    tree = _Tree(root, layer)
    ours: set[str] = set()  # real paths (relative to root) this layer wrote
    special: list[Special] = []
    dirs: list[tuple[str, int, int]] = []
    # Extraction refuses a link climbing above the root; reading takes it as a runtime does.
    with contextlib.closing(iter_layer(blob, layer=layer, climb=read)) as entries:
        for info, reader in islice(entries, count):
            name = info.name
            if read and only is not None:
                if not _reached(tree, info, only):
                    continue
            elif only is not None and not _selected(name, only):
                continue
            parent_rel, _, base = name.rpartition("/")
            if base == OPAQUE_WHITEOUT:
                opaque = tree.real_dir(parent_rel, create=True, entry=name)
                assert opaque is not None
                for child in os.listdir(tree.path(opaque)):
                    if _join(opaque, child) not in ours:
                        tree.remove(_join(opaque, child))
                continue
            if base.startswith(WHITEOUT_PREFIX):
                where = tree.real_dir(parent_rel, create=False, entry=name)
                if where is not None and _join(where, base[4:]) not in ours:
                    tree.remove(_join(where, base[4:]))
                continue
            parent = tree.real_dir(parent_rel, create=True, entry=name)
            assert parent is not None
            final_rel = _join(parent, base)
            final = tree.path(final_rel)
            ours.add(final_rel)
            try:
                old: int | None = os.lstat(final).st_mode
            except FileNotFoundError:
                old = None
            if info.isdir():
                if old is None or not stat.S_ISDIR(old):
                    if old is not None:
                        tree.remove(final_rel)
                    os.mkdir(final, 0o700)
                dirs.append((final_rel, info.mode & 0o7777, int(info.mtime)))
                continue
            if old is not None and stat.S_ISDIR(old):
                tree.remove(final_rel)
                old = None
            if info.isreg():
                assert reader is not None
                if old is not None and stat.S_ISLNK(old):
                    tree.forget()  # the link is replaced by the rename below
                _write_file(final, reader, info, layer, replace=old is not None)
                continue
            try:
                source = _link_source(tree, info, layer) if info.islnk() else None
            except ImageError:
                # Read, the target may lie outside what is read (a lower layer's
                # etc/passwd): the link holds its bytes, as a copy, streamed in.
                write = functools.partial(
                    _write_file, final, info=info, layer=layer, replace=old is not None
                )
                if missing is None or not read or not missing(info.linkname, write):
                    raise
                continue
            if old is not None:
                tree.remove(final_rel)
            if info.issym():
                os.symlink(info.linkname, final)
            elif source is not None:
                os.link(source, final, follow_symlinks=False)
            elif is_special(info):
                # Never made here: a device node on this machine would open this machine's
                # device (as root, /dev/sda itself), and a FIFO blocks whoever reads it.
                # The entry still replaces what was there, as it would in the image; read,
                # an empty file stands in for it (read_layer).
                inode = 0
                if read:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    os.close(os.open(final, flags, 0o644))
                    inode = os.lstat(final).st_ino
                special.append(Special(name, final_rel, _kind(info), inode))
    # Directory modes last, deepest first, so a read-only directory can still be filled;
    # only where the path is still a real directory all the way down, since a later entry
    # may have put a symlink in its place (chmod would follow it).
    plain = tree.plain_dirs([rel for rel, _, _ in dirs])
    for rel, mode, mtime in reversed(dirs):
        if rel in plain:
            os.chmod(tree.path(rel), mode)
            os.utime(tree.path(rel), (mtime, mtime))
    return special


def _link_source(tree: _Tree, info: tarfile.TarInfo, layer: str) -> str:
    """The real file a hard link entry names, which must be a regular file."""
    target_parent, _, target_base = info.linkname.rpartition("/")
    where = tree.real_dir(target_parent, create=False, entry=info.name)
    if where is not None:
        source = tree.path(_join(where, target_base))
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(source).st_mode):
                return source
    raise ImageError(
        f"layer {layer}: hard link {info.name!r} -> {info.linkname!r} has no target",
        problems=[Problem(info.name, "the target file is not in the tree")],
    )


def _write_file(
    final: str, reader: IO[bytes], info: tarfile.TarInfo, layer: str, *, replace: bool
) -> None:
    """The content of a regular file entry at ``final``: created there exclusively (never
    through a link) if nothing is there, else written beside it and renamed over it."""
    if replace:
        fd, path = tempfile.mkstemp(dir=os.path.dirname(final), prefix=".envship-")
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd, path = os.open(final, flags, 0o600), final
    try:
        with open(fd, "wb", closefd=True) as out:
            while True:
                with reading(layer):
                    block = reader.read(CHUNK)
                if not block:
                    break
                out.write(block)
            out.flush()  # before the mtime is set: a later write would change it
            os.fchmod(fd, info.mode & 0o7777)
            os.utime(fd, (info.mtime, info.mtime))
        if replace:
            os.replace(path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise

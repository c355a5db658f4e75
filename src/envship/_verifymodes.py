"""Modes no installer gives: setuid and setgid files, folders anyone may write into.

Installers keep one bit of a wheel's file modes, the executable one: pypa/installer and
uv (seen with uv 0.13.9, in copy and hardlink mode) install a wheel entry stored as
``-rwsr-sr-x`` as ``-rwxr-xr-x``, and make every folder ``0777 & ~umask``. So in a locked
environment

* a file with the setuid or setgid bit is a change: run, it runs with its owner's (or
  group's) rights for whoever runs it, root's for a root-owned file;
* a folder others may write into is a change: anyone on the machine can put a module
  (or a ``.pth`` file) there that every process importing from it runs, and the sticky
  bit (``1777``) does not stop that, it only protects the entries already there.

The group bits are neither: under a umask of ``002`` folders are ``775``, and a shared
root's are ``2775`` (setgid, so versions keep the root's group, :mod:`envship.envs`);
a setgid *folder* is no difference, and neither is the sticky bit on a folder others
cannot write, nor a folder others may write but not search (``0776``: adding an entry
takes both, path_resolution(7)). Symbolic links have no mode of their own and are never followed. An
image's environment is read from its layers unpacked with their modes
(:func:`envship.layerfs.read_layer`), so the same walk reads the modes the layers set.

Every file a RECORD lists is already ``lstat``-ed by :mod:`envship._records`, which asks
:func:`setid_difference` about it. :func:`mode_differences` walks the rest: one
``scandir`` per folder and one ``lstat`` per folder and per file no RECORD lists, except
the byte-code in ``__pycache__`` folders, whose modes only ``full`` (and ``verify
--bytecode``, which reads every ``.pyc`` anyway) reads: what else is in a cache (a
program, a link, a FIFO, a device node) is an added or unowned file in every mode, which
the walks of :func:`envship._records.unlisted` and :mod:`envship._strays` name (they
list every cache: Python writes only regular ``.pyc`` files there, told by ``d_type``
without a ``stat``). Measured on the data-science set (15.6k files, 1,907 folders): the
walk takes about 30 ms, against about 0.7 s for the whole quick check; compiled (6,289
cached ``.pyc`` files), ``full`` reading them takes about 25 ms more. A ``.pyc`` anyone
may write is a change there too: Python runs it in place of its source. A folder this
user may not read stops the check with a permission error naming it (:func:`scan`):
nothing in it can be vouched for.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ._denied import denied
from ._difference import Difference

if TYPE_CHECKING:
    from ._records import Entry

__all__ = [
    "CACHE",
    "OPEN_EXPECTED",
    "SETID_EXPECTED",
    "files_under",
    "mode_differences",
    "scan",
    "setid_difference",
]

#: The ``expected`` of a difference in a file's setuid or setgid bit, and in a folder (or
#: byte-code) others may write (as :mod:`envship._records` says of an installed file).
SETID_EXPECTED = "no setuid or setgid bit"
OPEN_EXPECTED = "not writable by others"

_SETID = stat.S_ISUID | stat.S_ISGID
_SETID_NOTE = (
    "runs with its owner's or group's rights for whoever runs it; no installer makes such a file"
)
_FOLDER_NOTE = (
    "anyone on this machine can add a module or a .pth file here, which every process "
    "that imports from it runs"
)
_BIN_NOTE = (
    "anyone on this machine can add a program here, which runs in place of the command of "
    "its name while the environment is activated (bin/ is first on PATH)"
)
_TOP_NOTE = (
    "anyone on this machine can add files here or replace the ones there (pyvenv.cfg, "
    "which Python reads at every start of the environment)"
)
_PYC_NOTE = "anyone on this machine can change it, and Python runs it in place of its source"
CACHE = "__pycache__"  # a byte-code cache folder (PEP 3147)


def setid_difference(name: str, path: str, mode: int) -> Difference | None:
    """The difference a regular file with the setuid or setgid bit is, if it has one."""
    if not stat.S_ISREG(mode) or not mode & _SETID:
        return None
    return Difference(
        "changed", name, path, SETID_EXPECTED, f"mode {stat.filemode(mode)}",
        _SETID_NOTE,
    )  # fmt: skip


def scan(folder: str) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` (none when it is gone); a folder this user may not read
    stops the check with the error naming it: what is in it cannot be vouched for."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []  # gone, or a file now: the walk that listed it names what is there
    except PermissionError:
        raise denied(
            f"{folder}, a folder of the environment verify checks,",
            folder,
            hint=f"verify as a user who can read it (its owner, root), or ask its owner to make "
            f"it readable: chmod -R a+rX {shlex.quote(folder)}; until then nothing in it can "
            "be vouched for",
        ) from None


def files_under(top: str, skip: Collection[str] = ()) -> Iterator[os.DirEntry[str]]:
    """Every entry under the folder ``top`` that is not a folder: files, links (to a
    folder too, never followed: ``import pkg.sub.mod`` runs what it points at), FIFOs and
    device nodes; none under a folder in ``skip``, and no regular ``.pyc`` file in a
    ``__pycache__``, the only thing Python writes there (RECORD leaves byte-code out;
    ``verify --bytecode`` compares it with its source). ``d_type`` alone tells them
    apart: no ``stat``. A folder this user may not read raises (:func:`scan`)."""
    folders = [top]
    while folders:
        folder = folders.pop()
        in_cache = os.path.basename(folder) == CACHE
        for entry in scan(folder):
            if entry.is_dir(follow_symlinks=False):
                if entry.path not in skip:
                    folders.append(entry.path)
            elif not (
                in_cache and entry.name.endswith(".pyc") and entry.is_file(follow_symlinks=False)
            ):
                yield entry


def _open(mode: int) -> bool:
    """A folder others may add entries to: writing into a folder takes search permission
    too (path_resolution(7)), so a ``0776`` one is closed to them."""
    return mode & (stat.S_IWOTH | stat.S_IXOTH) == stat.S_IWOTH | stat.S_IXOTH


def _open_difference(name: str, path: str, mode: int, note: str) -> Difference:
    return Difference("changed", name, path, OPEN_EXPECTED, f"mode {stat.filemode(mode)}", note)


def mode_differences(
    roots: Iterable[Path],
    sites: Iterable[Path],
    checked: Collection[str],
    skip: Collection[str],
    owners: Iterable[Entry],
    *,
    full: bool,
    nobody: str,
) -> list[Difference]:
    """Folders others may write into and setuid or setgid files under ``roots`` (a venv,
    or the site-packages folders of one named alone), each root included; ``sites``: the
    site-packages folders.

    ``checked``: the files :mod:`envship._records` checked already (not ``lstat``-ed
    again). ``skip``: paths other differences name (one difference per path; nothing
    under a folder named is looked at). ``owners``: RECORD lines, whose distributions
    name what is found in their folders. ``full``: the byte-code in ``__pycache__``
    folders too. ``nobody``: the name of a difference in what no distribution wrote (the
    venv's own files and folders).
    """
    bad: list[tuple[str, int, bool]] = []  # path, mode, is a folder
    tops = [os.path.normpath(r) for r in roots]
    venv = not {os.path.normpath(s) for s in sites} >= set(tops)  # else site-packages alone
    folders: list[str] = []
    for top in dict.fromkeys(tops):
        if top in skip:
            continue
        try:
            mode = os.stat(top).st_mode  # named through a link (a root's `current`): where
        except OSError:
            continue  # gone or unreadable: what is missing is named elsewhere
        if stat.S_ISDIR(mode):
            folders.append(top)
            if _open(mode):
                bad.append((top, mode, True))
    while folders:
        folder = folders.pop()
        in_cache = os.path.basename(folder) == CACHE
        for entry in scan(folder):
            path = entry.path
            if path in skip or path in checked:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if _open(mode):
                        bad.append((path, mode, True))
                    # Cached byte-code is one file per module (6,289 in the data-science
                    # set): its modes only in ``full`` mode. Whatever else is in a cache
                    # (a program, a link, a FIFO) is an added or unowned file, named by
                    # those walks (:func:`envship._records.unlisted`), in every mode.
                    if full or entry.name != CACHE:
                        folders.append(path)
                elif entry.is_file(follow_symlinks=False):
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if mode & _SETID or (in_cache and mode & stat.S_IWOTH):
                        bad.append((path, mode, False))
            except OSError:
                continue  # gone meanwhile
    if not bad:
        return []
    owner = _Owners(tops, [os.path.normpath(s) for s in sites], owners, nobody)
    diffs: list[Difference] = []
    bins = {os.path.join(t, "bin") for t in tops} if venv else set()
    for path, mode, is_dir in sorted(bad):
        if is_dir:
            note = _BIN_NOTE if path in bins else _TOP_NOTE if venv and path in tops else None
            diffs.append(_open_difference(owner.of_folder(path), path, mode, note or _FOLDER_NOTE))
        elif os.path.basename(os.path.dirname(path)) == CACHE:
            # Byte-code is its source's distribution's.
            name = owner.of_bytecode(path)
            diffs.append(
                setid_difference(name, path, mode) or _open_difference(name, path, mode, _PYC_NOTE)
            )
        elif (diff := setid_difference(nobody, path, mode)) is not None:
            diffs.append(diff)  # a file no RECORD lists that no check named: the venv's own
    return diffs


class _Owners:
    """Which distributions a folder's files are from: those whose RECORD lines lie in
    it, or in the nearest folder above it that has any. The roots, the folders on the way
    from a root to its site-packages folders and a venv's ``bin`` (every distribution's
    scripts) are nobody's: the venv's creation made them."""

    def __init__(
        self, tops: list[str], sites: list[str], entries: Iterable[Entry], nobody: str
    ) -> None:
        self.nobody = nobody
        self.shared = set(tops) | {os.path.join(t, "bin") for t in tops}
        for site in sites:
            for top in tops:
                folder = site
                while folder == top or folder.startswith(top + os.sep):
                    self.shared.add(folder)
                    folder = os.path.dirname(folder)
        inside = tuple(t + os.sep for t in tops)
        self.names: dict[str, set[str]] = {}
        self.files: dict[str, str] = {}
        for e in entries:
            self.files[e.path] = e.name
            folder = os.path.dirname(e.path)
            while folder.startswith(inside) and folder not in self.shared:
                self.names.setdefault(folder, set()).add(e.name)
                folder = os.path.dirname(folder)

    def of_bytecode(self, pyc: str) -> str:
        """The distribution of the source ``NAME.py`` beside the ``__pycache__`` that
        holds ``NAME.TAG[.opt-N].pyc`` (a top-level module's is in site-packages' own
        cache, which no distribution's folder holds); else its folder's."""
        cache, filename = os.path.split(pyc)
        source = os.path.join(os.path.dirname(cache), filename.partition(".")[0] + ".py")
        return self.files.get(source) or self.of_folder(cache)

    def of_folder(self, folder: str) -> str:
        while folder not in self.shared:
            found = self.names.get(folder)
            if found:
                return ", ".join(sorted(found))
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        return self.nobody

"""The record an environment keeps of how envship made it, and the quick look at its state.

``.envship-install.json`` (the marker) says which lock, target, groups and interpreter
an environment was made from; what the venv's creation itself wrote, anywhere in the
venv (``venv_files``: the activate scripts, ``pyvenv.cfg``, uv's ``_virtualenv.py``,
... with their sha256; ``venv_links``: ``bin/python*`` and ``lib64`` with their
targets), so ``verify`` can tell them from stray files and see them changed; and the
sha256 of each installed distribution's ``RECORD`` as the installer wrote it
(``records``). ``.envship-incomplete`` says it is being made. The quick look
(:func:`drift`) compares the installed distributions' metadata folders with the marker,
and their RECORD files with those digests: a listing and one small file per
distribution read, so a re-install of the same name and version (another wheel,
another tool) is seen too.

While a run makes an environment (and after one that did not finish) the marker says
how to make it again: the interpreter, ``compiled``, ``link_mode`` and the store the run
took its wheels from (``store``, also kept once it is complete), so the next run, and
the command ``verify`` prints to finish it, repeat the run as it was asked.

Markers written before ``venv_links`` recorded only site-packages in ``venv_files``,
and those before ``records`` kept no RECORD digests, those before ``store`` no store;
all are still read, and what they cannot tell is said where it matters (``verify``'s
notes), not checked (drift) or left to the default (the store).

A marker is written whole, in one rename, so one that cannot be used was damaged after
the fact (:class:`MarkerDamaged`, naming the key): unreadable, not a regular file (a
link is never followed, a FIFO never waited on), larger than any marker written (a link
to ``/dev/zero`` was read until the OOM killer came), no JSON, or not the shape
:func:`marker_data` writes, down to each entry every reader indexes without looking.
:func:`load_marker` tells it apart from a missing one, :func:`read_marker` does not:
install takes either for a half-made environment and makes it again, ``verify``
reports it, ``add`` and ``env check`` refuse it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from packaging.version import InvalidVersion, Version

from ._envfiles import (
    INCOMPLETE_NAME,
    WORK_SUFFIX,
    canonical_name,
    dist_infos,
    record_digest,
    record_digests,
    site_packages,
    venv_digests,
    venv_snapshot,
    write_marker_file,
)
from ._markerread import (
    FILES_KEY,
    LINKS_KEY,
    MARKER_FORMAT,
    MARKER_NAME,
    MAX_MARKER_BYTES,
    RECORDS_KEY,
    STORE_KEY,
    MarkerDamaged,
    check_marker,
    load_marker,
    read_marker,
    read_record,
)

if TYPE_CHECKING:
    from .lockfile import Artifact, LockFile
    from .targets import Target

__all__ = [
    "FILES_KEY",
    "INCOMPLETE_NAME",
    "LINKS_KEY",
    "MARKER_NAME",
    "MAX_MARKER_BYTES",
    "RECORDS_KEY",
    "STORE_KEY",
    "Drift",
    "MarkerDamaged",
    "State",
    "artifact_entry",
    "check_marker",
    "clear",
    "discard",
    "drift",
    "env_state",
    "interpreter_damage",
    "load_marker",
    "marker_data",
    "read_marker",
    "read_record",
    "record_digests",
    "site_packages",
    "store_option",
    "venv_record",
    "work_folder",
    "write_marker",
]


def work_folder(dest: Path) -> Path:
    """``DEST.envship-tmp``: where a run of install stages beside ``dest`` (a private
    uv cache, requirements, a failed new environment set aside). Its file ``lock`` is
    the lock install holds while it changes ``dest``, which ``envship add`` takes too."""
    return dest.parent / f"{dest.name}{WORK_SUFFIX}"


def store_option(marker: Mapping[str, Any]) -> str:
    """`` --store S`` when the marker's wheels came from a store other than the one
    envship takes without ``--store`` here (``$ENVSHIP_STORE``, else the user cache): a
    command printed for the user to run must find them. Empty for the default store and
    for a marker from before ``store`` was kept."""
    from .store import Store  # not at import: the store pulls in platformdirs

    store = marker.get(STORE_KEY)
    if not isinstance(store, str) or not store:
        return ""
    if os.path.realpath(store) == os.path.realpath(Store.default().root):
        return ""
    return f" --store {shlex.quote(store)}"


State = Literal["missing", "empty", "complete", "incomplete", "foreign"]


def artifact_entry(a: Artifact) -> dict[str, str]:
    return {"name": a.name, "version": a.version, "filename": a.filename, "sha256": a.sha256}


def marker_data(
    lock: LockFile,
    target: Target,
    groups: tuple[str, ...],
    base_python: str,
    python_full: str,
    artifacts: Sequence[Artifact],
    compiled: bool = False,
    venv: Mapping[str, str] | None = None,
    link_mode: str | None = None,
    links: Mapping[str, str] | None = None,
    records: Mapping[str, str] | None = None,
    store: Path | None = None,
) -> dict[str, Any]:
    """What an environment made from ``lock`` records about itself (the install marker);
    image builds write the same record into the image. ``compiled``: every installed
    module's byte-code was written at install time. ``venv`` and ``links``: the files and
    links the venv's creation wrote (:func:`venv_record`, or for an image the skeleton
    layer's :func:`envship._imageenv.skeleton_record`); None when unknown (an environment
    made before envship recorded them; ``links`` None with ``venv``
    given: a record of site-packages alone, as envship kept before). ``link_mode``: how
    uv was asked to put files in place, when it was asked (repairs keep it).
    ``records``: :func:`record_digests` of the environment as installed. ``store``: where
    its wheels came from (None for an image: the store is the build machine's)."""
    data: dict[str, Any] = {
        "format": MARKER_FORMAT,
        "lock": {"path": str(lock.path.absolute()), "digest": lock.digest},
        "name": lock.name,
        "display_name": lock.display_name,
        "target": target.to_json(),
        "groups": list(groups),
        "python": {"base": base_python, "version": python_full},
        "packages": [artifact_entry(a) for a in artifacts],
        "compiled": compiled,
    }
    if venv is not None:
        data[FILES_KEY] = dict(sorted(venv.items()))
    if links is not None:
        data[LINKS_KEY] = dict(sorted(links.items()))
    if records is not None:
        data[RECORDS_KEY] = dict(sorted(records.items()))
    if link_mode is not None:
        data["link_mode"] = link_mode
    if store is not None:
        data[STORE_KEY] = str(store)
    return data


def write_marker(dest: Path, data: dict[str, Any]) -> None:
    """Replace the install marker of the environment at ``dest`` in one rename.

    Whatever damage left at its place that is not a regular file goes first: rename(2)
    cannot replace a folder with a file, and the new marker must not take the mode of
    what a link there points to (``write_atomic`` keeps the replaced file's mode)."""
    path = dest / MARKER_NAME
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        elif not stat.S_ISREG(st.st_mode):
            path.unlink()
    write_marker_file(str(path), data)


def venv_record(dest: Path) -> tuple[dict[str, str], dict[str, str]]:
    """What a freshly made venv holds, as the venv's creation wrote it: ``(files, links)``,
    env-relative POSIX paths -> hex sha256 and -> link target. uv writes the activate
    scripts, ``pyvenv.cfg``, ``.gitignore``, ``CACHEDIR.TAG``, the ``bin/python*`` links
    and ``lib64``, and for Python < 3.10 ``_virtualenv.py`` and a ``.pth`` importing it.
    A link is recorded, never followed (``bin/python`` names the base interpreter)."""
    return venv_digests(venv_snapshot(str(dest)))


def interpreter_damage(path: Path, marker: Mapping[str, Any]) -> list[str]:
    """Whether a complete environment's ``bin/python`` still links to the base it was made
    with (the quick look at its metadata cannot see a relinked interpreter)."""
    python = path / "bin" / "python"
    base = str(marker["python"]["base"])
    # A base missing here is this machine's lack (check_env says so), not damage.
    if not os.path.exists(base):
        return []
    if not python.exists():
        return [f"{python} is missing or a link to nothing"]
    if os.path.realpath(python) != os.path.realpath(base):
        return [f"{python} runs {os.path.realpath(python)}, not {base}"]
    return []


def env_state(dest: Path) -> State:
    """What ``dest`` is to ``envship install``: nothing yet, an empty folder, a complete or
    half-made environment of ours, or something else (never touched)."""
    if not dest.exists():
        return "foreign" if dest.is_symlink() else "missing"  # a link to nothing
    if not dest.is_dir():
        return "foreign"
    if (dest / INCOMPLETE_NAME).exists():
        return "incomplete"
    if os.path.lexists(dest / MARKER_NAME):
        # The marker is written atomically, so one we cannot use (unreadable, a folder or
        # a link there, not the shape we write: :func:`load_marker`), or an env without
        # its interpreter, was damaged after the fact; the folder is still ours (it holds
        # our marker's name), and rebuilding it is the safe answer.
        usable = read_marker(dest) is not None and (dest / "bin" / "python").exists()
        return "complete" if usable else "incomplete"
    return "foreign" if any(dest.iterdir()) else "empty"


def clear(dest: Path, keep: Collection[str] = ()) -> None:
    """Empty ``dest`` but keep the folder itself (it may be a mount point or a symlink),
    the entries named in ``keep`` and, always, the incomplete mark: emptying a folder of
    thousands of files takes long enough to be killed in the middle (``docker stop``'s
    SIGKILL), and a folder left with files but no mark is foreign to every later run.
    Removing the mark is the caller's last step."""
    for child in dest.iterdir():
        if child.name in keep or child.name == INCOMPLETE_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def discard(dest: Path, aside: Path, *, keep_folder: bool) -> None:
    """Remove what a run that failed left of a new environment at ``dest`` so that at
    every instant ``dest`` is gone, empty or still marked incomplete.

    A folder the run made is renamed to ``aside`` (on the same file system: a sibling's
    folder) in one step, and removed there; whoever stops this midway leaves ``aside``
    for the next run to remove. One the user gave (``keep_folder``: maybe a mount point,
    which cannot be renamed) is emptied with its mark removed last."""
    if not keep_folder:
        shutil.rmtree(aside, ignore_errors=True)  # a leftover of one stopped midway
        try:
            os.rename(dest, aside)
        except OSError:
            pass  # emptied in place instead, below
        else:
            shutil.rmtree(aside)
            return
    clear(dest)
    (dest / INCOMPLETE_NAME).unlink(missing_ok=True)
    if not keep_folder:
        dest.rmdir()


@dataclass(frozen=True, slots=True)
class Drift:
    """How an environment's installed metadata differs from what it should hold."""

    present: tuple[str, ...] = ()  # "name==version" installed, not expected
    missing: tuple[str, ...] = ()  # "name==version" expected, not installed
    duplicated: tuple[str, ...] = ()  # names with more than one metadata folder
    replaced: tuple[str, ...] = ()  # "name==version" as expected, but its RECORD is not

    def __bool__(self) -> bool:
        return bool(self.present or self.missing or self.duplicated or self.replaced)


def drift(
    dest: Path,
    packages: Sequence[Mapping[str, str]],
    python: str | None,
    records: Mapping[str, str] | None = None,
) -> Drift:
    """Where the metadata folders in ``dest``'s site-packages (of ``python``) differ from
    ``packages`` (marker entries): a listing, like ``envship verify`` without ``--full``.
    A wrong version is both present and missing. With ``records`` (the marker's), each
    expected distribution's RECORD is hashed too: one that is not the one installed is
    ``replaced``. Names ``records`` lacks are not compared (a marker from before them)."""
    site = site_packages(dest, python)
    found = dist_infos(site) if site is not None else {}
    installed = {n: [v for v, _ in infos] for n, infos in found.items()}
    expected: dict[str, str] = {canonical_name(p["name"]): p["version"] for p in packages}
    present = [
        f"{n}=={v}"
        for n, versions in sorted(installed.items())
        for v in versions
        if not _same(expected.get(n), v)
    ]
    missing = [
        f"{n}=={v}"
        for n, v in sorted(expected.items())
        if not any(_same(v, got) for got in installed.get(n, []))
    ]
    duplicated = [n for n, versions in sorted(installed.items()) if len(versions) > 1]
    replaced = [
        f"{n}=={v}"
        for n, v in sorted(expected.items())
        if records is not None
        and isinstance(digest := records.get(n), str)
        and len(infos := found.get(n, [])) == 1
        and _same(v, infos[0][0])
        and record_digest(infos[0][1]) != digest
    ]
    return Drift(tuple(present), tuple(missing), tuple(duplicated), tuple(replaced))


def _same(a: str | None, b: str) -> bool:
    if a is None or a == b:
        return a == b
    try:  # a folder name may spell the version unnormalized (1.0 vs 1.0.0)
        return Version(a) == Version(b)
    except InvalidVersion:
        return False

"""Export a static package index for networks that cannot reach PyPI.

``export_index`` lays out, for every artifact a lock selects::

    OUT/files/<filename>              the artifact (a clone or a copy of the store's)
    OUT/files/<wheel>.metadata        the wheel's METADATA (PEP 658; sdists get none)
    OUT/simple/index.html             project list (PEP 503)
    OUT/simple/<name>/index.html      files of one project (PEP 503, 592, 629, 658, 714)
    OUT/simple/index.json             the same as JSON (PEP 691, api-version 1.1 / PEP 700)
    OUT/simple/<name>/index.json
    OUT/pylock.toml                   the lock, each artifact at ``files/<filename>`` (PEP 751)

Every href is relative, so the tree works from ``file://`` and from any static web
server. A static server does not negotiate content types (PEP 691 asks servers to pick
JSON or HTML from the ``Accept`` header), so installers get the HTML pages; the
``index.json`` files are there for clients that ask for them by path and for a server
configured to map ``application/vnd.pypi.simple.v1+json`` onto them.

The tree is built in a staging folder next to OUT (``.OUT.tmp-*``) and put in place
only when complete, in one step where the file system can exchange two names
(:mod:`envship._swap`): a failed export (a missing or corrupt artifact) leaves OUT as it
was, and a reader, or a run killed at any point, finds the previous export or the new
one, never none. What a killed export left there is removed by the next one.

An export narrowed to some targets or groups holds files for those only, and its lock
says so: ``environments``, ``dependency-groups``, ``default-groups`` and the
``[tool.envship]`` targets keep only what was chosen, so an installer asked for another
platform refuses the lock instead of installing part of an environment.

Every file in OUT is OUT's own, never a hard link of the store's: OUT is a folder
that gets served, and what is done to it (``chown -R`` to the web server's user,
``chmod -R a+w``, an edit) must not reach the store's content-addressed files; nor may
an export keep a damaged store file's inode after ``fetch --verify`` replaced it. The
artifacts are cloned where the file system shares extents copy-on-write (btrfs, XFS:
no space taken), else copied (:mod:`envship._copyfile`), and each is hashed as placed:
a store file that no longer matches the lock fails the export.

The pages are rendered by :mod:`envship._simplepages` and the lock rewritten by
:mod:`envship._exportlock`; this module lays the tree out and puts it in place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import tomli_w
from packaging.utils import canonicalize_name

from ._copyfile import copy_hashed
from ._diskfull import is_disk_full
from ._exportlock import localized_lock
from ._fetchcommand import fetch_command

# The page renderers are re-exported: they were defined here, and callers import them
# from this module.
from ._simplepages import API_VERSION as API_VERSION
from ._simplepages import (
    IndexFile,
    file_href,
    file_url,
    project_dir,
    render_project_html,
    render_project_json,
    render_root_html,
    render_root_json,
)
from ._swap import Staging, sweep
from .errors import ArtifactError, IndexExportError, IndexExportInputError, Problem
from .lockfile import LOCK_FILENAME, Artifact, LockFile
from .store import Store
from .targets import Target

__all__ = [
    "MARKER_FILENAME",
    "IndexExport",
    "IndexFile",
    "export_index",
    "file_href",
    "file_url",
    "project_dir",
    "render_project_html",
    "render_project_json",
    "render_root_html",
    "render_root_json",
]

#: Present in every export; only a directory holding it is replaced without ``force``.
MARKER_FILENAME = ".envship-index"
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True, slots=True)
class IndexExport:
    """What :func:`export_index` wrote."""

    out: Path
    projects: int
    files: int
    lock: Path
    targets: tuple[str, ...] = ()  # the lock targets the export serves
    groups: tuple[str, ...] = ()  # the dependency groups it holds

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "projects": self.projects,
            "files": self.files,
            "lock": str(self.lock),
            "index_url": (self.out / "simple").resolve().as_uri(),
            "targets": list(self.targets),
            "groups": list(self.groups),
        }


def wheel_metadata(wheel: Path, name: str, version: str) -> bytes:
    """The bytes of the wheel's ``<dist-info>/METADATA`` (PEP 427 layout)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            # PEP 427: exactly one top-level ``{distribution}-{version}.dist-info``; pick
            # it by name, as the name in the file name may differ in case and separators.
            tops = {n.split("/", 1)[0] for n in names if "/" in n}
            infos = [t for t in tops if t.endswith(".dist-info")]
            project = canonicalize_name(name)
            matching = [t for t in infos if _dist_name(t) == project]
            if len(matching) != 1:
                found = ", ".join(sorted(infos)) or "none"
                raise IndexExportError(
                    f"{wheel.name}: cannot find the one .dist-info directory of {name}",
                    problems=[Problem(wheel.name, f".dist-info directories: {found}")],
                )
            return zf.read(f"{matching[0]}/METADATA")
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise IndexExportError(
            f"{wheel.name}: not a readable wheel ({exc})",
            hint=f"{name} {version} in the store may be damaged; re-fetch it",
        ) from None


def _dist_name(dist_info: str) -> str:
    return canonicalize_name(dist_info.removesuffix(".dist-info").rpartition("-")[0])


def _requires_python(metadata: bytes) -> str | None:
    value = BytesHeaderParser().parsebytes(metadata).get("Requires-Python")
    if value is None:
        return None
    return str(value).strip() or None


def _place(src: Path, dest: Path, artifact: Artifact, repair: str) -> int:
    """Clone or copy ``src`` to a new file ``dest``, check the bytes placed there against
    the lock (``repair``: the command that replaces a damaged store file), and return
    their size."""
    # Hash what the index will serve, not what we meant to copy: the copy's bytes as
    # they are written, a clone's as read back.
    placed = copy_hashed(src, dest)
    # The fields fetch's and the store's integrity errors have: the hash, or else the size.
    wrong = (
        (artifact.sha256, placed.sha256)
        if placed.sha256 != artifact.sha256
        else (str(artifact.size), str(placed.size))
        if artifact.size is not None and placed.size != artifact.size
        else None
    )
    if wrong is not None:
        raise ArtifactError(
            f"{artifact.filename}: the store's copy does not match the lock, refusing it",
            artifact=artifact.filename,
            expected=wrong[0],
            actual=wrong[1],
            hint=f"`{repair}` replaces it ({src}); a corrupt store must not become an index",
        )
    return placed.size


def _check_out(out: Path, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    previous = out.is_dir() and (out / MARKER_FILENAME).is_file()
    empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    if not (previous or empty or force):
        raise IndexExportInputError(
            f"{out} exists and is not an envship index export; refusing to replace it",
            hint="choose another directory, or pass --force to replace it",
        )


def _check_inputs(out: Path, store: Store, lock: Path) -> None:
    """Refuse an OUT whose replacement would take the export's own inputs with it: the
    store (OUT is it, inside it, or holds it) or the lock being read. ``--force`` only
    says that OUT may be a folder that is no earlier export; it never covers these."""
    real_out = Path(os.path.realpath(out.parent)) / out.name  # as Staging replaces it
    stores = {store.root, Path(os.path.realpath(store.root))}
    problems = [
        Problem(str(out), f"{what} the store {store.root}")
        for what, hit in (
            ("is", any(real_out == s for s in stores)),
            ("is inside", any(real_out != s and real_out.is_relative_to(s) for s in stores)),
            ("holds", any(real_out != s and s.is_relative_to(real_out) for s in stores)),
        )
        if hit
    ]
    locks = {lock.absolute(), Path(os.path.realpath(lock))}
    if any(p.is_relative_to(real_out) for p in locks):
        problems.append(Problem(str(out), f"holds the lock {lock}"))
    if problems:
        raise IndexExportInputError(
            f"refusing to export to {out}: replacing it would remove what the export reads",
            problems=problems,
            hint="export to a folder of its own, outside the store and the lock's folder",
        )


def _normalized(out: Path) -> Path:
    """``out`` absolute and without ``..``: the path the result (and the CLI) shows.

    The parent is resolved, not ``out`` itself: a symlink at ``out`` is replaced by the
    export (renameat2 and rename(2) act on the link itself), never followed.
    """
    absolute = out.absolute()
    if absolute.name == "..":  # "x/..": no name of its own to keep
        return absolute.resolve()
    return absolute.parent.resolve() / absolute.name


def _staging_names(out: Path) -> tuple[str, list[str]]:
    """The prefix of OUT's staging folders, and (``.OUT.old-``) the one where an older
    envship moved the previous export aside."""
    return f".{out.name}.tmp-", [f".{out.name}.old-"]


def export_index(
    lock: LockFile,
    store: Store,
    out: Path,
    *,
    targets: Sequence[str] | None = None,
    groups: Collection[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> IndexExport:
    """Write a static simple index and a localized lock for what ``lock`` selects.

    Raises :class:`StoreError` naming every artifact missing from ``store``,
    :class:`ArtifactError` for one whose bytes do not match the lock, and
    :class:`IndexExportError` when ``out`` exists but is no earlier export (unless
    ``force``), or when it is, holds or lies inside the store, or holds the lock (even
    with ``force``). Nothing at ``out`` changes unless the whole export succeeds, and
    then in one step where the file system can exchange two names (never missing in
    between). What exports to ``out`` that were killed left beside it goes first.
    """
    out = _normalized(Path(out))
    _check_inputs(out, store, lock.path)
    # First, whatever else fails: a run killed between the two renames of a file system
    # without RENAME_EXCHANGE left OUT missing, and this puts the previous export back.
    prefix, legacy = _staging_names(out)
    sweep(out.parent, prefix, legacy=legacy)
    artifacts = lock.artifacts(targets, groups=groups)  # refuses unknown targets, groups
    chosen = [lock.target(n) for n in targets] if targets else list(lock.targets)
    chosen_groups = sorted(set(lock.groups) if groups is None else set(groups))
    missing = [a for a in artifacts if not store.has(a.sha256)]
    if missing:
        fetch = fetch_command(lock.path, store, targets=targets, groups=groups)
        raise store.missing_error(missing, len(artifacts), fetch)
    seen: dict[str, Artifact] = {}
    clashes = [a for a in artifacts if seen.setdefault(a.filename, a) is not a]
    if clashes:  # one directory of files: a file name must mean one set of bytes
        raise IndexExportError(
            "the lock has different files with the same name",
            problems=[Problem(a.filename, f"{a.name} {a.version}") for a in clashes],
        )
    _check_out(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with Staging(out.parent, prefix, legacy=legacy) as staging:
            tmp = staging.path / "new"
            tmp.mkdir()  # the mode the umask gives, as OUT's subfolders get (not 0700)
            # Pasted from any folder, narrowed as the export is: fetch then checks (at
            # least) the artifacts this export needs.
            repair = fetch_command(lock.path, store, targets=targets, groups=groups, verify=True)
            projects = _write_tree(
                tmp, lock, store, artifacts, chosen, chosen_groups, repair, progress
            )
            _check_out(out, force)  # again: something may have appeared at OUT meanwhile
            staging.replace(tmp, out)
    except OSError as exc:
        raise _write_error(out, store, exc) from None
    return IndexExport(
        out=out,
        projects=projects,
        files=len(artifacts),
        lock=out / LOCK_FILENAME,
        targets=tuple(t.name for t in chosen),
        groups=tuple(chosen_groups),
    )


def _write_error(out: Path, store: Store, exc: OSError) -> IndexExportError:
    """The export failed writing: OUT is as it was and the staging folder is gone
    (:class:`Staging` removes it however the block ends). A full disk or a spent quota is
    said as install, fetch and image build say it (:mod:`envship._diskfull`), with the
    remedy: freeing space helps, a writable folder does not."""
    # A copy's error names the file it read or wrote (envship._copyfile); one with two
    # names (a rename) carries the one being written second.
    written = exc.filename2 if exc.filename2 is not None else exc.filename
    where = [Problem(str(written), exc.strerror or str(exc))] if written is not None else []
    if not is_disk_full(exc):
        return IndexExportError(f"cannot write the index at {out}: {exc}", problems=where)
    # OUT's files are its own, never hard links of the store's (see the module's
    # docstring): copies, which take their size, unless cloned copy-on-write.
    copies = (
        " OUT's files are copies of the store's artifacts, never links to them, so they "
        "need their size free (copy-on-write clones, which need none, are made only on the "
        f"store's own file system, where that is btrfs or XFS; the store is {store.root})."
    )
    return IndexExportError(
        f"the disk holding {out} is full",
        problems=where or [Problem(str(out), os.strerror(exc.errno or errno.ENOSPC))],
        hint=f"free space there (or export to a larger disk) and re-run; {out} was left as "
        f"it was and nothing of this export was kept.{copies}",
    )


def _write_tree(
    tmp: Path,
    lock: LockFile,
    store: Store,
    artifacts: Sequence[Artifact],
    targets: Sequence[Target],
    groups: Sequence[str],
    repair: str,
    progress: Progress | None,
) -> int:
    lock_python = {
        (canonicalize_name(str(p.name)), str(p.version)): p.requires_python
        for p in lock.pylock.packages
    }
    files_dir = tmp / "files"
    files_dir.mkdir()
    projects: dict[str, tuple[str, list[IndexFile]]] = {}
    sizes = [store.size(a.sha256, a.size) for a in artifacts]
    total, done = sum(sizes), 0
    for artifact, size in zip(artifacts, sizes, strict=True):
        dest = files_dir / artifact.filename
        placed = _place(store.path(artifact.sha256), dest, artifact, repair)
        done += size
        if progress is not None:
            progress(done, total, artifact.filename)
        requires = lock_python.get((canonicalize_name(artifact.name), artifact.version))
        requires_python, metadata_sha = (str(requires) if requires else None), None
        if artifact.kind == "wheel":
            metadata = wheel_metadata(dest, artifact.name, artifact.version)
            (files_dir / f"{artifact.filename}.metadata").write_bytes(metadata)
            metadata_sha = hashlib.sha256(metadata).hexdigest()
            requires_python = _requires_python(metadata) or requires_python
        entry = IndexFile(
            artifact.filename,
            artifact.version,
            artifact.sha256,
            placed,
            requires_python,
            metadata_sha,
        )
        projects.setdefault(project_dir(artifact.name), (artifact.name, []))[1].append(entry)
    simple = tmp / "simple"
    simple.mkdir()
    (simple / "index.html").write_text(render_root_html(list(projects)), "utf-8")
    _write_json(simple / "index.json", render_root_json(list(projects)))
    for key, (name, entries) in projects.items():
        (simple / key).mkdir()
        (simple / key / "index.html").write_text(render_project_html(name, entries), "utf-8")
        _write_json(simple / key / "index.json", render_project_json(name, entries))
    localized = localized_lock(lock, artifacts, targets, groups)
    (tmp / LOCK_FILENAME).write_text(tomli_w.dumps(localized), "utf-8")
    from . import __version__  # here, not at the top: the package may import this module

    marker = {"created-by": f"envship {__version__}", "lock-digest": lock.digest}
    names = sorted(t.name for t in targets)
    extra = {"lock": str(lock.path), "targets": names, "groups": list(groups)}
    _write_json(tmp / MARKER_FILENAME, {**marker, **extra})
    return len(projects)


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", "utf-8")

"""The content-addressed artifact store.

Layout: ``ROOT/sha256/ab/abcdef...`` holds the bytes of the artifact whose sha256 is
``abcdef...``; nothing else is ever at that path. A file becomes visible only by an
atomic ``rename`` from ``ROOT/tmp/`` after its size and hash were checked, so a reader
(another process, another machine on a shared volume) sees a whole, verified artifact
or nothing. Partial downloads live in ``ROOT/partial/`` so an interrupted fetch resumes.

``ROOT/named/<sha256>/<filename>`` gives an artifact its real file name for installers:
a hard link of the content file, or, where hard links fail (another file system, or one
without them), a separate copy, which can be damaged on its own (:meth:`Store.named`,
:meth:`Store.repair_named`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import platformdirs

from ._denied import unwritable
from .errors import ArtifactError, Problem, StoreError

__all__ = ["Store", "sha256_file"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

#: What :meth:`Store.check` finds at an artifact's path.
State = Literal["missing", "damaged", "ok"]


class Wanted(Protocol):
    """A locked artifact as the store's errors name it (:class:`envship.lockfile.Artifact`)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def filename(self) -> str: ...
    @property
    def sha256(self) -> str: ...


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Store:
    """A store rooted at ``root``; safe to share between processes and machines."""

    root: Path

    def __post_init__(self) -> None:
        # Absolute, because paths under the root end up in file:// URLs handed to uv, and
        # a relative one cannot be expressed as a URL (or survives a chdir).
        object.__setattr__(self, "root", Path(os.path.abspath(self.root)))

    @classmethod
    def default(cls) -> Store:
        """``$ENVSHIP_STORE``, else ``store`` in the user cache dir."""
        env = os.environ.get("ENVSHIP_STORE")
        if env:
            return cls(Path(env).expanduser())
        return cls(Path(platformdirs.user_cache_dir("envship")) / "store")

    @classmethod
    def at(cls, root: Path | str | None) -> Store:
        return cls(Path(root).expanduser()) if root else cls.default()

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise StoreError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def missing_error(self, missing: Sequence[Wanted], total: int, fetch: str) -> StoreError:
        """The one error for locked artifacts this store lacks: each named, and how to get
        them (``fetch``: the command). When it holds none of them, the likelier cause is a
        store other than the one they were fetched into, and the hint says so first."""
        hint = f"fetch them: {fetch}"
        if len(missing) == total:
            hint = (
                f"{self.root} holds none of them: if they were fetched into another store, "
                f"name it with --store or ENVSHIP_STORE; else {hint}"
            )
        return StoreError(
            f"{len(missing)} of {total} locked artifacts are not in the store {self.root}",
            problems=[
                Problem(f"{a.name} {a.version}", f"{a.filename} (sha256 {a.sha256})")
                for a in missing
            ],
            hint=hint,
        )

    def size(self, sha256: str, declared: int | None = None) -> int:
        """``declared`` (the lock's size), else the stored file's; 0 when neither is known.

        For totals shown to people: locks made from indexes without PEP 700 sizes carry
        none, and the store knows what it holds."""
        if declared is not None:
            return declared
        try:
            return self.path(sha256).stat().st_size
        except OSError:
            return 0

    def check(self, sha256: str, size: int | None = None, *, full: bool = False) -> State:
        """Whether the artifact is here and whole, at the cost of one ``stat``.

        Store files are committed verified and read-only, but a shared volume has other
        writers (a stray ``>``, a disk that filled up under someone's editor, an rsync
        that died): a file whose size is not ``size`` is ``"damaged"``. Without a size
        (locks made from PEP 503 HTML pages carry none) only an empty file is known to
        be damaged, as no locked artifact is empty. ``full`` also hashes the file: the
        only way to find same-size damage, and it reads every byte.
        """
        path = self.path(sha256)
        try:
            st = path.stat()
        except OSError:  # as Path.is_file: unreadable counts as absent
            return "missing"
        if not stat.S_ISREG(st.st_mode):
            return "missing"
        if size is not None and st.st_size != size:
            return "damaged"
        if st.st_size == 0 and sha256 != _EMPTY_SHA256:
            return "damaged"
        if full:
            try:
                if sha256_file(path) != sha256:
                    return "damaged"
            except OSError:
                return "damaged"
        return "ok"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def partial_dir(self) -> Path:
        return self.root / "partial"

    def ensure(self) -> None:
        try:
            for d in (self.root / "sha256", self.tmp_dir, self.partial_dir):
                self._folder(d)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and exc.filename:
                # The store (or a folder above it) exists but this user may not write
                # there: say whose it is, not that it cannot be created.
                raise unwritable(
                    f"the store at {self.root}",
                    Path(exc.filename).parent,
                    "ask the store's owner for write access (a group-shared store: "
                    "chmod 2775 and the same group), or pass --store DIR or set "
                    "ENVSHIP_STORE to a folder you can write",
                ) from None
            raise StoreError(
                f"cannot create the store at {self.root}: {exc.strerror}",
                hint="pass --store DIR or set ENVSHIP_STORE to a writable folder",
            ) from None

    def _folder(self, folder: Path) -> None:
        """Make ``folder`` (and what leads to it) unless it is there. Something else in its
        place, or on the way, is named with what it is: the system only says "File
        exists" or "Not a directory", and a writable store is no reason to pick another."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise self._in_the_way(folder) from None

    def _in_the_way(self, folder: Path) -> StoreError:
        """The error for ``folder``, which the store needs, when a file (or a link to one,
        or to nothing) holds its place or that of a folder above it."""
        on_the_way = [*reversed(folder.parents), folder]
        blocker = next((p for p in on_the_way if os.path.lexists(p) and not p.is_dir()), folder)
        what = _described(blocker)
        if blocker == self.root or self.root.is_relative_to(blocker):
            return StoreError(
                f"cannot create the store at {self.root}: {blocker} is {what}, not a folder",
                problems=[Problem(str(blocker), f"{what}; a store is a folder")],
                hint="pass --store DIR or set ENVSHIP_STORE to a folder (or to a path that "
                f"does not exist yet), or move {blocker} away",
            )
        layout = blocker.relative_to(self.root)
        return StoreError(
            f"the store {self.root} has {what} at {blocker}, where the store keeps its "
            f"folder {layout}/",
            problems=[Problem(str(blocker), f"{what}; the store needs a folder here")],
            hint=f"move {blocker} out of the store (or remove it; envship writes no file "
            "there) and re-run: the folder is made again",
        )

    def commit(
        self,
        staged: Path,
        sha256: str,
        *,
        name: str,
        size: int | None = None,
        source: str | Path | None = None,
    ) -> Path:
        """Verify ``staged`` (a file inside this store) and move it into place atomically.

        A file whose bytes do not match is deleted and refused, naming ``name``, and the
        hint blames its ``source``: a URL (an index, or a proxy on the way) or a local
        file (a lock's ``path``, or a ``file:`` URL), which it names.
        """
        actual_size = staged.stat().st_size
        if size is not None and actual_size != size:
            staged.unlink(missing_ok=True)
            raise ArtifactError(
                f"{name}: size mismatch ({actual_size} bytes, the lock says {size}), refusing it",
                artifact=name,
                expected=str(size),
                actual=str(actual_size),
                hint=corrupt_source(source),
            )
        actual = sha256_file(staged)
        if actual != sha256:
            staged.unlink(missing_ok=True)
            raise ArtifactError(
                f"{name}: sha256 mismatch, refusing it",
                artifact=name,
                expected=sha256,
                actual=actual,
                hint=corrupt_source(source),
            )
        final = self.path(sha256)
        try:
            self._folder(final.parent)
        except StoreError:
            staged.unlink(missing_ok=True)
            raise
        os.chmod(staged, 0o444)
        replacing = final.exists()
        # rename is atomic on POSIX: concurrent writers of the same content both succeed
        # and readers never see a half-written file. It also replaces a damaged file
        # (see check) in one step, so no reader ever finds the artifact missing.
        try:
            os.replace(staged, final)
        except IsADirectoryError:
            # A folder at the content path (nothing envship makes; see check, which
            # counts it as missing): rename(2) cannot put a file over it.
            staged.unlink(missing_ok=True)
            raise StoreError(
                f"the store {self.root} has a folder at {final}, where it keeps the "
                f"artifact {name} as a file",
                problems=[
                    Problem(
                        str(final),
                        "a folder; the store keeps each artifact as a file named by its sha256",
                    )
                ],
                hint=f"move {final} out of the store (or remove it; envship never makes a "
                "folder there) and re-run: the artifact is put in its place",
            ) from None
        if replacing:
            self._relink_named(sha256, final)
        return final

    def _relink_named(self, sha256: str, final: Path) -> None:
        """Point ``named/<sha256>/*`` at the file just committed.

        Those are hard links (or copies where links fail): after a damaged file was
        replaced they still hold the damaged inode, and :meth:`named` would keep handing
        it out.
        """
        folder = self.root / "named" / sha256
        try:
            current = final.stat()
            entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        except OSError:
            return  # nothing named yet (the usual case)
        for entry in entries:
            with contextlib.suppress(OSError):
                # A read-only share fails here: install's private copy is made from final.
                if not _same_file(entry.stat(), current):
                    _put(final, entry, copy=True)

    def named(self, sha256: str, filename: str) -> Path:
        """The artifact under its real file name, at a path that never changes.

        Installers read a wheel's tags from its file name, so the sha256-named content
        file cannot be handed to them. The path is stable on purpose: uv caches local
        wheels by path and modification stamp, so a second install of the same artifact
        reuses uv's unpacked copy instead of unzipping it again (measured: 1.75 s vs
        0.2 s for the data-science set when every install staged fresh links).

        Only a hard link of the content file is the content for certain. A separate file
        there (the copy made where links fail, or a file someone put over the link) is
        replaced by a link when one can be made now, else by a fresh copy unless its
        size is right: finding same-size damage takes a hash, which ``envship fetch
        --verify`` pays (:meth:`repair_named`) and a failed install pays to name the
        file. The content file must be in the store (an ``OSError`` if not).
        """
        if "/" in filename or filename in ("", ".", ".."):
            raise StoreError(f"unsafe artifact file name {filename!r}")
        final = self.root / "named" / sha256 / filename
        source = self.path(sha256)
        content = source.stat()
        try:
            have: os.stat_result | None = final.stat()
        except OSError:
            have = None
        if have is not None and stat.S_ISREG(have.st_mode):
            if _same_file(have, content):
                return final
            if _put(source, final, copy=False):
                return final  # a separate copy became a link: the content again
            if have.st_size == content.st_size:
                return final  # links fail here; the copy is as good as a stat can tell
        final.parent.mkdir(parents=True, exist_ok=True)
        _put(source, final, copy=True)  # concurrent callers both succeed with equal bytes
        return final

    def damaged_named(self, sha256: str) -> list[tuple[Path, str]]:
        """The artifact's named copies whose bytes are not it, each with its sha256.

        A hard link of the content file is not hashed: it is the content file, whose
        own check is :meth:`check`. Unreadable copies are left out (whoever reads them
        gets the system's error)."""
        folder = self.root / "named" / sha256
        try:
            content: os.stat_result | None = self.path(sha256).stat()
        except OSError:
            content = None
        try:
            entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        except OSError:
            return []  # nothing named yet
        damaged: list[tuple[Path, str]] = []
        for entry in entries:
            with contextlib.suppress(OSError):
                st = entry.stat()
                linked = content is not None and _same_file(st, content)
                if linked or not stat.S_ISREG(st.st_mode):
                    continue
                actual = sha256_file(entry)
                if actual != sha256:
                    damaged.append((entry, actual))
        return damaged

    def repair_named(self, sha256: str) -> tuple[Path, ...]:
        """Hash the artifact's separate named copies and replace each damaged one from
        the content file (verified by the caller), atomically: a link or copy under a
        temporary name, then a rename over it. Returns the copies replaced; a
        :class:`StoreError` names one that cannot be replaced."""
        repaired: list[Path] = []
        for entry, _actual in self.damaged_named(sha256):
            try:
                _put(self.path(sha256), entry, copy=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot replace the damaged copy {entry}: {exc.strerror}",
                    hint="delete it (envship makes it again from the store's content file), "
                    "or run `envship fetch --verify` as a user who can write the store",
                ) from None
            repaired.append(entry)
        return tuple(repaired)

    def named_or_private(self, sha256: str, filename: str, private: Path) -> Path:
        """:meth:`named`, or, when the store is read-only (shared), a hard link or copy
        at ``private/<sha256>/<filename>``: correct, but uv's path-keyed cache misses it."""
        try:
            return self.named(sha256, filename)
        except OSError:
            dest = private / sha256 / filename
            if not dest.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.path(sha256), dest)
                except OSError:
                    shutil.copyfile(self.path(sha256), dest)
            return dest

    def add_file(self, source: Path, sha256: str | None = None, *, name: str = "") -> Path:
        """Copy a local file into the store (verifying ``sha256`` when given)."""
        self.ensure()
        expected = sha256 or sha256_file(source)
        if self.has(expected):
            return self.path(expected)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="add-")
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
            return self.commit(Path(tmp), expected, name=name or source.name, source=source)
        finally:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()


def corrupt_source(source: str | Path | None) -> str:
    """Where bytes that are not the lock's came from, as a hint: a local file is named
    (nobody else served it), a URL is not (it may carry credentials); unknown, both."""
    if isinstance(source, str) and source[:5].lower() == "file:":
        # url2pathname is unquote on POSIX; urllib.request would import http and ssl.
        source = Path(urllib.parse.unquote(urllib.parse.urlsplit(source).path))
    if isinstance(source, Path):
        return (
            f"the local file {source} holds other bytes than the lock records; if the lock "
            "is right, that file is corrupt or was replaced: put the locked file back"
        )
    if source is None:
        return (
            "the source served other bytes than the lock records; if the lock is right, "
            "it is corrupt or tampered with (an index or a proxy on the way, or the local "
            "file a lock's path names)"
        )
    return (
        "the index served other bytes than the lock records; if the lock is right, the "
        "index or a proxy is corrupt or tampered with"
    )


def _described(path: Path) -> str:
    """What is at ``path``, for an error that finds it where a folder belongs."""
    try:
        st = os.lstat(path)
    except OSError:
        return "something this user cannot look at"
    if stat.S_ISLNK(st.st_mode):
        try:
            to = os.readlink(path)
        except OSError:
            return "a symbolic link"
        return f"a symbolic link to {to}" + ("" if os.path.exists(path) else " (missing)")
    if stat.S_ISREG(st.st_mode):
        return f"a file of {st.st_size} bytes"
    return "a special file"


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _put(source: Path, dest: Path, *, copy: bool) -> bool:
    """Make ``dest`` a hard link of ``source`` (free, and content files are read-only)
    or, with ``copy`` where linking fails, a read-only copy of it; either is written
    under a unique temporary name beside ``dest`` and renamed over it, so ``dest`` never
    goes missing or holds part of a file. False when no link could be made and ``copy``
    is not allowed."""
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        try:
            os.link(source, tmp)
        except OSError:
            if not copy:
                return False
            shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()

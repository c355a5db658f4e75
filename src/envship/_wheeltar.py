"""Install a wheel straight into an image layer, for a virtual environment inside the image.

pypa/installer does the wheel side (PEP 427: the ``.data`` schemes, entry points, the
rewritten RECORD); this module is its :class:`~installer.destinations.WheelDestination`
that writes into a :class:`~envship.layer.LayerWriter` instead of the build machine's
file system. Nothing runs and nothing is unpacked to disk: each member streams from the
zip into the tar, and is hashed on the way for the new RECORD.

Paths are image paths. The scheme is a venv's (``sysconfig``'s ``venv`` scheme, which pip
and uv use too): purelib and platlib ``lib/pythonX.Y/site-packages``, scripts ``bin``, data
the prefix, headers ``include/site/pythonX.Y/NAME``. Scripts name the image's interpreter in
their shebang, never the build machine's: console and GUI entry points through
:class:`installer.scripts.Script`, and ``.data/scripts`` files whose first line is
``#!python`` through :func:`installer.utils.fix_shebang`, the rewrite PEP 427 asks for.
Byte-code is compiled only when the caller passes a :class:`~envship._bytecode.Compiler`
for the image's Python version: each ``.py`` file of site-packages gets its
``__pycache__/NAME.TAG.pyc`` right after the wheel's files (not in RECORD, as with uv).

The same wheel with the same scheme and interpreter always gives the same entries in the
same order: installer walks entry points in file order, then the zip's members in archive
order, then the extra metadata; the RECORD is sorted.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import posixpath
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from installer import install
from installer.destinations import WheelDestination
from installer.exceptions import InstallerError
from installer.records import Hash, RecordEntry
from installer.scripts import Script
from installer.sources import WheelContentElement, WheelFile
from installer.utils import Scheme, construct_record_file, fix_shebang, parse_metadata_file

from .errors import ArtifactError, EnvshipError, ImageError, Problem
from .layer import LayerWriter

if TYPE_CHECKING:
    from installer.scripts import ScriptSection

    from ._bytecode import Compiler

__all__ = ["INSTALLER", "Locked", "VenvScheme", "WheelInstall", "write_wheel"]

#: Written to each distribution's ``INSTALLER`` file (PEP 376).
INSTALLER = b"envship\n"
HASH_ALGORITHM = "sha256"
_PYTHON_VERSION = re.compile(r"^3\.\d{1,3}$")
# PEP 508 / core metadata project name; it becomes a folder name under include/site.
_PROJECT_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
# Linux reads at most 127 bytes of a "#!" line before 5.1 (BINPRM_BUF_SIZE was 128).
_MAX_SHEBANG = 127


@dataclass(frozen=True, slots=True)
class VenvScheme:
    """Where a wheel's schemes go in a virtual environment at ``prefix`` in the image."""

    prefix: str  # absolute image path, e.g. "/opt/envship/venv"
    python_version: str  # "3.11"

    @classmethod
    def for_python(cls, prefix: str, python_version: str) -> VenvScheme:
        """Check ``prefix`` (absolute, normalized, not ``/``) and ``python_version`` (X.Y)."""
        problems = []
        if (
            not prefix.startswith("/")
            or posixpath.normpath(prefix) != prefix
            or prefix.startswith("//")
            or prefix == "/"
            or any(c.isspace() or c == "\0" for c in prefix)
        ):
            problems.append(
                Problem("prefix", f"{prefix!r} is not an absolute, normalized folder below /")
            )
        if not _PYTHON_VERSION.match(python_version):
            problems.append(Problem("python_version", f"{python_version!r} is not X.Y"))
        if problems:
            raise ImageError(
                "invalid virtual environment scheme",
                problems=problems,
                hint="e.g. VenvScheme.for_python('/opt/envship/venv', '3.11')",
            )
        return cls(prefix, python_version)

    @property
    def site_packages(self) -> str:
        return f"{self.prefix}/lib/python{self.python_version}/site-packages"

    def paths(self, name: str) -> dict[str, str]:
        """The scheme for distribution ``name`` (only ``headers`` depends on it)."""
        return {
            "purelib": self.site_packages,
            "platlib": self.site_packages,
            "headers": f"{self.prefix}/include/site/python{self.python_version}/{name}",
            "scripts": f"{self.prefix}/bin",
            "data": self.prefix,
        }


@dataclass(frozen=True, slots=True)
class WheelInstall:
    """What :func:`write_wheel` put into the layer for one wheel."""

    name: str  # from METADATA
    version: str
    dist_info: str  # image path of the .dist-info folder
    files: int  # regular files written, RECORD included
    bytes: int  # their uncompressed size
    scripts: tuple[str, ...] = field(default=())  # image paths of files in the scripts scheme
    compiled: int = 0  # .pyc files written (not counted in ``files``)
    warnings: tuple[str, ...] = ()  # what pypa/installer warned of (e.g. a skipped file)


@dataclass(frozen=True, slots=True)
class Locked:
    """What the lock promises of a wheel's bytes (its sha256, and its size when the lock
    records one), and how to get those bytes back (``repair``, the hint)."""

    sha256: str
    size: int | None = None
    repair: str | None = None


def _checked(f: BinaryIO, where: str, locked: Locked | None) -> BinaryIO:
    """``f``, rewound, once all of it was hashed against the lock. The store checked
    these bytes when it took them, but it is a folder on a shared volume: they can have
    changed since, even into a wheel whose RECORD was rehashed to match, which nothing
    later notices."""
    if locked is None:
        return f
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(1 << 20):
        h.update(chunk)
        size += len(chunk)
    actual = h.hexdigest()
    if actual == locked.sha256 and (locked.size is None or size == locked.size):
        f.seek(0)
        return f
    name = os.path.basename(where)
    problems = []
    if actual != locked.sha256:
        problems.append(Problem(where, f"sha256 {actual}, the lock says {locked.sha256}"))
    if locked.size is not None and size != locked.size:
        problems.append(Problem(where, f"{size} bytes, the lock says {locked.size}"))
    # The fields fetch's and the store's integrity errors have: the hash, or else the size.
    expected, found = (
        (locked.sha256, actual) if actual != locked.sha256 else (str(locked.size), str(size))
    )
    error = ArtifactError(
        f"{name}: the store's copy does not match the lock, refusing it",
        artifact=name,
        expected=expected,
        actual=found,
        hint=locked.repair or "`envship fetch --verify` replaces it",
    )
    error.problems = tuple(problems)
    raise error


class _Member:
    """A zip member's stream that knows its size and its RECORD hash.

    :meth:`LayerWriter.add_stream` needs the size before the bytes; ``installer`` hands
    destinations bare streams, so the source wraps them.
    """

    def __init__(self, stream: BinaryIO, size: int, record_hash: str) -> None:
        self.stream = stream
        self.size = size
        self.record_hash = record_hash  # "sha256=..." from the wheel's RECORD, or ""

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n)

    def readline(self, limit: int = -1) -> bytes:
        return self.stream.readline(limit)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()


class _Source(WheelFile):
    """installer's zip source, whose streams carry their size and RECORD hash."""

    def __init__(self, f: zipfile.ZipFile) -> None:
        super().__init__(f)
        self.sizes = {info.filename: info.file_size for info in f.infolist()}

    def get_contents(self) -> Iterator[WheelContentElement]:
        for record, stream, is_executable in super().get_contents():
            member = _Member(stream, self.sizes[record[0]], record[1])
            yield record, cast(BinaryIO, member), is_executable


def _record_value(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


class _Hashing:
    """Reads through to ``stream``, hashing what passes: sha256 for the new RECORD, and
    the algorithm of the wheel's own RECORD entry when that is another one. With
    ``keep``, it also keeps what passed (a source to compile)."""

    def __init__(self, stream: BinaryIO, expected: str, *, keep: bool = False) -> None:
        self.stream = stream
        self.expected = expected
        self.kept: bytearray | None = bytearray() if keep else None
        algorithm = expected.partition("=")[0]
        self.hashes = {HASH_ALGORITHM: hashlib.new(HASH_ALGORITHM)}
        if algorithm and algorithm != HASH_ALGORITHM and algorithm in hashlib.algorithms_available:
            self.hashes[algorithm] = hashlib.new(algorithm)

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        for h in self.hashes.values():
            h.update(data)
        if self.kept is not None:
            self.kept += data
        return data

    def record_value(self) -> str:
        return _record_value(self.hashes[HASH_ALGORITHM].digest())

    def mismatch(self) -> str | None:
        """``algorithm=value`` actually read, when it differs from the wheel's RECORD."""
        algorithm, _, value = self.expected.partition("=")
        h = self.hashes.get(algorithm)
        if h is None or _record_value(h.digest()) == value.rstrip("="):
            return None  # no hash in RECORD (allowed for RECORD.jws etc.) or it matches
        return f"{algorithm}={_record_value(h.digest())}"


@dataclass
class _LayerDestination(WheelDestination):
    layer: LayerWriter
    schemes: dict[str, str]
    interpreter: str
    wheel: str
    compile: bool = False
    written: list[tuple[str, int]] = field(default_factory=list)  # (image path, size)
    sources: list[tuple[str, bytes]] = field(default_factory=list)  # to compile

    def _image_path(self, scheme: Scheme, path: str) -> str:
        base = self.schemes[scheme]
        full = posixpath.normpath(posixpath.join(base, path))
        if not full.startswith(base + "/"):
            raise ImageError(
                f"{self.wheel} would write outside its {scheme} folder",
                problems=[Problem(self.wheel, f"{path!r} resolves to {full!r}")],
            )
        return full

    def _add(self, scheme: Scheme, path: str, stream: BinaryIO, executable: bool) -> RecordEntry:
        image_path = self._image_path(scheme, path)
        if isinstance(stream, _Member):
            size, expected = stream.size, stream.record_hash
        elif isinstance(stream, io.BytesIO):  # rewritten shebang, extra metadata, RECORD
            size, expected = len(stream.getbuffer()) - stream.tell(), ""
        else:  # pragma: no cover - every stream installer passes is one of the above
            raise TypeError(f"unexpected stream {type(stream).__name__} for {path}")
        # Only site-packages is importable; .py files elsewhere (data, scripts) are not.
        keep = self.compile and path.endswith(".py") and scheme in ("purelib", "platlib")
        reader = _Hashing(stream, expected, keep=keep)
        mode = 0o755 if executable else 0o644
        self.layer.add_stream(image_path[1:], cast(BinaryIO, reader), size, mode)
        actual = reader.mismatch()
        if actual is not None:
            # The store checked the wheel's own hash; this catches a wheel whose RECORD
            # disagrees with its members, which PEP 427 asks installers to refuse.
            raise ArtifactError(
                f"{self.wheel}: {path} does not match the wheel's RECORD",
                artifact=self.wheel,
                expected=expected,
                actual=actual,
            )
        self.written.append((image_path, size))
        if reader.kept is not None:
            self.sources.append((image_path, bytes(reader.kept)))
        return RecordEntry(path, Hash(HASH_ALGORITHM, reader.record_value()), size)

    def write_file(
        self,
        scheme: Scheme,
        path: str | os.PathLike[str],
        stream: BinaryIO,
        is_executable: bool,
    ) -> RecordEntry:
        path_ = os.fspath(path)
        if scheme == "scripts":
            # pip makes every file of the scripts scheme executable; a bin/ entry
            # without the bit would be useless.
            with fix_shebang(stream, self.interpreter) as fixed:
                return self._add(scheme, path_, fixed, True)
        return self._add(scheme, path_, stream, is_executable)

    def write_script(
        self, name: str, module: str, attr: str, section: ScriptSection
    ) -> RecordEntry:
        script_name, data = Script(name, module, attr, section).generate(self.interpreter, "posix")
        return self._add(Scheme("scripts"), script_name, io.BytesIO(data), True)

    def finalize_installation(
        self,
        scheme: Scheme,
        record_file_path: str,
        records: Iterable[tuple[Scheme, RecordEntry]],
    ) -> None:
        root = self.schemes[scheme]

        def prefix_for_scheme(file_scheme: Scheme) -> str | None:
            # RECORD paths are relative to the site-packages folder (PEP 376).
            if self.schemes[file_scheme] == root:
                return None
            return posixpath.relpath(self.schemes[file_scheme], root) + "/"

        with construct_record_file(records, prefix_for_scheme) as record:
            self._add(scheme, record_file_path, cast(BinaryIO, io.BytesIO(record.read())), False)


def _check_interpreter(interpreter: str) -> None:
    if (
        not interpreter.startswith("/")
        or any(c.isspace() or c == "\0" for c in interpreter)
        or len(f"#!{interpreter}\n".encode()) > _MAX_SHEBANG
    ):
        raise ImageError(
            f"cannot use {interpreter!r} in a script's shebang",
            problems=[
                Problem(
                    "interpreter",
                    f"needs an absolute path without spaces, at most {_MAX_SHEBANG - 3} bytes",
                )
            ],
        )


def _write_bytecode(
    layer: LayerWriter, sources: list[tuple[str, bytes]], compiler: Compiler
) -> int:
    """Each source's ``__pycache__`` file, named as :func:`importlib.util.cache_from_source`
    names it for the compiler's cache tag; a source that does not compile gets none."""
    written = 0
    for image_path, source in sources:
        pyc = compiler.compile(image_path, source, layer.mtime)
        if pyc is None:
            continue
        folder, _, filename = image_path.rpartition("/")
        stem = filename[: -len(".py")]
        layer.add_file(f"{folder[1:]}/__pycache__/{stem}.{compiler.info.cache_tag}.pyc", pyc)
        written += 1
    return written


def write_wheel(
    wheel: Path,
    layer: LayerWriter,
    scheme: VenvScheme,
    *,
    interpreter: str,
    compiler: Compiler | None = None,
    locked: Locked | None = None,
) -> WheelInstall:
    """Install ``wheel`` into ``layer`` as installed into the venv ``scheme`` describes.

    ``interpreter`` is the image path of the venv's Python (e.g.
    ``/opt/envship/venv/bin/python``); scripts run it. The layer gets the files only: the
    venv itself (``pyvenv.cfg``, ``bin/python``) is the caller's. Raises
    :class:`ImageError` for a wheel that cannot be installed (malformed, paths outside
    the venv, two files at one path) and :class:`ArtifactError` when a member does not
    match the wheel's RECORD. A failure leaves the layer half-written: abort it.
    With ``compiler``, the site-packages sources also get their byte-code. With
    ``locked``, the whole file is first hashed against the lock (an
    :class:`ArtifactError` before anything reaches the layer), and the zip is then read
    from the same open file, so what is installed is what was hashed even if the path
    is replaced meanwhile.
    """
    _check_interpreter(interpreter)
    where = str(wheel)
    try:
        with open(wheel, "rb") as f, zipfile.ZipFile(_checked(f, where, locked)) as zf:
            source = _Source(zf)
            metadata = parse_metadata_file(source.read_dist_info("METADATA"))
            name, version = metadata["Name"], metadata["Version"]
            if not name or not version or not _PROJECT_NAME.fullmatch(name):
                raise ImageError(
                    f"{wheel.name} has no valid Name and Version in its METADATA",
                    problems=[Problem(where, f"Name {name!r}, Version {version!r}")],
                )
            schemes = scheme.paths(name)
            destination = _LayerDestination(
                layer, schemes, interpreter, wheel.name, compile=compiler is not None
            )
            # installer warns (e.g. of __pycache__ members it skips); the core does not
            # print, so its warnings become part of the result.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                install(source, destination, {"INSTALLER": INSTALLER})
            dist_info = f"{scheme.site_packages}/{source.dist_info_dir}"
        compiled = (
            _write_bytecode(layer, destination.sources, compiler) if compiler is not None else 0
        )
    except EnvshipError:
        raise
    except (InstallerError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        # installer reports bad wheels as InstallerError or ValueError; zipfile a missing
        # member as KeyError.
        raise ImageError(
            f"cannot install {wheel.name}: {exc}",
            problems=[Problem(where, str(exc))],
            hint="the wheel is malformed; check it with `python -m zipfile -l`",
        ) from exc
    scripts = tuple(p for p, _ in destination.written if p.startswith(schemes["scripts"] + "/"))
    return WheelInstall(
        name=name,
        version=version,
        dist_info=dist_info,
        files=len(destination.written),
        bytes=sum(size for _, size in destination.written),
        scripts=scripts,
        compiled=compiled,
        warnings=tuple(f"{wheel.name}: {w.message}" for w in caught),
    )

"""Checking cached byte-code against its source, for ``envship verify --bytecode``.

RECORD cannot vouch for ``__pycache__``: installers and Python itself write ``.pyc`` files
after the fact, so pip lists them without a hash and uv not at all. Yet importlib runs a
cached file instead of its source whenever the header's source mtime and size match
(or, for hash-based files, the hash it carries), so an edited ``.pyc`` runs code that no
hash check of the sources sees. This check compiles each recorded source with an
interpreter of the environment's version and compares the code objects (byte-code,
constants, names, line table, nested code; not the file name) with what the cached file
holds. Its bytes cannot be compared: ``marshal`` output depends on the compiling
process's history (see :mod:`envship._bytecode`).

Only files importlib would run are compared: ``__pycache__/NAME.TAG[.opt-N].pyc``
beside a recorded ``NAME.py``, for the interpreter's cache tag, with its magic number,
and (timestamp form) a header matching the source's mtime and size; hash-based files
always, since ``--check-hash-based-pycs never`` runs even stale ones. Others are never
loaded in place of a source (another tag is another Python's, an orphan has no source to
shadow, a stale one is recompiled). One of those that is not a regular file in a real
``__pycache__`` (a link, which Python follows; a FIFO, on which ``import`` hangs) is a
difference, counted and never opened; a ``.pyc`` outside ``__pycache__``, which Python can
import without a source, is not in RECORD and so already counts as added.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ._bytecode import BytecodeCompiler, Compiler

__all__ = ["BadBytecode", "Source", "check_bytecode"]

_OPTIMIZE = (("", 0), (".opt-1", 1), (".opt-2", 2))


@dataclass(frozen=True, slots=True)
class Source:
    """A recorded ``.py`` file (absolute path) and the distribution it belongs to."""

    name: str
    path: str


@dataclass(frozen=True, slots=True)
class BadBytecode:
    name: str  # the distribution
    pyc: str  # the cached file's path
    source: str
    reason: str


def _cached(source: str, tag: str) -> Iterable[tuple[str, int, str | None]]:
    """Each cached file of ``source`` there is, its optimization level, and why it cannot
    be compared (None: it can). Python opens what is there, following links and waiting
    on a FIFO (``import`` then hangs): anything but a regular file, or a cache folder that
    is a link, is a difference, never skipped, and never opened here."""
    folder, filename = os.path.split(source)
    stem = filename[: -len(".py")]
    cache = os.path.join(folder, "__pycache__")
    try:
        linked = stat.S_ISLNK(os.lstat(cache).st_mode)
    except OSError:
        return  # no cache, or unreadable: the walks for added files name it
    for suffix, optimize in _OPTIMIZE:
        pyc = os.path.join(cache, f"{stem}.{tag}{suffix}.pyc")
        try:
            mode = os.lstat(pyc).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            yield pyc, optimize, f"unreadable: {exc}"
            continue
        if linked:
            yield pyc, optimize, f"in {cache}, a link to {os.readlink(cache)}"
        elif stat.S_ISLNK(mode):
            yield pyc, optimize, f"a link to {os.readlink(pyc)}"
        elif not stat.S_ISREG(mode):
            yield pyc, optimize, f"not a regular file ({stat.filemode(mode)})"
        else:
            yield pyc, optimize, None


def _read(path: str, *, follow: bool) -> tuple[bytes, int]:
    """A regular file's bytes and mtime, never from a FIFO (``O_NONBLOCK``; one swapped in
    since :func:`_cached` looked) and, unless ``follow``, never through a link (a cached
    file; a source is followed: uv's ``--link-mode symlink`` links it into its cache)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    with open(os.open(path, flags), "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file ({stat.filemode(st.st_mode)})")
        return f.read(), int(st.st_mtime)


def check_bytecode(
    sources: Sequence[Source], compiler: BytecodeCompiler, *, workers: int = 2
) -> tuple[list[BadBytecode], int]:
    """Every cached file of ``sources`` that holds other code or is no regular file in a
    real folder (counted as checked: it is reported, never dropped), and how many were
    checked.

    ``workers`` compiler processes share the work (compiling is CPU-bound). A file that
    kills the checking interpreter (``marshal`` is not made for hostile data; none is
    known to do so on its own) stops the check with an :class:`ImageError` naming it.
    """
    jobs: list[tuple[Source, str, int]] = []
    bad: list[BadBytecode] = []
    for src in sources:
        if src.path.endswith(".py"):
            for pyc, optimize, problem in _cached(src.path, compiler.cache_tag):
                if problem is None:
                    jobs.append((src, pyc, optimize))
                else:
                    bad.append(BadBytecode(src.name, pyc, src.path, problem))
    if not jobs:
        return bad, len(bad)
    count = max(1, min(workers, len(jobs)))

    def run(share: list[tuple[Source, str, int]]) -> list[BadBytecode]:
        differ = []
        with Compiler(compiler) as worker:
            for src, pyc, optimize in share:
                try:
                    source, mtime = _read(src.path, follow=True)
                except OSError:  # the source's own check reports it
                    continue
                try:
                    cached, _ = _read(pyc, follow=False)
                except OSError as exc:
                    differ.append(BadBytecode(src.name, pyc, src.path, f"unreadable: {exc}"))
                    continue
                reason = worker.check(src.path, source, mtime, cached, optimize)
                if reason is not None:
                    differ.append(BadBytecode(src.name, pyc, src.path, reason))
        return differ

    with ThreadPoolExecutor(max_workers=count) as pool:
        found = pool.map(run, [jobs[i::count] for i in range(count)])
        return bad + [b for share in found for b in share], len(bad) + len(jobs)

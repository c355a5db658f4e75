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
shadow, a stale one is recompiled); a ``.pyc`` outside ``__pycache__``, which Python can
import without a source, is not in RECORD and so already counts as added.
"""

from __future__ import annotations

import os
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


def _cached(source: str, tag: str) -> Iterable[tuple[str, int]]:
    folder, filename = os.path.split(source)
    stem = filename[: -len(".py")]
    for suffix, optimize in _OPTIMIZE:
        pyc = os.path.join(folder, "__pycache__", f"{stem}.{tag}{suffix}.pyc")
        if os.path.isfile(pyc):
            yield pyc, optimize


def check_bytecode(
    sources: Sequence[Source], compiler: BytecodeCompiler, *, workers: int = 2
) -> tuple[list[BadBytecode], int]:
    """Every cached file of ``sources`` that holds other code, and how many were checked.

    ``workers`` compiler processes share the work (compiling is CPU-bound). A file that
    kills the checking interpreter (``marshal`` is not made for hostile data; none is
    known to do so on its own) stops the check with an :class:`ImageError` naming it.
    """
    jobs = [
        (src, pyc, optimize)
        for src in sources
        if src.path.endswith(".py")
        for pyc, optimize in _cached(src.path, compiler.cache_tag)
    ]
    if not jobs:
        return [], 0
    count = max(1, min(workers, len(jobs)))

    def run(share: list[tuple[Source, str, int]]) -> list[BadBytecode]:
        bad = []
        with Compiler(compiler) as worker:
            for src, pyc, optimize in share:
                try:
                    with open(src.path, "rb") as f:
                        source = f.read()
                        mtime = int(os.fstat(f.fileno()).st_mtime)
                except OSError:  # the source's own check reports it
                    continue
                try:
                    with open(pyc, "rb") as f:
                        cached = f.read()
                except OSError as exc:
                    bad.append(BadBytecode(src.name, pyc, src.path, f"unreadable: {exc}"))
                    continue
                reason = worker.check(src.path, source, mtime, cached, optimize)
                if reason is not None:
                    bad.append(BadBytecode(src.name, pyc, src.path, reason))
        return bad

    with ThreadPoolExecutor(max_workers=count) as pool:
        found = pool.map(run, [jobs[i::count] for i in range(count)])
        return [b for share in found for b in share], len(jobs)

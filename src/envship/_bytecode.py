"""Byte-code for an image's Python, compiled on the build machine, reproducibly.

Why: an image's virtual environment belongs to root, and Jupyter platforms run the
container as another user (SageMaker Studio: UID 1000), so Python can never write its
``__pycache__`` there and recompiles every module on every start. For the data-science
set that is about 4 s more for ``import pandas, matplotlib.pyplot, sklearn`` on every
kernel start. Compiling at build time removes that, but nothing may run in the image, so
the compiling is done by an interpreter of the *same* minor version on this machine: the
``.pyc`` format (magic number, ``marshal``) is fixed per CPython minor version from its
first final release.

Each file gets what :mod:`importlib` itself writes (``importlib._bootstrap_external``'s
timestamp form, PEP 552 flags 0): the magic number, the source's mtime and size, then
``marshal.dumps(compile(source, path, "exec", dont_inherit=True))``. The mtime is the
layer's (SOURCE_DATE_EPOCH or 0), which is the mtime the image gives the source, so
Python accepts the file without reading the source. ``path`` is the image path, so
tracebacks name the file in the image.

Reproducible: the worker runs with ``PYTHONHASHSEED=0`` (before 3.11, ``marshal`` wrote
frozenset constants in string-hash order: python/cpython#81777), and one fresh worker
compiles one layer, in the layer's own order, because ``marshal`` flags objects for
back-references by their reference counts, which depend on what the process did before
(python/cpython#78274, still open; uv's ``--compile-bytecode`` output varies for this
reason, astral-sh/uv#10619). So the same wheels and the same compiler give the same
bytes; the compiler's exact version is part of the layer's cache key.
"""

from __future__ import annotations

import ast
import contextlib
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import IO, Any

from ._uv import uv_bin
from .errors import ImageError, Problem

__all__ = ["BytecodeCompiler", "Compiler", "find_compiler"]

# The worker: stdlib only, no site (-S -s), so it starts in milliseconds and nothing on
# the build machine's path can change what it produces. Requests are (path, mtime,
# source); answers are the .pyc bytes, or the reason the source does not compile.
_WORKER = r"""
import importlib.util, marshal, struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
magic = importlib.util.MAGIC_NUMBER
def read(n):
    data = inp.read(n)
    if len(data) != n:
        raise SystemExit(0 if not data else 3)
    return data
while True:
    path_len, mtime, size = struct.unpack("<III", read(12))
    path = read(path_len).decode("utf-8", "surrogateescape")
    source = read(size)
    try:
        code = compile(source, path, "exec", dont_inherit=True)
        body = magic + struct.pack("<III", 0, mtime, size) + marshal.dumps(code)
        status = 0
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        body = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
        status = 1
    out.write(struct.pack("<BI", status, len(body)) + body)
    out.flush()
"""

_PROBE = (
    "import importlib.util, sys; "
    "print(sys.implementation.name, sys.implementation.cache_tag, "
    "importlib.util.MAGIC_NUMBER.hex(), sys.version.split()[0], sys.version_info.releaselevel, "
    "repr(sys.executable))"
)


@dataclass(frozen=True, slots=True)
class BytecodeCompiler:
    """A CPython on this machine whose byte-code the image's Python loads."""

    python: str  # its executable
    version: str  # full version, "3.11.7"
    cache_tag: str  # "cpython-311": the .pyc file names
    magic: str  # importlib.util.MAGIC_NUMBER, hex

    def to_json(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "version": self.version,
            "cache_tag": self.cache_tag,
            "magic": self.magic,
        }

    def key(self) -> dict[str, str]:
        """What goes into a layer's cache key (not the path: any copy of it will do)."""
        return {"version": self.version, "cache_tag": self.cache_tag, "magic": self.magic}


def _probe(python: str) -> BytecodeCompiler | None:
    """What ``python`` is, or None when it is no final CPython release. The compiler is
    the binary it reports as ``sys.executable``: what uv finds may be a wrapper (a pyenv
    shim is a shell script needing PATH), while the worker starts with an empty
    environment."""
    try:
        proc = subprocess.run(
            [python, "-S", "-s", "-c", _PROBE],
            capture_output=True,
            text=True,
            check=False,
            env={**_worker_env(), "PATH": os.environ.get("PATH", os.defpath)},
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = proc.stdout.split(maxsplit=5)
    if proc.returncode != 0 or len(fields) != 6 or fields[0] != "cpython" or fields[4] != "final":
        return None
    try:
        executable = ast.literal_eval(fields[5])
    except (ValueError, SyntaxError):
        return None
    if not isinstance(executable, str) or not os.path.isabs(executable):
        return None
    return BytecodeCompiler(executable, fields[3], fields[1], fields[2])


def _uv_find(version: str) -> str | None:
    find = [uv_bin(), "python", "find", "--no-python-downloads", "--offline", "--no-project"]
    try:
        proc = subprocess.run(
            [*find, "--no-config", version],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = proc.stdout.strip()
    return found if proc.returncode == 0 and found else None


def find_compiler(version: str, version_full: str, *, where: str = "the base") -> BytecodeCompiler:
    """A final-release CPython ``version`` ("3.11") on this machine: this interpreter when
    it is one, else what ``uv python find`` knows (never a download).

    Refuses a pre-release image Python (``version_full`` like "3.13.0rc1"): its magic
    number may differ from the final release's.
    """
    tag = "cpython-" + version.replace(".", "")
    if not version_full.replace(".", "").isdigit():
        raise ImageError(
            f"cannot compile byte-code for {where}'s Python {version_full}",
            problems=[Problem(where, "a pre-release's .pyc format can differ from the final's")],
            hint="build without --compile",
        )
    if sys.implementation.cache_tag == tag and sys.version_info.releaselevel == "final":
        compiler = _probe(sys.executable)
        if compiler is not None:
            return compiler
    found = _uv_find(version)
    compiler = _probe(found) if found is not None else None
    if compiler is not None and compiler.cache_tag == tag:
        return compiler
    raise ImageError(
        f"no CPython {version} on this machine to compile byte-code for {where}'s Python",
        problems=[Problem(where, f"Python {version_full}; .pyc files are per minor version")],
        hint=f"install one (`uv python install {version}`) or build without --compile",
    )


def _worker_env() -> dict[str, str]:
    # Nothing of ours leaks in (PYTHONPATH, PYTHONOPTIMIZE...): only a fixed hash seed.
    env = {"PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
    if "SYSTEMROOT" in os.environ:  # pragma: no cover - Windows needs it to start at all
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    return env


class Compiler:
    """One worker process of a :class:`BytecodeCompiler`; use one per layer, in order."""

    def __init__(self, compiler: BytecodeCompiler) -> None:
        self.info = compiler
        self.failures: list[tuple[str, str]] = []  # (image path, reason): left uncompiled
        try:
            self._proc = subprocess.Popen(
                [compiler.python, "-S", "-s", "-c", _WORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_worker_env(),
            )
        except OSError as exc:
            raise ImageError(
                f"cannot start the byte-code compiler {compiler.python}",
                problems=[Problem(compiler.python, str(exc))],
            ) from exc

    def compile(self, path: str, source: bytes, mtime: int) -> bytes | None:
        """The .pyc for ``source`` at image path ``path``, or None when it does not compile
        (recorded in :attr:`failures`; like compileall, such a file is left to Python)."""
        stdin, stdout = self._pipes()
        encoded = path.encode("utf-8", "surrogateescape")
        header = struct.pack("<III", len(encoded), mtime & 0xFFFFFFFF, len(source))
        try:
            stdin.write(header + encoded + source)
            stdin.flush()
            status, size = struct.unpack("<BI", _read(stdout, 5))
            body = _read(stdout, size)
        except (OSError, EOFError) as exc:
            raise ImageError(
                f"the byte-code compiler ({self.info.python}) stopped",
                problems=[Problem(path, str(exc) or type(exc).__name__)],
            ) from exc
        if status != 0:
            self.failures.append((path, body.decode("utf-8", "replace")))
            return None
        return body

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        return self._proc.stdin, self._proc.stdout

    def close(self) -> None:
        stdin, stdout = self._pipes()
        # A worker that died leaves unflushed bytes: the compile() that met it has
        # reported that already, and closing must not hide it behind a BrokenPipeError.
        with contextlib.suppress(OSError):
            stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - the worker exits on EOF
            self._proc.kill()
            self._proc.wait()
        stdout.close()

    def __enter__(self) -> Compiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError(f"expected {n} bytes, got {len(data)}")
    return data

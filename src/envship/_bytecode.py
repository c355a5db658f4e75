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
import hashlib
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import IO, Any

from ._uv import uv_bin
from .errors import ImageError, Problem

__all__ = ["BytecodeCompiler", "Compiler", "compiler_for", "find_compiler"]

# The worker: stdlib only, no site (-S -s), so it starts in milliseconds, nothing on the
# machine's path can change what it produces, and no installed code runs in it (it also
# serves `envship verify`, with an environment's own interpreter). Requests are an op,
# the numbers, the path, the source and (to check) the .pyc; answers are a status and
# the .pyc bytes (compile) or the reason (failures, and checks that find other code).
_WORKER = r"""
import importlib.util, marshal, struct, sys
try:
    import resource
except ImportError:  # not a POSIX system
    resource = None
if resource is not None:
    # marshal trusts the counts in its data: a damaged or hostile .pyc that claims a
    # tuple of 2**31 items makes it allocate 16 GiB (and free it item by item, for half
    # a minute) before it finds the data short. Capping this process's address space
    # turns that into a MemoryError, reported for that one file.
    cap = 2 << 30
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft == resource.RLIM_INFINITY or soft > cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
inp, out = sys.stdin.buffer, sys.stdout.buffer
magic = importlib.util.MAGIC_NUMBER
errors = (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError)
def read(n):
    data = inp.read(n)
    if len(data) != n:
        raise SystemExit(0 if not data else 3)
    return data
def used(pyc, mtime, size):
    # Would importlib run this file for the source (importlib._bootstrap_external)?
    # Another magic number, a stale timestamp or unknown flags: it compiles the source.
    flags = int.from_bytes(pyc[4:8], "little")
    if pyc[:4] != magic or flags not in (0, 1, 3):
        return False
    if flags == 0:
        return pyc[8:16] == struct.pack("<II", mtime & 0xFFFFFFFF, size & 0xFFFFFFFF)
    return True  # hash-based: --check-hash-based-pycs=never would run even a stale one
while True:
    op, path_len, number, mtime, size, pyc_len = struct.unpack("<cIIIII", read(21))
    path = read(path_len).decode("utf-8", "surrogateescape")
    source, pyc = read(size), read(pyc_len)
    status, body = 0, b""
    if op == b"V" and not used(pyc, mtime, size):
        pass
    else:
        try:  # number: the optimization level to check at (compiling: the interpreter's)
            code = compile(source, path, "exec", dont_inherit=True, optimize=number - 1)
        except errors as exc:
            status = 1
            body = f"its source does not compile: {type(exc).__name__}: {exc}".encode(
                "utf-8", "replace"
            )  # (a file name that is not UTF-8 comes back in the message)
        else:
            if op == b"C":
                body = magic + struct.pack("<III", 0, mtime, size) + marshal.dumps(code)
            else:
                try:
                    stored = marshal.loads(pyc[16:])
                except Exception as exc:
                    said = str(exc) or type(exc).__name__  # MemoryError() says nothing
                    status, body = 1, f"unreadable byte-code: {said}".encode("utf-8", "replace")
                else:
                    # Code objects compare their byte-code, constants, names and line
                    # table, nested ones included, and not the file name.
                    if stored != code:
                        status, body = 1, b"other code than its source compiles to"
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
        """What goes into a layer's cache key (not the path: any copy of it will do). The
        worker's own text is in it: what it ran before a compile can change the bytes."""
        worker = hashlib.sha256(_WORKER.encode()).hexdigest()[:16]
        return {
            "version": self.version,
            "cache_tag": self.cache_tag,
            "magic": self.magic,
            "worker": worker,
        }


def compiler_for(python: str) -> BytecodeCompiler | None:
    """``python`` as a compiler (it runs with no site, so no installed code runs), or None
    when it cannot run here or is no final CPython release. The compiler is the binary it
    reports as ``sys.executable``: what uv finds may be a wrapper (a pyenv shim is a shell
    script needing PATH), while the worker starts with an empty environment."""
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


def find_compiler(
    version: str,
    version_full: str,
    *,
    where: str = "the base",
    otherwise: str = "build without --compile",
) -> BytecodeCompiler:
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
            hint=otherwise,
        )
    if sys.implementation.cache_tag == tag and sys.version_info.releaselevel == "final":
        compiler = compiler_for(sys.executable)
        if compiler is not None:
            return compiler
    found = _uv_find(version)
    compiler = compiler_for(found) if found is not None else None
    if compiler is not None and compiler.cache_tag == tag:
        return compiler
    raise ImageError(
        f"no CPython {version} on this machine to compile byte-code for {where}'s Python",
        problems=[Problem(where, f"Python {version_full}; .pyc files are per minor version")],
        hint=f"install one (`uv python install {version}`) or {otherwise}",
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
        status, body = self._ask(b"C", path, -1, mtime, source, b"")
        if status != 0:
            self.failures.append((path, body.decode("utf-8", "replace")))
            return None
        return body

    def check(
        self, path: str, source: bytes, mtime: int, pyc: bytes, optimize: int = 0
    ) -> str | None:
        """Why ``pyc``, a cached file for ``source`` (whose mtime is ``mtime``), holds
        other code than ``source`` compiles to, or None when it holds the same code or
        importlib would not use it (another magic number, a stale timestamp: it compiles
        the source instead). ``optimize``: 1 or 2 for ``.opt-1``/``.opt-2`` files."""
        status, body = self._ask(b"V", path, optimize, mtime, source, pyc)
        return body.decode("utf-8", "replace") if status != 0 else None

    def _ask(
        self, op: bytes, path: str, optimize: int, mtime: int, source: bytes, pyc: bytes
    ) -> tuple[int, bytes]:
        stdin, stdout = self._pipes()
        encoded = path.encode("utf-8", "surrogateescape")
        numbers = (optimize + 1, mtime & 0xFFFFFFFF, len(source), len(pyc))
        header = struct.pack("<cIIIII", op, len(encoded), *numbers)
        try:
            stdin.write(header + encoded + source + pyc)
            stdin.flush()
            status, size = struct.unpack("<BI", _read(stdout, 5))
            return status, _read(stdout, size)
        except (OSError, EOFError) as exc:
            raise ImageError(
                f"the byte-code compiler ({self.info.python}) stopped",
                problems=[Problem(path, str(exc) or type(exc).__name__)],
            ) from exc

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

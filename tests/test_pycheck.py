"""``verify(..., bytecode=True)``: cached byte-code against its source (``envship._pycheck``).

Every case is a real environment made by ``envship install --compile`` and a real
interpreter: a ``.pyc`` changed the way an attacker would (header kept, so importlib
takes it) is shown to run, and then to be caught.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from envship._bytecode import compiler_for
from envship._environment import InstalledEnvironment
from envship._pycheck import Source, check_bytecode
from envship.errors import SpecError
from envship.install import install
from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import verify
from test_install import _no_gpu, build_wheels, run_py, stocked_store, write_lock

# The GPU question is taken out of the machine's hands as in test_install.
__all__ = ["_no_gpu"]

TAG = sys.implementation.cache_tag


@pytest.fixture
def env(tmp_path: Path) -> tuple[LockFile, Path]:
    wheels = build_wheels(tmp_path / "dist")
    lock = write_lock(tmp_path / "pylock.toml", [wheels[k] for k in ("alpha", "beta", "tool")])
    store: Store = stocked_store(tmp_path / "store", list(wheels.values()))
    dest = tmp_path / "env"
    install(lock, store, dest, compile_bytecode=True)
    return lock, dest


def site(env: Path) -> Path:
    return Path(run_py(env, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))


def forged(
    source: Path,
    code: str,
    *,
    optimize: int = 0,
    magic: bytes | None = None,
    stale: bool = False,
    flags: int = 0,
) -> bytes:
    """A .pyc of other ``code`` whose header matches ``source`` as it is on disk (unless
    ``stale``), so importlib takes it without looking at the source. ``flags`` 1: the
    unchecked hash-based form (PEP 552), which importlib takes whatever the source."""
    st = source.stat()
    if flags:
        check = b"\0" * 8  # the source hash field: unchecked files are never compared
        header = (magic or importlib.util.MAGIC_NUMBER) + struct.pack("<I", flags) + check
    else:
        mtime = int(st.st_mtime) + (1 if stale else 0)
        header = (magic or importlib.util.MAGIC_NUMBER) + struct.pack(
            "<III", 0, mtime & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF
        )
    code_object = compile(code, str(source), "exec", dont_inherit=True, optimize=optimize)
    return header + marshal.dumps(code_object)


def test_an_environment_installed_with_byte_code_verifies(env: tuple[LockFile, Path]) -> None:
    lock, dest = env
    report = verify(lock, dest, bytecode=True)
    assert report.identical, report.differences
    assert report.checked_bytecode == 3  # alpha, beta and tool: one __init__ each
    assert report.to_json()["checked_bytecode"] == 3
    assert verify(lock, dest).checked_bytecode is None  # not asked


def test_a_forged_pyc_runs_and_only_the_byte_code_check_sees_it(
    env: tuple[LockFile, Path],
) -> None:
    lock, dest = env
    source = site(dest) / "alpha" / "__init__.py"
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.write_bytes(forged(source, '__version__ = "pwned"\n'))
    # Python runs it: the source still says 1.0.
    assert run_py(dest, "import alpha; print(alpha.__version__)") == "pwned"
    assert verify(lock, dest, full=True).identical  # RECORD cannot see it

    report = verify(lock, dest, bytecode=True)
    (diff,) = report.differences
    assert (diff.kind, diff.name, diff.path) == ("changed", "alpha", str(pyc))
    assert diff.expected == f"the code of {source}"
    assert diff.actual == "other code than its source compiles to"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00not marshal data", "unreadable byte-code"),
        (None, "other code than its source compiles to"),  # a real pyc of other code
    ],
)
def test_damaged_byte_code_is_reported(
    env: tuple[LockFile, Path], body: bytes | None, reason: str
) -> None:
    lock, dest = env
    source = site(dest) / "beta" / "__init__.py"
    pyc = Path(importlib.util.cache_from_source(str(source)))
    good = forged(source, source.read_text())
    data = good[:16] + body if body is not None else forged(source, "import os\n")
    pyc.write_bytes(data)
    (diff,) = verify(lock, dest, bytecode=True).differences
    assert diff.path == str(pyc) and diff.actual is not None and diff.actual.startswith(reason)


def test_files_importlib_never_loads_are_not_checked(env: tuple[LockFile, Path]) -> None:
    lock, dest = env
    source = site(dest) / "tool" / "__init__.py"
    cache = source.parent / "__pycache__"
    # Another Python's magic number (importlib rejects it and compiles the source), and
    # another cache tag or an orphan (never looked at), all holding other code.
    pyc = Path(importlib.util.cache_from_source(str(source)))
    (cache / "__init__.cpython-29.pyc").write_bytes(forged(source, "X = 2\n"))
    (cache / f"gone.{TAG}.pyc").write_bytes(forged(source, "X = 3\n"))
    for ignored in (
        forged(source, "X = 1\n", magic=b"\x00\x00\r\n"),
        forged(source, "X = 4\n", stale=True),  # importlib compiles the source instead
    ):
        pyc.write_bytes(ignored)
        report = verify(lock, dest, bytecode=True)
        assert report.identical, report.differences
        assert report.checked_bytecode == 3
        # (And Python indeed passes it by; it then writes its own, so this comes last.)
        assert run_py(dest, "import tool; print(hasattr(tool, 'X'))") == "False"


def test_an_unchecked_hash_based_pyc_is_compared_whatever_its_header(
    env: tuple[LockFile, Path],
) -> None:
    lock, dest = env
    source = site(dest) / "tool" / "__init__.py"
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.write_bytes(forged(source, "X = 5\n", flags=1))
    assert run_py(dest, "import tool; print(tool.X)") == "5"
    (diff,) = verify(lock, dest, bytecode=True).differences
    assert diff.path == str(pyc)


@pytest.mark.parametrize(
    ("optimize", "compiled_with", "same"),
    [(1, 1, True), (2, 2, True), (1, 0, False), (2, 1, False)],
)
def test_optimized_files_are_compared_at_their_level(
    env: tuple[LockFile, Path], optimize: int, compiled_with: int, same: bool
) -> None:
    lock, dest = env
    source = site(dest) / "alpha" / "__init__.py"
    # assert and a docstring: what -O and -OO take out.
    source_text = '"""Doc."""\n__version__ = "1.0"\nassert __version__\n'
    source.write_text(source_text)  # (a changed source: full mode would say so)
    pyc = Path(importlib.util.cache_from_source(str(source), optimization=optimize))
    pyc.write_bytes(forged(source, source_text, optimize=compiled_with))
    report = verify(lock, dest, bytecode=True)
    found = [d.path for d in report.differences if d.path.endswith(".pyc")]
    assert found == ([] if same else [str(pyc)])


def test_a_folder_no_interpreter_here_can_compile_for_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "lib" / "python3.99" / "site-packages"
    folder.mkdir(parents=True)
    lock = write_lock(tmp_path / "pylock.toml", [])
    environment = InstalledEnvironment(folder, (folder,), "3.99")
    with pytest.raises(SpecError, match="cannot check the byte-code") as caught:
        verify(lock, environment, bytecode=True, target=lock.targets[0])
    assert "without --bytecode" in (caught.value.hint or "")


def test_a_removed_source_is_reported_once(env: tuple[LockFile, Path]) -> None:
    lock, dest = env
    source = site(dest) / "beta" / "__init__.py"
    source.unlink()  # its cached .pyc stays; importlib never runs it without the source
    report = verify(lock, dest, bytecode=True)
    assert [(d.kind, d.path) for d in report.differences] == [("removed", str(source))]


def _fifo(pyc: Path, outside: Path) -> str:
    pyc.unlink()
    os.mkfifo(pyc)
    return "not a regular file (prw-r--r--)"


def _link(pyc: Path, outside: Path) -> str:
    copy = outside / pyc.name
    shutil.copyfile(pyc, copy)
    pyc.unlink()
    pyc.symlink_to(copy)
    return f"a link to {copy}"


def _linked_cache(pyc: Path, outside: Path) -> str:
    cache = pyc.parent
    shutil.copytree(cache, outside / "cache")
    shutil.rmtree(cache)
    cache.symlink_to(outside / "cache")
    return f"in {cache}, a link to {outside / 'cache'}"


@pytest.mark.parametrize("change", [_fifo, _link, _linked_cache])
def test_byte_code_that_is_no_regular_file_is_named_and_counted(
    tmp_path: Path, env: tuple[LockFile, Path], change: Callable[[Path, Path], str]
) -> None:
    """Python follows a link and waits on a FIFO: the check names either, never opens
    it (a FIFO would hang it) and never drops it from its count (auditor a11, H2)."""
    _, dest = env
    source = site(dest) / "beta" / "__init__.py"
    pyc = source.parent / "__pycache__" / f"__init__.{TAG}.pyc"
    assert pyc.is_file()
    outside = tmp_path / "outside"
    outside.mkdir()
    reason = change(pyc, outside)
    compiler = compiler_for(str(dest / "bin" / "python"))
    assert compiler is not None
    bad, count = check_bytecode([Source("beta", str(source))], compiler)
    assert ([(b.name, b.pyc, b.source, b.reason) for b in bad], count) == (
        [("beta", str(pyc), str(source), reason)],
        1,
    )

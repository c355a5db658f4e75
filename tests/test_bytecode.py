"""``envship._bytecode`` and ``image build --compile``: .pyc files for the image's Python.

The compiler's output is checked the way it is used: :mod:`importlib` of a real
interpreter must accept it without recompiling (``python -v`` says where each module's
code came from), on this machine and inside a real container run as SageMaker's user.
"""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envship._bytecode import BytecodeCompiler, Compiler, compiler_for, find_compiler
from envship._wheeltar import VenvScheme, write_wheel
from envship.errors import ImageError
from envship.image import BuiltImage
from envship.imagebase import BaseFacts
from envship.imageinspect import verify_image
from envship.imageio import open_image, write_image
from envship.install import MARKER_NAME
from envship.layer import LayerWriter
from envship.ocilayout import OciLayout
from imagelib import BaseImage
from indexlib import build_wheel
from serviceslib import DockerEngine
from test_image import (
    VENV_SITE,
    Setup,
    _no_source_date_epoch,
    bookworm_facts,
    build,
    env_layers,
    layer_files,
    load,
    make_setup,
)
from test_imageinspect import append_layer
from test_install import build_wheels

# Fixtures shared with test_image (the bookworm base is probed once per session).
__all__ = ["_no_source_date_epoch", "bookworm_facts"]

TAG = sys.implementation.cache_tag
HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
# A frozenset constant: its order in the .pyc follows string hashes.
SET_SOURCE = b'def f(x):\n    return x in {"alpha", "beta", "gamma", "delta", "epsilon"}\n'


@pytest.fixture(scope="module")
def compiler() -> BytecodeCompiler:
    return find_compiler(HERE, sys.version.split()[0])


def compile_all(
    info: BytecodeCompiler, sources: list[tuple[str, bytes]], mtime: int = 0
) -> list[bytes | None]:
    with Compiler(info) as worker:
        return [worker.compile(path, source, mtime) for path, source in sources]


# -- finding a compiler --------------------------------------------------------------------


def test_this_interpreter_compiles_for_its_own_version(compiler: BytecodeCompiler) -> None:
    assert compiler.cache_tag == TAG
    assert compiler.magic == importlib.util.MAGIC_NUMBER.hex()
    assert compiler.version == sys.version.split()[0]
    assert os.path.exists(compiler.python)


def test_a_wrapper_script_resolves_to_the_interpreter_it_runs(tmp_path: Path) -> None:
    # What `uv python find` returns may be a pyenv shim: a script that needs PATH. The
    # worker starts with an empty environment, so it must run the real binary.
    shim = tmp_path / "python3"
    shim.write_text(f'#!/usr/bin/env sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    found = compiler_for(str(shim))
    assert found is not None and found.python == sys.executable
    assert compile_all(found, [("/x/a.py", b"x = 1\n")])[0] is not None
    assert compiler_for(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    ("version", "full", "message"),
    [
        ("3.99", "3.99.1", "no CPython 3.99 on this machine"),
        (HERE, f"{HERE}.0rc1", "cannot compile byte-code"),
        (HERE, f"{HERE}.0a3", "cannot compile byte-code"),
    ],
)
def test_no_matching_final_cpython_is_refused(version: str, full: str, message: str) -> None:
    with pytest.raises(ImageError, match=message) as caught:
        find_compiler(version, full, where="python:x")
    assert caught.value.problems[0].where == "python:x"
    assert "without --compile" in (caught.value.hint or "")


# -- what the worker writes ----------------------------------------------------------------


@pytest.mark.parametrize("mtime", [0, 1_700_000_000])
def test_importlib_loads_the_pyc_without_recompiling(
    tmp_path: Path, compiler: BytecodeCompiler, mtime: int
) -> None:
    source = b"# coding: utf-8\nVALUE = '\xc3\xa9t\xc3\xa9'\nimport os\nWHERE = __file__\n"
    module = tmp_path / "pkg" / "mod.py"
    module.parent.mkdir()
    module.write_bytes(source)
    os.utime(module, (mtime, mtime))
    (pyc,) = compile_all(compiler, [(str(module), source)], mtime)
    assert pyc is not None
    cached = Path(importlib.util.cache_from_source(str(module)))
    cached.parent.mkdir()
    cached.write_bytes(pyc)
    proc = subprocess.run(
        [sys.executable, "-v", "-B", "-c", "from pkg import mod; print(mod.VALUE)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == "été\n"
    assert f"# code object from '{cached}'" in proc.stderr
    assert "bytecode is stale" not in proc.stderr


def test_a_source_that_does_not_compile_is_skipped(compiler: BytecodeCompiler) -> None:
    with Compiler(compiler) as worker:
        assert worker.compile("/x/py2.py", b"print 'hello'\n", 0) is None
        assert worker.compile("/x/nul.py", b"x = 1\0\n", 0) is None
        assert worker.compile("/x/ok.py", b"x = 1\n", 0) is not None  # the worker goes on
        assert [path for path, _ in worker.failures] == ["/x/py2.py", "/x/nul.py"]
        assert "SyntaxError" in worker.failures[0][1]
        # A file name that is not UTF-8 (a wheel may carry one) in the error's message.
        odd = "/x/caf\udce9.py"
        assert worker.compile(odd, b"print 'x'\n", 0) is None
        assert worker.failures[-1][0] == odd
        assert worker.compile("/x/after.py", b"x = 1\n", 0) is not None


def test_fresh_workers_give_the_same_bytes_whatever_the_hash_seed(
    compiler: BytecodeCompiler, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = [("/opt/a.py", SET_SOURCE), ("/opt/b.py", b"import os\nX = os.sep * 2\n")]
    monkeypatch.setenv("PYTHONHASHSEED", "1")
    first = compile_all(compiler, sources)
    monkeypatch.setenv("PYTHONHASHSEED", "2")
    second = compile_all(compiler, sources)
    assert first == second and all(first)


@settings(max_examples=150, deadline=None)
@given(
    flags=st.sampled_from([0, 1, 2, 3, 7]),
    header=st.binary(min_size=8, max_size=8),
    body=st.binary(max_size=300),
)
def test_checking_any_cached_bytes_gives_an_answer(
    checker: Compiler, flags: int, header: bytes, body: bytes
) -> None:
    # The worker's reading of a .pyc (header, flags, marshal data) on hostile input:
    # it answers, and stays usable for the next file.
    pyc = importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little") + header + body
    reason = checker.check("/x/a.py", b"x = 1\n", 0, pyc)
    assert reason is None or isinstance(reason, str)
    assert checker.check("/x/b.py", b"y = 2\n", 0, b"") is None  # not a cached file at all


@pytest.mark.parametrize("kind", [b"(", b"[", b")"], ids=["tuple", "list", "small-tuple"])
def test_a_pyc_claiming_billions_of_items_is_refused_not_allocated(
    checker: Compiler, kind: bytes
) -> None:
    """marshal allocates what a count says before it reads the items: 2**31 of them is
    16 GiB (half a minute of this machine's time, and most of its memory). The worker's
    capped address space makes it a MemoryError for that file, and the worker goes on."""
    count = 0xFF if kind == b")" else 0x7FFFFFFF  # ")": a one-byte count, for contrast
    data = kind + count.to_bytes(1 if kind == b")" else 4, "little") + b"N" * 3
    pyc = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + bytes(8) + data
    reason = checker.check("/x/a.py", b"x = 1\n", 0, pyc)
    expected = "EOF read where object expected" if kind == b")" else "MemoryError"
    assert reason == f"unreadable byte-code: {expected}"
    assert checker.check("/x/b.py", b"y = 2\n", 0, b"") is None


@pytest.fixture(scope="module")
def checker(compiler: BytecodeCompiler) -> Iterator[Compiler]:
    with Compiler(compiler) as worker:
        yield worker


def test_a_worker_that_stopped_is_an_image_error(compiler: BytecodeCompiler) -> None:
    worker = Compiler(compiler)
    worker._proc.kill()
    worker._proc.wait()
    with pytest.raises(ImageError, match=r"compiler .* stopped"):
        worker.compile("/x/a.py", b"x = 1\n", 0)
    worker.close()  # and closing it does not raise a second error


def test_a_compiler_that_cannot_start_is_an_image_error(
    tmp_path: Path, compiler: BytecodeCompiler
) -> None:
    gone = BytecodeCompiler(str(tmp_path / "python3"), "3.11.7", TAG, compiler.magic)
    with pytest.raises(ImageError, match="cannot start the byte-code compiler"):
        Compiler(gone)


def test_a_shipped_pyc_is_dropped_and_data_files_are_not_compiled(
    tmp_path: Path, compiler: BytecodeCompiler
) -> None:
    shipped = f"odd/__pycache__/__init__.{TAG}.pyc"
    wheel = build_wheel(
        tmp_path / "dist",
        "odd",
        "1.0",
        files={
            "odd/__init__.py": "A = 1\n",
            shipped: "stale bytes from the wheel's build machine",
            "odd-1.0.data/data/share/odd/tool.py": "C = 3\n",
        },
    )
    writer = LayerWriter(tmp_path, mtime=0)
    # pypa/installer refuses __pycache__ members of wheels (a security risk, it says), so
    # the only .pyc at that path is the one compiled here.
    with Compiler(compiler) as worker:
        result = write_wheel(
            wheel,
            writer,
            VenvScheme.for_python("/opt/venv", HERE),
            interpreter="/opt/venv/bin/python",
            compiler=worker,
        )
    files = layer_files(writer.close().path)
    pyc = files[f"opt/venv/lib/python{HERE}/site-packages/{shipped}"]
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert "opt/venv/share/odd/tool.py" in files  # data scheme: installed, not compiled
    assert not [p for p in files if p.startswith("opt/venv/share/") and p.endswith(".pyc")]
    assert result.compiled == 1
    # installer's warning is part of the result, not printed.
    assert [w.split(":", 1)[0] for w in result.warnings] == [wheel.name]
    assert "__pycache__" in result.warnings[0]


# -- in an image -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(
    tmp_path_factory: pytest.TempPathFactory, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> tuple[Setup, BuiltImage]:
    """alpha, beta and tool, plus ``legacy`` whose py2.py does not compile, with .pyc."""
    folder = tmp_path_factory.mktemp("compiled")
    dist = folder / "dist"
    wheels = {
        **build_wheels(dist),
        "legacy": build_wheel(
            dist,
            "legacy",
            "1.0",
            files={"legacy/__init__.py": "OK = True\n", "legacy/py2.py": "print 'x'\n"},
        ),
    }
    setup = make_setup(folder, ("alpha", "beta", "tool", "legacy"), wheels=wheels)
    built, _ = build(setup, bookworm_layout, bookworm_facts, mtime=0, compile_bytecode=True)
    return setup, built


def test_every_site_packages_source_gets_its_pyc(compiled: tuple[Setup, BuiltImage]) -> None:
    _, built = compiled
    assert built.bytecode is not None and built.bytecode.cache_tag == "cpython-311"
    files: dict[str, bytes] = {}
    for layer, path in zip(built.layers, built.layer_paths, strict=True):
        if layer.distributions:
            files.update(layer_files(path))
    sources = [p for p in files if p.endswith(".py")]
    assert sources and all(p.startswith(VENV_SITE) for p in sources)
    for source in sources:
        folder, _, name = source.rpartition("/")
        pyc = f"{folder}/__pycache__/{name[:-3]}.cpython-311.pyc"
        if source.endswith("legacy/py2.py"):
            assert pyc not in files
        else:
            assert files[pyc][:4] == bytes.fromhex(built.bytecode.magic)
    # Nothing outside site-packages is compiled (bin/tool is a script), nor recorded.
    assert not [p for p in files if p.endswith(".pyc") and not p.startswith(VENV_SITE)]
    records = b"".join(v for p, v in files.items() if p.endswith(".dist-info/RECORD"))
    assert b".pyc" not in records
    expected = f"1 source file(s) do not compile; left as source: /{VENV_SITE}/legacy/py2.py"
    assert expected in built.notes
    # The image's install marker says so, as an installed environment's does.
    top = layer_files(built.layer_paths[-1])
    assert json.loads(top[f"opt/envship/venv/{MARKER_NAME}"])["compiled"] is True


def test_image_python_loads_them_as_a_user_who_cannot_write(
    tmp_path: Path, docker_engine: DockerEngine, compiled: tuple[Setup, BuiltImage]
) -> None:
    name = load(
        docker_engine, compiled[1], tmp_path, f"envship-tests/pyc-{uuid.uuid4().hex[:10]}:1"
    )
    try:
        script = "python -v -c 'import alpha, beta, tool, legacy; print(legacy.OK)' 2>&1"
        out = docker_engine.docker(
            "run", "--rm", "--network", "none", "--user", "1000:100", name, "sh", "-c", script
        ).stdout
    finally:
        docker_engine.docker("rmi", "--no-prune", name, check=False)
    assert "True" in out.splitlines()
    for package in ("alpha", "beta", "tool", "legacy"):
        pyc = f"/{VENV_SITE}/{package}/__pycache__/__init__.cpython-311.pyc"
        assert f"# code object from '{pyc}'" in out
        assert f"# bytecode is stale for '{package}'" not in out
    # (The base's own standard library may be stale: debootstrap's, not ours.)
    assert f"could not create '/{VENV_SITE}" not in out  # nothing of ours was recompiled


def test_compiled_build_is_reproducible_and_cached_apart(
    tmp_path: Path,
    compiled: tuple[Setup, BuiltImage],
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
) -> None:
    setup, built = compiled
    # Another store, built inline rather than on a process pool: the same bytes.
    again = make_setup(tmp_path / "again", ("alpha", "beta", "tool", "legacy"), wheels=setup.wheels)
    rebuilt, _ = build(
        again, bookworm_layout, bookworm_facts, mtime=0, compile_bytecode=True, jobs=1
    )
    assert rebuilt.digest == built.digest
    # Without --compile, the layers of the same wheels are others, and built afresh
    # rather than taken from the compiled ones in the cache.
    plain, events = build(setup, bookworm_layout, bookworm_facts, mtime=0)
    assert plain.bytecode is None
    ours = {layer.descriptor.digest for layer in env_layers(built) if layer.distributions}
    theirs = {layer.descriptor.digest for layer in env_layers(plain) if layer.distributions}
    assert not ours & theirs
    labels = {layer.label for layer in env_layers(plain) if layer.distributions}
    assert {e.state for e in events if e.label in labels} == {"built"}
    # And the compiled image verifies against its lock: byte-code is not part of RECORD.
    ref = write_image(built, f"oci:{tmp_path / 'out'}:compiled")
    report = verify_image(setup.lock, open_image(ref, setup.store))
    assert report.identical, report.differences


def test_verify_image_compares_the_byte_code_it_holds(
    tmp_path: Path, compiled: tuple[Setup, BuiltImage]
) -> None:
    setup, built = compiled
    ref = write_image(built, f"oci:{tmp_path / 'out'}:compiled")
    report = verify_image(setup.lock, open_image(ref, setup.store), bytecode=True)
    assert report.identical, report.differences
    assert report.checked_bytecode == 4  # alpha, beta, tool, legacy (py2.py has none)

    # A layer on top swaps alpha's .pyc for other code with a header that still matches
    # the source (mtime 0, its size), so the image's Python would run it.
    layers = zip(built.layers, built.layer_paths, strict=True)
    holding = next(path for layer, path in layers if "alpha==1.0" in layer.distributions)
    alpha = layer_files(holding)[f"{VENV_SITE}/alpha/__init__.py"]
    pyc_path = f"{VENV_SITE}/alpha/__pycache__/__init__.cpython-311.pyc"
    code = compile('__version__ = "pwned"\n', "/x.py", "exec", dont_inherit=True)
    forged = importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, 0, len(alpha))
    forged += marshal.dumps(code)
    image = OciLayout.open(tmp_path / "out").image("compiled")
    changed = append_layer(image, tmp_path / "changed", lambda w: w.add_file(pyc_path, forged))
    assert verify_image(setup.lock, open_image(changed, setup.store)).identical  # RECORD's view
    report = verify_image(setup.lock, open_image(changed, setup.store), bytecode=True)
    assert [(d.kind, d.name, d.path) for d in report.differences] == [
        ("changed", "alpha", f"/{pyc_path}")
    ]

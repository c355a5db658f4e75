"""``envship verify`` against the locked wheels in the store, not the installed RECORD.

Every test installs real wheels (built here, with ``.data`` headers, data and scripts,
executable files and console scripts) with :func:`envship.install.install` from a real
store, then tampers with the environment the way someone who can write its files would:
rewriting the installed RECORD to agree with what they did. Each tampering is one
fixture in a table, with what the report must hold in quick and in full mode.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from packaging.utils import canonicalize_name

import envship.install as install_mod
from envship import _records, _wheelrecord
from envship._uv import uv_bin
from envship._wheelrecord import NO_STORE
from envship.cli.main import main
from envship.host import probe
from envship.install import install
from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import Difference, verify
from indexlib import ZIP_DATE
from test_install import stocked_store, write_lock

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
CORE = b"def main():\n    return 'core'\n"


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build(out: Path, name: str, version: str, files: dict[str, tuple[bytes, int]]) -> Path:
    """A PEP 427 wheel with exactly ``files`` (path -> (bytes, mode)) and a RECORD."""
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n"
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files = {
        **files,
        f"{info}/METADATA": (metadata.encode(), 0o644),
        f"{info}/WHEEL": (wheel.encode(), 0o644),
    }
    record = "".join(f"{p},{record_hash(d)},{len(d)}\n" for p, (d, _) in files.items())
    files[f"{info}/RECORD"] = ((record + f"{info}/RECORD,,\n").encode(), 0o644)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, (data, mode) in files.items():
            entry = zipfile.ZipInfo(rel, ZIP_DATE)
            entry.external_attr = mode << 16
            zf.writestr(entry, data)
    return path


def rich_files(core: bytes = CORE) -> dict[str, tuple[bytes, int]]:
    data = "rich-1.0.data"
    return {
        "rich/__init__.py": (b"__version__ = '1.0'\n", 0o644),
        "rich/core.py": (core, 0o644),
        "rich/run.sh": (b"#!/bin/sh\necho run\n", 0o755),
        f"{data}/headers/rich.h": (b"int rich;\n", 0o644),
        f"{data}/data/share/rich/rich.txt": (b"shared data\n", 0o644),
        f"{data}/scripts/rich-py": (b"#!python\nimport rich\nprint(rich.__version__)\n", 0o755),
        f"{data}/scripts/rich-sh": (b"#!/bin/sh\necho sh\n", 0o755),
        f"{data}/purelib/rich_extra.py": (b"extra = 1\n", 0o644),
        "rich-1.0.dist-info/entry_points.txt": (b"[console_scripts]\nrich = rich.core:main\n",
                                                0o644),
    }  # fmt: skip


@dataclass(frozen=True)
class Env:
    root: Path
    lock: LockFile
    store: Store
    dist: Path  # where the wheels were built

    @property
    def site(self) -> Path:
        return self.root / "lib" / f"python{PY}" / "site-packages"

    def uv_install(self, wheel: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_INDEX", "VIRTUAL_"))}
        python = str(self.root / "bin" / "python")
        subprocess.run(
            [uv_bin(), "pip", "install", "--quiet", "--no-config", "--python", python,
             "--reinstall", "--no-index", "--offline", "--link-mode", "copy", str(wheel)],
            check=True, env=env,
        )  # fmt: skip


@pytest.fixture(autouse=True)
def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests use cpu targets: the GPU question is not the machine's."""

    def fake_probe(python: str | os.PathLike[str] | None = None) -> Any:
        return probe(python, gpu=lambda: False)

    monkeypatch.setattr(install_mod, "probe", fake_probe)


def make_env(tmp_path: Path, link_mode: str = "copy") -> Env:
    dist = tmp_path / "dist"
    wheels = [
        build(dist, "rich", "1.0", rich_files()),
        build(dist, "plain", "2.0", {"plain.py": (b"x = 1\n", 0o644)}),
    ]
    lock = write_lock(tmp_path / "pylock.toml", wheels)
    store = stocked_store(tmp_path / "store", wheels)
    install(lock, store, tmp_path / "env", link_mode=link_mode)  # type: ignore[arg-type]
    return Env(tmp_path / "env", lock, store, dist)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def rewrite_record(info: Path, change: Callable[[list[list[str]]], None]) -> None:
    """Edit an installed RECORD as someone covering their tracks would."""
    rows = list(csv.reader(io.StringIO((info / "RECORD").read_text())))
    change(rows)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    (info / "RECORD").write_text(out.getvalue())


def rehash(env: Env, rel: str) -> None:
    """Make the installed RECORD line of ``rel`` (relative to site-packages) match the disk."""
    data = (env.site / rel).read_bytes()

    def change(rows: list[list[str]]) -> None:
        for row in rows:
            if row[0] == rel:
                row[1:] = [record_hash(data), str(len(data))]

    rewrite_record(env.site / "rich-1.0.dist-info", change)


def relevant(diffs: Iterable[Difference]) -> list[tuple[str, str, str]]:
    return sorted((d.kind, d.name, d.path) for d in diffs)


Expect = list[tuple[str, str, str]]

# -- tamperings: each returns what quick and full mode must report ------------------------


def _trojan_same_version(e: Env) -> tuple[Expect, Expect]:
    """A wheel of the same name and version, another core.py, a RECORD to match."""
    evil = build(e.dist / "evil", "rich", "1.0", rich_files(CORE + b"import os\n"))
    e.uv_install(evil)
    hit = [("changed", "rich", str(e.site / "rich" / "core.py"))]
    return hit, hit


def _append_and_rehash(e: Env) -> tuple[Expect, Expect]:
    path = e.site / "rich" / "core.py"
    path.write_bytes(path.read_bytes() + b"import os\n")
    rehash(e, "rich/core.py")
    hit = [("changed", "rich", str(path))]
    return hit, hit


def _same_size_edit_and_rehash(e: Env) -> tuple[Expect, Expect]:
    path = e.site / "rich" / "core.py"
    path.write_bytes(path.read_bytes().replace(b"core", b"evil"))
    rehash(e, "rich/core.py")
    hit = [("changed", "rich", str(path))]  # the RECORD line is not the wheel's: no hashing
    return hit, hit


def _hashless_pth(e: Env) -> tuple[Expect, Expect]:
    pth = e.site / "zzz.pth"
    pth.write_text("import os\n")
    rewrite_record(e.site / "rich-1.0.dist-info", lambda rows: rows.append(["zzz.pth", "", ""]))
    hit = [("added", "rich", str(pth))]
    return hit, hit


def _hashed_module_in_package(e: Env) -> tuple[Expect, Expect]:
    path = e.site / "rich" / "evil.py"
    path.write_text("import os\n")
    rehash_row = ["rich/evil.py", record_hash(path.read_bytes()), str(path.stat().st_size)]
    rewrite_record(e.site / "rich-1.0.dist-info", lambda rows: rows.append(rehash_row))
    hit = [("added", "rich", str(path))]
    return hit, hit


def _console_script_body(e: Env) -> tuple[Expect, Expect]:
    path = e.root / "bin" / "rich"
    path.write_text(
        path.read_text().replace("from rich.core import main", "from os import system as main")
    )
    rehash(e, "../../../bin/rich")
    return [], [("changed", "rich", str(path))]  # launcher content: read in full mode


def _data_script_body(e: Env) -> tuple[Expect, Expect]:
    path = e.root / "bin" / "rich-py"
    path.write_text(path.read_text().replace("print(rich.__version__)", "import os"))
    rehash(e, "../../../bin/rich-py")
    return [], [("changed", "rich", str(path))]


def _header_edit(e: Env) -> tuple[Expect, Expect]:
    path = e.root / "include" / "site" / f"python{PY}" / "rich" / "rich.h"
    path.write_text("int evil;\n")
    rehash(e, f"../../../include/site/python{PY}/rich/rich.h")
    hit = [("changed", "rich", str(path))]
    return hit, hit


def _data_file_gone_from_record(e: Env) -> tuple[Expect, Expect]:
    path = e.root / "share" / "rich" / "rich.txt"
    path.unlink()
    rewrite_record(
        e.site / "rich-1.0.dist-info",
        lambda rows: rows.remove(next(r for r in rows if "rich.txt" in r[0])),
    )
    hit = [("removed", "rich", str(path))]
    return hit, hit


def _file_is_a_symlink(e: Env) -> tuple[Expect, Expect]:
    path = e.site / "rich" / "core.py"
    outside = e.root.parent / "outside-core.py"
    outside.write_bytes(path.read_bytes())  # the same bytes: only where they live differs
    path.unlink()
    path.symlink_to(outside)
    hit = [("changed", "rich", str(path))]
    return hit, hit


def _package_folder_is_a_symlink(e: Env) -> tuple[Expect, Expect]:
    folder = e.site / "rich"
    outside = e.root.parent / "outside-rich"
    shutil.copytree(folder, outside)
    shutil.rmtree(folder)
    folder.symlink_to(outside)
    hit = [("changed", "rich", str(folder))]
    return hit, hit


def _console_script_not_executable(e: Env) -> tuple[Expect, Expect]:
    path = e.root / "bin" / "rich"
    path.chmod(0o644)
    hit = [("changed", "rich", str(path))]
    return hit, hit


def _executable_file_not_executable(e: Env) -> tuple[Expect, Expect]:
    path = e.site / "rich" / "run.sh"
    path.chmod(0o644)
    hit = [("changed", "rich", str(path))]
    return hit, hit


def _world_writable(e: Env) -> tuple[Expect, Expect]:
    path = e.site / "plain.py"
    path.chmod(0o666)
    hit = [("changed", "plain", str(path))]
    return hit, hit


def _duplicate_of_another_version(e: Env) -> tuple[Expect, Expect]:
    copy = e.site / "rich-0.9.dist-info"  # sorts before the locked rich-1.0.dist-info
    shutil.copytree(e.site / "rich-1.0.dist-info", copy)
    meta = copy / "METADATA"
    meta.write_text(meta.read_text().replace("Version: 1.0", "Version: 0.9"))
    path = e.site / "rich" / "core.py"  # the locked copy's files are still checked
    path.write_bytes(path.read_bytes() + b"#\n")
    hit = [("changed", "rich", str(path)), ("duplicate", "rich", str(copy))]
    return hit, hit


def _duplicate_of_the_same_version(e: Env) -> tuple[Expect, Expect]:
    copy = e.site / "Rich-1.0.dist-info"  # another spelling, sorts first
    shutil.copytree(e.site / "rich-1.0.dist-info", copy)
    hit = [("duplicate", "rich", str(copy))]
    return hit, hit


TAMPERINGS = [
    _trojan_same_version,
    _append_and_rehash,
    _same_size_edit_and_rehash,
    _hashless_pth,
    _hashed_module_in_package,
    _console_script_body,
    _data_script_body,
    _header_edit,
    _data_file_gone_from_record,
    _file_is_a_symlink,
    _package_folder_is_a_symlink,
    _console_script_not_executable,
    _executable_file_not_executable,
    _world_writable,
    _duplicate_of_another_version,
    _duplicate_of_the_same_version,
]


@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_a_pristine_environment_matches_its_wheels(env: Env, full: bool) -> None:
    report = verify(env.lock, env.root, full=full, store=env.store)
    assert report.identical, report.differences
    assert NO_STORE not in report.notes
    # every file of both wheels, the generated launcher and the installer's own files
    assert report.checked_files >= 18


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=[t.__name__.strip("_") for t in TAMPERINGS])
@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_each_tampering_is_reported_against_the_locked_wheel(
    env: Env, tamper: Callable[[Env], tuple[Expect, Expect]], full: bool
) -> None:
    quick_expect, full_expect = tamper(env)
    report = verify(env.lock, env.root, full=full, store=env.store)
    assert relevant(report.differences) == sorted(full_expect if full else quick_expect)


def test_without_the_store_the_notes_say_what_vouched(env: Env, tmp_path: Path) -> None:
    _append_and_rehash(env)
    report = verify(env.lock, env.root, full=True)  # the installed RECORD agrees with the disk
    assert report.identical and NO_STORE in report.notes
    empty = Store(tmp_path / "empty-store")
    report = verify(env.lock, env.root, full=True, store=empty)
    (note,) = [n for n in report.notes if "installed RECORD only" in n]
    # No wheel there at all: most likely another store was meant; one sentence says so.
    assert f"the store {empty.root} holds none of the 2 locked wheels" in note
    partial = Store(tmp_path / "partial-store")
    plain = next(a for a in env.lock.artifacts() if a.name == "plain")
    partial.add_file(env.store.path(plain.sha256), plain.sha256)
    report = verify(env.lock, env.root, full=True, store=partial)
    (note,) = [n for n in report.notes if "installed RECORD only" in n]
    assert "rich (rich-1.0-py3-none-any.whl not in the store)" in note
    assert "plain" not in note and "holds none" not in note


def test_a_damaged_wheel_in_the_store_vouches_for_nothing(env: Env) -> None:
    wheel = next(a for a in env.lock.artifacts() if a.name == "rich")
    path = env.store.path(wheel.sha256)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-30] ^= 1  # in the zip's end record: same size, another sha256
    path.write_bytes(bytes(data))
    report = verify(env.lock, env.root, full=True, store=env.store)
    assert report.identical  # the environment is fine; the store is not
    assert any("damaged in the store" in n for n in report.notes)


def test_a_symlink_install_is_checked_where_its_links_point(tmp_path: Path) -> None:
    e = make_env(tmp_path, link_mode="symlink")
    assert (e.site / "rich" / "core.py").is_symlink()
    report = verify(e.lock, e.root, full=True, store=e.store)
    assert report.identical, report.differences
    assert any("--link-mode symlink" in n for n in report.notes)


def test_group_writable_files_are_a_note(env: Env) -> None:
    (env.site / "plain.py").chmod(0o664)
    report = verify(env.lock, env.root, store=env.store)
    assert report.identical
    (note,) = [n for n in report.notes if "group-writable" in n]
    assert str(env.site / "plain.py") in note


# -- byte-code a wheel lists in its own RECORD ---------------------------------------------

TMPL = b"def render():\n    return 'template'\n"
# What numpy 2.1.0 does (numpy/distutils/__pycache__/conv_template.cpython-311.pyc): byte-code
# in the wheel and in its RECORD. These bytes are no valid .pyc: uv's --compile-bytecode
# writes its own over them, as Python itself would.
WHEEL_PYC = b"\x00 byte-code the wheel ships\n"


def cached_files(tag: str = sys.implementation.cache_tag) -> dict[str, tuple[bytes, int]]:
    """A package whose wheel ships byte-code, and another file, under ``__pycache__``."""
    return {
        "cached/__init__.py": (b"", 0o644),
        "cached/tmpl.py": (TMPL, 0o644),
        f"cached/__pycache__/tmpl.{tag}.pyc": (WHEEL_PYC, 0o644),
        "cached/__pycache__/notes.txt": (b"not byte-code\n", 0o644),
    }


def make_cached_env(tmp_path: Path, compile_bytecode: bool) -> Env:
    dist = tmp_path / "dist"
    wheels = [build(dist, "cached", "1.0", cached_files())]
    lock = write_lock(tmp_path / "pylock.toml", wheels)
    store = stocked_store(tmp_path / "store", wheels)
    install(lock, store, tmp_path / "env", compile_bytecode=compile_bytecode)
    return Env(tmp_path / "env", lock, store, dist)


def rehash_cached(e: Env, rel: str) -> None:
    data = (e.site / rel).read_bytes()

    def change(rows: list[list[str]]) -> None:
        for row in rows:
            if row[0] == rel:
                row[1:] = [record_hash(data), str(len(data))]

    rewrite_record(e.site / "cached-1.0.dist-info", change)


@pytest.mark.parametrize("compile_bytecode", [False, True], ids=["as-is", "compiled"])
@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_byte_code_the_wheel_lists_is_not_compared_by_record(
    tmp_path: Path, compile_bytecode: bool, full: bool
) -> None:
    """uv installs the wheel's .pyc (and, compiling, writes its own over it): the
    environment is identical either way, and what is next to it is still checked."""
    e = make_cached_env(tmp_path, compile_bytecode)
    pyc = e.site / "cached" / "__pycache__" / f"tmpl.{sys.implementation.cache_tag}.pyc"
    assert pyc.is_file() and (pyc.read_bytes() == WHEEL_PYC) is not compile_bytecode
    report = verify(e.lock, e.root, full=full, store=e.store)
    assert report.identical, report.differences

    source = e.site / "cached" / "tmpl.py"
    source.write_bytes(TMPL.replace(b"template", b"evil!!!!"))  # same size
    notes = e.site / "cached" / "__pycache__" / "notes.txt"
    notes.write_bytes(b"import os\n")
    rehash_cached(e, "cached/tmpl.py")
    rehash_cached(e, "cached/__pycache__/notes.txt")
    report = verify(e.lock, e.root, full=full, store=e.store)
    assert relevant(report.differences) == [
        ("changed", "cached", str(notes)), ("changed", "cached", str(source))
    ]  # fmt: skip


def test_the_fetch_the_note_gives_names_the_lock_and_runs_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store that holds none of the locked wheels: the note's `envship fetch` must name
    the lock (without --lock, fetch reads ./pylock.toml: in `/`, none). Run as printed,
    from `/`, it fills that store, and then the wheels vouch for the environment."""
    e = make_env(tmp_path)
    # The same wheels, locked by path, so the printed fetch needs no network.
    data = tomllib.loads(e.lock.path.read_text())
    for package in data["packages"]:
        for wheel in package["wheels"]:
            name = wheel.pop("url").rsplit("/", 1)[1]
            wheel["path"] = os.path.relpath(e.dist / name, tmp_path / "by path")
    (tmp_path / "by path").mkdir()
    lock_path = tmp_path / "by path" / "pylock.toml"
    lock_path.write_text(tomli_w.dumps(data))
    lock = LockFile.load(lock_path)
    locked: dict[str, _wheelrecord.Locked] = {}
    for p, artifact in lock.select(lock.targets[0]):
        pin = _wheelrecord.locked_of(artifact)
        assert pin is not None
        locked[canonicalize_name(str(p.name))] = pin
    verified = _records.installed([e.site])
    layout = _wheelrecord.layout_of((e.site,), PY)
    empty = Store(tmp_path / "empty store")
    trusted = _wheelrecord.trust(verified, locked, empty, layout, full=False, lock=lock.path)
    (note,) = trusted.notes
    fetch = re.search(r"`(envship fetch [^`]*)`", note)
    assert fetch is not None, note
    assert fetch.group(1) == (
        f"envship fetch --lock {shlex.quote(str(lock_path))} --store {shlex.quote(str(empty.root))}"
    )
    monkeypatch.chdir("/")
    assert main(shlex.split(fetch.group(1))[1:]) == 0, capsys.readouterr().err
    again = _wheelrecord.trust(verified, locked, empty, layout, full=False, lock=lock.path)
    assert again.notes == () and len(again.entries) == len(trusted.entries)

"""``envship verify`` and the interpreter line of every script an installer wrote: a
script edited to run another Python, or a venv moved or copied elsewhere (its scripts
still name the old place), is a difference; a relocatable venv moves freely."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import verify
from test_verify import Venv, Wheels, make_venv, wheels  # noqa: F401  (a fixture)


def _first_line(path: Path, line: bytes) -> None:
    data = path.read_bytes()
    path.write_bytes(line + b"\n" + data.partition(b"\n")[2])


def _store(tmp_path: Path, wheels: Wheels) -> Store:  # noqa: F811
    store = Store(tmp_path / "store")
    for wheel in (wheels.alpha, wheels.beta, wheels.tool):
        store.add_file(wheel)
    return store


@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
@pytest.mark.parametrize("with_store", [False, True], ids=["record", "store"])
def test_a_script_pointed_at_another_python_is_changed(
    tmp_path: Path,
    wheels: Wheels,  # noqa: F811
    full: bool,
    with_store: bool,
) -> None:
    venv = make_venv(tmp_path, wheels)
    tool = venv.root / "bin" / "tool"
    _first_line(tool, b"#!/usr/bin/python3")
    store = _store(tmp_path, wheels) if with_store else None

    report = verify(LockFile.load(wheels.lock_no_omega), venv.root, full=full, store=store)

    [diff] = report.differences
    assert (diff.kind, diff.name, diff.path) == ("changed", "tool", str(tool))
    if with_store:  # the launcher is checked by what it must be
        assert diff.actual == "runs /usr/bin/python3"
        assert diff.expected == f"runs {venv.root}/bin/python"
    else:  # the installed RECORD's size (or hash) is what tells first
        assert diff.actual is not None and diff.actual.startswith(("size", "sha256"))


def test_a_moved_venv_names_its_old_place(tmp_path: Path, wheels: Wheels) -> None:  # noqa: F811
    venv = make_venv(tmp_path, wheels)
    moved = tmp_path / "moved"
    venv.root.rename(moved)
    with pytest.raises(FileNotFoundError):  # what the check is for: the script cannot run
        subprocess.run([str(moved / "bin" / "tool")], capture_output=True, check=False)

    report = verify(LockFile.load(wheels.lock_no_omega), moved)

    assert [(d.kind, d.path, d.actual) for d in report.differences] == [
        ("changed", str(moved / "bin" / "tool"), f"runs {venv.root}/bin/python")
    ]


def test_a_relocatable_venv_moves_freely(tmp_path: Path, wheels: Wheels) -> None:  # noqa: F811
    venv = Venv(tmp_path / "venv", tmp_path / "uv-cache")
    venv.uv(
        "venv", "--no-config", "--relocatable", "--python", shutil.which("python3") or "", venv.root
    )
    venv.install(wheels.alpha, wheels.beta, wheels.tool)
    moved = tmp_path / "elsewhere" / "venv"
    moved.parent.mkdir()
    venv.root.rename(moved)

    lock = LockFile.load(wheels.lock_no_omega)
    assert verify(lock, moved, full=True, store=_store(tmp_path, wheels)).identical
    # The same trampoline in a venv that is not relocatable is not its own.
    (moved / "pyvenv.cfg").write_text(
        (moved / "pyvenv.cfg").read_text().replace("relocatable = true", "")
    )
    [diff] = verify(lock, moved).differences
    assert diff.path == str(moved / "bin" / "tool")
    assert diff.actual == "runs the python beside it (a relocatable script)"


def test_a_venv_reached_through_a_link_is_its_own(tmp_path: Path, wheels: Wheels) -> None:  # noqa: F811
    """ROOT/NAME/current names versions/KEY, where the scripts were written."""
    venv = make_venv(tmp_path, wheels)
    link = tmp_path / "current"
    link.symlink_to(venv.root)
    assert verify(LockFile.load(wheels.lock_no_omega), link).identical

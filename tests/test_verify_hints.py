"""The command ``envship verify``'s hint gives for changed files of an environment
``envship install`` made: run as printed, it makes the environment identical again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from envship.install import install
from envship.verify import VerifyMismatchError, verify
from test_verify_incomplete import Made, finish, made  # noqa: F401  (a fixture)


def _edit(env: Path) -> None:
    module = next(env.glob("lib/python*/site-packages/beta/__init__.py"))
    with module.open("a") as f:
        f.write("# edited\n")


def _delete(env: Path) -> None:
    next(env.glob("lib/python*/site-packages/beta/__init__.py")).unlink()


@pytest.mark.parametrize("damage", [_edit, _delete])
def test_changed_files_of_a_private_env_get_the_reinstall_command(
    tmp_path: Path,
    made: Made,  # noqa: F811
    damage: Callable[[Path], None],
) -> None:
    dest = tmp_path / "env"
    install(made.lock, made.store, dest)
    damage(dest)

    report = verify(made.lock, dest, full=True, store=made.store)
    assert not report.identical
    hint = VerifyMismatchError(report).hint
    assert f"`envship install {dest} --reinstall --lock {made.lock.path}`" in (hint or "")

    finish(hint)
    assert verify(made.lock, dest, full=True, store=made.store).identical


def test_a_shared_versions_changed_files_get_env_create_reinstall(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    from envship.envs import create_env

    root = tmp_path / "root"
    version = create_env(made.lock, made.store, root, name="ds", compile_bytecode=True)
    _edit(version.path)
    report = verify(made.lock, root / "ds" / "current", full=True, store=made.store)
    hint = VerifyMismatchError(report).hint or ""
    assert (
        f"`envship env create ds --root {root} --compile --reinstall --lock {made.lock.path}`"
        in hint
    )

    finish(hint)
    assert verify(made.lock, root / "ds" / "current", full=True, store=made.store).identical
    assert os.readlink(root / "ds" / "current") == f"versions/{version.key}"  # the same one

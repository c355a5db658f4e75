"""The command ``envship verify``'s hint gives for an environment that left its lock:
changed files of one ``envship install`` made, distributions missing, extra or at another
version, in a private environment, a shared version, or one envship did not make. Run as
printed, it makes the environment identical again."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

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


# -- distributions missing, extra or at another version: the install that returns them ----


def _uv(env: Path, *args: str | Path) -> None:
    from test_verify import Venv

    Venv(env, env.parent / "uv-cache").uv(*args)


def _uninstall(env: Path, made: Made) -> str:  # noqa: F811
    _uv(env, "pip", "uninstall", "--no-config", "--python", env / "bin" / "python", "beta")
    return "missing"


def _extra(env: Path, made: Made) -> str:  # noqa: F811
    from indexlib import build_wheel

    omega = build_wheel(env.parent / "extra", "omega", "1.0")
    _uv(env, "pip", "install", "--no-config", "--python", env / "bin" / "python",
        "--no-index", "--offline", omega)  # fmt: skip
    return "extra"


def _other_version(env: Path, made: Made) -> str:  # noqa: F811
    _uv(env, "pip", "install", "--no-config", "--python", env / "bin" / "python",
        "--no-index", "--offline", made.wheels["beta11"])  # fmt: skip
    return "version"


SET_CHANGES = [_uninstall, _extra, _other_version]


@pytest.mark.parametrize("change", SET_CHANGES, ids=[c.__name__.strip("_") for c in SET_CHANGES])
def test_a_private_envs_distributions_get_the_install_that_returns_them(
    tmp_path: Path,
    made: Made,  # noqa: F811
    change: Callable[[Path, Made], str],
) -> None:
    dest = tmp_path / "env"
    install(made.lock, made.store, dest)
    kind = change(dest, made)

    report = verify(made.lock, dest, full=True, store=made.store)
    assert [d.kind for d in report.differences] == [kind]
    hint = VerifyMismatchError(report).hint or ""
    assert f"`envship install {dest} --lock {made.lock.path}` returns it to the lock" in hint
    assert "--reinstall" not in hint  # its files are the wheels': nothing to unpack again

    finish(hint)
    assert verify(made.lock, dest, full=True, store=made.store).identical


def test_a_shared_versions_missing_distribution_gets_env_create_reinstall(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    """A version is never changed in place: `env create` without --reinstall would find
    the version of that key there and keep it as it is."""
    from envship.envs import create_env

    root = tmp_path / "root"
    version = create_env(made.lock, made.store, root, name="ds")
    _uninstall(version.path, made)
    (version.path / ".lock").unlink()  # uv's, 0666: a change of its own in a shared version
    report = verify(made.lock, root / "ds" / "current", store=made.store)
    assert [d.kind for d in report.differences] == ["missing"]
    hint = VerifyMismatchError(report).hint or ""
    assert f"`envship env create ds --root {root} --reinstall --lock {made.lock.path}`" in hint

    finish(hint)
    assert verify(made.lock, root / "ds" / "current", full=True, store=made.store).identical


def test_an_env_envship_did_not_make_gets_a_new_one(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    from test_verify import Venv

    venv = Venv(tmp_path / "venv", tmp_path / "uv-cache")
    venv.uv("venv", "--no-config", "--python", sys.executable, venv.root)
    venv.uv("pip", "install", "--no-config", "--python", venv.python, "--no-index", "--offline",
            "--no-deps", made.wheels["alpha"], made.wheels["tool"])  # fmt: skip
    report = verify(made.lock, venv.root, store=made.store)
    assert [d.kind for d in report.differences] == ["missing"]
    hint = VerifyMismatchError(report).hint or ""
    command = f"`envship install NEW_ENV --lock {made.lock.path}`"
    assert command in hint and f"does not change {venv.root}" in hint

    new = tmp_path / "new"
    finish(hint.replace("NEW_ENV", str(new)))
    assert verify(made.lock, new, full=True, store=made.store).identical


@pytest.mark.parametrize(
    ("groups", "option"), [((), " --no-groups"), (("dev",), " --group dev")], ids=["none", "dev"]
)
@pytest.mark.parametrize("damage", [_edit, _delete], ids=["edit", "delete"])
def test_the_command_keeps_the_groups_verify_was_asked_for(
    tmp_path: Path,
    made: Made,  # noqa: F811
    groups: tuple[str, ...],
    option: str,
    damage: Callable[[Path], None],
) -> None:
    """An environment installed with some groups of a lock of two: the command verify
    printed took every group (install's default), so the next verify with the same
    groups found the other group's distributions extra, and said the same again."""
    from test_install import write_lock

    lock = write_lock(
        tmp_path / "groups.toml",
        [made.wheels[k] for k in ("alpha", "beta", "tool")],
        groups={"dev": ["alpha"], "docs": ["tool"]},
    )
    dest = tmp_path / "env"
    install(lock, made.store, dest, groups=groups)
    damage(dest)

    report = verify(lock, dest, full=True, store=made.store, groups=groups)
    hint = VerifyMismatchError(report).hint or ""
    assert f"--lock {lock.path}{option}`" in hint, hint

    finish(hint)
    assert verify(lock, dest, full=True, store=made.store, groups=groups).identical


@pytest.mark.parametrize("link_mode", [None, "copy"], ids=["uv-default", "copy"])
def test_a_change_to_a_hard_linked_file_is_said_to_be_in_uvs_cache_too(
    tmp_path: Path,
    made: Made,  # noqa: F811
    link_mode: Literal["copy"] | None,
) -> None:
    """uv's default link mode hard-links each file to its cache: a chmod in the
    environment is a chmod of the cached file, which a new install from that cache
    links again (auditor a11, M4). The hint says so only where the file is a hard link."""
    dest = tmp_path / "env"
    install(made.lock, made.store, dest, link_mode=link_mode)
    module = next(dest.glob("lib/python*/site-packages/beta/__init__.py"))
    module.chmod(0o4644)
    report = verify(made.lock, dest, store=made.store)
    assert [(d.kind, d.path) for d in report.differences] == [("changed", str(module))]
    hint = VerifyMismatchError(report).hint or ""

    other = tmp_path / "other"  # a new environment, from the same uv cache
    install(made.lock, made.store, other, link_mode=link_mode)
    copy = next(other.glob("lib/python*/site-packages/beta/__init__.py"))
    in_cache = bool(copy.stat().st_mode & stat.S_ISUID)
    assert in_cache == (link_mode is None)
    said = (
        f"{module} is a hard link (2 names): installed with uv's default link mode, its files "
        "are linked to uv's cache, so the change is in the cache too"
    )
    assert (said in hint) == in_cache, hint
    finish(hint)  # the remedy the hint gives still makes this one identical
    assert verify(made.lock, dest, store=made.store).identical

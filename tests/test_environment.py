"""Which paths ``envship verify`` takes as an environment, and which lock target it holds
one to (``envship._environment``), on environments ``envship install`` made from real
wheels and run through the real CLI.

verify takes a venv, an interpreter, a site-packages folder (sysconfig's names) or
``$VIRTUAL_ENV``; any other folder (the stdlib's ``lib/pythonX.Y``, a package folder, a
venv's ``lib/``) is refused with exit code 2 and the form to use instead, never compared as
an empty site-packages. An interpreter no lock target is for is refused with what makes
one: a target in the spec and a new lock, not a ``--target`` that cannot fit.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from envship.cli.main import main
from envship.errors import SpecError, TargetError
from envship.install import install
from envship.lockfile import LockFile
from envship.verify import find_environment, verify
from test_install import HOST, PY, target, write_lock
from test_verify_incomplete import Made, made  # noqa: F401  (a fixture)

NEXT_PY = f"3.{int(PY.split('.')[1]) + 1}"


@pytest.fixture
def env(tmp_path: Path, made: Made) -> Path:  # noqa: F811
    dest = tmp_path / "env"
    install(made.lock, made.store, dest)
    return dest


def site_of(env: Path) -> Path:
    return env / "lib" / f"python{PY}" / "site-packages"


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = main(["verify", *map(str, args)])
    return code, capsys.readouterr().err


# -- the forms verify takes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        lambda env, mp: env,
        lambda env, mp: env / "bin" / "python",
        lambda env, mp: site_of(env),
        lambda env, mp: mp.setenv("VIRTUAL_ENV", str(env)),  # None: the active venv
    ],
    ids=["venv", "interpreter", "site-packages", "VIRTUAL_ENV"],
)
def test_every_form_the_readme_names_is_verified(
    env: Path,
    made: Made,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    form: Callable[[Path, pytest.MonkeyPatch], Path | None],
) -> None:
    report = verify(made.lock, form(env, monkeypatch), full=True, store=made.store)
    assert report.identical, report.differences
    assert report.environment.site_packages == (site_of(env),)
    assert report.environment.python == PY


# (the path named, relative to the env; the form the hint offers instead, relative too)
NOT_ENVIRONMENTS = [
    (f"lib/python{PY}/site-packages/beta", f"lib/python{PY}/site-packages"),  # a package
    (f"lib/python{PY}", ""),  # the folder around site-packages: the venv it lies in
    ("lib", ""),
    ("bin", ""),
]


@pytest.mark.parametrize(
    ("named", "instead"), NOT_ENVIRONMENTS, ids=[n for n, _ in NOT_ENVIRONMENTS]
)
def test_a_folder_in_a_venv_is_refused_naming_the_form_to_use(
    env: Path,
    made: Made,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    named: str,
    instead: str,
) -> None:
    with pytest.raises(SpecError, match="is not an environment") as info:
        verify(made.lock, env / named)
    assert info.value.exit_code == 2
    assert info.value.hint is not None
    assert info.value.hint.endswith(
        f"; here: {(env / instead) if instead else env}, "
        + ("the site-packages folder it lies in" if instead else "the venv it lies in")
    )
    code, err = run(capsys, env / named, "--lock", made.lock.path)
    assert code == 2
    assert f"error: {env / named} is not an environment" in err
    assert "hint: name a venv, its bin/python, or a site-packages folder" in err
    assert "missing" not in err  # never compared as an empty site-packages


def test_the_stdlib_folder_is_refused(made: Made) -> None:  # noqa: F811
    stdlib = Path(sysconfig.get_paths()["stdlib"])  # lib/pythonX.Y of this interpreter
    with pytest.raises(SpecError, match="is not an environment") as info:
        verify(made.lock, stdlib)
    assert info.value.exit_code == 2
    assert [p.where for p in info.value.problems] == [str(stdlib)]


def test_a_target_folder_with_distributions_is_verified(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    """`pip install --target` leaves no site-packages name: its dist-info folders say it."""
    from test_verify import Venv

    folder = tmp_path / f"python{NEXT_PY}" / "target"  # a pythonX.Y above means nothing
    Venv(tmp_path / "unused", tmp_path / "uv-cache").uv(
        "pip", "install", "--no-config", "--python", "python3", "--target", folder,
        "--no-index", "--offline", *(made.wheels[k] for k in ("alpha", "beta", "tool")),
    )  # fmt: skip
    environment = find_environment(folder)
    assert (environment.site_packages, environment.python) == ((folder,), None)
    assert environment.record_root is None  # no prefix: what is above it is not its own
    report = verify(made.lock, folder, full=True)
    # Its scripts name the installing interpreter (no prefix to name): not a difference;
    # nor is the empty .lock uv flocks there, as at a venv's top (test_verify has bytes).
    assert (folder / ".lock").is_file()
    assert report.identical, report.differences


# -- an interpreter no lock target is for --------------------------------------------------


def _lock(tmp_path: Path, made: Made, *targets: dict[str, str]) -> LockFile:  # noqa: F811
    wheels = [made.wheels[k] for k in ("alpha", "beta", "tool")]
    return write_lock(tmp_path / "other.toml", wheels, targets=list(targets))


RELOCK = f"the lock has no target for CPython {PY} on {HOST}"


@pytest.mark.parametrize("how", ["venv", "interpreter"])
@pytest.mark.parametrize("named", [None, "next"], ids=["chosen", "named"])
def test_an_interpreter_no_target_is_for_gets_a_relock_hint(
    tmp_path: Path,
    env: Path,
    made: Made,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    how: str,
    named: str | None,
) -> None:
    lock = _lock(tmp_path, made, target("next", python=NEXT_PY))
    path = env if how == "venv" else env / "bin" / "python"
    with pytest.raises(TargetError) as info:
        verify(lock, path, target=lock.target(named) if named else None)
    hint = info.value.hint or ""
    assert info.value.exit_code == 2
    assert hint.startswith(f"{RELOCK} (only for CPython {NEXT_PY} on {HOST}), so no --target")
    assert f'python = "{PY}"' in hint and "`envship lock`" in hint
    assert "name one with --target" not in hint and "with --target:" not in hint
    code, err = run(capsys, path, "--lock", lock.path, *(("--target", named) if named else ()))
    assert code == 2 and f"hint: {RELOCK}" in err


@pytest.mark.parametrize("how", ["venv", "interpreter"])
def test_a_named_target_the_interpreter_cannot_run_points_at_the_one_it_can(
    tmp_path: Path,
    env: Path,
    made: Made,  # noqa: F811
    how: str,
) -> None:
    lock = _lock(tmp_path, made, target("ours"), target("next", python=NEXT_PY))
    path = env if how == "venv" else env / "bin" / "python"
    with pytest.raises(TargetError, match="cannot run the lock target next") as info:
        verify(lock, path, target=lock.target("next"))
    assert info.value.hint == "name the target the environment was made for with --target: ours"
    assert verify(lock, path, target=lock.target("ours"), full=True).identical


def test_several_fitting_targets_are_named(
    tmp_path: Path,
    env: Path,
    made: Made,  # noqa: F811
) -> None:
    lock = _lock(tmp_path, made, target("cpu"), target("gpu", variant="cuda"))
    with pytest.raises(TargetError, match="several lock targets fit") as info:
        verify(lock, env)
    assert info.value.hint == "name one with --target: cpu, gpu"

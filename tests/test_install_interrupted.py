"""``envship install`` after a run that did not finish: a killed reinstall is finished
the way it was asked for (interpreter, byte-code, link mode, a private uv cache), a
reinstall never empties an environment for wheels the store holds damaged, and a killed
run's staging is never taken for the next run's."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from envship.errors import ArtifactError
from envship.install import INCOMPLETE_NAME, MARKER_NAME, install
from envship.verify import verify
from test_install import run_py, versions, write_lock
from test_install_cleanup import hooked
from test_verify_incomplete import Made, killed, made  # noqa: F401  (a fixture)

LOCKED = {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}


def _beta(env: Path) -> Path:
    return next(env.glob("lib/python*/site-packages/beta/__init__.py"))


def test_a_killed_reinstall_is_finished_with_the_same_settings(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    dest = tmp_path / "env"
    install(made.lock, made.store, dest, compile_bytecode=True, link_mode="copy")
    before = json.loads((dest / MARKER_NAME).read_text())

    killed(tmp_path, "sync", "install", str(dest), "--lock", str(made.lock.path), "--reinstall")

    # Emptied and made again, not installed anew: verify says so, from the mark.
    assert (dest / INCOMPLETE_NAME).read_text() == "rebuild in progress\n"
    [half, *_] = verify(made.lock, dest).differences
    assert (half.kind, half.actual) == ("incomplete", "rebuild in progress")
    kept = json.loads((dest / MARKER_NAME).read_text())
    assert kept["reinstalling"] is True and kept["python"] == before["python"]
    result = install(made.lock, made.store, dest)  # no options: the kept ones apply
    assert result.action == "rebuilt"
    after = json.loads((dest / MARKER_NAME).read_text())
    assert (after["compiled"], after["link_mode"]) == (True, "copy")
    assert after["python"] == before["python"] and "reinstalling" not in after
    assert versions(dest) == LOCKED
    assert not (dest / INCOMPLETE_NAME).exists()


def test_a_reinstall_killed_while_emptying_the_env_has_its_settings_kept(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    """The settings are written before the environment is emptied: a SIGKILL at the
    first file removed leaves a marker that says how to finish it."""
    dest = tmp_path / "env"
    install(made.lock, made.store, dest, link_mode="copy")

    args = ["install", str(dest), "--lock", str(made.lock.path), "--reinstall"]
    run = hooked(tmp_path, dest, args, kill="emptying", term=False)

    assert run.returncode == -signal.SIGKILL, run.stderr
    assert (dest / INCOMPLETE_NAME).read_text() == "rebuild in progress\n"
    kept = json.loads((dest / MARKER_NAME).read_text())
    assert kept["reinstalling"] is True and kept["link_mode"] == "copy"
    result = install(made.lock, made.store, dest)
    assert result.action == "rebuilt"
    after = json.loads((dest / MARKER_NAME).read_text())
    assert after["link_mode"] == "copy" and "reinstalling" not in after
    assert versions(dest) == LOCKED


def test_a_killed_reinstall_still_takes_the_stores_bytes(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    """The edit reached uv's cache through a hard link: finishing the reinstall must not
    take the file from there."""
    dest = tmp_path / "env"
    install(made.lock, made.store, dest)
    with _beta(dest).open("r+") as f:
        f.write("raise SystemExit('edited')  #")

    killed(tmp_path, "sync", "install", str(dest), "--lock", str(made.lock.path), "--reinstall")
    install(made.lock, made.store, dest)

    assert run_py(dest, "import beta; print(beta.__version__)") == "1.0"


def test_a_reinstall_from_a_damaged_store_keeps_the_environment(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    dest = tmp_path / "env"
    install(made.lock, made.store, dest)
    marker = (dest / MARKER_NAME).read_bytes()
    beta_sha = next(a.sha256 for a in made.lock.artifacts() if a.name == "beta")
    content = made.store.path(beta_sha)
    os.chmod(content, 0o644)
    data = bytearray(content.read_bytes())
    data[-30] ^= 0xFF  # same size: only a hash tells
    content.write_bytes(bytes(data))

    with pytest.raises(ArtifactError, match="damaged") as err:
        install(made.lock, made.store, dest, reinstall=True)

    assert "fetch --verify" in (err.value.hint or "")
    assert (dest / MARKER_NAME).read_bytes() == marker
    assert not (dest / INCOMPLETE_NAME).exists()
    assert versions(dest) == LOCKED
    assert install(made.lock, made.store, dest).action == "unchanged"


def test_a_killed_runs_requirements_are_not_the_next_runs(
    tmp_path: Path,
    made: Made,  # noqa: F811
) -> None:
    """Killed while staging another lock: its requirements file stays in the work folder
    (SIGKILL runs no cleanup); the next run writes its own."""
    other = write_lock(tmp_path / "other.toml", [made.wheels["alpha"], made.wheels["beta11"]])
    dest = tmp_path / "env"
    killed(tmp_path, "sync", "install", str(dest), "--lock", str(other.path))
    assert (tmp_path / "env.envship-tmp" / "requirements.txt").is_file()

    result = install(made.lock, made.store, dest)

    assert result.action == "rebuilt"
    assert versions(dest) == LOCKED

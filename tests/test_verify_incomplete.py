"""``envship verify`` on environments a run did not finish: a real ``envship install`` or
``envship env create`` SIGKILLed while uv works, and an update uv refused. The incomplete
marker comes first in the report, with its text, and the hint's command finishes the
environment (run here for real, after which verify finds it identical)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from envship._uv import uv_bin
from envship.cli.main import main
from envship.errors import ArtifactError, HalfMadeError
from envship.install import INCOMPLETE_NAME, MARKER_NAME, install
from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import VerifyMismatchError, verify
from test_install import build_wheels, stocked_store, target, write_lock

# A uv that stops before the step named by $STEP ("venv", or "sync" of `uv pip sync`) until
# told to go on: the run is then killed at a known point, with no timing involved.
_PAUSING_UV = """#!/bin/sh
step="$1"; [ "$1" = pip ] && step="$2"
if [ "$step" = "{step}" ]; then
  echo $$ > "{flag}"
  while [ ! -e "{flag}.go" ]; do sleep 0.05; done
fi
exec "{uv}" "$@"
"""
# The real CLI in a process of its own, with uv replaced by the pausing one (the only way
# in: envship runs the uv binary its `uv` package ships).
_CLI = textwrap.dedent(
    """
    import sys
    import envship.install
    from envship.cli.main import main
    envship.install.uv_bin = lambda: sys.argv[1]
    sys.exit(main(sys.argv[2:]))
    """
)


@dataclass(frozen=True)
class Made:
    lock: LockFile
    store: Store
    wheels: dict[str, Path]


@pytest.fixture
def made(tmp_path: Path) -> Made:
    wheels = build_wheels(tmp_path / "dist")
    lock = write_lock(tmp_path / "pylock.toml", [wheels[k] for k in ("alpha", "beta", "tool")])
    # ENVSHIP_STORE names tmp_path/store (conftest): the hint's command finds it there.
    store = stocked_store(Path(os.environ["ENVSHIP_STORE"]), list(wheels.values()))
    return Made(lock, store, wheels)


def _gone_or_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def killed(tmp_path: Path, step: str, *args: str) -> None:
    """Run ``envship ARGS`` until its uv reaches ``step``, then SIGKILL envship (and, with
    it, uv: envship's children die with it)."""
    flag = tmp_path / f"uv-{step}"
    pausing = tmp_path / "pausing-uv"
    pausing.write_text(_PAUSING_UV.format(step=step, flag=flag, uv=uv_bin()))
    pausing.chmod(0o755)
    proc = subprocess.Popen([sys.executable, "-c", _CLI, str(pausing), *args])
    deadline = time.monotonic() + 60
    while not (flag.exists() and flag.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    uv_pid = int(flag.read_text())
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    while not _gone_or_zombie(uv_pid):
        assert time.monotonic() < deadline, "uv outlived the envship that started it"
        time.sleep(0.02)
    (tmp_path / f"uv-{step}.go").touch()  # nobody is left to read it


def finish(hint: str | None) -> None:
    """Run the command the hint names, as a user would paste it."""
    found = re.search(r"`(envship [^`]+)`", hint or "")
    assert found, hint
    argv = shlex.split(found.group(1))[1:]
    proc = subprocess.run(
        [sys.executable, "-m", "envship", *argv], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def killed_mid_sync(tmp_path: Path, made: Made) -> Iterator[Path]:
    """A new environment whose `envship install` was killed while uv installed into it."""
    dest = tmp_path / "env"
    killed(tmp_path, "sync", "install", str(dest), "--lock", str(made.lock.path))
    assert (dest / "pyvenv.cfg").is_file() and (dest / INCOMPLETE_NAME).is_file()
    yield dest


@pytest.fixture
def failed_update(tmp_path: Path, made: Made) -> tuple[Path, LockFile]:
    """A complete environment whose update to a newer lock uv refused (a stored wheel
    that no longer matches its hash): it still holds the old lock's distributions, and
    the launcher refuses it. Returns the env and the newer lock."""
    dest = tmp_path / "env"
    install(made.lock, made.store, dest)
    newer = write_lock(tmp_path / "newer.toml", [made.wheels[k] for k in ("alpha", "beta11")])
    stored = made.store.path(hashlib.sha256(made.wheels["beta11"].read_bytes()).hexdigest())
    good = stored.read_bytes()
    stored.chmod(0o644)
    stored.write_bytes(good + b"\0")
    with pytest.raises(ArtifactError):
        install(newer, made.store, dest)
    stored.write_bytes(good)  # fetched again: the next install can finish
    return dest, newer


def test_a_killed_install_is_reported_half_made_first(killed_mid_sync: Path, made: Made) -> None:
    dest = killed_mid_sync
    report = verify(made.lock, dest)
    error = VerifyMismatchError(report)  # what the CLI raises for it
    first, *rest = report.differences
    assert (first.kind, first.name, first.path, first.actual) == (
        "incomplete", INCOMPLETE_NAME, str(dest / INCOMPLETE_NAME), "install in progress"
    )  # fmt: skip
    assert first.note and "did not finish" in first.note
    # What else is wrong is still listed: nothing was installed yet.
    assert sorted((d.kind, d.name) for d in rest) == [
        ("missing", "alpha"), ("missing", "beta"), ("missing", "tool"),
    ]  # fmt: skip
    assert error.exit_code == 1 and not report.identical
    assert error.message.startswith(f"{dest} is half made (install in progress) and differs")
    assert report.remedy == f"finish it with `envship install {dest} --lock {made.lock.path}`"
    assert error.hint and error.hint.startswith(f"the environment is half made: {report.remedy}")

    finish(error.hint)
    assert verify(made.lock, dest).identical


def test_the_command_names_the_lock_so_it_runs_from_any_folder(
    killed_mid_sync: Path, made: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`envship verify env --lock pylock.toml` in the lock's folder: the command it prints
    still finds the lock when pasted elsewhere (it printed `--lock pylock.toml`)."""
    monkeypatch.chdir(made.lock.path.parent)
    relative = LockFile.load(Path(made.lock.path.name))
    report = verify(relative, killed_mid_sync)
    assert f"--lock {made.lock.path}`" in (report.remedy or "")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    finish(report.remedy)
    assert verify(made.lock, killed_mid_sync).identical


def test_an_install_killed_before_its_venv_exists_is_refused_naming_the_mark(
    tmp_path: Path, made: Made
) -> None:
    """Killed before `uv venv` ran: the folder holds the mark and the marker saying how
    the run was made, no environment."""
    dest = tmp_path / "env"
    killed(tmp_path, "venv", "install", str(dest), "--lock", str(made.lock.path))
    assert sorted(p.name for p in dest.iterdir()) == [INCOMPLETE_NAME, MARKER_NAME]
    with pytest.raises(HalfMadeError) as caught:
        verify(made.lock, dest)
    error = caught.value
    assert (error.exit_code, error.kind) == (1, "incomplete")  # a state, not bad input
    assert error.message.startswith(f"{dest} is half made (install in progress): ")
    assert str(error.problems[0]) == f"{dest / INCOMPLETE_NAME}: install in progress"
    assert error.hint == f"finish it with `envship install {dest} --lock {made.lock.path}`"

    finish(error.hint)
    assert verify(made.lock, dest).identical


def test_the_command_keeps_the_interpreter_and_names_the_target(tmp_path: Path, made: Made) -> None:
    """Made with another interpreter than envship's, from a lock of two targets: the
    command names both, or install would make it with envship's own Python and guess."""
    system = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
    # The machine image ships Debian's CPython beside the one running the tests.
    assert system.exists(), f"this test needs a second CPython at {system}"
    assert os.path.realpath(system) != os.path.realpath(sys.executable)
    two = write_lock(
        tmp_path / "two.toml",
        [made.wheels[k] for k in ("alpha", "beta", "tool")],
        targets=[target("old", glibc="2.17"), target("new", glibc="2.28")],
    )
    dest = tmp_path / "env"
    killed(tmp_path, "sync", "install", str(dest), "--lock", str(two.path), "--python", str(system))
    report = verify(two, dest)
    assert report.target.name == "new" and report.differences[0].kind == "incomplete"
    assert report.remedy == (
        f"finish it with `envship install {dest} --lock {two.path} --target new --python {system}`"
    )
    finish(VerifyMismatchError(report).hint)
    assert verify(two, dest).identical
    assert "home = /usr/bin" in (dest / "pyvenv.cfg").read_text()


@pytest.mark.parametrize(
    "options", [["--group", "docs"], ["--no-groups"]], ids=["one group", "no groups"]
)
def test_the_command_repeats_the_groups_it_was_begun_with(
    tmp_path: Path, made: Made, options: list[str]
) -> None:
    """Begun with `--group docs` (or none) of a lock with two groups: without it, install
    takes every group of the lock, and the finished environment would have `tool` too."""
    wheels = [made.wheels[k] for k in ("alpha", "beta", "tool")]
    grouped = write_lock(tmp_path / "grouped.toml", wheels, groups={"docs": [], "dev": ["tool"]})
    dest = tmp_path / "env"
    killed(tmp_path, "sync", "install", str(dest), "--lock", str(grouped.path), *options)
    groups = options[1:]
    report = verify(grouped, dest, groups=groups)
    assert report.remedy == (
        f"finish it with `envship install {dest} --lock {grouped.path} {' '.join(options)}`"
    )
    finish(report.remedy)
    assert verify(grouped, dest, groups=groups).identical
    assert json.loads((dest / MARKER_NAME).read_text())["groups"] == groups


def test_a_failed_update_is_not_identical_to_either_lock(
    failed_update: tuple[Path, LockFile], made: Made
) -> None:
    dest, newer = failed_update
    # The old lock's distributions are all there, byte for byte: only the mark differs
    # (before, this was "identical", while the launcher refused the environment).
    [only] = verify(made.lock, dest, full=True, store=made.store).differences
    assert (only.kind, only.path, only.actual) == (
        "incomplete", str(dest / INCOMPLETE_NAME), "update in progress"
    )  # fmt: skip

    report = verify(newer, dest)
    found = [(d.kind, d.name) for d in report.differences]
    assert found == [
        ("incomplete", INCOMPLETE_NAME), ("extra", "tool"), ("version", "beta"),
    ]  # fmt: skip
    hint = VerifyMismatchError(report).hint
    assert f"`envship install {dest} --lock {newer.path}`" in (hint or "")

    finish(hint)
    assert verify(newer, dest).identical


def test_a_killed_env_create_names_env_create(tmp_path: Path, made: Made) -> None:
    """A version under an env root is made by `env create`, never by install."""
    root = tmp_path / "root"
    killed(
        tmp_path, "sync", "env", "create", "ds", "--root", str(root), "--lock", str(made.lock.path)
    )
    # Beside the version, install's work folder (its lock, uv's throw-away cache).
    [version] = [p for p in (root / "ds" / "versions").iterdir() if "." not in p.name]
    assert not (root / "ds" / "current").exists()
    report = verify(made.lock, version)
    assert report.differences[0].kind == "incomplete"
    remedy = f"`envship env create ds --root {root} --lock {made.lock.path}`"
    assert report.remedy == f"finish it with {remedy}"

    finish(VerifyMismatchError(report).hint)
    assert verify(made.lock, root / "ds" / "current").identical
    assert os.path.realpath(root / "ds" / "current") == str(version)


def test_the_cli_shows_the_mark_first_in_text_and_json(
    failed_update: tuple[Path, LockFile], capsys: pytest.CaptureFixture[str]
) -> None:
    dest, newer = failed_update
    code = main(["verify", str(dest), "--lock", str(newer.path)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.splitlines()
    assert lines[1:4] == [
        "half made: a run of envship install or add did not finish (1):",
        f"  {dest / INCOMPLETE_NAME}: update in progress",
        "      a run of `envship install` or `envship add` did not finish here (killed, or "
        "failed): the kernel launcher and `envship add` refuse the environment until it is "
        "made again",
    ]
    assert f"is half made (update in progress) and differs from {newer.path}" in err
    assert f"hint: the environment is half made: finish it with `envship install {dest}" in err

    code = main(["verify", str(dest), "--lock", str(newer.path), "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and err == ""
    data = json.loads(out)  # one document: the report and the error together
    assert data["identical"] is False and data["error"] == "mismatch"
    assert data["differences"][0] == {
        "kind": "incomplete",
        "name": INCOMPLETE_NAME,
        "path": str(dest / INCOMPLETE_NAME),
        "expected": None,
        "actual": "update in progress",
        "note": data["differences"][0]["note"],
    }
    assert [d["kind"] for d in data["differences"][1:]] == ["extra", "version"]
    assert f"`envship install {dest} --lock {newer.path}`" in data["hint"]


# -- the command repeats the run: the store it took its wheels from, byte-code ------------


def _hint(lock: LockFile, dest: Path) -> str:
    """What verify tells to run for ``dest``: its report's hint, or, with no environment
    to compare yet, its half-made error's."""
    try:
        report = verify(lock, dest)
    except HalfMadeError as exc:
        return exc.hint or ""
    return VerifyMismatchError(report).hint or ""


@pytest.mark.parametrize(
    ("asked", "default", "step", "rebuild"),
    [
        (["--store"], "unset", "sync", False),  # ENVSHIP_STORE unset: the user cache
        (["--store"], "another", "venv", False),  # killed before its venv existed
        (["--compile"], "the same", "sync", False),
        (["--compile", "--store"], "unset", "venv", False),
        (["--store"], "unset", "sync", True),  # a --reinstall of a complete env
    ],
    ids=["store", "store-before-venv", "compile", "both", "reinstall"],
)
def test_the_command_repeats_the_store_and_byte_code_of_the_killed_run(
    tmp_path: Path,
    made: Made,
    monkeypatch: pytest.MonkeyPatch,
    asked: list[str],
    default: str,
    step: str,
    rebuild: bool,
) -> None:
    """Run exactly as printed, where envship's default store is not the one the killed
    run took its wheels from, the command finishes the environment (it said `envship
    install ENV --lock L`, which then found none of the wheels)."""
    elsewhere = stocked_store(tmp_path / "elsewhere", list(made.wheels.values()))
    store = elsewhere if "--store" in asked else made.store
    dest = tmp_path / "env"
    if rebuild:
        install(made.lock, elsewhere, dest)
    if default == "unset":
        monkeypatch.delenv("ENVSHIP_STORE")
    elif default == "another":
        monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "empty-store"))
    options = [*(["--store", str(store.root)] if "--store" in asked else [])]
    options += ["--compile"] if "--compile" in asked else []
    options += ["--reinstall"] if rebuild else []
    killed(tmp_path, step, "install", str(dest), "--lock", str(made.lock.path), *options)

    hint = _hint(made.lock, dest)
    again = " --compile" if "--compile" in asked else ""
    again += f" --store {store.root}" if "--store" in asked else ""
    assert f"`envship install {dest}{again} --lock {made.lock.path}`" in hint
    finish(hint)
    assert verify(made.lock, dest).identical
    marker = json.loads((dest / MARKER_NAME).read_text())
    assert (marker["compiled"], marker["store"]) == ("--compile" in asked, str(store.root))


def _delete_a_module(env: Path) -> None:
    next(env.glob("lib/python*/site-packages/beta/__init__.py")).unlink()


@pytest.mark.parametrize("recorded", ["elsewhere", "the default", "absent"])
def test_the_command_that_makes_a_changed_env_again_names_its_store(
    tmp_path: Path, made: Made, monkeypatch: pytest.MonkeyPatch, recorded: str
) -> None:
    """A complete environment: the store its marker records is named when it is not the
    default; a marker from before envship kept it (``absent``) gets today's command."""
    elsewhere = stocked_store(tmp_path / "elsewhere", list(made.wheels.values()))
    dest = tmp_path / "env"
    install(made.lock, elsewhere if recorded == "elsewhere" else made.store, dest)
    if recorded == "elsewhere":
        monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "empty-store"))
    if recorded == "absent":
        data = json.loads((dest / MARKER_NAME).read_text())
        del data["store"]
        (dest / MARKER_NAME).write_text(json.dumps(data))
    _delete_a_module(dest)

    hint = _hint(made.lock, dest)
    named = f" --store {elsewhere.root}" if recorded == "elsewhere" else ""
    assert f"`envship install {dest}{named} --reinstall --lock {made.lock.path}`" in hint
    finish(hint)
    assert verify(made.lock, dest).identical

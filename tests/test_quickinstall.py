"""The quick path of ``envship install`` (``envship._quickinstall``): a new environment
from a remembered plan is the full path's, marker and output alike, or the full path
makes it. Real ``envship`` processes (the console entry point), real uv, real venvs."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.utils import canonicalize_name

from envship._envfiles import canonical_name
from envship._quickinstall import _confirm, _Fallback, _parse
from envship._quickplan import (
    MAX_PLAN_BYTES,
    UNUSED_DAYS,
    facts_before,
    plan_key,
    plans_dir,
    read_plan,
    remember,
    venv_version,
)
from envship.install import MARKER_NAME
from test_entry import CHILD as INTERRUPTING
from test_install import build_wheels, stocked_store, write_lock

SRC = Path(__file__).resolve().parents[1] / "src"

# The console script's work, then which modules the run imported (for "which path ran").
RUN = """
import json, os, sys
from envship._entry import main
code = main()
with open(os.environ["MODULES_OUT"], "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(code)
"""


@dataclass
class Done:
    code: int
    out: str
    err: str
    modules: list[str]

    @property
    def quick(self) -> bool:
        """The CLI (click, envship.cli) was never imported: the quick path ran it all."""
        return not any(m == "click" or m.startswith("envship.cli") for m in self.modules)


def child_env(tmp_path: Path) -> dict[str, str]:
    # The autouse fixture (conftest) set UV_CACHE_DIR, ENVSHIP_STORE and XDG_CACHE_HOME.
    return {**os.environ, "PYTHONPATH": str(SRC), "MODULES_OUT": str(tmp_path / "modules.json")}


def envship(tmp_path: Path, *args: str, cwd: Path | None = None) -> Done:
    proc = subprocess.run(
        [sys.executable, "-c", RUN, *args],
        capture_output=True,
        text=True,
        env=child_env(tmp_path),
        cwd=cwd,
        timeout=120,
        check=False,
    )
    modules = json.loads((tmp_path / "modules.json").read_text())
    return Done(proc.returncode, proc.stdout, proc.stderr, modules)


def child(tmp_path: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``script`` (a child entry point of tests/test_entry.py's kind) run with ``args``."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={**child_env(tmp_path), **env},
        timeout=120,
        check=False,
    )


def without_seconds(out: str) -> str:
    out = re.sub(r'"seconds": [0-9.]+', '"seconds": S', out)
    return re.sub(r"\) in [0-9.]+s", ") in Ss", out)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A lock (alpha and beta, tool in the group "extra"), a store holding all of it."""
    wheels = build_wheels(tmp_path / "dist")
    picked = [wheels[k] for k in ("alpha", "beta", "tool")]
    lock = write_lock(tmp_path / "pylock.toml", picked, groups={"extra": ["tool"]})
    stocked_store(tmp_path / "store", picked)
    return lock.path, tmp_path / "store"


def install_args(dest: Path, lock: Path, *options: str) -> list[str]:
    return ["install", str(dest), "--lock", str(lock), *options]


def full_then_quick(tmp_path: Path, dest: Path, args: list[str]) -> tuple[Done, bytes, Done]:
    """The full path makes ``dest`` (and remembers a plan); ``dest`` is removed; the same
    command again. Returns the full run, its marker, and the second run."""
    full = envship(tmp_path, *args)
    assert full.code == 0, full.err
    assert not full.quick
    marker = (dest / MARKER_NAME).read_bytes()
    subprocess.run(["rm", "-rf", str(dest)], check=True)
    again = envship(tmp_path, *args)
    assert again.code == 0, again.err
    return full, marker, again


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--json"],
        ["--compile"],
        ["--link-mode", "copy"],
        ["--no-groups"],
        ["--group=extra", "--json"],
    ],
)
def test_a_new_environment_from_a_plan_is_the_full_path_s(
    tmp_path: Path, setup: tuple[Path, Path], options: list[str]
) -> None:
    lock, _ = setup
    dest = tmp_path / "env"
    full, marker, quick = full_then_quick(tmp_path, dest, install_args(dest, lock, *options))

    assert quick.quick
    assert (dest / MARKER_NAME).read_bytes() == marker  # byte for byte: same dest, same bits
    assert without_seconds(quick.out) == without_seconds(full.out)
    assert quick.err == ""
    assert not (dest / ".envship-incomplete").exists()
    assert not Path(f"{dest}.envship-tmp").exists()
    groups = [o for o in options if o == "--no-groups" or o.startswith("--group")]
    verify = envship(tmp_path, "verify", str(dest), "--lock", str(lock), "--full", *groups)
    assert verify.code == 0, verify.out + verify.err
    if "--no-groups" not in options:
        tool = subprocess.run([str(dest / "bin" / "tool")], capture_output=True, text=True)
        assert tool.stdout == "tool ran\n"


def test_an_empty_folder_given_is_used_and_kept(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    lock, _ = setup
    made = tmp_path / "made"
    assert envship(tmp_path, *install_args(made, lock)).code == 0  # remembers the plan
    dest = tmp_path / "empty"
    dest.mkdir()
    done = envship(tmp_path, *install_args(dest, lock, "--json"))
    assert done.code == 0 and done.quick, done.err
    assert json.loads(done.out)["action"] == "created"
    assert (dest / "bin" / "python").exists()


def test_another_command_line_or_place_is_the_full_path_s(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    lock, _ = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    # Not new: an environment already there (up to date).
    again = envship(tmp_path, *install_args(tmp_path / "first", lock))
    assert again.code == 0 and not again.quick and "is up to date" in again.out
    # An option the quick path does not take.
    other = envship(tmp_path, *install_args(tmp_path / "second", lock, "--reinstall"))
    assert other.code == 0 and not other.quick
    # Another interpreter path: another key (the full path resolves and probes it).
    link = tmp_path / "python"
    link.symlink_to(sys.executable)
    by_link = envship(tmp_path, *install_args(tmp_path / "third", lock, "--python", str(link)))
    assert by_link.code == 0 and not by_link.quick, by_link.err
    # Another group asked than the plan's.
    grouped = envship(tmp_path, *install_args(tmp_path / "fourth", lock, "--no-groups"))
    assert grouped.code == 0 and not grouped.quick
    # A non-empty folder that is not an environment: the full path's refusal, unchanged.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    refused = envship(tmp_path, *install_args(foreign, lock))
    assert refused.code == 2 and not refused.quick
    assert (foreign / "notes.txt").read_text() == "mine\n"


def edit_lock_keeping_size_and_mtime(lock: Path) -> None:
    """Other bytes, same size, inode and modification time (an edit within a coarse file
    system's timestamp granularity; a file restored with its times): the key by
    ``os.stat`` matches, and the lock's digest, confirmed while uv installs, does not."""
    before = lock.stat()
    text = lock.read_text()
    assert '"test"' in text
    with open(lock, "r+", encoding="utf-8") as f:
        f.write(text.replace('"test"', '"tesu"', 1))
    os.utime(lock, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = lock.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (
        before.st_size,
        before.st_ino,
        before.st_mtime_ns,
    )


def remove_a_named_link(lock: Path, store: Path) -> None:
    named = next((store / "named").rglob("*.whl"))
    named.unlink()


def the_plan() -> Path:
    (plan,) = Path(plans_dir()).iterdir()
    return plan


def damage_the_plan(lock: Path, store: Path) -> None:
    plan = the_plan()
    plan.write_bytes(plan.read_bytes()[:-40])


def edit_the_plan(old: str, new: str) -> Callable[[Path, Path], None]:
    """Still a plan (its key and lines hold) with ``old`` made ``new`` in it: the quick
    path starts, and one of its checks stops it."""

    def change(lock: Path, store: Path) -> None:
        plan = the_plan()
        text = plan.read_text()
        assert old in text
        plan.write_text(text.replace(old, new, 1))

    change.__name__ = f"plan_{new}"
    return change


def marker_sha_differs(lock: Path, store: Path) -> None:
    """The marker's first package names another wheel than the artifact lines."""
    plan = the_plan()
    text = plan.read_text()
    sha = json.loads(text.rsplit("\nmarker ", 1)[1])["packages"][0]["sha256"]
    head, marker = text.rsplit("\nmarker ", 1)
    plan.write_text(f"{head}\nmarker {marker.replace(sha, 'f' * 64)}")


def plan_is_a_fifo(lock: Path, store: Path) -> None:
    plan = the_plan()
    plan.unlink()
    os.mkfifo(plan)


def plan_links_to_dev_zero(lock: Path, store: Path) -> None:
    plan = the_plan()
    plan.unlink()
    plan.symlink_to("/dev/zero")


def plan_is_too_large(lock: Path, store: Path) -> None:
    os.truncate(the_plan(), MAX_PLAN_BYTES + 1)  # sparse: no disk is used


def plan_of_another_user(lock: Path, store: Path) -> None:
    os.chown(the_plan(), 1000, 100)


def plan_writable_by_its_group(lock: Path, store: Path) -> None:
    the_plan().chmod(0o664)


def edit_the_lock(lock: Path, store: Path) -> None:
    lock.write_text(lock.read_text().replace('"test"', '"edited"', 1))


def lock_with_same_size_and_mtime(lock: Path, store: Path) -> None:
    edit_lock_keeping_size_and_mtime(lock)


@pytest.mark.parametrize(
    "change",
    [
        lock_with_same_size_and_mtime,
        edit_the_lock,
        remove_a_named_link,
        damage_the_plan,
        # The marker is not one envship writes: the check every marker reader applies.
        edit_the_plan('"format": 1', '"format": 9'),
        # Another Python than the plan's: the version uv writes into pyvenv.cfg differs.
        edit_the_plan(f'"version": "{platform.python_version()}"', '"version": "3.11.0"'),
        marker_sha_differs,
        plan_is_a_fifo,
        plan_links_to_dev_zero,
        plan_is_too_large,
        plan_of_another_user,
        plan_writable_by_its_group,
    ],
    ids=lambda change: change.__name__,
)
def test_a_plan_that_no_longer_holds_hands_the_run_to_the_full_path(
    tmp_path: Path, setup: tuple[Path, Path], change: Callable[[Path, Path], None]
) -> None:
    lock, store = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    change(lock, store)
    dest = tmp_path / "env"
    done = envship(tmp_path, *install_args(dest, lock, "--json"))
    assert done.code == 0, done.err
    assert not done.quick
    marker = json.loads((dest / MARKER_NAME).read_text())
    assert marker["lock"]["digest"] == json.loads(done.out)["lock_digest"]
    assert marker["python"]["version"] == platform.python_version()
    verify = envship(tmp_path, "verify", str(dest), "--lock", str(lock), "--full")
    assert verify.code == 0, verify.out
    # The full path remembered the plan again: the next new environment is quick.
    later = envship(tmp_path, *install_args(tmp_path / "later", lock))
    assert later.code == 0 and later.quick, later.err


def test_a_store_file_damaged_in_place_is_the_full_path_s_error(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    """Same size, same inode (the named link still is a hard link of it): the plan's
    checks pass, uv's hash check fails, and the error is the full path's."""
    lock, store = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    content = next(p for p in (store / "sha256").rglob("*") if p.is_file())
    size = content.stat().st_size
    with open(content, "r+b") as f:
        f.write(b"\0" * size)
    dest = tmp_path / "env"
    done = envship(tmp_path, *install_args(dest, lock, "--json"))
    assert done.code == 4, done.out + done.err
    assert not done.quick
    error = json.loads(done.out)
    assert "damaged" in error["message"] and content.name in json.dumps(error)
    assert not dest.exists()
    assert not Path(f"{dest}.envship-tmp").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("as_json", [False, True])
def test_an_interruption_while_uv_installs_removes_the_new_environment(
    tmp_path: Path, setup: tuple[Path, Path], sig: str, as_json: bool
) -> None:
    lock, _ = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    dest = tmp_path / "env"
    args = install_args(dest, lock, *(["--json"] if as_json else []))
    # The child sends itself SIG when it first imports hashlib: the quick path does so
    # only once uv is installing (to confirm the lock's bytes).
    done = child(tmp_path, INTERRUPTING, sig, *args, INTERRUPT_AT="hashlib")
    assert done.returncode == 130, done.stderr
    message = "interrupted; re-run the same command to resume"
    if as_json:
        assert done.stderr == ""
        assert json.loads(done.stdout) == {
            "error": "interrupted",
            "hint": None,
            "message": message,
            "problems": [],
        }
    else:
        assert done.stdout == "" and done.stderr == f"\n{message}\n"
    assert not dest.exists()
    assert not Path(f"{dest}.envship-tmp").exists()
    rerun = envship(tmp_path, *args)
    assert rerun.code == 0 and rerun.quick, rerun.err


def test_after_a_sigkill_the_next_run_waits_for_uv_and_makes_the_environment_again(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    """uv is not killed with the quick path (posix_spawn has no PR_SET_PDEATHSIG) but holds
    the destination's lock it inherited: the next run waits for it, then rebuilds. uv is
    held in place by its own cache lock (uv takes ``CACHE/.lock`` before it works; held
    here exclusively, uv waits on it). uv keeps nothing else of ours: the write end of a
    pipe its parent was given (as a caller's output would be) is closed with the parent,
    as subprocess's close_fds would have it."""
    lock, _ = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    dest = tmp_path / "env"
    args = [sys.executable, "-c", RUN, *install_args(dest, lock, "--json")]
    cache_lock = os.open(Path(os.environ["UV_CACHE_DIR"]) / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(cache_lock, fcntl.LOCK_EX)
    second: subprocess.Popen[str] | None = None
    read_end, write_end = os.pipe()
    try:
        first = subprocess.Popen(args, env=child_env(tmp_path), text=True, pass_fds=[write_end])
        os.close(write_end)
        deadline = time.monotonic() + 60
        while not (dest / MARKER_NAME).exists():  # written while uv venv waits
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        # uv still waits on its cache lock; the pipe's last writer died with envship.
        ready, _, _ = select.select([read_end], [], [], 30)
        assert ready and os.read(read_end, 1) == b"", "uv holds the pipe envship was given"
        second = subprocess.Popen(args, env=child_env(tmp_path), text=True, stdout=subprocess.PIPE)
        time.sleep(1)
        # Whatever the machine's speed: it cannot have finished while uv holds the lock.
        assert second.poll() is None
        assert (dest / ".envship-incomplete").exists()
    finally:
        os.close(cache_lock)  # uv goes on, finishes, and lets go of the destination
        os.close(read_end)
    assert second is not None
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0
    assert json.loads(out)["action"] == "rebuilt"
    verify = envship(tmp_path, "verify", str(dest), "--lock", str(lock), "--full")
    assert verify.code == 0, verify.out


def test_a_busy_destination_is_left_to_the_full_path(
    tmp_path: Path, setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick path never waits for a lock (the full path does, and says nothing)."""
    from envship._quickinstall import run

    lock, _ = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    dest = tmp_path / "env"
    work = Path(f"{dest}.envship-tmp")
    work.mkdir()
    held = os.open(work / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        assert run(install_args(dest, lock)) is None
        assert not dest.exists()
    finally:
        os.close(held)
    assert run(install_args(dest, lock)) == 0
    assert (dest / MARKER_NAME).exists()


def test_remember_needs_a_made_environment_of_the_key_s_interpreter(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    lock, store = setup
    facts = facts_before(lock, None, sys.executable, None, None)
    assert facts is not None
    assert not remember(facts, store_root=store, dest=tmp_path)  # no environment there
    assert not remember(None, store_root=store, dest=tmp_path)
    dest = tmp_path / "env"
    assert envship(tmp_path, *install_args(dest, lock)).code == 0
    other = facts_before(lock, None, "/usr/bin/python3.11", None, None)
    assert other is not None
    # The interpreter the run used is not the one the key was taken for: no plan.
    assert not remember(other, store_root=store, dest=dest)
    assert remember(facts, store_root=store, dest=dest)


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (["install", "e"], {"dest": "e", "lock": "pylock.toml", "groups": None}),
        (["--json", "install", "e"], {"as_json": True}),
        (["install", "--json", "e", "--compile"], {"as_json": True, "compile_bytecode": True}),
        (["install", "e", "--lock=l.toml", "--store", "s"], {"lock": "l.toml", "store": "s"}),
        (["install", "e", "--group", "a", "--group=b"], {"groups": ("a", "b")}),
        (["install", "e", "--no-groups"], {"groups": ()}),
        (["install", "e", "--link-mode", "copy"], {"link_mode": "copy"}),
        (["install", "e", "--python", "/usr/bin/python3"], {"python": "/usr/bin/python3"}),
        (["install", "e", "--target", "t"], {"target": "t"}),
        (["install"], None),
        (["install", "a", "b"], None),
        (["install", "e", "--help"], None),
        (["install", "e", "--reinstall"], None),
        (["install", "e", "--lock"], None),
        (["install", "e", "--lock", "--json"], None),  # click would take "--json" as the lock
        (["install", "e", "--lock", "a", "--lock", "b"], None),
        (["install", "e", "--group", "a", "--no-groups"], None),
        (["install", "e", "--link-mode", "move"], None),
        (["install", "e", "--"], None),
        (["install", "e", "--lock="], None),
        (["verify", "e"], None),
        (["install", "-"], None),
    ],
)
def test_the_command_lines_the_quick_path_takes(
    argv: list[str], parsed: dict[str, object] | None
) -> None:
    asked = _parse(argv)
    if parsed is None:
        assert asked is None
        return
    assert asked is not None
    for name, value in parsed.items():
        assert getattr(asked, name) == value


_TOKENS = ["install", "e", "--json", "--lock", "x", "--group", "-", "=", "--no-groups", "--lock="]


@given(st.lists(st.sampled_from([*_TOKENS, "--python", "", "--link-mode", "copy"]), max_size=8))
def test_parsing_never_fails(argv: list[str]) -> None:
    _parse(argv)  # None or a command line; never an exception


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_a_plan_file_of_any_bytes_is_a_plan_or_none(data: bytes) -> None:
    """Never an exception; a plan only from a file that starts as plans do (and holds
    this key, which no random bytes do)."""
    folder = Path(plans_dir())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fuzz.plan").write_bytes(data)
    assert read_plan("fuzz.plan", "key", None) is None


@given(st.text(max_size=30))
def test_canonical_names_agree_with_packaging(name: str) -> None:
    assert canonical_name(name) == canonicalize_name(name)


@pytest.mark.parametrize(
    ("xdg", "expected"),
    [
        (None, "{home}/.cache/envship/install-plans"),
        ("", "{home}/.cache/envship/install-plans"),
        ("relative/cache", "{home}/.cache/envship/install-plans"),
        ("/srv/cache", "/srv/cache/envship/install-plans"),
    ],
)
def test_plans_live_in_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xdg: str | None, expected: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    assert plans_dir() == expected.format(home=tmp_path)


def test_what_the_key_cannot_tell_is_confirmed_while_uv_installs(
    tmp_path: Path, setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's bytes (an edit within a coarse file system's timestamp granularity keeps
    size and times) and the spelling of its path the marker records (``Path.absolute``
    keeps ``..``, which the key's absolute path does not)."""
    lock, store = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    (plan_file,) = Path(plans_dir()).iterdir()
    name, key = plan_key(str(lock), str(store), sys.executable, None, None)
    assert plan_file.name == name
    plan = read_plan(name, key, str(store))
    assert plan is not None
    template = json.loads(plan.marker)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    _confirm("pylock.toml", str(lock), plan, template)  # as remembered: no exception
    with pytest.raises(_Fallback):
        _confirm("sub/../pylock.toml", str(lock), plan, template)
    other = {**template, "lock": {**template["lock"], "digest": "sha256:" + "0" * 64}}
    with pytest.raises(_Fallback):
        _confirm("pylock.toml", str(lock), plan, other)

    # End to end: the other spelling is the full path's, and recorded as given.
    dest = tmp_path / "env"
    done = envship(tmp_path, *install_args(dest, Path("sub/../pylock.toml")), cwd=tmp_path)
    assert done.code == 0 and not done.quick, done.err
    recorded = json.loads((dest / MARKER_NAME).read_text())["lock"]["path"]
    assert recorded == str(tmp_path / "sub" / ".." / "pylock.toml")


def test_the_link_modes_are_one_list() -> None:
    """The quick path's parser, the CLI's choice and the marker check read LINK_MODES; the
    install API's type spells them out for type checkers."""
    from typing import get_args

    from envship._envfiles import LINK_MODES
    from envship._installplan import LinkMode

    assert get_args(LinkMode) == LINK_MODES


def test_an_interpreter_that_is_a_script_keys_no_plan(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    """A wrapper (or a pyenv shim) may run another Python each time: os.stat of the
    script says nothing of which. No plan is made for it and every run is the full
    path's, which probes the Python the wrapper runs now."""
    lock, _ = setup
    wrapper = tmp_path / "python"
    wrapper.write_text('#!/bin/sh\nexec "$WRAPPED" "$@"\n')
    wrapper.chmod(0o755)

    def install(dest: Path, wrapped: str) -> None:
        command = install_args(dest, lock, "--python", str(wrapper))
        env = {**child_env(tmp_path), "WRAPPED": wrapped}
        done = subprocess.run(
            [sys.executable, "-c", RUN, *command], env=env, capture_output=True, check=False
        )
        assert done.returncode == 0, done.stderr

    install(tmp_path / "a", sys.executable)
    assert not Path(plans_dir()).exists() or list(Path(plans_dir()).iterdir()) == []
    install(tmp_path / "b", "/usr/bin/python3.11")  # another build of 3.11 (Debian's)
    made = json.loads((tmp_path / "b" / MARKER_NAME).read_text())["python"]["version"]
    real = subprocess.run(
        ["/usr/bin/python3.11", "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert made == real


def test_the_version_uv_wrote_is_read_from_pyvenv_cfg(tmp_path: Path) -> None:
    (tmp_path / "pyvenv.cfg").write_text("home = /x\nversion_info = 3.11.7\nuv = 0.9\n")
    assert venv_version(str(tmp_path)) == "3.11.7"
    (tmp_path / "pyvenv.cfg").write_text("home = /x\n")
    assert venv_version(str(tmp_path)) is None
    assert venv_version(str(tmp_path / "missing")) is None


# Two interruptions: the first while uv installs (hashlib is imported then), the second
# while the clean-up imports what removes the environment: held until it is done.
TWICE = """
import importlib.abc, os, sys
sys.argv = ["envship", *sys.argv[1:]]
AT = ["hashlib", "envship._installmarker"]

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if AT and name == AT[0]:
            AT.pop(0)
            os.kill(os.getpid(), 2)
        return None

sys.meta_path.insert(0, Interrupt())
from envship._entry import main
sys.exit(main())
"""


def test_a_second_ctrl_c_during_the_clean_up_waits_for_it(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    lock, _ = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    dest = tmp_path / "env"
    done = child(tmp_path, TWICE, *install_args(dest, lock))
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert not dest.exists()
    assert not Path(f"{dest}.envship-tmp").exists()


def test_output_that_cannot_be_written_is_said_as_the_full_path_says_it(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    lock, _ = setup
    said = []
    for name in ("full", "quick"):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-c", RUN, *install_args(tmp_path / name, lock)],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(tmp_path),
                timeout=120,
                check=False,
            )
        said.append((done.returncode, done.stderr.splitlines()[-1:]))  # after any progress
        assert (tmp_path / name / MARKER_NAME).exists()  # made all the same
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert "click" in modules  # the quick run's error went through the CLI's renderer
    assert said[0] == said[1] and said[0][0] == 1, said
    assert said[0][1] == ["error: no space left on device"]


def test_plans_unused_for_a_month_are_pruned_and_a_used_one_is_kept(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    lock, _ = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    used = the_plan()
    stale = used.with_name("00000000.plan")
    stale.write_text("an old plan\n")
    month = time.time() - (UNUSED_DAYS + 1) * 86400
    for plan in (used, stale):
        os.utime(plan, (month, month))
    again = envship(tmp_path, *install_args(tmp_path / "quick", lock))
    assert again.quick
    assert used.stat().st_mtime > month + 86400  # its use was noted
    # The next plan written (another lock's) prunes the stale one, keeps the used one.
    other = tmp_path / "other.toml"
    other.write_text(lock.read_text().replace('"test"', '"other"', 1))
    assert envship(tmp_path, *install_args(tmp_path / "third", other)).code == 0
    names = {p.name for p in Path(plans_dir()).iterdir()}
    assert stale.name not in names and used.name in names and len(names) == 2

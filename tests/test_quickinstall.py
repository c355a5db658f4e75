"""The quick path of ``envship install`` (``envship._quickinstall``): a new environment
from a remembered plan is the full path's, marker and output alike, or the full path
makes it. Real ``envship`` processes (the console entry point), real uv, real venvs."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.utils import canonicalize_name

from envship._envfiles import canonical_name
from envship._quickinstall import _confirm, _Fallback, _parse
from envship._quickplan import plan_key, plans_dir, read_plan, remember
from envship.install import MARKER_NAME
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

# As tests/test_entry.py does: the child sends itself SIG when it first imports MODULE.
# The quick path imports hashlib only once uv is installing (to confirm the lock's bytes).
INTERRUPTED = """
import importlib.abc, os, signal, sys
SIG = getattr(signal, sys.argv[1])

class Interrupt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hashlib":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), SIG)
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["envship", *sys.argv[2:]]
from envship._entry import main
sys.exit(main())
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


def remove_a_named_link(store: Path) -> None:
    named = next((store / "named").rglob("*.whl"))
    named.unlink()


def damage_the_plan(tmp_path: Path) -> None:
    (plan,) = Path(plans_dir()).iterdir()
    plan.write_bytes(plan.read_bytes()[:-40])


def tamper_with_the_plan(tmp_path: Path) -> None:
    """Still a plan (its key and lines hold), but its marker is not one envship writes:
    the quick path starts, and the marker check every reader applies stops it."""
    (plan,) = Path(plans_dir()).iterdir()
    text = plan.read_text()
    assert '"format": 1' in text
    plan.write_text(text.replace('"format": 1', '"format": 9'))


def edit_the_lock(lock: Path) -> None:
    lock.write_text(lock.read_text().replace('"test"', '"edited"', 1))


@pytest.mark.parametrize(
    "change",
    [
        edit_lock_keeping_size_and_mtime,
        edit_the_lock,
        remove_a_named_link,
        damage_the_plan,
        tamper_with_the_plan,
    ],
)
def test_a_plan_that_no_longer_holds_hands_the_run_to_the_full_path(
    tmp_path: Path, setup: tuple[Path, Path], change: object
) -> None:
    lock, store = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    if change is remove_a_named_link:
        remove_a_named_link(store)
    elif change in (damage_the_plan, tamper_with_the_plan):
        assert callable(change)
        change(tmp_path)
    else:
        assert callable(change)
        change(lock)
    dest = tmp_path / "env"
    done = envship(tmp_path, *install_args(dest, lock, "--json"))
    assert done.code == 0, done.err
    assert not done.quick
    marker = json.loads((dest / MARKER_NAME).read_text())
    assert marker["lock"]["digest"] == json.loads(done.out)["lock_digest"]
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
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, sig, *args],
        capture_output=True,
        text=True,
        env=child_env(tmp_path),
        timeout=120,
        check=False,
    )
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
    here exclusively, uv waits on it)."""
    lock, _ = setup
    assert envship(tmp_path, *install_args(tmp_path / "first", lock)).code == 0
    dest = tmp_path / "env"
    args = [sys.executable, "-c", RUN, *install_args(dest, lock, "--json")]
    cache_lock = os.open(Path(os.environ["UV_CACHE_DIR"]) / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(cache_lock, fcntl.LOCK_EX)
    second: subprocess.Popen[str] | None = None
    try:
        first = subprocess.Popen(args, env=child_env(tmp_path), text=True)
        deadline = time.monotonic() + 60
        while not (dest / MARKER_NAME).exists():  # written while uv venv waits
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        second = subprocess.Popen(args, env=child_env(tmp_path), text=True, stdout=subprocess.PIPE)
        time.sleep(1)
        # Whatever the machine's speed: it cannot have finished while uv holds the lock.
        assert second.poll() is None
        assert (dest / ".envship-incomplete").exists()
    finally:
        os.close(cache_lock)  # uv goes on, finishes, and lets go of the destination
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


def test_remember_needs_a_made_environment(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    lock, store = setup
    assert not remember(
        lock=lock, store=None, store_root=store, target=None, groups=None, dest=tmp_path
    )
    assert not Path(plans_dir()).exists()


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
    assert read_plan("fuzz.plan", "key") is None


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
    plan = read_plan(name, key)
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

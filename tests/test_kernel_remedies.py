"""What a kernel's launcher (and ``kernel list``, ``kernel install``) says, and that what it
advises works: a root that moved, a half-installed environment, an environment without
ipykernel. Kernels are started through jupyter_client where the behaviour is at start;
each remedy printed is run, then the kernel is started again.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from envship._toml import load_toml
from envship.cli.kernel import command
from envship.cli.main import cli, main
from envship.envs import create_env
from envship.install import INCOMPLETE_NAME, MARKER_NAME, install
from envship.kernels import KernelError, install_kernel, list_kernels
from envship.lockfile import LockFile
from indexlib import build_wheel, serve, write_simple_index
from test_install import HOST, PY, stocked_store, target, write_lock
from test_kernels import (
    GLIBC,
    MACHINE,
    OTHER_MACHINE,
    Shared,
    edit_marker,
    isolate_jupyter,
    kernel_json,
    link_chain,
    make_env,
    make_shared,
    run_launcher,
    stand_in,
    start_dies,
)


@pytest.fixture(autouse=True)
def user_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cli.add_command(command)
    return isolate_jupyter(tmp_path, monkeypatch)


@pytest.fixture
def shared(tmp_path: Path) -> Shared:
    return make_shared(tmp_path / "work", [stand_in(tmp_path / "dist")])


def check_mode(resource_dir: Path) -> subprocess.CompletedProcess[str]:
    argv = kernel_json(resource_dir)["argv"][:3]
    return subprocess.run([*argv, "--envship-check"], capture_output=True, text=True)


def command_in(line: str, start: str) -> list[str]:
    """The envship command in ``line`` that begins with ``start``, up to a ``(`` or a
    ``,`` (the launcher's prose around it), split into argv without ``envship``."""
    text = line[line.index(start) :]
    for stop in (" (", ", "):
        text = text.split(stop, 1)[0]
    return shlex.split(text.rstrip(")"))[1:]


def starts(resource_dir: Path, tmp_path: Path) -> dict[str, str]:
    proc = run_launcher(resource_dir, tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    seen: dict[str, str] = json.loads(proc.stdout)
    return seen


# --- 0. the first line of a refusal fits its kind -----------------------------------------


def other_machine(env: Path) -> None:
    edit_marker(env, platform=f"linux-{OTHER_MACHINE}")


def other_python(env: Path) -> None:
    edit_marker(env, python="3.99")


def half_installed(env: Path) -> None:
    (env / INCOMPLETE_NAME).write_text("update in progress\n")  # a killed update


def marker_deleted(env: Path) -> None:
    (env / MARKER_NAME).unlink()


def marker_truncated(env: Path) -> None:
    (env / MARKER_NAME).write_text('{"format": 1, "lock": {')


def marker_without_target(env: Path) -> None:
    marker = json.loads((env / MARKER_NAME).read_text())
    del marker["target"]
    (env / MARKER_NAME).write_text(json.dumps(marker))


def no_ipykernel(env: Path) -> None:
    uninstall_ipykernel(env)


def no_ipykernel_on_another_machine(env: Path) -> None:
    uninstall_ipykernel(env)
    other_machine(env)


THIS_MACHINE = f"this machine is {MACHINE} with glibc {GLIBC} and CPython {PY}"
HEAD = "envship: kernel 'ds-env' cannot start: the environment {env} "
DAMAGED = HEAD + "is damaged: its install record (.envship-install.json) is missing or unusable"
HEADLINES = [
    (
        other_machine,
        HEAD + f"was built for linux-{OTHER_MACHINE} (glibc >= {GLIBC}, CPython {PY}); "
        f"{THIS_MACHINE}",
    ),
    (
        other_python,
        HEAD + f"was built for {HOST} (glibc >= {GLIBC}, CPython 3.99); {THIS_MACHINE}",
    ),
    (half_installed, HEAD + "is half installed: an install or update of it did not finish"),
    (marker_deleted, DAMAGED),
    (marker_truncated, DAMAGED),
    (marker_without_target, DAMAGED),
    (no_ipykernel, HEAD + "has no ipykernel to start a kernel with"),
    (
        no_ipykernel_on_another_machine,
        HEAD + f"was built for linux-{OTHER_MACHINE} (glibc >= {GLIBC}, CPython {PY}); "
        f"{THIS_MACHINE}",
    ),
]


@pytest.mark.parametrize(("damage", "headline"), HEADLINES, ids=[h[0].__name__ for h in HEADLINES])
def test_the_first_line_of_a_refusal_fits_its_kind(
    tmp_path: Path, damage: Callable[[Path], None], headline: str
) -> None:
    """Only a refusal for the machine compares the environment with the machine; one for
    the environment itself (half made, damaged, without ipykernel) says what it is."""
    env = make_env(tmp_path / "work")
    made = install_kernel(env)
    damage(env)

    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 1 and proc.stdout == ""  # the stand-in never ran
    first, *rest = proc.stderr.splitlines()
    assert first == headline.format(env=env)
    assert rest and all(line.startswith(("  - ", "envship: ")) for line in rest)
    if "was built for" not in headline:  # nothing blames the machine
        assert "this machine" not in proc.stderr


def truncated_json(env: Path) -> None:
    (env / MARKER_NAME).write_text('{"format": 1, "lock": {')


def not_utf8(env: Path) -> None:
    (env / MARKER_NAME).write_bytes(b'{"format": "\xff"}')


def a_long_number(env: Path) -> None:
    (env / MARKER_NAME).write_text('{"format": ' + "9" * 5000 + "}")


def target_a_string(env: Path) -> None:
    marker = json.loads((env / MARKER_NAME).read_text())
    marker["target"] = marker["target"]["name"]
    (env / MARKER_NAME).write_text(json.dumps(marker))


def glibc_not_a_version(env: Path) -> None:
    edit_marker(env, glibc="new")


def glibc_too_long(env: Path) -> None:
    edit_marker(env, glibc="2." + "9" * 5000)  # int() of it raised (CPython's digit limit)


def platform_missing(env: Path) -> None:
    marker = json.loads((env / MARKER_NAME).read_text())
    del marker["target"]["platform"]
    (env / MARKER_NAME).write_text(json.dumps(marker))


NOT_A_TABLE = "{marker} records no usable target: 'target' is missing or not a table"
MALFORMED = (
    "{marker} records no usable target: target.{key} is missing or not in the form envship writes"
)
DAMAGED_RECORDS: list[tuple[Callable[[Path], None], str]] = [
    (
        truncated_json,
        "cannot read {marker}: not JSON (Expecting property name enclosed in double "
        "quotes at line 1, column 24)",
    ),
    (not_utf8, "cannot read {marker}: not UTF-8 (byte 12)"),
    (a_long_number, "cannot read {marker}: a number longer than any envship writes"),
    (target_a_string, NOT_A_TABLE),
    (glibc_not_a_version, MALFORMED.replace("{key}", "glibc")),
    (glibc_too_long, MALFORMED.replace("{key}", "glibc")),
    (platform_missing, MALFORMED.replace("{key}", "platform")),
]


@pytest.mark.parametrize(
    ("damage", "reason"), DAMAGED_RECORDS, ids=[c[0].__name__ for c in DAMAGED_RECORDS]
)
def test_a_damaged_record_is_refused_with_a_reason_in_words(
    tmp_path: Path, damage: Callable[[Path], None], reason: str
) -> None:
    """The reason names what is wrong with the record, not a Python exception's repr
    (``TypeError('string indices must be integers')``); a glibc that is no version was
    compared as the empty one and read as "glibc >= new needed"."""
    env = make_env(tmp_path / "work")
    made = install_kernel(env)
    damage(env)

    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    first, second, *_ = proc.stderr.splitlines()
    assert first == DAMAGED.format(env=env)
    assert second == "  - " + reason.format(marker=env / MARKER_NAME)


@pytest.mark.parametrize(
    ("damage", "lead", "command", "aside"),
    [
        # install refuses a folder without its record (not envship's to replace): the
        # remedy moves it aside first, then makes it again where it was.
        (marker_deleted, "move it aside and make it again where it was",
         "mv {env} {env}.damaged && envship install {env} --lock ", True),
        # A record there but damaged: install takes the environment for a half-made one
        # of its own and makes it again in place, so nothing is moved aside.
        (marker_truncated, "make it again", "envship install {env} --lock ", False),
    ],
    ids=["no record", "damaged record"],
)  # fmt: skip
def test_a_private_env_without_a_usable_record_is_made_again_where_it_was(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[Path], None],
    lead: str,
    command: str,
    aside: bool,
) -> None:
    env = make_env(tmp_path / "work")
    made = install_kernel(env)
    damage(env)

    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    printed = proc.stderr.splitlines()[-1].removeprefix(f"envship: {lead}: ")
    assert printed.startswith(command.format(env=env)), printed
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "work" / "store"))
    run_printed(printed, tmp_path)
    assert json.loads((env / MARKER_NAME).read_text())["lock"]
    assert (tmp_path / "work" / "ds-env.damaged").is_dir() == aside
    assert starts(made.resource_dir, tmp_path)["prefix"] == str(env)


# --- 1. a kernel on ROOT/NAME/current whose root has moved --------------------------------


@pytest.mark.parametrize("shape", ["current", "absolute link to current"])
@pytest.mark.parametrize("follow", ["make it again where it was", "register it where it went"])
def test_a_moved_roots_kernel_is_told_env_create_never_install(
    shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str, follow: str
) -> None:
    s = shared
    create_env(s.first, s.store, s.root, name="ds")
    made = install_kernel(link_chain(shape, s.root, tmp_path / "elsewhere"), name="ds")
    facts = kernel_json(made.resource_dir)["metadata"]["envship"]
    assert facts["env_root"] == str(s.root / "ds")
    moved = tmp_path / "moved-envs"
    os.rename(s.root, moved)  # the root now lives elsewhere (a copy, a new mount point)

    said = start_dies("ds", tmp_path)
    last = said.splitlines()[-1]
    assert "envship install" not in said
    assert last.startswith("envship: make it again (the same lock makes the same version): ")
    # The lock the version was made from, as kernel.json recorded it: no placeholder.
    assert facts["lock_path"] == str(s.first.path)
    assert f"envship env create ds --root {s.root} --lock {s.first.path} (or, " in last
    assert "LOCK" not in last
    assert "envship kernel install NEW_ROOT/ds/current" in last
    assert check_mode(made.resource_dir).stderr == said  # `kernel list` asks the same
    (listed,) = list_kernels()
    assert listed.fits is False and listed.remedies == (last.removeprefix("envship: "),)

    monkeypatch.setenv("ENVSHIP_STORE", str(s.store.root))
    if follow == "make it again where it was":
        # Run as printed, by a shell in another folder, with the store in ENVSHIP_STORE.
        printed = last[last.index("envship env create") :].split(" (", 1)[0]
        run_printed(printed, tmp_path)
        assert starts(made.resource_dir, tmp_path)["prefix"].startswith(str(s.root / "ds"))
    else:
        args = command_in(last, "envship kernel install").copy()
        args[-1] = args[-1].replace("NEW_ROOT", str(moved))
        assert main([*args, "--name", "ds"]) == 0
        assert starts(made.resource_dir, tmp_path)["prefix"].startswith(str(moved / "ds"))


def run_printed(command: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``command``, as a launcher printed it, run by a shell in a folder of its own with
    this envship first on PATH (ENVSHIP_STORE and the rest of the environment as set)."""
    cwd = tmp_path / "somewhere-else"
    cwd.mkdir(exist_ok=True)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = subprocess.run(
        ["sh", "-c", command],
        cwd=cwd,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_an_old_kernelspec_without_a_recorded_lock_keeps_the_placeholder(
    shared: Shared, tmp_path: Path
) -> None:
    """A kernelspec written before kernel.json recorded ``lock_path``: the launcher cannot
    know the lock, and says LOCK rather than guess."""
    s = shared
    create_env(s.first, s.store, s.root, name="ds")
    made = install_kernel(s.root / "ds" / "current", name="ds")
    spec = kernel_json(made.resource_dir)
    del spec["metadata"]["envship"]["lock_path"]
    data = json.dumps(spec, indent=2, sort_keys=True) + "\n"  # as envship wrote it then
    (made.resource_dir / "kernel.json").write_text(data)
    os.rename(s.root, tmp_path / "moved-envs")

    last = check_mode(made.resource_dir).stderr.splitlines()[-1]
    assert last == (
        "envship: make it again (the same lock makes the same version): envship env create "
        f"ds --root {s.root} --lock LOCK (or, if the root now lives elsewhere, register the "
        "kernel there: envship kernel install NEW_ROOT/ds/current)"
    )


def test_a_private_env_named_current_is_still_told_install(tmp_path: Path) -> None:
    """Only a kernel envship recorded as a root's is told `env create`."""
    env = make_env(tmp_path / "work", name="current")
    made = install_kernel(env)
    assert "env_root" not in kernel_json(made.resource_dir)["metadata"]["envship"]
    shutil.rmtree(env)
    last = run_launcher(made.resource_dir, tmp_path / "c.json").stderr.splitlines()[-1]
    assert f"envship install {env} --lock " in last and "env create" not in last


# --- 2. a half-installed environment: the lock its marker records ---------------------------


def test_a_half_installed_env_is_told_the_lock_its_marker_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_env(tmp_path / "work")
    lock = json.loads((env / MARKER_NAME).read_text())["lock"]["path"]
    made = install_kernel(env)
    (env / INCOMPLETE_NAME).write_text("update in progress\n")  # a killed update
    shutil.rmtree(next(env.glob("lib/python*/site-packages/beta")))

    said = start_dies("ds-env", tmp_path)
    assert f"  - the environment {env} is half installed ({INCOMPLETE_NAME} present)" in said
    last = said.splitlines()[-1]
    assert "--lock LOCK" not in last and f"envship install {env} --lock {lock}" in last

    assert last.endswith(f" --store {tmp_path / 'work' / 'store'}")  # as its marker says
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "empty-store"))  # not the default
    monkeypatch.chdir(tmp_path)
    args = shlex.split(last[last.index("envship install") :])[1:]
    assert main(args) == 0  # what it says finishes the environment
    assert not (env / INCOMPLETE_NAME).exists()
    assert starts(made.resource_dir, tmp_path)["prefix"] == str(env)


# --- 3. an environment without ipykernel ----------------------------------------------------


def lock_of(env: Path) -> str:
    lock: str = json.loads((env / MARKER_NAME).read_text())["lock"]["path"]
    return lock


def uninstall_ipykernel(env: Path) -> None:
    """What `uv pip uninstall ipykernel` (or pip's) does to the environment."""
    uv = str(Path(sys.executable).parent / "uv")
    subprocess.run(
        [uv, "pip", "uninstall", "--python", str(env / "bin" / "python"), "ipykernel"],
        check=True,
        capture_output=True,
    )
    assert not list(env.glob("lib/python*/site-packages/ipykernel-*.dist-info"))


@pytest.mark.parametrize("locked", [True, False], ids=["locked then uninstalled", "never locked"])
def test_a_private_env_without_ipykernel_refuses_and_says_how_to_get_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    locked: bool,
) -> None:
    work = tmp_path / "work"
    env = make_env(work)
    lock = json.loads((env / MARKER_NAME).read_text())["lock"]["path"]
    made = install_kernel(env)
    (work / "envship.toml").write_text('name = "ds"\npython = "3.11"\ndependencies = ["alpha"]\n')
    if not locked:  # the lock made again without it (the spec dropped it), installed
        alpha_beta = sorted((work / "dist").glob("[ab]*.whl"))
        write_lock(Path(lock), alpha_beta, targets=[target(glibc=GLIBC)])
        assert main(["install", str(env), "--lock", lock, "--store", str(work / "store")]) == 0
        capsys.readouterr()
    else:
        uninstall_ipykernel(env)
    assert not list(env.glob("lib/python*/site-packages/ipykernel-*.dist-info"))

    said = start_dies("ds-env", tmp_path)  # refused, not an ImportError in the log
    assert "ModuleNotFoundError" not in said and "ImportError" not in said
    assert "  - ipykernel is not installed in it (no ipykernel-*.dist-info in " in said
    last = said.splitlines()[-1]
    if locked:
        assert last == (
            f"envship: its lock has it: repair it: envship install {env} --lock {lock} "
            f"--store {work / 'store'}"
        )
    else:
        assert last.startswith(f"envship: add it: envship add ipykernel --env {env} (or put ")
        assert f"then envship install {env} --lock {lock})" in last
    check = check_mode(made.resource_dir)
    assert check.returncode == 1 and check.stderr == said

    assert main(["kernel", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["ds-env", "refuses"]
    assert lines[2].split("refuses: ", 1)[1].startswith("ipykernel is not installed in it")
    assert lines[3].split("fix: ", 1)[1] == last.removeprefix("envship: ")

    # Following it.
    monkeypatch.chdir(work)
    if locked:  # the command names its store: the default one is empty
        monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "empty-store"))
        assert main(command_in(last, "envship install")) == 0
    else:
        monkeypatch.setenv("ENVSHIP_STORE", str(work / "store"))
        args = command_in(last, "envship add")
        write_simple_index(work / "index", [stand_in(work / "dist")])
        with serve(work / "index") as server:  # the team's index, here on 127.0.0.1
            assert main([*args, "--index-url", server.simple_url]) == 0
    capsys.readouterr()
    assert starts(made.resource_dir, tmp_path)["prefix"] == str(env)
    assert main(["kernel", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["kernels"]
    assert (listed["fits"], listed["reasons"], listed["remedies"]) == (True, [], [])


def test_a_root_version_without_ipykernel_is_told_to_lock_again(
    shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = shared
    create_env(s.first, s.store, s.root, name="ds")
    made = install_kernel(s.root / "ds" / "current", name="ds")
    beta = build_wheel(tmp_path / "dist2", "beta", "1.0")
    bare = write_lock(tmp_path / "work" / "bare.toml", [beta], targets=[target(glibc=GLIBC)])
    two = create_env(bare, stocked_store(tmp_path / "work" / "store", [beta]), s.root, name="ds")

    said = start_dies("ds", tmp_path)
    assert f"the environment {two.path}" in said and "ipykernel is not installed in it" in said
    last = said.splitlines()[-1]
    assert "envship add" not in said  # a version is shared and immutable: add refuses it
    assert last.startswith("envship: put ipykernel in the spec's dependencies, run `envship lock`")
    assert f"for its lock {bare.path}, then envship env create ds --root {s.root} " in last

    # Following it: the lock made again with ipykernel, then the command it names.
    relocked = [beta, stand_in(tmp_path / "dist")]
    write_lock(bare.path, relocked, targets=[target(glibc=GLIBC)])
    stocked_store(tmp_path / "work" / "store", relocked)
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "work" / "store"))
    assert main(command_in(last, "envship env create")) == 0
    assert starts(made.resource_dir, tmp_path)["prefix"] != str(two.path)


@pytest.mark.parametrize("where", ["private", "current"])
def test_kernel_install_refuses_an_env_without_ipykernel_in_the_launchers_words(
    shared: Shared, tmp_path: Path, user_kernels: Path, where: str
) -> None:
    if where == "private":
        env = make_env(tmp_path / "w")
        uninstall_ipykernel(env)
    else:
        beta = build_wheel(tmp_path / "dist2", "beta", "1.0")
        bare = write_lock(tmp_path / "bare.toml", [beta], targets=[target(glibc=GLIBC)])
        create_env(bare, stocked_store(tmp_path / "store2", [beta]), shared.root, name="ds")
        env = shared.root / "ds" / "current"
    with pytest.raises(KernelError, match="ipykernel is not installed in it") as err:
        install_kernel(env)
    assert str(err.value).startswith(f"cannot make a kernel of {env}: ")
    hint = err.value.hint or ""
    assert hint.endswith(f", then `envship kernel install {env}`")
    if where == "private":
        assert hint == (
            f"its lock has it: repair it: envship install {env} --lock {lock_of(env)} "
            f"--store {tmp_path / 'w' / 'store'}, then `envship kernel install {env}`"
        )
    else:
        assert (
            hint.startswith("put ipykernel in the spec's dependencies") and "env create ds" in hint
        )
    assert not user_kernels.exists()


# --- 4. --display-name's default, as the help says and the code does ----------------------


@pytest.mark.parametrize(
    ("recorded", "shown"),
    [
        ({"name": "ds", "display-name": "Python (ds)"}, "Python (ds)"),  # a spec named ds
        ({"name": "ds", "display-name": "Team DS"}, "Team DS"),  # its [kernel] display-name
        ({}, "Python (ds-env)"),  # a lock that records none: the environment's name
    ],
)
def test_the_display_name_default_is_what_the_help_says(
    tmp_path: Path, recorded: dict[str, str], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    help_text = " ".join(CliRunner().invoke(cli, ["kernel", "install", "--help"]).output.split())
    assert "[default: 'Python (ENV)']" not in help_text
    assert (
        "[default: the one the environment's lock records, from the spec's [kernel] "
        "display-name, else 'Python (SPEC_NAME)'; for a lock that records none, "
        "'Python (ENV_NAME)']"
    ) in help_text

    root = tmp_path / "work"
    wheels = [build_wheel(root / "dist", "beta", "1.0"), stand_in(root / "dist")]
    lock = write_lock(root / "pylock.toml", wheels, targets=[target(glibc=GLIBC)])
    data = load_toml(lock.path)
    data["tool"]["envship"].update(recorded)  # what `envship lock` writes for the spec
    lock.path.write_text(tomli_w.dumps(data))
    install(LockFile.load(lock.path), stocked_store(root / "store", wheels), root / "ds-env")
    assert main(["kernel", "install", str(root / "ds-env"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["display_name"] == shown


# --- a marker that is no file to read whole ------------------------------------------------


def _limited() -> None:
    """The child's address space: 2 GiB, so reading /dev/zero whole fails at once (a
    MemoryError), not after eating the machine's memory."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("shape", ["a link to /dev/zero", "a FIFO", "JSON nested too deep"])
def test_a_marker_that_is_no_record_is_damaged_and_never_read_whole(
    tmp_path: Path, user_kernels: Path, shape: str
) -> None:
    """The launcher (its sh part reads the marker with sed, its Python part with json),
    `kernel install` and `kernel list` read the install marker at every start: one linked
    to /dev/zero was read for ever, a FIFO waited on."""
    env = make_env(tmp_path / "work")
    made = install_kernel(env)
    marker = env / MARKER_NAME
    marker.unlink()
    if shape == "a link to /dev/zero":
        marker.symlink_to("/dev/zero")
    elif shape == "a FIFO":
        os.mkfifo(marker)
    else:
        marker.write_text("[" * 100_000 + "]" * 100_000)
    argv = [
        a.replace("{connection_file}", str(tmp_path / "c.json"))
        for a in json.loads((made.resource_dir / "kernel.json").read_text())["argv"]
    ]
    started = subprocess.run(argv, capture_output=True, text=True, timeout=60, preexec_fn=_limited)
    assert started.returncode == 1, started.stderr
    assert started.stderr.splitlines()[0] == DAMAGED.format(env=env)
    assert "Traceback" not in started.stderr
    for args in (["kernel", "list", "--json"], ["kernel", "install", str(env), "--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "envship", *args],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=_limited,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        data = json.loads(proc.stdout)
        if args[1] == "list":
            (listed,) = data["kernels"]
            assert listed["fits"] is False and listed["reasons"], listed
        else:
            assert proc.returncode == 1 and data["error"] == "kernel", data
            assert data["problems"][0]["where"].startswith(str(marker)), data

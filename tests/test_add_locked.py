"""``envship add`` and the whole lock: groups the environment was installed without, the
commands its hints give, and the names it prints. Real environments from real wheels.

The spec locks ``alpha`` (with ``beta``) and ``Tomli_W`` (a name its dist-info spells
otherwise than the lock) for every install, ``iota`` in group ``dev`` and ``sigma<1.2``
in group ``docs``, so the lock pins sigma 1.1 while 1.0 and 1.2 are on the index. The
environment is installed with ``--group dev`` only, at a path with a space in it.
``lam`` needs any sigma, ``mu`` needs sigma>=1.2.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from envship._addenv import lock_command
from envship.add import ADDED_KEY, AddConflictError, AddError, add
from envship.errors import AddInputError, EnvshipError
from envship.fetch import fetch
from envship.install import INCOMPLETE_NAME, MARKER_NAME, install
from envship.lock import lock
from envship.lockfile import LockFile
from envship.spec import load_spec
from envship.store import Store
from envship.verify import verify
from indexlib import IndexServer, build_wheel, serve, write_simple_index
from test_add import PY, build_add_index
from test_install import build_wheels, versions, write_lock

SPEC = """\
name = "grouped"
python = "{python}"
dependencies = ["alpha", "Tomli_W"]

[groups]
dev = ["iota"]
docs = ["sigma<1.2"]

[[indexes]]
name = "local"
url = "{url}"
default = true
"""

OTHER_SPEC = """\
name = "unrelated"
python = "{python}"
dependencies = ["beta<1.1"]

[[indexes]]
name = "local"
url = "{url}"
default = true
"""


@pytest.fixture(scope="session")
def groups_index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("add-groups-universe")
    build_add_index(root)
    dist = root / "dist"
    build_wheel(dist, "Tomli_W", "1.0")
    build_wheel(dist, "iota", "1.0")
    for version in ("1.0", "1.1", "1.2"):
        build_wheel(dist, "sigma", version)
    build_wheel(dist, "lam", "1.0", requires=["sigma"])
    build_wheel(dist, "mu", "1.0", requires=["sigma>=1.2"])
    build_wheel(dist, "Py_Socks", "1.0")
    write_simple_index(
        root / "index", sorted(dist.iterdir()), yanked={"beta-1.2-py3-none-any.whl": "bad"}
    )
    return root / "index"


@pytest.fixture
def server(groups_index_root: Path) -> Iterator[IndexServer]:
    with serve(groups_index_root) as running:
        yield running


@dataclass
class Grouped:
    spec: Path
    lock: Path
    store: Store
    env: Path

    def lockfile(self) -> LockFile:
        return LockFile.load(self.lock)

    def install_command(self) -> str:
        """What every hint must say: this env, this lock, the group it was installed with."""
        env, locked = shlex.quote(str(self.env)), shlex.quote(str(self.lock))
        return f"envship install {env} --lock {locked} --group dev"


@pytest.fixture
def grouped(tmp_path: Path, server: IndexServer) -> Grouped:
    folder = tmp_path / "proj"
    folder.mkdir()
    spec_path = folder / "envship.toml"
    spec_path.write_text(SPEC.format(python=PY, url=server.simple_url))
    locked = LockFile.load(lock(load_spec(spec_path)).path)
    store = Store.at(tmp_path / "store")
    fetch(locked, store)
    env = tmp_path / "my env"  # a space: every command a hint gives must be quoted
    install(locked, store, env, groups=["dev"])
    return Grouped(spec_path, locked.path, store, env)


def _state(g: Grouped) -> tuple[bytes, bytes, dict[str, str]]:
    return g.spec.read_bytes(), (g.env / MARKER_NAME).read_bytes(), versions(g.env)


def _sigma(path: Path) -> str:
    return next(str(p.version) for p in LockFile.load(path).pylock.packages if p.name == "sigma")


def test_the_fixture_holds_what_the_tests_rely_on(grouped: Grouped) -> None:
    assert versions(grouped.env) == {
        "alpha": "1.0",
        "beta": "1.1",
        "iota": "1.0",
        "Tomli_W": "1.0",  # as its dist-info spells it; the lock says tomli-w
    }
    assert _sigma(grouped.lock) == "1.1"
    assert json.loads((grouped.env / MARKER_NAME).read_text())["groups"] == ["dev"]


# --- 1. a version the lock pins for a group not installed is never moved ---------------------


@pytest.mark.parametrize(
    ("request_", "where", "says"),
    [
        # Refused before uv runs, as a request for an installed locked package is.
        ("sigma==1.0", "sigma==1.0", "the lock pins sigma==1.1"),
        ("sigma>=1.2", "sigma>=1.2", "the lock pins sigma==1.1"),
        # Needed by the request: uv is held at the locked version, and explains.
        ("mu", "mu", "mu requires sigma>=1.2; the lock pins sigma==1.1"),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_version_locked_for_a_group_not_installed_is_never_moved(
    grouped: Grouped, request_: str, where: str, says: str, dry_run: bool
) -> None:
    before = _state(grouped)
    with pytest.raises(AddConflictError) as err:
        add([request_], env=grouped.env, dry_run=dry_run)

    first = err.value.problems[0]
    assert first.where == where and first.message.startswith(says)
    assert err.value.hint is not None and "envship lock -P sigma" in err.value.hint
    assert _state(grouped) == before
    assert lock(load_spec(grouped.spec)).changes == ()  # nothing for the next lock to move
    assert _sigma(grouped.lock) == "1.1"


@pytest.mark.parametrize("request_", ["sigma", "sigma==1.1", "lam"])
def test_a_group_locked_package_is_installed_at_its_locked_version_and_said_so(
    grouped: Grouped, request_: str
) -> None:
    """sigma 1.2 is the newest; the lock's 1.1 is held, and the result says why."""
    preview = add([request_], env=grouped.env, dry_run=True)
    result = add([request_], env=grouped.env)

    for r in (preview, result):
        assert "sigma==1.1" in r.installed
        assert r.group_locked == (("sigma==1.1", ("docs",)),)
        assert r.to_json()["group_locked"] == [{"package": "sigma==1.1", "groups": ["docs"]}]
    assert versions(grouped.env)["sigma"] == "1.1"
    assert verify(grouped.lockfile(), grouped.env, groups=["dev"]).differences
    # The next lock keeps sigma where it was, now for every install.
    relocked = lock(load_spec(grouped.spec))
    assert [str(c) for c in relocked.changes if c.name != "lam"] == []
    assert _sigma(grouped.lock) == "1.1"


def test_a_lock_moved_with_its_spec_is_found_by_its_digest(grouped: Grouped) -> None:
    moved = grouped.spec.parent.with_name("moved")
    grouped.spec.parent.rename(moved)  # the marker's lock path is gone
    with pytest.raises(AddConflictError) as err:
        add(["sigma==1.0"], env=grouped.env, spec=moved)
    assert err.value.problems[0].message.startswith("the lock pins sigma==1.1")
    assert err.value.hint is not None
    assert f"--lock {shlex.quote(str(moved / 'pylock.toml'))} --group dev`" in err.value.hint


def test_a_lock_made_again_since_the_install_holds_its_new_versions(grouped: Grouped) -> None:
    """The next `envship lock` keeps what the lock now pins: that is what must not move."""
    grouped.spec.write_text(grouped.spec.read_text().replace("sigma<1.2", "sigma<1.1"))
    lock(load_spec(grouped.spec))
    assert _sigma(grouped.lock) == "1.0"
    with pytest.raises(AddConflictError) as err:
        add(["sigma==1.1"], env=grouped.env)
    assert err.value.problems[0].message.startswith("the lock pins sigma==1.0")


def test_without_a_readable_lock_the_result_says_what_was_not_held(grouped: Grouped) -> None:
    grouped.lock.unlink()
    result = add(["sigma==1.0"], env=grouped.env)
    assert result.installed == ("sigma==1.0",) and result.group_locked == ()
    assert len(result.notes) == 1 and "cannot be read" in result.notes[0]
    assert "are not held" in result.notes[0]


def _cli_add(grouped: Grouped, name: str) -> subprocess.CompletedProcess[str]:
    """``envship add NAME`` into the grouped environment, which must succeed."""
    argv = [sys.executable, "-m", "envship", "add", name, "--env", str(grouped.env)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_cli_says_a_group_locked_version_was_installed(grouped: Grouped) -> None:
    proc = _cli_add(grouped, "lam")
    assert (
        f"  sigma==1.1 is the version the lock pins for group docs, which {grouped.env} "
        "was installed without"
    ) in proc.stdout.splitlines()


# --- 1b. a locked name the spec does not list becomes a direct dependency -------------------


@pytest.mark.parametrize(
    "request_",
    [
        "beta",  # locked only as alpha's dependency
        "Beta>=1.1",  # an explicit constraint the locked 1.1 satisfies
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_locked_name_the_spec_does_not_list_is_recorded_not_installed(
    grouped: Grouped, request_: str, dry_run: bool
) -> None:
    """Asked for, it must stay when what pulls it in drops it: `envship add idna` (locked
    as a dependency of requests) said "nothing to do" and recorded nothing. A bare name
    a group lists is the spec's already (the test after this one)."""
    before = _state(grouped)
    result = add([request_], env=grouped.env, dry_run=dry_run)

    assert result.installed == result.removed == result.already_locked == ()
    assert result.recorded == (request_,) and result.replaced == ()
    assert result.lock_stale and result.changed is not dry_run
    spec_bytes, marker_bytes, installed = _state(grouped)
    assert (marker_bytes, installed) == before[1:]  # nothing installed, no added record
    if dry_run:
        assert spec_bytes == before[0]
        return
    assert load_spec(grouped.spec).dependencies == ("alpha", "Tomli_W", request_)
    # Asked again, the spec lists it so: nothing to do.
    again = add([request_], env=grouped.env)
    assert again.already_locked and again.recorded == () and not again.changed
    assert grouped.spec.read_bytes() == spec_bytes
    # The next lock takes it in without moving anything.
    assert lock(load_spec(grouped.spec)).changes == ()
    assert verify(grouped.lockfile(), grouped.env, groups=["dev"], full=True).identical


def test_a_name_a_group_lists_is_nothing_to_do(grouped: Grouped) -> None:
    """Recorded in the dependencies, iota would go into every install, with or without
    the group that lists it."""
    before = _state(grouped)
    result = add(["iota"], env=grouped.env)
    assert result.already_locked == ("iota==1.0",) and result.recorded == ()
    assert not result.changed and _state(grouped) == before


def test_a_requirement_for_a_name_a_group_lists_belongs_in_the_group(grouped: Grouped) -> None:
    """Recorded in the dependencies, `iota==1.0` made iota a main dependency beside the
    group's entry: every install took it, with or without the group."""
    before = _state(grouped)
    with pytest.raises(AddInputError, match="iota is in the spec's group dev") as caught:
        add(["iota==1.0"], env=grouped.env)
    assert caught.value.exit_code == 2
    assert [p.where for p in caught.value.problems] == [f"{grouped.spec}: groups.dev"]
    assert _state(grouped) == before


def test_the_cli_says_a_locked_name_is_recorded(grouped: Grouped) -> None:
    proc = _cli_add(grouped, "beta")
    assert "nothing to do" not in proc.stdout
    assert proc.stdout.splitlines() == [
        f"{grouped.env} already has beta",
        f"record in {grouped.spec}: beta",
        f"the lock is stale: run `envship lock` to take the addition into {grouped.lock}",
    ]


# --- 2. every hint names the lock the environment was made from ------------------------------


def _drift(g: Grouped, server: IndexServer) -> None:
    from envship.lock import uv_bin

    subprocess.run(
        [
            *(uv_bin(), "pip", "install", "--python", str(g.env / "bin" / "python")),
            *("--default-index", server.simple_url, "beta==1.0"),
        ],
        check=True,
        capture_output=True,
    )


def _elsewhere(tmp_path: Path, server: IndexServer) -> Path:
    """A folder holding another project's lock: a bare `envship install ENV` there would
    install that lock into the environment."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "envship.toml").write_text(OTHER_SPEC.format(python=PY, url=server.simple_url))
    lock(load_spec(other / "envship.toml"))
    return other


def _run_hint(command: str, cwd: Path, store: Store) -> dict[str, object]:
    """Run the command a hint gives, as the user would paste it, from ``cwd``."""
    args = shlex.split(command)
    assert args[:2] == ["envship", "install"]
    environ = {**os.environ, "ENVSHIP_STORE": str(store.root)}
    proc = subprocess.run(
        [sys.executable, "-m", "envship", *args[1:], "--json"],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


@pytest.mark.parametrize(
    ("case", "action"),
    [("drifted", "repaired"), ("half-installed", "rebuilt"), ("damaged-record", "rebuilt")],
)
def test_a_repair_hint_works_from_any_folder_and_keeps_the_groups(
    grouped: Grouped, server: IndexServer, tmp_path: Path, case: str, action: str
) -> None:
    if case == "drifted":
        _drift(grouped, server)
        match = "already differs from its lock"
    elif case == "half-installed":
        (grouped.env / INCOMPLETE_NAME).write_text("install in progress\n")
        match = "is half installed"
    else:
        marker = json.loads((grouped.env / MARKER_NAME).read_text())
        del marker["packages"]
        (grouped.env / MARKER_NAME).write_text(json.dumps(marker))
        match = "install record of"
    with pytest.raises(AddError, match=match) as err:
        add(["kappa"], env=grouped.env)
    assert err.value.hint is not None and f"`{grouped.install_command()}`" in err.value.hint

    result = _run_hint(grouped.install_command(), _elsewhere(tmp_path, server), grouped.store)

    assert result["action"] == action
    assert verify(grouped.lockfile(), grouped.env, groups=["dev"], full=True).identical
    assert add(["kappa"], env=grouped.env).installed == ("kappa==2.0",)  # beta 1.1 here


def _clobber(g: Grouped) -> EnvshipError:
    with pytest.raises(AddError, match="changed locked packages") as err:
        add(["clobber"], env=g.env)
    return err.value


def _pin_conflict(g: Grouped) -> EnvshipError:
    with pytest.raises(AddConflictError) as err:
        add(["beta<1.1"], env=g.env)
    return err.value


def _uv_explained(g: Grouped) -> EnvshipError:
    with pytest.raises(AddConflictError) as err:
        add(["mu"], env=g.env)
    return err.value


def _record_without_packages(g: Grouped) -> EnvshipError:
    marker = json.loads((g.env / MARKER_NAME).read_text())
    del marker["packages"]
    (g.env / MARKER_NAME).write_text(json.dumps(marker))
    with pytest.raises(AddError, match=r"install record of .* is incomplete") as err:
        add(["kappa"], env=g.env)
    return err.value


def _interpreter_that_fails(g: Grouped) -> EnvshipError:
    python = g.env / "bin" / "python"
    python.unlink()
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    with pytest.raises(AddError, match="cannot ask") as err:
        add(['kappa; python_version >= "3"'], env=g.env)
    return err.value


@pytest.mark.parametrize(
    "fail",
    [_clobber, _pin_conflict, _uv_explained, _record_without_packages, _interpreter_that_fails],
)
def test_every_hint_names_the_lock_and_the_groups(
    grouped: Grouped, fail: Callable[[Grouped], EnvshipError]
) -> None:
    error = fail(grouped)
    assert error.hint is not None
    assert f"`{grouped.install_command()}`" in error.hint, error.hint


def test_a_conflict_hint_names_the_spec_to_lock_again(grouped: Grouped) -> None:
    for fail in (_pin_conflict, _uv_explained):
        hint = fail(grouped).hint
        assert hint is not None
        assert f"--spec {shlex.quote(str(grouped.spec))}" in hint, hint


def test_a_shared_version_hint_names_the_lock_for_a_private_env(grouped: Grouped) -> None:
    from envship.envs import create_env

    made = create_env(grouped.lockfile(), grouped.store, grouped.env.parent / "efs", name="ds")
    with pytest.raises(AddError, match="a version of the shared environment") as err:
        add(["kappa"], env=made.path)
    assert err.value.hint is not None
    assert f"`envship install .venv --lock {shlex.quote(str(grouped.lock))}`" in err.value.hint


def test_a_record_without_a_lock_says_which_lock_in_words(grouped: Grouped) -> None:
    marker = json.loads((grouped.env / MARKER_NAME).read_text())
    del marker["packages"], marker["lock"]
    (grouped.env / MARKER_NAME).write_text(json.dumps(marker))
    with pytest.raises(AddError, match=r"install record of .* is incomplete") as err:
        add(["kappa"], env=grouped.env)
    assert err.value.hint is not None
    assert f"`envship install {shlex.quote(str(grouped.env))} --lock LOCK --group dev`" in (
        err.value.hint
    )
    assert "LOCK: the lock" in err.value.hint and "does not name it" in err.value.hint


# --- 3. names as the lock spells them (PEP 503) ----------------------------------------------


def test_names_are_reported_normalized_in_results_text_and_json(grouped: Grouped) -> None:
    preview = add(["Py_Socks", "Tomli_W"], env=grouped.env, dry_run=True)
    result = add(["Py_Socks", "Tomli_W"], env=grouped.env)
    for r in (preview, result):
        assert r.installed == ("py-socks==1.0",) and r.already_locked == ("tomli-w==1.0",)
    marker = json.loads((grouped.env / MARKER_NAME).read_text())
    assert [e["requested"] for e in marker[ADDED_KEY]] == ["Py_Socks"]

    for extra in ([], ["--json"]):
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "envship", "add", "Py_Socks", "tomli-w", "iota"),
                *("--env", str(grouped.env), "--dry-run", *extra),
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Py_Socks==" not in proc.stdout and "Tomli_W==" not in proc.stdout
        if extra:
            assert json.loads(proc.stdout)["already_locked"] == ["tomli-w==1.0", "iota==1.0"]
        else:
            assert "tomli-w==1.0 is already locked; nothing to do" in proc.stdout


@pytest.mark.parametrize(
    ("store", "said"),
    [
        ("{default}", ""),  # $ENVSHIP_STORE, which install would take without --store
        ("/srv/other store", " --store '/srv/other store'"),
        (None, ""),  # a marker from before the store was recorded
    ],
)
def test_the_hint_names_the_store_when_it_is_not_the_default(
    tmp_path: Path, store: str | None, said: str
) -> None:
    """Run as printed, the command must find the wheels: the store the env was made from
    is named when envship would not take it by itself."""
    marker: dict[str, object] = {"lock": {"path": "/p/pylock.toml"}, "groups": ["dev"]}
    if store is not None:
        marker["store"] = store.format(default=os.environ["ENVSHIP_STORE"])
    command = lock_command("install", tmp_path / "env", marker)
    assert (
        command == f"`envship install {tmp_path / 'env'} --lock /p/pylock.toml{said} --group dev`"
    )


@pytest.mark.parametrize(
    ("lock_groups", "installed", "said"),
    [
        ({"dev": ["tool"]}, [], " --no-groups"),  # none of the lock's: said
        ({"dev": ["tool"]}, ["dev"], " --group dev"),
        (None, [], ""),  # a lock without groups: nothing to leave out
    ],
)
def test_the_hint_says_no_groups_when_none_of_the_locks_were_installed(
    tmp_path: Path,
    lock_groups: dict[str, Sequence[str]] | None,
    installed: list[str],
    said: str,
) -> None:
    """Without --group or --no-groups, install takes every group of the lock."""
    wheels = build_wheels(tmp_path / "dist")
    picked = [wheels[k] for k in ("alpha", "beta", "tool")]
    lock = write_lock(tmp_path / "pylock.toml", picked, groups=lock_groups).path
    marker: dict[str, object] = {"lock": {"path": str(lock)}, "groups": installed}
    command = lock_command("install", tmp_path / "env", marker)
    assert command == f"`envship install {tmp_path / 'env'} --lock {lock}{said}`"

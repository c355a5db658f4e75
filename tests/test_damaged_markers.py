"""Environments whose install record (``ENV/.envship-install.json``) was damaged after
the fact, end to end: real environments made by ``envship install`` and ``envship env
create``, real damage to their markers, the real CLI.

What each command makes of a damaged marker: ``verify`` reports it (exit 1, never
"identical"), ``add`` and ``env check`` refuse, naming the marker file and key, and
``install`` and ``env create`` make the environment again. Every CLI run has an address
space limit (``ulimit -v``): a regression that reads a link to ``/dev/zero`` fails there
instead of taking the machine. A property test then mutates the marker at random and
runs install, verify, env check, env create and add through the library: nothing but
EnvshipError may come out.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envship.add import add
from envship.envs import check_env, create_env
from envship.errors import EnvshipError
from envship.install import MARKER_NAME, install
from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import verify
from test_install import build_wheels, stocked_store, write_lock

LIMIT = 2_000_000_000  # bytes of address space for each CLI run: uv and envship fit


@dataclass
class Project:
    lock: LockFile
    store: Store
    spec: Path
    env: Path
    root: Path


@pytest.fixture
def project(tmp_path: Path) -> Project:
    wheels = build_wheels(tmp_path / "dist")
    lock = write_lock(tmp_path / "pylock.toml", [wheels[k] for k in ("alpha", "beta", "tool")])
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    spec = tmp_path / "envship.toml"
    spec.write_text('name = "t"\npython = "3.11"\ndependencies = ["alpha", "tool"]\n')
    env = tmp_path / "env"
    install(lock, store, env)
    return Project(lock, store, spec, env, tmp_path / "envs")


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def cli(*args: str | Path) -> tuple[int, dict[str, Any]]:
    """``envship --json ARGS`` in a child with a bounded address space: exit code and the
    one JSON document it printed (a traceback prints none)."""
    ran = subprocess.run(
        [sys.executable, "-m", "envship", "--json", *map(str, args)],
        capture_output=True,
        text=True,
        preexec_fn=_limited,
        timeout=300,
        check=False,
    )
    assert "Traceback" not in ran.stderr, ran.stderr
    return ran.returncode, json.loads(ran.stdout)


Damage = Callable[[Path], object]


def _rewrite(change: Callable[[dict[str, Any]], object]) -> Damage:
    def damage(marker: Path) -> None:
        data = json.loads(marker.read_text())
        change(data)
        marker.write_text(json.dumps(data))

    return damage


def _replace(marker: Path, make: Callable[[Path], object]) -> None:
    marker.unlink()
    make(marker)


def _folder(marker: Path) -> None:
    marker.mkdir()
    (marker / "inside").write_text("x")


# Damage -> the key it is named by ("" for the file as a whole) and a word of the reason.
DAMAGE: dict[str, tuple[Damage, str, str]] = {
    "package-name-a-number": (
        _rewrite(lambda d: d["packages"][0].update(name=5)),
        "packages[0].name",
        "string",
    ),
    "records-a-list": (_rewrite(lambda d: d.update(records=[])), "records", "object"),
    "no-target": (_rewrite(lambda d: d.pop("target")), "target", "missing"),
    "lock-path-with-nul": (
        _rewrite(lambda d: d["lock"].update(path="/tmp/x\0/pylock.toml")),
        "lock.path",
        "NUL",
    ),
    "no-sha256": (_rewrite(lambda d: d["packages"][1].pop("sha256")), "packages[1].sha256", ""),
    "groups-of-numbers": (_rewrite(lambda d: d.update(groups=[1])), "groups[0]", "group"),
    "base-a-lone-surrogate": (
        _rewrite(lambda d: d["python"].update(base="/x/\ud800")),
        "python.base",
        "surrogate",
    ),
    "truncated": (lambda m: m.write_text("{"), "", "not JSON"),
    "nested-too-deep": (lambda m: m.write_text("[" * 100_000), "", "nested too deep"),
    "a-folder": (lambda m: _replace(m, _folder), "", "a folder"),
    "a-link-to-dev-zero": (
        lambda m: _replace(m, lambda p: p.symlink_to("/dev/zero")),
        "",
        "symbolic link",
    ),
    "a-fifo": (lambda m: _replace(m, os.mkfifo), "", "not a regular file"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_marker_is_reported_refused_and_made_again(project: Project, case: str) -> None:
    damage, key, word = DAMAGE[case]
    env, marker = project.env, project.env / MARKER_NAME
    lock = project.lock.path
    where = f"{marker}: {key}" if key else str(marker)
    damage(marker)
    # An edit the record would have shown: with the record gone, verify must still fail.
    with open(env / "bin" / "activate", "a") as f:
        f.write("echo changed\n")

    code, report = cli("verify", env, "--lock", lock)
    assert code == 1 and report["identical"] is False
    (found,) = [d for d in report["differences"] if d["path"] == str(marker)]
    assert found["kind"] == "changed" and word in found["actual"]
    assert found["actual"].startswith(f"{key}: ") if key else True
    assert f"envship install {env} --lock {lock}" in found["note"]
    again = f"`envship install {env} --lock {lock} --target {report['target']['name']}`"
    assert f"{again} makes it again" in report["hint"]

    code, error = cli("add", "beta", "--env", env, "--spec", project.spec, "--dry-run")
    assert (code, error["error"]) == (1, "add")
    assert [p["where"] for p in error["problems"]] == [where]
    assert f"envship install {env}" in error["hint"]

    code, done = cli("install", env, "--lock", lock, "--store", project.store.root)
    assert (code, done["action"]) == (0, "rebuilt")
    code, report = cli("verify", env, "--lock", lock, "--store", project.store.root)
    assert (code, report["identical"]) == (0, True)  # bin/activate made again too


@pytest.mark.parametrize("case", DAMAGE)
def test_a_version_with_a_damaged_marker_is_refused_by_check_and_repaired_by_create(
    project: Project, case: str
) -> None:
    damage, key, word = DAMAGE[case]
    lock, store, root = project.lock.path, project.store.root, project.root
    code, made = cli("env", "create", "ds", "--root", root, "--lock", lock, "--store", store)
    assert code == 0
    marker = Path(made["path"]) / MARKER_NAME
    damage(marker)

    code, error = cli("env", "check", "ds", "--root", root)
    assert (code, error["error"]) == (1, "env")
    (problem,) = error["problems"]
    assert problem["where"] == (f"{marker}: {key}" if key else str(marker))
    assert word in problem["message"]
    assert f"envship env create ds --root {root} --lock" in error["hint"]

    code, again = cli("env", "create", "ds", "--root", root, "--lock", lock, "--store", store)
    assert code == 0 and again["path"] == made["path"]
    assert (again["created"], again["repaired"]) == (True, True)
    assert cli("env", "check", "ds", "--root", root)[0] == 0


# -- the property: whatever a marker holds, only EnvshipError comes out ------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "/", "\0", "\ud800", "linux-x86_64", "3.11", "hardlink", "../x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
# Wrong in most places, and often: what a reader indexing without looking trips on.
VALUES: st.SearchStrategy[Any] = st.sampled_from([5, None, [], {}, "", True]) | JSON

Mutation = tuple[tuple[Any, ...], str, Any]


@st.composite
def _path(draw: st.DrawFn, node: Any) -> tuple[Any, ...]:
    """A key path into ``node``: a key of the top level (each as likely), then deeper
    or not, so the packages and the venv's files weigh no more than the lock."""
    path: list[Any] = []
    while True:
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        child = node[key]
        if not (isinstance(child, dict | list) and child) or not draw(st.booleans()):
            return tuple(path)
        node = child


@st.composite
def mutations(draw: st.DrawFn, base: dict[str, Any]) -> list[Mutation]:
    how = st.sampled_from(["replace", "delete", "add"])
    return draw(st.lists(st.tuples(_path(base), how, VALUES), min_size=1, max_size=3))


def _mutated(base: dict[str, Any], changes: list[Mutation]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for path, how, value in changes:
        node: Any = data
        try:
            for key in path[:-1]:
                node = node[key]
            last = path[-1]
            if how == "delete":
                del node[last]
            elif how == "add" and isinstance(node, dict):
                node[f"{last}-extra"] = value
            else:
                node[last] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change took the path away
    return data


def _only_ours(run: Callable[[], object]) -> None:
    """Run it; an EnvshipError is an answer, anything else escapes and fails the test."""
    with contextlib.suppress(EnvshipError):
        run()


@pytest.fixture
def version(project: Project) -> Path:
    return create_env(project.lock, project.store, project.root, name="ds").path


@pytest.fixture
def shape(project: Project) -> dict[str, Any]:
    """The marker as first written: where mutations may go. Fixed for every example
    (hypothesis wants the same choices each time); each mutates the marker as it is."""
    data: dict[str, Any] = json.loads((project.env / MARKER_NAME).read_text())
    return data


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_marker_mutation_raises_anything_but_an_envship_error(
    project: Project, version: Path, shape: dict[str, Any], data: st.DataObject
) -> None:
    env, lock, store = project.env, project.lock, project.store
    base = json.loads((env / MARKER_NAME).read_text())
    base_version = json.loads((version / MARKER_NAME).read_text())
    changes = data.draw(mutations(shape))
    (version / MARKER_NAME).write_text(json.dumps(_mutated(base_version, changes)))
    _only_ours(lambda: check_env(project.root, "ds"))
    _only_ours(lambda: create_env(lock, store, project.root, name="ds"))
    (version / MARKER_NAME).write_text(json.dumps(base_version))
    assert create_env(lock, store, project.root, name="ds").path == version  # whole again

    (env / MARKER_NAME).write_text(json.dumps(_mutated(base, changes)))
    _only_ours(lambda: verify(lock, env))
    _only_ours(lambda: add(["beta"], env=env, spec=project.spec, dry_run=True))
    _only_ours(lambda: install(lock, store, env))
    # The next example starts from a whole environment: an install may have failed half
    # way, or kept a record whose values (not shape) were changed (an update keeps what
    # the record says the venv's creation wrote).
    try:
        whole = verify(lock, env, store=store).identical
    except EnvshipError:
        whole = False
    if not whole:
        shutil.rmtree(env)
        install(lock, store, env)


def test_the_hint_for_a_damaged_record_repeats_what_verify_was_asked(tmp_path: Path) -> None:
    """The record cannot say how the environment was made: the command takes the store
    and groups verify was given, so it works pasted where ENVSHIP_STORE is another."""
    wheels = build_wheels(tmp_path / "dist")
    picked = [wheels[k] for k in ("alpha", "beta", "tool")]
    lock = write_lock(tmp_path / "pylock.toml", picked, groups={"dev": ["tool"]})
    store = stocked_store(tmp_path / "stock", picked)  # not the default store
    env = tmp_path / "env"
    install(lock, store, env, groups=())
    marker = env / MARKER_NAME
    marker.unlink()
    marker.symlink_to("/dev/zero")
    code, report = cli("verify", env, "--lock", lock.path, "--store", store.root, "--no-groups")
    assert code == 1
    target = report["target"]["name"]
    command = (
        f"envship install {env} --lock {lock.path} --target {target} --no-groups "
        f"--store {store.root}"
    )
    assert f"`{command}` makes it again" in report["hint"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ran = subprocess.run(
        [sys.executable, "-m", "envship", *command.split()[1:]],
        cwd=elsewhere,
        env={**os.environ, "ENVSHIP_STORE": str(tmp_path / "empty-store")},
        capture_output=True,
        text=True,
        preexec_fn=_limited,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    assert not marker.is_symlink()
    assert json.loads(marker.read_text())["groups"] == []
    assert not list(env.glob("lib/python*/site-packages/tool*"))

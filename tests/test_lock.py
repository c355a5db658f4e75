"""``envship lock`` against a real index on 127.0.0.1, resolved by the real uv."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.pylock import Pylock

from envship._uv import uv_bin
from envship.cli.main import main
from envship.errors import (
    InvalidLockError,
    LockError,
    NetworkError,
    StaleLockError,
    UnsupportedTargetError,
)
from envship.lock import VersionChange, check_lock, lock
from envship.lockfile import LockFile
from envship.spec import Spec, load_spec
from indexlib import IndexServer, build_sdist, build_wheel, serve, write_simple_index

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

BOTH: dict[str, dict[str, str]] = {"linux-x86_64": {}, "linux-aarch64": {}}


def write_spec(folder: Path, server_url: str, **fields: Any) -> Spec:
    data: dict[str, Any] = {
        "name": "demo",
        "python": "3.11",
        "dependencies": [],
        "indexes": [{"name": "test", "url": server_url, "default": True}],
        "targets": BOTH,
    }
    data.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "envship.toml").write_text(tomli_w.dumps(data))
    return load_spec(folder)


def versions(path: Path) -> dict[str, str]:
    data = tomllib.loads(path.read_text())
    return {p["name"]: p["version"] for p in data["packages"]}


def missing(error: UnsupportedTargetError) -> set[tuple[str, str]]:
    """(package and version, target) of every problem the error lists."""
    found = set()
    for problem in error.problems:
        target = re.search(r"target '([^']+)'", problem.message)
        assert target, problem
        found.add((problem.where, target.group(1)))
    return found


@pytest.fixture(scope="module")
def relock_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index where alpha and beta each have a newer release than a first lock takes."""
    root = tmp_path_factory.mktemp("relock")
    dist = root / "dist"
    files = [build_wheel(dist, "alpha", v, requires=["beta>=1.0"]) for v in ("1.0", "1.1")]
    files += [build_wheel(dist, "beta", v) for v in ("1.0", "1.1", "1.3")]
    write_simple_index(root / "index", files)
    return root / "index"


@pytest.fixture
def relock_server(relock_root: Path) -> Iterator[IndexServer]:
    with serve(relock_root) as server:
        yield server


def test_lock_writes_valid_hashed_pylock(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha", "gamma", "eta"])
    result = lock(spec)
    assert result.path == tmp_path / "pylock.toml"
    data = tomllib.loads(result.path.read_text())
    pylock = Pylock.from_dict(data)
    assert {p.name for p in pylock.packages} == {"alpha", "beta", "gamma", "eta"}
    # beta 1.2 is yanked: the resolver must take 1.1.
    assert versions(result.path)["beta"] == "1.1"
    for package in pylock.packages:
        for wheel in package.wheels or []:
            assert len(wheel.hashes["sha256"]) == 64
    assert len(data["environments"]) == 2
    assert data["tool"]["envship"]["spec-digest"] == spec.digest
    assert [t["name"] for t in data["tool"]["envship"]["targets"]] == [
        "linux-x86_64",
        "linux-aarch64",
    ]
    gamma = next(p for p in data["packages"] if p["name"] == "gamma")
    assert not any("win_amd64" in w["url"] for w in gamma["wheels"]), "pruned: no target"
    assert len(gamma["wheels"]) == 2
    lockfile = LockFile.load(result.path)
    arm = lockfile.artifacts(["linux-aarch64"])
    assert {a.filename for a in arm if a.name == "gamma"} == {
        "gamma-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    }


def test_missing_wheel_for_one_target_is_refused(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["delta"])
    with pytest.raises(UnsupportedTargetError) as info:
        lock(spec)
    text = str(info.value)
    assert "delta" in text and "linux-aarch64" in text
    assert "linux-x86_64'" not in text
    assert not (tmp_path / "pylock.toml").exists()


def test_same_package_one_target_is_fine(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(
        tmp_path, index_server.simple_url, dependencies=["delta"], targets={"linux-x86_64": {}}
    )
    assert lock(spec).packages == 1


BOTH_PYTHONS = {"python": ["3.11", "3.12"], "targets": {"linux-x86_64": {}}}


@pytest.mark.parametrize(
    ("dependencies", "fields", "expected"),
    [
        # uv stops at epsilon for x86_64; the rest come from resolving each target alone.
        (
            ["zeta", "delta", "epsilon"],
            {},
            {
                ("epsilon 1.0", "linux-x86_64"),
                ("epsilon 1.0", "linux-aarch64"),
                ("delta 1.0", "linux-aarch64"),
                ("zeta 1.0", "linux-x86_64"),
                ("zeta 1.0", "linux-aarch64"),
            },
        ),
        # uv stops at gamma for 3.12; zeta misses 3.11 by glibc and 3.12 by its cp311 tag.
        (
            ["gamma", "zeta"],
            BOTH_PYTHONS,
            {
                ("gamma 1.0", "linux-x86_64-py3.12"),
                ("zeta 1.0", "linux-x86_64-py3.11"),
                ("zeta 1.0", "linux-x86_64-py3.12"),
            },
        ),
    ],
)
def test_every_missing_wheel_is_listed_at_once(
    tmp_path: Path,
    index_server: IndexServer,
    dependencies: list[str],
    fields: dict[str, Any],
    expected: set[tuple[str, str]],
) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=dependencies, **fields)
    with pytest.raises(UnsupportedTargetError) as info:
        lock(spec)
    assert missing(info.value) == expected, str(info.value)
    assert not (tmp_path / "pylock.toml").exists()


def test_missing_wheel_message_names_the_wheels_that_exist(
    tmp_path: Path, index_server: IndexServer
) -> None:
    # The x86_64 wheels need glibc 2.17; no target takes them, yet the message must name
    # them (they are pruned only from a lock that is written) and no file that is not.
    targets = {"linux-x86_64": {"glibc": "2.5"}, "linux-aarch64": {"glibc": "2.17"}}
    spec = write_spec(
        tmp_path, index_server.simple_url, dependencies=["gamma", "eta"], targets=targets
    )
    with pytest.raises(UnsupportedTargetError) as info:
        lock(spec)
    assert missing(info.value) == {("gamma 1.0", "linux-x86_64"), ("eta 2.0", "linux-x86_64")}
    gamma = next(p.message for p in info.value.problems if p.where == "gamma 1.0")
    assert (
        "gamma-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl needs glibc "
        "2.17, target has 2.5" in gamma
    )
    assert "manylinux_2_17_aarch64.manylinux2014_aarch64.whl is for aarch64" in gamma
    assert not any("pylock.toml" in p.where for p in info.value.problems)


def test_glibc_too_old_lists_every_target(tmp_path: Path, index_server: IndexServer) -> None:
    # zeta ships only manylinux_2_34 wheels: uv accepts it (it knows no glibc levels),
    # the per-target tag check must not.
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["zeta", "alpha"])
    with pytest.raises(UnsupportedTargetError) as info:
        lock(spec)
    wheres = [p.message for p in info.value.problems]
    assert len(wheres) == 2
    assert any("linux-x86_64" in w for w in wheres) and any("linux-aarch64" in w for w in wheres)
    assert all("manylinux_2_34" in w for w in wheres)


def test_newer_glibc_target_accepts_it(tmp_path: Path, index_server: IndexServer) -> None:
    targets = {"linux-x86_64": {"glibc": "2.35"}, "linux-aarch64": {"glibc": "2.34"}}
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["zeta"], targets=targets)
    assert lock(spec).packages == 1


def test_a_cpu_and_a_cuda_target_of_one_platform_lock_together(
    tmp_path: Path, index_server: IndexServer
) -> None:
    """Variants share their marker; uv wants its environments disjoint, so one each."""
    targets = {"linux-x86_64": {}, "gpu": {"platform": "linux-x86_64", "variant": "cuda"}}
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"], targets=targets)
    lock(spec)
    locked = LockFile.load(tmp_path / "pylock.toml")
    assert sorted(t.name for t in locked.targets) == ["gpu", "linux-x86_64"]
    assert len(locked.pylock.environments or []) == 1


def test_sdist_only_package_is_refused_by_default(
    tmp_path: Path, index_server: IndexServer
) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["epsilon"])
    with pytest.raises(UnsupportedTargetError) as info:
        lock(spec)
    assert "epsilon" in str(info.value)


def test_allow_sdist_accepts_wheel_less_target(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(
        tmp_path, index_server.simple_url, dependencies=["delta"], **{"allow-sdist": True}
    )
    result = lock(spec)
    lockfile = LockFile.load(tmp_path / "pylock.toml")
    arm = lockfile.artifacts(["linux-aarch64"])
    assert [a.kind for a in arm] == ["sdist"]
    # PEP 751 locks no build backend: the note says an offline install cannot build it
    assert [n for n in result.notes if "from source" in n] == [
        "delta is installed from source on some target: building needs a build backend "
        "(e.g. setuptools) from an index, which an offline install from the store does not "
        "have"
    ]


def test_groups_become_pep751_dependency_groups(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(
        tmp_path, index_server.simple_url, dependencies=["alpha"], groups={"dev": ["tool"]}
    )
    lock(spec)
    data = tomllib.loads((tmp_path / "pylock.toml").read_text())
    assert data["dependency-groups"] == ["dev"]
    assert data["default-groups"] == []
    tool = next(p for p in data["packages"] if p["name"] == "tool")
    assert "'dev' in dependency_groups" in tool["marker"]
    lockfile = LockFile.load(tmp_path / "pylock.toml")
    assert "tool" in {a.name for a in lockfile.artifacts()}
    assert "tool" not in {a.name for a in lockfile.artifacts(groups=[])}


def test_check_detects_stale_lock(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    lock(spec)
    check_lock(spec)
    check_lock(spec, str(tmp_path / "pylock.toml"))  # a library caller's str path
    changed = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha", "gamma"])
    with pytest.raises(StaleLockError):
        check_lock(changed)
    assert main(["lock", "--check", "--spec", str(tmp_path)]) == 1
    assert main(["lock", "--spec", str(tmp_path)]) == 0
    assert main(["lock", "--check", "--spec", str(tmp_path)]) == 0


def test_relock_keeps_versions_unless_upgraded(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["beta<1.1"])
    lock(spec)
    assert versions(tmp_path / "pylock.toml")["beta"] == "1.0"
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["beta", "gamma"])
    lock(spec)
    assert versions(tmp_path / "pylock.toml")["beta"] == "1.0"
    lock(spec, upgrade_packages=["beta"])
    assert versions(tmp_path / "pylock.toml")["beta"] == "1.1"


def test_relock_drops_pins_that_no_longer_fit(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["beta<1.1"])
    lock(spec)
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["beta>=1.1"])
    lock(spec)
    assert versions(tmp_path / "pylock.toml")["beta"] == "1.1"


def test_relock_moves_only_the_pin_that_conflicts(
    tmp_path: Path, relock_server: IndexServer
) -> None:
    url = relock_server.simple_url
    first = lock(write_spec(tmp_path, url, dependencies=["alpha<1.1", "beta<1.3"]))
    assert versions(first.path) == {"alpha": "1.0", "beta": "1.1"}
    # beta's locked 1.1 no longer fits; alpha's 1.0 still does and must stay.
    result = lock(write_spec(tmp_path, url, dependencies=["alpha", "beta>=1.3"]))
    assert versions(result.path) == {"alpha": "1.0", "beta": "1.3"}
    assert first.changes == ()  # nothing to compare with
    assert result.changes == (VersionChange("beta", ("1.1",), ("1.3",), requested=False),)
    assert result.to_json()["changes"] == [
        {"name": "beta", "old": ["1.1"], "new": ["1.3"], "requested": False}
    ]
    moved = lock(
        write_spec(tmp_path, url, dependencies=["alpha", "beta>=1.3"]), upgrade_packages=["Alpha"]
    )
    assert moved.changes == (VersionChange("alpha", ("1.0",), ("1.1",), requested=True),)


@pytest.fixture(scope="module")
def fork_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index with iota 1.1 to 1.4, for a lock that takes one iota per Python."""
    root = tmp_path_factory.mktemp("fork")
    files = [build_wheel(root / "dist", "iota", f"1.{v}") for v in range(1, 5)]
    write_simple_index(root / "index", files)
    return root / "index"


def per_target(path: Path, name: str) -> dict[str, str]:
    """The version of ``name`` each target of the lock at ``path`` installs."""
    lockfile = LockFile.load(path)
    return {
        t.name: str(p.version)
        for t in lockfile.targets
        for p, _ in lockfile.select(t)
        if p.name == name
    }


KEPT = {"linux-x86_64-py3.11": "1.1", "linux-x86_64-py3.12": "1.2"}


@pytest.mark.parametrize(
    ("in_group", "upgrade", "expected", "changes"),
    [
        (False, (), KEPT, []),
        # Pins a dependency group pulls in carry its marker in the lock; they stay too.
        (True, (), KEPT, []),
        (
            False,
            ("iota",),
            {"linux-x86_64-py3.11": "1.3", "linux-x86_64-py3.12": "1.4"},
            ["iota 1.1, 1.2 -> 1.3, 1.4"],
        ),
    ],
)
def test_relock_keeps_a_pin_per_fork(
    tmp_path: Path,
    fork_root: Path,
    in_group: bool,
    upgrade: tuple[str, ...],
    expected: dict[str, str],
    changes: list[str],
) -> None:
    """A package locked at a different version per Python keeps both when the spec still
    allows them (the audit saw the older move to the newer: uv was not told which pin
    belongs to which fork)."""

    def spec(old: str, new: str) -> Spec:
        deps = [f"iota<{old}; python_version < '3.12'", f"iota<{new}; python_version >= '3.12'"]
        where: dict[str, Any] = {"groups": {"dev": deps}} if in_group else {"dependencies": deps}
        return write_spec(tmp_path, url, **where, **BOTH_PYTHONS)

    with serve(fork_root) as server:
        url = server.simple_url
        first = lock(spec("1.2", "1.3"))
        assert per_target(first.path, "iota") == KEPT
        result = lock(spec("1.4", "1.5"), upgrade_packages=upgrade)
    assert per_target(result.path, "iota") == expected
    assert [str(c) for c in result.changes] == changes


def test_relock_drops_the_pin_of_a_target_no_longer_locked(tmp_path: Path, fork_root: Path) -> None:
    """A forked pin no target installs any more must not pull the others: 1.2 was only
    Python 3.12's, and a plain preference for it would beat 3.11's 1.1."""
    with serve(fork_root) as server:
        deps = ["iota<1.2; python_version < '3.12'", "iota<1.3; python_version >= '3.12'"]
        lock(write_spec(tmp_path, server.simple_url, dependencies=deps, **BOTH_PYTHONS))
        only = {"python": "3.11", "targets": {"linux-x86_64": {}}}
        result = lock(write_spec(tmp_path, server.simple_url, dependencies=["iota"], **only))
    assert versions(result.path) == {"iota": "1.1"}
    assert [str(c) for c in result.changes] == ["iota 1.1, 1.2 -> 1.1"]


def test_relock_reports_added_and_removed(tmp_path: Path, relock_server: IndexServer) -> None:
    url = relock_server.simple_url
    lock(write_spec(tmp_path, url, dependencies=["beta<1.1"]))
    result = lock(write_spec(tmp_path, url, dependencies=["alpha<1.1"]))
    # alpha comes in; beta stays at its locked 1.0, which alpha's beta>=1.0 allows.
    assert [str(c) for c in result.changes] == ["+ alpha 1.0"]
    result = lock(write_spec(tmp_path, url, dependencies=["beta"]), upgrade=True)
    assert [str(c) for c in result.changes] == ["- alpha 1.0", "beta 1.0 -> 1.3"]
    assert all(c.requested for c in result.changes)


def test_unreadable_previous_lock_is_replaced_with_a_note(
    tmp_path: Path, index_server: IndexServer
) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    (tmp_path / "pylock.toml").write_bytes(b"lock-version = \n\xff")
    result = lock(spec)
    assert versions(result.path) == {"alpha": "1.0", "beta": "1.1"}
    assert result.changes == ()
    assert len(result.notes) == 1
    assert "could not be read" in result.notes[0] and "none of its versions" in result.notes[0]


def test_preferences_uv_cannot_read_are_dropped_with_a_note(
    tmp_path: Path, relock_server: IndexServer
) -> None:
    # A hand-edited lock whose index URL uv cannot parse: the pins cannot reach uv as
    # preferences, so the lock resolves afresh and says so.
    url = relock_server.simple_url
    first = lock(write_spec(tmp_path, url, dependencies=["alpha<1.1"]))
    first.path.write_text(
        first.path.read_text().replace(f'index = "{url}"', 'index = "http://[::1"')
    )
    result = lock(write_spec(tmp_path, url, dependencies=["alpha"]))
    assert versions(result.path) == {"alpha": "1.1", "beta": "1.3"}
    assert [str(c) for c in result.changes] == ["alpha 1.0 -> 1.1"]
    assert any("could not use the locked versions" in n and "[::1" in n for n in result.notes)


def test_lock_written_by_another_tool_is_noted(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    lock(spec)
    path = tmp_path / "pylock.toml"
    path.write_text(path.read_text().replace('created-by = "envship"', 'created-by = "uv"'))
    result = lock(spec)
    assert result.changes == ()
    assert any("written by 'uv', not envship" in n for n in result.notes)


@pytest.mark.parametrize(
    ("names", "error", "note"),
    [
        (["Bad Name!"], "invalid package names", None),
        (["nonexistent"], None, "'nonexistent' was named to upgrade but is not locked"),
        (["BETA"], None, None),
    ],
)
def test_upgrade_package_names_are_checked(
    tmp_path: Path,
    index_server: IndexServer,
    names: list[str],
    error: str | None,
    note: str | None,
) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    lock(spec)
    if error:
        with pytest.raises(LockError, match=error):
            lock(spec, upgrade_packages=names)
        return
    result = lock(spec, upgrade_packages=names)
    assert result.notes == ((note,) if note else ())


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("missing/pylock.toml", "does not exist"),
        ("folder", "is a folder"),
        ("afile/pylock.toml", "is not a folder"),
        ("lock.toml", "not a PEP 751 lock file name"),
        ("pylock.a.b.toml", "not a PEP 751 lock file name"),
        ("Pylock.toml", "not a PEP 751 lock file name"),
    ],
)
def test_output_path_must_be_a_lock_file_in_a_folder(
    tmp_path: Path, index_server: IndexServer, output: str, reason: str
) -> None:
    spec = write_spec(tmp_path / "spec", index_server.simple_url, dependencies=["alpha"])
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("")
    with pytest.raises(LockError) as info:
        lock(spec, output=tmp_path / output)
    assert reason in str(info.value)
    assert not (tmp_path / "spec" / "pylock.toml").exists()


def test_named_lock_file_is_written(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    result = lock(spec, output=tmp_path / "pylock.gpu.toml")
    assert result.path.is_file() and not (tmp_path / "pylock.toml").exists()
    assert check_lock(spec, result.path).path == result.path


def test_check_names_a_lock_envship_did_not_write(
    tmp_path: Path, index_server: IndexServer
) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    lock(spec)
    path = tmp_path / "pylock.toml"
    data = tomllib.loads(path.read_text())
    del data["tool"]
    data["created-by"] = "uv"
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(StaleLockError) as info:
        check_lock(spec)
    assert "not written by `envship lock`" in info.value.message
    assert "spec changed" not in str(info.value)
    assert any(p.message == "uv" for p in info.value.problems)


def test_unchanged_relock_does_not_rewrite(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    assert lock(spec).changed
    assert not lock(spec).changed


def test_unreachable_index_names_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")  # uv's three retries took 7 s a lock here
    spec = write_spec(tmp_path, "http://127.0.0.1:9/simple", dependencies=["alpha"])
    with pytest.raises(NetworkError) as info:
        lock(spec)
    assert "127.0.0.1:9" in info.value.url
    assert main(["lock", "--spec", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err and "Traceback" not in err


def test_cli_json(
    tmp_path: Path, index_server: IndexServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    assert main(["lock", "--spec", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["packages"] == 2 and out["changed"] is True
    write_spec(tmp_path, index_server.simple_url, dependencies=["delta"])
    assert main(["lock", "--spec", str(tmp_path), "--json"]) == 1
    err = json.loads(capsys.readouterr().out)
    assert err["error"] == "unsupported-target"
    assert any("delta" in p["where"] for p in err["problems"])


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("lock-version = \n", "pylock.toml:1"),
        ('lock-version = "1.0"\ncreated-by = 3\n', "created-by"),
        ('lock-version = "9.0"\ncreated-by = "x"\n', "pylock.toml"),
        (
            'lock-version = "1.0"\ncreated-by = "x"\n[[packages]]\nname = "Bad Name"\n',
            "packages",
        ),
        (
            'lock-version = "1.0"\ncreated-by = "x"\npackages = []\n[tool.envship]\n'
            'targets = [{name = "mars-risc", python = "3.11", glibc = "2.28"}]\n',
            "tool.envship.targets[0]",
        ),
    ],
)
def test_malformed_lock_names_where(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "pylock.toml"
    path.write_text(text)
    with pytest.raises(LockError) as info:
        LockFile.load(path)
    rendered = str(info.value)
    assert where in rendered, rendered


_LOCK_TOKENS = st.sampled_from(
    [
        'lock-version = "1.0"\n',
        'created-by = "x"\n',
        "[[packages]]\n",
        'name = "a"\n',
        'version = "1"\n',
        'wheels = [{url = "https://h/a-1-py3-none-any.whl", hashes = {sha256 = "00"}}]\n',
        'sdist = {url = "https://h/a-1.tar.gz"}\n',
        "marker = \"python_version > '3'\"\n",
        "[tool.envship]\n",
        'targets = [{name = "linux-x86_64", python = "3.11", glibc = "2.28"}]\n',
        "packages = []\n",
        "= broken\n",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_LOCK_TOKENS, max_size=12) | st.text(max_size=200))
def test_lock_loader_only_raises_lock_errors(parts: list[str] | str) -> None:
    """Any text becomes a LockFile or a LockError that says where; nothing else escapes."""
    text = parts if isinstance(parts, str) else "".join(parts)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pylock.toml"
        path.write_text(text, encoding="utf-8")
        try:
            LockFile.load(path)
        except LockError as exc:
            assert str(path) in str(exc)


@pytest.mark.parametrize(
    "terminal",
    [{}, {"COLUMNS": "80"}, {"FORCE_COLOR": "1"}],
    ids=["plain", "80-columns", "forced-colour"],
)
def test_a_python_this_machine_lacks_is_named_when_uv_cannot_fetch_one(
    tmp_path: Path,
    index_server: IndexServer,
    monkeypatch: pytest.MonkeyPatch,
    terminal: dict[str, str],
) -> None:
    """uv locks with an interpreter of the spec's Python and downloads one when none is
    found: where that fails, the error says so instead of blaming the package index.
    In any terminal: uv wraps its error at ``COLUMNS`` (the URL went onto a line of its
    own) and colours it under ``FORCE_COLOR`` (set in every Jupyter kernel)."""
    for name, value in terminal.items():
        monkeypatch.setenv(name, value)
    # No interpreter of that Python where uv looks, and downloads go to a closed port.
    monkeypatch.setenv("PATH", f"{Path(uv_bin()).parent}:/usr/bin:/bin")
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "pythons"))
    monkeypatch.setenv("UV_PYTHON_INSTALL_MIRROR", "http://127.0.0.1:1")
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")  # the same answer, without 10 s of retries
    spec = write_spec(
        tmp_path / "s", index_server.simple_url, dependencies=["alpha"], python="3.14"
    )
    with pytest.raises(NetworkError) as caught:
        lock(spec)
    assert caught.value.message.startswith("uv needs a Python 3.14 interpreter")
    assert "/cpython-" in caught.value.url and caught.value.url.startswith("http://127.0.0.1:1/")
    assert index_server.file_requests() == 0


@pytest.mark.parametrize("python", ["3.10", "3.12"])
def test_a_target_may_run_another_python_than_the_spec(
    tmp_path: Path, index_server: IndexServer, python: str
) -> None:
    """A target's own Python, lower than the spec's, failed inside uv ("don't overlap
    with Python requirement '>=3.11'"): requires-python counts every target's Python."""
    targets = {"linux-x86_64": {"glibc": "2.28"}, "linux-aarch64": {"python": python}}
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"], targets=targets)
    first = lock(spec)
    data = tomllib.loads(first.path.read_text())
    assert data["requires-python"] == f">={min('3.11', python)}"
    lockfile = LockFile.load(first.path)
    assert {t.name: t.python for t in lockfile.targets} == {
        "linux-x86_64": "3.11",
        "linux-aarch64": python,
    }
    assert per_target(first.path, "alpha") == {"linux-x86_64": "1.0", "linux-aarch64": "1.0"}
    # A re-lock hands uv the locked versions in a uv.lock with the same requires-python.
    again = lock(spec)
    assert not again.changed and again.notes == ()


@pytest.mark.parametrize(
    ("fields", "changed", "problems"),
    [
        # The default display name follows the name, so both changed.
        (
            {"name": "renamed"},
            "name and kernel.display-name",
            [
                ("name", "the spec says 'renamed', the lock records 'demo'"),
                (
                    "kernel.display-name",
                    "the spec says 'Python (renamed)', the lock records 'Python (demo)'",
                ),
            ],
        ),
        (
            {"kernel": {"display-name": "Py Demo"}},
            "kernel.display-name",
            [("kernel.display-name", "the spec says 'Py Demo', the lock records 'Python (demo)'")],
        ),
    ],
)
def test_check_names_a_changed_name_or_display_name(
    tmp_path: Path,
    index_server: IndexServer,
    capsys: pytest.CaptureFixture[str],
    fields: dict[str, Any],
    changed: str,
    problems: list[tuple[str, str]],
) -> None:
    """Kernels and images take their names from the lock, yet Spec.lock_inputs leaves
    them out: ``lock --check`` said "current" after either changed."""
    url = index_server.simple_url
    lock(write_spec(tmp_path, url, dependencies=["alpha"]))
    spec = write_spec(tmp_path, url, dependencies=["alpha"], **fields)
    with pytest.raises(StaleLockError) as info:
        check_lock(spec)
    assert f"is stale: the spec's {changed} changed since it was locked" in info.value.message
    assert [(p.where, p.message) for p in info.value.problems] == problems
    assert main(["lock", "--check", "--spec", str(tmp_path)]) == 1
    assert problems[-1][1] in capsys.readouterr().err
    # Re-locking records the new names; nothing else moved.
    result = lock(spec)
    assert result.changed and result.changes == ()
    assert (check_lock(spec).name, check_lock(spec).display_name) == (
        spec.name,
        spec.display_name,
    )


@dataclass
class JsonIndex:
    """A PEP 691 JSON index on 127.0.0.1 that gives PEP 700 sizes, save for ``hidden``."""

    url: str
    hidden: set[str]


@pytest.fixture(scope="module")
def json_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("json") / "dist"
    build_wheel(dist, "alpha", "1.0", requires=["beta>=1.0"])
    build_wheel(dist, "beta", "1.0")
    build_sdist(dist, "beta", "1.0")
    return dist


@pytest.fixture
def json_index(json_dist: Path) -> Iterator[JsonIndex]:
    hidden: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET(head=True)

        def do_GET(self, head: bool = False) -> None:
            parts = self.path.strip("/").split("/")
            if parts[0] == "files" and (json_dist / parts[-1]).is_file():
                body, ctype = (json_dist / parts[-1]).read_bytes(), "application/octet-stream"
            elif parts[0] == "simple" and len(parts) == 2:
                files = [
                    {
                        "filename": f.name,
                        "url": f"../../files/{f.name}",
                        "hashes": {"sha256": hashlib.sha256(f.read_bytes()).hexdigest()},
                        **({} if f.name in hidden else {"size": f.stat().st_size}),
                    }
                    for f in sorted(json_dist.iterdir())
                    if f.name.startswith(f"{parts[1]}-")
                ]
                page = {"meta": {"api-version": "1.1"}, "name": parts[1], "files": files}
                body, ctype = json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield JsonIndex(f"http://127.0.0.1:{server.server_address[1]}/simple", hidden)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def sizes(path: Path) -> dict[str, int | None]:
    data = tomllib.loads(path.read_text())
    found: dict[str, int | None] = {}
    for package in data["packages"]:
        for artifact in [*package.get("wheels", []), *filter(None, [package.get("sdist")])]:
            found[artifact["url"].rsplit("/", 1)[-1]] = artifact.get("size")
    return found


@pytest.mark.parametrize("previous", [True, False])
def test_a_size_uv_leaves_out_is_kept_from_the_previous_lock(
    tmp_path: Path, json_index: JsonIndex, monkeypatch: pytest.MonkeyPatch, previous: bool
) -> None:
    """uv drops some artifacts' ``size`` at random between runs (with parallel
    downloads); an unchanged re-lock must not rewrite the lock without them. The race
    cannot be forced, so the index stops giving two sizes, which uv's output then lacks
    just the same; a fresh uv cache makes uv ask the index again."""
    spec = write_spec(tmp_path, json_index.url, dependencies=["alpha"], **{"allow-sdist": True})
    first = lock(spec)
    before = first.path.read_bytes()
    full = sizes(first.path)
    assert set(full) == {
        "alpha-1.0-py3-none-any.whl",
        "beta-1.0-py3-none-any.whl",
        "beta-1.0.tar.gz",
    }
    assert all(isinstance(size, int) and size > 0 for size in full.values()), full
    json_index.hidden |= {"beta-1.0-py3-none-any.whl", "beta-1.0.tar.gz"}
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache-2"))
    if not previous:
        first.path.unlink()
    again = lock(spec)
    if previous:
        assert not again.changed and again.changes == ()
        assert again.path.read_bytes() == before
    else:  # what uv gave: the sizes are really gone from its output
        assert again.changed
        assert sizes(again.path) == full | dict.fromkeys(json_index.hidden)


@pytest.mark.parametrize("existing", [True, False])
def test_a_linked_lock_is_written_through_the_link(
    tmp_path: Path, index_server: IndexServer, existing: bool
) -> None:
    """A symlinked pylock.toml was replaced by a regular file, its target left stale."""
    spec = write_spec(tmp_path / "spec", index_server.simple_url, dependencies=["beta<1.1"])
    shared = tmp_path / "shared" / "pylock.toml"
    shared.parent.mkdir()
    if existing:
        lock(spec, output=shared)
    link = tmp_path / "spec" / "pylock.toml"
    link.symlink_to(Path("..") / "shared" / "pylock.toml")
    spec = write_spec(tmp_path / "spec", index_server.simple_url, dependencies=["beta"])
    result = lock(spec, upgrade=True)
    assert result.path == link and result.changed
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "shared", "pylock.toml")
    assert versions(shared)["beta"] == "1.1"
    assert sorted(p.name for p in shared.parent.iterdir()) == ["pylock.toml"]
    assert sorted(p.name for p in link.parent.iterdir()) == ["envship.toml", "pylock.toml"]
    check_lock(spec)


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("missing-folder/pylock.toml", "missing-folder does not exist"),
        ("afile/pylock.toml", "afile is not a folder"),
        ("folder", "is a folder; name the lock file"),
        ("lock.toml", "'lock.toml' is not a PEP 751 lock file name"),
    ],
)
def test_a_lock_that_cannot_go_where_named_is_bad_input_as_in_the_cli(
    tmp_path: Path,
    index_server: IndexServer,
    capsys: pytest.CaptureFixture[str],
    output: str,
    reason: str,
) -> None:
    spec = write_spec(tmp_path / "spec", index_server.simple_url, dependencies=["alpha"])
    (tmp_path / "afile").write_text("")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidLockError) as info:
        lock(spec, output=tmp_path / output)
    assert info.value.exit_code == 2  # the CLI's usage error for the same -o is exit 2
    assert [reason in p.message for p in info.value.problems] == [True]
    assert main(["lock", "--spec", str(spec.path), "-o", str(tmp_path / output)]) == 2
    capsys.readouterr()
    assert not list(tmp_path.rglob("pylock*.toml"))


def test_check_of_a_folder_is_bad_input(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    with pytest.raises(InvalidLockError, match="is a folder, not a lock file") as info:
        check_lock(spec, tmp_path)
    assert info.value.exit_code == 2

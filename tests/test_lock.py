"""``envship lock`` against a real index on 127.0.0.1, resolved by the real uv."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.pylock import Pylock

from envship.cli.main import main
from envship.errors import LockError, NetworkError, StaleLockError, UnsupportedTargetError
from envship.lock import check_lock, lock
from envship.lockfile import LockFile
from envship.spec import Spec, load_spec
from indexlib import IndexServer

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
    lock(spec)
    lockfile = LockFile.load(tmp_path / "pylock.toml")
    arm = lockfile.artifacts(["linux-aarch64"])
    assert [a.kind for a in arm] == ["sdist"]


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


def test_unchanged_relock_does_not_rewrite(tmp_path: Path, index_server: IndexServer) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    assert lock(spec).changed
    assert not lock(spec).changed


def test_unreachable_index_names_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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

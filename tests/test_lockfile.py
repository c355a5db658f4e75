"""Reading and selecting from pylock.toml: hand-written locks, one per failure mode."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from envship.errors import GroupError, InvalidLockError, LockError, TargetError
from envship.lockfile import LockFile

TARGETS = (
    "[tool.envship]\ntargets = [\n"
    '  {name = "x86", platform = "linux-x86_64", python = "3.11", glibc = "2.28"},\n]\n'
)
GOOD_SHA = "a" * 64


def _package(name: str, sha: str | None, *, groups: str | None = None) -> str:
    hashes = f"hashes = {{sha256 = {sha!r}}}" if sha is not None else "hashes = {}"
    marker = f"marker = {groups!r}\n" if groups else ""
    return (
        f'[[packages]]\nname = "{name}"\nversion = "1.0"\n{marker}'
        f'wheels = [{{name = "{name}-1.0-py3-none-any.whl", '
        f'url = "https://example.invalid/{name}-1.0-py3-none-any.whl", {hashes}}}]\n'
    )


def _write(tmp_path: Path, *packages: str, head: str = "") -> Path:
    path = tmp_path / "pylock.toml"
    path.write_text(
        'lock-version = "1.0"\ncreated-by = "test"\n' + head + "".join(packages) + TARGETS,
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('lock-version = "2.0"\ncreated-by = "t"\npackages = []\n', "version 2.0 is not"),
        ('lock-version = "1.0"\ncreated-by = "t"\npackages = [\n', "not valid TOML"),
        ('lock-version = "1.0"\npackages = []\n', "created-by"),
        (
            'lock-version = "1.0"\ncreated-by = "t"\npackages = []\n'
            '[tool.envship]\ntargets = [{name = "x", platform = "windows-arm"}]\n',
            "tool.envship.targets[0]",
        ),
        (
            'lock-version = "1.0"\ncreated-by = "t"\n' + _package("alpha", None),
            "packages[0].wheels[0].hashes",
        ),
    ],
    ids=["future-version", "truncated", "no-created-by", "unknown-platform", "empty-hashes"],
)
def test_a_malformed_lock_is_bad_input(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "pylock.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidLockError) as caught:
        LockFile.load(path)
    assert caught.value.exit_code == 2
    assert needle in str(caught.value)


def test_a_missing_lock_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidLockError, match="does not exist") as caught:
        LockFile.load(tmp_path / "pylock.toml")
    assert caught.value.exit_code == 2


def test_the_digest_is_of_the_bytes_that_were_parsed(tmp_path: Path) -> None:
    path = _write(tmp_path, _package("alpha", GOOD_SHA))
    lock = LockFile.load(path)
    assert lock.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_bad_hash_is_reported_at_once_with_its_place(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _package("alpha", GOOD_SHA),
        _package("beta", "xyz" + "a" * 61),
        _package("gamma", "a" * 63),
        _package("delta", "A" * 64),
        _package("epsilon", GOOD_SHA).replace("sha256", "sha512"),
    )
    with pytest.raises(InvalidLockError) as caught:
        LockFile.load(path).artifacts()
    where = {p.where: p.message for p in caught.value.problems}
    assert where.keys() == {
        f"{path}: packages[1].wheels[0]",
        f"{path}: packages[2].wheels[0]",
        f"{path}: packages[3].wheels[0]",
        f"{path}: packages[4].wheels[0]",
    }
    assert "no sha256" in where[f"{path}: packages[4].wheels[0]"]
    assert "'xyz" in where[f"{path}: packages[1].wheels[0]"]
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (None, ["alpha", "beta"]),
        ((), ["alpha"]),
        (("dev",), ["alpha", "beta"]),
    ],
)
def test_groups_select_their_packages(
    tmp_path: Path, groups: tuple[str, ...] | None, expected: list[str]
) -> None:
    path = _write(
        tmp_path,
        _package("alpha", GOOD_SHA),
        _package("beta", "b" * 64, groups="'dev' in dependency_groups"),
        head='dependency-groups = ["dev"]\ndefault-groups = []\n',
    )
    lock = LockFile.load(path)
    assert [a.name for a in lock.artifacts(groups=groups)] == expected


@pytest.mark.parametrize("call", ["artifacts", "select", "chosen_groups"])
def test_an_unknown_group_is_refused_naming_the_known_ones(tmp_path: Path, call: str) -> None:
    path = _write(
        tmp_path,
        _package("alpha", GOOD_SHA),
        head='dependency-groups = ["dev"]\ndefault-groups = []\n',
    )
    lock = LockFile.load(path)
    with pytest.raises(GroupError, match="no dependency group 'docs'") as caught:
        if call == "artifacts":
            lock.artifacts(groups=["docs", "dev"])
        elif call == "select":
            lock.select(lock.targets[0], groups=["docs"])
        else:
            lock.chosen_groups(["docs"])
    assert caught.value.problems[0].message == "its groups: dev"
    # The lock is sound (not "invalid-lock"): the ask was wrong, and says what to ask.
    assert (caught.value.kind, caught.value.exit_code) == ("group", 2)
    assert caught.value.hint == "name one of them (dev), or no --group for all of them"
    assert isinstance(caught.value, LockError)


@pytest.mark.parametrize(
    ("prefix", "where", "says"),
    [
        (b"\xff\xfe", ":1:1", "the file is UTF-16"),
        (b"# caf\xe9\n", ":1:6", "byte 0xe9 is not UTF-8"),
        (b"\xef\xbb\xbf", ":1:1", "byte-order mark"),
    ],
    ids=["utf-16", "latin-1", "bom"],
)
def test_a_lock_that_is_not_utf8_toml_names_the_line(
    tmp_path: Path, prefix: bytes, where: str, says: str
) -> None:
    path = _write(tmp_path, _package("alpha", GOOD_SHA))
    path.write_bytes(prefix + path.read_bytes())
    with pytest.raises(InvalidLockError) as caught:
        LockFile.load(path)
    assert [p.where for p in caught.value.problems] == [f"{path}{where}"]
    assert says in caught.value.problems[0].message
    assert caught.value.hint and caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("packages", "needle"),
    [
        ((_package("alpha", GOOD_SHA), _package("alpha", GOOD_SHA)), "Multiple packages"),
        (
            (_package("alpha", GOOD_SHA).replace("py3-none-any", "cp312-cp312-win_amd64"),),
            "No wheel found matching",
        ),
        (
            (
                _package("alpha", GOOD_SHA).replace(
                    'version = "1.0"\n', 'version = "1.0"\nrequires-python = ">=3.12"\n'
                ),
            ),
            "does not satisfy the Python version",
        ),
    ],
    ids=["duplicate-name", "no-wheel-for-its-target", "requires-python-excludes-its-target"],
)
def test_a_lock_its_own_target_cannot_select_from_is_bad_input(
    tmp_path: Path, packages: tuple[str, ...], needle: str
) -> None:
    path = _write(tmp_path, *packages)
    with pytest.raises(InvalidLockError, match="cannot be installed on its own target") as caught:
        LockFile.load(path).artifacts()
    assert caught.value.exit_code == 2
    assert needle in caught.value.problems[0].message
    assert caught.value.hint and "envship lock" in caught.value.hint


@pytest.mark.parametrize(
    ("created_by", "says"),
    [
        (
            "uv",
            "records no targets (tool.envship.targets): it was made by 'uv', not `envship lock`",
        ),
        ("envship", "records no targets (tool.envship.targets)"),
    ],
)
def test_a_lock_without_targets_says_who_made_it(
    tmp_path: Path, created_by: str, says: str
) -> None:
    path = tmp_path / "pylock.toml"
    path.write_text(
        f'lock-version = "1.0"\ncreated-by = "{created_by}"\n' + _package("alpha", GOOD_SHA)
    )
    with pytest.raises(InvalidLockError) as caught:
        LockFile.load(path).artifacts()
    assert caught.value.message == f"{path} {says}"
    assert caught.value.exit_code == 2 and "`envship lock`" in (caught.value.hint or "")


def test_an_unknown_target_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    lock = LockFile.load(_write(tmp_path, _package("alpha", GOOD_SHA)))
    with pytest.raises(TargetError, match="the lock has no target 'arm'") as caught:
        lock.target("arm")
    assert [p.message for p in caught.value.problems] == ["its targets: x86"]
    assert (
        caught.value.hint == "name one of them (x86), or add the target to the spec and lock again"
    )
    assert caught.value.exit_code == 2

"""Locks as users and other tools hand them to envship: every malformed one is bad input
naming its place (exit 2, one JSON document), an unreadable one a permission error
naming the folder (exit 1), and one PEP 751 allows but envship did not write (no
``version``) works as its own. Hand-written locks over real wheels in a real store, the
real CLI, real uv; a property test mutates a real lock at random."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envship.cli import main as cli_main
from envship.errors import EnvshipError, UnsupportedTargetError
from envship.lock import lock
from envship.lockfile import LockFile
from envship.store import Store
from indexlib import IndexServer, build_sdist, build_wheel
from test_install import target
from test_lock import write_spec

Lock = dict[str, Any]


def _entry(wheel: Path, *, size: bool = True) -> dict[str, Any]:
    data = wheel.read_bytes()
    entry: dict[str, Any] = {"url": f"https://example.invalid/files/{wheel.name}"}
    if size:
        entry["size"] = len(data)
    entry["hashes"] = {"sha256": hashlib.sha256(data).hexdigest()}
    return entry


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    return {
        "attrs": build_wheel(out, "attrs", "1.0"),
        "attrs-sdist": build_sdist(out, "attrs", "1.0"),
        "beta": build_wheel(out, "beta", "2.0"),
    }


@pytest.fixture
def good(dist: dict[str, Path]) -> Lock:
    """A lock as `envship lock` writes one: attrs (wheel + sdist), beta in group dev."""
    attrs: dict[str, Any] = {"name": "attrs", "version": "1.0"}
    attrs |= {"sdist": _entry(dist["attrs-sdist"]), "wheels": [_entry(dist["attrs"])]}
    beta: dict[str, Any] = {"name": "beta", "version": "2.0"}
    beta |= {"marker": "'dev' in dependency_groups", "wheels": [_entry(dist["beta"])]}
    envship: dict[str, Any] = {"spec-digest": "sha256:" + "0" * 64, "name": "demo"}
    envship["allow-sdist"] = False
    envship["targets"] = [target()]
    return {
        "lock-version": "1.0",
        "created-by": "envship",
        "dependency-groups": ["dev"],
        "default-groups": [],
        "packages": [attrs, beta],
        "tool": {"envship": envship},
    }


def write(path: Path, data: Lock) -> Path:
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    """The real CLI in this process with --json: its exit code and its one document."""
    code = cli_main.main([*args, "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, json.loads(out)


# -- 1. every malformed lock: exit 2, one JSON document, the place -----------------------


def _set(*keys: str | int, value: Any) -> Callable[[Lock], None]:
    def edit(data: Lock) -> None:
        at: Any = data
        for key in keys[:-1]:
            at = at[key]
        at[keys[-1]] = value

    return edit


def _drop(*keys: str | int) -> Callable[[Lock], None]:
    def edit(data: Lock) -> None:
        at: Any = data
        for key in keys[:-1]:
            at = at[key]
        del at[keys[-1]]

    return edit


def _second_wheel(data: Lock) -> None:
    """attrs without a version, and a wheel of another version beside its own."""
    attrs = data["packages"][0]
    del attrs["version"]
    other = dict(attrs["wheels"][0], url="https://example.invalid/files/attrs-2.0-py2-none-any.whl")
    attrs["wheels"].append(other)


TOOL = ("tool", "envship")
T0 = (*TOOL, "targets", 0)
W0 = ("packages", 0, "wheels", 0)
# (id, edit, place after "LOCK: ", what the problem says)
MALFORMED: list[tuple[str, Callable[[Lock], None], str, str]] = [
    ("envship-string", _set(*TOOL, value="x"), "tool.envship", "expected a table, found a string"),
    ("envship-array", _set(*TOOL, value=[1]), "tool.envship", "found an array"),
    ("targets-int", _set(*TOOL, "targets", value=5), "tool.envship.targets", "found an integer"),
    ("targets-table", _set(*TOOL, "targets", value={"a": 1}), "tool.envship.targets", "a table"),
    ("target-int", _set(*T0, value=5), "tool.envship.targets[0]", "table with a name, found"),
    ("target-no-name", _drop(*T0, "name"), "tool.envship.targets[0]", "a table with a name"),
    ("name-int", _set(*T0, "name", value=1), "tool.envship.targets[0].name", "found an integer"),
    ("python-float", _set(*T0, "python", value=3.11), "tool.envship.targets[0].python", "float"),
    ("glibc-array", _set(*T0, "glibc", value=["2.28"]), "tool.envship.targets[0].glibc", "array"),
    ("variant-bool", _set(*T0, "variant", value=True), "tool.envship.targets[0].variant", "bool"),
    (
        "platform-table",
        _set(*T0, "platform", value={}),
        "tool.envship.targets[0].platform",
        "table",
    ),
    (
        "allow-sdist-str",
        _set(*TOOL, "allow-sdist", value="false"),
        "tool.envship.allow-sdist",
        "a string",
    ),
    ("allow-sdist-int", _set(*TOOL, "allow-sdist", value=0), "tool.envship.allow-sdist", "integer"),
    ("spec-digest-int", _set(*TOOL, "spec-digest", value=5), "tool.envship.spec-digest", "integer"),
    ("name-array", _set(*TOOL, "name", value=[]), "tool.envship.name", "found an array"),
    ("display-table", _set(*TOOL, "display-name", value={}), "tool.envship.display-name", "table"),
    (
        "size-negative",
        _set(*W0, "size", value=-1),
        "packages[0].wheels[0].size",
        "-1 is not a positive",
    ),
    ("size-zero", _set(*W0, "size", value=0), "packages[0].wheels[0].size", "0 is not a positive"),
    (
        "size-bool",
        _set(*W0, "size", value=True),
        "packages[0].wheels[0].size",
        "Unexpected type bool",
    ),
    ("sdist-size", _set("packages", 0, "sdist", "size", value=-5), "packages[0].sdist.size", "-5"),
    (
        "versions-disagree",
        _second_wheel,
        "packages[0].wheels[1]",
        "version 2.0 in its file name, 1.0",
    ),
    ("tool-string", _set("tool", value="x"), "tool", "Unexpected type str"),
    # Markers packaging raises on only when it evaluates them, mid-selection.
    (
        "marker-extra",
        _set("packages", 0, "marker", value="extra == 'x'"),
        "packages[0].marker",
        "'extra' is not defined",
    ),
    (
        "marker-set-eq",
        _set("packages", 0, "marker", value="dependency_groups == 'dev'"),
        "packages[0].marker",
        "Set-valued",
    ),
    (
        "environment-extra",
        _set("environments", value=["extra == 'a'"]),
        "environments[0]",
        "'extra' is not defined",
    ),
    # Versions Target.create took, then listed tags for without end or failed on int().
    (
        "python-endless",
        _set(*T0, "python", value="3.99999999"),
        "tool.envship.targets[0].python",
        "such as '3.11'",
    ),
    (
        "python-superscript",
        _set(*T0, "python", value="3.\u00b2"),
        "tool.envship.targets[0].python",
        "such as '3.11'",
    ),
    (
        "glibc-endless",
        _set(*T0, "glibc", value="2.99999999"),
        "tool.envship.targets[0].glibc",
        "such as '2.28'",
    ),
]


@pytest.mark.parametrize(
    ("edit", "where", "says"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
@pytest.mark.parametrize("command", ["fetch", "install", "verify", "index"])
def test_a_malformed_lock_is_bad_input_naming_its_place(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    good: Lock,
    edit: Callable[[Lock], None],
    where: str,
    says: str,
    command: str,
) -> None:
    edit(good)
    path = write(tmp_path / "pylock.toml", good)
    store = ["--store", str(tmp_path / "store")]
    args = {
        "fetch": ["fetch"],
        "install": ["install", str(tmp_path / "env")],
        "verify": ["verify", str(tmp_path)],
        "index": ["index", "export", str(tmp_path / "out")],
    }[command]
    code, doc = run_cli(capsys, *args, "--lock", str(path), *store)
    assert (code, doc["error"]) == (2, "invalid-lock"), doc
    places = [p["where"] for p in doc["problems"]]
    assert places == [f"{path}: {where}"], doc
    assert says in doc["problems"][0]["message"], doc
    assert doc["hint"], doc
    assert not (tmp_path / "env").exists() and not (tmp_path / "out").exists()


# (id, file bytes, place after the path, what the problem says)
NOT_TOML: list[tuple[str, bytes, str, str]] = [
    ("nested", b"x = " + b"[" * 5000 + b"]" * 5000, "", "nested too deeply"),
    ("bom", b"\xef\xbb\xbflock-version = '1.0'\n", ":1:1", "byte-order mark"),
    ("latin-1", b"lock-version = '1.0'\ncreated-by = 'caf\xe9'\n", ":2:18", "0xe9 is not UTF-8"),
    ("cut-short", b"lock-version = '1.0'\npackages = [\n", ":3:1", "end of the file"),
]


@pytest.mark.parametrize(
    ("raw", "where", "says"), [n[1:] for n in NOT_TOML], ids=[n[0] for n in NOT_TOML]
)
def test_a_lock_that_is_not_toml_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes, where: str, says: str
) -> None:
    path = tmp_path / "pylock.toml"
    path.write_bytes(raw)
    code, doc = run_cli(capsys, "fetch", "--lock", str(path), "--store", str(tmp_path / "s"))
    assert (code, doc["error"]) == (2, "invalid-lock"), doc
    assert [p["where"] for p in doc["problems"]] == [f"{path}{where}"], doc
    assert says in doc["problems"][0]["message"] and doc["hint"], doc


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_lock_that_is_no_regular_file_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / "pylock.toml"
    if kind == "fifo":
        os.mkfifo(path)  # a blocking read would wait for a writer for ever
    else:
        path.symlink_to("/dev/zero")  # a plain read never ends
    code, doc = run_cli(capsys, "fetch", "--lock", str(path), "--store", str(tmp_path / "s"))
    assert (code, doc["error"]) == (2, "invalid-lock"), doc
    assert doc["message"] == f"{path} is not a file envship can read"
    assert [p["where"] for p in doc["problems"]] == [str(path)]


def test_a_missing_lock_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pylock.toml"
    code, doc = run_cli(capsys, "fetch", "--lock", str(path), "--store", str(tmp_path / "s"))
    assert (code, doc["error"]) == (2, "invalid-lock") and "does not exist" in doc["message"]
    assert "`envship lock`" in doc["hint"] and "--lock" in doc["hint"]


# -- 2. entries envship cannot install, named at their place ------------------------------

DIRECT = [
    (
        "vcs",
        {"type": "git", "url": "https://example.invalid/a.git", "commit-id": "ab" * 20},
        "a VCS checkout",
    ),
    ("directory", {"path": "./attrs"}, "a local folder"),
    (
        "archive",
        {"url": "https://example.invalid/a.zip", "hashes": {"sha256": "a" * 64}},
        "a direct archive",
    ),
]


@pytest.mark.parametrize(("key", "source", "what"), DIRECT, ids=[d[0] for d in DIRECT])
def test_a_direct_reference_is_bad_input_naming_the_package(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    good: Lock,
    key: str,
    source: dict[str, Any],
    what: str,
) -> None:
    attrs = good["packages"][0]
    for drop in ("version", "wheels", "sdist"):
        attrs.pop(drop)
    attrs[key] = source
    path = write(tmp_path / "pylock.toml", good)
    code, doc = run_cli(capsys, "fetch", "--lock", str(path), "--store", str(tmp_path / "s"))
    assert (code, doc["error"]) == (2, "invalid-lock"), doc
    assert doc["message"] == f"attrs is locked from {what}, which envship cannot install"
    assert [p["where"] for p in doc["problems"]] == [f"{path}: packages[0].{key}"]
    assert "PackageVcs" not in json.dumps(doc) and "envship lock" in doc["hint"]


def test_an_sdist_only_package_names_its_entry(tmp_path: Path, good: Lock) -> None:
    del good["packages"][0]["wheels"]
    lockfile = LockFile.load(write(tmp_path / "pylock.toml", good))
    with pytest.raises(UnsupportedTargetError, match=r"attrs 1\.0 has no wheel") as caught:
        lockfile.artifacts()
    assert [p.where for p in caught.value.problems] == [f"{lockfile.path}: packages[0]"]
    assert "allow-sdist" in caught.value.problems[0].message


# -- 3. a package without `version` (PEP 751 allows it) installs, verifies, exports --------


def test_a_package_without_a_version_takes_it_from_its_file_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], good: Lock, dist: dict[str, Path]
) -> None:
    for package in good["packages"]:
        del package["version"]
    path = write(tmp_path / "pylock.toml", good)
    assert [str(a.version) for a in LockFile.load(path).artifacts()] == ["1.0", "2.0"]
    store = Store(tmp_path / "store")
    for file in dist.values():
        store.add_file(file)
    common = ["--lock", str(path), "--store", str(store.root)]
    env = tmp_path / "env"
    code, first = run_cli(capsys, "install", str(env), *common)
    assert code == 0, first
    assert sorted(first["installed"]) == ["attrs==1.0", "beta==2.0"], first
    code, again = run_cli(capsys, "install", str(env), *common)
    assert (code, again["action"]) == (0, "unchanged"), again  # once rebuilt at every run
    code, checked = run_cli(capsys, "verify", str(env), *common)
    assert (code, checked["differences"]) == (0, []), checked
    out = tmp_path / "index"
    code, exported = run_cli(capsys, "index", "export", str(out), *common)
    assert code == 0, exported  # was InvalidVersion: 'None'
    assert (out / "simple" / "attrs" / "index.json").is_file()
    assert 'version = "1.0"' in (out / "pylock.toml").read_text()


# -- 4. the library takes what a user would pass -------------------------------------------


def test_the_library_takes_a_str_path_and_bare_names(tmp_path: Path, good: Lock) -> None:
    path = write(tmp_path / "pylock.toml", good)
    lockfile = LockFile.load(str(path))
    assert lockfile.path == path
    name = lockfile.targets[0].name
    assert lockfile.artifacts(name) == lockfile.artifacts([name])
    assert lockfile.artifacts(groups="dev") == lockfile.artifacts(groups=["dev"])
    assert lockfile.chosen_groups("dev") == ("dev",)
    with pytest.raises(EnvshipError, match="no target 'linux'"):
        lockfile.artifacts("linux")


# -- 5. a lock this user may not read -------------------------------------------------------

AS_USER = ["setpriv", "--reuid", "1000", "--regid", "100", "--clear-groups"]
SRC = Path(__file__).resolve().parents[1] / "src"
SITE = sysconfig.get_paths()["purelib"]  # envship's dependencies, readable by every user


def as_user(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI as uid 1000 (root ignores file modes), on a Python every user reads."""
    return subprocess.run(
        [*AS_USER, "/usr/bin/python3.11", "-m", "envship", *args],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{SRC}{os.pathsep}{SITE}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def closed_lock(good: Lock) -> Iterator[Path]:
    """A lock in a 0700 folder of root's, inside a world-readable one under /tmp."""
    assert os.getuid() == 0, "these tests drop privileges: they must run as root"
    top = Path(tempfile.mkdtemp(prefix="envship-lock-", dir="/tmp"))
    try:
        top.chmod(0o755)
        (top / "home").mkdir()
        os.chown(top / "home", 1000, 100)
        closed = top / "locks"
        closed.mkdir(mode=0o700)
        yield write(closed / "pylock.toml", good)
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("closed", ["its folder", "the file"])
@pytest.mark.parametrize("command", ["fetch", "install", "verify", "index"])
def test_an_unreadable_lock_is_a_permission_error_naming_the_folder(
    closed_lock: Path, command: str, closed: str
) -> None:
    home = closed_lock.parent.parent / "home"
    if closed == "the file":  # in an open folder: click's "is not readable" (exit 2) said it
        closed_lock.parent.chmod(0o755)
        closed_lock.chmod(0o600)
    args = {
        "fetch": ["fetch"],
        "install": ["install", str(home / "env")],
        "verify": ["verify", str(home)],
        "index": ["index", "export", str(home / "out")],
    }[command]
    args += ["--lock", str(closed_lock), "--store", str(home / "store"), "--json"]
    proc = as_user(home, *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)  # one document
    assert doc["error"] == "permission"
    assert doc["message"].startswith(f"permission denied: the lock {closed_lock} cannot be read")
    assert "uid 1000" in doc["message"]
    refuses = closed_lock.parent if closed == "its folder" else closed_lock
    assert [p["where"] for p in doc["problems"]] == [str(refuses)]
    mode = "0700" if closed == "its folder" else "0600"
    assert f"owned by root (uid 0), mode {mode}" in doc["problems"][0]["message"]
    assert f"chmod a+rX {refuses}" in doc["hint"]


def test_lock_check_of_a_lock_the_user_may_not_read_names_it(closed_lock: Path) -> None:
    """Not click's "is not readable" (a usage error, exit 2): whose file, and the fix."""
    project = closed_lock.parent.parent / "project"
    project.mkdir()
    (project / "envship.toml").write_text('name = "p"\npython = "3.11"\n', encoding="utf-8")
    private = shutil.copy(closed_lock, project / "pylock.toml")
    os.chmod(private, 0o600)
    home = closed_lock.parent.parent / "home"
    proc = as_user(home, "lock", "--check", "--spec", str(project), "-o", str(private), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["error"] == "permission" and doc["message"].startswith(
        f"permission denied: the lock {private} cannot be read"
    )
    assert [p["where"] for p in doc["problems"]] == [str(private)]
    assert "mode 0600" in doc["problems"][0]["message"]


# -- 6. `envship lock` replaces a malformed lock with a note ------------------------------


@pytest.mark.parametrize(
    "edit",
    [m[1] for m in MALFORMED if m[0] in ("envship-string", "targets-int", "allow-sdist-str")],
    ids=["envship-string", "targets-int", "allow-sdist-str"],
)
def test_lock_replaces_a_malformed_previous_lock_with_a_note(
    tmp_path: Path, index_server: IndexServer, good: Lock, edit: Callable[[Lock], None]
) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    edit(good)
    write(tmp_path / "pylock.toml", good)
    result = lock(spec)
    assert [n.split(" (")[0] for n in result.notes] == [
        f"the existing {tmp_path / 'pylock.toml'} could not be read"
    ]
    assert LockFile.load(result.path).spec_digest == spec.digest


def test_lock_replaces_a_too_deeply_nested_previous_lock(
    tmp_path: Path, index_server: IndexServer
) -> None:
    spec = write_spec(tmp_path, index_server.simple_url, dependencies=["alpha"])
    (tmp_path / "pylock.toml").write_bytes(b"x = " + b"[" * 5000 + b"]" * 5000)
    result = lock(spec)
    assert len(result.notes) == 1 and "nested too deeply" in result.notes[0]


# -- 7. random damage to a real lock: a result or an EnvshipError, nothing else -----------

_WORDS = [
    "1.0",
    "2.0",
    "",
    "x",
    "linux-x86_64",
    "linux-aarch64",
    "3.11",
    "2.28",
    "cpu",
    "cuda",
    ">=3.12",
    "'dev' in dependency_groups",
    "extra == 'x'",
    "python_version < '3'",
    "attrs-1.0-py3-none-any.whl",
    "attrs-1.0.tar.gz",
    "beta-2.0-cp311-cp311-win_amd64.whl",
    "https://example.invalid/a.whl",
    "ftp://x/y",
    "../x.whl",
    "a" * 64,
    "dev",
]
_KEYS = [
    "name",
    "version",
    "size",
    "url",
    "path",
    "hashes",
    "sha256",
    "marker",
    "requires-python",
    "wheels",
    "sdist",
    "vcs",
    "directory",
    "archive",
    "targets",
    "python",
    "glibc",
    "platform",
    "variant",
    "allow-sdist",
    "spec-digest",
    "dependency-groups",
    "default-groups",
    "type",
    "commit-id",
    "environments",
    "lock-version",
    "created-by",
    "tool",
    "envship",
]
_SCALARS = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.sampled_from(_WORDS)
    | st.text(max_size=8)
    | st.datetimes()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)


# Values that pass the type checks and probe what lies behind them, per key.
_LIKELY: dict[object, list[Any]] = {
    "marker": ["extra == 'x'", "dependency_groups == 'dev'", "'x' in extras", "os_name ~= 'x'"],
    "environments": [["extra == 'a'"], ["python_version < '3'"], []],
    "python": ["3.99999999", "3.\u00b2", "\uff13.11", "3.12", "3.011", "4.0"],
    "glibc": ["2.99999999", "2.5", "2.\u00b2", "3.1", "2.17"],
    "size": [-1, 0, 1, 2**62],
    "version": ["2.0", "1.0.0", "1!1.0", "not a version", ""],
    "requires-python": [">=3.12", "<3", "===3.11.0", ">=3"],
    "name": ["attrs", "beta", "Attrs", "linux-x86_64", ""],
    "platform": ["linux-aarch64", "windows-x86_64", ""],
    "variant": ["cuda", "rocm", ""],
}


def _value_for(key: object) -> st.SearchStrategy[Any]:
    likely = _LIKELY.get(key)
    return st.sampled_from(likely) | _VALUES if likely else _VALUES


def _places(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at] if at else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _places(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _places(value, (*at, i))
    return found


@st.composite
def _damaged(draw: st.DrawFn, base: Lock) -> Lock:
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        places = _places(data)
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent: Any = data
        for key in place[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[place[-1]]
        elif action == "add" and isinstance(parent[place[-1]], dict):
            key = draw(st.sampled_from(_KEYS))
            parent[place[-1]][key] = draw(_value_for(key))
        else:
            parent[place[-1]] = draw(_value_for(place[-1]))
    return data


def _use(path: Path) -> None:
    """What the commands ask of a lock: load it, and select for every target and group."""
    lockfile = LockFile.load(path)
    lockfile.chosen_groups()
    for t in lockfile.targets:
        lockfile.artifacts(t.name)
        lockfile.artifacts(t.name, groups=())
        lockfile.select(t)
    lockfile.artifacts()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_damage_gives_a_lock_or_an_envship_error(
    tmp_path: Path, good: Lock, data: st.DataObject
) -> None:
    damaged = data.draw(_damaged(good))
    path = tmp_path / "pylock.toml"
    path.write_text(tomli_w.dumps(damaged), encoding="utf-8")
    try:
        _use(path)
    except EnvshipError as exc:
        assert exc.exit_code in (1, 2), exc
        assert exc.problems or exc.hint or "does not exist" in exc.message, exc


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_bytes_in_a_real_lock_give_a_lock_or_an_envship_error(
    tmp_path: Path, good: Lock, data: st.DataObject
) -> None:
    text = tomli_w.dumps(good).encode()
    start = data.draw(st.integers(min_value=0, max_value=len(text)))
    end = data.draw(st.integers(min_value=start, max_value=min(len(text), start + 40)))
    patch = data.draw(st.binary(max_size=12) | st.sampled_from([w.encode() for w in _WORDS]))
    path = tmp_path / "pylock.toml"
    path.write_bytes(text[:start] + patch + text[end:])
    try:
        _use(path)
    except EnvshipError as exc:
        assert exc.exit_code in (1, 2), exc

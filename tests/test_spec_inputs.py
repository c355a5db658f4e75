"""Specs and the files ``envship init`` imports, read without surprises: whatever a folder
holds (a private folder, tables of the wrong type, nesting thousands deep, a FIFO, a link
to /dev/zero, bytes that are not UTF-8, names ending in a newline, a key misspelt), the
answer is an EnvshipError naming the place, never a traceback, a hang or a silent drop.

The permission tests run as root and drop to uid 1000 / gid 100 with ``setpriv`` (root
ignores modes), running the real CLI with /usr/bin/python3.11 in a world-readable folder
under /tmp, as tests/test_unreadable.py does.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import pwd
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from envship._sourcefile import MAX_SOURCE_BYTES
from envship.cli.main import main
from envship.errors import EnvshipError, SpecError
from envship.importers import import_spec, init_spec
from envship.spec import find_spec, load_spec, parse_spec
from userlib import SYSTEM_PY, as_user, world_readable

USER_1000 = f"{pwd.getpwuid(1000).pw_name} (uid 1000)"


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """The real CLI in this process; a copied context keeps --json from leaking."""
    code = contextvars.copy_context().run(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write(folder: Path, files: Mapping[str, str | bytes]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return folder


def wheres(exc: EnvshipError) -> list[str]:
    return [p.where for p in exc.problems]


# --- 1. a folder this user may not read is the permission error ------------------------


@pytest.fixture
def shared() -> Iterator[Path]:
    assert Path(SYSTEM_PY).is_file(), f"{SYSTEM_PY} is needed to run envship as uid 1000"
    with world_readable("envship-spec-") as top:
        yield top


def _project(top: Path) -> Path:
    """top/closed/p with a spec and a requirements.txt, everything root's."""
    project = write(
        top / "closed" / "p", {"envship.toml": 'name = "p"\n', "requirements.txt": "a\n"}
    )
    for path in (top / "closed", project):
        path.chmod(0o755)
    return project


# (what is closed, relative to top; the folder or file the error must name)
CLOSED = [
    ("closed", "closed"),  # a folder above the project: the user cannot enter it
    ("closed/p", "closed/p"),  # the project folder itself
]
COMMANDS = [
    ["lock", "--spec", "closed/p"],
    ["lock", "--spec", "closed/p/envship.toml"],
    ["init", "closed/p"],
    ["init", "closed/p", "--force"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize(("closed", "refuses"), CLOSED)
def test_a_private_folder_is_the_permission_error(
    shared: Path, command: list[str], closed: str, refuses: str
) -> None:
    _project(shared)
    (shared / closed).chmod(0o700)
    proc = as_user(shared, SYSTEM_PY, "-m", "envship", *command, "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["error"] == "permission", doc
    assert "permission denied" in doc["message"] and USER_1000 in doc["message"], doc
    assert [p["where"] for p in doc["problems"]] == [str(shared / refuses)], doc
    assert "owned by root (uid 0), mode 0700" in doc["problems"][0]["message"], doc
    assert f"chmod -R a+rX {shared / refuses}" in doc["hint"], doc


@pytest.mark.parametrize(
    ("files", "private"),
    [
        ({"requirements.txt": "a\n"}, "requirements.txt"),
        ({"requirements.txt": "-r more.txt\n", "more.txt": "a\n"}, "more.txt"),
        ({"environment.yml": "dependencies: []\n"}, "environment.yml"),
        ({"requirements.txt": "a\n", "runtime.txt": "python-3.12\n"}, "runtime.txt"),
    ],
)
def test_init_names_a_source_file_the_user_may_not_read(
    shared: Path, files: dict[str, str], private: str
) -> None:
    project = write(shared / "p", files)
    project.chmod(0o777)  # the user may write the spec: only reading is refused
    for name in files:
        (project / name).chmod(0o600 if name == private else 0o644)
    proc = as_user(shared, SYSTEM_PY, "-m", "envship", "init", "p", "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    assert (proc.returncode, doc["error"]) == (1, "permission"), doc
    assert [p["where"] for p in doc["problems"]] == [str(project / private)], doc
    assert not (project / "envship.toml").exists()


@pytest.mark.parametrize("call", ["load_spec", "find_spec"])
def test_the_library_raises_the_permission_error_too(shared: Path, call: str) -> None:
    _project(shared)
    (shared / "closed").chmod(0o700)
    code = (
        "import envship.spec as s\n"
        "from envship.errors import PermissionDeniedError\n"
        "try:\n"
        f"    s.{call}('closed/p')\n"
        "except PermissionDeniedError as exc:\n"
        "    print(exc.problems[0].where)\n"
    )
    proc = as_user(shared, SYSTEM_PY, "-c", code)
    assert (proc.returncode, proc.stdout.strip()) == (0, str(shared / "closed")), proc.stderr


# --- 2. tables of the wrong type in pyproject.toml -------------------------------------

POETRY_DEPS = '[tool.poetry.dependencies]\na = "^1"\n'
WRONG_TYPES = [
    # (pyproject.toml, where the problem is, for `lock` and for `init`)
    ('tool = "x"\n[project]\ndependencies = ["a"]\n', "tool"),
    ("tool = 5\n", "tool"),
    ('tool = "envship"\n', "tool"),  # `"envship" in tool` was true of a string
    ('project = "x"\n[tool.poetry.dependencies]\na = "1"\n', "project"),
    ("[tool]\npoetry = 5\n", "tool.poetry"),
    (POETRY_DEPS + "[tool.poetry.extras]\nnet = 5\n", "tool.poetry.extras.net"),
    (POETRY_DEPS + "[tool.poetry.extras]\nnet = [5]\n", "tool.poetry.extras.net[0]"),
    ('[tool.poetry]\nextras = 5\ndependencies = {a = "1"}\n', "tool.poetry.extras"),
    ("[tool.poetry]\ngroup = 5\n", "tool.poetry.group"),
    ('[tool.poetry]\ngroup = "dev"\n', "tool.poetry.group"),
    (
        '[tool.poetry]\ndev-dependencies = {pytest = "^8"}\ngroup = {dev = 5}\n',
        "tool.poetry.group.dev",
    ),
    ("[tool.poetry]\ndependencies = {a = {version = 5}}\n", "tool.poetry.dependencies.a.version"),
    ("[tool.poetry]\ndependencies = {a = {markers = 5}}\n", "tool.poetry.dependencies.a.markers"),
    ("[tool.poetry]\ndependencies = {a = {python = [3]}}\n", "tool.poetry.dependencies.a.python"),
    ('[tool.poetry]\ndependencies = {a = {extras = "abc"}}\n', "tool.poetry.dependencies.a.extras"),
    ("[tool.poetry]\ndependencies = {python = 3}\n", "tool.poetry.dependencies.python"),
    (POETRY_DEPS + "[tool.poetry]\nsource = 5\n", "tool.poetry.source"),
    (
        POETRY_DEPS + '[[tool.poetry.source]]\nname = "corp"\nurl = 5\n',
        "tool.poetry.source[0].url",
    ),
    ('[project]\ndependencies = ["a"]\nrequires-python = 3\n', "project.requires-python"),
    (
        "[dependency-groups]\ndev = [{include-group = 5}]\n",
        "dependency-groups.dev[0].include-group",
    ),
]


@pytest.mark.parametrize(("toml", "where"), WRONG_TYPES)
def test_init_names_a_table_of_the_wrong_type(tmp_path: Path, toml: str, where: str) -> None:
    (tmp_path / "pyproject.toml").write_text(toml, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        import_spec(tmp_path)
    assert [p.message.startswith("expected") for p in info.value.problems if p.where.endswith(
        f"pyproject.toml: {where}")] == [True], info.value  # fmt: skip


@pytest.mark.parametrize("spec", ["p1/pyproject.toml", "p1"])
@pytest.mark.parametrize("tool", ['"x"', "5", '"envship"', "[1]"])
def test_lock_names_a_tool_that_is_no_table(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    spec: str,
    tool: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, {"p1/pyproject.toml": f"tool = {tool}\n"})
    code, out, err = run(capsys, "lock", "--spec", spec, "--json")
    doc = json.loads(out)
    assert (code, doc["error"]) == (2, "spec"), (doc, err)
    assert [p["where"] for p in doc["problems"]] == ["p1/pyproject.toml: tool"], doc


def test_tool_envship_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool]\nenvship = 5\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert [(p.where, p.message) for p in info.value.problems] == [
        (f"{tmp_path / 'pyproject.toml'} [tool.envship]", "expected a table, got an integer")
    ]


def test_dev_dependencies_and_the_dev_group_are_one_group(tmp_path: Path) -> None:
    """poetry-core adds dev-dependencies to the "dev" group: both tables count."""
    toml = """
        [tool.poetry.group.dev.dependencies]
        pytest = "^8"
        [tool.poetry.dev-dependencies]
        black = "24.1.0"
    """
    result = import_spec(write(tmp_path, {"pyproject.toml": toml}))
    assert dict(result.spec.groups) == {"dev": ("pytest<9,>=8", "black==24.1.0")}


# --- 3. nesting, FIFOs, devices and sizes ----------------------------------------------


def nested(depth: int, leaf: Any, wrap: Callable[[Any], Any]) -> Any:
    """``leaf`` inside ``depth`` lists or tables, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = wrap(value)
    return value


DEEP_LIST = nested(5000, [], lambda v: [v])
DEEP_TABLE = nested(5000, {}, lambda v: {"a": v})
DEEP_SPECS = [
    ({"name": DEEP_LIST}, "name"),
    ({"python": DEEP_LIST}, "python"),
    ({"dependencies": DEEP_LIST}, "dependencies"),
    ({"groups": {"dev": DEEP_LIST}}, "groups.dev"),
    ({"groups": DEEP_LIST}, "groups"),
    ({"indexes": DEEP_LIST}, "indexes[0]"),
    ({"targets": {"linux-x86_64": {"glibc": DEEP_TABLE}}}, "targets.linux-x86_64.glibc"),
    ({"targets": DEEP_TABLE}, "targets.a"),
    ({"kernel": {"display-name": DEEP_TABLE}}, "kernel.display-name"),
    ({"kernel": DEEP_LIST}, "kernel"),
    ({"image": DEEP_TABLE}, "image.a"),
    ({"allow-sdist": DEEP_LIST}, "allow-sdist"),
]


@pytest.mark.parametrize(("extra", "where"), DEEP_SPECS)
def test_a_spec_nested_thousands_deep_is_a_spec_error(extra: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", **extra}, source="s")
    assert f"s: {where}" in wheres(info.value), info.value


def test_an_environment_yml_nested_thousands_deep_is_a_spec_error(tmp_path: Path) -> None:
    text = "dependencies: " + "[" * 5000 + "]" * 5000 + "\n"
    (tmp_path / "environment.yml").write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        import_spec(tmp_path)
    assert wheres(info.value) == ["environment.yml"]
    assert "nested too deeply" in info.value.problems[0].message


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _huge(path: Path) -> None:
    with path.open("wb") as f:  # sparse: no disk used
        f.truncate(MAX_SOURCE_BYTES + 1)


# What cannot be read whole: a FIFO (the read waited for a writer forever), a link to
# /dev/zero (read until memory ran out), a file over the cap.
SPECIAL = [(_fifo, "a FIFO (named pipe)"), (_zero, "a character device"), (_huge, "larger than")]
# (the files around it, the one made special, where the error is)
PLACES = [
    ({"requirements.txt": "a\n-r other.txt\n"}, "other.txt", "requirements.txt:2"),
    ({}, "requirements.txt", "requirements.txt"),
    ({"environment.yml": "dependencies:\n  - pip:\n    - -r other.txt\n"}, "other.txt",
     "environment.yml: dependencies[0].pip[0]"),
    ({}, "environment.yml", None),
    ({"requirements.txt": "a\n"}, "runtime.txt", None),
    ({}, "pyproject.toml", None),
]  # fmt: skip


@pytest.mark.timeout(60)  # the FIFO used to block for ever: fail rather than hang
@pytest.mark.parametrize(("make", "reason"), SPECIAL, ids=["fifo", "zero", "huge"])
@pytest.mark.parametrize(("files", "special", "where"), PLACES)
def test_a_source_that_is_no_regular_file_is_refused_by_name(
    tmp_path: Path,
    make: Callable[[Path], None],
    reason: str,
    files: dict[str, str],
    special: str,
    where: str | None,
) -> None:
    write(tmp_path, files)
    make(tmp_path / special)
    with pytest.raises(SpecError) as info:
        import_spec(tmp_path)
    text = str(info.value)
    assert special in text and reason in text, text
    if where is not None:  # a link is shown by where it leads (/dev/zero): the end counts
        assert any(w.endswith(where) for w in wheres(info.value)), info.value


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("make", "reason"), SPECIAL, ids=["fifo", "zero", "huge"])
def test_lock_refuses_a_spec_that_is_no_regular_file(
    tmp_path: Path, make: Callable[[Path], None], reason: str
) -> None:
    make(tmp_path / "pyproject.toml")
    for spec in (tmp_path / "pyproject.toml", tmp_path):
        with pytest.raises(SpecError) as info:
            load_spec(spec)
        assert reason in str(info.value), info.value


def test_a_file_included_twice_is_read_once(tmp_path: Path) -> None:
    """Twenty files that each include the next twice were read 2**20 times."""
    files = {f"r{i}.txt": f"p{i}\n-r r{i + 1}.txt\n-r r{i + 1}.txt\n" for i in range(20)}
    files["requirements.txt"] = "-r r0.txt\n"
    files["r20.txt"] = "last\n"
    result = import_spec(write(tmp_path, files))
    assert result.spec.dependencies == (*(f"p{i}" for i in range(20)), "last")


def test_includes_nested_too_deep_are_refused(tmp_path: Path) -> None:
    files = {f"r{i}.txt": f"-r r{i + 1}.txt\n" for i in range(100)}
    files["requirements.txt"] = "-r r0.txt\n"
    files["r100.txt"] = "last\n"
    with pytest.raises(SpecError) as info:
        import_spec(write(tmp_path, files))
    assert [p.message for p in info.value.problems] == ["includes nested more than 64 deep"]


# --- 4. names ending in a newline ------------------------------------------------------

NEWLINES = [
    ({"name": "x\n"}, "name"),
    ({"python": "3.11\n"}, "python"),
    ({"groups": {"dev\n": ["a"]}}, 'groups."dev\\n"'),
    ({"indexes": [{"name": "a\n", "url": "https://h.example/simple"}]}, "indexes[0].name"),
    (
        {"indexes": [{"url": "https://h.example/simple", "username-env": "U\n"}]},
        "indexes[0].username-env",
    ),
    (
        {"indexes": [{"url": "https://h.example/simple", "password-env": "P\n"}]},
        "indexes[0].password-env",
    ),
]


@pytest.mark.parametrize(("extra", "where"), NEWLINES)
def test_a_value_ending_in_a_newline_is_refused(extra: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", **extra}, source="s")
    assert wheres(info.value) == [f"s: {where}"], info.value


def test_a_spec_file_with_a_group_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    (tmp_path / "envship.toml").write_text('name = "x"\n[groups]\n"dev\\n" = ["a"]\n')
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert wheres(info.value) == [f'{tmp_path / "envship.toml"}: groups."dev\\n"']
    assert "'dev'" in info.value.problems[0].message  # the name meant, suggested


@pytest.mark.parametrize(
    ("files", "where"),
    [
        ({"pyproject.toml": '[dependency-groups]\n"dev\\n" = ["a"]\n'}, "dependency-groups.dev"),
        ({"pyproject.toml": '[tool.poetry.group."dev\\n".dependencies]\na = "1"\n'},
         "tool.poetry.group.dev"),
        ({"requirements.txt": "a\n"}, "--name"),
    ],
)  # fmt: skip
def test_init_refuses_names_ending_in_a_newline(
    tmp_path: Path, files: dict[str, str], where: str
) -> None:
    write(tmp_path, files)
    with pytest.raises(SpecError) as info:
        import_spec(tmp_path, name="x\n")
    found = [w.removeprefix("pyproject.toml: ") for w in wheres(info.value)]
    assert any(w.startswith(where) for w in found), info.value


# --- 5. unknown keys in [kernel] and [image] -------------------------------------------

UNKNOWN = [
    ({"kernel": {"display_name": "x"}}, "kernel.display_name", "did you mean 'display-name'?"),
    ({"kernel": {"name": "x"}}, "kernel.name", "keys here: display-name"),
    ({"image": {"bsae": "x"}}, "image.bsae", "envship reads no [image] settings"),
    ({"image": {"base": "oci:x"}}, "image.base", "`envship image build` takes them as options"),
    ({"pyton": "3.11"}, "pyton", "did you mean 'python'?"),
    ({"indexes": [{"url": "https://h.example/s", "usrname-env": "U"}]},
     "indexes[0].usrname-env", "keys here: default, name, password-env, url, username-env"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "where", "message"), UNKNOWN)
def test_unknown_keys_are_errors_that_list_the_known_ones(
    extra: dict[str, Any], where: str, message: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", **extra}, source="s")
    assert [(p.where, message in p.message) for p in info.value.problems] == [
        (f"s: {where}", True)
    ], info.value


# --- 6. --hash and text that is not UTF-8 ----------------------------------------------

SHA = "sha256:" + "0" * 64
HASHED = [
    # (requirements.txt, the spec's dependencies, a note that must be given)
    (f"certifi==2024.2.2 --hash={SHA}\n", ("certifi==2024.2.2",),
     "--hash dropped from 1 pinned requirement(s) (requirements.txt:1)"),
    (f"certifi --hash={SHA}\n", ("certifi",),
     "requirements.txt:1: --hash dropped; it pinned certifi to the artifacts it names, but "
     "the line has no == version, so no pin is kept"),
    (f"certifi>=2024 --hash={SHA} --hash={SHA}\n", ("certifi>=2024",), "'certifi==X.Y'"),
    (f"certifi==2024.* --hash={SHA}\n", ("certifi==2024.*",), "no pin is kept"),
    (f"a==1 --hash={SHA}\nb==2 \\\n  --hash={SHA}\nc===3 --hash={SHA}\nd==4 --hash={SHA}\n",
     ("a==1", "b==2", "c===3", "d==4"),
     "from 4 pinned requirement(s) (requirements.txt:1, requirements.txt:2, "
     "requirements.txt:4 and 1 more)"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "dependencies", "note"), HASHED)
def test_a_dropped_hash_is_said_and_its_pin_kept(
    tmp_path: Path, text: str, dependencies: tuple[str, ...], note: str
) -> None:
    (tmp_path / "requirements.txt").write_text(text, encoding="utf-8")
    result = import_spec(tmp_path)
    assert result.spec.dependencies == dependencies
    assert any(note in n for n in result.notes), result.notes


NOT_UTF8 = [
    # (files, where the bad byte is)
    ({"requirements.txt": b"a\nb\nc\xff\n"}, "requirements.txt:3:2"),
    ({"requirements.txt": b"-r sub/more.txt\n", "sub/more.txt": b"\xfe\n"}, "sub/more.txt:1:1"),
    ({"requirements.txt": b"\xff\xfea\x00\n\x00\x00\xd8\n\x00"}, "requirements.txt:2:1"),
    ({"environment.yml": b"dependencies:\n  - pip:\n    - b\xe9\n"}, "environment.yml:3:8"),
    ({"requirements.txt": b"a\n", "runtime.txt": b"python-3.1\xb2\n"}, "runtime.txt:1:11"),
    ({"pyproject.toml": b'[project]\ndependencies = ["\xff"]\n'}, "pyproject.toml:2:18"),
]


@pytest.mark.parametrize(("files", "where"), NOT_UTF8)
def test_text_that_is_not_utf8_is_named_by_line(
    tmp_path: Path, files: dict[str, bytes], where: str
) -> None:
    write(tmp_path, files)
    with pytest.raises(SpecError) as info:
        import_spec(tmp_path)
    assert any(w.endswith(where) for w in wheres(info.value)), info.value
    assert "position" not in str(info.value)  # the codec's byte offset


def test_a_spec_that_is_not_utf8_is_named_by_line(tmp_path: Path) -> None:
    (tmp_path / "envship.toml").write_bytes(b'name = "x"\ndependencies = ["\xe9"]\n')
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert [(p.where, p.message) for p in info.value.problems] == [
        (
            f"{tmp_path / 'envship.toml'}:2:18",
            "byte 0xe9 is not UTF-8 text (invalid continuation byte)",
        )
    ]


# --- 8. str paths and tables a library caller passes ------------------------------------


def test_str_paths_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {"requirements.txt": "a\n"})
    monkeypatch.chdir(tmp_path)
    assert init_spec(".", name="x")[1] == Path("envship.toml")
    assert import_spec(".", name="x").spec.dependencies == ("a",)
    assert find_spec(".") == Path("envship.toml")
    assert load_spec(".").name == "x"


@pytest.mark.parametrize(
    ("data", "where", "message"),
    [
        (None, "s", "expected a table, got nothing"),
        ([], "s", "expected a table, got an array"),
        ("name", "s", "expected a table, got a string"),
        ({"name": "x", "groups": {1: ["a"]}}, "s: groups.1", "expected a string as the group name"),
        ({"name": "x", 1: "a"}, "s: 1", "expected a string key, got an integer"),
        ({"name": "x", "targets": {"linux-x86_64": {None: "a"}}},
         "s: targets.linux-x86_64.None", "expected a string key, got nothing"),
        ({"name": "x", "kernel": {2.5: "a"}}, "s: kernel.2.5", "expected a string key"),
        ({"name": 5}, "s: name", "invalid name an integer"),
    ],
)  # fmt: skip
def test_a_library_callers_table_is_a_spec_error(data: Any, where: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="s")
    assert any(p.where == where and message in p.message for p in info.value.problems), info.value


# --- properties ------------------------------------------------------------------------

_KEYS = st.one_of(
    st.sampled_from(
        ["name", "python", "dependencies", "groups", "indexes", "targets", "kernel", "image",
         "allow-sdist", "display-name", "url", "glibc", "platform", "variant", "dev", "a\n"]
    ),
    st.text(max_size=5),
    st.integers(),
    st.none(),
)  # fmt: skip
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from(["3.11", "3.11\n", "linux-x86_64", "2.28", "numpy>=2", "https://h/s"]),
)  # fmt: skip
_ANY = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_ANY, st.dictionaries(_KEYS, _ANY, max_size=8)))
def test_any_table_parses_or_is_a_spec_error(data: Any) -> None:
    with contextlib.suppress(SpecError):  # anything else fails the test
        parse_spec(data, source="fuzz")


_PYPROJECT_KEYS = st.sampled_from(
    ["tool", "poetry", "project", "dependencies", "optional-dependencies", "dependency-groups",
     "group", "extras", "dev-dependencies", "source", "name", "version", "markers", "python",
     "platform", "optional", "allow-prereleases", "include-group", "url", "priority",
     "default", "requires-python", "dynamic", "envship", "dev", "a"]
)  # fmt: skip
_TOML_LEAVES = st.one_of(
    st.booleans(), st.integers(), st.text(max_size=12),
    st.sampled_from(["^1.2", "~1", "*", "a>=1", "a[x]", "3.11", ">=3.9", "https://h/s",
                     "a ; extra == 'x'"]),
)  # fmt: skip
_TOML = st.recursive(
    _TOML_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_PYPROJECT_KEYS, inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_PYPROJECT_KEYS, _TOML, max_size=5))
def test_any_pyproject_imports_or_is_an_envship_error(data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "pyproject.toml").write_text(tomli_w.dumps(data), encoding="utf-8")
        with contextlib.suppress(EnvshipError):  # anything else fails the test
            import_spec(folder)
        with contextlib.suppress(EnvshipError):
            load_spec(folder)


_REQ_LINES = st.lists(
    st.one_of(
        st.sampled_from(
            ["a==1", "b>=2", "c", "-r other.txt", "-c other.txt", "--hash=sha256:00",
             "x==1 --hash=sha256:00", "y --hash=sha256:00", "-i https://h/s", "z===1",
             "\udcff", "\\", "# c", "--hash", "w==1.* --hash=sha256:0", "-r missing.txt"]
        ),
        st.text(max_size=10),
    ),
    max_size=8,
).map("\n".join)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(_REQ_LINES, _REQ_LINES)
def test_any_requirements_import_or_are_an_envship_error(top: str, other: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for name, text in (("requirements.txt", top), ("other.txt", other)):
            (Path(folder) / name).write_bytes(text.encode("utf-8", "surrogateescape"))
        with contextlib.suppress(EnvshipError):
            import_spec(folder)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_ANY, st.dictionaries(_KEYS, _ANY, max_size=4)))
def test_any_environment_yml_imports_or_is_an_envship_error(data: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        text = yaml.safe_dump({"dependencies": data} if isinstance(data, list) else data)
        (Path(folder) / "environment.yml").write_text(text, encoding="utf-8")
        with contextlib.suppress(EnvshipError):
            import_spec(folder)

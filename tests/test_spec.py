from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

from envship.errors import SpecError
from envship.spec import add_requirements, find_spec, load_spec, parse_spec

FULL = """
name = "ds"
python = ["3.11", "3.12"]
dependencies = ["numpy>=2", "pandas ; python_version >= '3.11'"]
allow-sdist = false

[groups]
dev = ["pytest"]

[[indexes]]
name = "internal"
url = "https://packages.example/simple"
default = true
username-env = "IDX_USER"
password-env = "IDX_TOKEN"

[targets.linux-x86_64]
glibc = "2.28"

[targets.gpu]
platform = "linux-x86_64"
variant = "cuda"
python = "3.11"

[kernel]
display-name = "Python (ds)"

[image]
"""


def test_full_spec_round_trips(tmp_path: Path) -> None:
    (tmp_path / "envship.toml").write_text(FULL)
    spec = load_spec(tmp_path)
    assert spec.name == "ds"
    assert [t.name for t in spec.targets] == [
        "linux-x86_64-py3.11",
        "linux-x86_64-py3.12",
        "gpu",
    ]
    assert spec.target("gpu").variant == "cuda"
    assert spec.indexes[0].password_env == "IDX_TOKEN"
    assert spec.display_name == "Python (ds)"
    assert spec.image == {}  # reserved: a key in it is an error (nothing reads one yet)
    again = tmp_path / "again"
    again.mkdir()
    (again / "envship.toml").write_text(spec.to_toml())
    reloaded = load_spec(again)
    assert reloaded.digest == spec.digest
    assert reloaded.targets == spec.targets


def test_pyproject_tool_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.envship]\nname = "x"\ndependencies = ["rich"]\n'
    )
    assert find_spec(tmp_path).name == "pyproject.toml"
    spec = load_spec(tmp_path)
    assert spec.dependencies == ("rich",)
    assert [t.name for t in spec.targets] == ["linux-x86_64"]


def test_digest_ignores_presentation_only_fields() -> None:
    base = {"name": "a", "dependencies": ["rich"]}
    a = parse_spec(base, source="a")
    b = parse_spec({**base, "kernel": {"display-name": "other"}}, source="b")
    c = parse_spec({**base, "dependencies": ["rich>=13"]}, source="c")
    assert a.digest == b.digest != c.digest


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"dependencies": ["rich"]}, "name"),
        ({"name": "x", "dependencies": ["not a req!"]}, "dependencies[0]"),
        ({"name": "x", "dependencies": "rich"}, "dependencies"),
        ({"name": "x", "python": "3"}, "python"),
        ({"name": "x", "typo": 1}, "typo"),
        ({"name": "x", "groups": {"Dev_Tools": ["x"]}}, "groups.Dev_Tools"),
        ({"name": "x", "indexes": [{"url": "ftp://h/simple"}]}, "indexes[0].url"),
        (
            {"name": "x", "indexes": [{"url": "https://u:secret@h/simple"}]},
            "indexes[0].url",
        ),
        ({"name": "x", "targets": {"linux-sparc": {}}}, "targets.linux-sparc"),
        ({"name": "x", "targets": {"linux-x86_64": {"glibc": 2.28}}}, "targets.linux-x86_64.glibc"),
        ({"name": "x", "targets": {"linux-x86_64": {"gpu": True}}}, "targets.linux-x86_64.gpu"),
        ({"name": "x", "allow-sdist": "yes"}, "allow-sdist"),
        ({"name": "x", "kernel": {"display-name": 1}}, "kernel.display-name"),
    ],
)
def test_invalid_spec_names_key(data: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="envship.toml")
    assert any(p.where == f"envship.toml: {where}" for p in info.value.problems), info.value
    assert "secret" not in str(info.value) or where != "indexes[0].url"


# Each of these reached uv and failed there with exit 1 ("Supported environments must be
# disjoint", "duplicate index name", a direct URL fetched outside every index, a URL with
# blanks percent-encoded into a path no server has); the spec must refuse them, exit 2.
INDEX = {"name": "corp", "url": "https://packages.example/simple"}
UNSAFE_SPECS = [
    pytest.param({"python": ["3.11", "3.11"]}, "python", "listed more than once: 3.11",
                 id="python-twice"),
    pytest.param({"python": ["3.9", "3.09"]}, "python", "expected a version", id="python-3.09"),
    pytest.param(
        {"targets": {"linux-x86_64": {"glibc": "2.17"}, "x": {"platform": "linux-x86_64"}}},
        "targets.x", "same platform (linux-x86_64), Python (3.11) and variant (cpu) as "
        "targets.linux-x86_64", id="same-target-other-glibc",
    ),
    pytest.param(
        {"targets": {"a": {"platform": "linux-aarch64"}, "b": {"platform": "linux-aarch64"}}},
        "targets.b", "as targets.a", id="same-target-twice",
    ),
    pytest.param(
        {
            "python": ["3.11", "3.12"],
            "targets": {
                "linux-x86_64": {},
                "linux-x86_64-py3.11": {"platform": "linux-aarch64", "python": "3.11"},
            },
        },
        "targets.linux-x86_64-py3.11", "'linux-x86_64-py3.11' is also made by "
        "targets.linux-x86_64", id="target-name-made-twice",
    ),
    pytest.param({"indexes": [INDEX, INDEX]}, "indexes[1].name", "also the name of indexes[0]",
                 id="index-name-twice"),
    pytest.param(
        {"indexes": [INDEX, {**INDEX, "name": "CORP"}]}, "indexes[1].name",
        "uv reads UV_INDEX_CORP_* for both", id="index-names-equal-but-case",
    ),
    pytest.param(
        {"indexes": [{"url": "https://h.example/a"}, {"url": "https://h.example/b"}]},
        "indexes[1].name", "set a name", id="index-names-from-one-host",
    ),
    pytest.param({"indexes": [{**INDEX, "name": "my index!"}]}, "indexes[0].name",
                 "letters, digits", id="index-name-uv-refuses"),
    pytest.param(
        {"indexes": [{**INDEX, "url": "https://a.org/simple --extra-index-url https://b.org/"}]},
        "indexes[0].url", "whitespace", id="index-url-two-urls",
    ),
    pytest.param({"indexes": [{**INDEX, "url": "https://a.org/sim\tple"}]}, "indexes[0].url",
                 "whitespace or control characters", id="index-url-tab"),
    pytest.param({"indexes": [{**INDEX, "url": "http://[::1/simple"}]}, "indexes[0].url",
                 "invalid URL", id="index-url-unparseable"),
    pytest.param({"indexes": [{**INDEX, "password-env": "MY TOKEN"}]},
                 "indexes[0].password-env", "environment variable name", id="index-env-name"),
    pytest.param(
        {"dependencies": ["alpha @ https://host.example/alpha-1.0-py3-none-any.whl"]},
        "dependencies[0]", "direct reference 'https://host.example/alpha-1.0-py3-none-any.whl'"
        " is not supported: envship locks from package indexes only", id="direct-reference",
    ),
    pytest.param(
        {"groups": {"dev": ["pytest", "beta @ file:///wheels/beta-1.0-py3-none-any.whl"]}},
        "groups.dev[1]", "direct reference", id="direct-reference-in-group",
    ),
    pytest.param({"name": "bad name!"}, "name", "invalid name 'bad name!'", id="bad-name"),
    # packaging accepts "===" with no version (or one that is not PEP 440); uv failed the
    # lock on it with only "Failed to build envship-lock" and exit 1.
    pytest.param({"dependencies": ["foo==="]}, "dependencies[0]",
                 "'foo===': '===' has no version after it; write one (e.g. 'foo==1.0')",
                 id="arbitrary-equality-empty"),
    pytest.param({"dependencies": ["six", "foo===,>=1"]}, "dependencies[1]",
                 "'===' has no version after it", id="arbitrary-equality-empty-and-more"),
    pytest.param({"groups": {"dev": ["foo===*"]}}, "groups.dev[0]",
                 "'===*' is not a PEP 440 version, which uv (envship's resolver) requires",
                 id="arbitrary-equality-not-pep440"),
    # PEP 508's `extra` is set only for a package's own dependencies: never in a spec, so
    # uv skipped the requirement without a word.
    pytest.param({"dependencies": ["six", 'gpu-lib; extra == "gpu"']}, "dependencies[1]",
                 "its marker tests 'extra', which only a package's own metadata sets",
                 id="extra-marker"),
    pytest.param({"groups": {"dev": ['a; python_version > "3" and "x" == extra']}},
                 "groups.dev[0]", "its marker tests 'extra'", id="extra-marker-reversed"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "where", "message"), UNSAFE_SPECS)
def test_specs_uv_would_refuse_are_refused_naming_the_key(
    tmp_path: Path, extra: dict[str, Any], where: str, message: str
) -> None:
    path = tmp_path / "envship.toml"
    path.write_text(tomli_w.dumps({"name": "x", "dependencies": ["alpha"], **extra}))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.exit_code == 2
    found = [(p.where, p.message) for p in info.value.problems]
    assert [w for w, _ in found] == [f"{path}: {where}"], found
    assert message in found[0][1]


@pytest.mark.parametrize("operator", ["===", "==", "!=", "<=", ">=", "<", ">", "~="])
@pytest.mark.parametrize("form", ["foo{}", "foo ({})", "foo{} ; python_version > '3'"])
def test_no_operator_without_a_version_passes(operator: str, form: str) -> None:
    text = form.format(operator)
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", "dependencies": [text]}, source="envship.toml")
    assert [p.where for p in info.value.problems] == ["envship.toml: dependencies[0]"]
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "requirement", ['a; sys_platform == "extra"', 'a; platform_release != "extras"']
)
def test_the_word_extra_as_a_marker_value_is_kept(requirement: str) -> None:
    spec = parse_spec({"name": "x", "dependencies": [requirement]}, source="s")
    assert len(spec.dependencies) == 1


@pytest.mark.parametrize("requirement", ["foo===1.0", "foo===1.0+local", "foo===2!1.0"])
def test_arbitrary_equality_with_a_version_is_kept(requirement: str) -> None:
    spec = parse_spec({"name": "x", "dependencies": [requirement]}, source="s")
    assert spec.dependencies == (requirement,)


# Every problem of a spec is reported at once, each with its key (packaging's rule):
# a type error in one key of a target does not hide what is wrong with the others.
ALL_PROBLEMS = [
    pytest.param(
        {"targets": {"linux-x86_64": {"glibc": 2.28, "variant": "rocm"}}},
        [("targets.linux-x86_64.glibc",
          'expected a string in quotes (glibc = "..."), not the number 2.28'),
         ("targets.linux-x86_64.variant", "unknown variant 'rocm'; known: cpu, cuda")],
        id="glibc-float-and-variant",
    ),
    pytest.param(
        {"targets": {"x": {"python": 3.12, "platform": "linux-sparc", "glibc": "2.x"}}},
        [("targets.x.python", "expected a string"),
         ("targets.x", "unknown platform 'linux-sparc'"),
         ("targets.x.glibc", "expected 2 dot-separated numbers, got '2.x'")],
        id="python-float-platform-and-glibc",
    ),
    pytest.param(
        {"targets": {"linux-aarch64": {"glibc": "2.12", "variant": "rocm"}}},
        [("targets.linux-aarch64.glibc", "glibc 2.12 is below the oldest manylinux level "
          "for aarch64 (2.17)"),
         ("targets.linux-aarch64.variant", "unknown variant 'rocm'")],
        id="glibc-too-old-and-variant",
    ),
    pytest.param(
        {"targets": {"linux-x86_64": {"glibc": "99.99"}}},
        [("targets.linux-x86_64.glibc", "glibc 99.99 is not a glibc 2.x version: manylinux "
          "levels are 2.X (PEP 600), e.g. 2.28")],
        id="glibc-not-2.x",
    ),
    pytest.param(
        {"python": ["3.11", "3.12"], "targets": {"x": {"platform": "beos", "variant": "tpu"}}},
        [("targets.x", "unknown platform 'beos'"), ("targets.x.variant", "unknown variant")],
        id="each-problem-once-for-several-pythons",
    ),
    pytest.param(
        {"targets": {"linux-x86_64": {}, "x": {"platform": "linux-x86_64", "glibc": 2}}},
        [("targets.x.glibc", "expected a string")],
        id="a-target-with-a-bad-key-clashes-with-no-other",
    ),
    pytest.param(
        {"groups": {"Bad Name": ["six"], "Dev_Tools": ["six"], "!!": ["six"]}},
        [("groups.Bad Name", "invalid group name 'Bad Name': expected a normalized PEP 735 "
          "name (lowercase letters, digits and '-'): 'bad-name'"),
         ("groups.Dev_Tools", "group names must be normalized (PEP 503): 'dev-tools'"),
         ("groups.!!", "invalid group name '!!'")],
        id="group-names-with-their-normalized-form",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), ALL_PROBLEMS)
def test_every_problem_is_reported_with_its_key(
    data: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", **data}, source="envship.toml")
    found = [(p.where, p.message) for p in info.value.problems]
    assert [w for w, _ in found] == [f"envship.toml: {w}" for w, _ in expected], found
    for (_, message), (_, want) in zip(found, expected, strict=True):
        assert want in message


def test_targets_that_differ_in_variant_are_distinct(tmp_path: Path) -> None:
    path = tmp_path / "envship.toml"
    path.write_text(
        'name = "x"\n[targets.linux-x86_64]\n'
        '[targets.gpu]\nplatform = "linux-x86_64"\nvariant = "cuda"\n'
    )
    spec = load_spec(path)
    assert [(t.name, t.variant) for t in spec.targets] == [
        ("linux-x86_64", "cpu"),
        ("gpu", "cuda"),
    ]


def test_every_unsafe_input_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "envship.toml"
    data = {
        "name": "x",
        "python": ["3.11", "3.11"],
        "dependencies": ["alpha @ https://host.example/alpha-1.0-py3-none-any.whl"],
        "indexes": [INDEX, {**INDEX, "url": "https://a.org/simple -i https://b.org/"}],
        "targets": {"linux-x86_64": {"glibc": "2.17"}, "x": {"platform": "linux-x86_64"}},
    }
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert sorted(p.where.removeprefix(f"{path}: ") for p in info.value.problems) == [
        "dependencies[0]",
        "indexes[1].name",
        "indexes[1].url",
        "python",
        "targets.x",
    ]


@pytest.mark.parametrize("filename", ["envship.toml", "pyproject.toml"])
def test_a_byte_order_mark_is_named(tmp_path: Path, filename: str) -> None:
    # TOML has no byte-order mark; tomllib says only "Invalid statement (at line 1,
    # column 1)", which does not tell anyone what to fix.
    text = '[tool.envship]\nname = "x"\n' if filename == "pyproject.toml" else 'name = "x"\n'
    path = tmp_path / filename
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert [p.where for p in info.value.problems] == [f"{path}:1:1"]
    assert "byte-order mark" in info.value.problems[0].message
    assert info.value.hint is not None and "without a byte-order mark" in info.value.hint


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"dependencies": ["!!"], "python": 3, "bogus": 1}, source="s")
    assert len(info.value.problems) == 4


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    (tmp_path / "envship.toml").write_text('name = "x"\ndependencies = [\n"rich",,\n]\n')
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert f"{tmp_path / 'envship.toml'}:3" in str(info.value)


def test_missing_spec_has_hint(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert info.value.hint and "envship init" in info.value.hint


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "name",
                "python",
                "dependencies",
                "groups",
                "indexes",
                "targets",
                "kernel",
                "allow-sdist",
                "image",
                "other",
            ]
        ),
        toml_values,
    )
)
def test_parse_spec_never_crashes(data: dict[str, Any]) -> None:
    """Whatever the table holds, the result is a Spec or a SpecError, never a crash."""
    try:
        spec = parse_spec(data, source="fuzz")
    except SpecError as exc:
        assert exc.problems
    else:
        assert spec.targets
        assert spec.to_toml()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_load_spec_text_never_crashes(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "envship.toml"
        path.write_text(text, encoding="utf-8")
        with contextlib.suppress(SpecError):
            load_spec(path)


def test_written_spec_is_valid_toml() -> None:
    spec = parse_spec({"name": "x", "dependencies": ["a>=1"]}, source="s")
    assert tomli_w.dumps(spec.to_dict()) == spec.to_toml()


# --- add_requirements: the edit `envship add` records -------------------------------------

COMMENTED = """\
# the team's environment
name = "x"
dependencies = [
    "alpha",  # what the notebooks import
    "beta<2",  # 2 changed the API
]
"""

PYPROJECT = """\
[project]
name = "x"
dependencies = ["requests"]  # not envship's

[tool.envship]
name = "x"
dependencies = ["alpha"]

[tool.ruff]
line-length = 100
"""


@pytest.mark.parametrize(
    ("filename", "before", "requirements", "after", "written"),
    [
        pytest.param(
            "envship.toml",
            COMMENTED,
            ["gamma>=1"],
            COMMENTED.replace("API\n]", 'API\n    "gamma>=1",\n]'),
            ("gamma>=1",),
            id="appended, comments kept",
        ),
        pytest.param(
            "envship.toml",
            COMMENTED,
            ["Beta>=2"],
            COMMENTED.replace('"beta<2"', '"Beta>=2"'),
            ("Beta>=2",),
            id="a listed name replaced in place",
        ),
        pytest.param(
            "envship.toml",
            COMMENTED,
            ["beta<2", "alpha"],
            COMMENTED,
            (),
            id="already there: nothing written",
        ),
        pytest.param(
            "envship.toml",
            'name = "x"\n\n[groups]\ndev = ["pytest"]\n',
            ["gamma[cli]>=1; python_version >= '3.9'"],
            'name = "x"\ndependencies = ["gamma[cli]>=1; python_version >= \\"3.9\\""]\n\n'
            '[groups]\ndev = ["pytest"]\n',
            ('gamma[cli]>=1; python_version >= "3.9"',),
            id="no dependencies yet",
        ),
        pytest.param(
            "pyproject.toml",
            PYPROJECT,
            ["gamma"],
            PYPROJECT.replace('dependencies = ["alpha"]', 'dependencies = ["alpha", "gamma"]'),
            ("gamma",),
            id="pyproject: only [tool.envship]",
        ),
    ],
)
def test_add_requirements_edits_only_the_dependencies(
    tmp_path: Path,
    filename: str,
    before: str,
    requirements: list[str],
    after: str,
    written: tuple[str, ...],
) -> None:
    path = tmp_path / filename
    path.write_text(before)
    reqs = [Requirement(r) for r in requirements]

    assert add_requirements(path, reqs, write=False) == written
    assert path.read_text() == before
    inode = path.stat().st_ino

    assert add_requirements(path, reqs) == written
    assert path.read_text() == after
    assert (path.stat().st_ino == inode) == (not written)  # unchanged: not even rewritten
    assert add_requirements(path, reqs) == ()
    load_spec(path)


def test_add_requirements_replaces_the_file_in_one_rename(tmp_path: Path) -> None:
    path = tmp_path / "envship.toml"
    path.write_text(COMMENTED)
    path.chmod(0o640)
    link = tmp_path / "before.toml"
    os.link(path, link)  # an in-place rewrite would show through this link

    add_requirements(path, [Requirement("gamma")])

    assert link.read_text() == COMMENTED
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before.toml", "envship.toml"]


def test_add_requirements_through_a_symlinked_spec_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "shared" / "envship.toml"
    real.parent.mkdir()
    real.write_text(COMMENTED)
    path = tmp_path / "envship.toml"
    path.symlink_to(Path("shared") / "envship.toml")

    add_requirements(path, [Requirement("gamma")])

    assert path.is_symlink() and os.readlink(path) == str(Path("shared") / "envship.toml")
    assert '"gamma"' in real.read_text()


@pytest.mark.parametrize(
    ("before", "message"),
    [
        ('name = "x"\ndependencies = "alpha"\n', "dependencies is not an array"),
        ('dependencies = ["alpha"]  # no name\n', "name"),
    ],
    ids=["not-an-array", "invalid-after-the-edit"],
)
def test_add_requirements_refuses_an_edit_that_is_not_a_valid_spec(
    tmp_path: Path, before: str, message: str
) -> None:
    path = tmp_path / "envship.toml"
    path.write_text(before)
    with pytest.raises(SpecError) as info:
        add_requirements(path, [Requirement("gamma")])
    assert message in str(info.value) + "".join(p.where for p in info.value.problems)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["envship.toml"]

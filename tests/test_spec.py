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
base = "oci:base"
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
    assert spec.image == {"base": "oci:base"}
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

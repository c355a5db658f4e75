"""``envship init``'s importers: every source, every translation, every failure mode."""

from __future__ import annotations

import contextlib
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from envship._requirements import parse_requirements
from envship.errors import SpecError
from envship.importers import (
    ImportResult,
    conda_python,
    import_spec,
    init_spec,
    lowest_python,
    poetry_constraint,
    write_spec,
)
from envship.spec import load_spec


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return folder


def imported(tmp_path: Path, files: dict[str, str]) -> ImportResult:
    return import_spec(write(tmp_path, files))


def failure(tmp_path: Path, files: dict[str, str]) -> SpecError:
    with pytest.raises(SpecError) as info:
        import_spec(write(tmp_path, files))
    return info.value


def wheres(exc: SpecError) -> list[str]:
    return [p.where for p in exc.problems]


# --- translation tables ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("poetry", "pep440"),
    [
        ("^1.2.3", ">=1.2.3,<2.0.0"),
        ("^1.2", ">=1.2,<2.0"),
        ("^1", ">=1,<2"),
        ("^0.2.3", ">=0.2.3,<0.3.0"),
        ("^0.0.3", ">=0.0.3,<0.0.4"),
        ("^0.0", ">=0.0,<0.1"),
        ("^0", ">=0,<1"),
        ("~1.2.3", ">=1.2.3,<1.3.0"),
        ("~1.2", ">=1.2,<1.3"),
        ("~1", ">=1,<2"),
        ("*", ""),
        ("1.2.3", "==1.2.3"),
        ("=1.2.3", "==1.2.3"),
        ("1.2.*", "==1.2.*"),
        (">=1.2,<1.5", ">=1.2,<1.5"),
        (">= 1.2, < 1.5", ">=1.2,<1.5"),
        (">=1.2 <1.5", ">=1.2,<1.5"),
        ("~=1.4", "~=1.4"),
        ("!=1.3", "!=1.3"),
        ("^2.0,!=2.1.0", ">=2.0,<3.0,!=2.1.0"),
        # Pre-releases: the bound comes from the release (poetry-core's next_breaking and
        # next_minor start from Version.stable); the lower bound keeps the pre-release.
        ("^1.2.3rc1", ">=1.2.3rc1,<2.0.0"),
        ("^0.2.3b1", ">=0.2.3b1,<0.3.0"),
        ("^0.0.3a1", ">=0.0.3a1,<0.0.4"),
        ("^1.0.dev0", ">=1.0.dev0,<2.0"),
        ("^1.2.3.post1", ">=1.2.3.post1,<2.0.0"),
        ("~1.2.3rc1", ">=1.2.3rc1,<1.3.0"),
        ("~2a1", ">=2a1,<3"),
        ("^1.2.3-rc.1", ">=1.2.3rc1,<2.0.0"),  # SemVer spelling, normalized
        ("^v1.2", ">=1.2,<2.0"),
    ],
)
def test_poetry_constraint(poetry: str, pep440: str) -> None:
    assert poetry_constraint(poetry) == pep440


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("^1.x", "expected a version such as 1.2.3"),
        ("~abc", "expected a version such as 1.2.3"),
        ("^1.2+local", "expected a version such as 1.2.3"),
        ("1.2 || 1.4", "'||' (or)"),
        (">=>1", "not a version constraint Poetry accepts"),
        ("^", "'^': expected a version after the operator"),
        ("~", "'~': expected a version after the operator"),
        (">=", "'>=': expected a version after the operator"),
        ("1.0, ~", "'~': expected a version after the operator"),
    ],
)
def test_poetry_constraint_rejects(bad: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        poetry_constraint(bad)
    assert message in str(info.value)
    assert "Invalid specifier" not in str(info.value)  # packaging's words, not the user's


@pytest.mark.parametrize(
    ("conda", "python"),
    [
        ("=3.11", "3.11"),
        ("==3.11.*", "3.11"),
        (">=3.11", "3.11"),
        ("3.10", "3.10"),
        ("=3.11.4", "3.11"),
        ("3.12.*", "3.12"),
        (">=3.8,<3.12", "3.9"),
        ("=3.10=h12345_0", "3.10"),
        ("3.12 *_cpython", "3.12"),
        ("3.12|3.10", "3.10"),
        (">= 3.13", "3.13"),
        ("", None),
    ],
)
def test_conda_python(conda: str, python: str | None) -> None:
    assert conda_python(conda) == python


@pytest.mark.parametrize("bad", ["=2.7", ">=4", "=3.x!", "=3", "3", "3.*", "==3.*", "3|3.10"])
def test_conda_python_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        conda_python(bad)


@pytest.mark.parametrize(
    ("requires", "python"),
    [
        (">=3.8", "3.9"),
        (">=3.10", "3.10"),
        (">=3.10.4", "3.10"),
        ("~=3.12", "3.12"),
        (">=3.9,!=3.9.*,<4", "3.10"),
        ("==3.14.*", "3.14"),
        ("<3.9", None),
        (">=3.15", None),
    ],
)
def test_lowest_python(requires: str, python: str | None) -> None:
    assert lowest_python(SpecifierSet(requires)) == python


# --- requirements.txt -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("numpy", "numpy"),
        ("numpy>=1.20,<2  # pinned for abi", "numpy<2,>=1.20"),
        ("requests[socks] == 2.31.0", "requests[socks]==2.31.0"),
        ('pandas; python_version < "3.12"', 'pandas; python_version < "3.12"'),
        ("torch==2.3.0 --hash=sha256:aaaa --hash=sha256:bbbb", "torch==2.3.0"),
        ("Django>=4 ; sys_platform == 'linux'", 'Django>=4; sys_platform == "linux"'),
    ],
)
def test_requirement_lines(tmp_path: Path, line: str, expected: str) -> None:
    result = imported(tmp_path, {"requirements.txt": f"# header\n\n{line}\n"})
    assert result.spec.dependencies == (expected,)


def test_requirements_continuations_includes_and_comments(tmp_path: Path) -> None:
    result = imported(
        tmp_path,
        {
            "requirements.txt": """
                numpy>=1.20 \\
                    ,<2
                pandas \\
                    --hash=sha256:abc  # comment after a continuation
                -r sub/more.txt
                --requirement=sub/other.txt
                scipy #c
            """,
            "sub/more.txt": "-r other.txt\n",  # relative to sub/, not to the top file
            "sub/other.txt": "rich\n",
        },
    )
    # sub/other.txt is named twice and read once: the second read added "rich" again.
    assert result.spec.dependencies == ("numpy<2,>=1.20", "pandas", "rich", "scipy")
    assert [p.relative_to(tmp_path).as_posix() for p in result.sources] == [
        "requirements.txt",
        "sub/more.txt",
        "sub/other.txt",
    ]


def test_requirements_every_problem_with_file_and_line(tmp_path: Path) -> None:
    exc = failure(
        tmp_path,
        {
            "requirements.txt": """
                ok-package
                -e .
                ./local/pkg
                https://example.com/x-1.0-py3-none-any.whl
                name @ https://example.com/name.tar.gz
                -f https://example.com/wheels
                not a requirement!!
                --no-index
                --bogus-option
                -r missing.txt
                thing==1.0 --config-settings=x
                -r
            """
        },
    )
    assert wheres(exc) == [f"requirements.txt:{n}" for n in range(2, 13)]
    assert "editable" in exc.problems[0].message
    assert "URL or local path" in exc.problems[1].message
    assert "URL or local path" in exc.problems[2].message
    assert "direct reference" in exc.problems[3].message
    assert exc.hint is not None


def test_requirements_include_cycle(tmp_path: Path) -> None:
    exc = failure(tmp_path, {"requirements.txt": "a\n-r b.txt\n", "b.txt": "-r requirements.txt"})
    assert wheres(exc) == ["b.txt:1"]
    assert "requirements.txt -> b.txt -> requirements.txt" in exc.problems[0].message


def test_constraints_merge_only_into_requirements(tmp_path: Path) -> None:
    result = imported(
        tmp_path,
        {
            "requirements.txt": "requests>=2\nnumpy\n-c constraints.txt\n",
            "constraints.txt": "requests<3\nurllib3<2\nnumpy==1.26.4\n",
        },
    )
    assert result.spec.dependencies == ("requests<3,>=2", "numpy==1.26.4")
    assert any("applied to: numpy, requests" in n for n in result.notes)
    assert any("dropped" in n and "urllib3" in n for n in result.notes)


def test_index_urls_and_credentials(tmp_path: Path) -> None:
    result = imported(
        tmp_path,
        {
            "requirements.txt": """
                --index-url https://alice:s3cret@pypi.corp.example/simple
                --extra-index-url https://${TOKEN_USER}:${TOKEN}@extra.example:8443/simple
                numpy
            """
        },
    )
    default, extra = result.spec.indexes
    assert (default.name, default.url, default.default) == (
        "pypi-corp-example",
        "https://pypi.corp.example/simple",
        True,
    )
    assert (default.username_env, default.password_env) == (
        "PYPI_CORP_EXAMPLE_USERNAME",
        "PYPI_CORP_EXAMPLE_PASSWORD",
    )
    assert (extra.url, extra.default, extra.username_env, extra.password_env) == (
        "https://extra.example:8443/simple",
        False,
        "TOKEN_USER",
        "TOKEN",
    )
    assert any("export PYPI_CORP_EXAMPLE_USERNAME" in n for n in result.notes)
    written = write_spec(result, tmp_path).read_text()
    assert "s3cret" not in written and "alice" not in written


@pytest.mark.parametrize(
    ("lines", "indexes"),
    [
        (
            "-i https://a.org/simple --extra-index-url https://b.org/simple",
            [("a-org", "https://a.org/simple", True), ("b-org", "https://b.org/simple", False)],
        ),
        ("--index-url=https://a.org/simple", [("a-org", "https://a.org/simple", True)]),
        ("-ihttps://a.org/simple", [("a-org", "https://a.org/simple", True)]),
        ("--pypi-url https://a.org/simple", [("a-org", "https://a.org/simple", True)]),
        ('--extra-index-url "https://b.org/simple"', [("b-org", "https://b.org/simple", False)]),
        ("--extra-index https://b.org/simple", [("b-org", "https://b.org/simple", False)]),
        (
            "--pre --extra-index-url https://b.org/simple --prefer-binary",
            [("b-org", "https://b.org/simple", False)],
        ),
        (
            "-i https://a.org/simple -i https://c.org/simple",  # pip: the last one wins
            [("c-org", "https://c.org/simple", True)],
        ),
    ],
)
def test_requirements_option_lines(
    tmp_path: Path, lines: str, indexes: list[tuple[str, str, bool]]
) -> None:
    result = imported(tmp_path, {"requirements.txt": f"six\n{lines}\n"})
    assert result.spec.dependencies == ("six",)
    assert [(i.name, i.url, i.default) for i in result.spec.indexes] == indexes


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--bogus-option", "no such option: --bogus-option"),
        ("-i https://a.org/simple --bogus", "no such option: --bogus"),
        ("--no", "ambiguous option: --no"),
        ("-i", "-i option requires 1 argument"),
        ("-i 'https://a.org/simple", "cannot split"),
        ("-i https://a.org/simple https://b.org/simple", "unexpected argument"),
        ('-i "https://a.org/ simple"', "whitespace"),
        ("six -i https://a.org/simple", "--index-url after a requirement is ignored by pip"),
        ("six -C x=1", "--config-settings is unsupported"),
        ("--hash=sha256:abc", "--hash belongs after a requirement"),
        ("-e .", "editable installs are not supported"),
        # packaging accepts these; uv does not, and failed the whole lock on them.
        ("foo===", "'foo===': '===' has no version after it"),
        ("foo (===) ; python_version > '3'", "'===' has no version after it"),
        ("foo===abc", "'===abc' is not a PEP 440 version"),
        # uv never installs it (no spec sets `extra`); said at its line, not after import.
        ("foo; extra == 'gpu'", "its marker tests 'extra'"),
    ],
)
def test_requirements_bad_option_lines(tmp_path: Path, line: str, message: str) -> None:
    exc = failure(tmp_path, {"requirements.txt": f"ok\n{line}\n"})
    assert [(p.where, message in p.message) for p in exc.problems] == [
        ("requirements.txt:2", True)
    ], exc.problems


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("-r missing.txt\n", False),  # a missing file is not a PEP 508 matter
        ("-r requirements.txt\n", False),  # nor is a cycle
        ("--bogus\n", False),
        ("not a requirement!!\n", True),
        ("-e .\n", True),
    ],
)
def test_requirements_hint_only_where_it_helps(tmp_path: Path, text: str, hint: bool) -> None:
    exc = failure(tmp_path, {"requirements.txt": text})
    assert (exc.hint is not None and "PEP 508" in exc.hint) is hint
    if text.startswith("-r missing"):
        assert exc.problems[0].message.endswith("missing.txt: No such file or directory")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_text_inputs_with_a_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    # pip reads a requirements file in the encoding its byte-order mark names.
    files = {
        "requirements.txt": "six\n-i https://a.org/simple\n",
        "runtime.txt": "python-3.12\n",
    }
    for name, text in files.items():
        data = text.encode(encoding)
        if encoding == "utf-16-be":  # Python writes no mark for an explicit byte order
            data = b"\xfe\xff" + data
        (tmp_path / name).write_bytes(data)
    spec = import_spec(tmp_path).spec
    assert (spec.dependencies, spec.python) == (("six",), ("3.12",))
    assert [i.url for i in spec.indexes] == ["https://a.org/simple"]


def test_environment_yml_with_a_byte_order_mark(tmp_path: Path) -> None:
    text = "dependencies:\n  - python=3.12\n  - pip:\n    - six\n"
    (tmp_path / "environment.yml").write_bytes(text.encode("utf-8-sig"))
    spec = import_spec(tmp_path).spec
    assert (spec.dependencies, spec.python) == (("six",), ("3.12",))


def test_pyproject_with_a_byte_order_mark_is_refused_as_tomllib_does(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_bytes('[project]\ndependencies = ["six"]\n'.encode("utf-8-sig"))
    exc = failure(tmp_path, {})
    assert wheres(exc) == [f"{path}:1:1"]
    assert "byte-order mark" in exc.problems[0].message


def test_requirements_in_when_no_txt(tmp_path: Path) -> None:
    assert imported(tmp_path, {"requirements.in": "attrs\n"}).spec.dependencies == ("attrs",)


# --- environment.yml --------------------------------------------------------------------

ENV_YML = """
    name: ds
    channels: [conda-forge]
    dependencies:
      - python=3.10
      - pip
      - pip:
        - numpy>=2
        - -r extra.txt
"""


def test_environment_yml(tmp_path: Path) -> None:
    result = imported(tmp_path, {"environment.yml": ENV_YML, "extra.txt": "scipy\n"})
    assert result.spec.python == ("3.10",)
    assert result.spec.dependencies == ("numpy>=2", "scipy")
    assert [p.name for p in result.sources] == ["environment.yml", "extra.txt"]
    assert any("channels are ignored" in n for n in result.notes)


def test_environment_yml_conda_only_packages(tmp_path: Path) -> None:
    exc = failure(
        tmp_path,
        {
            "environment.yml": """
                dependencies:
                  - python>=3.11
                  - numpy
                  - conda-forge::gdal=3.8
                  - pip:
                    - -e .
            """
        },
    )
    assert wheres(exc) == [
        "environment.yml: dependencies[1]",
        "environment.yml: dependencies[2]",
        "environment.yml: dependencies[3].pip[0]",
    ]
    # Every conda package is refused, numpy too: conda names and builds are not PyPI's,
    # and each message says why, not only the hint.
    assert exc.message == "cannot import environment.yml: 2 conda package(s) outside 'pip:'"
    assert [p.message for p in exc.problems[:2]] == [
        f"conda package {dep!r} is not under 'pip:'; envship installs from Python package "
        "indexes only"
        for dep in ("numpy", "conda-forge::gdal=3.8")
    ]
    assert exc.hint is not None and "under 'pip:' by its PyPI name" in exc.hint


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("dependencies: foo\n", "dependencies", "expected a list, one '- item' per line, "
         "got the text 'foo'"),
        ("dependencies:\n  pip: [six]\n", "dependencies", "got a dict"),
        ("dependencies:\n", "dependencies", "got nothing"),
        ("- six\n", "", "expected a mapping with a 'dependencies:' list, got a list"),
        ("", "", "got an empty file"),
        ("dependencies:\n  - python=3\n", "dependencies[0]", "names no minor version"),
        ("dependencies:\n  - python 3.*\n", "dependencies[0]", "names no minor version"),
    ],
)  # fmt: skip
def test_environment_yml_shape(tmp_path: Path, text: str, where: str, message: str) -> None:
    (tmp_path / "environment.yml").write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        import_spec(tmp_path)
    expected = f"environment.yml: {where}" if where else "environment.yml"
    assert [(p.where, message in p.message) for p in info.value.problems] == [(expected, True)]


def test_environment_yml_malformed(tmp_path: Path) -> None:
    exc = failure(tmp_path, {"environment.yaml": "dependencies:\n  - a\n - b: [\n"})
    assert wheres(exc) == ["environment.yaml:3"]


# --- pyproject.toml ---------------------------------------------------------------------


def test_pep621_and_pep735(tmp_path: Path) -> None:
    result = imported(
        tmp_path,
        {
            "pyproject.toml": """
                [project]
                name = "My.Proj"
                requires-python = ">=3.10"
                dependencies = ["httpx>=0.27", "rich; python_version >= '3.11'"]
                [project.optional-dependencies]
                Plot = ["matplotlib"]
                all = ["my-proj[plot]; sys_platform == 'linux'"]
                [dependency-groups]
                Test_Utils = ["pytest>=8"]
                dev = [{include-group = "test-utils"}, "ruff", "my_proj"]
            """
        },
    )
    spec = result.spec
    assert spec.python == ("3.10",)
    assert spec.dependencies == ("httpx>=0.27", 'rich; python_version >= "3.11"')
    assert dict(spec.groups) == {
        "plot": ("matplotlib",),
        "all": ('matplotlib; sys_platform == "linux"',),
        "test-utils": ("pytest>=8",),
        "dev": ("pytest>=8", "ruff"),
    }


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        (
            '[dependency-groups]\na = [{include-group = "b"}]\nb = [{include-group = "a"}]',
            "dependency-groups.a",
        ),
        ('[dependency-groups]\na = [{include-group = "nope"}]', "dependency-groups.a[0]"),
        ('[dependency-groups]\na = ["ok", "bad req!"]', "dependency-groups.a[1]"),
        ('[project]\nname = "p"\n[project.optional-dependencies]\nall = ["p[x]"]', "all[0]"),
    ],
)
def test_dependency_group_errors(tmp_path: Path, toml: str, where: str) -> None:
    exc = failure(tmp_path, {"pyproject.toml": toml})
    if not where.startswith("dependency-groups"):
        where = f"project.optional-dependencies.{where}"
    assert wheres(exc) == [f"pyproject.toml: {where}"]


# A requirement on the project itself ("my-pkg[extra1]") stands for the requirements of
# those extras (pip and uv read it so); kept as it is, the lock looked "my-pkg" up on the
# index: whatever anyone published under that name would have been installed.
SELF_REFERENCES = [
    pytest.param(
        """
        [project]
        name = "My_Pkg"
        dependencies = ["requests", "my-pkg[extra1]"]
        [project.optional-dependencies]
        extra1 = ["attrs"]
        """,
        ("requests", "attrs"), {"extra1": ("attrs",)}, id="the-audit-case",
    ),
    pytest.param(
        """
        [project]
        name = "my.pkg"
        dependencies = ["My-Pkg[GPU] ; sys_platform == 'linux'"]
        [project.optional-dependencies]
        gpu = ["cupy ; platform_machine == 'x86_64' or platform_machine == 'aarch64'"]
        """,
        ('cupy; (platform_machine == "x86_64" or platform_machine == "aarch64") and '
         'sys_platform == "linux"',),
        {"gpu": ('cupy; platform_machine == "x86_64" or platform_machine == "aarch64"',)},
        id="markers-combined",
    ),
    pytest.param(
        """
        [project]
        name = "p"
        dependencies = ["p[all]>=1"]
        [project.optional-dependencies]
        all = ["p[a,b]"]
        a = ["x"]
        b = ["p[c] ; python_version >= '3.11'"]
        c = ["y"]
        """,
        ("x", 'y; python_version >= "3.11"'),
        {"all": ("x", 'y; python_version >= "3.11"'), "a": ("x",),
         "b": ('y; python_version >= "3.11"',), "c": ("y",)},
        id="nested-extras",
    ),
    pytest.param(
        """
        [project]
        name = "p"
        dependencies = ["p[a]"]
        [project.optional-dependencies]
        a = ["p[b]", "x"]
        b = ["p[a]", "y"]
        all = ["p[all]", "z"]
        """,
        ("x", "y"), {"a": ("x", "y"), "b": ("y", "x"), "all": ("z",)},
        id="extras-in-a-cycle",
    ),
    pytest.param(
        """
        [project]
        name = "p"
        dependencies = ["p[a]"]
        [project.optional-dependencies]
        a = ["p[a] ; os_name == 'nt'", "p[b] ; os_name == 'nt'", "x"]
        b = ["p[a]", "y"]
        """,
        ("x", 'y; os_name == "nt"'),
        {"a": ("x", 'y; os_name == "nt"'), "b": ("y", "x")},
        id="a-cycle-under-a-marker",
    ),
    pytest.param(
        """
        [project]
        name = "p"
        dependencies = ["p", "six"]
        [dependency-groups]
        dev = ["p[test] ; python_version >= '3.10'", "ruff", {include-group = "docs"}]
        docs = ["P[Docs]"]
        [project.optional-dependencies]
        test = ["pytest"]
        docs = ["sphinx"]
        """,
        ("six",),
        {"test": ("pytest",), "docs": ("sphinx",),
         "dev": ('pytest; python_version >= "3.10"', "ruff", "sphinx")},
        id="dependency-groups",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("toml", "dependencies", "groups"), SELF_REFERENCES)
def test_requirements_on_the_project_itself_expand_to_its_extras(
    tmp_path: Path, toml: str, dependencies: tuple[str, ...], groups: dict[str, tuple[str, ...]]
) -> None:
    spec = imported(tmp_path, {"pyproject.toml": toml}).spec
    assert spec.dependencies == dependencies
    assert dict(spec.groups) == groups


def test_the_project_itself_without_extras_is_dropped_with_a_note(tmp_path: Path) -> None:
    toml = '[project]\nname = "p"\ndependencies = ["P", "six"]\n'
    result = imported(tmp_path, {"pyproject.toml": toml})
    assert result.spec.dependencies == ("six",)
    assert "pyproject.toml: project.dependencies: the project itself is not part of the spec" in (
        result.notes
    )


SELF_REFERENCE_ERRORS = [
    pytest.param(
        '[project]\nname = "p"\ndependencies = ["p[nope]"]',
        "project.dependencies[0]", "no extra 'nope' in project.optional-dependencies",
        id="no-such-extra",
    ),
    pytest.param(
        '[project]\nname = "p"\ndependencies = ["p[cli]"]\ndynamic = ["optional-dependencies"]',
        "project.dependencies[0]", "they are dynamic: the build backend computes them",
        id="dynamic-extras",
    ),
    pytest.param(
        '[project]\nname = "p"\ndependencies = ["p[a]"]\n'
        '[project.optional-dependencies]\na = ["x", "p[zz]"]',
        "project.optional-dependencies.a[1]", "no extra 'zz'", id="missing-further-down",
    ),
    pytest.param(
        '[project]\nname = "p"\n[dependency-groups]\ndev = ["p[nope]"]',
        "dependency-groups.dev[0]", "no extra 'nope'", id="group-no-such-extra",
    ),
    pytest.param(
        '[tool.poetry]\nname = "Svc"\n[tool.poetry.dependencies]\n'
        'svc = {version = "*", extras = ["x"]}',
        "tool.poetry.dependencies.svc", "the project cannot depend on itself", id="poetry",
    ),
    pytest.param(
        '[tool.poetry]\nname = "svc"\n[tool.poetry.group.dev.dependencies]\nSVC = "*"',
        "tool.poetry.group.dev.dependencies.SVC", "cannot depend on itself", id="poetry-group",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("toml", "where", "message"), SELF_REFERENCE_ERRORS)
def test_self_references_that_cannot_be_expanded_are_refused(
    tmp_path: Path, toml: str, where: str, message: str
) -> None:
    exc = failure(tmp_path, {"pyproject.toml": toml})
    assert [(p.where, message in p.message) for p in exc.problems] == [
        (f"pyproject.toml: {where}", True)
    ], exc.problems


def test_extras_naming_each_other_under_many_markers_are_refused_not_expanded(
    tmp_path: Path,
) -> None:
    # Every path through extras that name each other under a marker is a marker of its
    # own: 8 such extras took 2.5 minutes and wrote a 25 MB spec before the limit.
    def entry(i: int, j: int) -> str:
        return f"\"p[e{j}] ; platform_release == '{i}.{j}'\""

    extras = [f"e{i} = [{', '.join(entry(i, j) for j in range(8))}]" for i in range(8)]
    toml = '[project]\nname = "p"\ndependencies = ["p[e0]"]\n[project.optional-dependencies]\n'
    toml += "\n".join(extras)
    exc = failure(tmp_path, {"pyproject.toml": toml})
    assert wheres(exc) == ["pyproject.toml: project.dependencies[0]"] + [
        f"pyproject.toml: project.optional-dependencies.e{i}" for i in range(8)
    ]
    assert all("over 1000 different combinations of markers" in p.message for p in exc.problems)


PYPROJECT_NAME_ERRORS = [
    pytest.param('[dependency-groups]\n"Bad Name" = ["x"]', "dependency-groups.Bad Name",
                 "invalid group name 'Bad Name'", "'bad-name'", id="group-name"),
    pytest.param('[project]\nname = "p"\n[project.optional-dependencies]\n"a b" = ["x"]',
                 "project.optional-dependencies.a b", "invalid group name 'a b'", "'a-b'",
                 id="extra-name"),
    pytest.param('[dependency-groups]\nDev = ["x"]\ndev = ["y"]', "dependency-groups.dev",
                 "the same name as dependency-groups.Dev", "", id="names-equal-normalized"),
    pytest.param('[tool.poetry.group."my group".dependencies]\nx = "*"',
                 "tool.poetry.group.my group", "invalid group name 'my group'", "'my-group'",
                 id="poetry-group-name"),
    pytest.param('[project]\nname = "p"\ndependencies = ["foo==="]', "project.dependencies[0]",
                 "'===' has no version after it", "'foo==1.0'", id="arbitrary-equality-empty"),
    pytest.param('[dependency-groups]\ndev = ["foo===*"]', "dependency-groups.dev[0]",
                 "'===*' is not a PEP 440 version", "", id="arbitrary-equality-not-pep440"),
    pytest.param('[project]\nname = "p"\ndependencies = ["ok", "foo; extra == \'x\'"]',
                 "project.dependencies[1]", "its marker tests 'extra'", "[groups]",
                 id="extra-marker"),
]  # fmt: skip


@pytest.mark.parametrize(("toml", "where", "message", "suggestion"), PYPROJECT_NAME_ERRORS)
def test_pyproject_entries_a_spec_cannot_hold_name_the_key(
    tmp_path: Path, toml: str, where: str, message: str, suggestion: str
) -> None:
    exc = failure(tmp_path, {"pyproject.toml": toml})
    assert [p.where for p in exc.problems] == [f"pyproject.toml: {where}"]
    assert message in exc.problems[0].message
    assert suggestion in exc.problems[0].message


def test_requires_python_unsatisfiable(tmp_path: Path) -> None:
    toml = '[project]\nname = "x"\nrequires-python = "<3.8"\ndependencies = []\n'
    exc = failure(tmp_path, {"pyproject.toml": toml})
    assert wheres(exc) == ["pyproject.toml: project.requires-python"]


def test_pyproject_with_envship_table(tmp_path: Path) -> None:
    exc = failure(tmp_path, {"pyproject.toml": '[tool.envship]\nname = "x"\n'})
    assert "already has a spec" in exc.message


def test_pyproject_without_dependencies_falls_through(tmp_path: Path) -> None:
    files = {"pyproject.toml": "[tool.ruff]\nline-length = 100\n", "requirements.txt": "attrs"}
    assert imported(tmp_path, files).spec.dependencies == ("attrs",)


POETRY = """
    [tool.poetry]
    name = "svc"
    [tool.poetry.dependencies]
    python = "^3.10"
    requests = "^2.31"
    numpy = {version = "~1.26", extras = ["dev"], python = ">=3.10,<3.13"}
    pandas = {version = "*", optional = true}
    torch = {version = ">=2", optional = true}
    uvloop = {version = "^0.19", markers = "sys_platform != 'win32'"}
    [tool.poetry.extras]
    frames = ["pandas"]
    [tool.poetry.group.Dev.dependencies]
    pytest = "^8.0"
    [tool.poetry.dev-dependencies]
    black = "24.1.0"
    [[tool.poetry.source]]
    name = "corp"
    url = "https://pypi.corp.example/simple/"
    priority = "primary"
    [[tool.poetry.source]]
    name = "extra"
    url = "https://extra.example/simple/"
    priority = "supplemental"
"""


def test_poetry(tmp_path: Path) -> None:
    result = imported(tmp_path, {"pyproject.toml": POETRY})
    spec = result.spec
    assert spec.python == ("3.10",)
    assert spec.dependencies == (
        "requests<3.0,>=2.31",
        'numpy[dev]<1.27,>=1.26; python_version < "3.13" and python_version >= "3.10"',
        'uvloop<0.20,>=0.19; sys_platform != "win32"',
    )
    assert dict(spec.groups) == {
        "frames": ("pandas",),
        "dev": ("pytest<9.0,>=8.0", "black==24.1.0"),
    }
    assert [(i.name, i.default) for i in spec.indexes] == [("corp", True), ("extra", False)]
    assert any("torch" in n and "skipped" in n for n in result.notes)


@pytest.mark.parametrize(
    ("dep", "key"),
    [
        ('mylib = {git = "https://github.com/x/mylib.git"}', "mylib"),
        ('local = {path = "../local", develop = true}', "local"),
        ('wheel = {url = "https://example.com/w.whl"}', "wheel"),
        ('either = "1.0 || 2.0"', "either"),
        ('python = "^2.7"', "python"),
    ],
)
def test_poetry_errors(tmp_path: Path, dep: str, key: str) -> None:
    exc = failure(tmp_path, {"pyproject.toml": f"[tool.poetry.dependencies]\n{dep}\n"})
    assert wheres(exc) == [f"pyproject.toml: tool.poetry.dependencies.{key}"]


@pytest.mark.parametrize(
    ("dep", "key", "message"),
    [
        ('foo = "~"', "foo", "'~': expected a version after the operator"),
        ('foo = {version = "^"}', "foo", "'^': expected a version after the operator"),
        ('foo = "^1.2+local"', "foo", "expected a version such as 1.2.3 or 1.2.3rc1 after '^'"),
        (
            'foo = {version = "^1.2", allow-prereleases = true}',
            "foo.allow-prereleases",
            'not supported: name a pre-release in the version instead (e.g. ">=2.0rc1")',
        ),
        ('foo = {version = "*", allows-prereleases = true}', "foo.allows-prereleases",
         "not supported"),
        ('foo = {version = "^1.2", allow-prereleases = "yes"}', "foo.allow-prereleases",
         "expected true or false"),
    ],
)  # fmt: skip
def test_poetry_problems_name_the_key(tmp_path: Path, dep: str, key: str, message: str) -> None:
    exc = failure(tmp_path, {"pyproject.toml": f"[tool.poetry.dependencies]\n{dep}\n"})
    assert [(p.where, message in p.message) for p in exc.problems] == [
        (f"pyproject.toml: tool.poetry.dependencies.{key}", True)
    ], exc.problems


@pytest.mark.parametrize(
    ("dep", "requirement"),
    [
        ('foo = "^1.2.3rc1"', "foo<2.0.0,>=1.2.3rc1"),
        ('foo = {version = "~1.2.3b2", allow-prereleases = true}', "foo<1.3.0,>=1.2.3b2"),
        ('foo = {version = "^1.2", allow-prereleases = false}', "foo<2.0,>=1.2"),
    ],
)
def test_poetry_pre_releases(tmp_path: Path, dep: str, requirement: str) -> None:
    result = imported(tmp_path, {"pyproject.toml": f"[tool.poetry.dependencies]\n{dep}\n"})
    assert result.spec.dependencies == (requirement,)


def test_poetry_source_names_uv_refuses_are_rewritten(tmp_path: Path) -> None:
    toml = """
        [tool.poetry.dependencies]
        six = "*"
        [[tool.poetry.source]]
        name = "My Repo"
        url = "https://a.example/simple/"
        [[tool.poetry.source]]
        name = "my_repo"
        url = "https://b.example/simple/"
    """
    result = imported(tmp_path, {"pyproject.toml": toml})
    assert [i.name for i in result.spec.indexes] == ["My-Repo", "my_repo-2"]
    assert any("'My Repo' is named 'My-Repo'" in n for n in result.notes)


# --- layout, runtime.txt, naming, writing ---------------------------------------------------


def test_binder_folder_is_the_only_place_read(tmp_path: Path) -> None:
    result = imported(
        tmp_path,
        {
            "requirements.txt": "top-level-only",
            "binder/requirements.txt": "in-binder",
            "binder/runtime.txt": "python-3.12",
            ".binder/requirements.txt": "in-dot-binder",
        },
    )
    assert result.spec.dependencies == ("in-binder",)
    assert result.spec.python == ("3.12",)
    assert [p.relative_to(tmp_path).as_posix() for p in result.sources] == [
        "binder/requirements.txt",
        "binder/runtime.txt",
    ]


def test_binder_folder_without_sources(tmp_path: Path) -> None:
    (tmp_path / ".binder").mkdir()
    exc = failure(tmp_path, {"requirements.txt": "ignored"})
    assert "nothing to import" in exc.message
    assert "requirements.txt" in exc.problems[0].message


@pytest.mark.parametrize(
    ("runtime", "python"), [("python-3.12", "3.12"), ("python-3.9.7\n", "3.9")]
)
def test_runtime_txt_overrides(tmp_path: Path, runtime: str, python: str) -> None:
    files = {"runtime.txt": runtime, "pyproject.toml": '[project]\ndependencies = ["a"]\n'}
    assert imported(tmp_path, files).spec.python == (python,)


@pytest.mark.parametrize("runtime", ["3.11", "python3.11", "r-2023-01-01", ""])
def test_runtime_txt_invalid(tmp_path: Path, runtime: str) -> None:
    exc = failure(tmp_path, {"runtime.txt": runtime, "requirements.txt": "a"})
    assert wheres(exc) == ["runtime.txt:1"]


def test_defaults_name_and_targets(tmp_path: Path) -> None:
    folder = tmp_path / "My_Cool.Project"
    folder.mkdir()
    spec = imported(folder, {"requirements.txt": "a"}).spec
    assert spec.name == "my-cool-project"
    assert [t.name for t in spec.targets] == ["linux-x86_64", "linux-aarch64"]
    assert spec.python == ("3.11",)


def test_name_and_targets_are_validated_by_parse_spec(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": "a"})
    spec = import_spec(tmp_path, name="ds", targets=["linux-aarch64"]).spec
    assert (spec.name, [t.name for t in spec.targets]) == ("ds", ["linux-aarch64"])
    with pytest.raises(SpecError) as info:
        import_spec(tmp_path, name="bad name", targets=["windows-arm"])
    assert wheres(info.value) == ["--name", "--target windows-arm"]


def test_nothing_found(tmp_path: Path) -> None:
    exc = failure(tmp_path, {"README.md": "hi"})
    assert str(tmp_path) in exc.message
    assert "environment.yml" in exc.problems[0].message


def test_init_writes_a_spec_that_loads_and_refuses_to_overwrite(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": "numpy>=2\n", "runtime.txt": "python-3.12"})
    result, path = init_spec(tmp_path)
    assert path == tmp_path / "envship.toml"
    loaded = load_spec(tmp_path)
    assert loaded.digest == result.spec.digest
    assert path.read_text().startswith("# Written by `envship init` from requirements.txt")
    with pytest.raises(SpecError, match="already exists") as info:
        init_spec(tmp_path)
    assert info.value.hint is not None and "--force" in info.value.hint
    (tmp_path / "requirements.txt").write_text("numpy>=2\nscipy\n")
    init_spec(tmp_path, force=True)
    assert load_spec(tmp_path).dependencies == ("numpy>=2", "scipy")


# --- properties -------------------------------------------------------------------------


# Arbitrary text, and text built from the format's own tokens (which reach far more
# branches: options, includes, index URLs with credentials, continuations).
_TOKENS = ["-r ", "-c ", "-i ", "--index-url=https://u:p@h/", "--extra-index-url ", "x @ "]
_TOKENS += ["[", "]", ";", " #", "\\", "\n", "==1", "${A}", "://", ".", "/", "numpy", "-e "]
_TOKENS += ["--hash=x", " python_version<'3'", "\t", "~=", "*", ",", "[::1", "requirements.txt"]
_TOKENS += [" --extra-index ", "'", '"', " -C ", "--pre", " --no", "\ufeff", "-i"]
_TEXT = st.one_of(st.text(), st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join))


@settings(max_examples=300, deadline=None)
@given(_TEXT)
@example("-r ~=")  # found by this test: "~=" read as the home of a user named "="
def test_requirements_parser_only_raises_spec_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "requirements.txt"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        with contextlib.suppress(SpecError):  # anything else fails the test
            parse_requirements(path, root=Path(folder))


_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,8}[A-Za-z0-9]", fullmatch=True)
_VERSIONS = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}", fullmatch=True)
_SPECS = st.lists(st.tuples(st.sampled_from(["==", ">=", "<", "!=", "~="]), _VERSIONS), max_size=3)
_MARKERS = st.sampled_from(
    ["", 'python_version < "3.12"', 'sys_platform == "linux" and platform_machine != "arm64"']
)


@settings(max_examples=200, deadline=None)
@given(_NAMES, st.lists(_NAMES, max_size=2), _SPECS, _MARKERS)
def test_valid_pep508_lines_round_trip(
    name: str, extras: list[str], specs: list[tuple[str, str]], marker: str
) -> None:
    specs = [(op, v if op != "~=" or "." in v else f"{v}.0") for op, v in specs]
    text = name + (f"[{','.join(extras)}]" if extras else "")
    text += ",".join(op + v for op, v in specs) + (f"; {marker}" if marker else "")
    line = str(Requirement(text))
    parsed = parse_requirements([("line", line)], root=Path())
    assert parsed.requirements == (line,)

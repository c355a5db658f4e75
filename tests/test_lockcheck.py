"""Why a wheel misses a target, and what uv's refusals name, for ``envship lock``'s report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from envship._lockcheck import wheel_misfit
from envship._uvrefusal import parse_needs_python
from envship.errors import UnsupportedTargetError
from envship.lock import lock
from envship.targets import Target
from indexlib import IndexServer, build_sdist, build_wheel, serve, write_simple_index
from test_lock import missing, write_spec

X86_OLD = Target.create("linux-x86_64", python="3.11", glibc="2.5")
X86 = Target.create("linux-x86_64", python="3.11", glibc="2.28")


@pytest.mark.parametrize(
    ("target", "filename", "why"),
    [
        (X86, "a-1-py3-none-any.whl", None),
        (X86, "a-1-cp311-cp311-manylinux_2_28_x86_64.whl", None),
        (X86, "a-1-cp38-abi3-manylinux2014_x86_64.whl", None),
        (X86_OLD, "a-1-cp311-cp311-manylinux1_x86_64.whl", None),
        (X86_OLD, "a-1-cp311-cp311-manylinux2014_x86_64.whl", "needs glibc 2.17, target has 2.5"),
        (X86_OLD, "a-1-cp38-abi3-manylinux_2_12_x86_64.whl", "needs glibc 2.12, target has 2.5"),
        (X86, "a-1-cp311-cp311-manylinux_2_34_x86_64.whl", "needs glibc 2.34, target has 2.28"),
        # The lowest level among a wheel's tags is what it needs.
        (
            X86_OLD,
            "a-1-cp311-cp311-manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
            "needs glibc 2.17, target has 2.5",
        ),
        (
            X86,
            "a-1-cp312-cp312-manylinux_2_17_x86_64.whl",
            "is built for cp312-cp312 (target runs CPython 3.11)",
        ),
        (
            X86,
            "a-1-pp310-pypy310_pp73-manylinux_2_17_x86_64.whl",
            "is built for pp310-pypy310_pp73",
        ),
        (X86, "a-1-cp311-cp311-manylinux_2_17_aarch64.whl", "is for aarch64"),
        (X86, "a-1-cp311-cp311-win_amd64.whl", "is for Windows"),
        (X86, "a-1-cp311-cp311-macosx_11_0_arm64.whl", "is for macOS"),
        (X86, "a-1-cp311-cp311-musllinux_1_2_x86_64.whl", "is for musl libc (musllinux)"),
        (X86, "a-1-cp311-cp311-linux_x86_64.whl", "is for plain linux_x86_64 (not manylinux)"),
        (X86, "not-a-wheel.whl", "is for no platform (not a valid wheel file name)"),
    ],
)
def test_wheel_misfit_says_why(target: Target, filename: str, why: str | None) -> None:
    misfit = wheel_misfit(filename, target)
    if why is None:
        assert misfit is None
        return
    assert misfit is not None
    assert why in misfit.text(target, many=False)


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Packages whose every version lacks a usable wheel, each in its own way."""
    root = tmp_path_factory.mktemp("odd")
    dist = root / "dist"
    files = [
        build_wheel(dist, "chi", "1.0", tag="cp312-cp312-manylinux_2_17_x86_64"),
        build_wheel(dist, "chi", "2.0", tag="cp312-cp312-manylinux_2_17_x86_64"),
        build_sdist(dist, "omega", "1.0"),
        build_sdist(dist, "omega", "2.0"),
        build_wheel(dist, "psi", "1.0", requires=["omega"]),
        build_wheel(dist, "tau", "1.0"),
    ]
    write_simple_index(root / "index", files)
    return root / "index"


@pytest.fixture
def odd_server(odd_root: Path) -> Iterator[IndexServer]:
    with serve(odd_root) as server:
        yield server


def test_every_version_without_wheels_is_named(tmp_path: Path, odd_server: IndexServer) -> None:
    # uv words these "all versions of chi have no ..."; omega comes in through psi.
    spec = write_spec(
        tmp_path,
        odd_server.simple_url,
        dependencies=["chi", "psi", "tau"],
        targets={"linux-x86_64": {}},
    )
    with pytest.raises(UnsupportedTargetError) as info:
        lock(spec)
    assert missing(info.value) == {
        ("chi (every version)", "linux-x86_64"),
        ("omega (every version)", "linux-x86_64"),
    }
    chi = next(p.message for p in info.value.problems if p.where.startswith("chi"))
    assert "Python" in chi and "cp312" in chi, chi
    omega = next(p.message for p in info.value.problems if p.where.startswith("omega"))
    assert "only an sdist, and allow-sdist is off" in omega


@pytest.fixture(scope="module")
def python_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Releases that need a newer Python than a target runs, each in its own way."""
    root = tmp_path_factory.mktemp("python")
    dist = root / "dist"
    files = [
        # rho: 1.0 says Requires-Python >=3.11; 1.1 says nothing but has cp311 wheels
        # only (and an sdist): the shape of numpy>=2.3 for CPython 3.9.
        build_wheel(dist, "rho", "1.0", requires_python=">=3.11"),
        build_wheel(dist, "rho", "1.1", tag="cp311-cp311-manylinux_2_17_x86_64"),
        build_sdist(dist, "rho", "1.1"),
        # sigma: every release needs a newer Python, each a different one.
        build_wheel(dist, "sigma", "1.0", requires_python=">=3.11"),
        build_wheel(dist, "sigma", "2.0", requires_python=">=3.12"),
        build_sdist(dist, "omega", "1.0"),
        build_wheel(dist, "tau", "1.0"),
    ]
    write_simple_index(root / "index", files)
    return root / "index"


@pytest.fixture
def python_server(python_root: Path) -> Iterator[IndexServer]:
    with serve(python_root) as server:
        yield server


@pytest.mark.parametrize(
    ("dependencies", "expected", "says"),
    [
        (
            ["rho>=1.0", "tau"],
            {("rho", "linux-x86_64-py3.10")},
            ["rho==1.0 requires Python >=3.11", "rho 1.1 has no wheel for it"],
        ),
        (
            ["sigma", "tau"],
            {("sigma", "linux-x86_64-py3.10")},
            ["sigma==1.0 requires Python >=3.11", "sigma==2.0 requires Python >=3.12"],
        ),
        # Both kinds at once: the hint gives the wheel advice for omega only.
        (
            ["sigma", "omega"],
            {
                ("sigma", "linux-x86_64-py3.10"),
                ("omega 1.0", "linux-x86_64-py3.10"),
                ("omega 1.0", "linux-x86_64-py3.11"),
            },
            ["sigma==1.0 requires Python >=3.11"],
        ),
    ],
)
def test_a_release_for_a_newer_python_is_named_as_such(
    tmp_path: Path,
    python_server: IndexServer,
    dependencies: list[str],
    expected: set[tuple[str, str]],
    says: list[str],
) -> None:
    """The audit saw numpy>=2.3 with a CPython 3.9 target reported as "only an sdist"
    with allow-sdist as the hint, while no such numpy supports Python 3.9."""
    spec = write_spec(
        tmp_path,
        python_server.simple_url,
        dependencies=dependencies,
        python=["3.11", "3.10"],
        targets={"linux-x86_64": {}},
    )
    with pytest.raises(UnsupportedTargetError) as info:
        lock(spec)
    assert missing(info.value) == expected, str(info.value)
    conflict = next(p for p in info.value.problems if p.where in ("rho", "sigma"))
    assert "no release the spec allows installs on target 'linux-x86_64-py3.10'" in (
        conflict.message
    )
    for words in says:
        assert words in conflict.message, conflict.message
    assert "allow-sdist is off" not in conflict.message.split("has no wheel for it")[0]
    hint = info.value.hint or ""
    assert hint.startswith("drop Python 3.10 from the spec's `python`"), hint
    assert f"lower the requirement on {conflict.where}" in hint
    assert ("allow-sdist" in hint) == ("omega" in dependencies), hint


# uv 0.13.9's words for numpy>=2.3 with a CPython 3.9 fork (PyPI, January 2026).
NUMPY_39 = """\
  cause: Because the requested Python version (>=3.9) does not satisfy Python>=3.11 and all of:
             numpy>=2.3.0,<=2.4.0rc1
             numpy>=2.4.1,<=2.4.6
         depend on Python>=3.11, we can conclude that all of:
             numpy>=2.3.0,<=2.4.0rc1
             numpy>=2.4.1,<=2.4.6
          cannot be used.
         Because the requested Python version (>=3.9) does not satisfy Python>=3.11 and \
numpy>=2.5.0rc1 depends on Python>=3.12, we can conclude that numpy>=2.5.0rc1 cannot be used.
         And because numpy==2.4.0 has no usable wheels and your project depends on \
numpy>=2.3, we can conclude that your project's requirements are unsatisfiable.
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            NUMPY_39,
            [
                ("numpy", "numpy>=2.3.0,<=2.4.0rc1", ">=3.11"),
                ("numpy", "numpy>=2.4.1,<=2.4.6", ">=3.11"),
                ("numpy", "numpy>=2.5.0rc1", ">=3.12"),
            ],
        ),
        ("Because rho==1.0 requires Python >=3.11 and", [("rho", "rho==1.0", ">=3.11")]),
        ("all versions of Rho_X depend on Python>=3.12,", [("rho-x", "every version", ">=3.12")]),
        ("the requested Python version (>=3.9) does not satisfy Python>=3.11", []),
    ],
)
def test_requires_python_in_uvs_words(text: str, expected: list[tuple[str, str, str]]) -> None:
    found = [(n.name, n.releases, str(n.python)) for n in parse_needs_python(text)]
    assert found == expected

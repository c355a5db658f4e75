"""Why a wheel misses a target, and what uv's refusals name, for ``envship lock``'s report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from envship._lockcheck import wheel_misfit
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

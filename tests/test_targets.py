from __future__ import annotations

from typing import cast

import pytest
from packaging.tags import Tag

from envship.errors import TargetError
from envship.targets import Target


def tags(**kw: str) -> set[Tag]:
    return set(Target.create("t", **kw).tags())


@pytest.mark.parametrize(
    ("platform", "glibc", "accepted", "refused"),
    [
        (
            "linux-x86_64",
            "2.28",
            [
                "cp311-cp311-manylinux_2_28_x86_64",
                "cp311-cp311-manylinux2014_x86_64",
                "cp311-cp311-manylinux1_x86_64",
                "cp38-abi3-manylinux_2_17_x86_64",
                "py3-none-any",
                "cp311-none-any",
            ],
            [
                "cp311-cp311-manylinux_2_34_x86_64",
                "cp311-cp311-manylinux_2_17_aarch64",
                "cp312-cp312-manylinux_2_17_x86_64",
                "cp311-cp311-linux_x86_64",
                "cp311-cp311-musllinux_1_2_x86_64",
            ],
        ),
        (
            "linux-aarch64",
            "2.17",
            ["cp311-cp311-manylinux2014_aarch64", "cp311-cp311-manylinux_2_17_aarch64"],
            [
                "cp311-cp311-manylinux_2_28_aarch64",
                "cp311-cp311-manylinux2014_x86_64",
                "cp311-cp311-manylinux1_aarch64",
            ],
        ),
    ],
)
def test_tags(platform: str, glibc: str, accepted: list[str], refused: list[str]) -> None:
    have = tags(platform_id=platform, python="3.11", glibc=glibc)
    for text in accepted:
        assert Tag(*text.split("-")) in have, text
    for text in refused:
        assert Tag(*text.split("-")) not in have, text


def test_best_tag_first() -> None:
    first = Target.create("linux-x86_64", python="3.12", glibc="2.31").tags()[0]
    assert str(first) == "cp312-cp312-manylinux_2_31_x86_64"


def test_marker_environment_matches_marker() -> None:
    from packaging.markers import Marker

    t = Target.create("linux-aarch64", python="3.10")
    assert Marker(t.marker).evaluate(cast("dict[str, str]", t.marker_environment()))
    other = Target.create("linux-x86_64", python="3.10")
    assert not Marker(t.marker).evaluate(cast("dict[str, str]", other.marker_environment()))


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"platform_id": "windows-x86"}, "unknown platform"),
        ({"python": "3"}, "python"),
        ({"glibc": "2.x"}, "glibc"),
        ({"glibc": "2.12", "platform_id": "linux-aarch64"}, "oldest manylinux"),
        ({"variant": "rocm"}, "variant"),
    ],
)
def test_invalid_targets(kwargs: dict[str, str], where: str) -> None:
    args: dict[str, str] = {"python": "3.11", **kwargs}
    with pytest.raises(TargetError) as info:
        Target.create("t", where="targets.t", **args)
    assert where in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "problems"),
    [
        # glibc has been 2.x since 1997; "99.99" was reported as below the oldest level.
        ({"glibc": "99.99"}, [("t.glibc", "glibc 99.99 is not a glibc 2.x version")]),
        ({"glibc": "3.1"}, [("t.glibc", "glibc 3.1 is not a glibc 2.x version")]),
        ({"glibc": "1.30"}, [("t.glibc", "glibc 1.30 is not a glibc 2.x version")]),
        ({"glibc": "2.4"}, [("t.glibc", "glibc 2.4 is below the oldest manylinux level for "
                             "x86_64 (2.5)")]),
        (
            {"glibc": "2.12", "platform_id": "linux-aarch64", "variant": "rocm"},
            [("t.glibc", "below the oldest manylinux level for aarch64 (2.17)"),
             ("t.variant", "unknown variant 'rocm'")],
        ),
        # Not ASCII digits (str.isdigit passes "²", int() then fails), or too big to make
        # tags for (every manylinux minor below it: "2.99999999" ran out of memory).
        ({"glibc": "2.\u00b2"}, [("t.glibc", "expected 2 dot-separated numbers")]),
        ({"glibc": "2.99999999"}, [("t.glibc", "expected 2 dot-separated numbers")]),
        ({"python": "3.\u0661\u0661"}, [("t.python", "expected 2 dot-separated numbers")]),
        (
            {"glibc": "9.1", "platform_id": "windows-x86", "python": "3.x"},
            [("t", "unknown platform"), ("t.python", "expected 2 dot-separated numbers"),
             ("t.glibc", "not a glibc 2.x version")],
        ),
    ],
)  # fmt: skip
def test_every_problem_of_a_target_says_what_is_wrong(
    kwargs: dict[str, str], problems: list[tuple[str, str]]
) -> None:
    args: dict[str, str] = {"python": "3.11", "platform_id": "linux-x86_64", **kwargs}
    with pytest.raises(TargetError) as info:
        Target.create("t", where="t", **args)
    found = [(p.where, p.message) for p in info.value.problems]
    assert [w for w, _ in found] == [w for w, _ in problems], found
    for (_, message), (_, want) in zip(found, problems, strict=True):
        assert want in message


@pytest.mark.parametrize(("glibc", "first"), [("2.5", "manylinux_2_5_x86_64"),
                                              ("2.99", "manylinux_2_99_x86_64")])  # fmt: skip
def test_glibc_2x_levels_are_accepted(glibc: str, first: str) -> None:
    target = Target.create("linux-x86_64", python="3.11", glibc=glibc)
    assert next(target.platform_tags()) == first


def test_from_json_reads_what_to_json_wrote() -> None:
    target = Target.create("gpu", platform_id="linux-x86_64", python="3.11", variant="cuda")
    assert Target.from_json(target.to_json()) == target


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "a target needs name, platform"),
        ({"name": "x"}, "a target needs name, platform"),
        (
            {
                "name": "x",
                "platform": "linux-x86_64",
                "python": 3.11,
                "glibc": "2.28",
                "variant": "cpu",
            },
            "a target needs",
        ),
        (
            {
                "name": "x",
                "platform": "beos-ppc",
                "python": "3.11",
                "glibc": "2.28",
                "variant": "cpu",
            },
            "beos-ppc",
        ),
    ],
)
def test_from_json_refuses_what_is_not_a_target(data: object, message: str) -> None:
    with pytest.raises(TargetError) as caught:
        Target.from_json(data, where="marker.json: target")
    assert message in str(caught.value)
    assert caught.value.problems[0].where.startswith("marker.json: target")

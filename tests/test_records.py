"""A distribution's RECORD that is there but is not one an installer wrote: emptied, cut
short, missing its own line, malformed or unreadable. Each is damaged in an environment
``envship install`` made from real wheels, and ``verify`` must report the RECORD itself as
``changed``, with its path and what is wrong (never "removed" while it is there), with
the locked wheels in the store and without them.

With the store, the locked wheel vouches for the files the RECORD no longer lists: they
are checked against it and are nobody else's, so the RECORD is the one difference. The
files of its own ``.dist-info`` folder it does not list are named in that difference. A
RECORD ``importlib.metadata`` cannot parse (a blank line, a size that is no number) must
not stop verify either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from envship.verify import VerifyMismatchError, verify
from test_environment import env, site_of
from test_verify_incomplete import Made, finish, made  # noqa: F401  (a fixture)

__all__ = ["env"]  # a fixture of test_environment, used here too

INFO = "beta-1.0.dist-info"
EXPECTED = "a line for every file installed, itself included (PEP 376)"
# What uv writes into the .dist-info folder besides the wheel's METADATA and WHEEL.
INSTALLERS = [f"{INFO}/REQUESTED", f"{INFO}/direct_url.json", f"{INFO}/uv_cache.json"]


def lines(record: Path) -> list[str]:
    return record.read_text().splitlines(keepends=True)


# -- damages: each rewrites beta's RECORD and returns what the RECORD difference says ------
# (the difference's ``actual`` with the store, and without it)


def _emptied(record: Path) -> tuple[str, str]:
    record.write_text("")
    return "empty", "empty"


def _cut_to_three_lines(record: Path) -> tuple[str, str]:
    kept = lines(record)[:3]  # uv sorts it: INSTALLER, METADATA, RECORD
    assert [ln.split(",")[0] for ln in kept] == [
        f"{INFO}/{n}" for n in ("INSTALLER", "METADATA", "RECORD")
    ]
    record.write_text("".join(kept))
    unlisted = sorted([*INSTALLERS, f"{INFO}/WHEEL"])
    with_wheel = ", ".join([*unlisted, "beta/__init__.py"])
    return f"no line for {with_wheel}", f"no line for {', '.join(unlisted)}"


def _own_line_dropped(record: Path) -> tuple[str, str]:
    record.write_text("".join(ln for ln in lines(record) if not ln.startswith(f"{INFO}/RECORD,")))
    return (f"no line for {INFO}/RECORD",) * 2


def _size_not_a_number(record: Path) -> tuple[str, str]:
    text = lines(record)
    n = next(i for i, ln in enumerate(text) if ln.startswith("beta/__init__.py,"))
    path, digest, _ = text[n].rstrip("\n").split(",")
    text[n] = f"{path},{digest},twenty\n"
    record.write_text("".join(text))
    return (f"line {n + 1}: size 'twenty' is not a number",) * 2


def _not_utf8(record: Path) -> tuple[str, str]:
    record.write_bytes(record.read_bytes() + b"caf\xe9.py,,\n")
    return ("unreadable: 'utf-8' codec can't decode byte 0xe9",) * 2


# (damage; whether the package folder is then nobody's with the store, and without it): the
# locked wheel vouches for its files when the RECORD is still read; without the wheel only
# the RECORD can, and an emptied or cut one no longer does.
DAMAGES: list[tuple[Callable[[Path], tuple[str, str]], bool, bool]] = [
    (_emptied, False, True),
    (_cut_to_three_lines, False, True),
    (_own_line_dropped, False, False),
    (_size_not_a_number, False, False),
    (_not_utf8, True, True),  # nothing read: the wheel is not compared either
]


@pytest.mark.parametrize(
    ("damage", "unowned_stored", "unowned_alone"),
    DAMAGES,
    ids=[d.__name__.strip("_") for d, _, _ in DAMAGES],
)
@pytest.mark.parametrize("stored", [True, False], ids=["store", "no-store"])
@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_a_damaged_record_is_reported_as_changed(
    env: Path,
    made: Made,  # noqa: F811
    damage: Callable[[Path], tuple[str, str]],
    unowned_stored: bool,
    unowned_alone: bool,
    stored: bool,
    full: bool,
) -> None:
    record = site_of(env) / INFO / "RECORD"
    with_store, without = damage(record)
    report = verify(made.lock, env, full=full, store=made.store if stored else None)
    first, *rest = report.differences
    assert (first.kind, first.name, first.path) == ("changed", "beta", str(record))
    assert first.expected == EXPECTED
    assert (first.actual or "").startswith(with_store if stored else without), first.actual
    # Nothing else, but the package folder when nothing claims it any more.
    unowned = unowned_stored if stored else unowned_alone
    assert [(d.kind, d.path) for d in rest] == [("unowned", str(site_of(env) / "beta"))] * unowned


def test_a_blank_line_is_no_difference(env: Path, made: Made) -> None:  # noqa: F811
    """importlib.metadata raises on a blank RECORD line; it lists nothing, so it is none."""
    record = site_of(env) / INFO / "RECORD"
    text = lines(record)
    record.write_text("".join([*text[:2], "\n", *text[2:], "\n"]))
    assert verify(made.lock, env, full=True, store=made.store).identical


def test_a_record_gone_is_removed(env: Path, made: Made) -> None:  # noqa: F811
    record = site_of(env) / INFO / "RECORD"
    record.unlink()
    report = verify(made.lock, env, store=made.store)
    assert [(d.kind, d.path) for d in report.differences[:1]] == [("removed", str(record))]


@pytest.mark.parametrize("damage", [_emptied, _cut_to_three_lines], ids=["emptied", "cut"])
def test_the_hint_makes_a_damaged_record_whole_again(
    env: Path,
    made: Made,  # noqa: F811
    damage: Callable[[Path], tuple[str, str]],
) -> None:
    damage(site_of(env) / INFO / "RECORD")
    report = verify(made.lock, env, store=made.store)
    hint = VerifyMismatchError(report).hint or ""
    assert f"`envship install {env} --reinstall --lock {made.lock.path}`" in hint
    finish(hint)
    assert verify(made.lock, env, full=True, store=made.store).identical

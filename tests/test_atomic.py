"""``write_atomic``: one rename, the mode kept, and (when asked) a symlink kept as a link."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from envship._atomic import write_atomic


def _plain(tmp_path: Path) -> Path:
    (tmp_path / "real").write_text("old")
    return tmp_path / "real"


def _link(tmp_path: Path) -> Path:
    (tmp_path / "real").write_text("old")
    (tmp_path / "link").symlink_to("real")
    return tmp_path / "link"


def _chain(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "real").write_text("old")
    (tmp_path / "mid").symlink_to(Path("d") / "real")
    (tmp_path / "link").symlink_to("mid")
    return tmp_path / "link"


def _dangling(tmp_path: Path) -> Path:
    (tmp_path / "link").symlink_to("real")
    return tmp_path / "link"


@pytest.mark.parametrize(
    ("make", "written"),
    [
        (_plain, "real"),
        (_link, "real"),
        (_chain, "d/real"),  # every link of the chain stays, the file at its end changes
        (_dangling, "real"),  # the link's target is made
    ],
)
def test_through_links_writes_the_file_a_link_names(
    tmp_path: Path, make: Callable[[Path], Path], written: str
) -> None:
    path = make(tmp_path)
    links = {p: os.readlink(p) for p in tmp_path.rglob("*") if p.is_symlink()}
    write_atomic(path, "new", through_links=True)
    assert (tmp_path / written).read_text() == "new"
    assert not (tmp_path / written).is_symlink()
    assert {p: os.readlink(p) for p in tmp_path.rglob("*") if p.is_symlink()} == links
    assert not [p for p in tmp_path.rglob("*.partial")]


def test_without_through_links_the_link_is_replaced(tmp_path: Path) -> None:
    """What every other writer keeps: a rename onto the name, the link's target untouched."""
    path = _link(tmp_path)
    write_atomic(path, "new")
    assert not path.is_symlink() and path.read_text() == "new"
    assert (tmp_path / "real").read_text() == "old"


def test_a_link_loop_is_an_os_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "a", "new", through_links=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_the_mode_of_the_replaced_file_is_kept(tmp_path: Path) -> None:
    path = _link(tmp_path)
    (tmp_path / "real").chmod(0o640)
    write_atomic(path, b"new", through_links=True)
    assert (tmp_path / "real").stat().st_mode & 0o777 == 0o640
    write_atomic(tmp_path / "fresh", b"x")
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o644

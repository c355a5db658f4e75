"""The merged file system of an image's layers, read without extracting (envship.layerview)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from envship.errors import ImageError
from envship.layerfs import extract_layer
from envship.layerview import LayerView, read_file, view_of
from test_layerfs import EXPECTED, tar_of, three_layer_blobs


@pytest.fixture
def three_layers(tmp_path: Path) -> list[Path]:
    return three_layer_blobs(tmp_path / "blobs")


def test_merged_view_matches_extraction(three_layers: list[Path]) -> None:
    view = LayerView(three_layers)
    kinds = {p: ("dir" if i.kind == "dir" else i.kind) for p, i in view.files.items()}
    assert set(kinds) == set(EXPECTED)
    assert view.files["etc/keep"].layer == 1
    assert view.files["usr/bin/python3.11-hard"].kind == "hardlink"
    assert view.resolve("/usr/local/bin/python") == "usr/bin/python3.11"
    assert view.read("/usr/local/bin/python") == b"py"
    assert view.read("lib/libc.so.6") == b"GLIBC_2.36 libc"
    assert view.read_many(["usr/bin/python3.11-hard", "etc/keep", "var/gone"]) == {
        "usr/bin/python3.11-hard": b"py",
        "etc/keep": b"replaced",
        "var/gone": b"now a file",
    }
    assert read_file(three_layers, "/lib/extra.so") == b"extra"  # through lib -> usr/lib
    py = ("sha256:" + hashlib.sha256(b"py").hexdigest(), 2)
    assert view.hash_files(lambda p: p.startswith("usr/bin/")) == {
        "usr/bin/python3.11": py,
        "usr/bin/python3.11-hard": py,
    }
    symlink = view.get("usr/bin/python3")
    assert symlink is not None and symlink.target == "python3.11"


@pytest.mark.parametrize(
    ("path", "message"),
    [("etc/drop", "does not exist"), ("opt/old/a", "does not exist"), ("etc", "not a regular")],
)
def test_merged_view_read_errors(three_layers: list[Path], path: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        LayerView(three_layers).read(path)


def test_contents_are_those_extraction_gives_for_repeated_names_and_link_chains(
    tmp_path: Path,
) -> None:
    # A hard link names the entry before it; a name written twice ends as the last one.
    blob = tar_of(
        tmp_path / "l.tgz",
        ("f", "file", "one"),
        ("g", "hardlink", "f"),
        ("f", "file", "two"),
        ("h", "hardlink", "g"),
    )
    extract_layer(blob, tmp_path / "root", layer="dups")
    on_disk = {name: (tmp_path / "root" / name).read_bytes() for name in "fgh"}
    assert on_disk == {"f": b"two", "g": b"one", "h": b"one"}
    view = LayerView([blob])
    assert view.read_many(["f", "g", "h"]) == on_disk
    assert view.files["f"].size == 3
    digests = {p: d for p, (d, _) in view.hash_files().items()}
    assert digests == {p: "sha256:" + hashlib.sha256(c).hexdigest() for p, c in on_disk.items()}


def test_a_hard_link_to_nothing_in_its_layer_has_no_content(tmp_path: Path) -> None:
    lower = tar_of(tmp_path / "lower.tgz", ("target", "file", "in another layer"))
    upper = tar_of(tmp_path / "upper.tgz", ("link", "hardlink", "target"))
    view = LayerView([lower, upper], names=["lower", "upper"])
    assert view.files["link"].kind == "hardlink"
    with pytest.raises(ImageError, match="layer upper has no file content for 'target'"):
        view.read("link")
    assert set(view.hash_files()) == {"target"}


def test_one_view_per_list_of_layers(three_layers: list[Path]) -> None:
    """A base probed and then placed into is read once per process."""
    first = view_of(three_layers)
    assert view_of(list(three_layers)) is first  # any sequence of the same blobs
    assert first.files == LayerView(three_layers).files
    assert view_of(three_layers[:2]) is not first

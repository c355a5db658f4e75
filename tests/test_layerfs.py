"""Safe reading of hostile layers and applying them onto a folder (envship.layerfs)."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from envship.errors import ImageError, UnsafeLayerError
from envship.layer import LayerWriter
from envship.layerfs import extract_layer, iter_layer, read_layer
from envship.layerview import LayerView, merged_files
from test_layer import MTIME, write_layer

# -- reading hostile layers ----------------------------------------------------------------------


def tar_of(path: Path, *members: tuple[str, str, str | bytes], gz: bool = True) -> Path:
    """A tar (gzip by default) of (name, kind, data or link target) built with tarfile,
    which writes whatever it is told: the way a hostile layer is made."""
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "blk": tarfile.BLKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.mode = 0o755 if kind == "dir" else 0o777
            if kind in ("symlink", "hardlink"):
                assert isinstance(payload, str)
                info.linkname = payload
            tar.addfile(info)
    return path


@pytest.fixture
def absolute_path(tmp_path: Path) -> Path:
    return tar_of(tmp_path / "l.tgz", ("/etc/cron.d/evil", "file", "x"))


@pytest.fixture
def dotdot_path(tmp_path: Path) -> Path:
    return tar_of(tmp_path / "l.tgz", ("usr/../../evil", "file", "x"))


@pytest.fixture
def escaping_symlink(tmp_path: Path) -> Path:
    return tar_of(tmp_path / "l.tar", ("usr/lib/evil", "symlink", "../../../etc"), gz=False)


@pytest.fixture
def escaping_hardlink(tmp_path: Path) -> Path:
    return tar_of(tmp_path / "l.tgz", ("usr/evil", "hardlink", "../../etc/shadow"))


@pytest.fixture
def absolute_hardlink(tmp_path: Path) -> Path:
    return tar_of(tmp_path / "l.tgz", ("usr/evil", "hardlink", "/etc/shadow"))


@pytest.fixture
def parent_whiteout(tmp_path: Path) -> Path:
    return tar_of(tmp_path / "l.tgz", ("usr/.wh..", "file", ""))


UNSAFE = [
    ("absolute_path", "absolute path"),
    ("dotdot_path", "'..'"),
    ("escaping_symlink", "outside the root"),
    ("escaping_hardlink", "'..'"),
    ("absolute_hardlink", "absolute path"),
    ("parent_whiteout", "whiteout"),
]


@pytest.mark.parametrize(("fixture", "message"), UNSAFE)
def test_iter_layer_refuses(request: pytest.FixtureRequest, fixture: str, message: str) -> None:
    blob: Path = request.getfixturevalue(fixture)
    with pytest.raises(UnsafeLayerError, match=message) as caught:
        list(iter_layer(blob, layer="evil"))
    assert caught.value.layer == "evil" and caught.value.exit_code == 4


SELECTIONS: dict[str, Callable[[str], bool] | None] = {
    "everything": None,
    "the safe entry only": lambda p: p == "a-first-file",
    "nothing": lambda p: False,
}


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize(("fixture", "message"), UNSAFE)
def test_extract_layer_refuses_before_writing(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, message: str, selection: str
) -> None:
    # An entry ``only`` leaves out is still checked: the layer as a whole is refused.
    only = SELECTIONS[selection]
    blob: Path = request.getfixturevalue(fixture)
    with tarfile.open(blob) as tar:
        members = [(m, tar.extractfile(m) if m.isreg() else None) for m in tar.getmembers()]
        with tarfile.open(tmp_path / "mixed.tgz", "w:gz") as out:
            out.addfile(tarfile.TarInfo("a-first-file"), io.BytesIO(b""))
            for member, reader in members:
                out.addfile(member, reader)
    new_dest = tmp_path / "new"
    with pytest.raises(UnsafeLayerError, match=message):
        extract_layer(tmp_path / "mixed.tgz", new_dest, layer="evil", only=only)
    assert not new_dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".new")] == []
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(UnsafeLayerError, match=message):
        extract_layer(tmp_path / "mixed.tgz", existing, layer="evil", only=only)
    assert list(existing.iterdir()) == []


# Device nodes and FIFOs: a root imported with `docker import` keeps /dev, and engines
# run it. They are read, and never made on this machine.
SPECIAL = {
    "a character device": ("dev/full", "chr"),
    "a block device": ("dev/sda", "blk"),
    "a FIFO": ("run/initctl", "fifo"),
}


@pytest.mark.parametrize("kind", SPECIAL)
def test_device_nodes_and_fifos_are_read_and_never_made(tmp_path: Path, kind: str) -> None:
    name, tar_kind = SPECIAL[kind]
    lower = tar_of(tmp_path / "lower.tgz", ("dev/full", "file", "x"), ("run/initctl", "file", "y"))
    special = tar_of(
        tmp_path / "special.tgz", (name, tar_kind, ""), ("etc/hostname", "file", "box\n")
    )
    entries = [(info.name, info.type) for info, _ in iter_layer(special, layer="base")]
    assert (
        name,
        {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[tar_kind],
    ) in entries
    new = tmp_path / "new"
    assert extract_layer(special, new, layer="base") == (name,)
    assert not os.path.lexists(new / name)
    assert (new / "etc" / "hostname").read_text() == "box\n"
    # Onto a lower layer's file: the entry replaces it, as in the image, with nothing.
    onto = tmp_path / "onto"
    assert extract_layer(lower, onto, layer="lower") == ()
    assert extract_layer(special, onto, layer="base") == (name,)
    assert not os.path.lexists(onto / name)
    assert extract_layer(special, tmp_path / "none", layer="base", only=lambda p: False) == ()


def test_not_a_tar(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\x1f\x8bnot gzip at all")
    with pytest.raises(ImageError, match="not a readable tar"):
        list(iter_layer(tmp_path / "junk", layer="junk"))


def test_a_symlink_from_a_lower_layer_is_followed_inside_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    lower = tar_of(
        tmp_path / "lower.tgz",
        ("escape", "symlink", str(outside)),  # absolute: an image path, not a host path
        ("lib", "symlink", "usr/lib"),  # Debian's merged /usr
    )
    upper = tar_of(
        tmp_path / "upper.tgz",
        ("escape/pwned", "file", "x"),
        ("lib/libfoo.so", "file", "elf"),
    )
    dest = tmp_path / "root"
    extract_layer(lower, dest, layer="lower")
    extract_layer(upper, dest, layer="upper")
    assert list(outside.iterdir()) == []
    assert (dest / str(outside).lstrip("/") / "pwned").read_text() == "x"
    assert (dest / "usr/lib/libfoo.so").read_text() == "elf"
    files = merged_files([lower, upper])
    assert files[str(outside).lstrip("/") + "/pwned"].kind == "file"
    assert files["usr/lib/libfoo.so"].layer == 1


def test_directory_modes_never_follow_a_later_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    outside.chmod(0o700)
    (outside / "b").chmod(0o700)
    blob = tar_of(
        tmp_path / "l.tgz",
        ("a", "dir", ""),
        ("a/b", "dir", ""),
        ("a", "symlink", str(outside)),
    )
    extract_layer(blob, tmp_path / "root", layer="swap")
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700
    assert stat.S_IMODE((outside / "b").stat().st_mode) == 0o700
    assert os.readlink(tmp_path / "root/a") == str(outside)


def test_a_directory_entry_replaces_a_lower_symlink_as_docker_does(tmp_path: Path) -> None:
    # moby's archive.UnpackLayer removes whatever is at a path unless both are directories;
    # so a layer must name real paths ("usr/lib/x"), never "lib/x" over a merged-/usr base.
    lower = tar_of(tmp_path / "lower.tgz", ("lib", "symlink", "usr/lib"))
    upper = write_layer(tmp_path, lambda w: w.add_file("lib/x.so", b"x")).path
    dest = tmp_path / "root"
    extract_layer(lower, dest, layer="lower")
    extract_layer(upper, dest, layer="upper")
    assert not (dest / "lib").is_symlink() and (dest / "lib/x.so").is_file()
    view = LayerView([lower, upper])
    assert view.files["lib"].kind == "dir" and "lib/x.so" in view.files


def test_relative_symlink_climbing_out_is_refused_even_when_harmless_in_tar(tmp_path: Path) -> None:
    blob = tar_of(tmp_path / "l.tgz", ("a/b", "symlink", "../../x"))
    with pytest.raises(UnsafeLayerError, match="outside the root"):
        merged_files([blob])


# -- whiteouts -------------------------------------------------------------------------------------


def three_layer_blobs(dest: Path) -> list[Path]:
    """Base, middle (whiteouts, an opaque dir) and top layers; :data:`EXPECTED` is the result."""

    def base(w: LayerWriter) -> None:
        w.add_file("etc/keep", b"keep")
        w.add_file("etc/drop", b"drop")
        w.add_file("opt/old/a", b"a")
        w.add_file("opt/old/sub/b", b"b")
        w.add_file("var/gone/x", b"x")
        w.add_file("usr/lib/libc.so.6", b"GLIBC_2.36 libc")
        w.add_symlink("lib", "usr/lib")
        w.add_file("usr/bin/python3.11", b"py")
        w.add_symlink("usr/bin/python3", "python3.11")
        w.add_symlink("usr/local/bin/python", "/usr/bin/python3")
        w.add_hardlink("usr/bin/python3.11-hard", "usr/bin/python3.11")

    def middle(w: LayerWriter) -> None:
        w.add_whiteout("etc/drop")
        w.add_opaque("opt/old")
        w.add_file("opt/old/new", b"new")
        w.add_whiteout("var/gone")
        w.add_file("etc/keep", b"replaced")

    def top(w: LayerWriter) -> None:
        w.add_file("var/gone", b"now a file")
        w.add_file("usr/lib/extra.so", b"extra")

    return [write_layer(dest, b).path for b in (base, middle, top)]


EXPECTED = {
    "etc": "dir",
    "etc/keep": "replaced",
    "opt": "dir",
    "opt/old": "dir",
    "opt/old/new": "new",
    "var": "dir",
    "var/gone": "now a file",
    "usr": "dir",
    "usr/lib": "dir",
    "usr/lib/libc.so.6": "GLIBC_2.36 libc",
    "usr/lib/extra.so": "extra",
    "lib": "-> usr/lib",
    "usr/bin": "dir",
    "usr/bin/python3.11": "py",
    "usr/bin/python3": "-> python3.11",
    "usr/local": "dir",
    "usr/local/bin": "dir",
    "usr/local/bin/python": "-> /usr/bin/python3",
    "usr/bin/python3.11-hard": "py",
}


@pytest.fixture
def three_layers(tmp_path: Path) -> list[Path]:
    return three_layer_blobs(tmp_path / "blobs")


def test_extract_layers_applies_whiteouts(tmp_path: Path, three_layers: list[Path]) -> None:
    dest = tmp_path / "root"
    for i, blob in enumerate(three_layers):
        extract_layer(blob, dest, layer=str(i))
    found: dict[str, str] = {}
    for path in sorted(dest.rglob("*")):
        rel = path.relative_to(dest).as_posix()
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = path.read_text()
    assert found == EXPECTED


def test_extract_only_selected(tmp_path: Path, three_layers: list[Path]) -> None:
    dest = tmp_path / "only"
    extract_layer(three_layers[0], dest, layer="0", only=lambda p: p.startswith("etc/"))
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "etc",
        "etc/drop",
        "etc/keep",
    ]


def test_extract_nothing_selected_leaves_an_existing_folder_alone(
    tmp_path: Path, three_layers: list[Path]
) -> None:
    dest = tmp_path / "root"
    extract_layer(three_layers[0], dest, layer="0")
    before = sorted((p.relative_to(dest).as_posix(), p.is_dir()) for p in dest.rglob("*"))
    # The middle layer's whiteouts and files are all outside opt/envship.
    inside = "opt/envship"
    for blob in three_layers[1:]:
        extract_layer(
            blob, dest, layer="1", only=lambda p: p == inside or p.startswith(inside + "/")
        )
    assert sorted((p.relative_to(dest).as_posix(), p.is_dir()) for p in dest.rglob("*")) == before
    assert (dest / "etc/drop").read_text() == "drop"


# -- entries that change what a path means, within one layer ------------------------------------


def test_a_directory_replaced_by_a_link_sends_later_entries_through_it(tmp_path: Path) -> None:
    blob = tar_of(
        tmp_path / "l.tgz",
        ("a", "dir", ""),
        ("a/x", "file", "x"),
        ("b", "dir", ""),
        ("a", "symlink", "b"),
        ("a/y", "file", "y"),
    )
    dest = tmp_path / "root"
    extract_layer(blob, dest, layer="swap")
    assert os.readlink(dest / "a") == "b"
    assert sorted(os.listdir(dest / "b")) == ["y"]
    view = LayerView([blob])
    assert sorted(view.files) == ["a", "b", "b/y"]


def test_a_link_replaced_by_a_directory_is_no_longer_followed(tmp_path: Path) -> None:
    blob = tar_of(
        tmp_path / "l.tgz",
        ("b", "dir", ""),
        ("a", "symlink", "b"),
        ("a/x", "file", "x"),
        ("a", "dir", ""),
        ("a/y", "file", "y"),
    )
    dest = tmp_path / "root"
    extract_layer(blob, dest, layer="swap")
    assert not (dest / "a").is_symlink()
    assert (sorted(os.listdir(dest / "a")), sorted(os.listdir(dest / "b"))) == (["y"], ["x"])
    assert sorted(LayerView([blob]).files) == ["a", "a/y", "b", "b/x"]


def test_a_whiteout_of_a_lower_link_stops_later_entries_following_it(tmp_path: Path) -> None:
    lower = tar_of(tmp_path / "lower.tgz", ("usr/lib", "dir", ""), ("lib", "symlink", "usr/lib"))
    upper = tar_of(
        tmp_path / "upper.tgz",
        ("lib/a", "file", "a"),  # through the lower layer's link: usr/lib/a
        (".wh.lib", "file", ""),
        ("lib", "dir", ""),
        ("lib/b", "file", "b"),  # a real lib/ now
    )
    dest = tmp_path / "root"
    extract_layer(lower, dest, layer="lower")
    extract_layer(upper, dest, layer="upper")
    assert sorted(os.listdir(dest / "usr/lib")) == ["a"]
    assert not (dest / "lib").is_symlink() and sorted(os.listdir(dest / "lib")) == ["b"]
    view = LayerView([lower, upper])
    assert sorted(view.files) == ["lib", "lib/b", "usr/lib", "usr/lib/a"]


def test_a_link_replaced_by_a_file_is_not_a_directory_any_more(tmp_path: Path) -> None:
    blob = tar_of(
        tmp_path / "l.tgz",
        ("real", "dir", ""),
        ("d", "symlink", "real"),
        ("d/x", "file", "x"),
        ("d", "file", "now a file"),
        ("d/y", "file", "y"),
    )
    with pytest.raises(ImageError, match="which is not a directory"):
        extract_layer(blob, tmp_path / "root", layer="swap")
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("dangling", [False, True])
def test_a_file_over_a_link_replaces_the_link_never_its_target(
    tmp_path: Path, dangling: bool
) -> None:
    outside = tmp_path / "outside"
    if not dangling:
        outside.write_text("host file")
    lower = tar_of(tmp_path / "lower.tgz", ("etc/passwd", "symlink", str(outside)))
    upper = tar_of(tmp_path / "upper.tgz", ("etc/passwd", "file", "image file"))
    both = tar_of(
        tmp_path / "both.tgz",
        ("etc/passwd", "symlink", str(outside)),
        ("etc/passwd", "file", "image file"),
    )
    layered, single = tmp_path / "layered", tmp_path / "single"
    extract_layer(lower, layered, layer="lower")
    extract_layer(upper, layered, layer="upper")
    extract_layer(both, single, layer="both")
    for dest in (layered, single):
        assert not (dest / "etc/passwd").is_symlink()
        assert (dest / "etc/passwd").read_text() == "image file"
        assert sorted(os.listdir(dest / "etc")) == ["passwd"]  # no temporary file left
    assert outside.exists() != dangling
    if not dangling:
        assert outside.read_text() == "host file"


# -- blobs that are not what they claim ------------------------------------------------------------


def two_member_gzip(tmp_path: Path) -> Path:
    """A valid layer whose gzip stream is two members (RFC 1952 allows it) with zero
    padding after them, as some tools write."""
    raw = tar_of(tmp_path / "plain.tar", ("a", "file", "a" * 3000), ("b", "file", "b"), gz=False)
    data = raw.read_bytes()
    blob = tmp_path / "two.tgz"
    blob.write_bytes(gzip.compress(data[:1536]) + gzip.compress(data[1536:]) + bytes(8))
    return blob


def test_a_gzip_of_several_members_reads_whole(tmp_path: Path) -> None:
    blob = two_member_gzip(tmp_path)
    assert [(i.name, r.read() if r else None) for i, r in iter_layer(blob, layer="two")] == [
        ("a", b"a" * 3000),
        ("b", b"b"),
    ]
    extract_layer(blob, tmp_path / "root", layer="two")
    assert (tmp_path / "root/b").read_text() == "b"


def broken(tmp_path: Path, how: str) -> Path:
    good = tar_of(tmp_path / "good.tgz", ("etc/a", "file", os.urandom(4000).hex()))
    data = bytearray(good.read_bytes())
    if how == "truncated gzip":
        data = data[:-200]
    elif how == "wrong gzip checksum":
        data[-8] ^= 0xFF  # the CRC-32 in the trailer (RFC 1952)
    elif how == "truncated tar":
        data = bytearray(gzip.decompress(bytes(data))[:2048])
    elif how == "garbage after the gzip member":
        data += b"not gzip"
    blob = tmp_path / "broken"
    blob.write_bytes(bytes(data))
    return blob


BROKEN = ["truncated gzip", "wrong gzip checksum", "truncated tar", "garbage after the gzip member"]


@pytest.mark.parametrize("how", BROKEN)
def test_a_broken_blob_is_an_image_error_and_writes_nothing(tmp_path: Path, how: str) -> None:
    blob = broken(tmp_path, how)
    with pytest.raises(ImageError, match="not a readable tar"):
        LayerView([blob]).read("etc/a")
    with pytest.raises(ImageError, match="not a readable tar"):
        extract_layer(blob, tmp_path / "new", layer="broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "good.tgz"]
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ImageError, match="not a readable tar"):
        extract_layer(blob, existing, layer="broken")
    assert list(existing.iterdir()) == []


# -- read_layer: what a runtime would put where, for verify --image ----------------------------


def in_env(name: str) -> bool:
    return name == "env" or name.startswith("env/")


def test_read_layer_selects_what_lands_in_the_folder_through_a_link(tmp_path: Path) -> None:
    """``x -> /env`` then ``x/evil.pth``: a runtime writes env/evil.pth. extract_layer, by
    names, does not (its callers select by name); read_layer does, and a file written
    through a link elsewhere is left out."""
    blob = tar_of(
        tmp_path / "l.tgz",
        ("env/ok.py", "file", "ok"),
        ("x", "symlink", "/env"),
        ("x/evil.pth", "file", "import os"),
        ("y", "symlink", "/srv"),
        ("y/other.pth", "file", "import os"),
    )
    by_name = tmp_path / "by-name"
    extract_layer(blob, by_name, layer="l", only=in_env)
    assert sorted(os.listdir(by_name / "env")) == ["ok.py"]
    read = tmp_path / "read"
    read.mkdir()
    assert read_layer(blob, read, layer="l", only=in_env) == ()
    assert sorted(os.listdir(read / "env")) == ["evil.pth", "ok.py"]
    assert (read / "env/evil.pth").read_bytes() == b"import os"
    assert not (read / "srv").exists()


def test_read_layer_stands_in_for_fifos_and_devices_and_copies_hard_links(tmp_path: Path) -> None:
    """Nothing special is made: an empty file stands where the FIFO or device is, named
    with its inode; a hard link to a file that was not read gets ``missing``'s bytes."""
    blob = tar_of(
        tmp_path / "l.tgz",
        ("env/fifo", "fifo", ""),
        ("env/null", "chr", ""),
        ("srv/evil.pth", "file", "import os"),
        ("env/zz.pth", "hardlink", "srv/evil.pth"),
    )
    dest = tmp_path / "read"
    dest.mkdir()
    asked: list[str] = []

    def missing(name: str, write: Callable[[IO[bytes]], None]) -> bool:
        asked.append(name)
        write(io.BytesIO(b"the bytes"))
        return True

    found = read_layer(blob, dest, layer="l", only=in_env, missing=missing)
    assert [(s.name, s.path, s.kind) for s in found] == [
        ("env/fifo", "env/fifo", "a FIFO"),
        ("env/null", "env/null", "a character device"),
    ]
    for special in found:
        st = os.lstat(dest / special.path)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_ino == special.inode
    assert asked == ["srv/evil.pth"] and (dest / "env/zz.pth").read_bytes() == b"the bytes"
    # Without the bytes, the hard link is as unreadable as extract_layer finds it.
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(ImageError, match="has no target"):
        read_layer(blob, again, layer="l", only=in_env)
    # Nor when the source has no such file.
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    with pytest.raises(ImageError, match="has no target"):
        read_layer(blob, nowhere, layer="l", only=in_env, missing=lambda name, write: False)


def test_a_hard_link_to_a_big_lower_file_is_streamed_not_held(tmp_path: Path) -> None:
    """A hostile image may hard-link its environment to a file of any size in a lower
    layer: the bytes stream from that layer into the copy (LayerView.stream), and this
    process's memory stays far below the file's size."""
    size = 48 * 1024 * 1024
    # Plain tars: gzip of zeros would have zlib inflate 1000 times its input buffer at
    # once, a bounded cost that says nothing of what holds the file.
    lower = tar_of(tmp_path / "lower.tar", ("srv/big.bin", "file", bytes(size)), gz=False)
    upper = tar_of(tmp_path / "upper.tar", ("env/big.pth", "hardlink", "srv/big.bin"), gz=False)
    view = LayerView([lower, upper])
    dest = tmp_path / "read"
    dest.mkdir()
    tracemalloc.start()
    try:
        read_layer(upper, dest, layer="upper", only=in_env, missing=view.stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (dest / "env/big.pth").stat().st_size == size
    assert peak < size // 4, f"{peak} bytes held for a {size}-byte file"  # 1 MiB reads


def test_a_link_climbing_above_the_root_is_read_inside_it_and_never_extracted(
    tmp_path: Path,
) -> None:
    """Asked to climb, the layer is read (its ``..`` stop at the root, as a runtime's);
    extract_layer refuses it as it always does, and so does a read not asked to."""
    blob = tar_of(tmp_path / "l.tgz", ("env/a", "symlink", "../../../etc/passwd"))
    entries = iter_layer(blob, layer="l", climb=True)
    assert [i.linkname for i, _ in entries] == ["../../../etc/passwd"]
    assert merged_files([blob], climb=True)["env/a"].kind == "symlink"
    assert LayerView([blob], climb=True).files["env/a"].kind == "symlink"
    with pytest.raises(UnsafeLayerError, match="outside the root"):
        extract_layer(blob, tmp_path / "out", layer="l")
    with pytest.raises(UnsafeLayerError, match="outside the root"):
        merged_files([blob])
    with pytest.raises(UnsafeLayerError, match="outside the root"):
        list(iter_layer(blob, layer="l"))
    dest = tmp_path / "read"
    dest.mkdir()
    read_layer(blob, dest, layer="l", only=in_env)
    assert os.readlink(dest / "env/a") == "../../../etc/passwd"
    assert not (tmp_path / "out").exists()

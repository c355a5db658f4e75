"""Deterministic layer writing, and safe reading of hostile layers (envship.layer)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from envship.errors import ImageError, UnsafeLayerError
from envship.layer import (
    LayerBlob,
    LayerView,
    LayerWriter,
    extract_layer,
    iter_layer,
    merged_files,
    read_file,
)

MTIME = 1_700_000_000
LONG_DIR = "opt/envship/venv/lib/python3.11/site-packages/" + "/".join(["deeply_nested"] * 8)


def write_layer(dest: Path, build: Callable[[LayerWriter], None], **kwargs: object) -> LayerBlob:
    with LayerWriter(dest, mtime=MTIME, **kwargs) as writer:  # type: ignore[arg-type]
        build(writer)
        return writer.close()


def sample(writer: LayerWriter) -> None:
    writer.add_dir("opt/envship")
    writer.add_file("opt/envship/venv/pyvenv.cfg", b"home = /usr/bin\n")
    writer.add_file("opt/envship/venv/bin/tool", b"#!/bin/sh\necho hi\n", mode=0o775)
    writer.add_stream("opt/envship/big.bin", io.BytesIO(b"x" * 300_000), 300_000, mode=0o600)
    writer.add_symlink("opt/envship/venv/bin/python", "/usr/bin/python3.11")
    writer.add_hardlink("opt/envship/venv/bin/tool2", "opt/envship/venv/bin/tool")
    writer.add_file(f"{LONG_DIR}/module_with_a_rather_long_name.py", b"x = 1\n")
    writer.add_file("opt/envship/ünïcode.txt", b"utf-8 names go into PAX records\n")
    writer.add_symlink("opt/envship/long-link", "../" * 60 + "target")


def make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3.11").write_bytes(b"\x7fELF fake")
    (root / "usr/bin/python3.11").chmod(0o750)
    (root / "usr/bin/python3").symlink_to("python3.11")
    (root / "etc").mkdir()
    (root / "etc/secret").write_text("s")
    (root / "etc/secret").chmod(0o600)
    os.link(root / "usr/bin/python3.11", root / "usr/bin/python3.11-hard")
    (root / "dev").mkdir()
    (root / "dev/null-ish").write_text("skipped with dev/")
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    os.mkfifo(root / "tmp/fifo")
    (root / "var/cache").mkdir(parents=True)
    (root / "var/cache/junk.deb").write_bytes(b"deb")


# -- writing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_same_calls_give_identical_blobs_anywhere(tmp_path: Path, compress: bool) -> None:
    first = write_layer(tmp_path / "one", sample, compress=compress)
    os.utime(tmp_path, (0, 0))
    second = write_layer(tmp_path / "elsewhere" / "two", sample, compress=compress)
    assert first.path.read_bytes() == second.path.read_bytes()
    assert (first.digest, first.diff_id, first.size) == (second.digest, second.diff_id, second.size)
    assert first.path.parent != second.path.parent


def test_add_tree_is_deterministic_across_folders_clocks_and_umask(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    old = os.umask(0o077)
    try:
        make_tree(tmp_path / "b")
    finally:
        os.umask(old)
    for path in (tmp_path / "b").rglob("*"):
        if not path.is_symlink():
            os.utime(path, (12345, 12345))
    digests = set()
    for name in "ab":
        with LayerWriter(tmp_path / f"out-{name}", mtime=MTIME) as writer:
            writer.add_tree(tmp_path / name)
            digests.add(writer.close().digest)
    assert len(digests) == 1


def test_digests_sizes_and_gzip_header(tmp_path: Path) -> None:
    blob = write_layer(tmp_path, sample)
    data = blob.path.read_bytes()
    raw = gzip.decompress(data)
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert (blob.size, blob.uncompressed_size) == (len(data), len(raw))
    assert blob.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    # RFC 1952: no FNAME/FEXTRA flags, MTIME zero, OS 255.
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
    assert len(raw) % 512 == 0 and raw.endswith(bytes(1024))
    assert blob.path.name.startswith(".layer-") and blob.path.parent == tmp_path
    assert stat.S_IMODE(blob.path.stat().st_mode) == 0o644


def test_plain_layer(tmp_path: Path) -> None:
    blob = write_layer(tmp_path, sample, compress=False)
    assert blob.media_type == "application/vnd.oci.image.layer.v1.tar"
    assert blob.digest == blob.diff_id and blob.size == blob.uncompressed_size


def test_entries_read_back_by_tarfile(tmp_path: Path) -> None:
    blob = write_layer(tmp_path, sample)
    with tarfile.open(blob.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(f"{LONG_DIR}/module_with_a_rather_long_name.py").read() == b"x = 1\n"  # type: ignore[union-attr]
    assert list(members)[:3] == ["opt", "opt/envship", "opt/envship/venv"]  # parents first, once
    assert blob.entries == len(members)
    for m in members.values():
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", MTIME)
        assert m.pax_headers.keys() <= {"path", "linkpath"}
    assert members["opt/envship/venv/bin/tool"].mode == 0o755
    assert members["opt/envship/big.bin"].mode == 0o644
    assert members["opt/envship/big.bin"].size == 300_000
    assert members["opt/envship/venv/bin/python"].linkname == "/usr/bin/python3.11"
    assert members["opt/envship/venv/bin/tool2"].islnk()
    assert "opt/envship/ünïcode.txt" in members
    assert members["opt/envship/long-link"].linkname == "../" * 60 + "target"


def test_gnu_tar_reads_the_layer(tmp_path: Path) -> None:
    blob = write_layer(tmp_path, sample)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(blob.path), "-C", str(out)], check=True)
    assert (out / LONG_DIR / "module_with_a_rather_long_name.py").read_bytes() == b"x = 1\n"
    assert (out / "opt/envship/ünïcode.txt").is_file()
    assert os.readlink(out / "opt/envship/venv/bin/python") == "/usr/bin/python3.11"
    assert (out / "opt/envship/venv/bin/tool2").stat().st_ino == (
        out / "opt/envship/venv/bin/tool"
    ).stat().st_ino


@pytest.mark.parametrize("length", [99, 100, 101, 154, 155, 156, 255, 256, 257, 400])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_names_of_every_length_read_back(tmp_path: Path, length: int, kind: str) -> None:
    # Around ustar's 100-byte name and 155-byte prefix fields, and past both (PAX).
    parts, name = [], ""
    while len(name) < length:
        parts.append("d" * min(30, length - len(name) - (1 if name else 0)) or "d")
        name = "/".join(parts)
    name = name[:length].rstrip("/")
    blob = write_layer(
        tmp_path, lambda w: w.add_dir(name) if kind == "dir" else w.add_file(name, b"x")
    )
    with tarfile.open(blob.path) as tar:
        assert tar.getnames()[-1] == name
    listing = subprocess.run(
        ["tar", "-tzf", str(blob.path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert listing[-1] == name + ("/" if kind == "dir" else "")


def test_add_tree(tmp_path: Path) -> None:
    make_tree(tmp_path / "root")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "root/tmp/sock"))
    try:
        blob = write_layer(
            tmp_path, lambda w: w.add_tree(tmp_path / "root", exclude=lambda p: p == "var/cache")
        )
    finally:
        sock.close()
    with tarfile.open(blob.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == [
        "dev",
        "etc",
        "etc/secret",
        "tmp",
        "usr",
        "usr/bin",
        "usr/bin/python3",
        "usr/bin/python3.11",
        "usr/bin/python3.11-hard",
        "var",
    ]
    assert members["usr/bin/python3.11-hard"].islnk()
    assert members["usr/bin/python3.11"].mode == 0o755
    assert members["etc/secret"].mode == 0o644
    assert members["tmp"].mode == 0o755


def test_add_tree_exact_keeps_modes_and_owners(tmp_path: Path) -> None:
    make_tree(tmp_path / "root")
    os.chown(tmp_path / "root/etc/secret", 0, 42)
    blob = write_layer(tmp_path, lambda w: w.add_tree(tmp_path / "root", under="base"), exact=True)
    with tarfile.open(blob.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["base/tmp"].mode == 0o1777
    assert members["base/etc/secret"].mode == 0o600
    assert members["base/etc/secret"].gid == 42
    assert members["base/usr/bin/python3.11"].mode == 0o750
    assert "base/dev/null-ish" in members  # only the image root's dev/ is skipped


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/./b", "", "a\0b"]
)
def test_bad_paths_are_refused(tmp_path: Path, path: str) -> None:
    with LayerWriter(tmp_path, mtime=0) as writer, pytest.raises(ImageError, match="invalid path"):
        writer.add_file(path, b"")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda w: [w.add_file("a", b""), w.add_file("a", b"")], "duplicate"),
        (lambda w: [w.add_file("a", b""), w.add_file("a/b", b"")], "not a directory"),
        (lambda w: w.add_stream("a", io.BytesIO(b"12"), 3), "ended after 2 of 3"),
        (lambda w: w.add_stream("a", io.BytesIO(b"1234"), 3), "longer than"),
        (lambda w: w.add_hardlink("a", "missing"), "not a file of this layer"),
        (lambda w: w.add_tree(Path("/nonexistent")), "not a directory"),
    ],
)
def test_misuse_is_refused_and_leaves_no_file(
    tmp_path: Path, build: Callable[[LayerWriter], object], message: str
) -> None:
    with pytest.raises(ImageError, match=message), LayerWriter(tmp_path, mtime=0) as w:
        build(w)
    assert list(tmp_path.iterdir()) == []


def test_whiteout_names_in_a_tree_are_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root/.wh.passwd").write_text("")
    with pytest.raises(ImageError, match="whiteout"), LayerWriter(tmp_path / "o", mtime=0) as w:
        w.add_tree(tmp_path / "root")


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
def char_device(tmp_path: Path) -> Path:
    return tar_of(tmp_path / "l.tgz", ("dev/mem", "chr", ""))


@pytest.fixture
def block_device(tmp_path: Path) -> Path:
    return tar_of(tmp_path / "l.tgz", ("dev/sda", "blk", ""))


@pytest.fixture
def parent_whiteout(tmp_path: Path) -> Path:
    return tar_of(tmp_path / "l.tgz", ("usr/.wh..", "file", ""))


UNSAFE = [
    ("absolute_path", "absolute path"),
    ("dotdot_path", "'..'"),
    ("escaping_symlink", "outside the root"),
    ("escaping_hardlink", "'..'"),
    ("absolute_hardlink", "absolute path"),
    ("char_device", "device node"),
    ("block_device", "device node"),
    ("parent_whiteout", "whiteout"),
]


@pytest.mark.parametrize(("fixture", "message"), UNSAFE)
def test_iter_layer_refuses(request: pytest.FixtureRequest, fixture: str, message: str) -> None:
    blob: Path = request.getfixturevalue(fixture)
    with pytest.raises(UnsafeLayerError, match=message) as caught:
        list(iter_layer(blob, layer="evil"))
    assert caught.value.layer == "evil" and caught.value.exit_code == 4


@pytest.mark.parametrize(("fixture", "message"), UNSAFE)
def test_extract_layer_refuses_before_writing(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, message: str
) -> None:
    blob: Path = request.getfixturevalue(fixture)
    with tarfile.open(blob) as tar:
        members = [(m, tar.extractfile(m) if m.isreg() else None) for m in tar.getmembers()]
        with tarfile.open(tmp_path / "mixed.tgz", "w:gz") as out:
            out.addfile(tarfile.TarInfo("a-first-file"), io.BytesIO(b""))
            for member, reader in members:
                out.addfile(member, reader)
    new_dest = tmp_path / "new"
    with pytest.raises(UnsafeLayerError, match=message):
        extract_layer(tmp_path / "mixed.tgz", new_dest, layer="evil")
    assert not new_dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".new")] == []
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(UnsafeLayerError, match=message):
        extract_layer(tmp_path / "mixed.tgz", existing, layer="evil")
    assert list(existing.iterdir()) == []


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


# -- whiteouts and the merged view -----------------------------------------------------------------


@pytest.fixture
def three_layers(tmp_path: Path) -> list[Path]:
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

    return [write_layer(tmp_path / "blobs", b).path for b in (base, middle, top)]


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


def test_extract_only_selected(tmp_path: Path, three_layers: list[Path]) -> None:
    dest = tmp_path / "only"
    extract_layer(three_layers[0], dest, layer="0", only=lambda p: p.startswith("etc/"))
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "etc",
        "etc/drop",
        "etc/keep",
    ]


FULL_DISK = """
import os, resource, signal, sys
from pathlib import Path
from envship.errors import ImageError
from envship.layer import LayerWriter
# The kernel's file-size limit stands in for a disk that fills: write() fails with EFBIG.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    with LayerWriter(Path(sys.argv[1]), mtime=0) as writer:
        writer.add_file("random.bin", os.urandom(2 << 20))
        writer.close()
except ImageError as exc:
    print(exc.message, "|", exc.hint)
"""


def test_a_full_disk_leaves_no_partial_layer(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "cannot write layer" in result.stdout and "free disk space" in result.stdout
    assert list(tmp_path.iterdir()) == []

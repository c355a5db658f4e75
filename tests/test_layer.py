"""Deterministic layer writing (envship.layer)."""

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

from envship.errors import ImageError, ImageInputError
from envship.layer import MAX_MTIME, LayerBlob, LayerWriter

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
        # A file: a path taken to be absent may not be (/nonexistent is nobody's home;
        # an audit's run made it on this machine once).
        (lambda w: w.add_tree(Path(__file__)), "not a directory"),
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


@pytest.mark.parametrize(
    ("mtime", "accepted"),
    [(0, True), (MAX_MTIME, True), (MAX_MTIME + 1, False), (-1, False)],
    ids=["epoch", "latest", "one-past-the-latest", "negative"],
)
def test_entry_times_a_tar_header_holds(tmp_path: Path, mtime: int, accepted: bool) -> None:
    """A ustar header's mtime is 11 octal digits: 0 to 8**11 - 1 (March 2242)."""
    assert MAX_MTIME == 8**11 - 1
    if not accepted:
        with pytest.raises(ImageInputError, match=f"layer mtime out of range: {mtime}") as caught:
            LayerWriter(tmp_path, mtime=mtime)
        assert caught.value.exit_code == 2
        assert caught.value.problems[0].message == f"a tar header holds 0 to {MAX_MTIME} seconds"
        assert list(tmp_path.iterdir()) == []
        return
    with LayerWriter(tmp_path / "out", mtime=mtime) as writer:
        writer.add_file("a.txt", b"a")
    blob = writer.blob
    assert blob is not None
    with tarfile.open(blob.path) as tar:
        assert [m.mtime for m in tar.getmembers()] == [mtime]

"""Blob files checked against their digests, and the cache of files already checked
(envship._blobcheck): what is remembered, and what makes a file be hashed again."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from envship import _blobcheck, ocilayout
from envship._blobcheck import SETTLE_NS, check_file, file_digest
from envship.errors import ArtifactError
from envship.oci import sha256_digest


def blob_file(folder: Path, payload: bytes) -> tuple[Path, str, int]:
    """A blob file holding ``payload``: (its path, its digest, its size)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / sha256_digest(payload).removeprefix("sha256:")
    path.write_bytes(payload)
    return path, sha256_digest(payload), len(payload)


def settled(path: Path) -> Path:
    """Give ``path`` an mtime well before now, as a base layer pulled last week has: only
    such a file is remembered as verified (_blobcheck's module docstring)."""
    old = path.stat().st_mtime_ns - 10 * SETTLE_NS
    os.utime(path, ns=(old, old))
    return path


def flip_in_place(path: Path) -> None:
    """Change one byte in the middle, written in place as an editor would: same size,
    same inode, another digest."""
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        value = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([value ^ 0x01]))


def io_read(pid: str = "self") -> int:
    """Bytes the process has read through read(2) so far (/proc/PID/io ``rchar``)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


REMEMBERED = """
import sys
from pathlib import Path
from envship._blobcheck import check_file
path, digest, size, cache = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
def rchar():
    text = Path("/proc/self/io").read_text()
    return int(next(l for l in text.splitlines() if l.startswith("rchar:")).split()[1])
before = rchar()
check_file(path, digest, size, cache=cache)
print(rchar() - before)
"""


def read_to_check(path: Path, digest: str, size: int, cache: Path) -> int:
    """Bytes a fresh process reads to check ``path`` (so nothing it remembers is in
    memory: only the on-disk cache can spare it the hashing)."""
    result = subprocess.run(
        [sys.executable, "-c", REMEMBERED, str(path), digest, str(size), str(cache)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_ocilayout_still_offers_the_check() -> None:
    """The names moved here stay importable from envship.ocilayout, where callers use them."""
    assert ocilayout.check_file is _blobcheck.check_file
    assert ocilayout.file_digest is _blobcheck.file_digest
    assert ocilayout.SETTLE_NS == _blobcheck.SETTLE_NS


def test_file_digest(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)  # several read pieces
    path, digest, size = blob_file(tmp_path, payload)
    assert file_digest(path) == (digest, size)


def test_a_mismatch_names_the_file_and_the_blob(tmp_path: Path) -> None:
    path, digest, size = blob_file(tmp_path, b"the right bytes")
    check_file(path, digest, size)
    with pytest.raises(ArtifactError) as short:
        check_file(path, digest, size + 1)
    assert short.value.exit_code == 4 and short.value.artifact == str(path)
    assert short.value.message.startswith(f"{path} does not match blob {digest}: ")
    assert short.value.expected == f"{digest} ({size + 1} bytes)"
    assert short.value.actual == f"{digest} ({size} bytes)"
    with pytest.raises(FileNotFoundError):
        check_file(tmp_path / "gone", digest, size)


def test_a_verified_settled_file_is_not_hashed_again(tmp_path: Path) -> None:
    path, digest, size = blob_file(tmp_path / "blobs", os.urandom(8 << 20))
    settled(path)
    cache = tmp_path / "verified"
    assert read_to_check(path, digest, size, cache) >= size  # hashed
    assert read_to_check(path, digest, size, cache) < size // 8  # remembered
    # Another digest asked of the same file is not taken from the cache.
    with pytest.raises(ArtifactError):
        check_file(path, "sha256:" + "0" * 64, size, cache=cache)


def test_a_new_hard_link_makes_the_next_check_hash_again(tmp_path: Path) -> None:
    """A link changes the inode's ctime, so the remembered identity no longer matches."""
    path, digest, size = blob_file(tmp_path / "blobs", os.urandom(4 << 20))
    settled(path)
    cache = tmp_path / "verified"
    assert read_to_check(path, digest, size, cache) >= size
    assert read_to_check(path, digest, size, cache) < size // 8
    os.link(path, tmp_path / "linked")
    assert read_to_check(path, digest, size, cache) >= size


def test_a_changed_file_is_hashed_again_even_with_its_mtime_restored(tmp_path: Path) -> None:
    path, digest, size = blob_file(tmp_path / "blobs", os.urandom(1 << 16))
    settled(path)
    cache = tmp_path / "verified"
    check_file(path, digest, size, cache=cache)
    when = path.stat().st_mtime_ns
    flip_in_place(path)
    os.utime(path, ns=(when, when))  # as `touch -r` or `tar x` would leave it
    assert path.stat().st_mtime_ns == when and path.stat().st_size == size
    with pytest.raises(ArtifactError, match="does not match blob"):
        check_file(path, digest, size, cache=cache)


def test_a_fresh_file_is_verified_but_not_remembered(tmp_path: Path) -> None:
    path, digest, size = blob_file(tmp_path / "blobs", b"just written")
    cache = tmp_path / "verified"
    check_file(path, digest, size, cache=cache)  # mtime: now
    assert not cache.exists()
    before = io_read()
    check_file(path, digest, size, cache=cache)
    assert io_read() - before >= size  # hashed again


@pytest.mark.parametrize(
    ("folder_mode", "owner", "mode"),
    [
        (0o755, 0, 0o644),  # a store of one user, whatever the umask
        (0o2775, 0, 0o664),  # shared with its group: group-writable, as its other files
        (0o775, 0, 0o644),  # group-writable but not setgid: not a group's shared folder
        (0o2775, 1000, 0o644),  # another user's file: group write is not ours to add
    ],
    ids=["plain", "group-shared", "not-setgid", "not-ours"],
)
def test_a_blob_file_is_opened_to_all(
    tmp_path: Path, folder_mode: int, owner: int, mode: int
) -> None:
    folder = tmp_path / "blobs"
    folder.mkdir()
    folder.chmod(folder_mode)
    old = os.umask(0o077)
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    finally:
        os.umask(old)
    try:
        os.fchown(fd, owner, -1)
        _blobcheck.open_to_all(fd, Path(name))
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(name).st_mode) == mode

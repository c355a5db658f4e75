"""A real disk that fills up: a small tmpfs mounted for one test.

The issue asks what happens when the shared root (or the store, or an environment's
folder) fills up. Raising ENOSPC from a patched function would test our guess of where
it happens; a real small filesystem makes uv, the kernel and our own writes run out of
space wherever they really do. Mounting needs root (CAP_SYS_ADMIN), as debootstrap does
for the image tests; without it the test fails with that reason instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["SmallDisk", "small_disk"]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class SmallDisk:
    """A tmpfs of a few MiB at ``path``; ``resize`` frees space without touching files."""

    path: Path

    def resize(self, size: int) -> None:
        _mount("-o", f"remount,size={size}", str(self.path))

    def read_only(self) -> None:
        """Remount it read-only: even root cannot write there (``os.access`` says so)."""
        _mount("-o", "remount,ro", str(self.path))

    def used(self) -> int:
        """Bytes in use now (tmpfs counts file data in whole pages)."""
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def fill(self, leave: int = 0) -> Path:
        """Write a file that leaves about ``leave`` bytes free; remove it to free them."""
        st = os.statvfs(self.path)
        free = st.f_bavail * st.f_frsize
        filler = self.path / "filler"
        with open(filler, "wb") as f:
            f.write(b"\0" * max(free - leave, 0))
        return filler


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"mount {' '.join(args)} failed: {proc.stderr.strip()}; the full-disk tests "
            "mount a small tmpfs and need root (CAP_SYS_ADMIN), as scripts/test runs them",
            pytrace=False,
        )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 4 MiB tmpfs at ``tmp_path/disk``, unmounted (with what is on it) afterwards."""
    point = tmp_path / "disk"
    point.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={4 * MIB},mode=0755", "envship-test", str(point))
    try:
        yield SmallDisk(point)
    finally:
        # Lazy: a process the test started may still hold a file open there.
        subprocess.run(["umount", "-l", str(point)], check=False)

"""Replacing a file in one rename, so a reader (or a killed writer) sees old or new bytes.

Every small file envship writes in place (locks, specs, markers, index.json, cache
records) goes through here, so the temporary name, the mode and the clean-up on failure
are decided once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(
    path: Path, data: bytes | str, *, mode: int | None = None, through_links: bool = False
) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file in its folder.

    ``mode`` defaults to the replaced file's permissions, or 0644 for a new file (a
    temporary file starts 0600, which would hide a lock or marker on a shared volume).
    With ``through_links``, a symlink at ``path`` stays and the file it points to (at the
    end of any chain) is replaced, in that file's folder: a rename onto the link would
    turn it into a regular file and leave its target stale.
    """
    if through_links and path.is_symlink():
        path = Path(os.path.realpath(path))  # never raises, even for a loop
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Where ``envship image build`` may write an image, decided before anything is built.

``oci:DIR[:TAG]`` goes into a new or empty folder or an existing layout;
``docker-archive:FILE[:NAME[:TAG]]`` replaces the file at its path, which must be an
earlier archive (a tar) or empty, and never the lock or the base archive the build reads,
not even through a link: ``image build`` has no ``--force``, and a lock written over is
lost. Either must lie below a folder, not a file.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path

from .dockerarchive import parse_archive_ref
from .errors import ImageInputError, Problem
from .ocilayout import parse_layout_ref

__all__ = ["check_output", "check_outputs"]

_NOT_A_FOLDER = "is a file, not a folder"
_BELOW_A_FOLDER = "name a path below a folder (a file cannot hold other files)"


def check_output(text: str, *, lock: Path | None = None, base: str | None = None) -> None:
    """Refuse (exit 2) an output ``--output`` cannot write, before anything is built:
    ``oci:DIR[:TAG]`` and ``docker-archive:FILE[:NAME[:TAG]]`` with a valid name, whose
    path is free for it (a layout goes into a new or empty folder or an existing layout,
    an archive at a path that is not a folder), below a folder rather than a file.

    An archive replaces the file at its path, so that file must be a tar archive (an
    earlier image) or empty, and neither the ``lock`` being built nor the ``base`` it is
    built on (``docker-archive:``), not even through a link: ``image build`` has no
    ``--force``, and a lock or spec written over is lost."""
    if text.startswith("oci:"):
        directory, _ = parse_layout_ref(text)
        problem = _blocked(directory)
        if problem is None and directory.exists():
            if not directory.is_dir():
                problem = "it exists and is not a folder"
            elif not (directory / "oci-layout").is_file() and any(directory.iterdir()):
                problem = "it is a folder that is neither empty nor an OCI layout"
        where, hint = directory, "name a new or empty folder, or an existing OCI layout"
        if problem is not None and problem.endswith(_NOT_A_FOLDER):
            hint = _BELOW_A_FOLDER
    elif text.startswith("docker-archive:"):
        path, _ = parse_archive_ref(text)
        problem = _blocked(path)
        hint = f"name a file, e.g. docker-archive:{path / 'image.tar'}"
        if problem is not None:
            hint = _BELOW_A_FOLDER
        elif path.is_dir():
            problem = "it is a folder; a docker-archive is one file"
        elif (taken := _taken(path, lock, base)) is not None:
            problem, hint = taken
        where = path
    else:
        raise ImageInputError(
            f"unknown output {text!r}",
            hint="write oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG]; push with --push REF",
        )
    if problem is not None:
        raise ImageInputError(
            f"cannot write the image to {where}: {problem}",
            problems=[Problem(text, problem)],
            hint=hint,
        )


def _blocked(path: Path) -> str | None:
    """Why ``path`` cannot be made: the nearest of its parents that exists is no folder."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} {_NOT_A_FOLDER}"
    return None


def _taken(path: Path, lock: Path | None, base: str | None) -> tuple[str, str] | None:
    """Why the archive must not replace what is at ``path`` (and the hint): it is a file
    this build reads, or something other than a tar archive or an empty file."""
    try:
        st = path.stat()  # through links: a link to the lock is the lock
    except OSError:
        return None  # nothing there (a dangling link is replaced, never followed)
    reads = [(lock, "the lock this build reads")]
    if base is not None and base.startswith("docker-archive:"):
        reads.append(
            (parse_archive_ref(base)[0], "the base image's archive, which this build reads")
        )
    for other, what in reads:
        if other is not None and _same(st, other):
            return f"it is {what}", "write the image to a file of its own"
    # No --force: an earlier image (a tar) is replaced, anything else only once removed.
    hint = "remove it first (image build has no --force), or write the image to another file"
    if not stat.S_ISREG(st.st_mode):  # /dev/null, a FIFO: replaced by a rename, never kept
        return "it is not a regular file", "write the image to a regular file"
    if st.st_size and not _is_tar(path):
        return "it is a file that is not a tar archive, which the image would replace", hint
    return None


def _same(st: os.stat_result, other: Path) -> bool:
    try:
        theirs = other.stat()
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (theirs.st_dev, theirs.st_ino)


def _is_tar(path: Path) -> bool:
    """Whether ``path`` starts with a valid tar header (its checksum right), as a
    ``docker save`` archive and every archive envship writes do."""
    try:
        with path.open("rb") as f:
            block = f.read(tarfile.BLOCKSIZE)
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except (OSError, tarfile.HeaderError):
        return False
    return True


def check_outputs(
    texts: Sequence[str], *, lock: Path | None = None, base: str | None = None
) -> None:
    """:func:`check_output` of each, and no two ``docker-archive:`` outputs naming one file
    (however spelled, through links too): the second would replace the first, which was
    reported as written."""
    seen: dict[str, str] = {}
    for text in texts:
        check_output(text, lock=lock, base=base)
        if not text.startswith("docker-archive:"):
            continue
        key = os.path.realpath(parse_archive_ref(text)[0])
        if key in seen:
            problem = f"the same file as {seen[key]}"
            raise ImageInputError(
                f"two outputs name one file, {key}: {seen[key]} and {text}",
                problems=[Problem(text, problem)],
                hint="write each archive to a file of its own",
            )
        seen[key] = text

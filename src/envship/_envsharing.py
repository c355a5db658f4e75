"""What keeps other users from a shared environment's version: a folder on the way or
the version closed to them (made under a private umask, such as 077), or a base
interpreter they may not run (under a private home, such as /root/.pyenv).

``env create`` prints each as a note rather than failing: the owner may mean it, and
only the owner can open it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _closed(path: Path) -> tuple[Path, str] | None:
    """The first folder on the way to ``path`` (from the top) that other users may not
    enter, or ``path`` itself when they may not read (a folder: and enter; a program: and
    run) it, with its mode; None when they can. By the "others" bits: who else will use a
    shared version is not known here."""
    real = Path(os.path.realpath(path))
    try:
        for folder in reversed(real.parents):
            mode = os.stat(folder).st_mode
            if not mode & stat.S_IXOTH:
                return folder, f"{folder} is mode {stat.S_IMODE(mode):04o}"
        mode = os.stat(real).st_mode
    except OSError:
        return None  # cannot tell: nothing to warn of
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0)
    return None if mode & need == need else (real, f"{real} is mode {stat.S_IMODE(mode):04o}")


def sharing_notes(path: Path, base_python: str) -> tuple[str, ...]:
    """What keeps other users from a version this call made or found: the version (made
    under a private umask, such as 077) or its base interpreter (under a private home,
    such as /root/.pyenv) closed to them. A shared version is for every user."""
    notes = []
    if (closed := _closed(path)) is not None:
        folder, why = closed
        env_dir = Path(os.path.realpath(path)).parent.parent
        # The environment's own folders are opened whole; one above it only to pass.
        fix = f"chmod -R a+rX {folder}" if folder.is_relative_to(env_dir) else f"chmod a+x {folder}"
        notes.append(
            f"other users cannot read this version ({why}): only its owner can use it; "
            f"make it readable: {fix} (and create versions under umask 022)"
        )
    if (closed := _closed(Path(base_python))) is not None:
        notes.append(
            f"other users cannot run this version's base interpreter {base_python} "
            f"({closed[1]}); create it with --python naming an interpreter every user can "
            "run (for instance /usr/bin/python3)"
        )
    return tuple(notes)

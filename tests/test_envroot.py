"""``envship._envroot``'s steps on a root other users share: the use stamp any user of
a version can refresh (never follow, never backdate), what a removal leaves and why,
and a version's size with its staging. Other users are uid 1000 under ``setpriv``
(:mod:`test_shared_users`)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envship._envroot import (
    USED_NAME,
    discard,
    disk_size,
    remove_tree,
    touch_used,
    version_size,
)
from test_shared_users import UID, User, age, shared, user

__all__ = ["shared", "user"]  # fixtures of test_shared_users, used here too


@pytest.fixture
def umask() -> Iterator[None]:
    was = os.umask(0o022)
    yield
    os.umask(was)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_new_stamp_is_writable_by_everyone_whatever_the_umask(
    tmp_path: Path, umask: None, mask: int
) -> None:
    os.umask(mask)
    assert touch_used(tmp_path) is None
    st = (tmp_path / USED_NAME).stat()
    assert stat.S_IMODE(st.st_mode) == 0o666 and time.time() - st.st_mtime < 3600


def test_an_old_0644_stamp_is_opened_by_its_owners_next_touch(tmp_path: Path) -> None:
    stamp = tmp_path / USED_NAME
    stamp.touch(mode=0o644)
    stamp.chmod(0o644)
    age(stamp, 30)
    assert touch_used(tmp_path) is None
    assert stat.S_IMODE(stamp.stat().st_mode) == 0o666
    assert time.time() - stamp.stat().st_mtime < 3600


# name: how the stamp's place is taken (given the folder and a bystander file), the start
# of what touch_used says
NOT_A_STAMP: dict[str, tuple[Callable[[Path, Path], object], str]] = {
    "a-link-to-another-file": (
        lambda d, other: (d / USED_NAME).symlink_to(other),
        "this use is not recorded: {d}/.envship-used: Too many levels of symbolic links",
    ),
    "a-fifo": (
        lambda d, other: os.mkfifo(d / USED_NAME),
        "{d}/.envship-used is not a regular file; this use is not recorded",
    ),
}


@pytest.mark.parametrize("case", sorted(NOT_A_STAMP))
def test_what_is_not_a_stamp_is_never_followed_changed_or_waited_on(
    tmp_path: Path, case: str
) -> None:
    """Root touching a stamp that someone who can write the version made a link to
    /etc/shadow must not make that file 0666: the stamp is opened with O_NOFOLLOW and
    changed through that fd only; a FIFO is not opened for a read that would block."""
    version = tmp_path / "version"
    version.mkdir()
    other = tmp_path / "shadow"
    other.write_text("secret")
    other.chmod(0o600)
    was = age(other, 30)
    make, said = NOT_A_STAMP[case]
    make(version, other)
    assert touch_used(version) == said.format(d=version)
    assert stat.S_IMODE(other.stat().st_mode) == 0o600 and other.stat().st_mtime == was


# As uid 1000: touch_used's and stamp_problem's verdicts on argv[1], and the stamp's
# mtime after each.
TOUCH = (
    "import json, os, sys; from pathlib import Path\n"
    "from envship._envroot import stamp_problem, touch_used, USED_NAME\n"
    "v = Path(sys.argv[1]); s = v / USED_NAME\n"
    "mtime = lambda: os.stat(s).st_mtime if os.path.exists(s) else None\n"
    "asked = stamp_problem(v); after_asking = mtime()\n"
    "said = touch_used(v)\n"
    "print(json.dumps([asked, after_asking, said, mtime()]))\n"
)


# name: the stamp root left in its 0755 version folder (mode, or None for no stamp), and
# what stops uid 1000 from recording its use (None: it can)
STAMPS = {
    "0666": (0o666, None),
    "0644-from-an-older-envship": (
        0o644,
        "{v}/.envship-used is owned by root (uid 0), group root, mode -rw-r--r--: "
        f"cloudsdk (uid {UID}) cannot write it",
    ),
    "none-in-roots-folder": (
        None,
        "{v} is owned by root (uid 0), group root, mode drwxr-xr-x: "
        f"cloudsdk (uid {UID}) cannot create files in it",
    ),
}


@pytest.mark.parametrize("case", sorted(STAMPS))
def test_another_user_refreshes_a_writable_stamp_and_is_told_why_not_otherwise(
    shared: Path, user: User, case: str
) -> None:
    mode, stops = STAMPS[case]
    version = shared / "version"
    version.mkdir(mode=0o755)
    stamp = version / USED_NAME
    was = None
    if mode is not None:
        stamp.touch()
        stamp.chmod(mode)
        was = age(stamp, 30)
    done = user.run("-c", TOUCH, str(version))
    asked, after_asking, said, after = json.loads(done.stdout)
    assert after_asking == was  # asking writes nothing
    if stops is None:
        assert asked is None and said is None
        assert time.time() - after < 3600
        assert stamp.stat().st_uid == 0 and stat.S_IMODE(stamp.stat().st_mode) == 0o666
        return
    reason = stops.format(v=version)
    assert said == f"this use is not recorded: {reason}"
    assert asked.startswith(f"this use is not recorded ({reason}), so `envship env gc")
    assert after == was


def test_remove_tree_says_what_stayed(tmp_path: Path) -> None:
    """``rm -rf`` that goes on past a file it cannot delete (immutable: not even root
    may) and returns where the rest stayed, its size and the first error."""
    assert remove_tree(tmp_path / "nothing") == ()
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "gone").write_bytes(b"g" * 100_000)
    stuck = tree / "a" / "b" / "stuck"
    stuck.write_bytes(b"x" * 10_000)
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        (left,) = remove_tree(tree)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert (left.path, left.reason) == (tree, f"{stuck}: Operation not permitted")
    assert left.size == disk_size(tree) and 10_000 <= left.size < 100_000
    assert sorted(p.name for p in tree.rglob("*")) == ["a", "b", "stuck"]
    assert remove_tree(tree) == () and not tree.exists()


def test_discard_of_another_users_version_says_whose_it_is(shared: Path, user: User) -> None:
    """``env create`` by uid 1000 meets root's half-made version of its key and must
    clear it first: the error names the folder and its owner."""
    env = shared / "env"
    version = env / "versions" / "k1"
    (version / "lib").mkdir(parents=True)
    os.chown(env, UID, 100)
    os.chown(env / "versions", UID, 100)  # the user's folders; the version is root's
    code = (
        "import sys; from pathlib import Path; from envship._envroot import discard\n"
        "try:\n    discard(Path(sys.argv[1]), 'k1')\n"
        "except PermissionError as exc:\n    print(exc.strerror)\n"
    )
    done = user.run("-c", code, str(env))
    assert done.stdout == (
        f"{version} is owned by root (uid 0), group root, mode drwxr-xr-x: "
        f"cloudsdk (uid {UID}) cannot remove it\n"
    ), done.stderr
    assert version.is_dir()


def test_a_versions_size_counts_its_staging(tmp_path: Path) -> None:
    env = tmp_path / "env"
    (env / "versions" / "k1").mkdir(parents=True)
    (env / "versions" / "k1" / "a").write_bytes(b"a" * 5000)
    (env / "versions" / "k1.envship-tmp").mkdir()
    (env / "versions" / "k1.envship-tmp" / "b").write_bytes(b"b" * 50000)
    both = disk_size(env / "versions" / "k1") + disk_size(env / "versions" / "k1.envship-tmp")
    assert version_size(env, "k1") == both >= 55000
    assert discard(env, "k1") == ()
    assert not any((env / "versions").iterdir())

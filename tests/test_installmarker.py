"""``envship._installmarker``: reading an install marker without trusting it.

A marker is written whole, in one rename, so one that cannot be used was damaged after
the fact. Each damage here is made for real on a copy of a marker a real ``envship
install`` wrote: a key of the wrong type or missing, bytes that are no JSON, and what is
not a regular file at all (a link to ``/dev/zero``, a FIFO, a folder), which must be
refused without being read. Those that would hang or eat memory on a regression run in
a child process with an address-space limit and a timeout, so a regression fails the
test instead of taking the machine down.
"""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envship._installmarker import (
    INCOMPLETE_NAME,
    MARKER_NAME,
    MAX_MARKER_BYTES,
    MarkerDamaged,
    env_state,
    load_marker,
    read_marker,
    write_marker,
)
from envship.install import install
from envship.lockfile import LockFile
from envship.store import Store
from test_install import build_wheels, stocked_store, write_lock

# The child's address space: enough for Python and the marker, far less than an
# unbounded read of /dev/zero wants.
LIMIT = 2_000_000_000


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The marker a real install wrote (records, venv files and links, store)."""
    tmp = tmp_path_factory.mktemp("marker")
    wheels = build_wheels(tmp / "dist")
    lock = write_lock(tmp / "pylock.toml", [wheels[k] for k in ("alpha", "beta", "tool")])
    store = stocked_store(tmp / "store", list(wheels.values()))
    with pytest.MonkeyPatch.context() as env:  # as the autouse _isolated_cache does
        env.setenv("UV_CACHE_DIR", str(tmp / "uv-cache"))
        install(lock, store, tmp / "env")
    data = json.loads((tmp / "env" / MARKER_NAME).read_text())
    assert isinstance(data, dict)
    return data


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``data`` with the value at ``path`` (``packages.0.name``) replaced; ``...`` deletes."""
    out = copy.deepcopy(data)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = out
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


# (key path, new value or ... to delete) -> the key the damage is named by, and a word
# of its reason.
SHAPES = {
    "name-not-a-string": ("packages.0.name", 5, "packages[0].name", "string"),
    "sha256-missing": ("packages.1.sha256", ..., "packages[1].sha256", "missing"),
    "package-not-an-object": ("packages.2", "tool", "packages[2]", "object"),
    "records-a-list": ("records", [], "records", "object"),
    "record-digest-a-number": ("records.alpha", 1, "records", "object"),
    "target-missing": ("target", ..., "target", "missing"),
    "target-without-python": ("target.python", ..., "target", "python"),
    "target-unknown-platform": ("target.platform", "plan9-mips", "target", "platform"),
    "lock-path-with-nul": ("lock.path", "/tmp/a\0b/pylock.toml", "lock.path", "NUL"),
    "lock-digest-missing": ("lock.digest", ..., "lock.digest", "missing"),
    "base-a-lone-surrogate": ("python.base", "/usr/bin/\ud800", "python.base", "surrogate"),
    "python-a-string": ("python", "3.11", "python", "object"),
    "groups-of-numbers": ("groups", [5], "groups[0]", "group"),
    "packages-an-object": ("packages", {}, "packages", "list"),
    "venv-files-a-list": ("venv_files", [], "venv_files", "object"),
    "links-of-nulls": ("venv_links.bin/python", None, "venv_links", "object"),
    "compiled-a-string": ("compiled", "yes", "compiled", "true or false"),
    "link-mode-unknown": ("link_mode", "teleport", "link_mode", "one of"),
    "store-empty": ("store", "", "store", "path"),
    "added-of-numbers": ("added", [1], "added[0]", "name"),
    "another-format": ("format", 2, "format", "format 1"),
    "no-format": ("format", ..., "format", "none"),
}


@pytest.mark.parametrize("case", SHAPES)
def test_a_marker_not_of_the_shape_written_is_damaged_at_its_key(
    tmp_path: Path, written: dict[str, Any], case: str
) -> None:
    path, value, key, word = SHAPES[case]
    (tmp_path / MARKER_NAME).write_text(json.dumps(_set(written, path, value)))
    with pytest.raises(MarkerDamaged) as caught:
        load_marker(tmp_path)
    assert (caught.value.path, caught.value.key) == (tmp_path / MARKER_NAME, key)
    assert word in caught.value.reason
    assert caught.value.problem().where == f"{tmp_path / MARKER_NAME}: {key}"
    assert read_marker(tmp_path) is None  # the readers that only ask "usable?"


def test_the_marker_written_and_older_markers_are_whole(
    tmp_path: Path, written: dict[str, Any]
) -> None:
    (tmp_path / MARKER_NAME).write_text(json.dumps(written))
    assert load_marker(tmp_path) == written
    # Markers of earlier envships lack what was recorded later: still read.
    older = {k: v for k, v in written.items() if k not in ("venv_links", "records", "store")}
    (tmp_path / MARKER_NAME).write_text(json.dumps(older))
    assert load_marker(tmp_path) == older
    # A path from a file system that is not UTF-8 (os.fsdecode's surrogateescape) is one.
    odd = _set(written, "lock.path", os.fsdecode(b"/tmp/caf\xe9/pylock.toml"))
    (tmp_path / MARKER_NAME).write_text(json.dumps(odd))
    assert load_marker(tmp_path) == odd
    (tmp_path / MARKER_NAME).unlink()
    assert load_marker(tmp_path) is None


BYTES: dict[str, tuple[bytes, str]] = {
    "truncated": (b"{", "not JSON"),
    "empty": (b"", "not JSON"),
    "not-utf8": (b'{"format": "\xff"}', "not UTF-8"),
    "nested-too-deep": (b"[" * 100_000, "nested too deep"),
    "a-list": (b"[]", "not a JSON object"),
    "a-number-too-long": (b"1" * 5000, "JSON"),  # int digits limit (3.11); an int before
}


@pytest.mark.parametrize("case", BYTES)
def test_bytes_that_are_no_marker_are_damaged(tmp_path: Path, case: str) -> None:
    data, word = BYTES[case]
    (tmp_path / MARKER_NAME).write_bytes(data)
    with pytest.raises(MarkerDamaged) as caught:
        load_marker(tmp_path)
    assert caught.value.key == "" and word in caught.value.reason


def test_a_marker_larger_than_any_written_is_not_read(tmp_path: Path) -> None:
    with open(tmp_path / MARKER_NAME, "wb") as f:  # sparse: no disk taken
        f.truncate(MAX_MARKER_BYTES + 1)
    with pytest.raises(MarkerDamaged, match="larger than any marker"):
        load_marker(tmp_path)


# Made in the child, then read there: (setup code, the word the damage is named with).
SPECIAL = {
    "link-to-dev-zero": ("os.symlink('/dev/zero', marker)", "symbolic link (to /dev/zero)"),
    "fifo": ("os.mkfifo(marker)", "not a regular file"),
    "link-to-a-fifo": ("os.mkfifo(env + '/fifo'); os.symlink('fifo', marker)", "symbolic"),
    "folder": ("os.mkdir(marker)", "a folder"),
    "dev-null-link": ("os.symlink('/dev/null', marker)", "symbolic link"),
}
CHILD = textwrap.dedent(
    """
    import os, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from pathlib import Path
    from envship._installmarker import MARKER_NAME, MarkerDamaged, env_state, load_marker
    env = sys.argv[1]
    marker = os.path.join(env, MARKER_NAME)
    os.mkdir(os.path.join(env, "bin"))
    {setup}
    try:
        load_marker(Path(env))
    except MarkerDamaged as exc:
        print(exc.reason)
    print(env_state(Path(env)))
    """
)


@pytest.mark.parametrize("case", SPECIAL)
def test_what_is_not_a_regular_file_is_refused_unread(tmp_path: Path, case: str) -> None:
    """A link to /dev/zero made install read until the OOM killer came (23 GB); a FIFO
    would block the open forever. Neither is read: damaged, and the folder incomplete."""
    setup, word = SPECIAL[case]
    code = CHILD.format(limit=LIMIT, setup=setup)
    ran = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,  # a regression blocks on the FIFO: fail, do not hang
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    reason, state = ran.stdout.splitlines()
    assert word in reason and state == "incomplete"


Write = Callable[[Path], object]


def _folder_with_a_file(marker: Path) -> None:
    marker.mkdir()
    (marker / "x").write_text("x")


def _link_to_a_file(marker: Path) -> None:
    marker.with_name("other").write_text("o")
    marker.symlink_to("other")


PLACES: dict[str, Write] = {
    "a-folder-with-a-file": _folder_with_a_file,
    "a-link-to-dev-zero": lambda m: m.symlink_to("/dev/zero"),
    "a-link-to-a-file": _link_to_a_file,
    "a-file": lambda m: m.write_text("{"),
}


@pytest.mark.parametrize("case", PLACES)
def test_a_new_marker_replaces_whatever_is_at_its_place(
    tmp_path: Path, written: dict[str, Any], case: str
) -> None:
    """rename(2) cannot put a file over a folder, and the new marker must not take the
    mode of /dev/zero (0666): install rewrites the marker of an environment it makes
    again, whatever damage left there."""
    marker = tmp_path / MARKER_NAME
    PLACES[case](marker)
    write_marker(tmp_path, written)
    st = os.lstat(marker)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o022 == 0
    assert load_marker(tmp_path) == written
    if case == "a-link-to-a-file":
        assert (tmp_path / "other").read_text() == "o"  # the link went, not its target


STATES: dict[str, tuple[Write, str]] = {
    "damaged-marker": (lambda e: (e / MARKER_NAME).write_text("[]"), "incomplete"),
    "marker-a-folder": (lambda e: (e / MARKER_NAME).mkdir(), "incomplete"),
    "marker-a-dangling-link": (lambda e: (e / MARKER_NAME).symlink_to("nowhere"), "incomplete"),
    "marked-incomplete": (lambda e: (e / INCOMPLETE_NAME).write_text("x"), "incomplete"),
    "someone-elses": (lambda e: (e / "notes.txt").write_text("x"), "foreign"),
    "empty": (lambda e: None, "empty"),
}


@pytest.mark.parametrize("case", STATES)
def test_env_state_takes_a_damaged_marker_for_a_half_made_environment(
    tmp_path: Path, case: str
) -> None:
    """Our marker's name at the top makes the folder ours: install makes it again rather
    than refusing it as someone else's (which it did for a folder there)."""
    make, state = STATES[case]
    env = tmp_path / "env"
    env.mkdir()
    make(env)
    assert env_state(env) == state


def test_a_real_install_rebuilds_over_a_folder_at_the_marker(tmp_path: Path) -> None:
    """End to end: the folder at the marker's place goes, the environment is made again."""
    wheels = build_wheels(tmp_path / "dist")
    lock: LockFile = write_lock(tmp_path / "pylock.toml", [wheels["alpha"], wheels["beta"]])
    store: Store = stocked_store(tmp_path / "store", list(wheels.values()))
    env = tmp_path / "env"
    install(lock, store, env)
    (env / MARKER_NAME).unlink()
    (env / MARKER_NAME).mkdir()
    (env / MARKER_NAME / "inside").write_text("x")
    assert install(lock, store, env).action == "rebuilt"
    marker = load_marker(env)
    assert marker is not None and marker["lock"]["digest"] == lock.digest


@pytest.mark.parametrize("mode", [0o4755, 0o666, 0o2777])
def test_a_marker_is_written_0644_whatever_mode_the_old_one_had(tmp_path: Path, mode: int) -> None:
    """A setuid or world-writable marker (``envship verify`` reports both) would outlive
    every remake if a new marker kept the old one's mode, as write_atomic does."""
    (tmp_path / MARKER_NAME).write_text("{}\n")
    os.chmod(tmp_path / MARKER_NAME, mode)
    write_marker(tmp_path, {"format": 1})
    assert stat.S_IMODE((tmp_path / MARKER_NAME).stat().st_mode) == 0o644

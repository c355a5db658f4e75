"""The content-addressed store: layout, verified atomic commits, sharing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disklib import SmallDisk
from envship.errors import ArtifactError, StoreError
from envship.store import Store, sha256_file


class Wanted(NamedTuple):
    name: str
    version: str
    filename: str
    sha256: str


DATA = b"wheel bytes\n" * 1000
SHA = hashlib.sha256(DATA).hexdigest()


def staged(store: Store, data: bytes = DATA, name: str = "staged") -> Path:
    store.ensure()
    path = store.tmp_dir / name
    path.write_bytes(data)
    return path


def test_layout(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.path(SHA) == tmp_path / "sha256" / SHA[:2] / SHA
    store.ensure()
    assert {p.name for p in tmp_path.iterdir()} == {"sha256", "tmp", "partial"}


@pytest.mark.parametrize("bad", ["", "abc", SHA.upper(), SHA[:-1] + "g", "../" + SHA[3:]])
def test_path_rejects_non_digests(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError, match="not a sha256"):
        Store(tmp_path).path(bad)


def test_default_and_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "env"))
    assert Store.default().root == tmp_path / "env"
    assert Store.at(None).root == tmp_path / "env"
    assert Store.at(tmp_path / "x").root == tmp_path / "x"
    monkeypatch.delenv("ENVSHIP_STORE")
    assert Store.default().root.name == "store"


def test_commit_verifies_and_moves_atomically(tmp_path: Path) -> None:
    store = Store(tmp_path)
    src = staged(store)
    final = store.commit(src, SHA, name="x.whl", size=len(DATA))
    assert final == store.path(SHA) and final.read_bytes() == DATA
    assert not src.exists() and store.has(SHA)
    assert final.stat().st_mode & 0o777 == 0o444


def test_commit_refuses_wrong_hash_and_deletes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    src = staged(store, DATA + b"!")
    with pytest.raises(ArtifactError) as info:
        store.commit(src, SHA, name="x.whl")
    assert info.value.artifact == "x.whl" and "x.whl" in info.value.message
    assert info.value.expected == SHA and info.value.actual != SHA
    assert not src.exists() and not store.has(SHA)


def test_commit_refuses_wrong_size_and_deletes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    src = staged(store)
    with pytest.raises(ArtifactError, match="size mismatch"):
        store.commit(src, SHA, name="x.whl", size=len(DATA) + 1)
    assert not src.exists() and not store.has(SHA)


# Who served bytes that are not the lock's: a local file is named (it is the corrupt
# one), a URL is not (it may carry credentials), and without a source both are said.
@pytest.mark.parametrize("size", [None, len(DATA)], ids=["sha256", "size"])
@pytest.mark.parametrize(
    ("source", "says", "never"),
    [
        (Path("/srv/wheels/x.whl"), "the local file /srv/wheels/x.whl holds other bytes", "index"),
        ("file:///srv/my%20wheels/x.whl", "the local file /srv/my wheels/x.whl holds", "index"),
        ("https://user:secret@index.invalid/x.whl", "the index served other bytes", "secret"),
        (None, "(an index or a proxy on the way, or the local file a lock's path", "index served"),
    ],
    ids=["path", "file-url", "url", "unknown"],
)
def test_a_mismatch_blames_its_source(
    tmp_path: Path, source: Path | str | None, says: str, never: str, size: int | None
) -> None:
    store = Store(tmp_path)
    src = staged(store, DATA + b"!")
    with pytest.raises(ArtifactError) as info:
        store.commit(src, SHA, name="x.whl", size=size, source=source)
    assert info.value.hint is not None and says in info.value.hint, info.value.hint
    assert never not in info.value.hint
    assert not src.exists() and not store.has(SHA)


def test_add_file_names_the_local_file_that_does_not_match(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    src = tmp_path / "a.whl"
    src.write_bytes(DATA + b"!")
    with pytest.raises(ArtifactError) as info:
        store.add_file(src, SHA)
    assert info.value.hint is not None
    assert info.value.hint.startswith(f"the local file {src} holds other bytes than the lock")
    assert "index" not in info.value.hint


def test_concurrent_commits_of_the_same_content(tmp_path: Path) -> None:
    store = Store(tmp_path)
    sources = [staged(store, name=f"s{i}") for i in range(8)]
    barrier = threading.Barrier(len(sources))
    errors: list[BaseException] = []

    def commit(src: Path) -> None:
        barrier.wait()
        try:
            store.commit(src, SHA, name="x.whl", size=len(DATA))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.path(SHA).read_bytes() == DATA
    assert list(store.tmp_dir.iterdir()) == []


def test_add_file_copies_and_dedupes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    src = tmp_path / "a.whl"
    src.write_bytes(DATA)
    first = store.add_file(src)
    assert first == store.path(SHA) and src.exists()
    assert store.add_file(src, SHA) == first
    assert list(store.tmp_dir.iterdir()) == []


def test_add_file_with_wrong_hash_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    src = tmp_path / "a.whl"
    src.write_bytes(DATA)
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ArtifactError, match=r"a\.whl"):
        store.add_file(src, wrong)
    assert not store.has(wrong) and list(store.tmp_dir.iterdir()) == []


def test_ensure_on_unusable_root(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create the store") as info:
        Store(blocker / "store").ensure()
    assert info.value.hint and "--store" in info.value.hint


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=100_000))
def test_sha256_file_matches_hashlib(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        path.write_bytes(data)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [(1 << 20) - 1, 1 << 20, (1 << 20) + 1, 5 << 19])
def test_sha256_file_across_chunk_boundaries(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def _in_place(path: Path, data: bytes) -> None:
    """Overwrite a committed file in place (same inode), as a stray writer would."""
    os.chmod(path, 0o644)
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(data)


@pytest.mark.parametrize(
    ("content", "size", "full", "state"),
    [
        (None, len(DATA), False, "missing"),
        (DATA, len(DATA), False, "ok"),
        (DATA, None, False, "ok"),
        (DATA[:-1], len(DATA), False, "damaged"),
        (DATA + b"!", len(DATA), False, "damaged"),
        (b"", None, False, "damaged"),  # no size known, but no locked artifact is empty
        (DATA[:-1] + b"?", len(DATA), False, "ok"),  # same size: a stat cannot tell
        (DATA[:-1] + b"?", len(DATA), True, "damaged"),
        (DATA[:-1], None, True, "damaged"),
    ],
    ids=[
        "missing",
        "whole",
        "whole-sizeless",
        "short",
        "long",
        "empty-sizeless",
        "same-size",
        "same-size-full",
        "short-sizeless-full",
    ],
)
def test_check(
    tmp_path: Path, content: bytes | None, size: int | None, full: bool, state: str
) -> None:
    store = Store(tmp_path)
    if content is not None:
        store.commit(staged(store), SHA, name="x.whl")
        _in_place(store.path(SHA), content)
    assert store.check(SHA, size, full=full) == state


def test_check_of_the_empty_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    empty = hashlib.sha256(b"").hexdigest()
    store.commit(staged(store, b""), empty, name="empty", size=0)
    assert store.check(empty, None) == store.check(empty, 0, full=True) == "ok"


def test_commit_replaces_a_damaged_file_and_its_named_links(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.commit(staged(store), SHA, name="x.whl")
    named = store.named(SHA, "x-1.0-py3-none-any.whl")
    assert named.stat().st_ino == store.path(SHA).stat().st_ino
    _in_place(store.path(SHA), DATA[:10])  # the hard link shares the damage
    assert named.read_bytes() == DATA[:10]
    final = store.commit(staged(store), SHA, name="x.whl", size=len(DATA))
    assert final.read_bytes() == DATA and final.stat().st_mode & 0o777 == 0o444
    # named() hands out the existing link: it must be the repaired file, not the old inode.
    assert store.named(SHA, "x-1.0-py3-none-any.whl") == named
    assert named.read_bytes() == DATA
    assert named.stat().st_ino == final.stat().st_ino
    assert sorted(p.name for p in named.parent.iterdir()) == [named.name]
    assert list(store.tmp_dir.iterdir()) == []


def test_size_mismatch_says_both_sizes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(ArtifactError) as info:
        store.commit(staged(store), SHA, name="x.whl", size=10)
    assert (
        info.value.message
        == f"x.whl: size mismatch ({len(DATA)} bytes, the lock says 10), refusing it"
    )


# --- named copies: what installers read -------------------------------------------------------

NAME = "x-1.0-py3-none-any.whl"
FLIPPED = DATA[:-1] + b"?"  # same size, other bytes: a stat cannot tell


def _store_with_named(tmp_path: Path, elsewhere: Path | None) -> Store:
    """A store holding DATA; with ``elsewhere`` (a small tmpfs) its ``named/`` folder is
    on another file system, so hard links fail there (EXDEV) and named copies are made."""
    store = Store(tmp_path / "store")
    store.commit(staged(store), SHA, name="x.whl")
    if elsewhere is not None:
        (store.root / "named").symlink_to(elsewhere)
    return store


def _remount(point: Path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(point)], check=True)


def _put_over(path: Path, data: bytes) -> os.stat_result:
    """Replace ``path`` by a separate file (``mv -f``), as a stray writer or copy would."""
    tmp = path.with_name("stray")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path.stat()


@pytest.mark.parametrize(
    ("links", "copy", "handed_out", "damaged"),
    [
        # Links work: any separate file is replaced by a link, the content for certain.
        (True, DATA, "link", False),  # e.g. a store copied without keeping hard links
        (True, FLIPPED, "link", False),
        (True, DATA[:-1], "link", False),
        # Links fail: a copy of the right size is kept (uv's cache keys on its path and
        # stamp); one of the wrong size is copied again; same-size damage takes a hash.
        (False, DATA, "kept", False),
        (False, FLIPPED, "kept", True),
        (False, DATA[:-1], "copied", False),
        (False, DATA + b"!", "copied", False),
        (False, b"", "copied", False),
    ],
    ids=[
        "links-whole",
        "links-same-size",
        "links-short",
        "copies-whole",
        "copies-same-size",
        "copies-short",
        "copies-long",
        "copies-empty",
    ],
)
def test_named_never_hands_out_a_copy_known_to_be_damaged(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    links: bool,
    copy: bytes,
    handed_out: str,
    damaged: bool,
) -> None:
    elsewhere = None if links else request.getfixturevalue("small_disk").path
    store = _store_with_named(tmp_path, elsewhere)
    named = store.named(SHA, NAME)
    content = store.path(SHA).stat()
    assert (named.stat().st_ino == content.st_ino) is links
    before = _put_over(named, copy)

    assert store.named(SHA, NAME) == named
    now = named.stat()
    if handed_out == "link":
        assert (now.st_ino, now.st_dev) == (content.st_ino, content.st_dev)
    elif handed_out == "kept":
        assert (now.st_ino, now.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert named.read_bytes() == copy
    else:
        assert now.st_ino != before.st_ino and named.read_bytes() == DATA
        assert now.st_mode & 0o777 == 0o444
    # What a hash finds, fetch --verify replaces, atomically and once.
    bad = [(named, hashlib.sha256(copy).hexdigest())] if damaged else []
    assert store.damaged_named(SHA) == bad
    assert store.repair_named(SHA) == tuple(p for p, _ in bad)
    assert named.read_bytes() == DATA and store.damaged_named(SHA) == []
    assert sorted(p.name for p in named.parent.iterdir()) == [NAME]  # no temporary left


def test_a_read_only_named_folder_is_trusted_only_by_size(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    """A shared store nobody may write: a right-size copy is used, a wrong-size one is
    not (a private copy is made from the content file), and a repair names the file."""
    store = _store_with_named(tmp_path, small_disk.path)
    good = store.named(SHA, NAME)
    short = store.named(SHA, "short-1.0-py3-none-any.whl")
    flipped = store.named(SHA, "flipped-1.0-py3-none-any.whl")
    _put_over(short, DATA[:-1])
    _put_over(flipped, FLIPPED)
    _remount(small_disk.path, "ro")

    private = tmp_path / "private"
    assert store.named_or_private(SHA, NAME, private) == good
    mine = store.named_or_private(SHA, short.name, private)
    assert mine == private / SHA / short.name and mine.read_bytes() == DATA
    assert short.read_bytes() == DATA[:-1]  # untouched: it cannot be replaced
    with pytest.raises(StoreError, match=re.escape(f"cannot replace the damaged copy {flipped}")):
        store.repair_named(SHA)


@pytest.mark.parametrize(
    ("held", "hint_start"),
    [
        # One missing: fetching is the fix.
        (1, "fetch them: envship fetch --lock L"),
        # None held: most likely another store was meant, which the hint says first.
        (0, "{root} holds none of them: if they were fetched into another store"),
    ],
)
def test_missing_error_names_each_artifact(tmp_path: Path, held: int, hint_start: str) -> None:
    store = Store(tmp_path / "store")
    wanted = []
    for i, data in enumerate([b"first", b"second"]):
        source = tmp_path / f"w{i}.whl"
        source.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        if i < held:
            store.add_file(source, sha)
        wanted.append(Wanted(f"pkg{i}", "1.0", source.name, sha))
    missing = [w for w in wanted if not store.has(w.sha256)]
    err = store.missing_error(missing, len(wanted), "envship fetch --lock L")
    assert err.message == f"{2 - held} of 2 locked artifacts are not in the store {store.root}"
    assert [(p.where, p.message) for p in err.problems] == [
        (f"{w.name} 1.0", f"{w.filename} (sha256 {w.sha256})") for w in missing
    ]
    assert err.hint is not None and err.hint.startswith(hint_start.format(root=store.root))
    assert err.hint.endswith("fetch them: envship fetch --lock L")


# -- junk where the store keeps a folder or a file: named, with what it should be --------


def _partial_is_a_file(store: Store) -> Path:
    store.root.mkdir()
    (store.root / "partial").write_text("not a folder")
    return store.root / "partial"


def _tmp_is_a_dangling_link(store: Store) -> Path:
    store.root.mkdir()
    (store.root / "tmp").symlink_to(store.root / "gone")
    return store.root / "tmp"


def _shard_is_a_file(store: Store) -> Path:
    store.ensure()
    (store.root / "sha256" / SHA[:2]).write_bytes(b"junk")
    return store.root / "sha256" / SHA[:2]


def _content_is_a_folder(store: Store) -> Path:
    store.ensure()
    folder = store.path(SHA)
    folder.mkdir(parents=True)
    (folder / "inside").write_text("junk")
    return folder


JUNK = [_partial_is_a_file, _tmp_is_a_dangling_link, _shard_is_a_file, _content_is_a_folder]


@pytest.mark.parametrize("junk", JUNK, ids=[j.__name__.strip("_") for j in JUNK])
def test_junk_in_the_store_is_named_with_what_belongs_there(
    tmp_path: Path, junk: Callable[[Store], Path]
) -> None:
    store = Store(tmp_path / "store")
    blocker = junk(store)
    source = tmp_path / "a.whl"
    source.write_bytes(DATA)
    with pytest.raises(StoreError) as info:
        store.add_file(source, SHA)  # ensure(), then commit()
    error = info.value
    assert type(error) is StoreError and error.exit_code == 1
    assert [p.where for p in error.problems] == [str(blocker)]
    # What is there and what the store keeps there, not "File exists" / "Is a directory".
    assert str(blocker) in error.message and "store" in error.message
    assert "File exists" not in str(error) and "Is a directory" not in str(error)
    needs = (
        "a folder; the store keeps each artifact as a file named by its sha256"
        if junk is _content_is_a_folder
        else "the store needs a folder here"
    )
    assert needs in error.problems[0].message
    # The store is writable: the remedy is the junk, not another store.
    assert error.hint is not None and f"move {blocker} out of the store" in error.hint
    assert "--store" not in error.hint and "writable" not in error.hint
    assert not store.tmp_dir.is_dir() or list(store.tmp_dir.iterdir()) == []
    # Following the hint is enough.
    moved = tmp_path / "moved-aside"
    os.rename(blocker, moved)
    assert store.add_file(source, SHA) == store.path(SHA) and store.has(SHA)


def test_a_file_above_the_store_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "shared"
    blocker.write_text("a file, not a folder")
    with pytest.raises(StoreError) as info:
        Store(blocker / "store").ensure()
    error = info.value
    assert error.message == (
        f"cannot create the store at {blocker / 'store'}: {blocker} is a file of 20 bytes, "
        "not a folder"
    )
    assert [p.where for p in error.problems] == [str(blocker)]
    assert error.hint is not None and f"move {blocker} away" in error.hint


@pytest.mark.parametrize(
    "junk", [_partial_is_a_file, _content_is_a_folder], ids=["partial", "content"]
)
def test_fetch_names_the_junk_in_the_store(
    tmp_path: Path,
    junk: Callable[[Store], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The auditor's two cases through the real CLI: `st/partial` a file ("cannot create
    the store at ST: File exists" before) and a folder at a content path ("cannot write to
    the store ST: Is a directory")."""
    from envship.cli.main import main
    from test_fetch import write_lock

    wheel = tmp_path / "wheels" / "junk-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(DATA)
    lock = write_lock(tmp_path / "pylock.toml", [wheel])
    store = Store(tmp_path / "store")
    blocker = junk(store)
    args = ["fetch", "--lock", str(lock), "--store", str(store.root)]
    assert main([*args, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "store" and [p["where"] for p in doc["problems"]] == [str(blocker)]
    assert "--store" not in doc["hint"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"error: the store {store.root} has " in err and str(blocker) in err
    os.rename(blocker, tmp_path / "aside")
    assert main(args) == 0 and store.has(SHA)

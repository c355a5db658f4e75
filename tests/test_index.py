"""``export_index``: a real static index, proven by installing from it with pip and uv."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.markers import Marker
from packaging.utils import canonicalize_name
from packaging.version import Version
from uv import find_uv_bin

from envship._copyfile import copy_hashed
from envship.errors import ArtifactError, IndexExportError, StoreError
from envship.index import (
    MARKER_FILENAME,
    IndexFile,
    export_index,
    project_dir,
    render_project_html,
    render_root_html,
    wheel_metadata,
)
from envship.lockfile import LockFile
from envship.store import Store, sha256_file
from indexlib import X86, build_sdist, build_wheel

ARM = X86.replace("x86_64", "aarch64")
CHUNK = 1 << 20  # envship._copyfile's read size
TARGETS = (
    '{name = "linux-x86_64", platform = "linux-x86_64", python = "3.11", glibc = "2.28", '
    'variant = "cpu"},\n'
    '{name = "linux-aarch64", platform = "linux-aarch64", python = "3.11", glibc = "2.28", '
    'variant = "cpu"},\n'
)


@dataclass
class Universe:
    root: Path
    store: Store
    lock: LockFile
    wheels: dict[str, Path]  # by file name


def _entry(path: Path) -> str:
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return (
        f'{{url = "https://example.invalid/files/{path.name}", size = {path.stat().st_size}, '
        f'hashes = {{sha256 = "{sha}"}}}}'
    )


def write_lock(
    path: Path, packages: Sequence[dict[str, Any]], *, allow_sdist: bool = False, head: str = ""
) -> Path:
    """A hand-written PEP 751 lock with envship's [tool.envship] table (``head``: more
    top-level keys)."""
    text = 'lock-version = "1.0"\ncreated-by = "envship-tests"\n' + head
    for p in packages:
        text += f'\n[[packages]]\nname = "{p["name"]}"\nversion = "{p["version"]}"\n'
        text += 'index = "https://example.invalid/simple"\n'
        if p.get("marker"):
            text += f'marker = "{p["marker"]}"\n'
        if p.get("requires_python"):
            text += f'requires-python = "{p["requires_python"]}"\n'
        deps = ", ".join(f'{{name = "{d}"}}' for d in p.get("deps", []))
        text += f"dependencies = [{deps}]\n"
        if p.get("wheels"):
            text += "wheels = [\n" + "".join(f"  {_entry(w)},\n" for w in p["wheels"]) + "]\n"
        if p.get("sdist"):
            text += f"sdist = {_entry(p['sdist'])}\n"
    text += f'\n[tool.envship]\nspec-digest = "sha256:{"0" * 64}"\n'
    text += f"allow-sdist = {'true' if allow_sdist else 'false'}\ntargets = [\n{TARGETS}]\n"
    path.write_text(text)
    return path


def make_universe(root: Path) -> Universe:
    dist = root / "dist"
    alpha = build_wheel(
        dist,
        "alpha",
        "1.0",
        requires=["Beta_Lib>=1.0"],
        requires_python=">=3.8",
        files={"alpha/token.py": "TOKEN = 'alpha-from-export'\n"},
    )
    beta = build_wheel(dist, "Beta_Lib", "1.1")
    beta_newer = build_wheel(dist, "Beta_Lib", "1.2")  # in the store, not in the lock
    gamma_x86 = build_wheel(dist, "gamma", "1.0", tag=X86)
    gamma_arm = build_wheel(dist, "gamma", "1.0", tag=ARM)
    armonly = build_wheel(dist, "armonly", "1.0")
    store = Store(root / "store")
    for w in (alpha, beta, beta_newer, gamma_x86, gamma_arm, armonly):
        store.add_file(w)
    packages = [
        {"name": "alpha", "version": "1.0", "wheels": [alpha], "deps": ["beta-lib"]},
        {"name": "beta-lib", "version": "1.1", "wheels": [beta]},
        {"name": "gamma", "version": "1.0", "wheels": [gamma_x86, gamma_arm], "deps": ["armonly"]},
        {
            "name": "armonly",
            "version": "1.0",
            "wheels": [armonly],
            "marker": "platform_machine == 'aarch64'",
        },
    ]
    lock = LockFile.load(write_lock(root / "pylock.toml", packages))
    wheels = {w.name: w for w in (alpha, beta, beta_newer, gamma_x86, gamma_arm, armonly)}
    return Universe(root, store, lock, wheels)


@pytest.fixture
def universe(tmp_path: Path) -> Universe:
    return make_universe(tmp_path / "u")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.meta: dict[str, str | None] = {}
        self._open: dict[str, str | None] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open, self._text = dict(attrs), ""
        elif tag == "meta":
            d = dict(attrs)
            self.meta[str(d.get("name"))] = d.get("content")

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.anchors.append((self._open, self._text))
            self._open = None


def parse_html(text: str) -> Anchors:
    parser = Anchors()
    parser.feed(text)
    parser.close()
    return parser


# --- layout, pages, lock ----------------------------------------------------------------


def test_export_lays_out_files_metadata_and_pages(universe: Universe) -> None:
    out = universe.root / "out"
    result = export_index(universe.lock, universe.store, out, targets=["linux-x86_64"])
    assert (result.out, result.projects, result.files) == (out, 3, 3)
    assert result.lock == out / "pylock.toml"
    names = sorted(p.name for p in (out / "files").iterdir())
    wheels = ["alpha-1.0-py3-none-any.whl", "beta_lib-1.1-py3-none-any.whl", f"gamma-1.0-{X86}.whl"]
    assert names == sorted([*wheels, *(f"{w}.metadata" for w in wheels)])
    assert sorted(p.name for p in (out / "simple").iterdir()) == [
        "alpha",
        "beta-lib",
        "gamma",
        "index.html",
        "index.json",
    ]
    assert (out / MARKER_FILENAME).is_file()
    for w in wheels:
        exported = out / "files" / w
        with zipfile.ZipFile(exported) as zf:
            dist_info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            assert (out / "files" / f"{w}.metadata").read_bytes() == zf.read(dist_info)
        # OUT's own file, never the store's (see test_out_shares_no_inode_with_the_store)
        stored = universe.store.path(hashlib.sha256(exported.read_bytes()).hexdigest())
        assert not os.path.samefile(exported, stored)
    assert not list(universe.root.glob(".out.*")), "temporary directories left behind"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_out_gets_the_mode_the_umask_gives_like_its_folders(universe: Universe, umask: int) -> None:
    """A static web server runs as another user: OUT must be as readable as its
    subfolders (a temporary folder's 0700 once kept everyone else out)."""
    out = universe.root / "out"
    old = os.umask(umask)
    try:
        export_index(universe.lock, universe.store, out, targets=["linux-x86_64"])
    finally:
        os.umask(old)
    expected = 0o777 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == expected
    assert stat.S_IMODE((out / "simple").stat().st_mode) == expected


def test_target_selection_drops_other_targets_files(universe: Universe) -> None:
    both = export_index(universe.lock, universe.store, universe.root / "all")
    assert (both.projects, both.files) == (4, 5)
    arm = export_index(
        universe.lock, universe.store, universe.root / "arm", targets=["linux-aarch64"]
    )
    files = {p.name for p in (universe.root / "arm" / "files").glob("*.whl")}
    assert f"gamma-1.0-{ARM}.whl" in files and f"gamma-1.0-{X86}.whl" not in files
    assert "armonly-1.0-py3-none-any.whl" in files and arm.projects == 4
    assert "beta_lib-1.2-py3-none-any.whl" not in files  # in the store, not in the lock


def test_html_pages_follow_pep_503_658_714(universe: Universe) -> None:
    out = universe.root / "out"
    export_index(universe.lock, universe.store, out, targets=["linux-x86_64"])
    root = parse_html((out / "simple" / "index.html").read_text())
    assert root.meta["pypi:repository-version"] == "1.1"  # PEP 629
    assert [(a["href"], text) for a, text in root.anchors] == [
        ("alpha/", "alpha"),
        ("beta-lib/", "beta-lib"),
        ("gamma/", "gamma"),
    ]
    page = parse_html((out / "simple" / "alpha" / "index.html").read_text())
    [(attrs, text)] = page.anchors
    assert text == "alpha-1.0-py3-none-any.whl"
    href = str(attrs["href"])
    path, fragment = urldefrag(href)
    target = (out / "simple" / "alpha" / unquote(path)).resolve()
    assert target == (out / "files" / text).resolve()
    assert fragment == f"sha256={hashlib.sha256(target.read_bytes()).hexdigest()}"
    assert attrs["data-requires-python"] == ">=3.8"
    meta_sha = hashlib.sha256((out / "files" / f"{text}.metadata").read_bytes()).hexdigest()
    assert attrs["data-dist-info-metadata"] == attrs["data-core-metadata"] == f"sha256={meta_sha}"
    beta = parse_html((out / "simple" / "beta-lib" / "index.html").read_text())
    assert "data-requires-python" not in beta.anchors[0][0]  # unknown: not invented


def test_json_pages_follow_pep_691_and_700(universe: Universe) -> None:
    out = universe.root / "out"
    export_index(universe.lock, universe.store, out, targets=["linux-x86_64"])
    root = json.loads((out / "simple" / "index.json").read_text())
    assert root == {
        "meta": {"api-version": "1.1"},
        "projects": [{"name": "alpha"}, {"name": "beta-lib"}, {"name": "gamma"}],
    }
    page = json.loads((out / "simple" / "alpha" / "index.json").read_text())
    assert set(page) == {"meta", "name", "files", "versions"}
    assert page["meta"] == {"api-version": "1.1"} and page["name"] == "alpha"
    assert page["versions"] == ["1.0"]
    [entry] = page["files"]
    wheel = out / "files" / "alpha-1.0-py3-none-any.whl"
    meta_sha = hashlib.sha256(Path(f"{wheel}.metadata").read_bytes()).hexdigest()
    assert entry == {
        "filename": wheel.name,
        "url": f"../../files/{wheel.name}",
        "hashes": {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
        "requires-python": ">=3.8",
        "core-metadata": {"sha256": meta_sha},
        "dist-info-metadata": {"sha256": meta_sha},
        "yanked": False,
        "size": wheel.stat().st_size,
    }
    # PEP 691: relative URLs resolve against the page's URL
    assert (out / "simple" / "alpha" / entry["url"]).resolve() == wheel.resolve()


def test_localized_lock_points_at_exported_files(universe: Universe) -> None:
    out = universe.root / "out"
    export_index(universe.lock, universe.store, out, targets=["linux-x86_64"])
    local = LockFile.load(out / "pylock.toml")  # validates through packaging.pylock
    assert [t.name for t in local.targets] == ["linux-x86_64"]
    assert local.spec_digest == universe.lock.spec_digest
    original = {a.sha256: a for a in universe.lock.artifacts(["linux-x86_64"])}
    artifacts = local.artifacts()
    assert {a.sha256 for a in artifacts} == set(original)
    for a in artifacts:
        assert a.url is None and a.path == f"files/{a.filename}"
        assert a.size == original[a.sha256].size
        assert (out / a.path).is_file()
    names = [str(p.name) for p in local.pylock.packages]
    assert names == ["alpha", "beta-lib", "gamma"]  # armonly: not for x86_64
    gamma = local.pylock.packages[2]
    assert gamma.dependencies == []  # its reference to the dropped armonly is gone
    assert all(p.index == "https://example.invalid/simple" for p in local.pylock.packages)
    assert [len(p.wheels or []) for p in local.pylock.packages] == [1, 1, 1]


def test_sdist_gets_no_metadata_and_lock_requires_python(tmp_path: Path) -> None:
    sdist = build_sdist(tmp_path / "dist", "epsilon", "1.0")
    store = Store(tmp_path / "store")
    store.add_file(sdist)
    pkg = {"name": "epsilon", "version": "1.0", "sdist": sdist, "requires_python": ">=3.9"}
    lock = LockFile.load(write_lock(tmp_path / "pylock.toml", [pkg], allow_sdist=True))
    out = tmp_path / "out"
    export_index(lock, store, out)
    assert sorted(p.name for p in (out / "files").iterdir()) == [sdist.name]
    [(attrs, _)] = parse_html((out / "simple" / "epsilon" / "index.html").read_text()).anchors
    assert attrs["data-requires-python"] == ">=3.9"
    assert "data-core-metadata" not in attrs and "data-dist-info-metadata" not in attrs
    [entry] = json.loads((out / "simple" / "epsilon" / "index.json").read_text())["files"]
    assert entry["core-metadata"] is False and entry["dist-info-metadata"] is False
    local = LockFile.load(out / "pylock.toml")
    assert local.pylock.packages[0].sdist is not None
    assert local.pylock.packages[0].sdist.path == f"files/{sdist.name}"


def test_wheel_metadata_picks_the_projects_dist_info(tmp_path: Path) -> None:
    wheel = tmp_path / "My_Pkg-2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("vendored-1.0.dist-info/METADATA", "Name: vendored\n")
        zf.writestr("my_pkg-2.0.dist-info/METADATA", "Name: My.Pkg\n")
    assert wheel_metadata(wheel, "my.pkg", "2.0") == b"Name: My.Pkg\n"
    broken = tmp_path / "none-1.0-py3-none-any.whl"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("none/__init__.py", "")
    with pytest.raises(IndexExportError, match="dist-info"):
        wheel_metadata(broken, "none", "1.0")
    notzip = tmp_path / "bad-1.0-py3-none-any.whl"
    notzip.write_bytes(b"not a zip")
    with pytest.raises(IndexExportError, match="not a readable wheel"):
        wheel_metadata(notzip, "bad", "1.0")


def test_two_files_with_one_name_are_refused(tmp_path: Path) -> None:
    one = build_wheel(tmp_path / "one", "alpha", "1.0", files={"alpha/x.py": "1"})
    two = build_wheel(tmp_path / "two", "alpha", "1.0", files={"alpha/x.py": "2"})
    store = Store(tmp_path / "store")
    store.add_file(one)
    store.add_file(two)
    # e.g. one version from two indexes, one per platform: same name, other bytes
    packages = [
        {"name": "alpha", "version": "1.0", "wheels": [p], "marker": f"platform_machine == '{m}'"}
        for p, m in ((one, "x86_64"), (two, "aarch64"))
    ]
    lock = LockFile.load(write_lock(tmp_path / "pylock.toml", packages))
    with pytest.raises(IndexExportError, match="same name") as info:
        export_index(lock, store, tmp_path / "out")
    assert [p.where for p in info.value.problems] == [one.name]
    assert not (tmp_path / "out").exists()


# --- failures leave OUT alone ------------------------------------------------------------


def test_missing_artifacts_are_all_named(universe: Universe) -> None:
    empty = Store(universe.root / "empty-store")
    with pytest.raises(StoreError) as info:
        export_index(universe.lock, empty, universe.root / "out", targets=["linux-x86_64"])
    named = {p.message.split(" (sha256")[0] for p in info.value.problems}
    assert named == {"alpha-1.0-py3-none-any.whl", "beta_lib-1.1-py3-none-any.whl"} | {
        f"gamma-1.0-{X86}.whl"
    }
    # pasted from any folder: both paths named; narrowed as the export: what it needs
    command = (
        f"envship fetch --lock {universe.lock.path} --target linux-x86_64 --store {empty.root}"
    )
    assert info.value.hint and command in info.value.hint
    assert not (universe.root / "out").exists()


def _corrupt(store: Store, wheel: Path) -> Path:
    """Replace the store's copy with other bytes (a new inode: an earlier export's hard
    link keeps the good bytes, as it would after a botched re-fetch)."""
    stored = store.path(hashlib.sha256(wheel.read_bytes()).hexdigest())
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    staged = stored.with_name("corrupt")
    staged.write_bytes(bytes(data))
    os.replace(staged, stored)
    return stored


def test_corrupt_store_file_is_refused_and_previous_export_kept(universe: Universe) -> None:
    out = universe.root / "out"
    export_index(universe.lock, universe.store, out, targets=["linux-x86_64"])
    before = tree(out)
    stored = _corrupt(universe.store, universe.wheels[f"gamma-1.0-{X86}.whl"])
    with pytest.raises(ArtifactError) as info:
        export_index(universe.lock, universe.store, out, targets=["linux-x86_64"])
    assert info.value.artifact == f"gamma-1.0-{X86}.whl" and info.value.exit_code == 4
    # the same fields as fetch's integrity errors: the two hashes
    assert (info.value.expected, info.value.actual) == (stored.name, sha256_file(stored))
    assert tree(out) == before
    assert sorted(p.name for p in universe.root.iterdir() if p.name.startswith(".")) == []


def test_failed_first_export_leaves_no_out(universe: Universe) -> None:
    _corrupt(universe.store, universe.wheels["beta_lib-1.1-py3-none-any.whl"])
    out = universe.root / "out"
    with pytest.raises(ArtifactError, match=r"beta_lib-1\.1"):
        export_index(universe.lock, universe.store, out)
    assert not out.exists()
    assert [p.name for p in universe.root.iterdir() if p.name.startswith(".")] == []


def test_refuses_a_directory_that_is_not_an_export(universe: Universe) -> None:
    out = universe.root / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    with pytest.raises(IndexExportError, match="not an envship index export") as info:
        export_index(universe.lock, universe.store, out)
    assert info.value.exit_code == 2  # bad input, not a failed export
    assert (out / "thesis.txt").read_text() == "do not delete"
    result = export_index(universe.lock, universe.store, out, force=True)
    assert not (out / "thesis.txt").exists() and result.files == 5


@pytest.mark.parametrize(
    ("out", "problem"),
    [
        ("u/store", "is the store"),
        ("u/store/sha256", "is inside the store"),
        ("u/store/new", "is inside the store"),
        ("u/store-link/sha256", "is inside the store"),  # through a symlink to the store
        ("u", "holds the store"),  # which holds the lock too
        (".", "holds the store"),
    ],
)
def test_out_that_would_take_the_store_or_lock_with_it_is_refused_even_with_force(
    universe: Universe, out: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (universe.root / "store-link").symlink_to(universe.store.root)
    before = tree(universe.store.root)
    lock_text = universe.lock.path.read_text()
    monkeypatch.chdir(universe.root.parent)
    with pytest.raises(IndexExportError, match="replacing it would remove") as info:
        export_index(universe.lock, universe.store, Path(out), force=True)
    assert info.value.exit_code == 2
    assert any(p.message.startswith(problem) for p in info.value.problems), info.value.problems
    assert tree(universe.store.root) == before and universe.lock.path.read_text() == lock_text


def test_out_holding_the_lock_is_refused(universe: Universe) -> None:
    lock_dir = universe.root / "project"
    lock_dir.mkdir()
    moved = lock_dir / "pylock.toml"
    moved.write_text(universe.lock.path.read_text())
    with pytest.raises(IndexExportError) as info:
        export_index(LockFile.load(moved), universe.store, lock_dir, force=True)
    assert [p.message for p in info.value.problems] == [f"holds the lock {moved}"]
    assert moved.is_file()


def test_reexport_replaces_previous_and_accepts_empty_dir(universe: Universe) -> None:
    out = universe.root / "out"
    out.mkdir()
    export_index(universe.lock, universe.store, out)
    assert (out / "files" / f"gamma-1.0-{ARM}.whl").exists()
    export_index(universe.lock, universe.store, out, targets=["linux-x86_64"])
    assert not (out / "files" / f"gamma-1.0-{ARM}.whl").exists()
    assert [p.name for p in universe.root.iterdir() if p.name.startswith(".")] == []


# --- OUT's files are its own ---------------------------------------------------------------


@contextmanager
def btrfs(point: Path) -> Iterator[Path]:
    """A real btrfs (a sparse image on a loop device) mounted at ``point``: a file system
    that clones files copy-on-write (FICLONE). Needs root and mkfs.btrfs (btrfs-progs),
    as the full-disk tests need root; without them the test fails saying so."""
    image = point.with_name(point.name + ".img")
    with open(image, "wb") as f:
        f.truncate(256 << 20)  # sparse; btrfs wants more than about 110 MiB
    point.mkdir()
    # max_inline=0: the test's small wheels get extents of their own (inline data, kept in
    # the metadata, is copied by a clone, never shared), so a clone shows as shared.
    mount = ["mount", "-o", "loop,max_inline=0", str(image), str(point)]
    for cmd in (["mkfs.btrfs", "-q", str(image)], mount):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            pytest.fail(f"{cmd[0]} is missing: apt-get install btrfs-progs", pytrace=False)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)}: {proc.stderr.strip()} (needs root)", pytrace=False)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
        image.unlink()


@dataclass
class Where:
    universe: Universe
    out: Path
    clones: bool  # the file system can clone the store's files into OUT


@pytest.fixture(params=["same-file-system", "btrfs-clones", "across-file-systems"])
def placed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A store and an OUT on the file system tmp_path is on (where the export once made
    hard links), both on a btrfs (where it clones), or OUT on a btrfs and the store not
    (where it copies)."""
    if request.param == "same-file-system":
        universe = make_universe(tmp_path / "u")
        yield Where(universe, universe.root / "out", clones=False)
        return
    with btrfs(tmp_path / "btrfs") as point:
        if request.param == "btrfs-clones":
            universe = make_universe(point / "u")
            yield Where(universe, universe.root / "out", clones=True)
        else:
            yield Where(make_universe(tmp_path / "u"), point / "out", clones=False)


def store_snapshot(store: Store) -> dict[Path, tuple[int, int, int, int, bytes]]:
    """Every store file's inode, mode, owner and bytes."""
    return {
        p: (st.st_ino, st.st_mode, st.st_uid, st.st_gid, p.read_bytes())
        for p in store.root.rglob("*")
        if p.is_file() and (st := p.stat())
    }


def _shared_extents(path: Path) -> bool:
    """Whether ``path``'s data is shared with another file (FIEMAP, via filefrag)."""
    proc = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return "shared" in proc.stdout


def test_out_shares_no_inode_with_the_store(placed: Where) -> None:
    """What a web admin does to a served folder (chown -R, chmod -R a+w, an edit) must
    not reach the store: OUT's files are clones or copies, never hard links."""
    universe, out = placed.universe, placed.out
    before = store_snapshot(universe.store)
    store_inodes = {(p.stat().st_dev, p.stat().st_ino) for p in before}
    export_index(universe.lock, universe.store, out)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".whl"]) == 5
    assert [p for p in files if (p.stat().st_dev, p.stat().st_ino) in store_inodes] == []
    # Cloned: no space taken, the extents shared (copied: none shared).
    assert {_shared_extents(p) for p in files if p.suffix == ".whl"} == {placed.clones}
    for cmd in (["chown", "-R", "nobody", str(out)], ["chmod", "-R", "a+w", str(out)]):
        subprocess.run(cmd, check=True)
    for wheel in (out / "files").glob("*.whl"):
        with wheel.open("r+b") as f:  # an edit in place, and a longer file
            f.write(b"PK defaced")
            f.seek(0, os.SEEK_END)
            f.write(b"appended")
    assert store_snapshot(universe.store) == before


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
@pytest.mark.parametrize("fs", ["tmp_path", "btrfs"])
def test_copy_hashed_hashes_what_it_places(tmp_path: Path, size: int, fs: str) -> None:
    """A copy hashed as it is written, or a clone read back: either way the hash and size
    of the bytes at the destination, across chunk boundaries; a clone only on btrfs."""
    data = os.urandom(size)
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(btrfs(tmp_path / "b")) if fs == "btrfs" else tmp_path
        src, dest = root / "src", root / "dest"
        src.write_bytes(data)
        got = copy_hashed(src, dest)
        assert (got.sha256, got.size) == (hashlib.sha256(data).hexdigest(), size)
        assert got.cloned == (fs == "btrfs")
        assert dest.read_bytes() == data and not os.path.samefile(src, dest)
        assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("case", "named"),
    [("source missing", "src"), ("destination exists", "dest"), ("destination folder", "dest")],
)
def test_copy_hashed_names_the_file_it_failed_on(tmp_path: Path, case: str, named: str) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    if case != "source missing":
        src.write_bytes(b"bytes")
    if case == "destination exists":
        dest.write_bytes(b"someone else's")
    if case == "destination folder":
        dest = tmp_path / "no-such-folder" / "dest"
    with pytest.raises(OSError) as info:
        copy_hashed(src, dest)
    assert info.value.filename == str(src if named == "src" else dest)
    if case == "destination exists":
        assert dest.read_bytes() == b"someone else's"  # never written over


def test_a_store_file_damaged_after_an_export_leaves_it_whole_and_a_repair_is_exported(
    universe: Universe,
) -> None:
    """Damage written into a store file (same inode) does not reach an earlier export;
    ``fetch --verify`` replaces the file, and the next export serves the repaired one."""
    out = universe.root / "out"
    export_index(universe.lock, universe.store, out)
    first = tree(out)
    name = f"gamma-1.0-{X86}.whl"
    stored = universe.store.path(sha256_file(universe.wheels[name]))
    os.chmod(stored, 0o644)
    with stored.open("r+b") as f:  # in place: a stray write on a shared volume
        f.write(b"\0" * 64)
    assert tree(out) == first  # OUT keeps the bytes it was exported with
    with pytest.raises(ArtifactError) as info:
        export_index(universe.lock, universe.store, out)
    assert info.value.artifact == name and info.value.exit_code == 4
    assert tree(out) == first
    from envship.fetch import fetch

    dist = universe.wheels[name].parent
    (dist / "files").symlink_to(dist)  # the lock's URLs end in files/<name>
    with static_server(dist) as (url, _seen):
        served = universe.lock.path.read_text().replace("https://example.invalid", url)
        lock = LockFile.load(write_text(universe.root / "served.toml", served))
        assert fetch(lock, universe.store, verify=True).repaired == 1
    assert sha256_file(universe.store.path(sha256_file(universe.wheels[name]))) == stored.name
    export_index(universe.lock, universe.store, out)
    assert tree(out) == first


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("given", "shown"),
    [("sub/../out", "out"), ("sub/./out", "sub/out"), ("link/../out", "out")],
    ids=["dotdot", "dot", "through-a-symlink"],
)
def test_out_is_shown_normalized(universe: Universe, given: str, shown: str) -> None:
    (universe.root / "sub").mkdir()
    (universe.root / "link").symlink_to(universe.root / "sub")
    result = export_index(universe.lock, universe.store, universe.root / given)
    assert result.out == universe.root / shown
    assert result.lock == universe.root / shown / "pylock.toml"
    assert (result.out / MARKER_FILENAME).is_file()


# --- real installers, offline ------------------------------------------------------------


def clean_env(tmp_path: Path) -> dict[str, str]:
    """No PIP_*/UV_* configuration, no proxies that could reach a network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        env.pop(k, None)
        env.pop(k.lower(), None)
    env["PIP_CONFIG_FILE"] = os.devnull  # also skips /etc/pip.conf
    env["UV_CACHE_DIR"] = str(tmp_path / "uv-cache")
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def run(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


def pip_install(index_url: str, target: Path, env: dict[str, str], *extra: str) -> None:
    run(
        [
            *(sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir"),
            *("--disable-pip-version-check", "--index-url", index_url),
            *("--target", str(target), *extra, "alpha==1.0"),
        ],
        env,
    )


def installed(site: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for d in site.glob("*.dist-info"):
        name, _, version = d.name[: -len(".dist-info")].rpartition("-")
        found[canonicalize_name(name)] = version
    return found


@pytest.fixture
def exported(universe: Universe) -> Path:
    out = universe.root / "out"
    export_index(universe.lock, universe.store, out, targets=["linux-x86_64"])
    return out


@pytest.mark.parametrize("extra", [(), ("--only-binary", ":all:")], ids=["plain", "binary"])
def test_pip_installs_from_file_index(
    exported: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    env = clean_env(tmp_path)
    site = tmp_path / "site"
    # A dead proxy: any attempt to reach a network fails the install.
    pip_install((exported / "simple").as_uri(), site, env, *extra, "--proxy", "http://127.0.0.1:9")
    assert installed(site) == {"alpha": "1.0", "beta-lib": "1.1"}
    assert (site / "alpha" / "token.py").read_text() == "TOKEN = 'alpha-from-export'\n"


def make_venv(tmp_path: Path, env: dict[str, str]) -> Path:
    venv = tmp_path / "venv"
    run([find_uv_bin(), "venv", "--no-config", "--python", sys.executable, str(venv)], env)
    return venv


def venv_packages(venv: Path, env: dict[str, str]) -> dict[str, str]:
    proc = run([find_uv_bin(), "pip", "list", "--format", "json", "--python", str(venv)], env)
    return {canonicalize_name(p["name"]): p["version"] for p in json.loads(proc.stdout)}


def test_uv_installs_from_file_index(exported: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    venv = make_venv(tmp_path, env)
    index_url = (exported / "simple").as_uri()
    run(
        [
            *(find_uv_bin(), "pip", "install", "--offline", "--no-config"),
            *("--index-url", index_url, "--python", str(venv), "alpha"),
        ],
        env,
    )
    assert venv_packages(venv, env) == {"alpha": "1.0", "beta-lib": "1.1"}


def test_uv_installs_from_localized_lock(exported: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    venv = make_venv(tmp_path, env)
    lock = exported / "pylock.toml"
    run(
        [
            *(find_uv_bin(), "pip", "install", "--offline", "--no-config"),
            *("--python", str(venv), "-r", str(lock)),
        ],
        env,
    )
    assert venv_packages(venv, env) == {"alpha": "1.0", "beta-lib": "1.1", "gamma": "1.0"}


@contextmanager
def static_server(root: Path) -> Iterator[tuple[str, list[str]]]:
    """The standard library's plain static file server, logging request paths."""
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            seen.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_pip_installs_over_a_static_web_server(exported: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    site = tmp_path / "site"
    with static_server(exported) as (url, seen):
        pip_install(f"{url}/simple", site, env, "--only-binary", ":all:")
    assert installed(site) == {"alpha": "1.0", "beta-lib": "1.1"}
    # pip used the PEP 658 metadata files (and checked their hashes) before the wheels
    assert "/files/alpha-1.0-py3-none-any.whl.metadata" in seen
    assert "/files/alpha-1.0-py3-none-any.whl" in seen


# --- names and hrefs, for any valid name and version --------------------------------------

NAMES = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?\Z")
LOCAL = st.from_regex(r"\A[a-z0-9]{1,4}([._-][a-z0-9]{1,4}){0,2}\Z")


@st.composite
def versions(draw: st.DrawFn) -> str:
    epoch = draw(st.sampled_from(["", "1!", "20!"]))
    release = ".".join(str(n) for n in draw(st.lists(st.integers(0, 999), min_size=1, max_size=4)))
    pre = draw(st.sampled_from(["", "a1", "b2", "rc3", ".post1", ".dev4", "-1"]))
    local = draw(st.one_of(st.just(""), LOCAL.map(lambda s: f"+{s}")))
    text = f"{epoch}{release}{pre}{local}"
    Version(text)  # only valid PEP 440 versions
    return text


TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=12)


@given(name=NAMES, version=versions(), requires=st.one_of(st.none(), TEXT), sdist=st.booleans())
def test_dirs_and_hrefs_are_normalized_and_escaped(
    name: str, version: str, requires: str | None, sdist: bool
) -> None:
    directory = project_dir(name)
    assert directory == re.sub(r"[-_.]+", "-", name).lower()  # PEP 503's own definition
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", directory)
    stem = name.replace("-", "_")
    filename = f"{stem}-{version}.tar.gz" if sdist else f"{stem}-{version}-py3-none-any.whl"
    sha = hashlib.sha256(filename.encode()).hexdigest()
    entry = IndexFile(filename, version, sha, 1, requires, None if sdist else sha)
    page = render_project_html(name, [entry])
    for raw_href in re.findall(r'href="([^"]*)"', page):
        assert re.fullmatch(r"[A-Za-z0-9._~%/#=-]+", raw_href), raw_href
    [(attrs, text)] = parse_html(page).anchors
    assert text == filename
    path, fragment = urldefrag(str(attrs["href"]))
    assert unquote(path) == f"../../files/{filename}" and fragment == f"sha256={sha}"
    assert attrs.get("data-requires-python") == (requires or None)
    root = parse_html(render_root_html([name, name.upper()]))
    assert [(a["href"], t) for a, t in root.anchors] == [(f"{directory}/", directory)]


# --- a narrowed export claims only what it holds ------------------------------------------

X86_ENV = "sys_platform == 'linux' and platform_machine == 'x86_64' and python_version == '3.11'"
ARM_ENV = X86_ENV.replace("x86_64", "aarch64")


def make_grouped(root: Path) -> Universe:
    """The universe plus two dependency groups and per-target ``environments``, as
    ``envship lock`` writes them (``default-groups = []``)."""
    u = make_universe(root)
    dev = build_wheel(root / "dist", "devtool", "1.0")
    docs = build_wheel(root / "dist", "docsy", "1.0")
    for w in (dev, docs):
        u.store.add_file(w)
        u.wheels[w.name] = w
    packages = [
        {"name": "alpha", "version": "1.0", "wheels": [u.wheels["alpha-1.0-py3-none-any.whl"]]},
        {
            "name": "beta-lib",
            "version": "1.1",
            "wheels": [u.wheels["beta_lib-1.1-py3-none-any.whl"]],
        },
        {
            "name": "gamma",
            "version": "1.0",
            "wheels": [u.wheels[f"gamma-1.0-{X86}.whl"], u.wheels[f"gamma-1.0-{ARM}.whl"]],
        },
        {
            "name": "devtool",
            "version": "1.0",
            "wheels": [dev],
            "marker": "'dev' in dependency_groups",
        },
        {
            "name": "docsy",
            "version": "1.0",
            "wheels": [docs],
            "marker": "'docs' in dependency_groups",
        },
    ]
    head = (
        f'environments = ["{X86_ENV}", "{ARM_ENV}"]\n'
        'dependency-groups = ["dev", "docs"]\ndefault-groups = []\n'
    )
    lock = LockFile.load(write_lock(root / "pylock.toml", packages, head=head))
    return Universe(root, u.store, lock, u.wheels)


@pytest.fixture
def grouped(tmp_path: Path) -> Universe:
    return make_grouped(tmp_path / "g")


def _claims(lock: LockFile) -> tuple[list[str], list[str], list[str], list[str]]:
    pylock = lock.pylock
    return (
        [str(m) for m in pylock.environments or []],
        list(pylock.dependency_groups or []),
        list(pylock.default_groups or []),
        [t.name for t in lock.targets],
    )


@pytest.mark.parametrize(
    ("targets", "groups", "claims"),
    [
        (None, None, ([X86_ENV, ARM_ENV], ["dev", "docs"], ["linux-x86_64", "linux-aarch64"])),
        (["linux-x86_64"], ["dev"], ([X86_ENV], ["dev"], ["linux-x86_64"])),
        (["linux-aarch64"], [], ([ARM_ENV], [], ["linux-aarch64"])),
        (None, ["docs"], ([X86_ENV, ARM_ENV], ["docs"], ["linux-x86_64", "linux-aarch64"])),
    ],
    ids=["whole", "x86-dev", "arm-no-group", "docs"],
)
def test_narrowed_lock_claims_only_what_it_holds(
    grouped: Universe,
    targets: list[str] | None,
    groups: list[str] | None,
    claims: tuple[list[str], list[str], list[str]],
) -> None:
    out = grouped.root / "out"
    result = export_index(grouped.lock, grouped.store, out, targets=targets, groups=groups)
    local = LockFile.load(result.lock)
    environments, dependency_groups, default_groups, target_names = _claims(local)
    assert environments == [str(Marker(m)) for m in claims[0]]
    assert dependency_groups == claims[1] and default_groups == []
    assert target_names == claims[2]
    assert (list(result.targets), list(result.groups)) == (claims[2], claims[1])
    marker = json.loads((out / MARKER_FILENAME).read_text())
    assert (marker["targets"], marker["groups"]) == (sorted(claims[2]), claims[1])
    # Every group it claims has its files in the export, and no other group does.
    group_of = {"devtool": "dev", "docsy": "docs"}
    names = {a.name for a in local.artifacts(groups=dependency_groups)}
    assert {n for n in group_of if n in names} == {
        n for n, g in group_of.items() if g in dependency_groups
    }


def test_default_groups_follow_the_chosen_groups(tmp_path: Path) -> None:
    u = make_universe(tmp_path / "u")
    wheel = u.wheels["alpha-1.0-py3-none-any.whl"]
    packages = [
        {
            "name": "alpha",
            "version": "1.0",
            "wheels": [wheel],
            "marker": "'dev' in dependency_groups",
        }
    ]
    head = 'dependency-groups = ["dev", "docs"]\ndefault-groups = ["dev", "docs"]\n'
    lock = LockFile.load(write_lock(tmp_path / "pylock.toml", packages, head=head))
    result = export_index(lock, u.store, tmp_path / "out", groups=["dev"])
    local = LockFile.load(result.lock)
    assert _claims(local)[1:3] == (["dev"], ["dev"])
    assert local.pylock.environments is None  # none claimed, none invented


def uv_install(
    lock: Path, venv: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(find_uv_bin(), "pip", "install", "--offline", "--no-config"),
            *("--python", str(venv), "-r", str(lock), *extra),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_uv_installs_the_narrowed_export_and_refuses_the_left_out_platform(
    grouped: Universe, tmp_path: Path
) -> None:
    out = grouped.root / "out"
    export_index(grouped.lock, grouped.store, out, targets=["linux-x86_64"], groups=["dev"])
    env = clean_env(tmp_path)
    venv = make_venv(tmp_path, env)
    lock = out / "pylock.toml"
    done = uv_install(lock, venv, env, "--group", "dev")
    assert done.returncode == 0, done.stderr
    assert venv_packages(venv, env) == {
        "alpha": "1.0",
        "beta-lib": "1.1",
        "gamma": "1.0",
        "devtool": "1.0",
    }
    # The export holds no aarch64 files; its environments say so, and uv refuses the
    # lock as a whole (before the fix it got as far as a package with no wheel).
    arm = uv_install(lock, venv, env, "--python-platform", "aarch64-unknown-linux-gnu", "--dry-run")
    assert arm.returncode != 0
    assert re.search(r"environment is not supported by the lockfile", arm.stderr), arm.stderr
    assert "gamma" not in arm.stderr

"""OCI image layouts (envship.ocilayout): blobs, tags, platforms, the test base layouts."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import multiprocessing.synchronize
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envship._swap import STALE_AFTER
from envship.cli.main import main
from envship.errors import ArtifactError, ImageError, ImageInputError
from envship.layer import LayerWriter
from envship.layerview import LayerView
from envship.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    ImageConfig,
    ImageManifest,
    canonical_json,
    sha256_digest,
)
from envship.ocilayout import INDEX_LOCK, OciLayout, parse_layout_ref
from imagelib import BaseImage
from test_swap import RENAME, traced


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:/tmp/img", (Path("/tmp/img"), None)),
        ("oci:/tmp/img:v1", (Path("/tmp/img"), "v1")),
        ("oci:relative/dir:latest", (Path("relative/dir"), "latest")),
    ],
)
def test_parse_layout_ref(text: str, expected: tuple[Path, str | None]) -> None:
    assert parse_layout_ref(text) == expected


@pytest.mark.parametrize("text", ["docker://x", "oci:", "oci:/tmp/x:", "/tmp/x"])
def test_parse_layout_ref_refuses(text: str) -> None:
    with pytest.raises(ImageInputError, match="layout reference") as caught:
        parse_layout_ref(text)
    assert caught.value.exit_code == 2


def test_create_and_open(tmp_path: Path) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    assert json.loads((tmp_path / "l/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((tmp_path / "l/index.json").read_text())["manifests"] == []
    assert OciLayout.open(tmp_path / "l") == layout
    with pytest.raises(ImageInputError, match="not an OCI image layout"):
        OciLayout.open(tmp_path / "missing")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/file").write_text("x")
    with pytest.raises(ImageError, match="not an empty folder"):
        OciLayout.open(tmp_path / "busy", create=True)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["file"]  # left as it was
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ImageError, match="is not a folder"):
        OciLayout.open(tmp_path / "plain", create=True)


def test_blobs_are_verified(tmp_path: Path) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    descriptor = layout.add_blob(b"hello", "text/plain")
    assert layout.add_blob(b"hello", "text/plain") == descriptor
    assert layout.get_blob(descriptor) == b"hello"
    path = layout.blob_path(descriptor.digest)
    path.write_bytes(b"jello")
    with pytest.raises(ArtifactError, match=f"{path} does not match blob") as caught:
        layout.get_blob(descriptor)
    assert caught.value.exit_code == 4
    with pytest.raises(ArtifactError, match="does not match blob"):
        layout.verify_blob(descriptor)
    # Adding the same bytes again replaces the damaged copy rather than trusting it.
    assert layout.add_blob(b"hello", "text/plain") == descriptor
    assert layout.get_blob(descriptor) == b"hello"
    with pytest.raises(ImageInputError, match="missing") as missing:
        layout.get_blob(Descriptor("text/plain", "sha256:" + "0" * 64, 1))
    assert missing.value.exit_code == 2


@pytest.mark.parametrize("link", [False, True])
def test_add_blob_file(tmp_path: Path, link: bool) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    with LayerWriter(tmp_path / "work", mtime=0) as writer:
        writer.add_file("a", b"a")
        blob = writer.close()
    with pytest.raises(ArtifactError, match=f"{blob.path} does not match blob {blob.diff_id}"):
        layout.add_blob_file(blob.path, blob.diff_id, blob.size, blob.media_type)
    descriptor = layout.add_blob_file(blob.path, blob.digest, blob.size, blob.media_type, link=link)
    assert descriptor == Descriptor(OCI_LAYER_GZIP, blob.digest, blob.size)
    assert layout.verify_blob(descriptor) == layout.blob_path(blob.digest)
    assert blob.path.exists() == link
    assert [p.name for p in layout.blob_path(blob.digest).parent.glob(".*")] == []


def small_image(layout: OciLayout, content: bytes, arch: str = "amd64") -> Descriptor:
    config = ImageConfig(arch, "linux", ("sha256:" + "a" * 64,))
    config_desc = layout.add_blob(config.to_bytes(), OCI_CONFIG)
    layer = layout.add_blob(content, OCI_LAYER_GZIP)
    return layout.add_blob(ImageManifest(config_desc, (layer,)).to_bytes(), OCI_MANIFEST)


def test_tag_and_resolve(tmp_path: Path) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    one = small_image(layout, b"one")
    layout.tag("v1", one)
    assert layout.resolve()[0].digest == one.digest  # the only image needs no tag
    two = small_image(layout, b"two")
    layout.tag("v2", two)
    layout.tag("v1", two)  # retagging replaces
    index = json.loads((tmp_path / "l/index.json").read_text())
    assert [m["annotations"][REF_NAME] for m in index["manifests"]] == ["v2", "v1"]
    descriptor, manifest = layout.resolve("v1")
    assert descriptor.digest == two.digest and manifest["layers"][0]["size"] == 3
    with pytest.raises(ImageInputError, match="say which one") as several:
        layout.resolve()
    assert several.value.exit_code == 2
    with pytest.raises(ImageInputError, match="no image tagged 'v3'") as caught:
        layout.resolve("v3")
    assert caught.value.hint == "tags there: v2, v1" and caught.value.exit_code == 2
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == [
        "blobs",
        "index.json",
        "oci-layout",
    ]


WRITERS = 4
TAGS_EACH = 40


def all_at_once(target: Callable[..., None], *args: object) -> list[int | None]:
    """Run WRITERS real processes, ``target(*args, writer, barrier)``, that start together
    at the barrier; their exit codes."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WRITERS)
    workers = [context.Process(target=target, args=(*args, w, start)) for w in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [w.exitcode for w in workers]


def _tag_many(
    root: str, manifest: dict[str, Any], writer: int, start: multiprocessing.synchronize.Barrier
) -> None:
    """One tagging process: wait for the others, then tag as fast as it can."""
    layout = OciLayout.open(root)
    descriptor = Descriptor.from_json(manifest, where="test")
    start.wait(timeout=300)  # a sibling that died before here breaks it, not hangs us
    for i in range(TAGS_EACH):
        layout.tag(f"w{writer}-{i}", descriptor)


def test_concurrent_taggers_lose_no_tag(tmp_path: Path) -> None:
    """Processes tagging one layout at once: each read-modify-write of index.json must see
    the others' tags (a lost update drops a tag, which this catches without the lock)."""
    layout = OciLayout.open(tmp_path / "l", create=True)
    manifest = small_image(layout, b"shared").to_json()
    exits = all_at_once(_tag_many, str(layout.root), manifest)
    assert exits == [0] * WRITERS
    index = json.loads((tmp_path / "l/index.json").read_text())  # whole, valid JSON
    assert index["mediaType"] == OCI_INDEX
    expected = {f"w{w}-{i}" for w in range(WRITERS) for i in range(TAGS_EACH)}
    missing = expected - set(layout.tags())
    assert not missing, f"{len(missing)} of {len(expected)} tags lost"
    assert len(layout.tags()) == len(expected)
    assert layout.resolve("w3-39")[0].digest == manifest["digest"]
    assert not (tmp_path / "l" / INDEX_LOCK).exists()  # removed by its last holder


def _create_and_tag(root: str, writer: int, start: multiprocessing.synchronize.Barrier) -> None:
    """One build on a fresh store: create the layout at the same moment as the others."""
    start.wait(timeout=300)
    layout = OciLayout.open(root, create=True)
    layout.tag(f"w{writer}", small_image(layout, f"image {writer}".encode()))


def test_builds_creating_one_new_layout_at_once_all_use_it(tmp_path: Path) -> None:
    for attempt in range(10):  # rounds: the window between mkdir and oci-layout is small
        folder = tmp_path / "fresh-store" / f"oci{attempt}"
        exits = all_at_once(_create_and_tag, str(folder))
        assert exits == [0] * WRITERS
        layout = OciLayout.open(folder)
        assert sorted(layout.tags()) == [f"w{w}" for w in range(WRITERS)]
        assert sorted(p.name for p in folder.iterdir()) == ["blobs", "index.json", "oci-layout"]


def test_resolve_picks_the_platform_from_an_image_index(tmp_path: Path) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    amd = small_image(layout, b"amd", "amd64")
    arm = small_image(layout, b"arm", "arm64")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**amd.to_json(), "platform": {"os": "linux", "architecture": "amd64"}},
            {
                **arm.to_json(),
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
        ],
    }
    layout.tag("multi", layout.add_blob(canonical_json(index), OCI_INDEX))
    assert layout.resolve("multi")[0].digest == amd.digest
    assert layout.resolve("multi", platform="linux/arm64")[0].digest == arm.digest
    assert layout.resolve("multi", platform="linux/arm64/v8")[0].digest == arm.digest
    with pytest.raises(ImageError, match="no manifest for linux/s390x") as caught:
        layout.resolve("multi", platform="linux/s390x")
    assert caught.value.hint == "platforms it has: linux/amd64, linux/arm64"


def test_no_python_layout_has_no_python(no_python_layout: BaseImage) -> None:
    view = LayerView(list(no_python_layout.layers))
    with pytest.raises(ImageError, match="does not exist"):
        view.resolve("/usr/bin/python3")
    assert b"GLIBC_2.36" in view.read(next(p for p in view.files if p.endswith("libc.so.6")))


# -- every blob taken from a layout is checked (the checked-files cache: test_blobcheck) -----------


def one_layer_image(folder: Path, payload: bytes) -> tuple[OciLayout, Descriptor, Path]:
    """A layout with one image whose one gzip layer holds ``payload``: (layout, the layer's
    descriptor, its blob file)."""
    layout = OciLayout.open(folder, create=True)
    with LayerWriter(folder / "blobs", mtime=0) as writer:
        writer.add_file("data.bin", payload)
        blob = writer.close()
    layer = layout.add_blob_file(blob.path, blob.digest, blob.size, blob.media_type)
    config = ImageConfig("amd64", "linux", (blob.diff_id,))
    config_desc = layout.add_blob(config.to_bytes(), OCI_CONFIG)
    layout.tag("t", layout.add_blob(ImageManifest(config_desc, (layer,)).to_bytes(), OCI_MANIFEST))
    return layout, layer, layout.blob_path(layer.digest)


def flip_gzip_os_byte(path: Path) -> None:
    """Change the gzip header's OS byte (RFC 1952): same size, still a valid gzip stream
    with the same content, another digest. Written in place, as an editor would."""
    with path.open("r+b") as f:
        f.seek(9)
        value = f.read(1)[0]
        f.seek(9)
        f.write(bytes([value ^ 0x01]))


def test_image_checks_every_layer_against_its_digest(tmp_path: Path) -> None:
    layout, layer, path = one_layer_image(tmp_path / "l", os.urandom(4096))
    assert layout.image("t").layer_paths == (path,)
    flip_gzip_os_byte(path)
    with pytest.raises(ArtifactError) as caught:
        layout.image("t")
    error = caught.value
    assert error.exit_code == 4 and error.artifact == str(path)
    assert error.message.startswith(f"{path} does not match blob {layer.digest}: ")
    assert error.expected == f"{layer.digest} ({layer.size} bytes)"
    # Sizes only, when asked: the bytes are the caller's to check.
    assert layout.image("t", verify=False).layer_paths == (path,)


@pytest.mark.parametrize("link", [False, True])
def test_a_damaged_blob_in_the_layout_is_replaced_not_kept(tmp_path: Path, link: bool) -> None:
    """A layout that holds a damaged copy (hard-linked from a base that was damaged, say)
    gets the good one when the blob is added again."""
    _, layer, good = one_layer_image(tmp_path / "src", os.urandom(4096))
    out = OciLayout.open(tmp_path / "out", create=True)
    damaged = out.blob_path(layer.digest)
    damaged.write_bytes(good.read_bytes())
    flip_gzip_os_byte(damaged)
    copy = tmp_path / "copy"
    copy.write_bytes(good.read_bytes())
    out.add_blob_file(copy, layer.digest, layer.size, layer.media_type, link=link)
    assert out.verify_blob(layer) == damaged
    assert damaged.read_bytes() == good.read_bytes()
    assert copy.exists() == link


def test_a_damaged_source_is_never_linked(tmp_path: Path) -> None:
    _, layer, path = one_layer_image(tmp_path / "src", os.urandom(4096))
    flip_gzip_os_byte(path)
    out = OciLayout.open(tmp_path / "out", create=True)
    with pytest.raises(ArtifactError, match=f"{path} does not match blob {layer.digest}"):
        out.add_blob_file(path, layer.digest, layer.size, layer.media_type, link=True)
    assert not out.has_blob(layer.digest)
    assert path.stat().st_nlink == 1


# -- a malformed document in a layout is bad input (exit 2), not a failure -------------------------


def marker_not_json(layout: OciLayout) -> str:
    (layout.root / "oci-layout").write_bytes(b'{"imageLayoutVersion": ')
    return "oci-layout: not valid JSON"


def index_not_json(layout: OciLayout) -> str:
    (layout.root / "index.json").write_bytes(b"\xff not json")
    return "index.json: not valid JSON"


def index_entry_not_a_descriptor(layout: OciLayout) -> str:
    entry = {"mediaType": OCI_MANIFEST, "digest": "sha256:1234", "size": 1}
    index = {"schemaVersion": 2, "manifests": [{**entry, "annotations": {REF_NAME: "t"}}]}
    (layout.root / "index.json").write_bytes(canonical_json(index))
    return "invalid descriptor at"


def index_blob_not_json(layout: OciLayout) -> str:
    layout.tag("t", layout.add_blob(b"[not json", OCI_INDEX))
    return ": not valid JSON"


def manifest_not_a_manifest(layout: OciLayout) -> str:
    layout.tag("t", layout.add_blob(canonical_json({"schemaVersion": 1}), OCI_MANIFEST))
    return "invalid image manifest at manifest sha256:"


def config_not_a_config(layout: OciLayout) -> str:
    config = layout.add_blob(canonical_json({"os": "linux"}), OCI_CONFIG)
    layer = layout.add_blob(b"layer", OCI_LAYER_GZIP)
    layout.tag("t", layout.add_blob(ImageManifest(config, (layer,)).to_bytes(), OCI_MANIFEST))
    return "invalid image config at config sha256:"


MALFORMED = [
    marker_not_json,
    index_not_json,
    index_entry_not_a_descriptor,
    index_blob_not_json,
    manifest_not_a_manifest,
    config_not_a_config,
]


@pytest.mark.parametrize("damage", MALFORMED, ids=[m.__name__ for m in MALFORMED])
def test_a_malformed_document_in_a_layout_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[OciLayout], str]
) -> None:
    """envship.oci's parsers raise ImageInputError themselves: the layout the user names
    holds what they gave us, so a malformed document there exits 2, through the library
    and the CLI alike."""
    layout = OciLayout.open(tmp_path / "l", create=True)
    small_image(layout, b"unrelated")  # the damaged image is not the only thing there
    message = damage(layout)
    with pytest.raises(ImageInputError, match=re.escape(message)) as caught:
        OciLayout.open(layout.root).image("t")
    assert caught.value.exit_code == 2
    code = main(["image", "inspect", f"oci:{layout.root}:t", "--store", str(tmp_path / "s")])
    assert code == 2
    assert message in capsys.readouterr().err
    code = main(
        ["image", "inspect", f"oci:{layout.root}:t", "--store", str(tmp_path / "s"), "--json"]
    )
    assert code == 2
    assert json.loads(capsys.readouterr().out)["error"] == "image-input"


# -- a layout without images, and what dead writers and failed writes leave ------------------


def test_a_layout_holding_no_image_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    with pytest.raises(ImageInputError) as caught:
        layout.resolve()
    assert caught.value.message == f"{layout.root} holds no image (its index.json lists none)"
    assert caught.value.exit_code == 2
    assert main(["image", "inspect", f"oci:{layout.root}"]) == 2
    err = capsys.readouterr().err
    assert "holds no image" in err and "say which one" not in err


ADD_BLOB = """
import sys
from envship.ocilayout import OciLayout
layout = OciLayout(__import__("pathlib").Path(sys.argv[1]))
descriptor = layout.add_blob(sys.argv[2].encode(), "application/octet-stream")
if len(sys.argv) > 3:
    layout.tag(sys.argv[3], descriptor)
"""


def killed_writer(root: Path, data: str, tag: str = "", *, at: int = 1) -> None:
    """A writer of ``data`` (and then of ``tag``) SIGKILLed as it enters its ``at``-th
    rename, by strace: it leaves what a killed build leaves."""
    argv = [sys.executable, "-c", ADD_BLOB, str(root), data, *([tag] if tag else [])]
    assert traced(argv, kill_before=(RENAME, at)).returncode == -signal.SIGKILL


def test_sweep_removes_what_dead_writers_left_and_nothing_a_live_one_holds(
    tmp_path: Path,
) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    index = (layout.root / "index.json").read_bytes()
    blobs = layout.root / "blobs" / "sha256"
    killed_writer(layout.root, "dead blob")  # before the blob's rename
    one = small_image(layout, b"one")
    killed_writer(layout.root, "one", "v1")  # the blob is there: killed before the index
    assert (layout.root / "index.json").read_bytes() == index
    dead = sorted(p.name for p in [*blobs.iterdir(), *layout.root.iterdir()] if ".held-" in p.name)
    assert len(dead) == 2 and any(name.startswith(".index.json.") for name in dead)
    # A running writer's partial, held by this process, and an older envship's, fresh
    # and stale (unlocked: only their age tells).
    live = blobs / f".{'b' * 64}.held-1-abcdef01.partial"
    fd = os.open(live, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    fresh, stale = blobs / f".{'c' * 64}.1-aa.partial", blobs / f".{'d' * 64}.2-bb.partial"
    fresh.write_bytes(b"x")
    stale.write_bytes(b"x")
    old = time.time() - STALE_AFTER - 60
    os.utime(stale, (old, old))
    try:
        assert sorted(layout.sweep()) == sorted([*dead, stale.name])
        assert live.exists() and fresh.exists()
    finally:
        os.close(fd)
    assert layout.sweep() == [live.name]  # its writer is gone now
    assert layout.has_blob(one.digest) and (layout.root / "index.json").read_bytes() == index


def test_a_failed_write_removes_only_the_blobs_no_manifest_references(tmp_path: Path) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    one = small_image(layout, b"one")
    layout.tag("v1", one)
    shared = layout.blob_path(sha256_digest(b"one"))
    orphan = layout.add_blob(b"orphan", OCI_LAYER_GZIP)
    added = [orphan.digest, sha256_digest(b"one"), one.digest]
    assert layout.remove_unreferenced(added) == [orphan.digest]
    assert shared.exists() and not layout.has_blob(orphan.digest)
    assert layout.image("v1").descriptor.digest == one.digest


def test_a_tag_is_written_only_when_the_blobs_it_needs_are_there(tmp_path: Path) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    one = small_image(layout, b"one")
    index = (layout.root / "index.json").read_bytes()
    gone = sha256_digest(b"removed meanwhile")
    with pytest.raises(ImageError, match="went missing") as caught:
        layout.tag("v1", one, needs=[sha256_digest(b"one"), gone])
    assert [p.where for p in caught.value.problems] == [str(layout.blob_path(gone))]
    assert (layout.root / "index.json").read_bytes() == index
    layout.tag("v1", one, needs=[sha256_digest(b"one"), one.digest])
    assert layout.tags() == ["v1"]

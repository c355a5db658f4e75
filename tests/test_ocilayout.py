"""OCI image layouts (envship.ocilayout): blobs, tags, platforms, the test base layouts."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from envship.errors import ArtifactError, ImageError
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
)
from envship.ocilayout import INDEX_LOCK, OciLayout, parse_layout_ref
from imagelib import BaseImage


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
    with pytest.raises(ImageError, match="layout reference"):
        parse_layout_ref(text)


def test_create_and_open(tmp_path: Path) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    assert json.loads((tmp_path / "l/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((tmp_path / "l/index.json").read_text())["manifests"] == []
    assert OciLayout.open(tmp_path / "l") == layout
    with pytest.raises(ImageError, match="not an OCI image layout"):
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
    layout.blob_path(descriptor.digest).write_bytes(b"jello")
    with pytest.raises(ArtifactError, match="corrupt") as caught:
        layout.get_blob(descriptor)
    assert caught.value.exit_code == 4
    with pytest.raises(ArtifactError, match="corrupt"):
        layout.verify_blob(descriptor)
    with pytest.raises(ImageError, match="missing"):
        layout.get_blob(Descriptor("text/plain", "sha256:" + "0" * 64, 1))


@pytest.mark.parametrize("link", [False, True])
def test_add_blob_file(tmp_path: Path, link: bool) -> None:
    layout = OciLayout.open(tmp_path / "l", create=True)
    with LayerWriter(tmp_path / "work", mtime=0) as writer:
        writer.add_file("a", b"a")
        blob = writer.close()
    with pytest.raises(ArtifactError, match="does not match"):
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
    with pytest.raises(ImageError, match="say which one"):
        layout.resolve()
    with pytest.raises(ImageError, match="no image tagged 'v3'") as caught:
        layout.resolve("v3")
    assert caught.value.hint == "tags there: v2, v1"
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

"""OCI image layouts and docker-archives (envship.ocilayout), down to a real ``docker load``."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

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
from envship.ocilayout import (
    OciLayout,
    parse_layout_ref,
    read_docker_archive,
    write_docker_archive,
)
from imagelib import BaseImage, docker, make_image
from serviceslib import DockerEngine


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


def layered_image(tmp_path: Path) -> BaseImage:
    def build(writer: LayerWriter) -> None:
        writer.add_file("opt/envship/hello.txt", b"hello from envship\n")
        writer.add_symlink("opt/envship/hello", "hello.txt")

    return make_image(tmp_path / "layout", build, tag="t", config={})


def test_docker_archive_round_trip(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    archive = tmp_path / "out" / "image.tar"
    write_docker_archive(
        archive, config=image.config_bytes, layers=image.layers, repo_tags=["x/y:1"]
    )
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert {"manifest.json", "index.json", "oci-layout"} <= set(names)
    assert manifest[0]["RepoTags"] == ["x/y:1"]
    assert [p.name for p in archive.parent.iterdir()] == ["image.tar"]
    # The archive is an OCI layout too, and reads back to the same image.
    imported = read_docker_archive(archive, OciLayout.open(tmp_path / "back", create=True), tag="b")
    assert imported.descriptor.digest == image.descriptor.digest
    assert imported.config.diff_ids == image.config.diff_ids
    assert LayerView(imported.layer_paths).read("opt/envship/hello") == b"hello from envship\n"


def test_docker_archive_is_atomic(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    archive = tmp_path / "out" / "image.tar"
    with pytest.raises(FileNotFoundError):
        write_docker_archive(
            archive,
            config=image.config_bytes,
            layers=[tmp_path / "gone"],
            repo_tags=["x/y:1"],
        )
    with pytest.raises(ImageError, match="1 layers but 2 diff_ids"):
        config = ImageConfig.from_json(image.config_bytes)
        bad = ImageConfig(config.architecture, "linux", config.diff_ids * 2)
        write_docker_archive(archive, config=bad.to_bytes(), layers=image.layers, repo_tags=[])
    assert not archive.parent.exists() or list(archive.parent.iterdir()) == []


def test_read_docker_archive_checks_diff_ids(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    config = ImageConfig.from_json(image.config_bytes)
    lying = ImageConfig(config.architecture, "linux", ("sha256:" + "b" * 64,))
    archive = tmp_path / "lying.tar"
    write_docker_archive(archive, config=lying.to_bytes(), layers=image.layers, repo_tags=[])
    target = OciLayout.open(tmp_path / "in", create=True)
    with pytest.raises(ArtifactError, match="diff_ids"):
        read_docker_archive(archive, target)
    assert list(target.blob_path(config.diff_ids[0]).parent.glob(".*")) == []


def test_docker_loads_and_runs_the_archive(
    tmp_path: Path, bookworm_layout: BaseImage, docker_engine: DockerEngine
) -> None:
    top = layered_image(tmp_path)
    # One image of two layers: bookworm's below ours, as envship image build stacks them.
    config = ImageConfig(
        bookworm_layout.config.architecture,
        "linux",
        (*bookworm_layout.config.diff_ids, *top.config.diff_ids),
        config=bookworm_layout.config.config,
    )
    archive = tmp_path / "both.tar"
    tag = f"envship-test/layered:{os.getpid()}"
    write_docker_archive(
        archive,
        config=config.to_bytes(),
        layers=[*bookworm_layout.layers, *top.layers],
        repo_tags=[tag],
    )
    result = docker_engine.docker("load", "-i", str(archive), check=False)
    assert result.returncode == 0, result.stderr
    try:
        script = "cat /opt/envship/hello; ls -ld /tmp | cut -c1-10"
        run = docker_engine.docker(
            "run", "--rm", "--network", "none", tag, "sh", "-c", script, check=False
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout == "hello from envship\ndrwxrwxrwt\n"
    finally:
        docker_engine.docker("rmi", tag, check=False)


def test_bookworm_layout_runs_python(
    tmp_path: Path, bookworm_layout: BaseImage, docker_load: Callable[[BaseImage, str], str]
) -> None:
    tag = docker_load(bookworm_layout, "envship-test/bookworm-layout:test")
    run = docker("run", "--rm", "--network", "none", tag, "python3", "--version", check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Python 3.11.")
    # What Docker itself saves reads back as a base: same diff_ids, same files.
    saved = tmp_path / "saved.tar"
    docker("save", "-o", str(saved), tag)
    imported = read_docker_archive(saved, OciLayout.open(tmp_path / "imported", create=True))
    assert imported.config.diff_ids == bookworm_layout.config.diff_ids
    view = LayerView(list(imported.layer_paths))
    assert view.resolve("/usr/bin/python3") == "usr/bin/python3.11"


def test_no_python_layout_has_no_python(no_python_layout: BaseImage) -> None:
    view = LayerView(list(no_python_layout.layers))
    with pytest.raises(ImageError, match="does not exist"):
        view.resolve("/usr/bin/python3")
    assert b"GLIBC_2.36" in view.read(next(p for p in view.files if p.endswith("libc.so.6")))

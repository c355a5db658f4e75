"""Docker's image archive (envship.dockerarchive), down to a real ``docker load`` and
``docker save``."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from envship.dockerarchive import read_docker_archive, write_docker_archive
from envship.errors import ArtifactError, ImageError
from envship.layer import LayerWriter
from envship.layerview import LayerView
from envship.oci import ImageConfig
from envship.ocilayout import OciLayout
from imagelib import BaseImage, docker, make_image
from serviceslib import DockerEngine


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

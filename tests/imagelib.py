"""Base images for the image tests, made without a daemon (a pytest plugin, see conftest).

``bookworm_layout`` turns the debootstrap Debian 12 root into a one-layer OCI layout with a
proper config; ``no_python_layout`` is a small base without any Python, for the bad-input
tests. Both are built once per session under pytest's temporary folder. ``docker_load``
puts such an image into the real Docker engine through a docker-archive.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from envship.dockerarchive import write_docker_archive
from envship.layer import LayerWriter
from envship.oci import OCI_CONFIG, OCI_MANIFEST, Descriptor, ImageConfig, ImageManifest
from envship.ocilayout import OciLayout, default_platform
from envship.registry import RegistryClient
from serviceslib import DockerEngine

#: Fixed time for test images (2023-11-14), so every session builds the same digests.
IMAGE_MTIME = 1_700_000_000
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BaseImage:
    """An image in an OCI layout, with what tests need at hand."""

    layout: OciLayout
    tag: str
    descriptor: Descriptor
    manifest: ImageManifest
    config: ImageConfig
    layers: tuple[Path, ...]

    @property
    def ref(self) -> str:
        """The ``oci:DIR:TAG`` string the CLI takes."""
        return f"oci:{self.layout.root}:{self.tag}"

    @property
    def config_bytes(self) -> bytes:
        return self.layout.get_blob(self.manifest.config)


def bookworm_root(request: pytest.FixtureRequest) -> Path:
    """The debootstrap root, from the services plugin (built once, then cached)."""
    root = request.getfixturevalue("bookworm_root")
    assert isinstance(root, Path)
    return root


def make_image(
    dest: Path,
    build: Callable[[LayerWriter], None],
    *,
    tag: str,
    config: Mapping[str, object] | None = None,
    exact: bool = False,
) -> BaseImage:
    """A one-layer image in a new OCI layout at ``dest``; ``build`` fills the layer."""
    layout = OciLayout.open(dest, create=True)
    with LayerWriter(dest / "blobs", mtime=IMAGE_MTIME, exact=exact) as writer:
        build(writer)
        blob = writer.close()
    layer = layout.add_blob_file(blob.path, blob.digest, blob.size, blob.media_type)
    image_config = ImageConfig(
        architecture=default_platform().split("/")[1],
        os="linux",
        diff_ids=(blob.diff_id,),
        config=dict(config) if config is not None else {"Env": [f"PATH={DEBIAN_PATH}"]},
        created="2023-11-14T22:13:20Z",
        history=({"created": "2023-11-14T22:13:20Z", "created_by": f"envship tests: {tag}"},),
    )
    config_desc = layout.add_blob(image_config.to_bytes(), OCI_CONFIG)
    manifest = ImageManifest(config_desc, (layer,))
    descriptor = layout.add_blob(manifest.to_bytes(), OCI_MANIFEST)
    layout.tag(tag, descriptor)
    return BaseImage(
        layout, tag, descriptor, manifest, image_config, (layout.blob_path(layer.digest),)
    )


@pytest.fixture(scope="session")
def bookworm_layout(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> BaseImage:
    """Debian 12 with Python 3.11 as a one-layer OCI image, ``oci:DIR:bookworm``."""
    root = bookworm_root(request)
    return make_image(
        tmp_path_factory.mktemp("bookworm-layout") / "layout",
        lambda writer: writer.add_tree(root),
        tag="bookworm",
        exact=True,  # a root file system keeps /tmp 1777, setuid bits and group owners
        config={"Env": [f"PATH={DEBIAN_PATH}"], "Cmd": ["/bin/bash"]},
    )


@pytest.fixture(scope="session")
def no_python_layout(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> BaseImage:
    """A base with a C library, a shell-less /usr/bin and an os-release, but no Python."""
    root = bookworm_root(request)
    libc = "usr/lib/x86_64-linux-gnu/libc.so.6"
    if not (root / libc).exists():
        libc = "usr/lib/aarch64-linux-gnu/libc.so.6"

    def build(writer: LayerWriter) -> None:
        writer.add_file("etc/os-release", (root / "etc/os-release").read_bytes())
        writer.add_file("usr/bin/true", (root / "usr/bin/true").read_bytes(), mode=0o755)
        writer.add_file(libc, (root / libc).read_bytes(), mode=0o755)
        writer.add_symlink("bin", "usr/bin")
        writer.add_symlink("lib", "usr/lib")
        writer.add_dir("tmp", 0o755)

    return make_image(
        tmp_path_factory.mktemp("no-python-layout") / "layout", build, tag="no-python"
    )


_ENGINE: list[DockerEngine] = []


def docker_env() -> dict[str, str]:
    """The environment for the docker CLI, pointing at the session's engine (the
    ``docker_load`` fixture starts it). Fails, never skips, without one."""
    if not _ENGINE:
        pytest.fail("no Docker engine: use the docker_load or docker_engine fixture")
    return _ENGINE[0].env()


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], env=docker_env(), capture_output=True, text=True, check=check
    )


@pytest.fixture
def docker_load(
    tmp_path: Path, docker_engine: DockerEngine
) -> Iterator[Callable[[BaseImage, str], str]]:
    """Load images into Docker by way of a docker-archive; the tags are removed after."""
    if not _ENGINE:
        _ENGINE.append(docker_engine)
    loaded: list[str] = []

    def load(image: BaseImage, repo_tag: str) -> str:
        archive = tmp_path / f"{len(loaded)}.docker.tar"
        write_docker_archive(
            archive, config=image.config_bytes, layers=image.layers, repo_tags=[repo_tag]
        )
        result = docker("load", "-i", str(archive), check=False)
        assert result.returncode == 0, result.stderr
        loaded.append(repo_tag)
        archive.unlink()
        return repo_tag

    yield load
    for repo_tag in loaded:
        docker("rmi", "--no-prune", repo_tag, check=False)


def push_base(image: BaseImage, registry: str, repository: str, tag: str) -> None:
    """Put ``image`` into a real registry with envship's client (blobs, then manifest)."""
    client = RegistryClient(registry)

    def opener(path: Path) -> Callable[[], BinaryIO]:
        return lambda: path.open("rb")

    for descriptor in (*image.manifest.layers, image.manifest.config):
        client.push_blob(repository, descriptor, opener(image.layout.blob_path(descriptor.digest)))
    client.put_manifest(repository, tag, image.manifest.media_type, image.manifest.to_bytes())

"""``envship.imageinspect``: what each layer of an image holds, and whether the environment
inside an image equals the lock, read from the layers without running anything."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from envship.errors import ImageError
from envship.image import BuiltImage
from envship.imageinspect import inspect_image, verify_image
from envship.imageio import ImageSource, open_image, write_image
from envship.install import MARKER_NAME
from envship.layer import LayerWriter
from envship.oci import OCI_CONFIG, OCI_MANIFEST, ImageManifest
from envship.ocilayout import LayoutImage, OciLayout
from envship.store import Store
from imagelib import BaseImage, make_image
from test_image import (
    PLATFORM,
    VENV_SITE,
    Setup,
    _no_source_date_epoch,
    bookworm_facts,
    image_target,
    sample,
    sample_layout,
    slim_layout,
    slim_sample,
)
from test_install import write_lock

# The fixtures imported from test_image are shared with it (built once per session).
__all__ = [
    "_no_source_date_epoch",
    "append_layer",
    "bookworm_facts",
    "sample",
    "sample_layout",
    "slim_layout",
    "slim_sample",
]

VENV = "/opt/envship/venv"


def append_layer(image: LayoutImage, folder: Path, fill: Callable[[LayerWriter], None]) -> str:
    """``image`` with one more layer on top, in a new OCI layout: the way someone could
    change an image after it was built. Returns its ``oci:`` reference."""
    layout = OciLayout.open(folder, create=True)
    for descriptor, path in zip(image.manifest.layers, image.layer_paths, strict=True):
        layout.add_blob_file(
            path, descriptor.digest, descriptor.size, descriptor.media_type, link=True
        )
    with LayerWriter(folder / "blobs", mtime=0) as writer:
        fill(writer)
        blob = writer.close()
    top = layout.add_blob_file(blob.path, blob.digest, blob.size, blob.media_type)
    config = replace(
        image.config,
        diff_ids=(*image.config.diff_ids, blob.diff_id),
        history=(*image.config.history, {"created_by": "someone else"}),
    )
    config_desc = layout.add_blob(config.to_bytes(), OCI_CONFIG)
    manifest = ImageManifest(config_desc, (*image.manifest.layers, top))
    layout.tag("changed", layout.add_blob(manifest.to_bytes(), OCI_MANIFEST))
    return f"oci:{folder}:changed"


def tamper(w: LayerWriter) -> None:
    """A changed file, a removed one and an added one, in the environment."""
    w.add_file(f"{VENV_SITE}/alpha/__init__.py", b'__version__ = "6.6.6"\n')
    w.add_whiteout(f"{VENV_SITE}/beta/__init__.py")
    w.add_file(f"{VENV_SITE}/tool/backdoor.py", b"import os\n")


@pytest.fixture(scope="module")
def sample_source(
    sample_layout: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ImageSource, Store]:
    store = Store(tmp_path_factory.mktemp("inspect-store"))
    return open_image(sample_layout, store), store


@pytest.fixture(scope="module")
def slim_source(
    slim_sample: tuple[Setup, BuiltImage, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ImageSource, Store]:
    """The sample lock on the slim base: verifying it reads 3 MB of base, not 137 MB."""
    store = Store(tmp_path_factory.mktemp("slim-inspect-store"))
    return open_image(slim_sample[2], store), store


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_lists_layers_and_their_distributions(
    sample: tuple[Setup, BuiltImage], sample_source: tuple[ImageSource, Store]
) -> None:
    setup, built = sample
    source, store = sample_source
    info = inspect_image(source, store)
    assert info.digest == built.digest and info.name == source.name
    assert info.platform == f"linux/{'amd64' if PLATFORM.endswith('x86_64') else 'arm64'}"
    assert info.labels["org.envship.lock-digest"] == setup.lock.digest
    assert [layer.digest for layer in info.layers] == [
        layer.descriptor.digest for layer in built.layers
    ]
    assert [layer.distributions for layer in info.layers] == [
        layer.distributions for layer in built.layers
    ]
    assert info.size == sum(layer.size for layer in info.layers)
    assert [layer.created_by for layer in info.layers] == [
        "envship tests: bookworm",
        *(f"envship image build: {layer.label}" for layer in built.layers[1:]),
    ]
    # The base layer was scanned: Debian's minimal python3 installs no dist-info at all.
    base = info.layers[0]
    assert base.distributions == ()
    cached = store.root / "images" / "layer-dists" / f"{base.digest.removeprefix('sha256:')}.json"
    assert json.loads(cached.read_text()) == []
    data = info.to_json()
    assert data["layers"][2]["distributions"] == list(built.layers[2].distributions)
    assert data["size"] == info.size


def test_layers_without_annotations_are_scanned(
    tmp_path: Path, sample: tuple[Setup, BuiltImage], sample_source: tuple[ImageSource, Store]
) -> None:
    """A docker-archive drops layer annotations: the same answer comes from the tars."""
    built = sample[1]
    _, store = sample_source  # its cache already knows the base layer
    archive = write_image(built, f"docker-archive:{tmp_path / 'img.tar'}")
    info = inspect_image(open_image(archive, store), store)
    assert [layer.distributions for layer in info.layers] == [
        layer.distributions for layer in built.layers
    ]


def test_scan_finds_dist_packages_and_site_packages(tmp_path: Path) -> None:
    def fill(w: LayerWriter) -> None:
        w.add_file(
            "usr/lib/python3/dist-packages/Foo_Bar-1.2.dist-info/METADATA", b"Name: Foo_Bar\n"
        )
        w.add_file("usr/lib/python3/dist-packages/foo_bar/__init__.py", b"")
        w.add_file(
            "usr/local/lib/python3.12/site-packages/pip-24.0.dist-info/METADATA", b"Name: pip\n"
        )
        w.add_file("usr/lib/python3/dist-packages/old.egg-info/PKG-INFO", b"Name: old\n")

    base = make_image(tmp_path / "base", fill, tag="dists")
    store = Store(tmp_path / "store")
    info = inspect_image(open_image(f"oci:{base.layout.root}:dists", store), store)
    assert info.layers[0].distributions == ("foo-bar==1.2", "pip==24.0")


# -- verify --------------------------------------------------------------------------------------


def test_built_image_verifies_identical(
    sample: tuple[Setup, BuiltImage], sample_source: tuple[ImageSource, Store]
) -> None:
    setup, _ = sample
    source, _ = sample_source
    report = verify_image(setup.lock, source)
    assert report.identical, report.differences
    assert report.full and report.distributions == 3 and report.checked_files > 10
    assert report.target.name == PLATFORM
    assert str(report.environment.root) == f"{source.name}:{VENV}"
    assert [str(p) for p in report.environment.site_packages] == [f"/{VENV_SITE}"]


def test_changed_image_is_reported_with_image_paths(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    setup = slim_sample[0]
    source, store = slim_source
    ref = append_layer(source.image, tmp_path / "changed", tamper)
    report = verify_image(setup.lock, open_image(ref, store))
    found = sorted((d.kind, d.name, d.path) for d in report.differences)
    assert found == [
        ("added", "tool", f"/{VENV_SITE}/tool/backdoor.py"),
        ("changed", "alpha", f"/{VENV_SITE}/alpha/__init__.py"),
        ("removed", "beta", f"/{VENV_SITE}/beta/__init__.py"),
    ]
    changed = next(d for d in report.differences if d.kind == "changed")
    assert (
        changed.expected != changed.actual
        and changed.actual
        and changed.actual.startswith("sha256")
    )


def test_image_of_another_lock_shows_the_versions(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    setup = slim_sample[0]
    source, _ = slim_source
    other = write_lock(
        tmp_path / "pylock.toml",
        [setup.wheels[k] for k in ("alpha", "beta11", "tool")],
        targets=[image_target()],
    )
    report = verify_image(other, source)
    assert [(d.kind, d.name, d.expected, d.actual) for d in report.differences] == [
        ("version", "beta", "1.1", "1.0")
    ]


def test_image_not_built_by_envship_is_refused(
    tmp_path: Path, sample: tuple[Setup, BuiltImage], bookworm_layout: BaseImage
) -> None:
    store = Store(tmp_path / "store")
    with pytest.raises(ImageError, match="has no environment made by envship") as caught:
        verify_image(sample[0].lock, open_image(bookworm_layout.ref, store))
    assert caught.value.hint and "envship image build" in caught.value.hint


def test_image_without_its_marker_is_refused(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    source, store = slim_source
    ref = append_layer(
        source.image,
        tmp_path / "no-marker",
        lambda w: w.add_whiteout(f"opt/envship/venv/{MARKER_NAME}"),
    )
    with pytest.raises(ImageError, match="cannot read the environment's marker"):
        verify_image(slim_sample[0].lock, open_image(ref, store))

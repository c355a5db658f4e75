"""``envship.imageinspect``: what each layer of an image holds, and whether the environment
inside an image equals the lock, read from the layers without running anything."""

from __future__ import annotations

import importlib.util
import io
import json
import marshal
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from envship._imageenv import skeleton_record
from envship._installmarker import FILES_KEY, LINKS_KEY
from envship.dockerarchive import write_docker_archive
from envship.errors import ImageInputError, TargetError, UnsupportedBaseError
from envship.image import BuiltImage
from envship.imagebase import probe_image
from envship.imageinspect import inspect_image, verify_image
from envship.imageio import ImageSource, open_image, write_image
from envship.install import INCOMPLETE_NAME, MARKER_NAME
from envship.layer import LayerWriter
from envship.layerfs import iter_layer
from envship.oci import OCI_CONFIG, OCI_MANIFEST, ImageManifest, sha256_digest
from envship.ocilayout import LayoutImage, OciLayout
from envship.store import Store
from envship.verify import VENV_CREATION
from imagelib import BaseImage, make_image
from indexlib import _record_hash
from test_image import (
    PLATFORM,
    VENV_SITE,
    Setup,
    _no_source_date_epoch,
    bookworm_facts,
    build,
    image_target,
    layer_files,
    sample,
    sample_layout,
    slim_layout,
    slim_sample,
)
from test_install import write_lock
from test_inuse import Bind, bind

# The fixtures imported from test_image are shared with it (built once per session).
__all__ = [
    "_no_source_date_epoch",
    "append_layer",
    "bind",
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
    """An image whose manifest lost the layer annotations (pushed and pulled by a tool
    that rewrites manifests): the same answer comes from the tars."""
    built = sample[1]
    _, store = sample_source  # its cache already knows the base layer
    archive = tmp_path / "img.tar"
    write_docker_archive(archive, config=built.config_bytes, layers=built.layer_paths, repo_tags=[])
    source = open_image(f"docker-archive:{archive}", store)
    assert all(not layer.annotations for layer in source.image.manifest.layers)
    info = inspect_image(source, store)
    assert [layer.distributions for layer in info.layers] == [
        layer.distributions for layer in built.layers
    ]


def test_a_read_only_store_scans_layers_without_keeping_the_answer(
    tmp_path: Path, sample_source: tuple[ImageSource, Store], bind: Bind
) -> None:
    """A store shared read-only (another team's, a read-only mount of the volume): a layer
    without annotations is scanned, and its answer is not cached, rather than refused."""
    ref = append_layer(
        sample_source[0].image,
        tmp_path / "changed",
        lambda w: w.add_file(f"{VENV_SITE}/extra-1.0.dist-info/METADATA", b"Name: extra\n"),
    )
    (tmp_path / "store").mkdir()
    point = bind(tmp_path / "store", tmp_path / "ro")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(point)], check=True)
    store = Store(point)
    info = inspect_image(open_image(ref, store), store)
    assert info.layers[-1].distributions == ("extra==1.0",)
    assert not any(point.iterdir())


def test_docker_save_layers_are_not_called_compressed(tmp_path: Path) -> None:
    """``docker save`` writes plain tars: their sizes are not compressed sizes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        entry = tarfile.TarInfo("etc/hello")
        entry.size = 6
        tar.addfile(entry, io.BytesIO(b"hello\n"))
    plain = tmp_path / "plain.tar"
    plain.write_bytes(raw.getvalue())
    base = make_image(tmp_path / "base", lambda w: w.add_file("etc/x", b"x"), tag="t")
    config = replace(base.config, diff_ids=(*base.config.diff_ids, sha256_digest(raw.getvalue())))
    archive = tmp_path / "saved.tar"
    write_docker_archive(
        archive, config=config.to_bytes(), layers=[*base.layers, plain], repo_tags=["s:1"]
    )
    store = Store(tmp_path / "store")
    info = inspect_image(open_image(f"docker-archive:{archive}", store), store)
    assert [layer.compressed for layer in info.layers] == [True, False]
    assert info.compression == "partly compressed"
    assert info.to_json()["layers"][1]["compressed"] is False
    only_plain = replace(info, layers=info.layers[1:])
    assert only_plain.compression == "uncompressed"
    assert replace(info, layers=info.layers[:1]).compression == "compressed"


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
    with pytest.raises(ImageInputError, match="has no environment made by envship") as caught:
        verify_image(sample[0].lock, open_image(bookworm_layout.ref, store))
    assert caught.value.hint and "envship image build" in caught.value.hint
    assert caught.value.exit_code == 2


def test_image_whose_python_is_not_the_target_s_is_refused(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    """Built for 3.11, checked against a lock whose target of the same name needs 3.12:
    the same files, but the image's interpreter cannot load that target's wheels."""
    setup = slim_sample[0]
    source, store = slim_source
    py312 = write_lock(
        tmp_path / "pylock.toml",
        [setup.wheels[k] for k in ("alpha", "beta", "tool")],
        targets=[image_target(python="3.12")],
    )
    with pytest.raises(UnsupportedBaseError) as caught:
        verify_image(py312, source, store=store)
    error = caught.value
    assert error.exit_code == 2
    assert error.message.startswith(f"the image {source.name} (linux-")
    assert f"cannot run the lock's target {PLATFORM}" in error.message
    assert [str(p) for p in error.problems] == [
        f"{PLATFORM}: Python 3.12 needed, the image has 3.11"
    ]
    # The facts were read from the layers once, and kept by the image's digest.
    probes = store.root / "images" / "probes"
    assert (probes / f"{source.image.descriptor.digest.removeprefix('sha256:')}.json").is_file()
    assert verify_image(setup.lock, source, store=store).identical


def test_image_of_a_target_the_lock_lacks_is_refused(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    setup = slim_sample[0]
    source, _ = slim_source
    other = write_lock(
        tmp_path / "pylock.toml",
        [setup.wheels[k] for k in ("alpha", "beta", "tool")],
        targets=[image_target("elsewhere")],
    )
    with pytest.raises(TargetError, match=f"environment for target '{PLATFORM}'") as caught:
        verify_image(other, source)
    assert caught.value.exit_code == 2
    assert [str(p) for p in caught.value.problems] == [f"{other.path}: its targets: elsewhere"]


NESTED = b"[" * 100_000 + b"]" * 100_000


def test_a_marker_nested_too_deep_is_a_difference_not_a_refusal(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    """A later layer's marker nested deep enough to make a JSON reader recurse is never
    parsed: it is compared, as bytes, with the marker as built."""
    setup, built, _ = slim_sample
    source, store = slim_source
    marker = f"{VENV[1:]}/{MARKER_NAME}"
    ref = append_layer(source.image, tmp_path / "nested", lambda w: w.add_file(marker, NESTED))
    report = verify_image(setup.lock, open_image(ref, store), store=store)
    [difference] = report.differences
    data = layer_files(built.layer_paths[-1])[marker]
    assert (difference.kind, difference.name, difference.path) == (
        "changed", VENV_CREATION, f"/{marker}"
    )  # fmt: skip
    assert difference.expected == f"{_record_hash(data)}, size {len(data)} (as built)"
    assert difference.actual == f"{_record_hash(NESTED)}, size {len(NESTED)}"


def test_an_image_whose_environment_is_marked_incomplete_is_not_identical(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    """envship never builds such an image; a layer someone added can carry the mark, and
    the launcher in a container refuses the environment then: the image is built again."""
    setup = slim_sample[0]
    source, store = slim_source
    ref = append_layer(
        source.image,
        tmp_path / "marked",
        lambda w: w.add_file(f"{VENV[1:]}/{INCOMPLETE_NAME}", b"install in progress\n"),
    )
    report = verify_image(setup.lock, open_image(ref, store))
    [difference] = report.differences
    assert (difference.kind, difference.path, difference.actual) == (
        "incomplete", f"{VENV}/{INCOMPLETE_NAME}", "install in progress"
    )  # fmt: skip
    assert report.remedy == (
        f"build the image again with `envship image build --lock {setup.lock.path}`"
    )


def test_bytecode_differences_name_paths_in_the_image(
    tmp_path: Path, slim_layout: BaseImage, slim_sample: tuple[Setup, BuiltImage, str]
) -> None:
    """The byte-code check compiles sources unpacked in a temporary folder; what it
    reports names them where they are in the image."""
    setup = slim_sample[0]
    facts = probe_image(slim_layout.layout.image(slim_layout.tag), where="slim")
    built, _ = build(setup, slim_layout, facts, mtime=0, compile_bytecode=True)
    source = f"{VENV_SITE}/alpha/__init__.py"
    pyc = f"{VENV_SITE}/alpha/__pycache__/__init__.cpython-311.pyc"
    holding = next(
        path
        for layer, path in zip(built.layers, built.layer_paths, strict=True)
        if "alpha==1.0" in layer.distributions
    )
    size = next(info.size for info, _ in iter_layer(holding, layer="alpha") if info.name == source)
    # Other code under a header that still matches the source: the image would run it.
    code = compile('__version__ = "pwned"\n', "/x.py", "exec", dont_inherit=True)
    forged = importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, 0, size) + marshal.dumps(code)
    ref = write_image(built, f"oci:{tmp_path / 'out'}:compiled")
    image = OciLayout.open(tmp_path / "out").image("compiled")
    changed = append_layer(image, tmp_path / "changed", lambda w: w.add_file(pyc, forged))
    report = verify_image(setup.lock, open_image(changed, setup.store), bytecode=True)
    assert verify_image(setup.lock, open_image(ref, setup.store), bytecode=True).identical
    [difference] = report.differences
    assert (difference.kind, difference.path) == ("changed", f"/{pyc}")
    assert difference.expected == f"the code of /{source}"
    shown = json.dumps([d.to_json() for d in report.differences])
    assert "envship-verify-image" not in shown and tempfile.gettempdir() + "/" not in shown


# -- the installed RECORDs against the store's wheels ------------------------------------------

ALPHA_INFO = f"{VENV_SITE}/alpha-1.0.dist-info"
ORIGINAL = b'__version__ = "1.0"\n'  # alpha/__init__.py as the wheel has it
EVIL = b'__version__ = "1.0"; import os\n'


def swap_with_its_record(built: BuiltImage) -> Callable[[LayerWriter], None]:
    """alpha/__init__.py replaced, and alpha's RECORD rewritten to match: every file agrees
    with the installed RECORD, so only the locked wheel's own RECORD tells them apart."""
    record = next(
        reader.read()
        for path in built.layer_paths
        for info, reader in iter_layer(path, layer=path.name)
        if info.name == f"{ALPHA_INFO}/RECORD" and reader is not None
    ).decode()
    lines = [
        f"alpha/__init__.py,{_record_hash(EVIL)},{len(EVIL)}"
        if line.startswith("alpha/__init__.py,")
        else line
        for line in record.splitlines()
    ]
    assert lines != record.splitlines()

    def fill(w: LayerWriter) -> None:
        w.add_file(f"{VENV_SITE}/alpha/__init__.py", EVIL)
        w.add_file(f"{ALPHA_INFO}/RECORD", ("\n".join(lines) + "\n").encode())

    return fill


def test_the_store_ties_the_image_to_the_locked_wheels(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    setup, built, _ = slim_sample
    source, _ = slim_source
    # As built, with every wheel in the store: identical, console script (pypa/installer's
    # launcher) included, and no note that the installed RECORDs were all there was.
    pristine = verify_image(setup.lock, source, store=setup.store)
    assert pristine.identical, pristine.differences
    assert not any("installed RECORD only" in n for n in pristine.notes)

    ref = append_layer(source.image, tmp_path / "swapped", swap_with_its_record(built))
    swapped = open_image(ref, setup.store)
    alone = verify_image(setup.lock, swapped)  # no store: the rewritten RECORD agrees
    assert alone.identical, alone.differences
    assert any("installed RECORD only" in n and "--store" in n for n in alone.notes)

    report = verify_image(setup.lock, swapped, store=setup.store)
    [difference] = report.differences
    assert (difference.kind, difference.name, difference.path) == (
        "changed", "alpha", f"/{VENV_SITE}/alpha/__init__.py"
    )  # fmt: skip
    # The file is held against the wheel's hash, not against the RECORD line beside it.
    assert difference.expected == f"{_record_hash(ORIGINAL)}, size {len(ORIGINAL)}"
    assert difference.actual == f"{_record_hash(EVIL)}, size {len(EVIL)}"


def test_an_image_store_without_the_wheels_says_so(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    """A store that lacks the locked wheels vouches for nothing, and the notes say so."""
    setup = slim_sample[0]
    source, _ = slim_source
    empty = Store(tmp_path / "empty-store")
    report = verify_image(setup.lock, source, store=empty)
    assert report.identical, report.differences
    [note] = [n for n in report.notes if "installed RECORD only" in n]
    assert f"the store {empty.root} holds none of the 3 locked wheels" in note


# -- the venv skeleton, held against what the marker records ------------------------------------


def test_the_marker_records_the_skeleton_and_verify_checks_it(
    slim_sample: tuple[Setup, BuiltImage, str], slim_source: tuple[ImageSource, Store]
) -> None:
    setup, built, _ = slim_sample
    source, store = slim_source
    marker = json.loads(layer_files(built.layer_paths[-1])[f"{VENV[1:]}/{MARKER_NAME}"])
    facts = probe_image(source.image, where="slim")
    files, links = skeleton_record(facts)
    assert (marker[FILES_KEY], marker[LINKS_KEY]) == (files, links)
    assert set(files) == {"pyvenv.cfg"}
    assert links == {
        "bin/python": facts.python, "bin/python3": "python",
        f"bin/python{facts.version}": "python", "lib64": "lib",
    }  # fmt: skip
    report = verify_image(setup.lock, source, store=store)
    assert report.identical, report.differences
    assert not any("accepted by name" in n for n in report.notes), report.notes


def _home_elsewhere(w: LayerWriter) -> str:
    cfg = "home = /tmp/evil\ninclude-system-site-packages = false\nversion = 3.11\n"
    w.add_file(f"{VENV[1:]}/pyvenv.cfg", cfg.encode())
    return "changed pyvenv.cfg"


def _python3_repointed(w: LayerWriter) -> str:
    w.add_symlink(f"{VENV[1:]}/bin/python3", "/tmp/evil/python3")
    return "changed bin/python3"


def _python_a_script(w: LayerWriter) -> str:
    w.add_file(f"{VENV[1:]}/bin/python3", b'#!/bin/sh\nexec /tmp/evil "$@"\n', mode=0o755)
    return "changed bin/python3"


def _lib64_removed(w: LayerWriter) -> str:
    w.add_whiteout(f"{VENV[1:]}/lib64")
    return "removed lib64"


@pytest.mark.parametrize(
    "damage", [_home_elsewhere, _python3_repointed, _python_a_script, _lib64_removed]
)
def test_a_changed_skeleton_is_reported(
    tmp_path: Path,
    damage: Callable[[LayerWriter], str],
    slim_sample: tuple[Setup, BuiltImage, str],
    slim_source: tuple[ImageSource, Store],
) -> None:
    setup = slim_sample[0]
    source, store = slim_source
    expected: list[str] = []
    ref = append_layer(source.image, tmp_path / "skeleton", lambda w: expected.append(damage(w)))
    report = verify_image(setup.lock, open_image(ref, store), store=store)
    kind, rel = expected[0].split(" ")
    assert [(d.kind, d.name, d.path) for d in report.differences] == [
        (kind, VENV_CREATION, f"{VENV}/{rel}")
    ]

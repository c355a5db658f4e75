"""``envship verify --image`` with the locked wheels in a store (``--store`` or
``ENVSHIP_STORE``) through the real CLI entry point: an installed file swapped together
with a rewritten RECORD, which only the locked wheel's own RECORD tells apart."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from envship.cli.main import main
from envship.errors import ImageInputError
from envship.image import BuiltImage, build_image
from envship.imagebase import probe_image
from envship.imageinspect import CONFIG_ENV, KERNELSPEC, verify_image
from envship.imageio import open_image, write_image
from envship.layer import LayerWriter
from envship.layerview import LayerView
from envship.oci import OCI_CONFIG, OCI_MANIFEST, ImageManifest
from envship.ocilayout import OciLayout
from imagelib import BaseImage
from indexlib import _record_hash, build_wheel
from test_image import (
    VENV_SITE,
    Setup,
    _no_source_date_epoch,
    build,
    make_setup,
    slim_layout,
    slim_sample,
)
from test_imageinspect import EVIL, ORIGINAL, append_layer, swap_with_its_record
from test_install import build_wheels
from test_wheelrecord import TMPL, WHEEL_PYC, cached_files
from test_wheelrecord import build as build_bytes_wheel

# The fixtures imported from test_image are shared with it (built once per session).
__all__ = ["_no_source_date_epoch", "slim_layout", "slim_sample"]


@pytest.fixture
def swapped(tmp_path: Path, slim_sample: tuple[Setup, BuiltImage, str]) -> str:
    """The slim sample with alpha/__init__.py and alpha's RECORD swapped in a new layer."""
    _, built, ref = slim_sample
    image = OciLayout.open(Path(ref.split(":")[1])).image("slim")
    return append_layer(image, tmp_path / "swapped", swap_with_its_record(built))


def verify_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["verify", "--json", *args])
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)  # one JSON document, whatever the outcome
    assert isinstance(data, dict)
    return code, data


@pytest.mark.parametrize("how", ["--store", "ENVSHIP_STORE"])
def test_the_wheels_in_the_store_catch_a_file_swapped_with_its_record(
    how: str,
    swapped: str,
    slim_sample: tuple[Setup, BuiltImage, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = slim_sample[0]
    lock = ["--lock", str(setup.lock.path)]
    if how == "--store":
        store = ["--store", str(setup.store.root)]
    else:
        monkeypatch.setenv("ENVSHIP_STORE", str(setup.store.root))
        store = []
    code, data = verify_json(capsys, "--image", swapped, *lock, *store)
    assert code == 1 and data["identical"] is False
    assert data["differences"] == [
        {
            "kind": "changed",
            "name": "alpha",
            "path": f"/{VENV_SITE}/alpha/__init__.py",
            "expected": f"{_record_hash(ORIGINAL)}, size {len(ORIGINAL)}",
            "actual": f"{_record_hash(EVIL)}, size {len(EVIL)}",
        }
    ]
    assert isinstance(data["notes"], list)
    assert not any("installed RECORD only" in n for n in data["notes"])


def test_without_the_wheels_the_note_says_what_was_not_tied(
    tmp_path: Path,
    swapped: str,
    slim_sample: tuple[Setup, BuiltImage, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same swap in a store without the wheels: the installed RECORDs agree with the
    files, so it is identical, and the note says no locked wheel vouched for them."""
    setup = slim_sample[0]
    empty = tmp_path / "empty-store"
    code, data = verify_json(
        capsys, "--image", swapped, "--lock", str(setup.lock.path), "--store", str(empty)
    )
    assert code == 0 and data["identical"] is True
    notes = data["notes"]
    assert isinstance(notes, list)
    [note] = [n for n in notes if "installed RECORD only" in n]
    assert f"the store {empty} holds none of the 3 locked wheels" in note


# -- byte-code a wheel lists in its RECORD, and what envship wrote outside the prefix -----------

KERNEL = "usr/local/share/jupyter/kernels/ds"
VENV = "/opt/envship/venv"
PYC = f"{VENV_SITE}/cached/__pycache__/tmpl.cpython-311.pyc"


def kernel_setup(folder: Path) -> Setup:
    """The sample lock, with ipykernel (so the image gets a kernelspec) and a package whose
    wheel lists byte-code in its RECORD, as numpy 2.1.0's does."""
    wheels = build_wheels(folder / "dist")
    wheels["ipykernel"] = build_wheel(folder / "dist", "ipykernel", "6.0")
    wheels["cached"] = build_bytes_wheel(
        folder / "dist", "cached", "1.0", cached_files("cpython-311")
    )
    return make_setup(folder, ["alpha", "beta", "tool", "ipykernel", "cached"], wheels=wheels)


@pytest.fixture(scope="module")
def kernel_images(
    tmp_path_factory: pytest.TempPathFactory, slim_layout: BaseImage
) -> dict[bool, tuple[Setup, str]]:
    """That lock built on the slim base with kernelspec "ds", as it is and compiled:
    compiled -> (setup, oci: reference)."""
    folder = tmp_path_factory.mktemp("kernel-images")
    setup = kernel_setup(folder)
    facts = probe_image(slim_layout.layout.image(slim_layout.tag), where="slim")
    images = {}
    for compiled in (False, True):
        built, _ = build(
            setup, slim_layout, facts, mtime=0, kernel_name="ds", compile_bytecode=compiled
        )
        assert built.kernel == "ds"
        # pypa/installer did not install the wheel's byte-code, and said so.
        assert any("cached" in n and "__pycache__" in n for n in built.notes), built.notes
        images[compiled] = (setup, write_image(built, f"oci:{folder}/out-{compiled}:kernel"))
    return images


def derive(
    ref: str,
    folder: Path,
    fill: Callable[[LayerWriter], None] | None = None,
    env: dict[str, str | None] | None = None,
) -> str:
    """The image at ``ref`` with one more layer (``fill``) or another config Env (``env``:
    name -> value, None to unset), in a new OCI layout, as a derived image's build makes."""
    _, path, tag = ref.split(":")
    image = OciLayout.open(Path(path)).image(tag)
    layout = OciLayout.open(folder, create=True)
    for descriptor, blob in zip(image.manifest.layers, image.layer_paths, strict=True):
        layout.add_blob_file(
            blob, descriptor.digest, descriptor.size, descriptor.media_type, link=True
        )
    layers, config = image.manifest.layers, image.config
    if fill is not None:
        with LayerWriter(folder / "blobs", mtime=0, exact=True) as writer:  # modes as given
            fill(writer)
            new = writer.close()
        top = layout.add_blob_file(new.path, new.digest, new.size, new.media_type)
        layers = (*layers, top)
        config = replace(
            config,
            diff_ids=(*config.diff_ids, new.diff_id),
            history=(*config.history, {"created_by": "someone else"}),
        )
    if env is not None:
        values = {**config.env, **env}
        settings = dict(config.config)
        settings["Env"] = [f"{k}={v}" for k, v in values.items() if v is not None]
        history = {"created_by": "ENV someone else", "empty_layer": True}
        config = replace(config, config=settings, history=(*config.history, history))
    config_desc = layout.add_blob(config.to_bytes(), OCI_CONFIG)
    manifest = ImageManifest(config_desc, layers)
    layout.tag("derived", layout.add_blob(manifest.to_bytes(), OCI_MANIFEST))
    return f"oci:{folder}:derived"


def listed(data: dict[str, object]) -> list[tuple[str, str, str]]:
    """(kind, name, path) of each difference in a ``verify --json`` document."""
    found = data["differences"]
    assert isinstance(found, list)
    return [(d["kind"], d["name"], d["path"]) for d in found]


@pytest.mark.parametrize("compiled", [False, True], ids=["as-is", "compiled"])
def test_byte_code_the_wheel_lists_leaves_an_untouched_image_identical(
    tmp_path: Path,
    compiled: bool,
    kernel_images: dict[bool, tuple[Setup, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The wheel lists cached/__pycache__/tmpl.cpython-311.pyc; the image build skips it
    (and, compiling, writes its own there): neither is a difference, and the source next
    to it is still held to the wheel."""
    setup, ref = kernel_images[compiled]
    layout = OciLayout.open(Path(ref.split(":")[1]))
    image = layout.image("kernel")
    files = LayerView(list(image.layer_paths[1:]))
    # Never the wheel's byte-code; envship's own when compiling.
    in_image = files.read(PYC) if files.get(PYC) is not None else None
    assert in_image != WHEEL_PYC and (in_image is not None) is compiled
    lock, store = ["--lock", str(setup.lock.path)], ["--store", str(setup.store.root)]
    bytecode = ["--bytecode"] if compiled else []
    for mode in ([], ["--full"]):
        code, data = verify_json(capsys, "--image", ref, *lock, *store, *mode, *bytecode)
        assert (code, data["identical"]) == (0, True), data["differences"]

    edited = TMPL + b"import os\n"
    changed = derive(
        ref, tmp_path / "edited", lambda w: w.add_file(f"{VENV_SITE}/cached/tmpl.py", edited)
    )
    code, data = verify_json(capsys, "--image", changed, *lock, *store)
    assert code == 1
    assert listed(data) == [("changed", "cached", f"/{VENV_SITE}/cached/tmpl.py")]


Found = list[tuple[str, str, str, str | None]]  # kind, name, path, expected


def as_built(data: bytes) -> str:
    return f"{_record_hash(data)}, size {len(data)} (as built)"


def _argv_system_python(w: LayerWriter, built: bytes) -> Found:
    spec = json.loads(built)
    spec["argv"][0] = "/usr/bin/python3"  # the base's Python: none of the locked packages
    w.add_file(f"{KERNEL}/kernel.json", json.dumps(spec, indent=1, sort_keys=True).encode())
    return [("changed", KERNELSPEC, f"/{KERNEL}/kernel.json", as_built(built))]


def _kernel_json_removed(w: LayerWriter, built: bytes) -> Found:
    w.add_whiteout(f"{KERNEL}/kernel.json")
    return [("removed", KERNELSPEC, f"/{KERNEL}/kernel.json", as_built(built))]


def _kernel_folder_replaced(w: LayerWriter, built: bytes) -> Found:
    w.add_opaque(KERNEL)
    w.add_file(f"{KERNEL}/kernel.js", b"alert(1)\n")
    return [
        ("removed", KERNELSPEC, f"/{KERNEL}/kernel.json", as_built(built)),
        ("added", KERNELSPEC, f"/{KERNEL}/kernel.js", None),
    ]


def _kernel_js_added(w: LayerWriter, built: bytes) -> Found:
    w.add_file(f"{KERNEL}/kernel.js", b"alert(1)\n")
    return [("added", KERNELSPEC, f"/{KERNEL}/kernel.js", None)]


def _kernel_json_a_link(w: LayerWriter, built: bytes) -> Found:
    w.add_symlink(f"{KERNEL}/kernel.json", "/tmp/kernel.json")
    return [("changed", KERNELSPEC, f"/{KERNEL}/kernel.json", as_built(built))]


def _kernel_folder_a_link(w: LayerWriter, built: bytes) -> Found:
    """Whatever the link points at (here: this machine's /etc when unpacked) is not read."""
    w.add_symlink(KERNEL, "/etc")
    return [("changed", KERNELSPEC, f"/{KERNEL}", "a folder")]


def _kernels_a_link(w: LayerWriter, built: bytes) -> Found:
    w.add_symlink(posixpath.dirname(KERNEL), "/tmp/kernels")
    return [("changed", KERNELSPEC, f"/{posixpath.dirname(KERNEL)}", "a folder")]


def _jupyter_folder_removed(w: LayerWriter, built: bytes) -> Found:
    """A whiteout of a folder above the kernelspec folder removes it too."""
    w.add_whiteout("usr/local/share/jupyter")
    return [("removed", KERNELSPEC, f"/{KERNEL}/kernel.json", as_built(built))]


def _kernel_json_writable_by_all(w: LayerWriter, built: bytes) -> Found:
    w.add_file(f"{KERNEL}/kernel.json", built, mode=0o666)  # the same bytes
    return [("changed", KERNELSPEC, f"/{KERNEL}/kernel.json", "not writable by others")]


def _another_kernelspec(w: LayerWriter, built: bytes) -> Found:
    """Another kernel beside envship's is the derived image's own: not compared."""
    w.add_file("usr/local/share/jupyter/kernels/other/kernel.json", built)
    return []


KERNEL_TAMPERINGS = [
    _argv_system_python,
    _kernel_json_removed,
    _kernel_folder_replaced,
    _kernel_js_added,
    _kernel_json_a_link,
    _kernel_folder_a_link,
    _kernels_a_link,
    _jupyter_folder_removed,
    _kernel_json_writable_by_all,
    _another_kernelspec,
]


@pytest.mark.parametrize(
    "tamper", KERNEL_TAMPERINGS, ids=[t.__name__.strip("_") for t in KERNEL_TAMPERINGS]
)
def test_a_derived_image_that_changes_the_kernelspec_differs(
    tmp_path: Path,
    tamper: Callable[[LayerWriter, bytes], Found],
    kernel_images: dict[bool, tuple[Setup, str]],
) -> None:
    setup, ref = kernel_images[False]
    image = OciLayout.open(Path(ref.split(":")[1])).image("kernel")
    built = LayerView(list(image.layer_paths)).read(f"{KERNEL}/kernel.json")
    assert json.loads(built)["argv"][0] == f"{VENV}/bin/python"
    untouched = verify_image(setup.lock, open_image(ref, setup.store), store=setup.store)
    assert untouched.identical, untouched.differences
    expected: Found = []
    derived = derive(ref, tmp_path / "derived", lambda w: expected.extend(tamper(w, built)))
    report = verify_image(setup.lock, open_image(derived, setup.store), store=setup.store)
    assert [(d.kind, d.name, d.path, d.expected) for d in report.differences] == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PATH": f"/usr/local/bin:{VENV}/bin:/usr/bin:/bin"}, ["PATH"]),
        ({"PATH": "/usr/local/bin:/usr/bin:/bin"}, ["PATH"]),
        ({"PATH": None}, ["PATH"]),
        ({"VIRTUAL_ENV": "/usr"}, ["VIRTUAL_ENV"]),
        ({"VIRTUAL_ENV": None}, ["VIRTUAL_ENV"]),
        ({"PATH": "/usr/bin", "VIRTUAL_ENV": "/usr"}, ["PATH", "VIRTUAL_ENV"]),
        # What envship wrote, spelled otherwise, and more after it: the same environment.
        ({"PATH": f"{VENV}/bin/:/usr/bin:/extra", "VIRTUAL_ENV": f"{VENV}/"}, []),
    ],
    ids=["env-bin-second", "env-bin-gone", "path-unset", "virtual-env-elsewhere",
         "virtual-env-unset", "both", "same-spelled-otherwise"],
)  # fmt: skip
def test_a_derived_image_that_changes_the_config_differs(
    tmp_path: Path,
    env: dict[str, str | None],
    expected: list[str],
    kernel_images: dict[bool, tuple[Setup, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup, ref = kernel_images[False]
    derived = derive(ref, tmp_path / "derived", env=env)
    lock, store = ["--lock", str(setup.lock.path)], ["--store", str(setup.store.root)]
    code, data = verify_json(capsys, "--image", derived, *lock, *store)
    assert listed(data) == [("config", name, CONFIG_ENV) for name in expected]
    found = data["differences"]
    assert isinstance(found, list)
    assert code == (1 if expected else 0)
    for d in found:
        value = env[d["name"]]
        assert d["expected"] == (f"{VENV}/bin first" if d["name"] == "PATH" else VENV)
        assert d["actual"] == (value if value is not None else "(not set)")


def test_a_kernelspec_that_hides_the_base_s_own_is_identical_as_built(
    tmp_path: Path, slim_layout: BaseImage, kernel_images: dict[bool, tuple[Setup, str]]
) -> None:
    """A base with a kernelspec of the same name (and a logo) and another kernel: the
    build hides the base's folder whole, so neither the base's files in it nor its other
    kernel are differences; a later layer that puts a file back there is one."""
    setup = kernel_images[False][0]

    def kernels(w: LayerWriter) -> None:
        w.add_file(f"{KERNEL}/kernel.json", b'{"argv": ["/usr/bin/python3"]}\n')
        w.add_file(f"{KERNEL}/logo-64x64.png", b"base logo")
        w.add_file("usr/local/share/jupyter/kernels/python3/kernel.json", b"{}\n")

    base_ref = derive(slim_layout.ref, tmp_path / "base", kernels)
    base = OciLayout.open(tmp_path / "base").image("derived")
    facts = probe_image(base, where="base")
    built = build_image(
        setup.lock, setup.store, base, facts, base_name=base_ref, kernel_name="ds", mtime=0
    )
    assert f"the base's kernelspec 'ds' in /{KERNEL[:-3]} is replaced by this one" in built.notes
    ref = write_image(built, f"oci:{tmp_path / 'out'}:kernel")
    report = verify_image(setup.lock, open_image(ref, setup.store), store=setup.store)
    assert report.identical, report.differences
    logo = derive(ref, tmp_path / "logo", lambda w: w.add_file(f"{KERNEL}/logo-64x64.png", b"x"))
    report = verify_image(setup.lock, open_image(logo, setup.store), store=setup.store)
    assert [(d.kind, d.name, d.path) for d in report.differences] == [
        ("added", KERNELSPEC, f"/{KERNEL}/logo-64x64.png")
    ]


def test_an_image_whose_environment_a_later_layer_removed_is_refused(
    tmp_path: Path, kernel_images: dict[bool, tuple[Setup, str]]
) -> None:
    """A whiteout of a folder above the prefix removes the whole environment, marker and
    all: nothing is left to compare."""
    setup, ref = kernel_images[False]
    gone = derive(ref, tmp_path / "gone", lambda w: w.add_whiteout("opt/envship"))
    with pytest.raises(ImageInputError, match="cannot read the environment's marker") as caught:
        verify_image(setup.lock, open_image(gone, setup.store), store=setup.store)
    assert caught.value.exit_code == 2

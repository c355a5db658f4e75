"""``envship verify --image`` with the locked wheels in a store (``--store`` or
``ENVSHIP_STORE``) through the real CLI entry point: an installed file swapped together
with a rewritten RECORD, which only the locked wheel's own RECORD tells apart."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from envship._installmarker import LINKS_KEY
from envship.cli.main import main
from envship.image import BuiltImage, build_image
from envship.imagebase import probe_image
from envship.imageinspect import CONFIG_ENV, KERNELSPEC, verify_image
from envship.imageio import open_image, write_image
from envship.install import MARKER_NAME
from envship.layer import LayerWriter
from envship.layerfs import extract_layer, iter_layer
from envship.layerview import LayerView
from envship.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, ImageManifest
from envship.ocilayout import OciLayout
from envship.verify import VENV_CREATION, VerifyMismatchError
from imagelib import BaseImage
from indexlib import _record_hash, build_wheel
from test_image import (
    VENV_SITE,
    Setup,
    _no_source_date_epoch,
    build,
    image_target,
    make_setup,
    slim_layout,
    slim_sample,
)
from test_imageinspect import EVIL, ORIGINAL, append_layer, swap_with_its_record
from test_install import build_wheels, stocked_store, write_lock
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
    raw: list[tarfile.TarInfo] | None = None,
) -> str:
    """The image at ``ref`` with one more layer (``fill``, or ``raw``: tar entries as
    given, for what LayerWriter refuses to write) or another config Env (``env``: name ->
    value, None to unset), in a new OCI layout, as a derived image's build makes."""
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
    if raw is not None:
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as out:
            for info in raw:
                out.addfile(info, io.BytesIO(CONTENT[: info.size]) if info.isreg() else None)
        data = tar.getvalue()
        top = layout.add_blob(data, OCI_LAYER)
        layers = (*layers, top)
        config = replace(
            config,
            diff_ids=(*config.diff_ids, f"sha256:{hashlib.sha256(data).hexdigest()}"),
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


CONTENT = b"import os\n"  # the bytes of every regular file in a raw layer (cut to its size)


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    """A raw tar entry: a file (of CONTENT), a link, a FIFO or a device node."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(CONTENT)
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info


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


def test_an_image_whose_environment_a_later_layer_removed_differs_in_everything(
    tmp_path: Path, kernel_images: dict[bool, tuple[Setup, str]]
) -> None:
    """A whiteout of a folder above the prefix removes the whole environment, marker and
    all: held to the marker as built, every distribution is missing and every file the
    venv's creation wrote removed (exit 1), not "cannot read the marker" (exit 2)."""
    setup, ref = kernel_images[False]
    gone = derive(ref, tmp_path / "gone", lambda w: w.add_whiteout("opt/envship"))
    report = verify_image(setup.lock, open_image(gone, setup.store), store=setup.store)
    assert VerifyMismatchError(report).exit_code == 1
    assert sorted(d.name for d in report.differences if d.kind == "missing") == [
        "alpha", "beta", "cached", "ipykernel", "tool"
    ]  # fmt: skip
    removed = {d.path for d in report.differences if d.kind == "removed"}
    assert {f"{VENV}/{MARKER_NAME}", f"{VENV}/pyvenv.cfg", f"{VENV}/bin/python"} <= removed
    assert {d.kind for d in report.differences} == {"missing", "removed"}


# -- what verify reads is the image's: links never reach this machine's files ------------------


def unpack(ref: str, dest: Path, under: str = "opt/envship") -> Path:
    """The folder ``under`` of the image at ``ref``, unpacked onto this machine at
    ``dest/under``: a copy of the environment as someone could leave it on a host."""
    _, path, tag = ref.split(":")
    image = OciLayout.open(Path(path)).image(tag)
    parts = under.split("/")
    keep = {"/".join(parts[:i]) for i in range(1, len(parts))}
    for i, blob in enumerate(image.layer_paths):
        extract_layer(blob, dest, layer=str(i), only=lambda n: n in keep or n.startswith(under))
    return dest / under


def _ancestor_a_link(w: LayerWriter, copy: Path) -> tuple[str, str]:
    w.add_whiteout("opt/envship")
    w.add_symlink("opt/envship", str(copy))
    return "/opt/envship", f"a symbolic link to {copy}"


def _prefix_a_link(w: LayerWriter, copy: Path) -> tuple[str, str]:
    w.add_whiteout(VENV[1:])
    w.add_symlink(VENV[1:], f"{copy}/venv")
    return VENV, f"a symbolic link to {copy}/venv"


def _prefix_a_file(w: LayerWriter, copy: Path) -> tuple[str, str]:
    w.add_whiteout(VENV[1:])
    w.add_file(VENV[1:], b"")
    return VENV, "not a folder (-rw-r--r--)"


WAY_BLOCKED = [_ancestor_a_link, _prefix_a_link, _prefix_a_file]


@pytest.mark.parametrize("block", WAY_BLOCKED, ids=[b.__name__.strip("_") for b in WAY_BLOCKED])
def test_a_folder_on_the_way_that_is_no_folder_now_is_a_difference_not_followed(
    tmp_path: Path,
    block: Callable[[LayerWriter, Path], tuple[str, str]],
    kernel_images: dict[bool, tuple[Setup, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """/opt/envship (or the prefix) replaced by a link to a copy of the environment on this
    machine: the container cannot run it, and what is on this machine is not the image's.
    Followed, the copy made the image identical and an edit of it made a difference."""
    setup, ref = kernel_images[False]
    copy = unpack(ref, tmp_path / "host")
    assert (copy / "venv" / MARKER_NAME).is_file()
    found: list[tuple[str, str]] = []
    derived = derive(ref, tmp_path / "derived", lambda w: found.append(block(w, copy)))
    [(path, actual)] = found
    lock, store = ["--lock", str(setup.lock.path)], ["--store", str(setup.store.root)]
    code, data = verify_json(capsys, "--image", derived, *lock, *store)
    assert (code, data["identical"]) == (1, False)
    differences = data["differences"]
    assert isinstance(differences, list)
    [difference] = differences
    assert difference == {
        "kind": "changed",
        "name": VENV_CREATION,
        "path": path,
        "expected": "a folder",
        "actual": actual,
        "note": f"a link is never followed here: nothing below {path} was compared",
    }
    assert data["notes"] == [f"{VENV} was not compared: {path} is {actual}"]
    assert data["distributions"] == 5 and data["checked_files"] == 1  # kernel.json
    # The same report with the copy on this machine gone: none of it was read.
    shutil.rmtree(copy)
    assert verify_json(capsys, "--image", derived, *lock, *store) == (code, data)


Seen = list[tuple[str, str, str]]  # kind, name, path


def _package_a_link(w: LayerWriter, copy: Path) -> Seen:
    w.add_whiteout(f"{VENV_SITE}/beta")
    w.add_symlink(f"{VENV_SITE}/beta", f"{copy}/{VENV_SITE}/beta")
    return [
        ("changed", "beta", f"/{VENV_SITE}/beta"),
        ("removed", "beta", f"/{VENV_SITE}/beta/__init__.py"),
    ]


def _dist_info_a_link(w: LayerWriter, copy: Path) -> Seen:
    """Its RECORD and METADATA would be read from this machine: the distribution is
    found there (so not missing), and its files are checked against that RECORD."""
    info = f"{VENV_SITE}/beta-1.0.dist-info"
    w.add_whiteout(info)
    w.add_symlink(info, f"{copy}/{info}")
    return [
        ("missing", "beta", f"/{VENV_SITE}"),
        ("unowned", "beta", f"/{VENV_SITE}/beta"),
        ("unowned", "beta-1.0.dist-info", f"/{info}"),
    ]


def _climbs_out_through_a_link_to_the_root(w: LayerWriter, copy: Path) -> Seen:
    """``up -> /`` is inside the image, and ``beta -> up/../../(...)/beta`` climbs no
    higher than the root by its own name; on this machine ``up`` is this machine's root."""
    w.add_symlink(f"{VENV_SITE}/up", "/")
    w.add_whiteout(f"{VENV_SITE}/beta")
    climb = "../" * (VENV_SITE.count("/") + 1)
    w.add_symlink(f"{VENV_SITE}/beta", f"up/{climb}{str(copy).lstrip('/')}/{VENV_SITE}/beta")
    return [
        ("changed", "beta", f"/{VENV_SITE}/beta"),
        ("removed", "beta", f"/{VENV_SITE}/beta/__init__.py"),
        ("unowned", "up", f"/{VENV_SITE}/up"),
    ]


def _pyvenv_cfg_a_link(w: LayerWriter, copy: Path) -> Seen:
    """This machine's copy says include-system-site-packages = true: read, it was a
    config difference of the image's."""
    cfg = copy / VENV[1:] / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace("= false", "= true"))
    w.add_symlink(f"{VENV[1:]}/pyvenv.cfg", str(cfg))
    return [("changed", VENV_CREATION, f"{VENV}/pyvenv.cfg")]


INSIDE_LINKS = [
    _package_a_link,
    _dist_info_a_link,
    _climbs_out_through_a_link_to_the_root,
    _pyvenv_cfg_a_link,
]


@pytest.mark.parametrize("link", INSIDE_LINKS, ids=[t.__name__.strip("_") for t in INSIDE_LINKS])
def test_links_in_the_environment_resolve_in_the_image_never_on_this_machine(
    tmp_path: Path,
    link: Callable[[LayerWriter, Path], Seen],
    kernel_images: dict[bool, tuple[Setup, str]],
) -> None:
    """Links a later layer put in the environment, to a copy of it on this machine: each
    is a difference, and nothing on this machine is read (the report is the same once the
    copy is gone; followed, the copy's files were checked as the image's)."""
    setup, ref = kernel_images[False]
    copy = unpack(ref, tmp_path / "host").parent.parent  # the root of the copy
    expected: Seen = []
    derived = derive(ref, tmp_path / "derived", lambda w: expected.extend(link(w, copy)))
    report = verify_image(setup.lock, open_image(derived, setup.store), store=setup.store)
    assert [(d.kind, d.name, d.path) for d in report.differences] == expected
    # A link is named by the target the image gives it, not where it was sent here.
    top = OciLayout.open(tmp_path / "derived").image("derived").layer_paths[-1]
    given = {i.linkname for i, _ in iter_layer(top, layer="top") if i.issym()}
    told = [d.actual.partition("link to ")[2] for d in report.differences if d.actual]
    assert {t for t in told if t} <= given and any(told)
    shown = json.dumps([d.to_json() for d in report.differences])
    assert "envship-verify-image" not in shown
    shutil.rmtree(copy)
    again = verify_image(setup.lock, open_image(derived, setup.store), store=setup.store)
    assert again.differences == report.differences


# -- the marker as built is the record, whatever a later layer makes of it ------------------------


@pytest.fixture(scope="module")
def group_image(
    tmp_path_factory: pytest.TempPathFactory, slim_layout: BaseImage
) -> tuple[Setup, str]:
    """A lock whose dependency group "dev" holds tool, built with every group."""
    folder = tmp_path_factory.mktemp("group-image")
    wheels = build_wheels(folder / "dist")
    lock = write_lock(
        folder / "pylock.toml",
        [wheels[k] for k in ("alpha", "beta", "tool")],
        targets=[image_target()],
        groups={"dev": ["tool"]},
    )
    setup = Setup(lock, stocked_store(folder / "store", list(wheels.values())), wheels)
    facts = probe_image(slim_layout.layout.image(slim_layout.tag), where="slim")
    built, _ = build(setup, slim_layout, facts, mtime=0)
    return setup, write_image(built, f"oci:{folder}/out:groups")


def marker_of(ref: str) -> tuple[bytes, dict[str, Any]]:
    _, path, tag = ref.split(":")
    image = OciLayout.open(Path(path)).image(tag)
    data = LayerView(list(image.layer_paths)).read(f"{VENV[1:]}/{MARKER_NAME}")
    return data, json.loads(data)


def test_a_marker_rewritten_to_fit_a_changed_environment_is_a_difference(
    tmp_path: Path, group_image: tuple[Setup, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A later layer drops the "dev" group's tool, relinks bin/python to a wrapper script
    and rewrites the marker to say so (groups, venv_links, packages): held to the marker
    as built, all three are differences (read from the image's marker, none was)."""
    setup, ref = group_image
    built, marker = marker_of(ref)
    assert marker["groups"] == ["dev"]
    kept = [p for p in marker["packages"] if p["name"] != "tool"]
    forged = dict(marker, groups=[], packages=kept)
    forged[LINKS_KEY] = {**marker[LINKS_KEY], "bin/python": "/usr/local/bin/wrap"}

    def fill(w: LayerWriter) -> None:
        for gone in ("tool", "tool-1.0.dist-info"):
            w.add_whiteout(f"{VENV_SITE}/{gone}")
        w.add_whiteout(f"{VENV[1:]}/bin/tool")
        w.add_file("usr/local/bin/wrap", b'#!/bin/sh\nexec /usr/bin/python3.11 "$@"\n', 0o755)
        w.add_symlink(f"{VENV[1:]}/bin/python", "/usr/local/bin/wrap")
        w.add_file(f"{VENV[1:]}/{MARKER_NAME}", json.dumps(forged).encode())

    derived = derive(ref, tmp_path / "derived", fill)
    lock, store = ["--lock", str(setup.lock.path)], ["--store", str(setup.store.root)]
    code, data = verify_json(capsys, "--image", derived, *lock, *store)
    assert code == 1
    assert listed(data) == [
        ("missing", "tool", f"/{VENV_SITE}"),
        ("changed", VENV_CREATION, f"{VENV}/{MARKER_NAME}"),
        ("changed", VENV_CREATION, f"{VENV}/bin/python"),
    ]
    found = data["differences"]
    assert isinstance(found, list)
    assert found[1]["expected"] == as_built(built)
    assert found[2]["expected"] == f"a link to {marker[LINKS_KEY]['bin/python']}"
    assert found[2]["actual"] == "a link to /usr/local/bin/wrap"
    # Asked for no groups, tool is not expected: the rest is as it was.
    code, data = verify_json(capsys, "--image", derived, *lock, *store, "--no-groups")
    assert [d[0] for d in listed(data)] == ["changed", "changed"]


GARBAGE = b"garbage\n"
MARKER_DAMAGE: dict[str, tuple[Callable[[LayerWriter], None], str, str | None]] = {
    # name: (what a later layer does, the kind, what is found there now)
    "removed": (lambda w: w.add_whiteout(f"{VENV[1:]}/{MARKER_NAME}"), "removed", None),
    "its folder removed": (lambda w: w.add_whiteout(VENV[1:]), "removed", None),
    "garbage": (lambda w: w.add_file(f"{VENV[1:]}/{MARKER_NAME}", GARBAGE), "changed",
                f"{_record_hash(GARBAGE)}, size {len(GARBAGE)}"),
    # An image is not trusted: a marker linked to this machine's /dev/zero would be read
    # for ever, one nested too deep made the JSON reader recurse.
    "a link to /dev/zero": (
        lambda w: w.add_symlink(f"{VENV[1:]}/{MARKER_NAME}", "/dev/zero"), "changed",
        "a link to /dev/zero",
    ),
    "a folder": (lambda w: w.add_dir(f"{VENV[1:]}/{MARKER_NAME}"), "changed",
                 "not a regular file (drwxr-xr-x)"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(MARKER_DAMAGE))
def test_a_marker_a_later_layer_damaged_is_a_difference_named_in_the_image(
    tmp_path: Path,
    damage: str,
    group_image: tuple[Setup, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not a refusal (exit 2, a TypeError's text or the temporary folder in the hint): a
    difference on the marker's path in the image, and the environment is still held to
    the marker as built."""
    setup, ref = group_image
    built, _ = marker_of(ref)
    fill, kind, actual = MARKER_DAMAGE[damage]
    derived = derive(ref, tmp_path / "derived", fill)
    lock, store = ["--lock", str(setup.lock.path)], ["--store", str(setup.store.root)]
    code, data = verify_json(capsys, "--image", derived, *lock, *store)
    assert code == 1 and "envship-verify-image" not in json.dumps(data)
    found = data["differences"]
    assert isinstance(found, list)
    [marker] = [d for d in found if d["path"] == f"{VENV}/{MARKER_NAME}"]
    assert (marker["kind"], marker["name"], marker["expected"]) == (
        kind, VENV_CREATION, as_built(built)
    )  # fmt: skip
    assert marker.get("actual") == actual
    if damage != "its folder removed":
        assert found == [marker]
    else:  # every distribution missing, every file the venv's creation wrote removed
        assert {d["kind"] for d in found} == {"missing", "removed"}
        assert sorted(d["name"] for d in found if d["kind"] == "missing") == [
            "alpha", "beta", "tool"
        ]  # fmt: skip


# -- hints: an image is built again, never installed into -------------------------------------


def test_the_hints_for_an_image_build_it_again(
    tmp_path: Path, group_image: tuple[Setup, str]
) -> None:
    """Another lock's versions: `envship image build` (not `envship install NEW_ENV`);
    PATH changed in the config: the Env to set (not pyvenv.cfg's setting)."""
    setup, ref = group_image
    other = write_lock(
        tmp_path / "other.toml",
        [setup.wheels[k] for k in ("alpha", "beta11", "tool")],
        targets=[image_target()],
        groups={"dev": ["tool"]},
    )
    source = open_image(ref, setup.store)
    report = verify_image(other, source, store=setup.store)
    assert [(d.kind, d.name) for d in report.differences] == [("version", "beta")]
    hint = VerifyMismatchError(report).hint
    build = f"`envship image build --lock {other.path} --store {setup.store.root}`"
    assert hint == (
        f"{build} with the image's --base and outputs builds an image of exactly the locked "
        f"distributions from the store's wheels (envship does not change {source.name}: no "
        "layer added on top of it can take back what the layers below hold)"
    )
    derived = derive(ref, tmp_path / "path", env={"PATH": "/usr/bin:/bin"})
    report = verify_image(setup.lock, open_image(derived, setup.store), store=setup.store)
    assert [(d.kind, d.name) for d in report.differences] == [("config", "PATH")]
    build = f"`envship image build --lock {setup.lock.path} --store {setup.store.root}`"
    assert VerifyMismatchError(report).hint == (
        f"the image's config must set PATH={VENV}/bin:..., as `envship image build` did: "
        f"build it again ({build} with the image's --base and outputs), or put that back in "
        "the derived image's ENV"
    )


def test_an_image_built_with_a_group_another_lock_lacks_is_compared_without_it(
    tmp_path: Path, group_image: tuple[Setup, str]
) -> None:
    """The default groups are the ones the image was built with: one this lock does not
    have expects nothing (its distributions are extra, a note says why), where asking
    the lock for it was a refusal (exit 2) telling to leave out a --group never given."""
    setup, ref = group_image
    plain = write_lock(
        tmp_path / "plain.toml",
        [setup.wheels[k] for k in ("alpha", "beta")],
        targets=[image_target()],
    )
    source = open_image(ref, setup.store)
    report = verify_image(plain, source, store=setup.store)
    assert [(d.kind, d.name) for d in report.differences] == [("extra", "tool")]
    assert (
        f"{source.name} was built with dependency group(s) dev, which {plain.path} does not "
        "have: their distributions are extra here"
    ) in report.notes


# -- what a derived layer puts in the environment, however it gets there -----------------------

SYM, LNK, FIFO, CHR = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE
ALPHA = f"{VENV_SITE}/alpha/__init__.py"
Told = list[tuple[str, str, str, str | None]]  # kind, name, path, actual
SNEAKED: dict[str, tuple[list[tarfile.TarInfo], Told]] = {
    # A link the layer makes itself, then a file written through it: a runtime follows the
    # link (inside the root), so the file is in site-packages.
    "through-a-link": (
        [entry("opt/x", SYM, VENV), entry("opt/x/lib/python3.11/site-packages/evil.pth")],
        [("unowned", "evil.pth", f"/{VENV_SITE}/evil.pth", "a file")],
    ),
    "through-a-relative-link": (
        [entry("opt/y", SYM, "envship/venv/lib/python3.11/site-packages"),
         entry("opt/y/evil.pth")],
        [("unowned", "evil.pth", f"/{VENV_SITE}/evil.pth", "a file")],
    ),
    "through-two-links": (
        [entry("srv/a", SYM, "/srv/b"), entry("srv/b", SYM, f"/{VENV_SITE}/alpha"),
         entry("srv/a/__init__.py")],
        [("changed", "alpha", f"/{ALPHA}", f"{_record_hash(CONTENT)}, size {len(CONTENT)}")],
    ),
    # A link elsewhere: what is written through it is not the environment's.
    "through-a-link-elsewhere": ([entry("opt/x", SYM, "/srv"), entry("opt/x/evil.pth")], []),
    # FIFOs and device nodes are never made, and named for what they are.
    "a-fifo-in-a-package": (
        [entry(f"{VENV_SITE}/alpha/fifo", FIFO)],
        [("added", "alpha", f"/{VENV_SITE}/alpha/fifo", "a FIFO")],
    ),
    "a-device-in-site-packages": (
        [entry(f"{VENV_SITE}/null", CHR)],
        [("unowned", "null", f"/{VENV_SITE}/null", "a character device")],
    ),
    "a-fifo-for-a-recorded-file": (
        [entry(ALPHA, FIFO)], [("changed", "alpha", f"/{ALPHA}", "now a FIFO")]
    ),
    "a-fifo-through-a-link": (
        [entry("opt/x", SYM, f"/{VENV_SITE}"), entry("opt/x/alpha/__init__.py", FIFO)],
        [("changed", "alpha", f"/{ALPHA}", "now a FIFO")],
    ),
    # A hard link to a file outside the environment holds that file's bytes.
    "a-hard-link-to-a-file-of-its-layer": (
        [entry("srv/evil.pth"), entry(f"{VENV_SITE}/zz.pth", LNK, "srv/evil.pth")],
        [("unowned", "zz.pth", f"/{VENV_SITE}/zz.pth", "a file")],
    ),
    # A relative link that climbs above the root stops there, as at /: a link like the
    # absolute one, not an unsafe layer (exit 4).
    "a-link-climbing-above-the-root": (
        [entry(ALPHA, SYM, "../" * 12 + "srv/alpha.py")],
        [("changed", "alpha", f"/{ALPHA}", "a symbolic link to " + "../" * 12 + "srv/alpha.py")],
    ),
    "the-same-link-absolute": (
        [entry(ALPHA, SYM, "/srv/alpha.py")],
        [("changed", "alpha", f"/{ALPHA}", "a symbolic link to /srv/alpha.py")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("sneak", list(SNEAKED))
def test_what_a_layer_puts_in_the_environment_is_a_difference_however_it_gets_there(
    tmp_path: Path, sneak: str, kernel_images: dict[bool, tuple[Setup, str]]
) -> None:
    """Each was identical (exit 0: through a link, a FIFO, a device node) or a refusal
    (a hard link out of the environment: "image"; a link climbing above the root: exit 4)."""
    setup, ref = kernel_images[False]
    raw, expected = SNEAKED[sneak]
    derived = derive(ref, tmp_path / "derived", raw=raw)
    report = verify_image(setup.lock, open_image(derived, setup.store), store=setup.store)
    found = [(d.kind, d.name, d.path, d.actual) for d in report.differences]
    assert found == expected
    assert VerifyMismatchError(report).exit_code == 1 if expected else report.identical


def test_a_hard_link_to_a_file_of_a_lower_layer_holds_its_bytes(
    tmp_path: Path, kernel_images: dict[bool, tuple[Setup, str]]
) -> None:
    """alpha/__init__.py hard-linked to a file of the base (as to its etc/passwd): a
    changed file with that file's bytes, where it was a refusal ("has no target")."""
    setup, ref = kernel_images[False]
    image = OciLayout.open(Path(ref.split(":")[1])).image("kernel")
    base = next(i.name for i, r in iter_layer(image.layer_paths[0], layer="base") if r)
    passwd = LayerView(list(image.layer_paths)).read(base)
    derived = derive(ref, tmp_path / "derived", raw=[entry(ALPHA, LNK, base)])
    report = verify_image(setup.lock, open_image(derived, setup.store), store=setup.store)
    assert [(d.kind, d.name, d.path, d.actual) for d in report.differences] == [
        ("changed", "alpha", f"/{ALPHA}", f"{_record_hash(passwd)}, size {len(passwd)}")
    ]


@pytest.mark.parametrize("after", ["removed", "replaced-as-built"])
def test_a_fifo_a_later_layer_takes_back_is_no_difference(
    tmp_path: Path, after: str, kernel_images: dict[bool, tuple[Setup, str]]
) -> None:
    """A FIFO counts as what the image holds at the end: one a later layer removes, or
    replaces with the file as built, is gone (a difference before that layer)."""
    setup, ref = kernel_images[False]
    image = OciLayout.open(Path(ref.split(":")[1])).image("kernel")
    original = LayerView(list(image.layer_paths)).read(ALPHA)
    fifo = derive(ref, tmp_path / "fifo", raw=[entry(ALPHA, FIFO)])
    report = verify_image(setup.lock, open_image(fifo, setup.store), store=setup.store)
    assert [(d.kind, d.actual) for d in report.differences] == [("changed", "now a FIFO")]

    def take_back(w: LayerWriter) -> None:
        if after == "removed":
            w.add_whiteout(ALPHA)
        else:
            w.add_file(ALPHA, original)

    fifo_ref = f"oci:{tmp_path / 'fifo'}:derived"
    back = derive(fifo_ref, tmp_path / "back", take_back)
    report = verify_image(setup.lock, open_image(back, setup.store), store=setup.store)
    expected = [("removed", None)] if after == "removed" else []
    assert [(d.kind, d.actual) for d in report.differences] == expected

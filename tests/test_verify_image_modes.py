"""``envship verify --image``: modes no installer gives, as a derived image's layer sets
them (setuid and setgid files, folders anyone may write into), read from the layers
without running the image; the modes the build itself writes are no difference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from envship.image import BuiltImage
from envship.imageinspect import verify_image
from envship.imageio import open_image
from envship.layer import LayerWriter
from envship.layerview import LayerView
from envship.ocilayout import OciLayout
from envship.verify import VENV_CREATION
from test_image import VENV_SITE, Setup, _no_source_date_epoch, slim_layout, slim_sample
from test_verify_image import derive, verify_json

# The fixtures imported from test_image are shared with it (built once per session).
__all__ = ["_no_source_date_epoch", "slim_layout", "slim_sample"]

VENV = "opt/envship/venv"
ALPHA = f"{VENV_SITE}/alpha/__init__.py"
PYC = f"{VENV_SITE}/alpha/__pycache__/__init__.cpython-311.pyc"
SETID = "no setuid or setgid bit"
OTHERS = "not writable by others"

Found = list[tuple[str, str, str, str | None, str | None]]  # kind, name, path, expected, actual


def _setuid_module(w: LayerWriter, built: LayerView) -> Found:
    w.add_file(ALPHA, built.read(ALPHA), mode=0o4755)  # the same bytes
    return [("changed", "alpha", f"/{ALPHA}", SETID, "mode -rwsr-xr-x")]


def _setgid_script(w: LayerWriter, built: LayerView) -> Found:
    script = f"{VENV}/bin/tool"
    w.add_file(script, built.read(script), mode=0o2755)  # the launcher as built
    return [("changed", "tool", f"/{script}", SETID, "mode -rwxr-sr-x")]


def _setgid_byte_code(w: LayerWriter, built: LayerView) -> Found:
    w.add_file(PYC, b"\x00" * 16, mode=0o2644)
    return [("changed", "alpha", f"/{PYC}", SETID, "mode -rw-r-Sr--")]


def _package_folder_open(w: LayerWriter, built: LayerView) -> Found:
    w.add_dir(f"{VENV_SITE}/alpha", mode=0o1777)
    return [("changed", "alpha", f"/{VENV_SITE}/alpha", OTHERS, "mode drwxrwxrwt")]


def _site_packages_open(w: LayerWriter, built: LayerView) -> Found:
    w.add_dir(VENV_SITE, mode=0o777)
    return [("changed", VENV_CREATION, f"/{VENV_SITE}", OTHERS, "mode drwxrwxrwx")]


def _environment_open(w: LayerWriter, built: LayerView) -> Found:
    w.add_dir(VENV, mode=0o777)
    return [("changed", VENV_CREATION, f"/{VENV}", OTHERS, "mode drwxrwxrwx")]


def _sticky_and_setgid_folders(w: LayerWriter, built: LayerView) -> Found:
    """Neither the sticky bit alone nor a setgid, group-writable folder is open."""
    w.add_dir(VENV, mode=0o2775)
    w.add_dir(f"{VENV_SITE}/alpha", mode=0o1755)
    return []


def _open_folder_outside(w: LayerWriter, built: LayerView) -> Found:
    """/opt is not the environment's: the base's or the derived image's own."""
    w.add_dir("opt", mode=0o1777)
    return []


def _setuid_in_site_packages_cache(w: LayerWriter, built: LayerView) -> Found:
    """Only regular .pyc files belong in a byte-code cache (auditor a11, H1)."""
    w.add_file(f"{VENV_SITE}/__pycache__/sh", b"#!/bin/sh\n", mode=0o4755)
    setuid = "a file, mode -rwsr-xr-x: runs with its owner's or group's rights"
    return [("unowned", "__pycache__/sh", f"/{VENV_SITE}/__pycache__/sh", None, setuid)]


def _byte_code_linked_out(w: LayerWriter, built: LayerView) -> Found:
    """Python follows the link (H2)."""
    w.add_file("tmp/x.pyc", b"\0" * 16, mode=0o666)
    w.add_symlink(PYC, "/tmp/x.pyc")
    return [("added", "alpha", f"/{PYC}", None, "a link to /tmp/x.pyc, not in RECORD")]


def _cache_folder_linked_out(w: LayerWriter, built: LayerView) -> Found:
    w.add_symlink(f"{VENV_SITE}/alpha/__pycache__", "/tmp")
    cache = f"/{VENV_SITE}/alpha/__pycache__"
    return [("added", "alpha", cache, None, "a link to /tmp, not in RECORD")]


def _folder_link_in_a_package(w: LayerWriter, built: LayerView) -> Found:
    """``import alpha.sub.x`` runs what is in /tmp (H3)."""
    w.add_symlink(f"{VENV_SITE}/alpha/sub", "/tmp")
    sub = f"/{VENV_SITE}/alpha/sub"
    return [("added", "alpha", sub, None, "a link to /tmp, not in RECORD")]


CHANGES = [
    _setuid_in_site_packages_cache,
    _byte_code_linked_out,
    _cache_folder_linked_out,
    _folder_link_in_a_package,
    _setuid_module,
    _setgid_script,
    _setgid_byte_code,
    _package_folder_open,
    _site_packages_open,
    _environment_open,
    _sticky_and_setgid_folders,
    _open_folder_outside,
]


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__.strip("_") for c in CHANGES])
def test_a_layer_that_sets_a_mode_no_installer_gives_differs(
    tmp_path: Path,
    change: Callable[[LayerWriter, LayerView], Found],
    slim_sample: tuple[Setup, BuiltImage, str],
) -> None:
    setup, _, ref = slim_sample
    image = OciLayout.open(Path(ref.split(":")[1])).image("slim")
    built = LayerView(list(image.layer_paths))
    expected: Found = []
    derived = derive(ref, tmp_path / "derived", lambda w: expected.extend(change(w, built)))
    report = verify_image(setup.lock, open_image(derived, setup.store), store=setup.store)
    found = [(d.kind, d.name, d.path, d.expected, d.actual) for d in report.differences]
    assert found == expected
    assert report.identical == (not expected)


def test_byte_code_linked_out_is_named_by_full_and_bytecode_once(
    tmp_path: Path, slim_sample: tuple[Setup, BuiltImage, str]
) -> None:
    """The byte-code check counts the linked .pyc and never opens it: one difference."""
    setup, _, ref = slim_sample
    image = OciLayout.open(Path(ref.split(":")[1])).image("slim")
    expected: Found = []
    built = LayerView(list(image.layer_paths))
    derived = derive(
        ref, tmp_path / "derived", lambda w: expected.extend(_byte_code_linked_out(w, built))
    )
    report = verify_image(
        setup.lock, open_image(derived, setup.store), store=setup.store, full=True, bytecode=True
    )
    found = [(d.kind, d.name, d.path, d.expected, d.actual) for d in report.differences]
    assert (found, report.checked_bytecode) == (expected, 1)


def test_the_image_as_built_is_identical_and_the_json_names_the_mode(
    tmp_path: Path,
    slim_sample: tuple[Setup, BuiltImage, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup, _, ref = slim_sample
    lock, store = ["--lock", str(setup.lock.path)], ["--store", str(setup.store.root)]
    code, data = verify_json(capsys, "--image", ref, *lock, *store)
    assert (code, data["identical"]) == (0, True), data["differences"]

    derived = derive(ref, tmp_path / "derived", lambda w: w.add_dir(VENV_SITE, mode=0o1777))
    code, data = verify_json(capsys, "--image", derived, *lock, *store)
    assert code == 1
    assert data["differences"] == [
        {
            "kind": "changed",
            "name": VENV_CREATION,
            "path": f"/{VENV_SITE}",
            "expected": OTHERS,
            "actual": "mode drwxrwxrwt",
            "note": "anyone on this machine can add a module or a .pth file here, which "
            "every process that imports from it runs",
        }
    ]

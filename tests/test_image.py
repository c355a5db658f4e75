"""``envship.image.build_image``: a lock and a store become layers on a real Debian base.

The base is the debootstrap bookworm root (``imagelib``); built images are written out
as OCI layouts and docker-archives, loaded into the real Docker engine and run there.
The helpers and session fixtures here (a sample lock and store, the base's probed facts,
the sample image built and loaded once) are shared with the other image test modules,
which import them; :func:`once` keeps a fixture imported into several modules from being
built once per module.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tomli_w

from envship._toml import load_toml
from envship.errors import ArtifactError, ImageInputError, StoreError
from envship.image import DEFAULT_PREFIX, BuiltImage, LayerEvent, build_image, source_date_epoch
from envship.imagebase import BaseFacts, probe_image
from envship.imageio import write_image
from envship.install import MARKER_NAME
from envship.layer import LayerWriter
from envship.layerfs import iter_layer
from envship.layerview import LayerView
from envship.lockfile import LockFile
from envship.oci import OCI_CONFIG, OCI_MANIFEST, ImageManifest
from envship.ocilayout import LayoutImage, OciLayout
from envship.store import Store
from envship.targets import host_platform
from imagelib import BaseImage, make_image
from indexlib import build_wheel
from serviceslib import DockerEngine
from test_install import build_wheels, stocked_store, target, write_lock

PLATFORM = host_platform() or "linux-x86_64"
BOOKWORM_PY = "3.11"
VENV_SITE = f"opt/envship/venv/lib/python{BOOKWORM_PY}/site-packages"
T = TypeVar("T")
_ONCE: dict[str, Any] = {}


def once(key: str, make: Callable[[], T]) -> T:
    """``make()`` the first time ``key`` is asked for in this session, then the same value."""
    if key not in _ONCE:
        _ONCE[key] = make()
    value: T = _ONCE[key]
    return value


def image_target(name: str = PLATFORM, **fields: str) -> dict[str, str]:
    """A lock target the bookworm base (CPython 3.11, glibc 2.36) fits."""
    return target(name, **{"platform": PLATFORM, "python": BOOKWORM_PY, **fields})


def big_wheel(out: Path, name: str, version: str, size: int) -> Path:
    """A wheel with ``size`` bytes of incompressible data: over the own-layer threshold."""
    data = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    module = name.replace("-", "_")
    return build_wheel(out, name, version, files={f"{module}/data.txt": data})


def set_tool(lock_path: Path, **fields: str) -> LockFile:
    """Add keys (``name``, ``display-name``, ``spec-digest``) to the lock's [tool.envship]."""
    data = load_toml(lock_path)
    data["tool"]["envship"].update(fields)
    lock_path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return LockFile.load(lock_path)


@dataclass(frozen=True)
class Setup:
    """A lock and a store holding every artifact it selects."""

    lock: LockFile
    store: Store
    wheels: dict[str, Path]


def make_setup(
    folder: Path,
    picked: Sequence[str] = ("alpha", "beta", "tool"),
    *,
    wheels: dict[str, Path] | None = None,
    targets: Sequence[dict[str, str]] | None = None,
    store: Store | None = None,
) -> Setup:
    folder.mkdir(parents=True, exist_ok=True)
    wheels = wheels if wheels is not None else build_wheels(folder / "dist")
    chosen = [wheels[k] for k in picked]
    lock = write_lock(folder / "pylock.toml", chosen, targets=targets or [image_target()])
    if store is None:
        store = stocked_store(folder / "store", list(wheels.values()))
    else:
        for wheel in wheels.values():
            store.add_file(wheel)
    return Setup(lock, store, wheels)


def layout_image(base: BaseImage) -> LayoutImage:
    return base.layout.image(base.tag)


def seed_probe_cache(store: Store, base: BaseImage, facts: BaseFacts) -> None:
    """Leave in ``store`` what probing ``base`` once leaves there (``probe_image``'s cache),
    so a CLI build on it does not read the 137 MB layer again."""
    folder = store.root / "images" / "probes"
    folder.mkdir(parents=True, exist_ok=True)
    data = {k: getattr(facts, k) for k in BaseFacts.__slots__}
    (folder / f"{base.descriptor.digest.removeprefix('sha256:')}.json").write_text(json.dumps(data))


def build(
    setup: Setup, base: BaseImage, facts: BaseFacts, **kwargs: Any
) -> tuple[BuiltImage, list[LayerEvent]]:
    events: list[LayerEvent] = []
    built = build_image(
        setup.lock,
        setup.store,
        layout_image(base),
        facts,
        base_name=base.ref,
        progress=events.append,
        **kwargs,
    )
    return built, events


def env_layers(built: BuiltImage) -> list[Any]:
    return [layer for layer in built.layers if layer.label != "base"]


def layer_files(path: Path) -> dict[str, bytes]:
    """Regular files of one layer blob: path -> content."""
    return {
        info.name: reader.read()
        for info, reader in iter_layer(path, layer=path.name)
        if reader is not None
    }


def docker_run(engine: DockerEngine, image: str, *command: str, user: str = "") -> str:
    """Run ``command`` in a throw-away container with no network; its stdout."""
    extra = ("--user", user) if user else ()
    return engine.docker("run", "--rm", "--network", "none", *extra, image, *command).stdout


def load(engine: DockerEngine, built: BuiltImage, folder: Path, name: str) -> str:
    """Write ``built`` as a docker-archive named ``name`` and ``docker load`` it."""
    archive = folder / f"{uuid.uuid4().hex[:8]}.docker.tar"
    write_image(built, f"docker-archive:{archive}:{name}")
    out = engine.docker("load", "-i", str(archive)).stdout
    archive.unlink()
    assert f"Loaded image: {name}" in out
    return name


# -- session fixtures (imported by the other image test modules) --------------------------


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Digests are compared across builds: none may pick up a SOURCE_DATE_EPOCH from the
    environment the suite runs in (the session's images are built with mtime 0)."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="session")
def bookworm_facts(bookworm_layout: BaseImage) -> BaseFacts:
    """The bookworm base, probed once (reading its 137 MB layer takes seconds)."""
    return once("facts", lambda: probe_image(layout_image(bookworm_layout), where="bookworm"))


@pytest.fixture(scope="session")
def slim_layout(bookworm_root: Path, tmp_path_factory: pytest.TempPathFactory) -> BaseImage:
    """Bookworm's own interpreter and C library and nothing else: a base that probes,
    builds and is read in a fraction of bookworm's time (nothing can run on it)."""
    triplet = f"{PLATFORM.split('-', 1)[1]}-linux-gnu"

    def fill(writer: LayerWriter) -> None:
        writer.add_symlink("bin", "usr/bin")
        writer.add_symlink("lib", "usr/lib")
        python = bookworm_root / "usr/bin/python3.11"
        writer.add_file("usr/bin/python3.11", python.read_bytes(), mode=0o755)
        writer.add_symlink("usr/bin/python3", "python3.11")
        libc = f"usr/lib/{triplet}/libc.so.6"
        writer.add_file(libc, (bookworm_root / libc).read_bytes(), mode=0o755)

    return once(
        "slim",
        lambda: make_image(tmp_path_factory.mktemp("slim") / "layout", fill, tag="slim"),
    )


@pytest.fixture(scope="session")
def slim_sample(
    tmp_path_factory: pytest.TempPathFactory, slim_layout: BaseImage
) -> tuple[Setup, BuiltImage, str]:
    """The sample lock built on the slim base: (setup, image, its oci: reference)."""

    def make() -> tuple[Setup, BuiltImage, str]:
        folder = tmp_path_factory.mktemp("slim-sample")
        setup = make_setup(folder)
        facts = probe_image(layout_image(slim_layout), where="slim")
        built, _ = build(setup, slim_layout, facts, mtime=0)
        return setup, built, write_image(built, f"oci:{folder}/out:slim")

    return once("slim-sample", make)


@pytest.fixture(scope="session")
def sample(
    tmp_path_factory: pytest.TempPathFactory, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> tuple[Setup, BuiltImage]:
    """alpha (requires beta), beta and tool (a console script), built on bookworm."""

    def make() -> tuple[Setup, BuiltImage]:
        setup = make_setup(tmp_path_factory.mktemp("sample"))
        built, _ = build(setup, bookworm_layout, bookworm_facts, mtime=0)
        return setup, built

    return once("sample", make)


@pytest.fixture(scope="session")
def sample_layout(
    tmp_path_factory: pytest.TempPathFactory, sample: tuple[Setup, BuiltImage]
) -> str:
    """The sample image in an OCI layout: its ``oci:DIR:TAG`` reference."""

    def make() -> str:
        return write_image(sample[1], f"oci:{tmp_path_factory.mktemp('sample-oci')}/out:sample")

    return once("sample-layout", make)


@pytest.fixture(scope="session")
def sample_loaded(
    tmp_path_factory: pytest.TempPathFactory,
    docker_engine: DockerEngine,
    sample: tuple[Setup, BuiltImage],
) -> Iterator[str]:
    """The sample image loaded into Docker (by ``docker load`` of a docker-archive)."""
    made = "sample-loaded" not in _ONCE
    name = once(
        "sample-loaded",
        lambda: load(
            docker_engine,
            sample[1],
            tmp_path_factory.mktemp("sample-archive"),
            f"envship-tests/sample-{uuid.uuid4().hex[:10]}:1",
        ),
    )
    yield name
    if made:
        docker_engine.docker("rmi", "--no-prune", name, check=False)


# -- the image runs ------------------------------------------------------------------------


def test_loaded_image_runs_the_environment(
    docker_engine: DockerEngine, sample: tuple[Setup, BuiltImage], sample_loaded: str
) -> None:
    setup, built = sample
    # The console script finds the image venv's python through its shebang; PATH has bin/.
    assert docker_run(docker_engine, sample_loaded, "tool") == "tool ran\n"
    shebang = docker_run(docker_engine, sample_loaded, "head", "-1", f"{DEFAULT_PREFIX}/bin/tool")
    assert shebang == f"#!{DEFAULT_PREFIX}/bin/python\n"
    code = (
        "import alpha, beta, sys; "
        "print(alpha.__version__, beta.__version__, sys.prefix, sys.base_prefix, sys.executable)"
    )
    out = docker_run(docker_engine, sample_loaded, "python", "-c", code).split()
    assert out == ["1.0", "1.0", DEFAULT_PREFIX, "/usr", f"{DEFAULT_PREFIX}/bin/python"]
    # SageMaker runs images as UID 1000 / GID 100: the environment must work for them too.
    assert docker_run(docker_engine, sample_loaded, "tool", user="1000:100") == "tool ran\n"
    listed = docker_run(
        docker_engine,
        sample_loaded,
        "python",
        "-c",
        "import importlib.metadata as m; print(sorted(d.name for d in m.distributions()))",
    )
    assert listed.strip() == "['alpha', 'beta', 'tool']"

    inspected = json.loads(docker_engine.docker("image", "inspect", sample_loaded).stdout)[0]
    env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
    assert env["PATH"].split(":")[0] == f"{DEFAULT_PREFIX}/bin"
    assert env["PATH"].endswith("/usr/bin:/sbin:/bin")  # the base's PATH follows
    assert env["VIRTUAL_ENV"] == DEFAULT_PREFIX
    labels = inspected["Config"]["Labels"]
    assert labels["org.envship.lock-digest"] == setup.lock.digest
    assert labels["org.envship.target"] == PLATFORM
    assert labels["org.envship.prefix"] == DEFAULT_PREFIX
    assert labels["org.envship.version"]
    assert inspected["Config"]["Cmd"] == ["/bin/bash"]  # the base's settings are kept
    # Docker computed the same layer chain: its diff_ids are our config's.
    config = json.loads(built.config_bytes)
    assert inspected["RootFS"]["Layers"] == config["rootfs"]["diff_ids"]


def test_layers_labels_and_marker(sample: tuple[Setup, BuiltImage], sample_layout: str) -> None:
    setup, built = sample
    assert [layer.label for layer in built.layers][:2] == ["base", "virtual environment"]
    assert built.layers[-1].label == "marker and kernelspec"
    held = sorted(d for layer in built.layers for d in layer.distributions)
    assert held == ["alpha==1.0", "beta==1.0", "tool==1.0"]
    assert built.kernel is None
    assert built.notes == ("no kernelspec: ipykernel is not in the locked environment",)
    assert built.target.name == PLATFORM

    # The OCI layout holds exactly this manifest, tagged, and every blob it names.
    directory = Path(sample_layout.split(":")[1])
    out = OciLayout.open(directory)
    assert out.tags() == ["sample"]
    image = out.image("sample")
    assert image.descriptor.digest == built.digest
    for layer in image.manifest.layers:
        out.verify_blob(layer)

    view = LayerView(list(image.layer_paths[1:]))  # the environment's layers only
    cfg = view.read("opt/envship/venv/pyvenv.cfg").decode()
    assert "home = /usr/bin\n" in cfg and "include-system-site-packages = false\n" in cfg
    assert "version = 3.11.2\n" in cfg and "executable = /usr/bin/python3.11\n" in cfg
    python = view.get("opt/envship/venv/bin/python")
    assert python is not None and python.target == "/usr/bin/python3.11"
    marker = json.loads(view.read(f"opt/envship/venv/{MARKER_NAME}"))
    assert marker["lock"] == {"path": "pylock.toml", "digest": setup.lock.digest}
    assert marker["target"]["name"] == PLATFORM
    assert marker["python"] == {"base": "/usr/bin/python3.11", "version": "3.11.2"}
    assert sorted(p["name"] for p in marker["packages"]) == ["alpha", "beta", "tool"]


def test_progress_reports_every_layer_in_layer_order(
    tmp_path: Path, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> None:
    wheels = build_wheels(tmp_path / "dist")
    wheels["big"] = big_wheel(tmp_path / "dist", "big", "1.0", 2 << 20)
    setup = make_setup(tmp_path, ["alpha", "beta", "tool", "big"], wheels=wheels)
    built, events = build(setup, bookworm_layout, bookworm_facts, jobs=2)
    ours = env_layers(built)
    assert ours[0].label == "virtual environment" and ours[-1].label == "marker and kernelspec"
    # Numbered as the layers are stacked, and told in that order, whatever finished first.
    assert [(e.index, e.label) for e in events] == [(i + 1, x.label) for i, x in enumerate(ours)]
    assert {e.total for e in events} == {len(ours)}
    assert {e.state for e in events} == {"built"}
    assert [e.size for e in events] == [layer.descriptor.size for layer in ours]

    # Cached and built layers mixed: still in layer order.
    bumped = write_lock(
        tmp_path / "pylock.toml",
        [wheels[k] for k in ("alpha", "beta11", "tool", "big")],
        targets=[image_target()],
    )
    again, events = build(Setup(bumped, setup.store, wheels), bookworm_layout, bookworm_facts)
    ours = env_layers(again)
    assert [(e.index, e.label) for e in events] == [(i + 1, x.label) for i, x in enumerate(ours)]
    assert [e.state for e in events] == ["built" if not x.cached else "cached" for x in ours]
    assert {e.state for e in events} == {"built", "cached"}


# -- reproducible --------------------------------------------------------------------------


def test_same_lock_and_base_give_the_same_digest_anywhere(
    tmp_path: Path,
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two builds: other store and lock folders, cwd, TMPDIR, hash seed, clock, process,
    and one builds inline while the other uses a process pool."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    wheels = build_wheels(tmp_path / "dist")
    first_dir, second_dir = tmp_path / "one", tmp_path / "elsewhere" / "two"
    first = make_setup(first_dir, wheels=wheels)
    second = make_setup(second_dir, wheels=wheels)
    monkeypatch.chdir(first_dir)
    built, _ = build(first, bookworm_layout, bookworm_facts, jobs=1)

    time.sleep(1.1)  # a later wall clock for the second build
    (second_dir / "tmp").mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(second_dir / "tmp"),
        "PYTHONHASHSEED": "12345",
        "ENVSHIP_STORE": str(second.store.root),
    }
    env.pop("SOURCE_DATE_EPOCH", None)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "envship", "image", "build", "--json"),
            *("--lock", "pylock.toml", "--base", bookworm_layout.ref),
            *("-o", f"oci:{second_dir / 'out'}:again"),
        ],
        cwd=second_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    again = json.loads(result.stdout)
    assert again["digest"] == built.digest
    assert OciLayout.open(second_dir / "out").image("again").descriptor.digest == built.digest
    assert {layer["digest"] for layer in again["layers"]} == {
        layer.descriptor.digest for layer in built.layers
    }


def test_source_date_epoch_sets_every_time(
    tmp_path: Path,
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
    sample: tuple[Setup, BuiltImage],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = make_setup(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    built, _ = build(setup, bookworm_layout, bookworm_facts)
    assert built.digest != sample[1].digest  # the sample was built with the default, 0
    config = json.loads(built.config_bytes)
    assert config["created"] == "2023-11-14T22:13:20Z"
    ours = config["history"][-len(env_layers(built)) :]
    assert {h["created"] for h in ours} == {"2023-11-14T22:13:20Z"}
    for layer, path in zip(built.layers, built.layer_paths, strict=True):
        if layer.label != "base":
            assert {int(info.mtime) for info, _ in iter_layer(path, layer=layer.label)} == {
                1_700_000_000
            }
    # The default is the epoch itself: same inputs, no variable, the sample's digest.
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    default, _ = build(setup, bookworm_layout, bookworm_facts)
    assert default.digest == sample[1].digest
    assert json.loads(default.config_bytes)["created"] == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", "SOURCE_DATE_EPOCH must be a whole number of seconds, not 'yesterday'"),
        ("abc", "SOURCE_DATE_EPOCH must be a whole number of seconds, not 'abc'"),
        ("-5", "SOURCE_DATE_EPOCH must be a whole number of seconds, not '-5'"),
        ("1.5", "SOURCE_DATE_EPOCH must be a whole number of seconds, not '1.5'"),
        ("\u00b2", "SOURCE_DATE_EPOCH must be a whole number of seconds, not '\u00b2'"),
        # 8**11: one past what a ustar header's 11 octal digits hold.
        ("8589934592", "SOURCE_DATE_EPOCH 8589934592 is too late for an image layer"),
        ("99999999999999999999", "SOURCE_DATE_EPOCH 99999999999999999999 is too late"),
        # More digits than int() takes (4300): an internal error, exit 70, before.
        ("9" * 5000, "SOURCE_DATE_EPOCH 99999999999999999999... is too late"),
    ],
)
def test_invalid_source_date_epoch_is_bad_input_naming_it(
    tmp_path: Path,
    slim_layout: BaseImage,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    message: str,
) -> None:
    setup = make_setup(tmp_path)
    facts = probe_image(layout_image(slim_layout), where="slim")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(ImageInputError) as caught:
        build(setup, slim_layout, facts)
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(message)
    assert [p.where for p in caught.value.problems] == ["SOURCE_DATE_EPOCH"]
    assert caught.value.hint and "reproducible-builds.org" in caught.value.hint
    if "too late" in message:
        assert "0 to 8589934591 (2242-03-16T12:56:31Z)" in caught.value.problems[0].message
    assert not (setup.store.root / "layers").exists()  # refused before any layer


@pytest.mark.parametrize(("value", "epoch"), [("0" * 4999 + "5", 5), (" 7 ", 7), ("", 0)])
def test_source_date_epoch_reads_zeros_and_spaces(
    monkeypatch: pytest.MonkeyPatch, value: str, epoch: int
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    assert source_date_epoch() == epoch


def test_the_latest_source_date_epoch_a_layer_holds_builds(
    tmp_path: Path, slim_layout: BaseImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = make_setup(tmp_path)
    facts = probe_image(layout_image(slim_layout), where="slim")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "8589934591")
    built, _ = build(setup, slim_layout, facts)
    assert json.loads(built.config_bytes)["created"] == "2242-03-16T12:56:31Z"
    top = built.layer_paths[-1]
    assert {int(info.mtime) for info, _ in iter_layer(top, layer="top")} == {8589934591}


def test_source_date_epoch_bad_input_exits_2_from_the_cli(
    tmp_path: Path, slim_layout: BaseImage
) -> None:
    setup = make_setup(tmp_path)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "envship", "--json", "image", "build"),
            *("--lock", str(setup.lock.path), "--store", str(setup.store.root)),
            *("--base", slim_layout.ref, "-o", f"oci:{tmp_path / 'out'}:x"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "abc"},
    )
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stdout)
    assert error["error"] == "image-input"
    assert "SOURCE_DATE_EPOCH" in error["message"]
    assert not (tmp_path / "out").exists()


# -- layers and their cache ----------------------------------------------------------------


@pytest.fixture
def many(tmp_path: Path) -> Setup:
    """40 small distributions and two big ones (over 1 MiB each)."""
    dist = tmp_path / "dist"
    wheels = {f"small{i:02d}": build_wheel(dist, f"small{i:02d}", "1.0") for i in range(40)}
    wheels["bigone"] = big_wheel(dist, "bigone", "1.0", 3 << 20)
    wheels["bigtwo"] = big_wheel(dist, "bigtwo", "2.0", 2 << 20)
    return make_setup(tmp_path, sorted(wheels), wheels=wheels)


def test_big_distributions_get_their_own_layer_small_ones_share(
    many: Setup, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> None:
    built, _ = build(many, bookworm_layout, bookworm_facts)
    ours = env_layers(built)
    # containerd refuses more than 127 layers; 42 distributions must take far fewer.
    assert len(built.layers) <= 1 + 2 + 2 + 8
    by_layer = {layer.label: layer.distributions for layer in ours}
    assert by_layer["bigone 1.0"] == ("bigone==1.0",)
    assert by_layer["bigtwo 2.0"] == ("bigtwo==2.0",)
    held = [d for layer in ours for d in layer.distributions]
    assert sorted(held) == sorted(f"{a.name}=={a.version}" for a in many.lock.artifacts())
    assert len(held) == len(set(held))  # each distribution in exactly one layer
    # What a layer says it holds is what it holds.
    for layer, path in zip(built.layers, built.layer_paths, strict=True):
        if layer.distributions:
            found = {
                name.split("/")[-2].removesuffix(".dist-info")
                for name in layer_files(path)
                if name.endswith(".dist-info/METADATA")
            }
            assert found == {d.replace("==", "-") for d in layer.distributions}


def test_second_build_takes_every_layer_from_the_cache(
    many: Setup, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> None:
    first, _ = build(many, bookworm_layout, bookworm_facts)
    assert not any(layer.cached for layer in env_layers(first))
    second, events = build(many, bookworm_layout, bookworm_facts)
    assert second.digest == first.digest
    assert all(layer.cached for layer in env_layers(second))
    assert {e.state for e in events} == {"cached"}
    assert second.to_json()["built"] == 0

    # A cache entry whose blob went missing is rebuilt, not trusted.
    big = next(layer for layer in env_layers(second) if layer.label == "bigone 1.0")
    OciLayout.open(many.store.root / "oci").blob_path(big.descriptor.digest).unlink()
    third, events = build(many, bookworm_layout, bookworm_facts)
    assert third.digest == first.digest
    assert [e.label for e in events if e.state == "built"] == ["bigone 1.0"]


def flip_byte(path: Path) -> None:
    """Change one byte in the middle of ``path`` in place (same inode, same size)."""
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_cached_layer_damaged_through_an_output_is_rebuilt_and_repaired(
    many: Setup, bookworm_layout: BaseImage, bookworm_facts: BaseFacts, tmp_path: Path
) -> None:
    """Output layouts hard-link the store's blobs: editing one's own output damages the
    cached layer. The next build must find that out and build the layer again, not
    report it cached and fail while writing (exit 4, for ever)."""
    first, _ = build(many, bookworm_layout, bookworm_facts)
    ref = write_image(first, f"oci:{tmp_path / 'mine'}:v1", store=many.store)
    big = next(layer for layer in env_layers(first) if layer.label == "bigone 1.0")
    stored = OciLayout.open(many.store.root / "oci").blob_path(big.descriptor.digest)
    output = OciLayout.open(Path(ref.split(":")[1])).blob_path(big.descriptor.digest)
    assert os.path.samefile(stored, output)  # one file: what happens to one, the other has
    flip_byte(output)

    again, events = build(many, bookworm_layout, bookworm_facts)
    assert again.digest == first.digest
    assert [e.label for e in events if e.state == "built"] == ["bigone 1.0"]
    assert not next(layer for layer in env_layers(again) if layer.label == "bigone 1.0").cached
    # The store holds the right bytes again, in a file of its own; the output written
    # from it checks out.
    OciLayout.open(many.store.root / "oci").verify_blob(big.descriptor)
    assert not os.path.samefile(stored, output)
    out = write_image(again, f"oci:{tmp_path / 'fresh'}:v1", store=many.store)
    assert OciLayout.open(Path(out.split(":")[1])).image("v1").descriptor.digest == first.digest
    # And the build after that takes everything from the cache again.
    third, events = build(many, bookworm_layout, bookworm_facts)
    assert third.digest == first.digest and {e.state for e in events} == {"cached"}


@pytest.mark.parametrize(
    "record",
    [
        "{not json",
        "[]",
        '{"descriptor": 1, "diff_id": "x"}',
        '{"descriptor": {"mediaType": "x", "digest": "sha256:00", "size": 1}, "diff_id": "x"}',
        '{"uncompiled": 7}',
    ],
)
def test_a_damaged_cache_record_is_a_miss_and_rebuilt(
    many: Setup, bookworm_layout: BaseImage, bookworm_facts: BaseFacts, record: str
) -> None:
    first, _ = build(many, bookworm_layout, bookworm_facts)
    records = sorted((many.store.root / "layers").glob("*.json"))
    assert len(records) == len([layer for layer in env_layers(first) if layer.distributions])
    for path in records:
        path.write_text(record)
    again, events = build(many, bookworm_layout, bookworm_facts)
    assert again.digest == first.digest
    labels = {layer.label for layer in env_layers(again) if layer.distributions}
    assert {e.state for e in events if e.label in labels} == {"built"}
    assert all(json.loads(path.read_text())["diff_id"] for path in records)  # rewritten


def test_what_installing_a_wheel_warned_of_is_a_note_built_or_cached(
    tmp_path: Path, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> None:
    odd = build_wheel(
        tmp_path / "dist",
        "odd",
        "1.0",
        files={"odd/__init__.py": "", "odd/__pycache__/__init__.cpython-311.pyc": "stale"},
    )
    setup = make_setup(tmp_path / "odd", ("odd",), wheels={"odd": odd})
    for state in ("built", "cached"):
        built, events = build(setup, bookworm_layout, bookworm_facts)
        assert {e.state for e in events if e.label.startswith("small")} == {state}
        (note,) = [n for n in built.notes if n.startswith(odd.name)]
        assert "__pycache__" in note


def test_another_zlib_is_another_cache_entry_and_said(
    many: Setup,
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, _ = build(many, bookworm_layout, bookworm_facts)
    assert not [n for n in first.notes if "zlib" in n]
    # zlib-ng cannot run here; what envship reads of it is the runtime version string.
    monkeypatch.setattr(zlib, "ZLIB_RUNTIME_VERSION", "1.3.1.zlib-ng")
    other, events = build(many, bookworm_layout, bookworm_facts)
    labels = {layer.label for layer in env_layers(other) if layer.distributions}
    assert {e.state for e in events if e.label in labels} == {"built"}  # no cached blob used
    assert any("compressed with 1.3.1.zlib-ng" in n for n in other.notes)


def test_one_package_change_rebuilds_one_layer(
    tmp_path: Path, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> None:
    setup = make_setup(tmp_path)
    first, _ = build(setup, bookworm_layout, bookworm_facts)
    bumped = write_lock(
        tmp_path / "pylock.toml",
        [setup.wheels[k] for k in ("alpha", "beta11", "tool")],
        targets=[image_target()],
    )
    second, events = build(
        Setup(bumped, setup.store, setup.wheels), bookworm_layout, bookworm_facts
    )
    assert second.digest != first.digest
    changed = [
        (a.label, b.label)
        for a, b in zip(first.layers, second.layers, strict=True)
        if a.descriptor != b.descriptor
    ]
    beta_layer = next(layer.label for layer in first.layers if "beta==1.0" in layer.distributions)
    assert changed == [(beta_layer, beta_layer), ("marker and kernelspec",) * 2]
    assert [e.label for e in events if e.state == "built"] == [beta_layer, "marker and kernelspec"]


# -- what goes into the image --------------------------------------------------------------


def test_kernelspec_and_custom_prefix(
    tmp_path: Path, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> None:
    wheels = build_wheels(tmp_path / "dist")
    wheels["ipykernel"] = build_wheel(tmp_path / "dist", "ipykernel", "6.0")
    setup = make_setup(tmp_path, ["alpha", "beta", "tool", "ipykernel"], wheels=wheels)
    lock = set_tool(setup.lock.path, name="Team DS", **{"display-name": "Python (team)"})
    built, _ = build(
        Setup(lock, setup.store, wheels), bookworm_layout, bookworm_facts, prefix="/srv/env/"
    )
    assert built.prefix == "/srv/env" and built.kernel == "team-ds" and built.notes == ()
    view = LayerView(list(built.layer_paths[1:]))
    spec = json.loads(view.read("usr/local/share/jupyter/kernels/team-ds/kernel.json"))
    assert spec["argv"][:3] == ["/srv/env/bin/python", "-m", "ipykernel_launcher"]
    assert spec["display_name"] == "Python (team)" and spec["language"] == "python"
    assert view.read("srv/env/bin/tool").startswith(b"#!/srv/env/bin/python\n")
    assert view.get("opt/envship") is None
    config = json.loads(built.config_bytes)
    assert config["config"]["Env"][0].startswith("PATH=/srv/env/bin:")
    assert config["config"]["Labels"]["org.envship.prefix"] == "/srv/env"

    named, _ = build(
        Setup(lock, setup.store, wheels), bookworm_layout, bookworm_facts, kernel_name="ds"
    )
    assert named.kernel == "ds"
    assert LayerView(list(named.layer_paths[1:])).get(
        "usr/local/share/jupyter/kernels/ds/kernel.json"
    )


@pytest.mark.parametrize(
    ("kernel_name", "refused"), [("ds", True), (None, False)], ids=["named", "not-named"]
)
def test_a_kernel_name_without_ipykernel_is_refused_before_any_layer(
    tmp_path: Path, slim_layout: BaseImage, kernel_name: str | None, refused: bool
) -> None:
    """SageMaker's AppImageConfig names the kernelspec given with --kernel-name: an image
    without it would fail only when Studio starts it. Unasked, a note is enough."""
    setup = make_setup(tmp_path)  # alpha, beta and tool: no ipykernel
    facts = probe_image(layout_image(slim_layout), where="slim")
    if not refused:
        built, _ = build(setup, slim_layout, facts, kernel_name=kernel_name)
        assert built.kernel is None
        assert built.notes == ("no kernelspec: ipykernel is not in the locked environment",)
        return
    events: list[LayerEvent] = []
    with pytest.raises(ImageInputError) as caught:
        build_image(
            setup.lock,
            setup.store,
            layout_image(slim_layout),
            facts,
            base_name=slim_layout.ref,
            kernel_name=kernel_name,
            progress=events.append,
        )
    error = caught.value
    assert error.exit_code == 2
    assert error.message == (
        "cannot write the kernelspec 'ds': ipykernel is not in the locked environment"
    )
    assert [p.where for p in error.problems] == ["--kernel-name"]
    assert error.hint and "add ipykernel to the spec's dependencies" in error.hint
    assert "leave --kernel-name out" in error.hint
    assert events == []  # nothing was built
    assert not (setup.store.root / "layers").exists()


@pytest.mark.parametrize(
    "prefix",
    ["relative/env", "/", "/usr", "/opt/", "/opt/my env", "", "/opt//env", "/opt/./env", "/a:b"],
)
def test_invalid_prefix_is_refused(
    tmp_path: Path, bookworm_layout: BaseImage, bookworm_facts: BaseFacts, prefix: str
) -> None:
    setup = make_setup(tmp_path)
    with pytest.raises(ImageInputError, match="invalid environment path") as caught:
        build(setup, bookworm_layout, bookworm_facts, prefix=prefix)
    assert caught.value.exit_code == 2
    assert caught.value.hint == "give a folder of its own, e.g. --prefix /opt/envship/venv"
    assert not (setup.store.root / "oci").exists()


def test_bare_base_config_and_groups(tmp_path: Path, slim_layout: BaseImage) -> None:
    """A base config with no Env and no history (as a bare import gives); a lock with a
    dependency group, built without it."""
    layout = OciLayout.open(tmp_path / "bare", create=True)
    layer = slim_layout.manifest.layers[0]
    layout.add_blob_file(
        slim_layout.layers[0], layer.digest, layer.size, layer.media_type, link=True
    )
    config = replace(slim_layout.config, config={}, history=())
    config_desc = layout.add_blob(config.to_bytes(), OCI_CONFIG)
    manifest = layout.add_blob(ImageManifest(config_desc, (layer,)).to_bytes(), OCI_MANIFEST)
    layout.tag("bare", manifest)
    bare = BaseImage(
        layout, "bare", manifest, ImageManifest(config_desc, (layer,)), config, slim_layout.layers
    )
    facts = probe_image(layout_image(bare), where="bare")

    wheels = build_wheels(tmp_path / "dist")
    lock = write_lock(
        tmp_path / "pylock.toml",
        [wheels[k] for k in ("alpha", "beta", "tool")],
        targets=[image_target()],
        groups={"dev": ["tool"]},
    )
    setup = Setup(lock, stocked_store(tmp_path / "store", list(wheels.values())), wheels)
    everything, _ = build(setup, bare, facts)
    assert "tool==1.0" in {d for layer in everything.layers for d in layer.distributions}
    built, _ = build(setup, bare, facts, groups=[])
    assert sorted(d for layer in built.layers for d in layer.distributions) == [
        "alpha==1.0",
        "beta==1.0",
    ]
    data = json.loads(built.config_bytes)
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert data["config"]["Env"] == [
        f"PATH={DEFAULT_PREFIX}/bin:{path}",
        f"VIRTUAL_ENV={DEFAULT_PREFIX}",
    ]
    # One history entry per layer, the base's made up since it had none.
    assert [h["created_by"] for h in data["history"]] == [
        "base layer",
        *(f"envship image build: {layer.label}" for layer in built.layers[1:]),
    ]
    marker = json.loads(
        LayerView(list(built.layer_paths[1:])).read(f"opt/envship/venv/{MARKER_NAME}")
    )
    assert marker["groups"] == []


def test_lock_spec_digest_is_a_label(
    tmp_path: Path, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> None:
    setup = make_setup(tmp_path)
    lock = set_tool(setup.lock.path, **{"spec-digest": "sha256:" + "ab" * 32})
    built, _ = build(Setup(lock, setup.store, setup.wheels), bookworm_layout, bookworm_facts)
    labels = json.loads(built.config_bytes)["config"]["Labels"]
    assert labels["org.envship.spec-digest"] == "sha256:" + "ab" * 32
    assert labels["org.envship.lock-digest"] == lock.digest


# -- bad input -------------------------------------------------------------------------------


def test_store_missing_an_artifact_says_how_to_fetch(
    tmp_path: Path, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> None:
    wheels = build_wheels(tmp_path / "dist")
    lock = write_lock(
        tmp_path / "pylock.toml", [wheels[k] for k in ("alpha", "beta")], targets=[image_target()]
    )
    store = stocked_store(tmp_path / "store", [wheels["alpha"]])
    with pytest.raises(StoreError, match="1 of 2 locked artifacts") as caught:
        build(Setup(lock, store, wheels), bookworm_layout, bookworm_facts)
    assert [p.where for p in caught.value.problems] == ["beta 1.0"]
    fetch = f"envship fetch --lock {lock.path} --target {PLATFORM} --store {store.root}"
    assert caught.value.hint == f"fetch them: {fetch}"
    assert not (store.root / "oci").exists()


def test_wheel_whose_record_lies_is_refused_with_or_without_workers(
    tmp_path: Path, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> None:
    """An ArtifactError raised in a worker process must reach the caller as itself."""
    wheels = build_wheels(tmp_path / "dist")
    liar = wheels["beta"]
    raw = liar.read_bytes()
    lied = tmp_path / "lied" / liar.name
    lied.parent.mkdir()
    # One member changed, the RECORD kept: the store takes the file (its sha256 is the
    # lock's), only installing it can notice (PEP 427: installers check RECORD).
    with zipfile.ZipFile(liar) as src, zipfile.ZipFile(lied, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "beta/__init__.py":
                data = data.replace(b"1.0", b"6.6")
            dst.writestr(info, data)
    assert lied.read_bytes() != raw
    wheels["beta"] = lied
    for jobs in (1, 2):
        setup = make_setup(tmp_path / f"jobs{jobs}", wheels=wheels)
        with pytest.raises(ArtifactError, match="does not match the wheel's RECORD") as caught:
            build(setup, bookworm_layout, bookworm_facts, jobs=jobs)
        assert caught.value.exit_code == 4 and caught.value.artifact == liar.name
        assert leftovers(setup.store) == []


FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
from envship.cli.main import main
# The kernel's file-size limit stands in for a disk that fills: write() fails with EFBIG.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("limit", "failing"),
    [(1 << 20, "layer"), (40 << 20, "archive")],
    ids=["while-building-a-layer", "while-writing-the-archive"],
)
def test_a_full_disk_leaves_no_output(
    tmp_path: Path,
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
    limit: int,
    failing: str,
) -> None:
    wheels = build_wheels(tmp_path / "dist")
    wheels["big"] = big_wheel(tmp_path / "dist", "big", "1.0", 3 << 20)
    setup = make_setup(tmp_path, ["alpha", "beta", "tool", "big"], wheels=wheels)
    seed_probe_cache(setup.store, bookworm_layout, bookworm_facts)
    outputs = [f"docker-archive:{tmp_path / 'out.tar'}:x/y:1", f"oci:{tmp_path / 'oci'}:v1"]
    result = subprocess.run(
        [
            *(sys.executable, "-c", FULL_DISK, str(limit), "image", "build"),
            *("--lock", str(setup.lock.path), "--store", str(setup.store.root)),
            *("--base", bookworm_layout.ref, "--jobs", "2"),
            *(arg for out in outputs for arg in ("-o", out)),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    if failing == "layer":
        assert "error: cannot write layer" in result.stderr
        assert "hint: free disk space" in result.stderr
    else:
        # EFBIG, not a full disk: freeing space would not help (a real one: test_imageio).
        assert f"error: cannot write the image to {tmp_path / 'out.tar'}: File too large" in (
            result.stderr
        )
        assert "hint: write the image elsewhere, or make that place writable" in result.stderr
    # Nothing half-written: no archive, no layout, no partial file beside them.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "pylock.toml", "store"]
    assert leftovers(setup.store) == []


def leftovers(store: Store) -> list[str]:
    """What image builds have in the store's tmp/: work folders, their locks, partials."""
    tmp = store.root / "tmp"
    return sorted(
        str(p.relative_to(tmp))
        for p in tmp.rglob("*")
        if p.name.startswith(("build-", ".build-", ".layer-"))
    )


def wait_for(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    """Poll until ``ready()``; fail if ``proc`` ends first."""
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the build ended (exit {proc.returncode}) first:\n{out}\n{err}")
        time.sleep(0.01)


def writing_a_big_layer(tmp: Path) -> bool:
    for path in tmp.glob("build-*/.layer-*.partial"):
        try:
            if path.stat().st_size > 1 << 20:
                return True
        except FileNotFoundError:  # moved into the layout meanwhile
            pass
    return False


def _big_build(tmp_path: Path, slim_layout: BaseImage, jobs: int) -> tuple[Setup, list[str]]:
    """A lock with four 16 MB wheels beside small ones, and the CLI command that builds
    it into ``tmp_path/out``: long enough to be interrupted while layers are written."""
    wheels = build_wheels(tmp_path / "dist")
    big = ["big1", "big2", "big3", "big4"]
    for name in big:
        wheels[name] = big_wheel(tmp_path / "dist", name, "1.0", 16 << 20)
    setup = make_setup(tmp_path, ["alpha", "beta", "tool", *big], wheels=wheels)
    return setup, [
        *(sys.executable, "-m", "envship", "image", "build", "--jobs", str(jobs)),
        *("--lock", str(setup.lock.path), "--store", str(setup.store.root)),
        *("--base", slim_layout.ref, "-o", f"oci:{tmp_path / 'out'}:x"),
    ]


@pytest.mark.parametrize("jobs", [1, 2], ids=["inline", "process-pool"])
def test_ctrl_c_mid_build_leaves_no_partial_file_and_no_process(
    tmp_path: Path, slim_layout: BaseImage, jobs: int
) -> None:
    """A real SIGINT to the build's process group (what Ctrl-C sends), caught while a
    layer of several MB is being written: the process group stopped at that moment."""
    setup, command = _big_build(tmp_path, slim_layout, jobs)
    proc = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(proc, lambda: writing_a_big_layer(setup.store.root / "tmp"))
        os.killpg(proc.pid, signal.SIGSTOP)
        assert leftovers(setup.store)  # frozen in the middle: there is something to remove
        os.killpg(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted; re-run the same command to resume" in err
    assert "Traceback" not in err
    assert leftovers(setup.store) == []
    with pytest.raises(ProcessLookupError):  # no worker outlived the build
        os.killpg(proc.pid, 0)
    assert not (tmp_path / "out").exists()
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert leftovers(setup.store) == []


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigkill_of_a_build_ends_its_workers_and_the_next_build_sweeps(
    tmp_path: Path, slim_layout: BaseImage
) -> None:
    """SIGKILL gives the build no chance to stop its pool: its workers must end with it
    (they hold its lock, so while they live no later build may remove its work folder)."""
    setup, command = _big_build(tmp_path, slim_layout, 2)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        wait_for(proc, lambda: writing_a_big_layer(setup.store.root / "tmp"))
        workers = children(proc.pid)
        assert len(workers) == 2, workers  # the pool, busy
        folders = [p.name for p in (setup.store.root / "tmp").glob("build-*") if p.is_dir()]
        assert len(folders) == 1
        proc.kill()
        proc.communicate()
        # A generous deadline, not a measure of speed: the kernel ends them at once.
        deadline = time.monotonic() + 120
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [w for w in workers if alive(w)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:  # the old behaviour: do not leave them running after a failure
            if alive(w):
                os.kill(w, signal.SIGKILL)
    assert (setup.store.root / "tmp" / folders[0]).is_dir()  # left by the killed build
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert leftovers(setup.store) == []  # its sweep removed the dead build's folder


HOUR = 3600


@pytest.mark.parametrize(
    ("name", "shape", "age", "removed"),
    [
        ("build-1-dead", "work", 0, True),  # its lock file is free: the build is gone
        ("build-2-live", "work held", 0, False),  # another build holds the lock
        ("build-3-orphan", "folder", 7 * HOUR, True),  # no lock file, quiet for 7 hours
        ("build-4-young", "folder", 1 * HOUR, False),  # no lock file, written an hour ago
        (".layer-old.partial", "file", 7 * HOUR, True),  # an older envship's partial
        (".layer-new.partial", "file", 1 * HOUR, False),  # perhaps an older envship's build
        (".build-x.new", "file", 7 * HOUR, True),  # a lock file never named
        ("add-stranger", "file", 7 * HOUR, False),  # not an image build's
    ],
)
def test_a_build_removes_what_dead_builds_left_and_nothing_else(
    tmp_path: Path, slim_layout: BaseImage, name: str, shape: str, age: int, removed: bool
) -> None:
    setup = make_setup(tmp_path)
    tmp = setup.store.root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / name
    held = None
    if shape == "file":
        path.write_bytes(b"partial")
    else:
        (path / "wheels").mkdir(parents=True)
        (path / ".layer-abc.partial").write_bytes(b"partial")
    if shape.startswith("work"):
        lock = tmp / f"{name}.lock"
        held = os.open(lock, os.O_RDWR | os.O_CREAT)
        if shape == "work held":
            fcntl.flock(held, fcntl.LOCK_EX)
    then = time.time() - age
    for item in [path, *path.rglob("*")]:
        os.utime(item, (then, then))
    try:
        facts = probe_image(layout_image(slim_layout), where="slim")
        build(setup, slim_layout, facts)
    finally:
        if held is not None:
            os.close(held)
    assert path.exists() is not removed
    if shape.startswith("work"):
        assert (tmp / f"{name}.lock").exists() is not removed
    if not removed and shape != "file":
        assert (path / ".layer-abc.partial").read_bytes() == b"partial"
    assert [n for n in os.listdir(tmp) if n != name and n != f"{name}.lock"] == []


# -- the real data-science set from PyPI ---------------------------------------------------


@pytest.mark.pypi
def test_numpy_pandas_image_from_pypi_runs_and_lists_its_kernel(
    tmp_path: Path,
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
    docker_engine: DockerEngine,
) -> None:
    from envship.fetch import fetch
    from envship.lock import lock
    from envship.spec import load_spec

    spec = {
        "name": "ds",
        "python": BOOKWORM_PY,
        "dependencies": ["numpy", "pandas", "ipykernel"],
        "targets": {PLATFORM: {"glibc": "2.28"}},
        "kernel": {"display-name": "Python (ds)"},
    }
    (tmp_path / "envship.toml").write_text(tomli_w.dumps(spec))
    locked = LockFile.load(lock(load_spec(tmp_path)).path)
    store = Store(tmp_path / "store")
    fetch(locked, store)
    built, _ = build(Setup(locked, store, {}), bookworm_layout, bookworm_facts)
    assert built.kernel == "ds"
    assert len(built.layers) < 40
    name = load(docker_engine, built, tmp_path, f"envship-tests/ds-{uuid.uuid4().hex[:10]}:1")
    try:
        code = "import numpy, pandas; print(pandas.DataFrame({'a': numpy.arange(3)}).a.sum())"
        assert docker_run(docker_engine, name, "python", "-c", code) == "3\n"
        listed = docker_run(docker_engine, name, "jupyter", "kernelspec", "list", "--json")
        specs = json.loads(listed)["kernelspecs"]
        assert specs["ds"]["resource_dir"] == "/usr/local/share/jupyter/kernels/ds"
        assert specs["ds"]["spec"]["display_name"] == "Python (ds)"
        assert specs["ds"]["spec"]["argv"][0] == f"{DEFAULT_PREFIX}/bin/python"
        # The kernel's interpreter imports the environment, as root and as UID 1000.
        out = docker_run(
            docker_engine,
            name,
            f"{DEFAULT_PREFIX}/bin/python",
            "-c",
            "import ipykernel, numpy; print(numpy.__file__)",
            user="1000:100",
        )
        assert out.startswith(f"{DEFAULT_PREFIX}/lib/python{BOOKWORM_PY}/site-packages/numpy/")
    finally:
        docker_engine.docker("rmi", "--no-prune", name, check=False)


__all__ = [
    "BOOKWORM_PY",
    "_no_source_date_epoch",
    "PLATFORM",
    "Setup",
    "big_wheel",
    "bookworm_facts",
    "build",
    "docker_run",
    "env_layers",
    "image_target",
    "layer_files",
    "layout_image",
    "load",
    "make_setup",
    "once",
    "sample",
    "sample_layout",
    "sample_loaded",
    "seed_probe_cache",
    "set_tool",
    "slim_layout",
    "slim_sample",
]

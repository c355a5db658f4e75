"""``envship image build`` / ``envship image inspect`` / ``envship verify --image`` through
the real CLI entry point, against the real registry and the bookworm base."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from disklib import SmallDisk
from envship.cli.main import cli, main
from envship.dockerarchive import write_docker_archive
from envship.image import BuiltImage
from envship.imagebase import BaseFacts
from envship.ocilayout import OciLayout
from envship.registry import RegistryClient
from imagelib import BaseImage
from registrylib import Registry, TokenServer, free_port
from serviceslib import DockerEngine
from test_image import (
    PLATFORM,
    VENV_SITE,
    Setup,
    _no_source_date_epoch,
    bookworm_facts,
    build,
    image_target,
    make_setup,
    sample,
    sample_layout,
    seed_probe_cache,
    slim_layout,
    slim_sample,
)
from test_imageinspect import append_layer, tamper
from test_imageio import a_file, a_folder, a_folder_with_files, evil_image, push_base, unique_image
from test_install import write_lock

# The fixtures imported from test_image are shared with it (built once per session).
__all__ = [
    "_no_source_date_epoch",
    "bookworm_facts",
    "sample",
    "sample_layout",
    "slim_layout",
    "slim_sample",
]


def repo() -> str:
    return f"envship-tests/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def cli_setup(
    tmp_path_factory: pytest.TempPathFactory, bookworm_layout: BaseImage, bookworm_facts: BaseFacts
) -> Setup:
    """The sample lock and a store holding it, which has probed bookworm before."""
    setup = make_setup(tmp_path_factory.mktemp("cli"))
    seed_probe_cache(setup.store, bookworm_layout, bookworm_facts)
    return setup


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def build_args(setup: Setup, base: str, *more: str, store: Path | None = None) -> list[str]:
    where = str(store or setup.store.root)
    return [
        "image",
        "build",
        "--lock",
        str(setup.lock.path),
        "--store",
        where,
        "--base",
        base,
        *more,
    ]


# -- build ---------------------------------------------------------------------------------------


def test_build_writes_both_outputs_and_pushes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cli_setup: Setup,
    bookworm_layout: BaseImage,
    registry: Registry,
    sample: tuple[Setup, BuiltImage],
) -> None:
    ref = f"{registry.host}/{repo()}:1"
    args = build_args(
        cli_setup,
        bookworm_layout.ref,
        *(
            "-o",
            f"oci:{tmp_path / 'oci'}:v1",
            "-o",
            f"docker-archive:{tmp_path / 'img.tar'}:team/ds:1",
        ),
        *("--push", ref),
    )
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    assert err == ""  # --json: stdout is one document, stderr stays quiet
    data = json.loads(out)
    # The same wheels, built elsewhere, give the sample's digest.
    assert data["digest"] == sample[1].digest
    assert data["target"]["name"] == PLATFORM and data["kernel"] is None
    assert data["base"]["python"] == "/usr/bin/python3.11"
    assert data["outputs"] == [
        f"oci:{tmp_path / 'oci'}:v1",
        f"docker-archive:{tmp_path / 'img.tar'}:team/ds:1",
    ]
    assert data["push"]["reference"] == ref and data["push"]["digest"] == data["digest"]
    assert data["push"]["blobs_uploaded"] == len(data["layers"]) + 1
    assert [layer["label"] for layer in data["layers"]][:2] == ["base", "virtual environment"]
    assert data["built"] == len(data["layers"]) - 1
    assert OciLayout.open(tmp_path / "oci").image("v1").descriptor.digest == data["digest"]
    assert (tmp_path / "img.tar").is_file()

    # Again, as text: nothing to build, nothing to upload.
    code, out, err = run(capsys, *args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(
        f"built {data['digest']} for {PLATFORM}: {len(data['layers'])} layers"
    )
    assert f"({len(data['layers']) - 1} for the environment, 0 built now)" in lines[0]
    assert f"  wrote oci:{tmp_path / 'oci'}:v1" in lines
    assert any(
        line.startswith(f"  pushed {ref}@{data['digest']}: 0 blobs uploaded (0 B), 0 mounted,")
        for line in lines
    )
    assert "  note: no kernelspec: ipykernel is not in the locked environment" in lines
    # Progress on stderr: the base, its facts, then one line per layer.
    assert f"base {bookworm_layout.ref}: {bookworm_layout.descriptor.digest}" in err
    assert "base has linux-" in err and "CPython 3.11.2 at /usr/bin/python3.11, glibc 2.36" in err
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert len(progress) == len(data["layers"]) - 1
    assert all(" cached " in line for line in progress)
    assert progress[-1].startswith(f"[{len(progress)}/{len(progress)}]")


def test_output_is_required_and_must_be_a_file_destination(
    capsys: pytest.CaptureFixture[str], cli_setup: Setup, bookworm_layout: BaseImage
) -> None:
    code, _, err = run(capsys, *build_args(cli_setup, bookworm_layout.ref))
    assert code == 2 and "say where the image goes: --output DEST and/or --push REF" in err
    code, _, err = run(
        capsys, *build_args(cli_setup, bookworm_layout.ref, "-o", "registry.example/x:1")
    )
    assert code == 2 and "(use --push for a registry)" in err


@pytest.mark.parametrize(
    ("more", "needle"),
    [
        (["--push", f"127.0.0.1:5000/team/ds@sha256:{'0' * 64}"], "not a digest"),
        (["--push", "127.0.0.1:5000/Team/DS:1"], "Team/DS"),
        (["-o", "docker-archive:x.tar:BadName:1"], "BadName"),
    ],
    ids=["push-digest", "push-uppercase", "archive-name"],
)
def test_bad_destinations_are_refused_before_the_base_is_read(
    capsys: pytest.CaptureFixture[str],
    cli_setup: Setup,
    tmp_path: Path,
    more: list[str],
    needle: str,
) -> None:
    # The base does not exist: an error about the destination proves it was checked first.
    base = f"oci:{tmp_path / 'no-such-layout'}:x"
    code, out, _ = run(capsys, *build_args(cli_setup, base, *more, "--json"))
    doc = json.loads(out)
    assert code == 2 and doc["error"] == "image-input", doc
    assert needle in doc["message"] + " ".join(p["message"] for p in doc["problems"])
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize(
    ("kind", "make"),
    [("docker-archive", a_folder), ("oci", a_file), ("oci", a_folder_with_files)],
    ids=["archive-at-a-folder", "layout-at-a-file", "layout-in-a-folder-with-files"],
)
def test_outputs_whose_place_is_taken_are_refused_before_the_base_is_read(
    capsys: pytest.CaptureFixture[str],
    cli_setup: Setup,
    tmp_path: Path,
    kind: str,
    make: Callable[[Path], Path],
) -> None:
    where = make(tmp_path)
    base = f"oci:{tmp_path / 'no-such-layout'}:x"  # an error about it would come later
    code, out, _ = run(capsys, *build_args(cli_setup, base, "-o", f"{kind}:{where}", "--json"))
    doc = json.loads(out)
    assert code == 2 and doc["error"] == "image-input", doc
    assert doc["message"].startswith(f"cannot write the image to {where}: ")


@pytest.mark.parametrize("what", ["the base archive", "the lock"])
def test_an_archive_output_never_replaces_the_base_or_the_lock(
    capsys: pytest.CaptureFixture[str], cli_setup: Setup, tmp_path: Path, what: str
) -> None:
    """`-o docker-archive:FILE` replaced any file, the base it read and the lock too."""
    base_tar = tmp_path / "base.tar"
    with tarfile.open(base_tar, "w") as tar:  # a tar: the check refuses it by identity
        tar.addfile(tarfile.TarInfo("manifest.json"), io.BytesIO(b""))
    target = base_tar if what == "the base archive" else cli_setup.lock.path
    before = target.read_bytes()
    args = build_args(cli_setup, f"docker-archive:{base_tar}", "-o", f"docker-archive:{target}")
    code, out, _ = run(capsys, *args, "--json")
    doc = json.loads(out)
    assert code == 2 and doc["error"] == "image-input", doc
    assert doc["message"].startswith(f"cannot write the image to {target}: it is the "), doc
    assert target.read_bytes() == before


def test_two_outputs_naming_one_archive_are_refused_before_the_base_is_read(
    capsys: pytest.CaptureFixture[str],
    cli_setup: Setup,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both were reported as written; the file held only the second."""
    monkeypatch.chdir(tmp_path)
    base = f"oci:{tmp_path / 'no-such-layout'}:x"  # an error about it would come later
    outputs = ["-o", "docker-archive:two.tar", "-o", "docker-archive:./two.tar:x:1"]
    code, out, _ = run(capsys, *build_args(cli_setup, base, *outputs, "--json"))
    doc = json.loads(out)
    assert code == 2 and doc["error"] == "image-input", doc
    assert doc["message"].startswith(f"two outputs name one file, {tmp_path / 'two.tar'}: ")
    assert not (tmp_path / "two.tar").exists()


def test_a_bad_source_date_epoch_is_refused_before_the_base_is_read(
    capsys: pytest.CaptureFixture[str],
    cli_setup: Setup,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    base = f"oci:{tmp_path / 'no-such-layout'}:x"  # an error about it would come later
    args = build_args(cli_setup, base, "-o", f"oci:{tmp_path / 'o'}", "--json")
    code, out, _ = run(capsys, *args)
    doc = json.loads(out)
    assert code == 2 and doc["problems"][0]["where"] == "SOURCE_DATE_EPOCH", doc


def test_a_failure_after_an_output_was_written_says_what_was_written(
    capsys: pytest.CaptureFixture[str], cli_setup: Setup, tmp_path: Path, slim_layout: BaseImage
) -> None:
    """Outputs are written before the push: when the push fails, the error says which
    outputs hold the image, and its digest, so a script knows what exists."""
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    first, second = f"oci:{tmp_path / 'a'}:v1", f"docker-archive:{tmp_path / 'b.tar'}"
    args = build_args(cli_setup, slim_layout.ref, "-o", first, "-o", second)
    code, out, _ = run(capsys, *args, "--push", f"{host}/out:1", "--json")
    assert code == 3
    doc = json.loads(out)
    assert doc["error"] == "registry" and doc["registry"] == host
    digest = OciLayout.open(tmp_path / "a").image("v1").descriptor.digest
    written = [p for p in doc["problems"] if p["where"] == "written"]
    assert written == [
        {"where": "written", "message": f"{first} holds the image {digest}"},
        {
            "where": "written",
            "message": f"docker-archive:{tmp_path / 'b.tar'} holds the image {digest}",
        },
    ]
    code, _, err = run(capsys, *args, "--push", f"{host}/out:1")
    assert code == 3
    assert f"  - written: {first} holds the image {digest}" in err.splitlines()


@pytest.mark.parametrize("full_first", [False, True], ids=["second-fails", "first-fails"])
def test_two_outputs_one_on_a_full_disk(
    capsys: pytest.CaptureFixture[str],
    cli_setup: Setup,
    tmp_path: Path,
    slim_layout: BaseImage,
    small_disk: SmallDisk,
    full_first: bool,
) -> None:
    small_disk.fill(leave=64 * 1024)
    good, full = f"oci:{tmp_path / 'good'}:v1", f"docker-archive:{small_disk.path / 'x.tar'}"
    outputs = [full, good] if full_first else [good, full]
    args = build_args(cli_setup, slim_layout.ref, *(a for o in outputs for a in ("-o", o)))
    code, out, _ = run(capsys, *args, "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["hint"] == "free disk space (or write the image elsewhere) and build again"
    written = [p["message"] for p in doc["problems"] if p["where"] == "written"]
    if full_first:
        assert written == [] and not (tmp_path / "good").exists()
    else:
        digest = OciLayout.open(tmp_path / "good").image("v1").descriptor.digest
        assert written == [f"{good} holds the image {digest}"]
    assert not (small_disk.path / "x.tar").exists()


def test_target_option_picks_among_fitting_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_setup: Setup, slim_layout: BaseImage
) -> None:
    lock = write_lock(
        tmp_path / "pylock.toml",
        [cli_setup.wheels[k] for k in ("alpha", "beta")],
        targets=[image_target(), image_target("old", glibc="2.17")],
    )
    args = build_args(cli_setup, slim_layout.ref, "-o", f"oci:{tmp_path / 'out'}", "--json")
    args[args.index("--lock") + 1] = str(lock.path)
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert json.loads(out)["target"]["name"] == PLATFORM  # the higher glibc level wins by default
    code, out, err = run(capsys, *args, "--target", "old")
    assert code == 0, err
    assert json.loads(out)["target"]["name"] == "old"
    code, out, _ = run(capsys, *args, "--target", "nope")
    assert code == 2
    error = json.loads(out)
    assert error["message"] == "the lock has no target 'nope'"
    assert error["hint"] == (
        f"build for one of the lock's targets ({PLATFORM}, old), or leave --target out to "
        "build for the one the base image fits"
    )
    code, _, err = run(capsys, *args[:-1], "--target", "nope")
    assert code == 2
    assert f"hint: build for one of the lock's targets ({PLATFORM}, old)" in err


def test_base_from_docker_save(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    docker_engine: DockerEngine,
    slim_layout: BaseImage,
    slim_sample: tuple[Setup, BuiltImage, str],
) -> None:
    """A base as `docker save` writes it: Docker's own archive, uncompressed layers."""
    setup, built, _ = slim_sample
    name = f"envship-tests/slim-{uuid.uuid4().hex[:10]}:1"
    archive = tmp_path / "in.tar"
    write_docker_archive(
        archive,
        config=slim_layout.config_bytes,
        layers=slim_layout.layers,
        repo_tags=[name],
    )
    docker_engine.docker("load", "-i", str(archive))
    try:
        docker_engine.docker("save", "-o", str(tmp_path / "saved.tar"), name)
    finally:
        docker_engine.docker("rmi", "--no-prune", name, check=False)
    out_dir = tmp_path / "out"
    saved = f"docker-archive:{tmp_path / 'saved.tar'}"
    args = build_args(setup, saved, "-o", f"oci:{out_dir}", "--json")
    code, out, err = run(capsys, *args)
    assert code == 0, out + err
    data = json.loads(out)
    assert data["base"]["python"] == "/usr/bin/python3.11"
    # Docker saved the base layer uncompressed; the environment's layers are the same.
    assert data["layers"][0]["diff_id"] == slim_layout.config.diff_ids[0]
    assert data["layers"][0]["digest"] == data["layers"][0]["diff_id"]  # a plain tar
    assert [layer["digest"] for layer in data["layers"][1:]] == [
        layer.descriptor.digest for layer in built.layers[1:]
    ]
    code, out, err = run(
        capsys,
        "verify",
        "--image",
        f"oci:{out_dir}",
        "--lock",
        str(setup.lock.path),
        "--store",
        str(setup.store.root),
    )
    assert code == 0 and out.startswith("ok: "), out + err


def test_the_time_reported_is_the_whole_commands(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
) -> None:
    """Every layer cached, the base not probed yet: nearly all the command's time goes to
    reading the base and writing the image, which the reported time must include."""
    setup = make_setup(tmp_path)
    build(setup, bookworm_layout, bookworm_facts)  # fills the store's layer cache
    started = time.monotonic()
    code, out, err = run(
        capsys, *build_args(setup, bookworm_layout.ref, "-o", f"oci:{tmp_path / 'out'}", "--json")
    )
    wall = time.monotonic() - started
    assert code == 0, err
    data = json.loads(out)
    assert data["built"] == 0
    assert wall / 2 < data["seconds"] <= wall


def test_build_help_says_what_the_defaults_are() -> None:
    result = CliRunner().invoke(cli, ["image", "build", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "[default: the one the base image fits;" in text
    assert "the one this machine matches" not in text
    assert "Symbolic links in the base are followed, and the environment is built at the" in text
    assert "/opt/ml, /opt/.sagemakerinternal, /var/log/studio and /home/sagemaker-user" in text
    assert "the time reported covers the whole command" in text


# -- inspect -------------------------------------------------------------------------------------


def test_inspect_table_and_json(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sample: tuple[Setup, BuiltImage],
    sample_layout: str,
) -> None:
    setup, built = sample
    store = str(tmp_path / "store")
    code, out, err = run(capsys, "image", "inspect", sample_layout, "--store", store)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{sample_layout}  {built.digest}  linux/")
    assert f"  org.envship.lock-digest={setup.lock.digest}" in lines
    rows = [line for line in lines if line[:3].strip().isdigit()]
    assert len(rows) == len(built.layers)
    assert rows[0].endswith("  -")  # the bookworm base layer holds no Python distribution
    for row, layer in zip(rows, built.layers, strict=True):
        assert layer.descriptor.digest[:19] in row
        assert row.endswith(", ".join(layer.distributions) or "-")
    assert "envship image build: marker and kernelspec" in out

    code, out, err = run(capsys, "image", "inspect", sample_layout, "--store", store, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["digest"] == built.digest and data["name"] == sample_layout
    # Each layer's keys that image build's --json gives have its values here too.
    shared = ("digest", "size", "diff_id", "label", "distributions")
    assert [{k: layer[k] for k in shared} for layer in data["layers"]] == [
        {k: layer.to_json()[k] for k in shared} for layer in built.layers
    ]
    assert data["labels"]["org.envship.target"] == PLATFORM


# -- verify --image ------------------------------------------------------------------------------


def test_verify_image(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    slim_sample: tuple[Setup, BuiltImage, str],
) -> None:
    setup, _, ref = slim_sample
    common = ["--lock", str(setup.lock.path), "--store", str(tmp_path / "store")]
    code, out, err = run(capsys, "verify", "--image", ref, *common)
    assert code == 0, err
    assert out.startswith(
        f"ok: {ref}:/opt/envship/venv vs {setup.lock.path} (target {PLATFORM}): 3 distributions"
    )
    assert "hashed; identical" in out

    changed = append_layer(
        OciLayout.open(Path(ref.split(":")[1])).image("slim"), tmp_path / "changed", tamper
    )
    code, out, err = run(capsys, "verify", "--image", changed, *common)
    assert code == 1
    assert "changed files (1):" in out and "removed files (1):" in out and "added files" in out
    assert f"  alpha  /{VENV_SITE}/alpha/__init__.py" in out
    code, out, err = run(capsys, "verify", "--image", changed, *common, "--json")
    assert code == 1
    data = json.loads(out)
    assert data["identical"] is False and data["env"] == f"{changed}:/opt/envship/venv"
    assert sorted(d["kind"] for d in data["differences"]) == ["added", "changed", "removed"]

    code, _, err = run(capsys, "verify", "--image", ref, "somewhere", *common)
    assert code == 2 and "--image takes no ENV or --target" in err


# -- a registry with auth ------------------------------------------------------------------------


def docker_config(folder: Path, host: str, user: str, password: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    auths = (
        {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}} if user else {}
    )
    (folder / "config.json").write_text(json.dumps({"auths": auths}))
    return folder


def test_base_and_push_with_auth_from_docker_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cli_setup: Setup,
    auth_registry: Registry,
    bookworm_layout: BaseImage,
    sample: tuple[Setup, BuiltImage],
) -> None:
    assert auth_registry.username and auth_registry.password
    host = auth_registry.host
    good = docker_config(tmp_path / "good", host, auth_registry.username, auth_registry.password)
    base_repo = repo()
    base_ref = f"{host}/{base_repo}:1"
    push_base(RegistryClient(host, docker_config=good), base_ref, bookworm_layout)
    monkeypatch.setenv("DOCKER_CONFIG", str(good))
    out_ref = f"{host}/{repo()}:1"
    args = build_args(cli_setup, base_ref, "--push", out_ref, "--json")
    code, out, err = run(capsys, *args)
    assert code == 0, out + err
    data = json.loads(out)
    assert data["digest"] == sample[1].digest  # the same image, from a registry base
    # Same registry: the base layer is mounted from the base's repository, not re-sent.
    assert data["push"]["blobs_mounted"] == 1
    assert data["push"]["bytes_uploaded"] < bookworm_layout.manifest.layers[0].size // 100

    for name, config in [
        (
            "wrong",
            docker_config(tmp_path / "wrong", host, auth_registry.username, "not-the-password"),
        ),
        ("none", docker_config(tmp_path / "none", host, "", "")),
    ]:
        monkeypatch.setenv("DOCKER_CONFIG", str(config))
        fresh = tmp_path / f"store-{name}"
        code, out, err = run(
            capsys, *build_args(cli_setup, base_ref, "-o", f"oci:{tmp_path / 'out'}", store=fresh)
        )
        assert code == 3, (name, err)
        assert err.startswith("error: ") and host in err
        assert f"hint: log in with `docker login {host}`" in err
        assert not (tmp_path / "out").exists()
        code, out, err = run(
            capsys, *build_args(cli_setup, base_ref, "--push", out_ref, "--json", store=fresh)
        )
        assert code == 3 and err == ""
        error = json.loads(out)
        assert error["error"] == "registry-auth" and error["registry"] == host
        for text in (out, err):
            assert auth_registry.password not in text and "not-the-password" not in text


def test_push_to_a_token_registry_then_verify_from_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cli_setup: Setup,
    slim_layout: BaseImage,
    token_registry: tuple[Registry, TokenServer],
) -> None:
    """The bearer-token flow: config.json's password buys a token for each scope."""
    registry, tokens = token_registry
    assert registry.username and registry.password
    host = registry.host
    monkeypatch.setenv(
        "DOCKER_CONFIG",
        str(docker_config(tmp_path / "cfg", host, registry.username, registry.password)),
    )
    ref = f"{host}/{repo()}:1"
    code, out, err = run(capsys, *build_args(cli_setup, slim_layout.ref, "--push", ref, "--json"))
    assert code == 0, out + err
    pushed = json.loads(out)
    assert pushed["push"]["digest"] == pushed["digest"]
    assert any(user == registry.username for _, user, _ in tokens.log)

    # verify --image pulls the image by its reference (into a fresh store) and reads it.
    store = tmp_path / "verify-store"
    args = ["verify", "--image", ref, "--lock", str(cli_setup.lock.path), "--store", str(store)]
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["identical"] is True and report["env"] == f"{ref}:/opt/envship/venv"
    layout = OciLayout.open(store / "oci")
    assert layout.has_blob(pushed["digest"])


# -- bad input -----------------------------------------------------------------------------------


def test_unreachable_registry_for_base_and_push(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_setup: Setup, slim_layout: BaseImage
) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err = run(
        capsys, *build_args(cli_setup, f"{host}/base:1", "-o", f"oci:{tmp_path / 'a'}")
    )
    assert code == 3 and host in err and "refused" in err.lower()
    assert not (tmp_path / "a").exists()
    code, out, err = run(
        capsys, *build_args(cli_setup, slim_layout.ref, "--push", f"{host}/out:1", "--json")
    )
    assert code == 3
    error = json.loads(out)
    assert error["error"] == "registry" and error["registry"] == host and error["status"] is None


def test_tampered_registry_base_is_an_integrity_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cli_setup: Setup,
    registry: Registry,
) -> None:
    ref = f"{registry.host}/{repo()}:1"
    image = unique_image(tmp_path / "unique")
    push_base(RegistryClient(registry.host), ref, image)
    layer = image.manifest.layers[0]
    stored = registry.blob_file(layer.digest)
    raw = bytearray(stored.read_bytes())
    raw[100] ^= 0xFF
    stored.write_bytes(bytes(raw))
    store = tmp_path / "store"
    code, out, _ = run(
        capsys, *build_args(cli_setup, ref, "-o", f"oci:{tmp_path / 'out'}", "--json", store=store)
    )
    assert code == 4
    error = json.loads(out)
    assert error["error"] == "integrity" and error["expected"] == layer.digest
    assert not (tmp_path / "out").exists()
    assert not (store / "oci" / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")).exists()


def test_malicious_base_layer_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_setup: Setup
) -> None:
    ref = evil_image(tmp_path / "evil", "../../escaped")
    out_dir, archive = tmp_path / "out", tmp_path / "out.tar"
    code, _, err = run(
        capsys,
        *build_args(cli_setup, ref, "-o", f"oci:{out_dir}", "-o", f"docker-archive:{archive}"),
    )
    assert code == 4
    assert "is unsafe: entry '../../escaped' has a '..' component" in err
    assert not out_dir.exists() and not archive.exists()
    assert not (tmp_path.parent / "escaped").exists()


def test_bases_that_do_not_fit_are_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cli_setup: Setup,
    slim_layout: BaseImage,
    no_python_layout: BaseImage,
) -> None:
    code, _, err = run(
        capsys, *build_args(cli_setup, no_python_layout.ref, "-o", f"oci:{tmp_path / 'a'}")
    )
    assert (
        code == 2
        and f"error: the base image {no_python_layout.ref} has no Python 3 interpreter" in err
    )
    assert "hint: use a base image with CPython" in err

    py312 = write_lock(
        tmp_path / "pylock.toml",
        [cli_setup.wheels[k] for k in ("alpha", "beta")],
        targets=[
            image_target(python="3.12"),
            image_target("arm", platform="linux-aarch64", python="3.12"),
        ],
    )
    args = build_args(cli_setup, slim_layout.ref, "-o", f"oci:{tmp_path / 'b'}")
    args[args.index("--lock") + 1] = str(py312.path)
    code, _, err = run(capsys, *args)
    assert code == 2
    assert (
        f"error: the base image {slim_layout.ref} (linux-" in err
        and "is none of the lock's targets" in err
    )
    # The facts are the base image's, and the reasons say so (not "interpreter", "host").
    assert f"  - {PLATFORM}: Python 3.12 needed, the base image has 3.11" in err
    assert "  - arm: Python 3.12 needed, the base image has 3.11" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_store_missing_an_artifact_says_how_to_fetch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_setup: Setup, slim_layout: BaseImage
) -> None:
    store = tmp_path / "empty-store"
    code, _, err = run(
        capsys,
        *build_args(cli_setup, slim_layout.ref, "-o", f"oci:{tmp_path / 'out'}", store=store),
    )
    assert code == 1
    assert f"error: 3 of 3 locked artifacts are not in the store {store}" in err
    fetch = f"envship fetch --lock {cli_setup.lock.path} --target {PLATFORM} --store {store}"
    assert f"fetch them: {fetch}" in err
    assert not (tmp_path / "out").exists()


def test_invalid_source_date_epoch(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cli_setup: Setup,
    slim_layout: BaseImage,
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "last tuesday")
    code, _, err = run(
        capsys, *build_args(cli_setup, slim_layout.ref, "-o", f"oci:{tmp_path / 'out'}")
    )
    assert (  # bad input (image.py's ImageInputError), exit 2
        code == 2
        and "SOURCE_DATE_EPOCH must be a whole number of seconds, not 'last tuesday'" in err
    )
    assert not (tmp_path / "out").exists()


def test_jobs_has_the_short_option_fetch_has(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, slim_layout: BaseImage
) -> None:
    """`fetch -j N` and `image build -j N` alike (it was "No such option '-j'")."""
    setup = make_setup(tmp_path / "setup")
    out = f"oci:{tmp_path / 'out'}:jobs"
    code, _, err = run(capsys, *build_args(setup, slim_layout.ref, "-j", "1", "-o", out))
    assert code == 0, err
    assert "No such option" not in err and (tmp_path / "out" / "index.json").is_file()
    result = CliRunner().invoke(cli, ["image", "build", "--help"], terminal_width=200)
    assert "-j, --jobs INTEGER RANGE" in result.output

"""``envship.imageio``: images read from and written to OCI layouts, docker-archives and a
real registry (Debian's docker-registry on 127.0.0.1), pulled and run by the real Docker
engine."""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import json
import os
import pickle
import re
import signal
import sys
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pytest

from disklib import SmallDisk
from envship._http import RetryPolicy
from envship.cli.main import main
from envship.errors import (
    ArtifactError,
    ImageError,
    ImageInputError,
    RegistryAuthError,
    RegistryError,
    UnsafeLayerError,
)
from envship.image import BuiltImage
from envship.imagebase import BaseFacts, probe_image
from envship.imageio import (
    ImageSource,
    PushResult,
    check_output,
    mirrored,
    open_image,
    parse_push_ref,
    push_image,
    verified_cache,
    write_image,
)
from envship.layer import LayerWriter
from envship.oci import (
    OCI_CONFIG,
    OCI_MANIFEST,
    ImageConfig,
    ImageManifest,
    Reference,
    sha256_digest,
)
from envship.ocilayout import OciLayout, default_platform
from envship.registry import RegistryClient
from envship.store import Store
from imagelib import BaseImage, make_image
from registrylib import Registry, free_port
from serviceslib import DockerEngine
from test_image import (
    Setup,
    _no_source_date_epoch,
    big_wheel,
    bookworm_facts,
    build,
    docker_run,
    env_layers,
    image_target,
    make_setup,
    sample,
    slim_layout,
    slim_sample,
)
from test_install import build_wheels, write_lock
from test_swap import RENAME, traced

# Fixtures, shared with test_image.
__all__ = ["_no_source_date_epoch", "bookworm_facts", "sample", "slim_layout", "slim_sample"]

FAST = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.01)


def repo() -> str:
    return f"envship-tests/{uuid.uuid4().hex[:12]}"


def client(host: str, **kwargs: object) -> RegistryClient:
    kwargs.setdefault("retry", FAST)
    return RegistryClient(host, **kwargs)  # type: ignore[arg-type]


def push(
    built: BuiltImage, registry: Registry, repository: str, tag: str, **kw: object
) -> PushResult:
    ref = Reference.parse(f"{registry.host}/{repository}:{tag}")
    return push_image(built, ref, client(registry.host), **kw)  # type: ignore[arg-type]


def push_base(c: RegistryClient, ref: str, base: BaseImage) -> str:
    """Push an image of a layout (config, layers, manifest) the way any tool would."""
    parsed = Reference.parse(ref)

    def opener(path: Path) -> Callable[[], BinaryIO]:
        return lambda: path.open("rb")

    for descriptor in (base.manifest.config, *base.manifest.layers):
        c.push_blob(parsed.repository, descriptor, opener(base.layout.blob_path(descriptor.digest)))
    data = base.layout.get_blob(base.descriptor)
    return c.put_manifest(parsed.repository, parsed.identifier, OCI_MANIFEST, data)


def factory(made: list[RegistryClient], **kwargs: object) -> Callable[[str], RegistryClient]:
    def make(registry: str) -> RegistryClient:
        made.append(client(registry, **kwargs))
        return made[-1]

    return make


# -- reading -----------------------------------------------------------------------------------


def test_open_oci_layout_by_tag(tmp_path: Path, bookworm_layout: BaseImage) -> None:
    store = Store(tmp_path / "store")
    source = open_image(bookworm_layout.ref, store)
    assert source.image.descriptor.digest == bookworm_layout.descriptor.digest
    assert source.image.layer_paths == bookworm_layout.layers
    assert source.reference is None
    with pytest.raises(ImageInputError, match="no image tagged 'nope'") as caught:
        open_image(f"oci:{bookworm_layout.layout.root}:nope", store)
    assert caught.value.hint == "tags there: bookworm"


def two_images(folder: Path) -> str:
    """A layout holding two tagged images: its ``oci:DIR`` reference, with no tag."""
    make_image(folder, lambda w: w.add_file("etc/one", b"1"), tag="one")
    make_image(folder, lambda w: w.add_file("etc/two", b"2"), tag="two")
    return f"oci:{folder}"


BAD_INPUT: list[tuple[str, Callable[[Path], str], str]] = [
    ("no layout", lambda tmp: f"oci:{tmp / 'nonexistent'}:foo", "is not an OCI image layout"),
    ("no tag", lambda tmp: f"{two_images(tmp / 'l')}:nosuchtag", "no image tagged 'nosuchtag'"),
    ("no archive", lambda tmp: f"docker-archive:{tmp / 'none.tar'}", "no docker-archive at"),
    ("uppercase", lambda tmp: "Foo/Bar:1", "invalid repository 'Foo/Bar'"),
    ("bad tag", lambda tmp: "foo/bar:-1", "invalid tag '-1'"),
    ("several images", lambda tmp: two_images(tmp / "l"), "holds 2 images; say which one"),
    ("archive name", lambda tmp: f"docker-archive:{tmp}/x.tar:BadName:1", "'BadName'"),
]


@pytest.mark.parametrize(
    ("make", "message"), [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT]
)
def test_bad_input_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], str], message: str
) -> None:
    text = make(tmp_path)
    with pytest.raises(ImageInputError, match=re.escape(message)) as caught:
        open_image(text, Store(tmp_path / "store"))
    assert caught.value.exit_code == 2
    # The command line says the same, with no traceback.
    code = main(["image", "inspect", text, "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {caught.value.message}" in err and "Traceback" not in err


def test_docker_archive_round_trip(tmp_path: Path, sample: tuple[Setup, BuiltImage]) -> None:
    built = sample[1]
    written = write_image(built, f"docker-archive:{tmp_path / 'img.tar'}:team/ds:1")
    assert written == f"docker-archive:{tmp_path / 'img.tar'}:team/ds:1"
    with tarfile.open(tmp_path / "img.tar") as tar:
        docker_manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert docker_manifest[0]["RepoTags"] == ["team/ds:1"]
    # One image, one digest: the archive holds the manifest the build reports.
    assert [m["digest"] for m in index["manifests"]] == [built.digest]
    store = Store(tmp_path / "store")
    source = open_image(written.rsplit(":", 2)[0], store)
    assert source.image.descriptor.digest == built.digest
    assert source.image.manifest == built.manifest
    assert source.image.config.to_bytes() == built.config_bytes
    assert [d.digest for d in source.image.manifest.layers] == [
        layer.descriptor.digest for layer in built.layers
    ]
    # The layers now live, verified, in the store's layout.
    layout = OciLayout.open(store.root / "oci")
    for descriptor in source.image.manifest.layers:
        assert layout.verify_blob(descriptor) in source.image.layer_paths


def test_unknown_output_is_refused(sample: tuple[Setup, BuiltImage], tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="unknown output 'docker://x'") as caught:
        write_image(sample[1], "docker://x")
    assert caught.value.hint and "--push REF" in caught.value.hint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("docker://x", "unknown output"),
        ("oci:", "invalid OCI layout reference"),
        ("docker-archive:y.tar:BadName:1", "invalid docker-archive name 'BadName:1'"),
        ("docker-archive:y.tar:ds@sha256:" + "a" * 64, "not by digest"),
        ("docker-archive:", "invalid docker-archive reference"),
    ],
)
def test_outputs_are_checked_before_anything_is_built(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ImageInputError, match=re.escape(message)) as caught:
        check_output(text)
    assert caught.value.exit_code == 2


def new_place(folder: Path) -> Path:
    return folder / "new" / "deeper" / "out"


def empty_folder(folder: Path) -> Path:
    (folder / "empty").mkdir()
    return folder / "empty"


def existing_layout(folder: Path) -> Path:
    out = folder / "layout"
    OciLayout.open(out, create=True)
    return out


def a_folder(folder: Path) -> Path:
    (folder / "dir").mkdir()
    return folder / "dir"


def a_file(folder: Path) -> Path:
    (folder / "file").write_text("x")
    return folder / "file"


def a_folder_with_files(folder: Path) -> Path:
    (folder / "full").mkdir()
    (folder / "full" / "notes.txt").write_text("mine")
    return folder / "full"


def below_a_file(folder: Path) -> Path:
    return a_file(folder) / "x"


BELOW_A_FOLDER = "name a path below a folder (a file cannot hold other files)"


@pytest.mark.parametrize(
    ("kind", "make", "problem", "hint"),
    [
        ("docker-archive", a_folder, "it is a folder; a docker-archive is one file", "e.g."),
        ("docker-archive", below_a_file, "/file is a file, not a folder", BELOW_A_FOLDER),
        ("oci", a_file, "it exists and is not a folder", "name a new or empty folder"),
        (
            "oci",
            a_folder_with_files,
            "it is a folder that is neither empty nor an OCI layout",
            "name a new or empty folder",
        ),
        ("oci", below_a_file, "/file is a file, not a folder", BELOW_A_FOLDER),
    ],
    ids=[
        "archive-at-a-folder",
        "archive-below-a-file",
        "layout-at-a-file",
        "layout-in-a-folder-with-files",
        "layout-below-a-file",
    ],
)
def test_outputs_whose_place_is_taken_are_bad_input(
    tmp_path: Path, kind: str, make: Callable[[Path], Path], problem: str, hint: str
) -> None:
    where = make(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ImageInputError) as caught:
        check_output(f"{kind}:{where}")
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(f"cannot write the image to {where}: ")
    assert problem in caught.value.message
    assert caught.value.hint is not None and hint in caught.value.hint
    assert "/file/x/image.tar" not in caught.value.hint  # not "a file below the file"
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("make", [empty_folder, existing_layout, new_place])
def test_outputs_that_can_be_written_pass(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    check_output(f"oci:{make(tmp_path)}:x")
    check_output(f"docker-archive:{tmp_path / 'new' / 'x.tar'}")


# -- an archive replaces the file at its path: never the lock, the base, or a non-tar -------


def the_lock(folder: Path) -> tuple[Path, dict[str, object]]:
    lock = folder / "pylock.toml"
    lock.write_text('lock-version = "1.0"\n')
    return lock, {"lock": lock}


def a_link_to_the_lock(folder: Path) -> tuple[Path, dict[str, object]]:
    lock, _ = the_lock(folder)
    (folder / "out.tar").symlink_to(lock)
    return folder / "out.tar", {"lock": lock}


def a_hard_link_to_the_lock(folder: Path) -> tuple[Path, dict[str, object]]:
    lock, _ = the_lock(folder)
    os.link(lock, folder / "out.tar")
    return folder / "out.tar", {"lock": lock}


def an_archive(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("manifest.json"), io.BytesIO(b""))
    return path


def the_base_archive(folder: Path) -> tuple[Path, dict[str, object]]:
    base = an_archive(folder / "base.tar")
    return base, {"base": f"docker-archive:{base}:base:1"}


def a_text_file(folder: Path) -> tuple[Path, dict[str, object]]:
    (folder / "notes.txt").write_text("my notes\n" * 100)
    return folder / "notes.txt", {}


def a_spec(folder: Path) -> tuple[Path, dict[str, object]]:
    (folder / "envship.toml").write_text('name = "ds"\n')  # shorter than a tar header
    return folder / "envship.toml", {}


def a_gzip_file(folder: Path) -> tuple[Path, dict[str, object]]:
    (folder / "x.tar.gz").write_bytes(gzip.compress(b"x" * 4096))
    return folder / "x.tar.gz", {}


def dev_null(folder: Path) -> tuple[Path, dict[str, object]]:
    return Path("/dev/null"), {}


NOT_TAR = "it is a file that is not a tar archive, which the image would replace"
NO_FORCE = "remove it first (image build has no --force), or write the image to another file"


@pytest.mark.parametrize(
    ("make", "problem", "hint"),
    [
        (the_lock, "it is the lock this build reads", "write the image to a file of its own"),
        (a_link_to_the_lock, "it is the lock this build reads", "a file of its own"),
        (a_hard_link_to_the_lock, "it is the lock this build reads", "a file of its own"),
        (the_base_archive, "it is the base image's archive, which this build reads", "own"),
        (a_text_file, NOT_TAR, NO_FORCE),
        (a_spec, NOT_TAR, NO_FORCE),
        (a_gzip_file, NOT_TAR, NO_FORCE),
        (dev_null, "it is not a regular file", "write the image to a regular file"),
    ],
)
def test_an_archive_never_replaces_what_the_build_reads_or_a_non_tar_file(
    tmp_path: Path,
    make: Callable[[Path], tuple[Path, dict[str, object]]],
    problem: str,
    hint: str,
) -> None:
    where, reads = make(tmp_path)
    lock = reads.get("lock")
    base = reads.get("base")
    assert lock is None or isinstance(lock, Path)
    assert base is None or isinstance(base, str)
    before = where.read_bytes() if where.is_file() else None
    with pytest.raises(ImageInputError) as caught:
        check_output(f"docker-archive:{where}:ds:1", lock=lock, base=base)
    assert caught.value.exit_code == 2
    assert caught.value.message == f"cannot write the image to {where}: {problem}"
    assert caught.value.hint is not None and hint in caught.value.hint
    if before is not None:
        assert where.read_bytes() == before


def test_an_archive_may_replace_an_earlier_archive_or_an_empty_file(tmp_path: Path) -> None:
    lock, _ = the_lock(tmp_path)
    base, _ = the_base_archive(tmp_path)
    reads = {"lock": lock, "base": f"docker-archive:{base}"}
    (tmp_path / "empty.tar").touch()
    for free in (an_archive(tmp_path / "old.tar"), tmp_path / "empty.tar", tmp_path / "new.tar"):
        check_output(f"docker-archive:{free}", lock=lock, base=str(reads["base"]))
    # The base check reads an archive only: an OCI layout base names no file.
    check_output(f"docker-archive:{an_archive(tmp_path / 'o.tar')}", base=f"oci:{tmp_path}")


def test_the_cli_refuses_to_write_an_archive_over_its_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / "dl" / "pylock.toml"
    lock.parent.mkdir()
    lock.write_text('lock-version = "1.0"\ncreated-by = "envship"\n')
    before = lock.read_bytes()
    args = ["image", "build", "--lock", str(lock), "--store", str(tmp_path / "store")]
    args += ["--base", f"oci:{tmp_path / 'none'}", "-o", f"docker-archive:{lock}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write the image to {lock}: " in err
    assert lock.read_bytes() == before


# -- ENVSHIP_REGISTRY_MIRROR is checked before any request --------------------------------


@pytest.mark.parametrize(
    "value",
    [
        *("not a host", "mirror.example/path", "host:port", "http://a b", "-mirror.example"),
        *("a_b", "127.0.0.1:99999", "127.0.0.1:0"),  # ports that cannot be
    ],
)
def test_a_malformed_registry_mirror_is_bad_input_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ENVSHIP_REGISTRY_MIRROR", value)
    made: list[RegistryClient] = []
    with pytest.raises(ImageInputError) as caught:
        open_image("python:3.11", Store(tmp_path / "store"), client=factory(made))
    assert caught.value.exit_code == 2
    assert caught.value.message == f"ENVSHIP_REGISTRY_MIRROR={value!r} is not a registry host"
    assert [p.where for p in caught.value.problems] == ["ENVSHIP_REGISTRY_MIRROR"]
    assert made == []  # no client, so no request


@pytest.mark.parametrize(
    "value", ["127.0.0.1:5999", "mirror.example", "https://mirror.example", "[::1]:5000"]
)
def test_a_registry_mirror_names_a_host(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ENVSHIP_REGISTRY_MIRROR", value + "/")
    assert mirrored(Reference.parse("python:3.11")).registry == value


def test_a_full_disk_while_writing_a_layout_leaves_none_and_says_so(
    small_disk: SmallDisk, sample: tuple[Setup, BuiltImage]
) -> None:
    """A real 4 MiB disk (the sample's base layer alone is larger): the hint is the
    full disk's, and the new layout goes away, handing its space back."""
    before = small_disk.used()
    out = small_disk.path / "out"
    with pytest.raises(ImageError) as caught:
        write_image(sample[1], f"oci:{out}:v1")
    assert caught.value.message == f"cannot write the image to {out}: No space left on device"
    assert caught.value.hint == "free disk space (or write the image elsewhere) and build again"
    assert not out.exists()
    assert small_disk.used() <= before

    # An existing layout is left as it was: its index names what it named.
    kept = existing_layout(small_disk.path)
    index = (kept / "index.json").read_bytes()
    with pytest.raises(ImageError, match="No space left on device"):
        write_image(sample[1], f"oci:{kept}:v1")
    assert (kept / "index.json").read_bytes() == index

    archive = small_disk.path / "x.tar"
    with pytest.raises(ImageError) as caught:
        write_image(sample[1], f"docker-archive:{archive}")
    assert caught.value.message == f"cannot write the image to {archive}: No space left on device"
    assert caught.value.hint == "free disk space (or write the image elsewhere) and build again"
    assert sorted(p.name for p in small_disk.path.iterdir()) == ["layout"]


def pages(size: int) -> int:
    """What a file of ``size`` bytes takes on a tmpfs: whole pages."""
    return -(-size // 4096) * 4096


def test_a_full_disk_while_adding_to_a_layout_keeps_no_orphan_blobs(
    small_disk: SmallDisk, slim_sample: tuple[Setup, BuiltImage, str]
) -> None:
    """Room for every layer but the last: the ones copied before the disk filled are
    removed again (no manifest names them), so freeing the space the error asks for
    is enough."""
    built = slim_sample[1]
    small_disk.resize(64 * 1024 * 1024)
    kept = existing_layout(small_disk.path)
    index = (kept / "index.json").read_bytes()
    need = sum(pages(layer.descriptor.size) for layer in built.layers)
    assert len(built.layers) > 1
    filler = small_disk.fill(leave=need - 4096)  # the base layer fits, not all of them
    before = small_disk.used()
    with pytest.raises(ImageError, match="No space left on device") as caught:
        write_image(built, f"oci:{kept}:v1")
    assert caught.value.hint == "free disk space (or write the image elsewhere) and build again"
    assert (kept / "index.json").read_bytes() == index
    assert sorted(p.name for p in (kept / "blobs" / "sha256").iterdir()) == []
    assert small_disk.used() <= before
    filler.unlink()  # as the hint says; then the same write succeeds
    assert write_image(built, f"oci:{kept}:v1") == f"oci:{kept}:v1"
    assert OciLayout.open(kept).image("v1").descriptor.digest == built.digest


WRITER = """
import pickle, sys
from pathlib import Path
from envship.imageio import write_image
print(write_image(pickle.loads(Path(sys.argv[1]).read_bytes()), sys.argv[2]))
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new-layout", "existing-layout"])
def test_a_killed_layout_write_leaves_no_half_image_and_the_next_write_sweeps_up(
    tmp_path: Path,
    small_disk: SmallDisk,
    slim_sample: tuple[Setup, BuiltImage, str],
    existing: bool,
) -> None:
    """A write SIGKILLed (by strace) as it enters each of its renames in turn, onto
    another file system than the store, where every blob is copied: a new layout is
    there whole or not at all, an existing one's index names what it named; what the
    dead writers left (a staging folder beside the layout, partial blobs in it) is
    removed by the next write, which succeeds."""
    built = slim_sample[1]
    small_disk.resize(64 * 1024 * 1024)
    pickled = tmp_path / "built.pickle"
    pickled.write_bytes(pickle.dumps(built))
    out = small_disk.path / "out"
    index = (existing_layout(small_disk.path) / "index.json").read_bytes() if existing else b""
    if existing:
        (small_disk.path / "layout").rename(out)
    argv = [sys.executable, "-c", WRITER, str(pickled), f"oci:{out}:v1"]
    left: list[str] = []

    def leftovers() -> list[str]:
        beside = [p.name for p in small_disk.path.iterdir() if p.name != "out"]
        blobs = out / "blobs" / "sha256"
        partial = (
            [p.name for p in blobs.iterdir() if p.name.endswith(".partial")] if existing else []
        )
        return beside + partial

    for n in itertools.count(1):
        proc = traced(argv, kill_before=(RENAME, n))
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0, proc.stderr
            break
        if existing:
            assert (out / "index.json").read_bytes() == index, f"killed at rename #{n}"
        else:
            assert not out.exists(), f"killed at rename #{n}"
        left += leftovers()
    assert n > 3 and left  # killed in the middle, and something was left to clear
    assert leftovers() == []
    layout = OciLayout.open(out)
    assert layout.tags() == ["v1"]
    assert layout.image("v1").descriptor.digest == built.digest


def test_archive_names_are_checked_and_default_to_latest(
    tmp_path: Path, sample: tuple[Setup, BuiltImage]
) -> None:
    built = sample[1]
    with pytest.raises(ImageInputError, match="'BadName'"):
        write_image(built, f"docker-archive:{tmp_path / 'bad.tar'}:BadName:1")
    assert not (tmp_path / "bad.tar").exists()
    written = write_image(built, f"docker-archive:{tmp_path / 'x.tar'}:ds")
    assert written == f"docker-archive:{tmp_path / 'x.tar'}:ds:latest"
    with tarfile.open(tmp_path / "x.tar") as tar:
        docker_manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert docker_manifest[0]["RepoTags"] == ["ds:latest"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("registry.example/team/ds@sha256:" + "a" * 64, "names a tag, not a digest"),
        ("registry.example/team/ds:1@sha256:" + "a" * 64, "names a tag, not a digest"),
        ("registry.example/Team/ds:1", "invalid repository 'Team/ds'"),
    ],
)
def test_push_references_name_a_tag(text: str, message: str) -> None:
    with pytest.raises(ImageInputError, match=re.escape(message)) as caught:
        parse_push_ref(text)
    assert caught.value.exit_code == 2
    assert parse_push_ref("registry.example/team/ds:1").tag == "1"


# -- a real registry -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed_sample(sample: tuple[Setup, BuiltImage], registry: Registry) -> tuple[str, PushResult]:
    """The sample image pushed to the open registry: (reference, result)."""
    repository = repo()
    result = push(sample[1], registry, repository, "1")
    return f"{registry.host}/{repository}:1", result


def test_push_uploads_every_blob_then_pull_gets_the_same_image(
    tmp_path: Path,
    sample: tuple[Setup, BuiltImage],
    pushed_sample: tuple[str, PushResult],
) -> None:
    built = sample[1]
    ref, result = pushed_sample
    assert result.digest == built.digest
    assert result.reference == ref
    assert result.stats.blobs_uploaded == len(built.layers) + 1  # and the config
    assert result.stats.bytes_uploaded == sum(
        layer.descriptor.size for layer in built.layers
    ) + len(built.config_bytes)
    assert result.stats.manifests_pushed == 1

    made: list[RegistryClient] = []
    store = Store(tmp_path / "store")
    source = open_image(ref, store, client=factory(made))
    assert source.reference == Reference.parse(ref)
    assert source.image.descriptor.digest == built.digest
    assert source.image.config.to_bytes() == built.config_bytes
    assert made[0].stats().blobs_fetched == len(built.layers) + 1
    # Pulling again into the same store fetches only the manifest.
    again = open_image(ref, store, client=factory(made))
    assert again.image.descriptor.digest == built.digest
    assert made[1].stats().blobs_fetched == 0


def test_docker_pulls_the_pushed_image_and_runs_it(
    docker_engine: DockerEngine, pushed_sample: tuple[str, PushResult]
) -> None:
    ref, result = pushed_sample
    # dockerd shares the host's network namespace; 127.0.0.0/8 is an insecure registry
    # for Docker by default, so it pulls over plain HTTP.
    docker_engine.docker("pull", ref)
    try:
        digests = json.loads(docker_engine.docker("image", "inspect", ref).stdout)[0]["RepoDigests"]
        assert f"{ref.rsplit(':', 1)[0]}@{result.digest}" in digests
        assert docker_run(docker_engine, ref, "tool") == "tool ran\n"
        assert (
            docker_run(docker_engine, ref, "python", "-c", "import alpha; print(alpha.__version__)")
            == "1.0\n"
        )
    finally:
        docker_engine.docker("rmi", "--no-prune", ref, check=False)


def test_one_package_change_pushes_one_small_layer(
    tmp_path: Path,
    registry: Registry,
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
) -> None:
    """The issue's incremental test: beta 1.0 -> 1.1 next to a 4 MiB distribution."""
    wheels = build_wheels(tmp_path / "dist")
    wheels["big"] = big_wheel(tmp_path / "dist", "big", "1.0", 4 << 20)
    setup = make_setup(tmp_path, ["alpha", "beta", "tool", "big"], wheels=wheels)
    first, _ = build(setup, bookworm_layout, bookworm_facts)
    repository = repo()
    push(first, registry, repository, "1")

    bumped = write_lock(
        tmp_path / "pylock.toml",
        [wheels[k] for k in ("alpha", "beta11", "tool", "big")],
        targets=[image_target()],
    )
    second, events = build(Setup(bumped, setup.store, wheels), bookworm_layout, bookworm_facts)
    result = push(second, registry, repository, "2")

    old = {layer.descriptor.digest for layer in first.layers}
    new = [layer for layer in second.layers if layer.descriptor.digest not in old]
    assert sorted(layer.label for layer in new) == sorted(
        [next(x.label for x in new if "beta==1.1" in x.distributions), "marker and kernelspec"]
    )
    assert [e.label for e in events if e.state == "built"] == [layer.label for layer in new]
    stats = result.stats
    assert stats.blobs_uploaded == len(new) + 1  # the changed layers and the config
    assert stats.blobs_existing == len(second.layers) - len(new)
    uploaded = sum(layer.descriptor.size for layer in new) + len(second.config_bytes)
    assert stats.bytes_uploaded == uploaded
    environment = sum(layer.descriptor.size for layer in env_layers(second))
    assert environment > 3 << 20
    assert stats.bytes_uploaded <= environment // 10
    # The registry serves the new tag whole.
    assert client(registry.host).get_manifest(repository, "2")[0].digest == second.digest


def test_push_mounts_the_base_from_its_repository(
    registry: Registry, bookworm_layout: BaseImage, sample: tuple[Setup, BuiltImage]
) -> None:
    base_repo, target = repo(), repo()
    push_base(client(registry.host), f"{registry.host}/{base_repo}:1", bookworm_layout)
    result = push(sample[1], registry, target, "1", mount_from=base_repo)
    assert result.stats.blobs_mounted == 1  # the 137 MB base layer moved no bytes
    base_size = bookworm_layout.manifest.layers[0].size
    assert result.stats.bytes_uploaded < base_size // 100


# -- a registry with htpasswd auth, credentials from Docker's config.json ------------------------


def docker_config(folder: Path, registry: Registry, password: str) -> Path:
    auth = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    return folder


def test_base_from_an_auth_registry(
    tmp_path: Path, auth_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(test_cli_image builds on bookworm pulled from this registry; here, the client.)"""
    assert auth_registry.password
    good = docker_config(tmp_path / "good", auth_registry, auth_registry.password)
    ref = f"{auth_registry.host}/{repo()}:1"
    base = unique_image(tmp_path / "base")
    push_base(client(auth_registry.host, docker_config=good), ref, base)

    monkeypatch.setenv("DOCKER_CONFIG", str(good))  # as `docker login` leaves it
    store = Store(tmp_path / "store")
    made: list[RegistryClient] = []
    source = open_image(ref, store, client=factory(made))
    assert source.image.descriptor.digest == base.descriptor.digest
    assert made[0].stats().blobs_fetched == 2  # the config and the layer, each verified
    assert source.image.layer_paths[0].read_bytes() == base.layers[0].read_bytes()

    wrong = docker_config(tmp_path / "wrong", auth_registry, "not-the-password")
    monkeypatch.setenv("DOCKER_CONFIG", str(wrong))
    with pytest.raises(RegistryAuthError) as caught:
        open_image(ref, Store(tmp_path / "other-store"), client=factory(made))
    error = caught.value
    assert error.registry == auth_registry.host and error.exit_code == 3
    assert auth_registry.host in error.message
    assert error.hint and f"docker login {auth_registry.host}" in error.hint
    shown = str(error) + json.dumps(error.to_json())
    assert auth_registry.password not in shown and "not-the-password" not in shown
    assert base64.b64encode(b"alice:not-the-password").decode() not in shown


# -- failures on the way in ------------------------------------------------------------------------


def test_unreachable_registry_is_a_network_error(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RegistryError) as caught:
        open_image(f"{host}/base:1", Store(tmp_path / "store"), client=factory([]))
    assert caught.value.registry == host and caught.value.exit_code == 3
    assert caught.value.status is None


def unique_image(folder: Path) -> BaseImage:
    """A small image no other test has: the registry keeps one copy of each blob for all
    repositories, so a test that corrupts one must corrupt its own."""

    def fill(w: LayerWriter) -> None:
        w.add_file("etc/nonce", uuid.uuid4().hex.encode() * 1000)
        w.add_file("usr/bin/true", b"\x7fELF" + bytes(4000), mode=0o755)

    return make_image(folder, fill, tag="unique")


@pytest.fixture
def small_pushed(tmp_path: Path, registry: Registry) -> tuple[str, BaseImage]:
    ref = f"{registry.host}/{repo()}:1"
    image = unique_image(tmp_path / "unique")
    push_base(client(registry.host), ref, image)
    return ref, image


def test_tampered_layer_in_the_registry_is_refused(
    tmp_path: Path, registry: Registry, small_pushed: tuple[str, BaseImage]
) -> None:
    ref, base = small_pushed
    layer = base.manifest.layers[0]
    stored = registry.blob_file(layer.digest)
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes
    stored.write_bytes(bytes(raw))
    store = Store(tmp_path / "store")
    with pytest.raises(ArtifactError) as caught:
        open_image(ref, store, client=factory([]))
    assert caught.value.expected == layer.digest and caught.value.exit_code == 4
    assert not OciLayout.open(store.root / "oci").has_blob(layer.digest)


def test_tampered_manifest_in_the_registry_is_refused(
    tmp_path: Path, registry: Registry, small_pushed: tuple[str, BaseImage]
) -> None:
    ref, base = small_pushed
    stored = registry.blob_file(base.descriptor.digest)
    # Still a valid manifest (the registry parses what it serves), but other bytes.
    stored.write_bytes(stored.read_bytes().replace(b"{", b"{ ", 1))
    with pytest.raises(ArtifactError) as caught:
        open_image(ref, Store(tmp_path / "store"), client=factory([]))
    assert caught.value.expected == base.descriptor.digest


def test_registry_image_missing_the_platform(
    tmp_path: Path, registry: Registry, small_pushed: tuple[str, BaseImage]
) -> None:
    """An index (multi-platform image) without this machine's platform is named as such."""
    ref, base = small_pushed
    parsed = Reference.parse(ref)
    other = "linux/s390x"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                **base.descriptor.to_json(),
                "platform": {"os": "linux", "architecture": other.split("/")[1]},
            }
        ],
    }
    c = client(registry.host)
    c.put_manifest(
        parsed.repository,
        "multi",
        "application/vnd.oci.image.index.v1+json",
        json.dumps(index).encode(),
    )
    with pytest.raises(ImageError, match=f"has no image for {default_platform()}") as caught:
        open_image(
            f"{registry.host}/{parsed.repository}:multi", Store(tmp_path / "s"), client=factory([])
        )
    assert caught.value.hint == f"platforms it has: {other}"


def evil_layer(entry: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    """A gzip tar layer with one entry a safe writer would never make."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(entry)
        info.type = kind
        info.linkname = link
        data = b"pwned\n" if kind == tarfile.REGTYPE else b""
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def evil_image(folder: Path, entry: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> str:
    """An OCI layout whose one layer holds ``entry``; returns its oci: reference."""
    raw = evil_layer(entry, kind, link)
    layout = OciLayout.open(folder, create=True)
    gz = gzip.compress(raw, mtime=0)
    layer = layout.add_blob(gz, "application/vnd.oci.image.layer.v1.tar+gzip")
    arch = default_platform().split("/")[1]
    config = ImageConfig(
        architecture=arch,
        os="linux",
        diff_ids=(sha256_digest(raw),),
        config={},
        created="2023-11-14T22:13:20Z",
        history=(),
    )
    config_desc = layout.add_blob(config.to_bytes(), OCI_CONFIG)
    manifest = layout.add_blob(ImageManifest(config_desc, (layer,)).to_bytes(), OCI_MANIFEST)
    layout.tag("evil", manifest)
    return f"oci:{folder}:evil"


EVIL = [
    ("../../escaped", tarfile.REGTYPE, "", "has a '..' component"),
    ("/etc/cron.d/evil", tarfile.REGTYPE, "", "has an absolute path"),
    ("usr/lib/link", tarfile.SYMTYPE, "../../../../etc/shadow", "outside the root"),
    ("usr/bin/hard", tarfile.LNKTYPE, "../../etc/shadow", "has a '..' component"),
]


@pytest.mark.parametrize(
    ("entry", "kind", "link", "why"),
    EVIL,
    ids=["dotdot", "absolute", "symlink", "hardlink"],
)
def test_malicious_base_layer_is_refused(
    tmp_path: Path, entry: str, kind: bytes, link: str, why: str
) -> None:
    ref = evil_image(tmp_path / "evil", entry, kind, link)
    source: ImageSource = open_image(ref, Store(tmp_path / "store"))
    with pytest.raises(UnsafeLayerError, match=why) as caught:
        probe_image(source.image, where=ref)
    assert caught.value.entry == entry and caught.value.exit_code == 4
    assert not (tmp_path / "escaped").exists()


def with_dev(base: BaseImage, root: Path, folder: Path) -> str:
    """``base`` plus a layer holding ``/dev`` of the debootstrap root as tar stores it
    (character devices, a link, folders), as `docker import` of a root tar makes it."""
    layout = OciLayout.open(folder, create=True)
    for descriptor, path in zip(base.manifest.layers, base.layers, strict=True):
        d = descriptor
        layout.add_blob_file(path, d.digest, d.size, d.media_type, link=True)  # base's kept
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root / "dev", arcname="./dev")
    with tarfile.open(fileobj=io.BytesIO(raw.getvalue())) as tar:
        devices = [m.name for m in tar if m.ischr()]
    assert "./dev/full" in devices and "./dev/null" in devices
    gz = gzip.compress(raw.getvalue(), mtime=0)
    layer = layout.add_blob(gz, "application/vnd.oci.image.layer.v1.tar+gzip")
    config = replace(base.config, diff_ids=(*base.config.diff_ids, sha256_digest(raw.getvalue())))
    config_desc = layout.add_blob(config.to_bytes(), OCI_CONFIG)
    manifest = ImageManifest(config_desc, (*base.manifest.layers, layer))
    layout.tag("dev", layout.add_blob(manifest.to_bytes(), OCI_MANIFEST))
    return f"oci:{folder}:dev"


def test_a_base_with_device_nodes_is_read_and_built_on(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    slim_layout: BaseImage,
    bookworm_root: Path,
) -> None:
    """A root imported whole keeps /dev/full and the rest; engines run it, and so it is
    read, probed and built on (the device nodes are never made on this machine)."""
    ref = with_dev(slim_layout, bookworm_root, tmp_path / "dev")
    setup = make_setup(tmp_path / "setup")
    source = open_image(ref, setup.store)
    facts = probe_image(source.image, where=ref)
    assert facts.version.startswith("3.11")
    assert main(["image", "inspect", ref, "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["digest"] == source.image.descriptor.digest
    out = f"oci:{tmp_path / 'out'}:v1"
    args = ["--lock", str(setup.lock.path), "--store", str(setup.store.root)]
    assert main(["image", "build", *args, "--base", ref, "-o", out]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["verify", "--image", out, *args]) == 0, capsys.readouterr()


# -- every blob is checked against its digest, on the way in and on the way out ---------------


def flip_os_byte(path: Path) -> None:
    """Change a gzip layer's header OS byte (RFC 1952) in place: same size, same content,
    other bytes, so only a digest check can tell."""
    raw = bytearray(path.read_bytes())
    raw[9] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_base_layout_with_a_changed_blob_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = unique_image(tmp_path / "base")
    layer = base.manifest.layers[0]
    blob = base.layout.blob_path(layer.digest)
    ref = f"oci:{base.layout.root}:unique"
    store = Store(tmp_path / "store")
    assert open_image(ref, store).image.layer_paths == (blob,)
    flip_os_byte(blob)
    with pytest.raises(ArtifactError) as caught:
        open_image(ref, store)
    error = caught.value
    assert error.exit_code == 4 and error.artifact == str(blob)
    assert error.expected == f"{layer.digest} ({layer.size} bytes)"
    code = main(["image", "inspect", ref, "--store", str(store.root)])
    err = capsys.readouterr().err
    assert code == 4 and f"error: {blob} does not match blob {layer.digest}" in err


def test_an_unchanged_base_is_hashed_once_per_store(tmp_path: Path) -> None:
    base = unique_image(tmp_path / "base")
    blob = base.layout.blob_path(base.manifest.layers[0].digest)
    old = blob.stat().st_mtime_ns - 60 * 10**9  # a base pulled a while ago
    os.utime(blob, ns=(old, old))
    store = Store(tmp_path / "store")
    open_image(f"oci:{base.layout.root}:unique", store)
    remembered = verified_cache(store) / base.manifest.layers[0].digest.removeprefix("sha256:")
    identity = json.loads(remembered.read_text())
    assert [entry[1] for entry in identity] == [blob.stat().st_ino]


def damaged_copy(built: BuiltImage, folder: Path) -> tuple[BuiltImage, Path]:
    """``built`` with its top layer's file replaced by a same-size changed copy, as a
    damaged store would hand it over."""
    folder.mkdir(parents=True, exist_ok=True)
    top = folder / "top-layer"
    top.write_bytes(built.layer_paths[-1].read_bytes())
    flip_os_byte(top)
    return replace(built, layer_paths=(*built.layer_paths[:-1], top)), top


@pytest.mark.parametrize(
    ("place", "after"),
    [
        pytest.param(new_place, [], id="new-layout-removed-with-the-folders-it-made"),
        pytest.param(empty_folder, ["empty"], id="empty-folder-emptied-again"),
        pytest.param(existing_layout, ["layout"], id="existing-layout-kept-as-it-was"),
    ],
)
def test_a_damaged_layer_is_not_written_out(
    tmp_path: Path,
    sample: tuple[Setup, BuiltImage],
    place: Callable[[Path], Path],
    after: list[str],
) -> None:
    damaged, top = damaged_copy(sample[1], tmp_path / "damaged")
    digest = sample[1].layers[-1].descriptor.digest
    out = place(tmp_path)
    index = (out / "index.json").read_bytes() if (out / "index.json").exists() else None
    with pytest.raises(ArtifactError, match=f"{top} does not match blob {digest}"):
        write_image(damaged, f"oci:{out}:x")
    assert top.stat().st_nlink == 1  # never linked
    # A layout this write made does not stay behind without its image; one that was
    # there keeps its index (blobs that arrived are in no index: harmless).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["damaged", *after])
    if index is not None:
        assert (out / "index.json").read_bytes() == index
    elif out.exists():
        assert list(out.iterdir()) == []
    with pytest.raises(ArtifactError, match=f"{top} does not match blob {digest}: it holds"):
        write_image(damaged, f"docker-archive:{tmp_path / 'out.tar'}:x:1")
    assert not (tmp_path / "out.tar").exists()


def test_a_damaged_layer_is_not_pushed(
    tmp_path: Path, registry: Registry, sample: tuple[Setup, BuiltImage]
) -> None:
    damaged, top = damaged_copy(sample[1], tmp_path)
    repository = repo()
    c = client(registry.host)
    with pytest.raises(ArtifactError, match=f"{top} does not match blob") as caught:
        push_image(damaged, Reference.parse(f"{registry.host}/{repository}:1"), c)
    assert caught.value.exit_code == 4
    assert c.stats().blobs_uploaded == 0 and c.stats().bytes_uploaded == 0


def test_a_push_to_a_digest_is_refused(
    registry: Registry, sample: tuple[Setup, BuiltImage]
) -> None:
    c = client(registry.host)
    ref = Reference.parse(f"{registry.host}/{repo()}@{sample[1].digest}")
    with pytest.raises(ImageInputError, match="names a tag, not a digest") as caught:
        push_image(sample[1], ref, c)
    assert caught.value.exit_code == 2 and c.stats().blobs_uploaded == 0


def test_a_rewritten_output_replaces_a_damaged_blob(
    tmp_path: Path, slim_sample: tuple[Setup, BuiltImage, str]
) -> None:
    """An output layout that got a damaged blob (linked from a base damaged at the time)
    is repaired by writing the image into it again, not left as it is."""
    built = slim_sample[1]
    ref = write_image(built, f"oci:{tmp_path / 'out'}:x")
    out = OciLayout.open(tmp_path / "out")
    base_layer = built.layers[0].descriptor
    blob = out.blob_path(base_layer.digest)
    blob.unlink()  # its own file now, not the base's
    blob.write_bytes(built.layer_paths[0].read_bytes())
    flip_os_byte(blob)
    with pytest.raises(ArtifactError):
        open_image(ref, Store(tmp_path / "store"))
    write_image(built, ref)
    assert out.verify_blob(base_layer) == blob
    assert open_image(ref, Store(tmp_path / "store")).image.descriptor.digest == built.digest


def test_registry_image_that_is_not_there_is_bad_input(
    tmp_path: Path, small_pushed: tuple[str, BaseImage]
) -> None:
    ref, _ = small_pushed
    for missing in (ref.rsplit(":", 1)[0] + ":nosuchtag", ref.rsplit("/", 1)[0] + "/nosuch:1"):
        with pytest.raises(ImageInputError, match=r"no image .* in the registry") as caught:
            open_image(missing, Store(tmp_path / "store"), client=factory([]))
        assert caught.value.exit_code == 2


def test_a_damaged_blob_in_the_store_is_fetched_again(
    tmp_path: Path, small_pushed: tuple[str, BaseImage]
) -> None:
    ref, base = small_pushed
    store = Store(tmp_path / "store")
    made: list[RegistryClient] = []
    first = open_image(ref, store, client=factory(made))
    flip_os_byte(first.image.layer_paths[0])
    again = open_image(ref, store, client=factory(made))
    assert made[1].stats().blobs_fetched == 1  # the damaged layer, not the config
    assert again.image.layer_paths[0].read_bytes() == base.layers[0].read_bytes()

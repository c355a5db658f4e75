"""Docker's image archive (envship.dockerarchive), down to a real ``docker load`` and
``docker save``."""

from __future__ import annotations

import gzip
import io
import json
import os
import pwd
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from envship.dockerarchive import (
    parse_archive_name,
    parse_archive_ref,
    read_docker_archive,
    write_docker_archive,
)
from envship.errors import ArtifactError, EnvshipError, ImageError, ImageInputError
from envship.layer import LayerWriter
from envship.layerview import LayerView
from envship.oci import ImageConfig, sha256_digest
from envship.ocilayout import OciLayout
from imagelib import BaseImage, docker, make_image
from serviceslib import DockerEngine
from userlib import SYSTEM_PY, as_user, world_readable


def layered_image(tmp_path: Path) -> BaseImage:
    def build(writer: LayerWriter) -> None:
        writer.add_file("opt/envship/hello.txt", b"hello from envship\n")
        writer.add_symlink("opt/envship/hello", "hello.txt")

    return make_image(tmp_path / "layout", build, tag="t", config={})


def test_docker_archive_round_trip(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    archive = tmp_path / "out" / "image.tar"
    write_docker_archive(
        archive, config=image.config_bytes, layers=image.layers, repo_tags=["x/y:1"]
    )
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert {"manifest.json", "index.json", "oci-layout"} <= set(names)
    assert manifest[0]["RepoTags"] == ["x/y:1"]
    assert [p.name for p in archive.parent.iterdir()] == ["image.tar"]
    # The archive is an OCI layout too, and reads back to the same image.
    imported = read_docker_archive(archive, OciLayout.open(tmp_path / "back", create=True), tag="b")
    assert imported.descriptor.digest == image.descriptor.digest
    assert imported.config.diff_ids == image.config.diff_ids
    assert LayerView(imported.layer_paths).read("opt/envship/hello") == b"hello from envship\n"


def test_docker_archive_is_atomic(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    archive = tmp_path / "out" / "image.tar"
    with pytest.raises(FileNotFoundError):
        write_docker_archive(
            archive,
            config=image.config_bytes,
            layers=[tmp_path / "gone"],
            repo_tags=["x/y:1"],
        )
    with pytest.raises(ImageError, match="1 layers but 2 diff_ids"):
        config = ImageConfig.from_json(image.config_bytes)
        bad = ImageConfig(config.architecture, "linux", config.diff_ids * 2)
        write_docker_archive(archive, config=bad.to_bytes(), layers=image.layers, repo_tags=[])
    assert not archive.parent.exists() or list(archive.parent.iterdir()) == []


def test_read_docker_archive_checks_diff_ids(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    config = ImageConfig.from_json(image.config_bytes)
    lying = ImageConfig(config.architecture, "linux", ("sha256:" + "b" * 64,))
    archive = tmp_path / "lying.tar"
    write_docker_archive(archive, config=lying.to_bytes(), layers=image.layers, repo_tags=[])
    target = OciLayout.open(tmp_path / "in", create=True)
    with pytest.raises(ArtifactError, match="diff_ids"):
        read_docker_archive(archive, target)
    assert list(target.blob_path(config.diff_ids[0]).parent.glob(".*")) == []


def test_docker_loads_and_runs_the_archive(
    tmp_path: Path, bookworm_layout: BaseImage, docker_engine: DockerEngine
) -> None:
    top = layered_image(tmp_path)
    # One image of two layers: bookworm's below ours, as envship image build stacks them.
    config = ImageConfig(
        bookworm_layout.config.architecture,
        "linux",
        (*bookworm_layout.config.diff_ids, *top.config.diff_ids),
        config=bookworm_layout.config.config,
    )
    archive = tmp_path / "both.tar"
    tag = f"envship-test/layered:{os.getpid()}"
    write_docker_archive(
        archive,
        config=config.to_bytes(),
        layers=[*bookworm_layout.layers, *top.layers],
        repo_tags=[tag],
    )
    result = docker_engine.docker("load", "-i", str(archive), check=False)
    assert result.returncode == 0, result.stderr
    try:
        script = "cat /opt/envship/hello; ls -ld /tmp | cut -c1-10"
        run = docker_engine.docker(
            "run", "--rm", "--network", "none", tag, "sh", "-c", script, check=False
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout == "hello from envship\ndrwxrwxrwt\n"
    finally:
        docker_engine.docker("rmi", tag, check=False)


def test_bookworm_layout_runs_python(
    tmp_path: Path, bookworm_layout: BaseImage, docker_load: Callable[[BaseImage, str], str]
) -> None:
    tag = docker_load(bookworm_layout, "envship-test/bookworm-layout:test")
    run = docker("run", "--rm", "--network", "none", tag, "python3", "--version", check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Python 3.11.")
    # What Docker itself saves reads back as a base: same diff_ids, same files.
    saved = tmp_path / "saved.tar"
    docker("save", "-o", str(saved), tag)
    imported = read_docker_archive(saved, OciLayout.open(tmp_path / "imported", create=True))
    assert imported.config.diff_ids == bookworm_layout.config.diff_ids
    view = LayerView(list(imported.layer_paths))
    assert view.resolve("/usr/bin/python3") == "usr/bin/python3.11"


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "repo_tag"),
    [
        ("team/ds:1", "team/ds:1"),
        ("ds", "ds:latest"),  # as `docker tag` and `docker load` take it
        ("a_b__c-d/e.f--g:V1.0_x", "a_b__c-d/e.f--g:V1.0_x"),
        ("localhost:5000/team/ds", "localhost:5000/team/ds:latest"),
        ("Registry.Example:443/ds:2", "Registry.Example:443/ds:2"),  # hosts may be mixed case
        ("localhost/ds:1", "localhost/ds:1"),
    ],
)
def test_archive_names(name: str, repo_tag: str) -> None:
    assert parse_archive_name(name) == repo_tag


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("BadName:1", "invalid repository name 'BadName'"),
        ("team/Ds:1", "invalid repository name 'team/Ds'"),
        ("ds:", "invalid tag ''"),
        ("ds:-1", "invalid tag '-1'"),
        ("a//b:1", "invalid repository name 'a//b'"),
        ("-ds:1", "invalid repository name '-ds'"),
        ("under_score.example/ds:1", "bad registry host 'under_score.example'"),
        ("ds@sha256:" + "a" * 64, "by tag, not by digest"),
        ("ds:1@sha256:" + "a" * 64, "by tag, not by digest"),
        ("x" * 256 + ":1", "longer than 255 characters"),
    ],
)
def test_archive_names_docker_would_refuse(name: str, why: str) -> None:
    with pytest.raises(
        ImageInputError, match=f"invalid docker-archive name .*{re.escape(why)}"
    ) as e:
        parse_archive_name(name)
    assert e.value.exit_code == 2 and e.value.hint and "lowercase" in e.value.hint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker-archive:x.tar", (Path("x.tar"), None)),
        ("docker-archive:/o/x.tar:ds", (Path("/o/x.tar"), "ds:latest")),
        ("docker-archive:x.tar:localhost:5000/a:1", (Path("x.tar"), "localhost:5000/a:1")),
    ],
)
def test_parse_archive_ref(text: str, expected: tuple[Path, str | None]) -> None:
    assert parse_archive_ref(text) == expected


@pytest.mark.parametrize("text", ["docker-archive:", "docker-archive:x.tar:", "docker-archive::a"])
def test_parse_archive_ref_refuses(text: str) -> None:
    with pytest.raises(ImageInputError, match="invalid docker-archive reference"):
        parse_archive_ref(text)


def test_an_archive_docker_would_refuse_is_not_written(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    archive = tmp_path / "out" / "x.tar"
    with pytest.raises(ImageInputError, match="'BadName'"):
        write_docker_archive(
            archive, config=image.config_bytes, layers=image.layers, repo_tags=["BadName:1"]
        )
    assert not archive.parent.exists() or list(archive.parent.iterdir()) == []


def test_docker_loads_a_name_without_tag_as_latest(
    tmp_path: Path, docker_engine: DockerEngine
) -> None:
    image = layered_image(tmp_path)
    name = f"envship-test/no-tag-{os.getpid()}"
    archive = tmp_path / "x.tar"
    write_docker_archive(archive, config=image.config_bytes, layers=image.layers, repo_tags=[name])
    loaded = docker_engine.docker("load", "-i", str(archive), check=False)
    assert loaded.returncode == 0, loaded.stderr
    try:
        assert f"Loaded image: {name}:latest" in loaded.stdout
    finally:
        docker_engine.docker("rmi", f"{name}:latest", check=False)


# -- one image, one digest -----------------------------------------------------------------------


def test_the_given_manifest_is_the_archive_s_and_reads_back_unchanged(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    annotated = replace(
        image.manifest,
        layers=tuple(
            replace(d, annotations={"org.envship.distributions": "x==1"})
            for d in image.manifest.layers
        ),
    )
    manifest = annotated.to_bytes()
    archive = tmp_path / "a.tar"
    write_docker_archive(
        archive,
        config=image.config_bytes,
        layers=image.layers,
        repo_tags=["x/y:1"],
        manifest=manifest,
    )
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        stored = tar.extractfile(f"blobs/sha256/{sha256_digest(manifest)[7:]}").read()  # type: ignore[union-attr]
    assert [m["digest"] for m in index["manifests"]] == [sha256_digest(manifest)]
    assert index["manifests"][0]["annotations"] == {
        "io.containerd.image.name": "docker.io/x/y:1",
        "org.opencontainers.image.ref.name": "x/y:1",
    }
    assert stored == manifest
    back = read_docker_archive(archive, OciLayout.open(tmp_path / "back", create=True))
    assert back.descriptor.digest == sha256_digest(manifest)
    assert back.manifest.layers[0].annotations == {"org.envship.distributions": "x==1"}
    # A manifest that is not this image's is refused rather than written beside it.
    other = replace(image.manifest, layers=image.manifest.layers * 2).to_bytes()
    with pytest.raises(ImageInputError, match="another number of layers"):
        write_docker_archive(
            tmp_path / "b.tar",
            config=image.config_bytes,
            layers=image.layers,
            repo_tags=[],
            manifest=other,
        )


@pytest.mark.parametrize(
    ("config", "manifest", "message"),
    [
        (b"not json", None, "config: not valid JSON"),
        (b'{"os": "linux"}', None, "invalid image config at config"),
        (None, b"[]", "manifest: not a JSON object"),
        (None, b'{"schemaVersion": 2}', "invalid image manifest at manifest"),
    ],
)
def test_a_malformed_config_or_manifest_is_bad_input_and_not_written(
    tmp_path: Path, config: bytes | None, manifest: bytes | None, message: str
) -> None:
    """What the caller hands write_docker_archive is its input: a document that does
    not parse exits 2, like the layer count that does not match its config."""
    image = layered_image(tmp_path)
    archive = tmp_path / "out" / "a.tar"
    with pytest.raises(ImageInputError, match=re.escape(message)) as caught:
        write_docker_archive(
            archive,
            config=config if config is not None else image.config_bytes,
            layers=image.layers,
            repo_tags=[],
            manifest=manifest,
        )
    assert caught.value.exit_code == 2
    assert not archive.parent.exists() or list(archive.parent.iterdir()) == []


def test_a_layer_changed_on_disk_does_not_reach_the_archive(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    copy = tmp_path / "layer"
    raw = bytearray(image.layers[0].read_bytes())
    raw[9] ^= 1  # gzip's OS byte: same size, same content, other bytes
    copy.write_bytes(bytes(raw))
    archive = tmp_path / "out" / "a.tar"
    with pytest.raises(
        ArtifactError, match=f"{copy} does not match blob .*: it holds sha256:"
    ) as caught:
        write_docker_archive(
            archive,
            config=image.config_bytes,
            layers=[copy],
            repo_tags=[],
            manifest=image.manifest.to_bytes(),
        )
    assert caught.value.exit_code == 4
    assert list(archive.parent.iterdir()) == []


# -- reading what is broken ----------------------------------------------------------------------


def archive_of(tmp_path: Path) -> tuple[BaseImage, Path]:
    image = layered_image(tmp_path)
    archive = tmp_path / "good.tar"
    write_docker_archive(
        archive, config=image.config_bytes, layers=image.layers, repo_tags=["x/y:1"]
    )
    return image, archive


def old_form(tmp_path: Path, layer: bytes | None = None, config: bytes | None = None) -> Path:
    """What ``docker save`` wrote before Docker 25: ``<config hex>.json``,
    ``<id>/layer.tar`` (not named by digest) and ``manifest.json``, no ``index.json``."""
    image = layered_image(tmp_path)
    config = config if config is not None else image.config_bytes
    files = {
        f"{sha256_digest(config)[7:]}.json": config,
        "0123abcd/layer.tar": layer if layer is not None else image.layers[0].read_bytes(),
    }
    entry = {"Config": next(iter(files)), "RepoTags": ["x/y:1"], "Layers": ["0123abcd/layer.tar"]}
    files["manifest.json"] = json.dumps([entry]).encode()
    archive = tmp_path / "old.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def flip(path: Path, offset: int) -> Path:
    with path.open("r+b") as f:
        f.seek(offset)
        value = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value ^ 0x55]))
    return path


def truncated(tmp_path: Path) -> Path:
    """Cut in the middle of the layer, as an interrupted copy leaves it."""
    image, archive = archive_of(tmp_path)
    name = f"blobs/sha256/{image.manifest.layers[0].digest.removeprefix('sha256:')}"
    with tarfile.open(archive) as tar:
        member = tar.getmember(name)
    with archive.open("r+b") as f:
        f.truncate(member.offset_data + member.size // 2)
    return archive


def not_a_tar(tmp_path: Path) -> Path:
    (tmp_path / "x.tar").write_bytes(b"PK\x03\x04 this is a zip, not a tar" * 40)
    return tmp_path / "x.tar"


def no_manifest(tmp_path: Path) -> Path:
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        info = tarfile.TarInfo("oci-layout")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    return tmp_path / "x.tar"


def layer_byte_flipped(tmp_path: Path) -> Path:
    image, archive = archive_of(tmp_path)
    name = f"blobs/sha256/{image.manifest.layers[0].digest.removeprefix('sha256:')}"
    with tarfile.open(archive) as tar:
        member = tar.getmember(name)
    return flip(archive, member.offset_data + member.size // 2)


def config_edited(tmp_path: Path) -> Path:
    archive = old_form(tmp_path)
    with tarfile.open(archive) as tar:
        member = next(m for m in tar if m.name.endswith(".json") and m.name != "manifest.json")
    return flip(archive, member.offset_data + 2)


def old_form_gzip_crc(tmp_path: Path) -> Path:
    raw = bytearray(layered_image(tmp_path).layers[0].read_bytes())
    raw[-8] ^= 0x55  # the gzip trailer's CRC-32 (RFC 1952)
    return old_form(tmp_path, bytes(raw))


def old_form_deflate_damaged(tmp_path: Path) -> Path:
    layer = layered_image(tmp_path).layers[0].read_bytes()
    damaged = bytearray(layer)
    damaged[len(layer) // 2] ^= 0x55
    return old_form(tmp_path, bytes(damaged))


def old_form_zstd(tmp_path: Path) -> Path:
    return old_form(tmp_path, b"\x28\xb5\x2f\xfd" + bytes(100))  # zstd's magic number


def config_not_a_config(tmp_path: Path) -> Path:
    """A config named by its own digest (so it passes that check) that is no config."""
    return old_form(tmp_path, config=json.dumps({"os": "linux"}).encode())


def index_not_json(tmp_path: Path) -> Path:
    """Docker 25's form whose ``index.json`` (named by no digest) is not JSON."""
    _, archive = archive_of(tmp_path)
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    members["index.json"] = b'{"manifests": ['
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def gzipped(tmp_path: Path) -> bytes:
    """The archive as `docker save | gzip` leaves it."""
    _, archive = archive_of(tmp_path)
    return gzip.compress(archive.read_bytes(), mtime=0)


def gzipped_truncated(tmp_path: Path) -> Path:
    data = gzipped(tmp_path)
    (tmp_path / "x.tar.gz").write_bytes(data[: len(data) // 2])
    return tmp_path / "x.tar.gz"


def gzipped_damaged(tmp_path: Path) -> Path:
    data = bytearray(gzipped(tmp_path))
    data[len(data) // 2] ^= 0x55
    (tmp_path / "x.tar.gz").write_bytes(bytes(data))
    return tmp_path / "x.tar.gz"


BROKEN: list[tuple[Callable[[Path], Path], type[EnvshipError], int, str]] = [
    (truncated, ImageInputError, 2, "is not a readable docker-archive: unexpected end of data"),
    (not_a_tar, ImageInputError, 2, "is not a docker-archive"),
    (no_manifest, ImageInputError, 2, "has no 'manifest.json'"),
    (layer_byte_flipped, ArtifactError, 4, "does not match the digest it is named by"),
    (config_edited, ArtifactError, 4, "does not match the digest it is named by"),
    (old_form_gzip_crc, ArtifactError, 4, "is corrupt: CRC check failed"),
    (old_form_deflate_damaged, ArtifactError, 4, "is corrupt: "),
    (old_form_zstd, ImageInputError, 2, "is zstd-compressed, which envship does not read"),
    (gzipped_truncated, ImageInputError, 2, "is not a readable docker-archive"),
    (gzipped_damaged, ArtifactError, 4, "is corrupt: "),
    (config_not_a_config, ImageInputError, 2, ".json.architecture: missing or not a string"),
    (index_not_json, ImageInputError, 2, ":index.json: not valid JSON"),
]


@pytest.mark.parametrize(
    ("make", "error", "code", "message"), BROKEN, ids=[b[0].__name__ for b in BROKEN]
)
def test_a_broken_archive_is_an_error_not_a_crash(
    tmp_path: Path,
    make: Callable[[Path], Path],
    error: type[EnvshipError],
    code: int,
    message: str,
) -> None:
    archive = make(tmp_path)
    into = OciLayout.open(tmp_path / "into", create=True)
    with pytest.raises(error, match=re.escape(message)) as caught:
        read_docker_archive(archive, into)
    assert caught.value.exit_code == code
    assert str(archive) in str(caught.value) + str(getattr(caught.value, "artifact", ""))
    assert into.tags() == [] and list((into.root / "blobs" / "sha256").glob(".*")) == []


def test_an_old_form_archive_reads(tmp_path: Path) -> None:
    """The good twin of the broken old-form archives above."""
    image = read_docker_archive(old_form(tmp_path), OciLayout.open(tmp_path / "in", create=True))
    assert LayerView(image.layer_paths).read("opt/envship/hello") == b"hello from envship\n"


def test_an_archive_of_several_images_needs_a_name(tmp_path: Path) -> None:
    image = layered_image(tmp_path)
    config = ImageConfig.from_json(image.config_bytes)
    other = replace(config, config={"Env": ["X=1"]}).to_bytes()
    archive = tmp_path / "two.tar"
    write_docker_archive(archive, config=image.config_bytes, layers=image.layers, repo_tags=["a:1"])
    # A second image of the same layer, as `docker save a:1 b:1` writes it.
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    manifest = json.loads(members["manifest.json"])
    members[f"blobs/sha256/{sha256_digest(other)[7:]}"] = other
    second = dict(manifest[0], Config=f"blobs/sha256/{sha256_digest(other)[7:]}", RepoTags=["b:1"])
    members["manifest.json"] = json.dumps([manifest[0], second]).encode()
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    into = OciLayout.open(tmp_path / "in", create=True)
    with pytest.raises(ImageInputError, match="holds 2 images; say which one") as caught:
        read_docker_archive(archive, into)
    assert caught.value.hint and "names there: a:1, b:1" in caught.value.hint
    assert read_docker_archive(archive, into, name="b:1").config.env == {"X": "1"}
    assert read_docker_archive(archive, into, name="docker.io/library/a:1").config.env == {}
    with pytest.raises(ImageInputError, match="no image named 'c:latest'"):
        read_docker_archive(archive, into, name="c:latest")


# -- a store shared between users ----------------------------------------------------------------


@pytest.fixture(name="world_readable")
def _world_readable() -> Iterator[Path]:
    with world_readable("envship-archive-") as top:
        yield top


@pytest.mark.parametrize(
    ("form", "folder_mode", "blob_mode"),
    [
        ("docker-25", 0o755, 0o644),
        ("docker-25", 0o2775, 0o664),
        ("before-docker-25", 0o755, 0o644),
    ],
    ids=["store", "group-shared-store", "old-form"],
)
def test_an_imported_layer_is_readable_by_every_user_of_the_store(
    world_readable: Path, form: str, folder_mode: int, blob_mode: int
) -> None:
    """A base imported by one user is used by the next one's build and linked into its
    outputs: never mkstemp's 0600 whatever the importer's umask; group-writable in a
    store shared with its group (setgid and group-writable folders)."""
    work = world_readable / "work"
    work.mkdir()
    archive = archive_of(work)[1] if form == "docker-25" else old_form(work)
    layout = OciLayout.open(world_readable / "store", create=True)
    blobs = layout.root / "blobs" / "sha256"
    os.chown(blobs, 0, 100)
    blobs.chmod(folder_mode)
    old = os.umask(0o077)  # a private umask must not make a private blob
    try:
        image = read_docker_archive(archive, layout, tag="b")
    finally:
        os.umask(old)
    (layer,) = image.layer_paths
    assert stat.S_IMODE(layer.stat().st_mode) == blob_mode
    other = as_user(world_readable, "sha256sum", str(layer))
    assert other.returncode == 0, other.stderr
    assert f"sha256:{other.stdout.split()[0]}" == image.manifest.layers[0].digest


READ_AS_USER = """
import json, sys
from pathlib import Path
from envship.dockerarchive import read_docker_archive
from envship.errors import EnvshipError
from envship.ocilayout import OciLayout
try:
    read_docker_archive(Path(sys.argv[1]), OciLayout.open(Path(sys.argv[2])), tag="b")
except EnvshipError as exc:
    print(json.dumps({"kind": exc.kind, "code": exc.exit_code, "message": exc.message,
        "hint": exc.hint, "problems": [[p.where, p.message] for p in exc.problems]}))
"""


@pytest.mark.parametrize("config_there", [False, True], ids=["fresh", "config-already-there"])
def test_a_store_this_user_cannot_write_is_said_not_a_full_disk(
    world_readable: Path, config_there: bool
) -> None:
    """Whether the first blob refused is the config or (another import of the same
    config left it there) a layer, the error is the permission, never a full disk."""
    work = world_readable / "work"
    work.mkdir()
    image, archive = archive_of(work)
    archive.chmod(0o644)
    layout = OciLayout.open(world_readable / "store", create=True)  # root's, 0755
    if config_there:
        layout.add_blob(image.config_bytes, image.manifest.config.media_type)
    result = as_user(world_readable, SYSTEM_PY, "-c", READ_AS_USER, str(archive), str(layout.root))
    assert result.returncode == 0 and result.stdout, result.stderr
    error = json.loads(result.stdout)
    user = f"{pwd.getpwuid(1000).pw_name} (uid 1000)"
    blobs = layout.root / "blobs" / "sha256"
    assert (error["kind"], error["code"]) == ("permission", 1)
    assert error["message"] == (
        f"permission denied: {user} may not write the base image into the store's layout "
        f"{layout.root}"
    )
    assert error["problems"] == [
        [
            str(blobs),
            f"{blobs} is owned by root (uid 0), group root, mode drwxr-xr-x: {user} cannot "
            "create files in it",
        ]
    ]
    assert "disk" not in error["hint"]
    assert error["hint"].startswith(f"ask the store's owner to let {user} write there")
    assert not [p for p in blobs.iterdir() if p.name.startswith(".")]  # nothing left

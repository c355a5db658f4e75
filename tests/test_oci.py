"""The OCI models: manifests and configs to and from JSON, with key-path errors; references,
digests and tags, whose malformed forms are bad input (exit 2) (envship.oci)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from envship.cli.main import main
from envship.errors import ImageInputError
from envship.imageio import mirrored
from envship.oci import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    ImageManifest,
    Reference,
    canonical_json,
    check_digest,
    check_repository,
    check_tag,
    sha256_digest,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def manifest_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 20}],
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def config_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin", "A=1", "A=2"], "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
        "history": [{"created_by": "debootstrap"}],
        "created": "2023-11-14T22:13:20Z",
        "author": "kept as it was",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_manifest_round_trip_is_canonical() -> None:
    manifest = ImageManifest.from_json(json.dumps(manifest_json()).encode())
    assert manifest.config == Descriptor(OCI_CONFIG, D1, 10)
    assert manifest.layers == (Descriptor(OCI_LAYER_GZIP, D2, 20),)
    again = ImageManifest.from_json(manifest.to_bytes())
    assert again == manifest and again.to_bytes() == manifest.to_bytes()
    assert manifest.to_bytes() == canonical_json(manifest_json())
    assert sha256_digest(manifest.to_bytes()) == sha256_digest(canonical_json(manifest_json()))


def test_docker_manifest_reads_the_same() -> None:
    manifest = ImageManifest.from_json(manifest_json(mediaType=DOCKER_MANIFEST))
    assert manifest.media_type == DOCKER_MANIFEST


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (manifest_json(schemaVersion=1), "manifest.schemaVersion"),
        (manifest_json(mediaType="application/vnd.oci.image.index.v1+json"), "manifest.mediaType"),
        (manifest_json(config=None), "manifest.config"),
        (
            manifest_json(config={"mediaType": OCI_CONFIG, "digest": "md5:x", "size": 1}),
            "manifest.config.digest",
        ),
        (
            manifest_json(layers=[{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": -1}]),
            "manifest.layers[0].size",
        ),
        (manifest_json(layers={}), "manifest.layers"),
        (
            manifest_json(config={"mediaType": OCI_CONFIG, "digest": D1 + "\n", "size": 1}),
            "manifest.config.digest",
        ),
    ],
)
def test_manifest_errors_name_the_key(data: dict[str, Any], where: str) -> None:
    with pytest.raises(ImageInputError) as caught:
        ImageManifest.from_json(data)
    assert where in [p.where for p in caught.value.problems]
    assert caught.value.exit_code == 2


def test_config_round_trip_keeps_unknown_keys() -> None:
    config = ImageConfig.from_json(canonical_json(config_json()))
    assert config.diff_ids == (D1, D2)
    assert config.env == {"PATH": "/usr/bin", "A": "2"}
    assert config.platform == "linux/amd64"
    assert config.extra == {"author": "kept as it was"}
    assert config.to_bytes() == canonical_json(config_json())


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (config_json(architecture=None), "config.architecture"),
        (config_json(os=""), "config.os"),
        (config_json(rootfs={"type": "tar", "diff_ids": []}), "config.rootfs"),
        (config_json(rootfs={"type": "layers"}), "config.rootfs.diff_ids"),
        (
            config_json(rootfs={"type": "layers", "diff_ids": [D1, "x"]}),
            "config.rootfs.diff_ids[1]",
        ),
        (
            config_json(rootfs={"type": "layers", "diff_ids": [D1 + "\n"]}),
            "config.rootfs.diff_ids[0]",
        ),
        (config_json(config={"Env": "PATH=/bin"}), "config.config.Env"),
        (config_json(history=["x"]), "config.history"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], where: str) -> None:
    with pytest.raises(ImageInputError) as caught:
        ImageConfig.from_json(data)
    assert where in [p.where for p in caught.value.problems]
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("text", [b"not json", b"[1, 2]", b"\xff"])
def test_not_an_object(text: bytes) -> None:
    with pytest.raises(ImageInputError, match="manifest") as caught:
        ImageManifest.from_json(text)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("check", "value", "valid"),
    [
        (check_repository, "library/debian", True),
        (check_repository, "team/ml-env/py3.11", True),
        (check_repository, "a__b/c--d", True),
        (check_repository, "Library/debian", False),
        (check_repository, "team//env", False),
        (check_repository, "/team/env", False),
        (check_repository, "team/env/", False),
        (check_repository, "team/-env", False),
        (check_repository, "team/env\n", False),
        (check_repository, "", False),
        (check_tag, "latest", True),
        (check_tag, "_v1.0-rc.2", True),
        (check_tag, "A" * 128, True),
        (check_tag, "A" * 129, False),
        (check_tag, ".hidden", False),
        (check_tag, "-flag", False),
        (check_tag, "v1:2", False),
        (check_tag, "v1\n", False),
        (check_tag, "", False),
    ],
)
def test_repository_and_tag_checks(check: Any, value: str, valid: bool) -> None:
    if valid:
        assert check(value) == value
    else:
        with pytest.raises(ImageInputError, match=r"invalid (repository name|tag)") as caught:
            check(value)
        assert caught.value.hint and caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("debian", Reference("registry-1.docker.io", "library/debian", "latest")),
        ("team/ds:1", Reference("registry-1.docker.io", "team/ds", "1")),
        ("localhost:5000/ds", Reference("localhost:5000", "ds", "latest")),
        ("r.example/a/b:v1@" + D1, Reference("r.example", "a/b", "v1", D1)),
        ("ds@" + D2, Reference("registry-1.docker.io", "library/ds", None, D2)),
        # Docker Hub's other names are Docker Hub, one-part names in library/ there too
        ("docker.io/python:3.11", Reference("registry-1.docker.io", "library/python", "3.11")),
        ("index.docker.io/team/ds", Reference("registry-1.docker.io", "team/ds", "latest")),
        ("Docker.IO/library/debian", Reference("registry-1.docker.io", "library/debian", "latest")),
        (
            "registry-1.docker.io/debian",
            Reference("registry-1.docker.io", "library/debian", "latest"),
        ),
    ],
)
def test_reference_parse(text: str, expected: Reference) -> None:
    assert Reference.parse(text) == expected


# Malformed names a user may type, and what the error must say. None of them parses, so
# none reaches a registry: the CLI answers before any connection is made.
BAD_REFERENCES = [
    ("Library/debian", "invalid repository 'Library/debian'"),
    ("team//ds:1", "invalid repository 'team//ds'"),
    ("team/ds/", "invalid repository 'team/ds/'"),
    ("localhost:5000/", "invalid repository 'localhost:5000/'"),
    ("debian:", "invalid tag ''"),
    ("debian:-rc", "invalid tag '-rc'"),
    ("debian:.hidden", "invalid tag '.hidden'"),
    ("debian:" + "a" * 129, "invalid tag 'aaaa"),
    ("debian:v1!", "invalid tag 'v1!'"),
    ("debian@", "not a sha256 digest: ''"),
    ("debian@sha256:abc", "not a sha256 digest: 'sha256:abc'"),
    ("debian@md5:" + "0" * 32, "not a sha256 digest: 'md5:"),
    ("debian@sha256:" + "A" * 64, "not a sha256 digest: 'sha256:AAAA"),
    ("debian:1@sha256:" + "0" * 63, "not a sha256 digest"),
    ("debian:v1\n@" + D1, "invalid tag 'v1\\n'"),  # `$` would match before the newline
]


@pytest.mark.parametrize(
    ("text", "message"), BAD_REFERENCES, ids=[b[0][:40] for b in BAD_REFERENCES]
)
def test_a_malformed_reference_is_bad_input(text: str, message: str) -> None:
    with pytest.raises(ImageInputError, match=re.escape(message)) as caught:
        Reference.parse(text)
    assert caught.value.exit_code == 2 and caught.value.kind == "image-input"


@pytest.mark.parametrize(
    "text",
    [
        *(b[0] for b in BAD_REFERENCES),
        "oci:",  # no folder
        "oci:/tmp/x:",  # an empty tag
        "docker-archive:x.tar:Team/ds:1",  # docker load refuses uppercase
        "docker-archive:x.tar:ds@sha256:" + "0" * 64,  # archives name by tag
    ],
)
def test_image_inspect_of_a_malformed_reference_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    store = str(tmp_path / "store")
    assert main(["image", "inspect", text, "--store", store]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ")
    assert main(["image", "inspect", text, "--store", store, "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["error"] == "image-input" and err == ""


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (D1, True),
        ("sha256:" + "0" * 63, False),
        ("sha256:" + "0" * 65, False),
        ("sha256:" + "G" * 64, False),
        ("sha512:" + "0" * 128, False),
        (D1 + "\n", False),
        (None, False),
        (64, False),
    ],
)
def test_digest_check(value: object, valid: bool) -> None:
    if valid:
        assert check_digest(value) == value
    else:
        with pytest.raises(ImageInputError, match="not a sha256 digest") as caught:
            check_digest(value, where="layers[3]")
        assert caught.value.exit_code == 2
        assert [p.where for p in caught.value.problems] == ["layers[3]"]


@pytest.mark.parametrize(
    "text",
    ["python:3.11", "docker.io/python:3.11", "index.docker.io/library/python:3.11"],
)
def test_every_name_of_docker_hub_goes_to_the_mirror(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVSHIP_REGISTRY_MIRROR", "127.0.0.1:5999")
    assert mirrored(Reference.parse(text)) == Reference("127.0.0.1:5999", "library/python", "3.11")


def test_other_registries_are_not_mirrored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVSHIP_REGISTRY_MIRROR", "127.0.0.1:5999")
    ref = Reference.parse("r.example/python:3.11")
    assert mirrored(ref) == ref

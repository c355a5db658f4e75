"""The small shared vocabulary of OCI images: media types, descriptors, references, digests.

Everything that reads or writes images (:mod:`envship.layer`, :mod:`envship.ocilayout`,
:mod:`envship.registry`, :mod:`envship.image`) speaks in these types, so a descriptor read
from a registry can be written into a layout unchanged. See the OCI image spec
(descriptor.md, image-layout.md) and the distribution spec (reference grammar).

A malformed reference, digest, tag or document raises :class:`ImageInputError` (exit 2):
the name was typed by the user, or the document came from the layout, archive or
registry image the user named. A caller reading what envship itself stored (a cache
record) catches it and treats the record as absent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ImageInputError, Problem

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_MANIFEST",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "REF_NAME",
    "Descriptor",
    "ImageConfig",
    "ImageManifest",
    "Reference",
    "canonical_json",
    "check_digest",
    "check_repository",
    "check_tag",
    "load_json",
    "sha256_digest",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# Matched with fullmatch throughout: a pattern's `$` also matches before a trailing
# newline, so `match` would take "sha256:<hex>\n" (or a tag "v1\n") for a valid one.
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def sha256_digest(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(value: object, where: str = "digest") -> str:
    """Return ``value`` if it is a sha256 digest, else raise :class:`ImageInputError`;
    only sha256 is produced or accepted."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise ImageInputError(
            f"{where}: not a sha256 digest: {value!r}",
            problems=[Problem(where, f"expected 'sha256:' and 64 hex digits, got {value!r}")],
        )
    return value


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None
    platform: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            data["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform:
            data["platform"] = dict(self.platform)
        return data

    @classmethod
    def from_json(cls, data: object, where: str = "descriptor") -> Descriptor:
        """Parse a descriptor object, naming the key path of any problem."""
        problems: list[Problem] = []
        if not isinstance(data, dict):
            raise ImageInputError(
                f"{where}: not an object", problems=[Problem(where, "not an object")]
            )
        media_type = data.get("mediaType")
        if not isinstance(media_type, str):
            problems.append(Problem(f"{where}.mediaType", "missing or not a string"))
        digest = data.get("digest")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            problems.append(Problem(f"{where}.digest", f"not a sha256 digest: {digest!r}"))
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(Problem(f"{where}.size", f"not a size: {size!r}"))
        annotations = data.get("annotations")
        if annotations is not None and not (
            isinstance(annotations, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
        ):
            problems.append(Problem(f"{where}.annotations", "not a string map"))
        platform = data.get("platform")
        if platform is not None and not isinstance(platform, dict):
            problems.append(Problem(f"{where}.platform", "not an object"))
        if problems:
            raise ImageInputError(f"invalid descriptor at {where}", problems=problems)
        assert isinstance(media_type, str) and isinstance(digest, str) and isinstance(size, int)
        return cls(
            media_type,
            digest,
            size,
            annotations=dict(annotations) if annotations else None,
            platform={str(k): str(v) for k, v in platform.items()} if platform else None,
        )


# The distribution reference grammar, reduced to what a user types: an optional
# registry host (it has a '.' or ':' or is 'localhost'), a path of lowercase
# components, then ':tag' and/or '@sha256:...'.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPOSITORY_HINT = "repository names are lowercase letters, digits and . _ - separated by /"
DOCKER_HUB = "registry-1.docker.io"
_HUB_NAMES = frozenset({"docker.io", "index.docker.io", DOCKER_HUB})


def check_repository(name: str) -> str:
    """Return ``name`` if it is a repository name of the distribution spec (``/``-joined
    components of lowercase letters and digits, separated inside by ``.``, ``_``, ``__``
    or dashes), else raise :class:`ImageInputError`."""
    if not _REPOSITORY.fullmatch(name):
        raise ImageInputError(f"invalid repository name {name!r}", hint=_REPOSITORY_HINT)
    return name


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a tag of the distribution spec (``[a-zA-Z0-9_]`` then up to
    127 of ``[a-zA-Z0-9._-]``), else raise :class:`ImageInputError`."""
    if not _TAG.fullmatch(tag):
        raise ImageInputError(
            f"invalid tag {tag!r}",
            hint="a tag is up to 128 letters, digits, '_', '.' and '-', and starts with "
            "a letter, a digit or '_'",
        )
    return tag


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed image reference, ``[host[:port]/]repo[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``text``; :class:`ImageInputError` for a malformed tag, repository or
        digest."""
        rest = text.strip()
        digest: str | None = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            check_digest(digest, where=f"reference {text!r}")
        tag: str | None = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.fullmatch(tag):
                raise ImageInputError(f"invalid tag {tag!r} in image reference {text!r}")
        first, _, remainder = rest.partition("/")
        if remainder and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, remainder
        else:
            registry, repository = DOCKER_HUB, rest
        # Docker Hub under any of its names is one registry (docker's own normalization):
        # `docker.io/python` is `library/python` there, and a mirror of Hub serves it too.
        if registry.lower() in _HUB_NAMES:
            registry = DOCKER_HUB
            if "/" not in repository:
                repository = f"library/{repository}"
        if not _REPOSITORY.fullmatch(repository):
            raise ImageInputError(
                f"invalid repository {repository!r} in image reference {text!r}",
                hint=_REPOSITORY_HINT,
            )
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, repository, tag, digest)

    @property
    def identifier(self) -> str:
        """What the manifest endpoint takes: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


# -- manifests, indexes and configs ------------------------------------------------------------

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(data: object) -> bytes:
    """Compact JSON with sorted keys: the bytes whose digest names a manifest or config we
    write, identical on every machine."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_json(data: bytes, where: str) -> dict[str, Any]:
    """Parse a JSON object, or raise :class:`ImageInputError` naming ``where``."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageInputError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ImageInputError(
            f"{where}: not a JSON object", problems=[Problem(where, "not an object")]
        )
    return value


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """An image manifest (OCI image spec manifest.md; Docker schema 2 reads the same)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = OCI_MANIFEST
    annotations: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            data["annotations"] = dict(sorted(self.annotations.items()))
        return data

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, data: object, where: str = "manifest") -> ImageManifest:
        if isinstance(data, bytes):
            data = load_json(data, where)
        if not isinstance(data, dict):
            raise ImageInputError(
                f"{where}: not an object", problems=[Problem(where, "not an object")]
            )
        problems: list[Problem] = []
        if data.get("schemaVersion") != 2:
            problems.append(Problem(f"{where}.schemaVersion", "must be 2"))
        media_type = data.get("mediaType", OCI_MANIFEST)
        if media_type not in MANIFEST_TYPES:
            problems.append(Problem(f"{where}.mediaType", f"not an image manifest: {media_type}"))
        config: Descriptor | None = None
        try:
            config = Descriptor.from_json(data.get("config"), f"{where}.config")
        except ImageInputError as exc:
            problems.extend(exc.problems or [Problem(f"{where}.config", exc.message)])
        layers: list[Descriptor] = []
        raw_layers = data.get("layers")
        if not isinstance(raw_layers, list):
            problems.append(Problem(f"{where}.layers", "missing or not a list"))
        else:
            for i, item in enumerate(raw_layers):
                try:
                    layers.append(Descriptor.from_json(item, f"{where}.layers[{i}]"))
                except ImageInputError as exc:
                    problems.extend(exc.problems or [Problem(f"{where}.layers[{i}]", exc.message)])
        annotations = data.get("annotations")
        if annotations is not None and not isinstance(annotations, dict):
            problems.append(Problem(f"{where}.annotations", "not an object"))
        if problems or config is None:
            raise ImageInputError(f"invalid image manifest at {where}", problems=problems)
        return cls(config, tuple(layers), str(media_type), annotations or None)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image configuration (OCI image spec config.md).

    The fields envship reads or sets are typed; everything else of the JSON object is kept
    in ``extra`` and written back unchanged, so a base image's config survives a rebuild.
    """

    architecture: str
    os: str
    diff_ids: tuple[str, ...]
    config: Mapping[str, Any] = field(default_factory=dict)  # Env, Cmd, Labels, User, ...
    history: tuple[Mapping[str, Any], ...] = ()
    created: str | None = None
    variant: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """``config.Env`` as a mapping (later duplicates win, as in a container)."""
        result: dict[str, str] = {}
        for item in self.config.get("Env") or ():
            key, _, value = str(item).partition("=")
            result[key] = value
        return result

    @property
    def platform(self) -> str:
        """``os/architecture[/variant]``, as image indexes and ``--platform`` spell it."""
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.extra)
        data.update(architecture=self.architecture, os=self.os)
        if self.variant:
            data["variant"] = self.variant
        if self.created:
            data["created"] = self.created
        data["config"] = dict(self.config)
        data["rootfs"] = {"type": "layers", "diff_ids": list(self.diff_ids)}
        if self.history:
            data["history"] = [dict(h) for h in self.history]
        return data

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, data: object, where: str = "config") -> ImageConfig:
        if isinstance(data, bytes):
            data = load_json(data, where)
        if not isinstance(data, dict):
            raise ImageInputError(
                f"{where}: not an object", problems=[Problem(where, "not an object")]
            )
        problems: list[Problem] = []
        for key in ("architecture", "os"):
            if not isinstance(data.get(key), str) or not data[key]:
                problems.append(Problem(f"{where}.{key}", "missing or not a string"))
        rootfs = data.get("rootfs")
        diff_ids: list[str] = []
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
            problems.append(Problem(f"{where}.rootfs", "missing, or type is not 'layers'"))
        elif not isinstance(rootfs.get("diff_ids"), list):
            problems.append(Problem(f"{where}.rootfs.diff_ids", "missing or not a list"))
        else:
            for i, value in enumerate(rootfs["diff_ids"]):
                if isinstance(value, str) and _DIGEST.fullmatch(value):
                    diff_ids.append(value)
                else:
                    problems.append(
                        Problem(f"{where}.rootfs.diff_ids[{i}]", f"not a sha256 digest: {value!r}")
                    )
        config = data.get("config") or {}
        if not isinstance(config, dict):
            problems.append(Problem(f"{where}.config", "not an object"))
        elif not isinstance(config.get("Env") or [], list):
            problems.append(Problem(f"{where}.config.Env", "not a list"))
        history = data.get("history") or []
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            problems.append(Problem(f"{where}.history", "not a list of objects"))
        if problems:
            raise ImageInputError(f"invalid image config at {where}", problems=problems)
        known = {"architecture", "os", "variant", "created", "config", "rootfs", "history"}
        return cls(
            architecture=data["architecture"],
            os=data["os"],
            diff_ids=tuple(diff_ids),
            config=dict(config),
            history=tuple(history),
            created=data.get("created") if isinstance(data.get("created"), str) else None,
            variant=data.get("variant") if isinstance(data.get("variant"), str) else None,
            extra={k: v for k, v in data.items() if k not in known},
        )

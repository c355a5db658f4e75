"""The small shared vocabulary of OCI images: media types, descriptors, references, digests.

Everything that reads or writes images (:mod:`envship.layer`, :mod:`envship.ocilayout`,
:mod:`envship.registry`, :mod:`envship.image`) speaks in these types, so a descriptor read
from a registry can be written into a layout unchanged. See the OCI image spec
(descriptor.md, image-layout.md) and the distribution spec (reference grammar).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ImageError, Problem

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
    "Descriptor",
    "Reference",
    "check_digest",
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

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def sha256_digest(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(value: object, where: str = "digest") -> str:
    """Return ``value`` if it is a sha256 digest; only sha256 is produced or accepted."""
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise ImageError(
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
            raise ImageError(f"{where}: not an object", problems=[Problem(where, "not an object")])
        media_type = data.get("mediaType")
        if not isinstance(media_type, str):
            problems.append(Problem(f"{where}.mediaType", "missing or not a string"))
        digest = data.get("digest")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
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
            raise ImageError(f"invalid descriptor at {where}", problems=problems)
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
DOCKER_HUB = "registry-1.docker.io"


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed image reference, ``[host[:port]/]repo[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
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
            if not _TAG.match(tag):
                raise ImageError(f"invalid tag {tag!r} in image reference {text!r}")
        first, _, remainder = rest.partition("/")
        if remainder and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, remainder
        else:
            registry, repository = DOCKER_HUB, rest
            if "/" not in repository:
                repository = f"library/{repository}"
        if not _REPOSITORY.match(repository):
            raise ImageError(
                f"invalid repository {repository!r} in image reference {text!r}",
                hint="repository names are lowercase letters, digits and . _ - separated by /",
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

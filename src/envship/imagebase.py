"""What a base image is, read from its layers without running it.

An image build must install wheels that the base's interpreter can load, so before any
layer is written envship finds the base's Python (path, version), architecture and glibc,
and picks the lock target those facts fit, with the same rules :mod:`envship.host` uses
for a real machine. Nothing is executed: the facts come from file names, symlinks and the
version strings compiled into the interpreter and libc (a build may run on a laptop of
another architecture, or with no container engine at all).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import write_atomic
from .errors import ImageError, Problem, TargetError, UnsupportedBaseError
from .host import HostInfo, match_target, mismatches
from .layerview import LayerView, view_of
from .lockfile import LockFile
from .ocilayout import LayoutImage
from .targets import Target

__all__ = ["BaseFacts", "check_image_target", "match_base", "probe_base", "probe_image"]

# Where images keep their Python, most specific first: python.org-style builds
# (the official python images) in /usr/local, distributions in /usr, conda in /opt.
_PYTHON_CANDIDATES = (
    "usr/local/bin/python3",
    "usr/bin/python3",
    "opt/conda/bin/python3",
    "usr/local/bin/python",
    "usr/bin/python",
)
_PYTHON_NAME = re.compile(r"python(\d+)\.(\d+)$")
_GOARCH = {"amd64": "x86_64", "arm64": "aarch64"}
_LIBC_DIRS = ("lib", "lib64", "usr/lib", "usr/lib64")
_TRIPLETS = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}
# glibc's libc.so.6 carries its banner: "GNU C Library (Debian GLIBC 2.36-9) stable
# release version 2.36."; older releases say "release version 2.17, by Roland McGrath".
_GLIBC_BANNER = re.compile(rb"GNU C Library[^\n\0]*?release version (\d+\.\d+)")


@dataclass(frozen=True, slots=True)
class BaseFacts:
    """A base image's interpreter and platform, as far as choosing a target goes."""

    python: str  # the interpreter's real path in the image, "/usr/bin/python3.11"
    python_home: str  # its folder, pyvenv.cfg's ``home``
    version: str  # "3.11"
    version_full: str  # "3.11.2", or "3.11" when the binary does not say
    machine: str  # x86_64, aarch64
    glibc: str | None
    cuda: bool  # CUDA libraries present: a cuda variant can run on it

    def host_info(self) -> HostInfo:
        return HostInfo(
            executable=self.python,
            python=self.version,
            python_full=self.version_full,
            implementation="cpython",
            sys_platform="linux",
            machine=self.machine,
            glibc=self.glibc,
            prefix="/usr",
            base_prefix="/usr",
            purelib="",
            gpu=self.cuda,
        )

    def describe(self) -> str:
        glibc = f"glibc {self.glibc}" if self.glibc else "no glibc"
        return f"linux-{self.machine}, CPython {self.version_full} at {self.python}, {glibc}"

    def to_json(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "version": self.version_full,
            "machine": self.machine,
            "glibc": self.glibc,
            "cuda": self.cuda,
        }


def _find_python(view: LayerView, where: str) -> tuple[str, str, str]:
    """(real path, major, minor) of the base's python3, following symlinks."""
    for candidate in _PYTHON_CANDIDATES:
        if view.get(candidate) is None:
            continue
        try:
            real = view.resolve(candidate)
        except ImageError:
            continue  # a dangling link: keep looking
        info = view.get(real)
        match = _PYTHON_NAME.search(real.rsplit("/", 1)[-1])
        if info is not None and info.kind in ("file", "hardlink") and match:
            return real, match.group(1), match.group(2)
    raise UnsupportedBaseError(
        f"the base image {where} has no Python 3 interpreter",
        problems=[Problem(where, f"none of /{', /'.join(_PYTHON_CANDIDATES)} is a pythonX.Y")],
        hint="use a base image with CPython of a version the lock targets "
        "(for Debian: apt-get install python3 python3-venv)",
    )


def _full_version(blob: bytes, major: str, minor: str) -> str:
    # sys.version begins "3.11.2 (main, ...": the interpreter (or its libpython) holds it.
    found = re.search(rb"\b%s\.%s\.(\d+)[^\d.]" % (major.encode(), minor.encode()), blob)
    return f"{major}.{minor}.{found.group(1).decode()}" if found else f"{major}.{minor}"


def _libc_paths(view: LayerView, machine: str) -> list[str]:
    triplet = _TRIPLETS.get(machine, "")
    candidates = [f"{d}/{triplet}/libc.so.6" for d in _LIBC_DIRS]
    candidates += [f"{d}/libc.so.6" for d in _LIBC_DIRS]
    return [p for p in candidates if view.get(p) is not None]


def probe_base(view: LayerView, config: Mapping[str, Any], *, where: str) -> BaseFacts:
    """Read the facts of the image whose file system is ``view`` and config ``config``."""
    arch = str(config.get("architecture", ""))
    machine = _GOARCH.get(arch, arch)
    if str(config.get("os", "linux")) != "linux" or machine not in _TRIPLETS:
        raise UnsupportedBaseError(
            f"the base image {where} is {config.get('os')}/{arch}, not linux/amd64 or linux/arm64",
            hint="envship builds Linux x86_64 and aarch64 images",
        )
    real, major, minor = _find_python(view, where)
    libpython = f"usr/lib/{_TRIPLETS[machine]}/libpython{major}.{minor}.so.1.0"
    pythons = [real] + ([libpython] if view.get(libpython) is not None else [])
    libcs = _libc_paths(view, machine)
    # One pass over the layers for every file the facts come from.
    contents = view.read_many([*pythons, *libcs])
    version_full = f"{major}.{minor}"
    for path in pythons:
        version_full = _full_version(contents[path], major, minor)
        if version_full.count(".") == 2:
            break
    glibc = None
    for path in libcs:
        found = _GLIBC_BANNER.search(contents[path])
        if found:
            glibc = found.group(1).decode()
            break
    cuda = any(view.get(p) is not None for p in ("usr/local/cuda", "usr/local/cuda/lib64"))
    return BaseFacts(
        python="/" + real,
        python_home="/" + real.rsplit("/", 1)[0],
        version=f"{major}.{minor}",
        version_full=version_full,
        machine=machine,
        glibc=glibc,
        cuda=cuda,
    )


def probe_image(
    image: LayoutImage, *, where: str, cache: Path | None = None, climb: bool = False
) -> BaseFacts:
    """:func:`probe_base` for a whole image; with ``cache`` (a folder), the facts are kept
    there by manifest digest, since reading a large base takes seconds and never changes.
    ``climb``: read links that climb above the root as a runtime does (``verify --image``),
    where building refuses the image."""
    cached = cache / f"{image.descriptor.digest.removeprefix('sha256:')}.json" if cache else None
    if cached is not None:
        try:
            data = json.loads(cached.read_text(encoding="utf-8"))
            return BaseFacts(**{k: data[k] for k in BaseFacts.__slots__})
        except (OSError, ValueError, KeyError, TypeError):
            pass
    facts = probe_base(view_of(image.layer_paths, climb=climb), image.config.to_json(), where=where)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cached, json.dumps({k: getattr(facts, k) for k in BaseFacts.__slots__}))
        except OSError:
            pass  # a read-only store: probe again next time
    return facts


def match_base(lock: LockFile | Iterable[Target], facts: BaseFacts, *, where: str) -> Target:
    """The lock target the base runs, or an ImageError listing why each target does not."""
    try:
        return match_target(lock, facts.host_info(), subject="the base image")
    except TargetError as exc:
        raise UnsupportedBaseError(
            f"the base image {where} ({facts.describe()}) is none of the lock's targets",
            problems=exc.problems,
            hint="pick a base image whose Python, architecture and glibc match a target, "
            "or add a target for this base to the spec and re-lock",
        ) from None


def check_image_target(target: Target, facts: BaseFacts, *, where: str) -> None:
    """Refuse (:class:`UnsupportedBaseError`, exit 2, as ``envship verify`` refuses a venv
    no lock target fits) an image whose own Python, architecture or glibc, read from its
    layers, cannot run ``target``: the one its environment says it was built for. Its
    files could match the lock's and still not load on that interpreter."""
    reasons = mismatches(target, facts.host_info(), subject="the image")
    if reasons:
        raise UnsupportedBaseError(
            f"the image {where} ({facts.describe()}) cannot run the lock's target "
            f"{target.name}, which its environment was built for",
            problems=[Problem(target.name, r) for r in reasons],
            hint="verify the image against the lock it was built from",
        )

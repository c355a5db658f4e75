"""Looking into an image without running it: its layers and what they hold, and whether
its environment equals a lock.

Both read the layer tars only. ``inspect`` lists every layer with its sizes and the Python
distributions it adds (envship's layers say so in an annotation; any other layer is
scanned for ``*.dist-info`` folders, and the answer is cached in the store by layer
digest). ``verify_image`` first checks that the image's own Python, architecture and glibc (read
from its layers, :mod:`envship.imagebase`) can run the lock target its environment names,
then unpacks what lands in the environment's folder (safely, whiteouts applied, entries
placed where a runtime puts them: through the links the layers made, ``..`` stopping at
the root, :func:`envship.layerfs.read_layer`) into a temporary directory and runs the
same checks as ``envship verify``, reporting paths as they are in the image. FIFOs and
device nodes are never made: each one the image still holds is a difference named for
what it is ("a FIFO"; "now a FIFO" for a file the build wrote). What envship wrote
outside the environment is checked too: the kernelspec
files of its marker layer must be in the image as built (a later layer that rewrites
``kernel.json`` to start another Python is ``changed``), and the config must run the
environment (``PATH`` starting with its ``bin``, ``VIRTUAL_ENV`` naming it: ``config``).
The base image's own files are not compared.

A derived image is someone else's layers on top of envship's, so nothing the top layers
say is taken on trust. The install marker verify holds the environment to (its target,
its groups, the files and links the venv's creation wrote) is the one in the layer the
build wrote it in; what the image shows at its path now is compared with that, and a
marker rewritten, removed or damaged by a later layer is a difference on that path,
never a new expectation nor a refusal. The unpacked tree is read as the image, never as
this machine: a folder on the way to the environment that is a link now is a
difference, not followed, and every link in the tree resolves inside it
(:func:`envship._imageoutside.contain_links`), so a link to a copy of the environment on
this machine vouches for nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from packaging.utils import canonicalize_name

from ._atomic import write_atomic
from ._bytecode import BytecodeCompiler, find_compiler
from ._difference import KINDS, Difference
from ._environment import InstalledEnvironment
from ._imageoutside import (
    CONFIG_ENV,
    KERNELSPEC,
    MARKER_NOTE,
    ancestors,
    as_built,
    blocked_way,
    built_layer,
    config_differences,
    contain_links,
    kernels_folder,
    kernelspec_differences,
    parse_marker,
    put_marker,
)
from ._strays import VENV_CREATION
from .errors import ImageInputError, TargetError
from .image import BUILT_BY, DISTRIBUTIONS, LABEL_PREFIX
from .imagebase import check_image_target, probe_image
from .imageio import ImageSource
from .install import MARKER_NAME
from .layerfs import Special, iter_layer, read_layer
from .layerview import LayerView
from .lockfile import LockFile
from .store import Store
from .verify import VerifyReport, verify

__all__ = ["CONFIG_ENV", "KERNELSPEC", "ImageInfo", "LayerInfo", "inspect_image", "verify_image"]

# <name>-<version>.dist-info/METADATA anywhere in a site-packages or dist-packages folder.
_DIST_INFO = re.compile(r"(?:site|dist)-packages/([^/]+)-([^/-]+)\.dist-info/METADATA$")


@dataclass(frozen=True, slots=True)
class LayerInfo:
    digest: str
    size: int  # of the blob: compressed or not, as ``compressed`` says
    media_type: str
    created_by: str
    distributions: tuple[str, ...]
    compressed: bool = True  # gzip or zstd, sniffed from the blob (docker save's are not)
    diff_id: str = ""  # the uncompressed layer's digest, from the config's rootfs

    @property
    def label(self) -> str:
        """What ``image build`` calls the layer ("numpy 2.3.1", "environment"; "base"
        for one it did not write), as its ``--json`` layers say."""
        built = self.created_by.removeprefix(BUILT_BY)
        return built if built != self.created_by else "base"

    def to_json(self) -> dict[str, Any]:
        # The keys image build gives its layers (digest, size, diff_id, label,
        # distributions), and what only a read of the image tells.
        return {
            "digest": self.digest,
            "size": self.size,
            "diff_id": self.diff_id,
            "label": self.label,
            "compressed": self.compressed,
            "media_type": self.media_type,
            "created_by": self.created_by,
            "distributions": list(self.distributions),
        }


@dataclass(frozen=True, slots=True)
class ImageInfo:
    name: str
    digest: str
    platform: str
    labels: dict[str, str]
    layers: tuple[LayerInfo, ...]

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def compression(self) -> str:
        """What :attr:`size` measures: "compressed", "uncompressed" (``docker save``
        writes plain tars) or "partly compressed" layers."""
        packed = {layer.compressed for layer in self.layers}
        if packed == {False}:
            return "uncompressed"
        return "partly compressed" if len(packed) > 1 else "compressed"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "platform": self.platform,
            "size": self.size,
            "compression": self.compression,
            "labels": self.labels,
            "layers": [layer.to_json() for layer in self.layers],
        }


def _scan(path: Path, digest: str, cache: Path) -> tuple[str, ...]:
    cached = cache / f"{digest.removeprefix('sha256:')}.json"
    try:
        return tuple(json.loads(cached.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    found = sorted(
        {
            f"{m.group(1).replace('_', '-').lower()}=={m.group(2)}"
            for info, _ in iter_layer(path, layer=digest)
            if (m := _DIST_INFO.search(info.name))
        }
    )
    try:
        cache.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, json.dumps(found))
    except OSError:
        pass  # a read-only (shared) store: scan again next time, as probe_image does
    return tuple(found)


def _compressed(path: Path) -> bool:
    with path.open("rb") as f:
        magic = f.read(4)
    return magic.startswith(b"\x1f\x8b") or magic == b"\x28\xb5\x2f\xfd"  # gzip, zstd


def inspect_image(source: ImageSource, store: Store) -> ImageInfo:
    """The layers of ``source`` with their sizes and the distributions each adds."""
    image = source.image
    history = [h for h in image.config.history if not h.get("empty_layer")]
    cache = store.root / "images" / "layer-dists"
    layers = []
    for i, (descriptor, path) in enumerate(
        zip(image.manifest.layers, image.layer_paths, strict=True)
    ):
        note = (descriptor.annotations or {}).get(DISTRIBUTIONS)
        dists = tuple(note.split()) if note is not None else _scan(path, descriptor.digest, cache)
        # Histories may be shorter than the layer list; the newest entries are the top's.
        h = i - (len(image.manifest.layers) - len(history))
        created_by = str(history[h].get("created_by", "")) if 0 <= h < len(history) else ""
        layers.append(
            LayerInfo(
                descriptor.digest,
                descriptor.size,
                descriptor.media_type,
                created_by,
                dists,
                _compressed(path),
                image.config.diff_ids[i] if i < len(image.config.diff_ids) else "",
            )
        )
    labels = {str(k): str(v) for k, v in (image.config.config.get("Labels") or {}).items()}
    return ImageInfo(
        source.name, image.descriptor.digest, image.config.platform, labels, tuple(layers)
    )


def verify_image(
    lock: LockFile,
    source: ImageSource,
    *,
    groups: Collection[str] | None = None,
    full: bool = True,
    ignore: Collection[str] = (),
    bytecode: bool = False,
    store: Store | None = None,
) -> VerifyReport:
    """Check the environment inside ``source`` against ``lock`` by reading its layers.

    The image's own Python, architecture and glibc must fit the lock target its marker
    names (:class:`UnsupportedBaseError` otherwise, exit 2 as for a venv no target fits);
    with ``store``, those facts are cached there by manifest digest as builds cache them.
    ``bytecode`` also compares each cached ``.pyc`` with its source, compiled by a CPython
    of the image's minor version on this machine (:func:`envship._bytecode.find_compiler`).
    ``store`` is also where the locked wheels are: each installed RECORD is held against
    its wheel's own, as for a venv (None: against the installed RECORDs alone, which the
    report's notes say). ``groups`` None: the groups the image was built with (those of
    them the lock has; a note names the others), as its marker records them.
    """
    image = source.image
    labels = image.config.config.get("Labels") or {}
    prefix = str(labels.get(f"{LABEL_PREFIX}.prefix", "")).strip("/")
    if not prefix:
        raise ImageInputError(
            f"{source.name} has no environment made by envship "
            f"(no {LABEL_PREFIX}.prefix label in its config)",
            hint="verify images built with `envship image build`",
        )
    # Every layer is read as a runtime applies it: a relative link climbing above the root
    # stops there (climb=True here, in built_layer and in the probe), where builds refuse it.
    with tempfile.TemporaryDirectory(prefix="envship-verify-image-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()

        def inside(path: str) -> bool:
            return path == prefix or path.startswith(prefix + "/")

        marker_path = f"{prefix}/{MARKER_NAME}"
        holders: list[int] = []  # the layers with an entry for the marker, bottom first
        # The folders on the way to the environment and to the kernelspec folders met so
        # far: a later layer that removes or replaces one of them removes what is below.
        above = ancestors(prefix)

        # One pass over each layer: what lands in the environment's folder and the
        # kernelspec folders (links on the way followed as a runtime follows them), and the
        # links and whiteouts that decide where; which layers touch the marker is noted.
        specials: dict[str, Special] = {}  # tree path -> the latest FIFO or device there
        views: dict[int, LayerView] = {}  # layers 0..i merged, for hard links (lower)
        for i, path in enumerate(image.layer_paths):

            def wanted(name: str, i: int = i) -> bool:
                if name == marker_path and i not in holders:
                    holders.append(i)
                if (kernels := kernels_folder(name)) is not None:
                    above.update(ancestors(kernels))
                return inside(name) or kernels is not None or name in above

            def lower(target: str, write: Callable[[IO[bytes]], None], i: int = i) -> bool:
                # A hard link's target outside what is read: its bytes, streamed from the
                # layers up to this one (a target comes before its link in a tar). The
                # view reads every layer's headers: made once per layer, not per link.
                if i not in views:
                    views[i] = LayerView(list(image.layer_paths[: i + 1]), climb=True)
                return views[i].stream(target, write)

            layer = f"{source.name} layer {i}"
            for special in read_layer(path, root, layer=layer, only=wanted, missing=lower):
                specials[special.path] = special
        built = built_layer(source, holders, marker_path)
        if built is None:
            raise ImageInputError(
                f"{source.name}: no layer holds the environment's marker /{marker_path}",
                hint="verify images built with `envship image build`",
            )
        # The marker as built is the record: what a later layer made of it is compared
        # with it below, never read as the expectation (groups, the venv's own files).
        marker = parse_marker(built.marker, f"{source.name} layer {built.index}: /{marker_path}")
        name = str(marker["target"]["name"])
        try:
            target = lock.target(name)
        except TargetError as exc:
            raise TargetError(
                f"{source.name} holds an environment for target {name!r}, which "
                f"{lock.path} does not have",
                problems=exc.problems,
                hint="verify the image against the lock it was built from",
            ) from None
        outside = [
            *kernelspec_differences(root, built.kernelspec),
            *config_differences(image.config, "/" + prefix),
        ]
        cache = store.root / "images" / "probes" if store is not None else None
        facts = probe_image(image, where=source.name, cache=cache, climb=True)
        check_image_target(target, facts, where=source.name)
        # The groups it was built with (see the module docstring); one this lock lacks
        # (an image of another lock) has nothing to expect, and a note says so.
        built_groups = [str(g) for g in marker["groups"]]
        chosen_groups = groups
        if groups is None:
            chosen_groups = tuple(g for g in built_groups if g in lock.groups)
        unknown = [g for g in built_groups if g not in lock.groups] if groups is None else []
        compiler: BytecodeCompiler | bool = False
        if bytecode:
            # The image's bin/python names the image's interpreter; one of its version on
            # this machine compiles the sources instead.
            compiler = find_compiler(
                target.python,
                facts.version_full,
                where=source.name,
                otherwise="verify without --bytecode",
            )
        blocked = blocked_way(root, prefix)
        if blocked is None:
            found = as_built(root, marker_path, built.marker, VENV_CREATION, mode=False)
            if found is not None:
                outside.append(replace(found, note=MARKER_NOTE.format(built.index)))
            venv = root / prefix
        else:
            # Nothing below the link is read; the lock's distributions are counted on an
            # empty venv holding the marker as built, and its differences are not the image's.
            outside.append(blocked)
            venv = Path(tmp) / "not-compared" / prefix
        venv.mkdir(parents=True, exist_ok=True)  # gone whole: everything in it is missing
        links = contain_links(root)
        put_marker(venv / MARKER_NAME, marker, links, prefix)
        standing = _standing(root, specials)
        site = venv / "lib" / f"python{facts.version}" / "site-packages"
        report = verify(
            lock,
            # The venv the build wrote, named as it is: no pyvenv.cfg of the image's is read
            # to find it (one that is gone or changed is a difference, not a refusal).
            InstalledEnvironment(venv, (site,), facts.version, venv=venv),
            target=target,
            groups=chosen_groups,
            full=full,
            ignore=ignore,
            bytecode=compiler,
            # The venv's bin/python names the image's interpreter path: running it here
            # would run a host binary (or none); the image's Python was checked above.
            interpreter=False,
            store=store,
            prefix=Path("/", prefix),  # where it runs: what its scripts' first lines name
        )
        if blocked is not None:
            report = replace(
                report,
                differences=(),
                checked_files=0,
                notes=(f"/{prefix} was not compared: {blocked.path} is {blocked.actual}",),
            )
    # Report paths as they are in the image, not in the temporary folder (gone by now):
    # in a difference's path and in its texts (the byte-code check names the source).
    tmp_root = str(root)

    def image_path(path: Path | str) -> str:
        text = str(path)
        return text[len(tmp_root) :] if text.startswith(tmp_root) else text

    def in_text(text: str | None) -> str | None:
        return links.told(text).replace(tmp_root, "") if text is not None else None

    env = report.environment
    in_image = replace(
        env,
        root=Path(f"{source.name}:/{prefix}"),
        site_packages=(Path("/", prefix, "lib", f"python{facts.version}", "site-packages"),),
        interpreter=None,
    )
    differences = [
        replace(
            d,
            path=image_path(d.path),
            expected=in_text(d.expected),
            actual=in_text(d.actual),
            note=in_text(d.note),
        )
        for d in report.differences
    ]
    differences.extend(outside)  # named with image paths already
    differences = _specials_named(differences, standing, prefix if blocked is None else None)
    differences.sort(key=lambda d: (KINDS.index(d.kind), canonicalize_name(d.name), d.path))
    notes = tuple(in_text(n) or n for n in report.notes)
    if unknown:
        notes += (
            f"{source.name} was built with dependency group(s) {', '.join(unknown)}, which "
            f"{lock.path} does not have: their distributions are extra here",
        )
    # A layer cannot be finished in place: the image is built again (and never marked
    # incomplete by envship, so someone else's layer put the mark there).
    remedy = (
        f"build the image again with `envship image build --lock {shlex.quote(str(lock.path))}`"
        if report.remedy is not None
        else None
    )
    return replace(
        report,
        environment=in_image,
        differences=tuple(differences),
        checked_files=report.checked_files + len(built.kernelspec) + (blocked is None),
        notes=notes,
        remedy=remedy,
        image=source.name,
    )


def _standing(root: Path, specials: dict[str, Special]) -> dict[str, str]:
    """Image path -> kind of each FIFO or device node still in the image: the empty file
    that stands in for it (:func:`envship.layerfs.read_layer`) is still there, not
    removed or replaced by a later layer (a replacement is a new file: another inode)."""
    found = {}
    for rel, special in specials.items():
        try:
            st = os.lstat(root / rel)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_ino == special.inode:
            found[f"/{rel}"] = special.kind
    return found


def _specials_named(
    differences: list[Difference], standing: dict[str, str], prefix: str | None
) -> list[Difference]:
    """The differences with each FIFO or device node named as what it is. verify read the
    empty file standing in for it, so it is already a difference where one is (added to
    a package, unowned, or a changed file of a RECORD: "now a FIFO"); one verify passes
    over (where nothing is compared) is ``added`` here. ``prefix`` None: the environment
    was not compared."""
    named = []
    seen = set()
    for d in differences:
        kind = standing.get(d.path)
        if kind is not None:
            seen.add(d.path)
            d = replace(d, actual=f"now {kind}" if d.kind == "changed" and d.expected else kind)
        named.append(d)
    for path, kind in standing.items():
        under = prefix is not None and path.startswith(f"/{prefix}/")
        if path not in seen and (under or kernels_folder(path.lstrip("/")) is not None):
            named.append(
                Difference("added", VENV_CREATION if under else KERNELSPEC, path, None, kind)
            )
    return named

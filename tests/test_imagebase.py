"""``envship.imagebase``: a base image's Python, architecture and glibc, read from layers.

The bookworm base's facts are checked against what its own interpreter says when it runs
in Docker. Other bases are small real layers made here: the interpreter files carry the
version strings a real build compiles in, the C libraries glibc's banner.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from envship.errors import ImageError, UnsupportedBaseError
from envship.imagebase import BaseFacts, check_image_target, match_base, probe_base, probe_image
from envship.layer import LayerWriter
from envship.layerview import LayerView
from envship.lockfile import LockFile
from envship.targets import Target
from imagelib import BaseImage, make_image
from serviceslib import DockerEngine
from test_image import (
    PLATFORM,
    Setup,
    _no_source_date_epoch,
    bookworm_facts,
    build,
    docker_run,
    image_target,
    layout_image,
    make_setup,
    sample,
    sample_loaded,
)
from test_install import write_lock

__all__ = [
    "_no_source_date_epoch",
    "bookworm_facts",
    "sample",
    "sample_loaded",
]  # fixtures, shared with test_image

MACHINE = PLATFORM.split("-", 1)[1]
OTHER = "aarch64" if MACHINE == "x86_64" else "x86_64"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def python_binary(version: str) -> bytes:
    """What a CPython executable holds of its version: sys.version's opening."""
    return (
        b"\x7fELF\x02\x01\x01"
        + b"\0" * 64
        + f"{version} (main, Mar 13 2023, 12:00:00) [GCC 12.2.0]\0".encode()
    )


def glibc(version: str, *, old: bool = False) -> bytes:
    banner = (
        f"GNU C Library (GNU libc) stable release version {version}, by Roland McGrath et al.\n"
        if old
        else f"GNU C Library (Debian GLIBC {version}-9) stable release version {version}.\n"
    )
    return b"\x7fELF\x02\x01\x01" + b"\0" * 100 + banner.encode() + b"\0" * 16


def libc_path(machine: str = MACHINE) -> str:
    return f"usr/lib/{machine}-linux-gnu/libc.so.6"


def layer(tmp: Path, fill: Callable[[LayerWriter], None]) -> Path:
    with LayerWriter(tmp, mtime=0) as writer:
        fill(writer)
        blob = writer.close()
    return blob.path


def probe(
    tmp: Path, *fills: Callable[[LayerWriter], None], arch: str = "", os: str = "linux"
) -> BaseFacts:
    config = {"architecture": arch or GOARCH[MACHINE], "os": os}
    return probe_base(LayerView([layer(tmp, f) for f in fills]), config, where="test-base")


# -- the real base ---------------------------------------------------------------------------


def test_bookworm_facts_are_what_its_python_says_when_it_runs(
    bookworm_facts: BaseFacts, docker_engine: DockerEngine, sample_loaded: str
) -> None:
    assert bookworm_facts.python == "/usr/bin/python3.11"
    assert bookworm_facts.python_home == "/usr/bin"
    assert bookworm_facts.cuda is False
    code = (
        "import os, platform, sys; "
        "print(platform.python_version(), platform.machine(), os.confstr('CS_GNU_LIBC_VERSION'), "
        "os.path.realpath(sys.executable))"
    )
    # The sample image is bookworm plus layers that leave /usr alone.
    said = docker_run(docker_engine, sample_loaded, "/usr/bin/python3", "-c", code).split()
    assert said == [
        bookworm_facts.version_full,
        bookworm_facts.machine,
        "glibc",
        bookworm_facts.glibc,
        bookworm_facts.python,
    ]
    assert bookworm_facts.version == "3.11" and bookworm_facts.glibc == "2.36"


# -- other bases, made here --------------------------------------------------------------------


def python_org(w: LayerWriter) -> None:  # the official python images: /usr/local, a symlink
    w.add_symlink("usr/local/bin/python3", "python3.12")
    w.add_file("usr/local/bin/python3.12", python_binary("3.12.4"), mode=0o755)
    w.add_file(libc_path(), glibc("2.39"))


def conda_on_centos(w: LayerWriter) -> None:  # old glibc banner, lib64, absolute link
    w.add_symlink("opt/conda/bin/python3", "/opt/conda/bin/python3.10")
    w.add_file("opt/conda/bin/python3.10", python_binary("3.10.14"), mode=0o755)
    w.add_file("usr/lib64/libc.so.6", glibc("2.17", old=True))


def debian_libpython(w: LayerWriter) -> None:  # the version lives in libpython only
    w.add_symlink("usr/bin/python3", "python3.11")
    w.add_file("usr/bin/python3.11", b"\x7fELF" + b"\0" * 32, mode=0o755)
    w.add_file(f"usr/lib/{MACHINE}-linux-gnu/libpython3.11.so.1.0", python_binary("3.11.9"))
    w.add_file(libc_path(), glibc("2.36"))


def no_version_string(w: LayerWriter) -> None:
    w.add_file("usr/bin/python3.13", b"\x7fELF" + b"\0" * 32, mode=0o755)
    w.add_symlink("usr/bin/python3", "python3.13")
    w.add_file(libc_path(), glibc("2.40"))


def alpine(w: LayerWriter) -> None:  # musl: no glibc at all
    w.add_symlink("usr/bin/python3", "python3.12")
    w.add_file("usr/bin/python3.12", python_binary("3.12.1"), mode=0o755)
    w.add_file("lib/ld-musl-x86_64.so.1", b"\x7fELF musl")


def cuda(w: LayerWriter) -> None:
    python_org(w)
    w.add_dir("usr/local/cuda/lib64")


def dangling_first(w: LayerWriter) -> None:  # /usr/local's python3 points nowhere
    w.add_symlink("usr/local/bin/python3", "python3.99")
    w.add_symlink("usr/bin/python3", "python3.11")
    w.add_file("usr/bin/python3.11", python_binary("3.11.2"), mode=0o755)
    w.add_file(libc_path(), glibc("2.36"))


def merged_usr(w: LayerWriter) -> None:  # bin -> usr/bin; the C library reached by /lib
    w.add_symlink("bin", "usr/bin")
    w.add_symlink("lib", "usr/lib")
    w.add_file("usr/bin/python3.11", python_binary("3.11.4"), mode=0o755)
    w.add_symlink("usr/bin/python3", "python3.11")
    w.add_file(f"usr/lib/{MACHINE}-linux-gnu/libc.so.6", glibc("2.31"))


@pytest.mark.parametrize(
    ("fill", "expected"),
    [
        (python_org, ("/usr/local/bin/python3.12", "3.12", "3.12.4", "2.39", False)),
        (conda_on_centos, ("/opt/conda/bin/python3.10", "3.10", "3.10.14", "2.17", False)),
        (debian_libpython, ("/usr/bin/python3.11", "3.11", "3.11.9", "2.36", False)),
        (no_version_string, ("/usr/bin/python3.13", "3.13", "3.13", "2.40", False)),
        (alpine, ("/usr/bin/python3.12", "3.12", "3.12.1", None, False)),
        (cuda, ("/usr/local/bin/python3.12", "3.12", "3.12.4", "2.39", True)),
        (dangling_first, ("/usr/bin/python3.11", "3.11", "3.11.2", "2.36", False)),
        (merged_usr, ("/usr/bin/python3.11", "3.11", "3.11.4", "2.31", False)),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_probe_finds_python_glibc_and_cuda(
    tmp_path: Path,
    fill: Callable[[LayerWriter], None],
    expected: tuple[str, str, str, str | None, bool],
) -> None:
    facts = probe(tmp_path, fill)
    python, version, full, libc, has_cuda = expected
    assert facts == BaseFacts(
        python=python,
        python_home=python.rsplit("/", 1)[0],
        version=version,
        version_full=full,
        machine=MACHINE,
        glibc=libc,
        cuda=has_cuda,
    )


def test_probe_reads_the_architecture_from_the_config(tmp_path: Path) -> None:
    def other_arch(w: LayerWriter) -> None:
        w.add_symlink("usr/bin/python3", "python3.11")
        w.add_file("usr/bin/python3.11", python_binary("3.11.2"), mode=0o755)
        w.add_file(libc_path(OTHER), glibc("2.36"))

    facts = probe(tmp_path, other_arch, arch=GOARCH[OTHER])
    assert (facts.machine, facts.glibc) == (OTHER, "2.36")


def test_python_removed_by_an_upper_layer_is_not_found(tmp_path: Path) -> None:
    def remove(w: LayerWriter) -> None:
        w.add_whiteout("usr/local/bin/python3.12")

    with pytest.raises(ImageError, match="has no Python 3 interpreter"):
        probe(tmp_path, python_org, remove)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"architecture": "amd64", "os": "windows"}, "windows/amd64, not linux/amd64"),
        ({"architecture": "s390x", "os": "linux"}, "linux/s390x, not linux/amd64"),
    ],
    ids=["windows", "s390x"],
)
def test_other_systems_are_refused(tmp_path: Path, config: dict[str, str], match: str) -> None:
    view = LayerView([layer(tmp_path, python_org)])
    with pytest.raises(UnsupportedBaseError, match=match) as caught:
        probe_base(view, config, where="test-base")
    assert caught.value.exit_code == 2  # a base that cannot carry it: bad input


def test_unversioned_python_is_no_python(tmp_path: Path) -> None:
    def bare(w: LayerWriter) -> None:
        w.add_file("usr/bin/python3", python_binary("3.11.2"), mode=0o755)

    with pytest.raises(ImageError, match="has no Python 3 interpreter") as caught:
        probe(tmp_path, bare)
    assert "is a pythonX.Y" in caught.value.problems[0].message


def test_base_without_python_is_refused_clearly(no_python_layout: BaseImage) -> None:
    with pytest.raises(ImageError) as caught:
        probe_image(layout_image(no_python_layout), where=no_python_layout.ref)
    error = caught.value
    assert error.message == f"the base image {no_python_layout.ref} has no Python 3 interpreter"
    assert error.problems[0].where == no_python_layout.ref
    assert "/usr/bin/python3" in error.problems[0].message
    assert error.hint and "apt-get install python3 python3-venv" in error.hint


def test_probe_cache_is_kept_by_manifest_digest(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base", python_org, tag="py")
    cache = tmp_path / "probes"
    facts = probe_image(layout_image(base), where="py", cache=cache)
    entry = cache / f"{base.descriptor.digest.removeprefix('sha256:')}.json"
    assert json.loads(entry.read_text())["python"] == "/usr/local/bin/python3.12"
    # The entry answers from now on (the facts of a digest never change) ...
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "glibc": "9.99"}))
    assert probe_image(layout_image(base), where="py", cache=cache).glibc == "9.99"
    # ... unless it cannot be read: then the layers are probed again.
    entry.write_text("{not json")
    assert probe_image(layout_image(base), where="py", cache=cache) == facts
    assert json.loads(entry.read_text())["glibc"] == "2.39"


# -- matching the lock's targets -----------------------------------------------------------------


def lock_with(tmp_path: Path, sample_setup: Setup, *targets: dict[str, str]) -> LockFile:
    wheels = [sample_setup.wheels[k] for k in ("alpha", "beta")]
    return write_lock(tmp_path / "pylock.toml", wheels, targets=list(targets))


def test_base_fits_the_target_of_its_architecture(
    tmp_path: Path, bookworm_facts: BaseFacts, sample: tuple[Setup, object]
) -> None:
    other = f"linux-{OTHER}"
    lock = lock_with(
        tmp_path,
        sample[0],
        image_target(other, platform=other),
        image_target(),
        image_target("old", glibc="2.17"),
    )
    # Both fitting targets run; the higher glibc level wins (newer wheels may need it).
    assert match_base(lock, bookworm_facts, where="bookworm").name == PLATFORM


# The reasons speak of what the facts are of: "{it}" is the base image or the image.
MISFITS = [
    (
        [image_target(python="3.12")],
        [(PLATFORM, "Python 3.12 needed, {it} has 3.11")],
    ),
    (
        [image_target(glibc="2.38"), image_target("gpu", variant="cuda")],
        [
            (PLATFORM, "glibc 2.38 needed, {it} has 2.36"),
            ("gpu", "cuda variant but {it} has no CUDA"),
        ],
    ),
    (
        [image_target(f"linux-{OTHER}", platform=f"linux-{OTHER}", python="3.12")],
        [
            (f"linux-{OTHER}", f"{OTHER} needed, {{it}} is {MACHINE}"),
            (f"linux-{OTHER}", "Python 3.12 needed, {it} has 3.11"),
        ],
    ),
]
MISFIT_IDS = ["python", "glibc-and-gpu", "architecture"]


@pytest.mark.parametrize(
    ("targets", "reasons"),
    MISFITS,
    ids=MISFIT_IDS,
)
def test_base_that_is_no_target_is_refused_with_every_reason(
    tmp_path: Path,
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
    sample: tuple[Setup, object],
    targets: list[dict[str, str]],
    reasons: list[tuple[str, str]],
) -> None:
    lock = lock_with(tmp_path, sample[0], *targets)
    setup = make_setup(
        tmp_path / "build", ["alpha", "beta"], wheels=sample[0].wheels, targets=targets
    )
    for attempt in (
        lambda: match_base(lock, bookworm_facts, where="bookworm"),
        lambda: build(setup, bookworm_layout, bookworm_facts),
    ):
        with pytest.raises(ImageError) as caught:
            attempt()
        error = caught.value
        assert "is none of the lock's targets" in error.message
        assert bookworm_facts.describe() in error.message
        assert [(p.where, p.message) for p in error.problems] == [
            (where, message.format(it="the base image")) for where, message in reasons
        ]
        assert error.hint and "add a target for this base" in error.hint
    assert not (setup.store.root / "oci").exists()  # refused before any layer was written


def test_cuda_base_prefers_the_cuda_target(tmp_path: Path, sample: tuple[Setup, object]) -> None:
    facts = probe(tmp_path, cuda)
    lock = lock_with(
        tmp_path,
        sample[0],
        image_target("cpu", python="3.12"),
        image_target("gpu", python="3.12", variant="cuda"),
    )
    assert match_base(lock, facts, where="cuda").name == "gpu"


def as_target(raw: dict[str, str]) -> Target:
    """A lock's ``[[tool.envship.targets]]`` table as the lock reads it."""
    fields = {k: v for k, v in raw.items() if k not in ("name", "platform")}
    return Target.create(raw["name"], platform_id=raw["platform"], **fields)


@pytest.mark.parametrize(("targets", "reasons"), MISFITS, ids=MISFIT_IDS)
def test_an_image_whose_own_facts_do_not_fit_its_target_is_refused(
    bookworm_facts: BaseFacts, targets: list[dict[str, str]], reasons: list[tuple[str, str]]
) -> None:
    """What ``verify --image`` checks: the target the image's environment names must run
    on the interpreter, architecture and C library the image really has."""
    for raw in targets:
        target = as_target(raw)
        with pytest.raises(UnsupportedBaseError) as caught:
            check_image_target(target, bookworm_facts, where="img")
        error = caught.value
        assert error.exit_code == 2
        assert error.message == (
            f"the image img ({bookworm_facts.describe()}) cannot run the lock's target "
            f"{target.name}, which its environment was built for"
        )
        assert [(p.where, p.message) for p in error.problems] == [
            (where, message.format(it="the image"))
            for where, message in reasons
            if where == target.name
        ]


def test_an_image_whose_own_facts_fit_its_target_passes(bookworm_facts: BaseFacts) -> None:
    check_image_target(as_target(image_target()), bookworm_facts, where="img")

"""Where an image's environment goes in its base: ``envship._imageprefix`` through
``build_image`` and the CLI, on bases with conda-style folders, symbolic links, files in
the way and an environment already in place; the images run in the real Docker engine.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from envship.cli.main import main
from envship.errors import ImageInputError, UnsupportedBaseError
from envship.image import BuiltImage, build_image
from envship.imagebase import BaseFacts, probe_image
from envship.layer import LayerWriter
from envship.layerview import LayerView
from envship.oci import OCI_CONFIG, OCI_MANIFEST, ImageManifest
from envship.ocilayout import OciLayout
from imagelib import IMAGE_MTIME, BaseImage
from indexlib import build_wheel
from serviceslib import DockerEngine
from test_image import (
    Setup,
    _no_source_date_epoch,
    bookworm_facts,
    build,
    docker_run,
    env_layers,
    layout_image,
    load,
    make_setup,
    slim_layout,
    slim_sample,
)
from test_install import build_wheels

# The fixtures imported from test_image are shared with it (built once per session).
__all__ = ["_no_source_date_epoch", "bookworm_facts", "slim_layout", "slim_sample"]

KERNELS = "usr/local/share/jupyter/kernels"


def stacked(
    base: BaseImage, dest: Path, fill: Callable[[LayerWriter], None], *, tag: str
) -> BaseImage:
    """``base`` with one more layer, written by ``fill`` with exact modes and owners: the
    directories it names above our prefix exist only in a lower layer of the image."""
    layout = OciLayout.open(dest, create=True)
    for descriptor, path in zip(base.manifest.layers, base.layers, strict=True):
        layout.add_blob_file(
            path, descriptor.digest, descriptor.size, descriptor.media_type, link=True
        )
    with LayerWriter(dest / "blobs", mtime=IMAGE_MTIME, exact=True) as writer:
        fill(writer)
        blob = writer.close()
    layer = layout.add_blob_file(blob.path, blob.digest, blob.size, blob.media_type)
    config = replace(
        base.config,
        diff_ids=(*base.config.diff_ids, blob.diff_id),
        history=(*base.config.history, {"created_by": f"envship tests: {tag}"}),
    )
    config_desc = layout.add_blob(config.to_bytes(), OCI_CONFIG)
    manifest = ImageManifest(config_desc, (*base.manifest.layers, layer))
    descriptor = layout.add_blob(manifest.to_bytes(), OCI_MANIFEST)
    layout.tag(tag, descriptor)
    paths = tuple(layout.blob_path(d.digest) for d in manifest.layers)
    return BaseImage(layout, tag, descriptor, manifest, config, paths)


def with_kernel(folder: Path) -> Setup:
    """The sample lock plus an ``ipykernel`` wheel, so the image gets a kernelspec."""
    wheels = build_wheels(folder / "dist")
    wheels["ipykernel"] = build_wheel(folder / "dist", "ipykernel", "6.0")
    return make_setup(folder, ["alpha", "beta", "tool", "ipykernel"], wheels=wheels)


def header(view: LayerView, path: str) -> str:
    info = view.get(path)
    assert info is not None, path
    return f"{info.mode:o} {info.uid}:{info.gid}"


# -- the base's folders above the prefix keep their owners and modes ----------------------


@pytest.fixture(scope="module")
def conda_base(bookworm_layout: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> BaseImage:
    """Bookworm with a conda-style /opt/conda and a Jupyter data folder that UID 1000 owns
    (as jupyter/docker-stacks images have), in a layer of their own."""

    def fill(writer: LayerWriter) -> None:
        writer.add_dir("opt", 0o755)
        writer.add_dir("opt/conda", 0o2775, uid=1000, gid=100)
        writer.add_dir("usr/local/share/jupyter", 0o2775, uid=1000, gid=100)

    return stacked(bookworm_layout, tmp_path_factory.mktemp("conda") / "layout", fill, tag="c")


def test_folders_above_the_prefix_stay_the_bases_for_uid_1000(
    tmp_path: Path,
    conda_base: BaseImage,
    bookworm_facts: BaseFacts,
    docker_engine: DockerEngine,
) -> None:
    setup = with_kernel(tmp_path)
    prefix = "/opt/conda/envs/ds"
    built, _ = build(setup, conda_base, bookworm_facts, prefix=prefix, kernel_name="ds")
    assert built.prefix == prefix and built.notes == ()
    view = LayerView(list(built.layer_paths))
    # Written again by our layers, with the base's header; created ones are 0755, 0:0.
    assert header(view, "opt/conda") == "2775 1000:100"
    assert header(view, "usr/local/share/jupyter") == "2775 1000:100"
    assert header(view, "opt/conda/envs") == "755 0:0"

    name = load(docker_engine, built, tmp_path, f"envship-tests/conda-{uuid.uuid4().hex[:10]}:1")
    try:
        script = (
            "stat -c '%a %u:%g %n' /opt/conda /usr/local/share/jupyter /opt/conda/envs && "
            "mkdir /opt/conda/pkgs /usr/local/share/jupyter/lab && "
            f"{prefix}/bin/python -c 'import alpha; print(alpha.__file__)' && "
            f"cat /{KERNELS}/ds/kernel.json"
        )
        out = docker_run(docker_engine, name, "sh", "-c", script, user="1000:100")
    finally:
        docker_engine.docker("rmi", "--no-prune", name, check=False)
    lines = out.splitlines()
    assert lines[:3] == [
        "2775 1000:100 /opt/conda",
        "2775 1000:100 /usr/local/share/jupyter",
        "755 0:0 /opt/conda/envs",
    ]
    assert lines[3] == f"{prefix}/lib/python3.11/site-packages/alpha/__init__.py"
    assert json.loads("\n".join(lines[4:]))["argv"][0] == f"{prefix}/bin/python"


def test_the_base_headers_are_part_of_the_layer_cache_key(
    tmp_path: Path,
    conda_base: BaseImage,
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
) -> None:
    """The same lock at the same prefix on a base where /opt/conda is root's: the layers
    name /opt/conda with other owners, so none may come from the first build's cache."""
    setup = make_setup(tmp_path)
    prefix = "/opt/conda/envs/ds"
    on_conda, _ = build(setup, conda_base, bookworm_facts, prefix=prefix)
    again, events = build(setup, conda_base, bookworm_facts, prefix=prefix)
    assert again.digest == on_conda.digest and {e.state for e in events} == {"cached"}
    plain, events = build(setup, bookworm_layout, bookworm_facts, prefix=prefix)
    assert {e.state for e in events} == {"built"}
    assert not {layer.diff_id for layer in env_layers(plain)} & {
        layer.diff_id for layer in env_layers(on_conda)
    }
    view = LayerView(list(plain.layer_paths))
    assert header(view, "opt/conda") == "755 0:0"  # created: bookworm has no /opt/conda


@pytest.mark.parametrize(
    ("prefix", "real", "check", "expected"),
    [
        ("/tmp/envship/env", "/tmp/envship/env", "stat -c %a:%u:%g /tmp", "1777:0:0"),
        # bookworm's /lib -> usr/lib: the environment goes to the real folder, the link stays
        ("/lib/envship", "/usr/lib/envship", "readlink /lib /bin", "usr/lib\nusr/bin"),
    ],
    ids=["sticky-tmp", "through-a-symlink"],
)
def test_prefix_on_bookworm_runs_and_keeps_the_base(
    tmp_path: Path,
    bookworm_layout: BaseImage,
    bookworm_facts: BaseFacts,
    docker_engine: DockerEngine,
    prefix: str,
    real: str,
    check: str,
    expected: str,
) -> None:
    setup = make_setup(tmp_path)
    built, _ = build(setup, bookworm_layout, bookworm_facts, prefix=prefix)
    assert built.prefix == real
    assert json.loads(built.config_bytes)["config"]["Labels"]["org.envship.prefix"] == real
    if real != prefix:
        assert f"{prefix} is {real} in the base (a symbolic link on the way)" in built.notes[0]
    name = load(docker_engine, built, tmp_path, f"envship-tests/prefix-{uuid.uuid4().hex[:10]}:1")
    try:
        script = f"{check} && {prefix}/bin/python -c 'import sys, beta; print(sys.prefix)' && tool"
        out = docker_run(docker_engine, name, "sh", "-c", script, user="1000:100")
    finally:
        docker_engine.docker("rmi", "--no-prune", name, check=False)
    assert out == f"{expected}\n{prefix}\ntool ran\n"


# -- what the base has at or on the way to the prefix ---------------------------------------


@pytest.fixture(scope="module")
def odd_base(slim_layout: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> BaseImage:
    """The slim base with a folder, a file, links (a loop, one to /usr, one to nowhere),
    an empty folder UID 1000 owns, folders root keeps to itself and to group 100, and a
    Jupyter folder that is a link to conda's, which holds a kernelspec ``ds`` with a
    logo."""

    def fill(writer: LayerWriter) -> None:
        writer.add_file("opt/full/old.txt", b"old\n")
        writer.add_file("opt/file", b"a file\n")
        writer.add_symlink("opt/loop", "loop2")
        writer.add_symlink("opt/loop2", "loop")
        writer.add_symlink("opt/up", "/usr")
        writer.add_symlink("opt/dangling", "/srv/nowhere")
        writer.add_symlink("opt/shm", "/dev/shm")
        writer.add_dir("opt/empty", 0o2770, uid=1000, gid=100)
        writer.add_dir("opt/private", 0o700, uid=0, gid=0)
        writer.add_dir("opt/team", 0o750, uid=0, gid=100)
        writer.add_dir("opt/conda/share/jupyter/kernels", 0o2775, uid=1000, gid=100)
        writer.add_dir("opt/conda/share/jupyter/kernels/ds", 0o775, uid=1000, gid=100)
        writer.add_file("opt/conda/share/jupyter/kernels/ds/kernel.json", b"{}\n")
        writer.add_file("opt/conda/share/jupyter/kernels/ds/logo-64x64.png", b"png")
        writer.add_symlink("usr/local/share/jupyter", "/opt/conda/share/jupyter")

    return stacked(slim_layout, tmp_path_factory.mktemp("odd") / "layout", fill, tag="odd")


@pytest.fixture(scope="module")
def odd_facts(odd_base: BaseImage) -> BaseFacts:
    return probe_image(layout_image(odd_base), where="odd")


@pytest.mark.parametrize(
    ("prefix", "message", "problem"),
    [
        ("/opt/full", "already has /opt/full", "a folder holding old.txt"),
        ("/opt/file", "already has /opt/file", "a file, not a folder"),
        ("/opt/file/env", "/opt/file is not a directory there", "a file or device"),
        ("/bin/python3", "already has /bin/python3 (that is /usr/bin/python3.11)", "a file"),
        ("/opt/loop/env", "too many levels of symbolic links resolving /opt/loop/env", ""),
        ("/opt/up", "/opt/up is /usr in the base image", "a system folder"),
        ("/opt/shm/env", "/opt/shm/env is /dev/shm/env in the base image", "mount over /dev"),
    ],
)
def test_a_base_that_cannot_take_the_prefix_is_refused(
    tmp_path: Path,
    odd_base: BaseImage,
    odd_facts: BaseFacts,
    prefix: str,
    message: str,
    problem: str,
) -> None:
    setup = make_setup(tmp_path)
    with pytest.raises(UnsupportedBaseError) as caught:
        build(setup, odd_base, odd_facts, prefix=prefix)
    assert caught.value.exit_code == 2
    assert message in caught.value.message
    assert problem in " ".join(p.message for p in caught.value.problems)
    assert caught.value.hint and "choose another --prefix" in caught.value.hint
    assert not list(setup.store.root.glob("layers/*.json"))  # refused before any layer


@pytest.mark.parametrize(
    ("prefix", "closed"),
    [
        ("/opt/private/env", ["/opt/private is mode 0700 (uid 0, gid 0)"]),
        ("/opt/team/env", []),  # group 100 may pass
        ("/opt/empty", []),  # uid 1000's own
    ],
)
def test_a_base_folder_sagemakers_user_cannot_pass_gets_a_note(
    tmp_path: Path, odd_base: BaseImage, odd_facts: BaseFacts, prefix: str, closed: list[str]
) -> None:
    """The build keeps the base's folders on the way as they are: one uid 1000 / gid 100
    may not enter leaves an image whose environment SageMaker's user cannot run."""
    built, _ = build(make_setup(tmp_path), odd_base, odd_facts, prefix=prefix)
    found = [n for n in built.notes if "cannot reach the environment" in n]
    assert [n.partition(" in the base")[0] for n in found] == closed


def test_an_empty_folder_and_a_dangling_link_can_take_the_prefix(
    tmp_path: Path, odd_base: BaseImage, odd_facts: BaseFacts
) -> None:
    setup = make_setup(tmp_path)
    empty, _ = build(setup, odd_base, odd_facts, prefix="/opt/empty")
    view = LayerView(list(empty.layer_paths))
    assert header(view, "opt/empty") == "2770 1000:100"  # the base's, kept
    assert view.read("opt/empty/bin/tool").startswith(b"#!/opt/empty/bin/python\n")

    dangling, _ = build(setup, odd_base, odd_facts, prefix="/opt/dangling/env")
    assert dangling.prefix == "/srv/nowhere/env"
    view = LayerView(list(dangling.layer_paths))
    link = view.get("opt/dangling")
    assert link is not None and link.kind == "symlink"  # not replaced by a folder
    assert view.read("opt/dangling/env/bin/tool").startswith(b"#!/srv/nowhere/env/bin/python\n")


def test_a_kernelspec_folder_behind_a_link_and_one_of_the_same_name(
    tmp_path: Path, odd_base: BaseImage, odd_facts: BaseFacts
) -> None:
    setup = with_kernel(tmp_path)
    built, _ = build(setup, odd_base, odd_facts, kernel_name="ds")
    assert built.notes == (
        "the base's kernelspec 'ds' in /opt/conda/share/jupyter/kernels is replaced by this one",
    )
    view = LayerView(list(built.layer_paths))
    jupyter = view.get("usr/local/share/jupyter")
    assert jupyter is not None and jupyter.kind == "symlink"
    spec = json.loads(view.read(f"{KERNELS}/ds/kernel.json"))
    assert spec["argv"][0] == "/opt/envship/venv/bin/python"
    # The base's other files of that kernelspec are hidden with it (an opaque whiteout).
    assert view.get("opt/conda/share/jupyter/kernels/ds/logo-64x64.png") is None
    assert header(view, "opt/conda/share/jupyter/kernels") == "2775 1000:100"

    other, _ = build(setup, odd_base, odd_facts, kernel_name="ds2")
    assert other.notes == ()
    view = LayerView(list(other.layer_paths))
    assert view.get("opt/conda/share/jupyter/kernels/ds/logo-64x64.png") is not None


# -- an image envship built, as a base -------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_an_envship_image_as_base_is_refused_at_its_prefix_and_verifies_at_another(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    slim_sample: tuple[Setup, BuiltImage, str],
) -> None:
    base_ref = slim_sample[2]
    # Another lock for the second environment: beta 1.1 instead of 1.0, no tool.
    setup = make_setup(tmp_path, ["alpha", "beta11"])
    common = ["--lock", str(setup.lock.path), "--store", str(setup.store.root)]
    out_ref = f"oci:{tmp_path / 'out'}:two"
    code, _, err = run(capsys, "image", "build", *common, "--base", base_ref, "-o", out_ref)
    assert code == 2, err
    assert (
        f"error: the base image {base_ref} already has /opt/envship/venv "
        "(an environment envship built)" in err
    )
    assert "hint: choose another --prefix, e.g. /opt/envship/venv-2, or build on the image" in err
    assert not (tmp_path / "out").exists()

    args = ["--base", base_ref, "--prefix", "/opt/envship/venv-2", "-o", out_ref, "--json"]
    code, out, err = run(capsys, "image", "build", *common, *args)
    assert code == 0, out + err
    assert json.loads(out)["prefix"] == "/opt/envship/venv-2"
    code, out, err = run(capsys, "verify", "--image", out_ref, *common)
    assert code == 0, out + err
    assert out.startswith(f"ok: {out_ref}:/opt/envship/venv-2 vs {setup.lock.path}")


# -- SageMaker's reserved and hidden folders -------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "note"),
    [
        ("/opt/ml/env", "/opt/ml/env is under /opt/ml, which is reserved by SageMaker"),
        ("/opt/.sagemakerinternal/env", "under /opt/.sagemakerinternal, which is reserved"),
        ("/var/log/studio/env", "under /var/log/studio, which is reserved by SageMaker Studio"),
        ("/home/sagemaker-user/env", "which is hidden by the home folder SageMaker Studio"),
        ("/opt/mlflow/env", None),
    ],
)
def test_sagemaker_reserved_prefixes_get_a_note(
    tmp_path: Path, slim_layout: BaseImage, prefix: str, note: str | None
) -> None:
    setup = make_setup(tmp_path)
    facts = probe_image(layout_image(slim_layout), where="slim")
    built, _ = build(setup, slim_layout, facts, prefix=prefix)
    found = [n for n in built.notes if "SageMaker" in n]
    if note is None:
        assert found == []
    else:
        assert len(found) == 1 and note in found[0]
        assert found[0].endswith("the environment will not be usable there on SageMaker")


# -- folders runtimes often mount a tmpfs over ---------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "notes"),
    [
        ("/tmp/env", ["/tmp/env is under /tmp"]),
        ("/run/env", ["/run/env is under /run"]),
        ("/var/run/env", ["/var/run/env is under /var/run"]),
        ("/opt/envship/venv", []),
    ],
)
def test_prefixes_under_tmp_and_run_get_a_note(
    tmp_path: Path, slim_layout: BaseImage, prefix: str, notes: list[str]
) -> None:
    setup = make_setup(tmp_path)
    facts = probe_image(layout_image(slim_layout), where="slim")
    built, _ = build(setup, slim_layout, facts, prefix=prefix)
    found = [n for n in built.notes if "tmpfs" in n]
    assert [n.partition(", where")[0] for n in found] == notes
    assert all(n.endswith("a folder such as /opt/envship/venv is safer") for n in found)


# -- options checked before the base is read ---------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--kernel-name", "My Kernel"), "invalid kernelspec name 'My Kernel'"),
        (("--kernel-name", "../../etc/evil"), "invalid kernelspec name '../../etc/evil'"),
        (("--kernel-name", "DS"), "invalid kernelspec name 'DS'"),
        (("--kernel-name", ".hidden"), "invalid kernelspec name '.hidden'"),
        (("--kernel-name", "café"), "invalid kernelspec name 'café'"),
        (("--kernel-name", "ds\n"), "invalid kernelspec name 'ds\\n'"),  # "$" let it by
        (("--prefix", "/opt//env"), "invalid environment path '/opt//env'"),
        (("--prefix", "/opt/x/../env"), "invalid environment path '/opt/x/../env'"),
        (("--prefix", "opt/env"), "invalid environment path 'opt/env'"),
        (("--prefix", "/opt/a:b"), "invalid environment path '/opt/a:b'"),
        (("--prefix", "/opt/" + "x" * 120), "invalid environment path '/opt/xxxx"),
        (("--prefix", "/proc/venv"), "invalid environment path '/proc/venv'"),
        (("--prefix", "/dev/venv"), "invalid environment path '/dev/venv'"),
        (("--prefix", "/sys"), "invalid environment path '/sys'"),
        (("--prefix", "//proc/x"), "invalid environment path '//proc/x'"),
        (("--group", "nosuch"), "the lock has no dependency group 'nosuch'"),
        (("--target", "nope"), "the lock has no target 'nope'"),
    ],
)
def test_bad_options_are_refused_before_the_base_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: tuple[str, str], message: str
) -> None:
    setup = make_setup(tmp_path)
    missing = f"oci:{tmp_path / 'no-such-layout'}:x"  # reading it would fail otherwise
    args = ["--lock", str(setup.lock.path), "--store", str(setup.store.root)]
    args += ["--base", missing, "-o", f"oci:{tmp_path / 'out'}", *option]
    code, _, err = run(capsys, "image", "build", *args)
    assert code == 2, err
    assert f"error: {message}" in err
    assert "VenvScheme" not in err and "no-such-layout" not in err
    if option[0] == "--prefix":
        assert "hint: give a folder of its own, e.g. --prefix /opt/envship/venv" in err
    if option[1].startswith(("/proc", "/dev", "/sys")):
        top = "/" + option[1].split("/")[1]
        assert f"container runtimes mount over {top}, which would hide the environment" in err
    if option[1].startswith("//"):  # absolute, but not normalized: not "not absolute"
        assert "not a normalized path" in err and "not an absolute path" not in err
    if option[0] == "--kernel-name":
        assert "only lower-case ASCII letters, digits" in err
    assert not (tmp_path / "out").exists()


def test_kernel_names_jupyter_lists_as_given_are_taken_as_given(
    tmp_path: Path, slim_layout: BaseImage
) -> None:
    setup = with_kernel(tmp_path)
    facts = probe_image(layout_image(slim_layout), where="slim")
    for name in ("team-ds_1.0", "ds"):
        built, _ = build(setup, slim_layout, facts, kernel_name=name)
        assert built.kernel == name
        assert LayerView(list(built.layer_paths)).get(f"{KERNELS}/{name}/kernel.json")
    with pytest.raises(ImageInputError, match="invalid kernelspec name 'Team'") as caught:
        build(setup, slim_layout, facts, kernel_name="Team")
    assert caught.value.exit_code == 2 and caught.value.hint
    assert "for example 'team'" in caught.value.hint


# -- what is read of the base is cached in the store ------------------------------------------


@pytest.mark.parametrize("record", [None, "{not json", "[]", '{"real": 1}', '{"present": [[1]]}'])
def test_the_base_is_read_once_per_prefix_and_a_damaged_record_is_a_miss(
    tmp_path: Path, slim_layout: BaseImage, record: str | None
) -> None:
    base = stacked(
        slim_layout,
        tmp_path / "base",
        lambda w: w.add_dir("opt/conda", 0o2775, uid=1000, gid=100),
        tag="c",
    )
    setup = make_setup(tmp_path / "setup")
    facts = probe_image(layout_image(base), where="c")
    first, _ = build(setup, base, facts, prefix="/opt/conda/envs/x")
    records = sorted((setup.store.root / "images" / "places").glob("*.json"))
    assert len(records) == 2  # the prefix and the kernelspec folder
    image = layout_image(base)
    if record is None:
        # Without the base's layers, only the cache can say what the base has.
        for path in image.layer_paths:
            path.rename(path.with_suffix(".away"))
        again = build_image(
            setup.lock, setup.store, image, facts, base_name="c", prefix="/opt/conda/envs/x"
        )
        for path in image.layer_paths:
            path.with_suffix(".away").rename(path)
    else:
        for path in records:
            path.write_text(record)
        again, _ = build(setup, base, facts, prefix="/opt/conda/envs/x")
        assert all(json.loads(path.read_text())["real"] for path in records)  # rewritten
    assert again.digest == first.digest
    view = LayerView(list(again.layer_paths))
    assert header(view, "opt/conda") == "2775 1000:100"


def test_a_file_where_kernelspecs_go_matters_only_for_a_kernel(
    tmp_path: Path, slim_layout: BaseImage
) -> None:
    base = stacked(
        slim_layout, tmp_path / "base", lambda w: w.add_file(KERNELS, b"not a folder"), tag="k"
    )
    facts = probe_image(layout_image(base), where="k")
    plain, _ = build(make_setup(tmp_path / "plain"), base, facts)
    assert plain.kernel is None
    with pytest.raises(UnsupportedBaseError, match="no folder for the kernelspec") as caught:
        build(with_kernel(tmp_path / "kernel"), base, facts)
    assert caught.value.exit_code == 2
    assert caught.value.problems[0].where == f"/{KERNELS}"

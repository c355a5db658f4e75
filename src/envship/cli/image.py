"""``envship image``: build the locked environment into an OCI image with no daemon; look
inside images."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import EnvshipError, Problem
from ..image import (
    DEFAULT_PREFIX,
    BuiltImage,
    LayerEvent,
    build_image,
    check_kernel_name,
    check_prefix,
    lock_target,
    source_date_epoch,
)
from ..imagebase import probe_image
from ..imageinspect import ImageInfo, inspect_image
from ..imageio import (
    PushResult,
    check_outputs,
    default_client,
    open_image,
    parse_push_ref,
    push_image,
    write_image,
)
from ..lockfile import LockFile
from ..registry import BlobProgress, RegistryClient
from ..store import Store
from ._common import (
    _size,
    echo_json,
    groups_option,
    json_mode,
    json_option,
    lock_option,
    store_option,
)

__all__ = ["command", "insecure_option"]

insecure_option = click.option(
    "--insecure",
    is_flag=True,
    help="Allow plain HTTP and unverified TLS to registries that are not on this machine "
    "(loopback registries may always use HTTP).",
)


@click.group("image")
def command() -> None:
    """Daemonless, reproducible, layered OCI images of the locked environment.

    The environment is a virtual environment (at /opt/envship/venv by default) on the
    base image's own Python; each large distribution is its own layer and small ones
    share a few, each cached in the store, so a one-package change rebuilds and pushes
    one small layer. No Docker daemon and no root are needed.
    """


def _say(message: str) -> None:
    if not json_mode():
        click.echo(message, err=True)


def _layer_line(event: LayerEvent) -> None:
    _say(f"[{event.index}/{event.total}] {event.state:6} {_size(event.size):>10}  {event.label}")


def _blob_line(event: BlobProgress) -> None:
    if event.action in ("exists", "mounted") or event.done >= event.total:
        verb = {"upload": "pushed", "download": "pulled"}.get(event.action, event.action)
        _say(f"  {verb:8} {event.digest[:19]}  {_size(event.total):>10}")


@command.command("build")
@lock_option("The PEP 751 lock to build.")
@store_option
@click.option(
    "--base",
    required=True,
    metavar="IMAGE",
    help="The base image: a registry reference, oci:DIR[:TAG] or docker-archive:FILE.",
)
@click.option(
    "--output",
    "-o",
    "outputs",
    multiple=True,
    metavar="DEST",
    help="Write the image to oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG] (repeatable).",
)
@click.option(
    "--push", "push_ref", metavar="REF", help="Push the image to this registry reference."
)
@click.option(
    "--target",
    metavar="NAME",
    help="Build for this lock target, which the base must fit [default: the one the base "
    "image fits; of several, a cuda one on a CUDA base, then the highest glibc level].",
)
@groups_option("Install")
@click.option(
    "--prefix",
    default=DEFAULT_PREFIX,
    show_default=True,
    metavar="PATH",
    help="Where the virtual environment lives inside the image: a folder the base does "
    "not have yet (an empty one will do). Symbolic links in the base are followed, and "
    "the environment is built at the real path (a note says so). On SageMaker, avoid "
    "/opt/ml, /opt/.sagemakerinternal, /var/log/studio and /home/sagemaker-user. /proc, "
    "/sys and /dev are refused (container runtimes mount over them); under /tmp or /run a "
    "note warns that a runtime may mount a tmpfs there.",
)
@click.option(
    "--kernel-name",
    help="Name of the image's Jupyter kernelspec: lower-case letters, digits, '-', '.' "
    "and '_' [default: the spec's name, cleaned]. SageMaker needs it to match the "
    "AppImageConfig's KernelSpecs name exactly.",
)
@click.option(
    "-j", "--jobs", type=click.IntRange(min=1), help="Layers built at once [default: CPUs]."
)
@click.option(
    "--compile",
    "compile_bytecode",
    is_flag=True,
    help="Add .pyc files, compiled by a CPython of the base's minor version on this "
    "machine, so a non-root user's kernel does not recompile every module at each start.",
)
@insecure_option
@json_option
def build_cmd(
    lock_path: Path,
    store_dir: Path | None,
    base: str,
    outputs: tuple[str, ...],
    push_ref: str | None,
    target: str | None,
    groups: tuple[str, ...] | None,
    prefix: str,
    kernel_name: str | None,
    jobs: int | None,
    compile_bytecode: bool,
    insecure: bool,
    as_json: bool,
) -> None:
    """Build the locked environment on top of a base image, with no daemon.

    The base's Python, architecture and glibc are read from its layers and must fit one
    of the lock's targets. The artifacts must be in the store (`envship fetch`).
    SOURCE_DATE_EPOCH sets every timestamp (default 0): the same lock on the same base
    gives the same image digest on any machine. The base's folders above --prefix keep
    their owners and modes; the time reported covers the whole command (reading or
    pulling the base, building, writing and pushing).

    \b
    Examples:
      envship image build --base oci:base:bookworm -o oci:out:ds
      envship image build --base python:3.11-slim --push registry.example/team/ds:1
      envship image build --base docker-archive:base.tar -o docker-archive:ds.tar:ds:1
      envship image build --base python:3.11-slim --compile -o oci:out:ds
    """
    started = time.monotonic()
    if not outputs and not push_ref:
        raise click.UsageError("say where the image goes: --output DEST and/or --push REF")
    # A push reference or output that cannot be written is refused (exit 2) before the
    # base is read or pulled and anything is built.
    push_target = parse_push_ref(push_ref) if push_ref else None
    for out in outputs:
        if not out.startswith(("oci:", "docker-archive:")):
            raise click.UsageError(
                f"--output {out!r}: write oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG] "
                "(use --push for a registry)"
            )
    check_outputs(outputs, lock=lock_path, base=base)
    # What can be checked without the base is, before it is read or pulled.
    check_prefix(prefix)
    source_date_epoch()  # a bad SOURCE_DATE_EPOCH is refused before a base is pulled
    if kernel_name is not None:
        check_kernel_name(kernel_name)
    lock = LockFile.load(lock_path)
    if target is not None:
        lock_target(lock, target)
    lock.chosen_groups(groups)
    store = Store.at(store_dir)
    clients: dict[str, RegistryClient] = {}
    # Blob progress arrives on the client's upload threads, which do not see the --json
    # context variable; decide here, on the command's thread, whether to report it.
    blob_line = None if as_json else _blob_line

    def client(registry: str) -> RegistryClient:
        if registry not in clients:
            clients[registry] = default_client(insecure=insecure, progress=blob_line)(registry)
        return clients[registry]

    source = open_image(base, store, client=client)
    _say(f"base {source.name}: {source.image.descriptor.digest}")
    facts = probe_image(source.image, where=source.name, cache=store.root / "images" / "probes")
    _say(f"base has {facts.describe()}")
    built = build_image(
        lock,
        store,
        source.image,
        facts,
        base_name=source.name,
        target=target,
        groups=groups,
        prefix=prefix,
        kernel_name=kernel_name,
        jobs=jobs,
        compile_bytecode=compile_bytecode,
        progress=_layer_line,
    )
    written: list[str] = []
    pushed: PushResult | None = None
    try:
        for out in outputs:
            written.append(write_image(built, out, store=store))
        if push_target is not None:
            # A fresh client, so its counters are this push's alone.
            push_client = default_client(insecure=insecure, progress=blob_line)(
                push_target.registry
            )
            mount = (
                source.reference.repository
                if source.reference and source.reference.registry == push_target.registry
                else None
            )
            pushed = push_image(built, push_target, push_client, mount_from=mount, store=store)
    except EnvshipError as exc:
        # What was written before the failure exists and holds the whole image: say so,
        # so a script can tell which destinations it may use.
        exc.problems = (
            *exc.problems,
            *(Problem("written", f"{out} holds the image {built.digest}") for out in written),
        )
        raise
    _report(built, written, pushed, as_json, time.monotonic() - started)


def _report(
    built: BuiltImage,
    written: list[str],
    pushed: PushResult | None,
    as_json: bool,
    seconds: float,
) -> None:
    if as_json:
        data = built.to_json()
        data["outputs"] = written
        data["push"] = pushed.to_json() if pushed else None
        data["seconds"] = round(seconds, 3)  # the whole command, as the text says
        echo_json(data)
        return
    ours = [layer for layer in built.layers if layer.label != "base"]
    fresh = sum(1 for layer in ours if not layer.cached)
    click.echo(
        f"built {built.digest} for {built.target.name}: {len(built.layers)} layers "
        f"({len(ours)} for the environment, {fresh} built now) in {seconds:.1f}s"
    )
    for out in written:
        click.echo(f"  wrote {out}")
    if pushed is not None:
        s = pushed.stats
        click.echo(
            f"  pushed {pushed.reference}@{pushed.digest}: {s.blobs_uploaded} blobs uploaded "
            f"({_size(s.bytes_uploaded)}), {s.blobs_mounted} mounted, "
            f"{s.blobs_existing} already there"
        )
    if built.kernel:
        click.echo(f"  kernelspec {built.kernel!r} in /usr/local/share/jupyter/kernels")
    if built.bytecode is not None:
        b = built.bytecode
        click.echo(f"  byte-code {b.cache_tag}, compiled by Python {b.version} ({b.python})")
    for note in built.notes:
        click.echo(f"  note: {note}")


@command.command("inspect")
@click.argument("image")
@store_option
@insecure_option
@json_option
def inspect_cmd(image: str, store_dir: Path | None, insecure: bool, as_json: bool) -> None:
    """Show IMAGE's layers, their sizes and the Python distributions each holds.

    IMAGE is a registry reference, oci:DIR[:TAG] or docker-archive:FILE. Layers built
    by envship name their distributions; other layers are scanned for .dist-info
    folders (the answer is cached in the store).
    """
    store = Store.at(store_dir)
    source = open_image(image, store, client=default_client(insecure=insecure))
    info = inspect_image(source, store)
    if as_json:
        echo_json(info.to_json())
        return
    click.echo(_render(info))


def _render(info: ImageInfo) -> str:
    lines = [f"{info.name}  {info.digest}  {info.platform}  {_size(info.size)} {info.compression}"]
    for key in sorted(info.labels):
        if key.startswith("org.envship."):
            lines.append(f"  {key}={info.labels[key]}")
    lines.append(f"{'#':>3}  {'digest':19}  {'size':>10}  distributions")
    for i, layer in enumerate(info.layers):
        dists = ", ".join(layer.distributions) or "-"
        lines.append(f"{i:>3}  {layer.digest[:19]}  {_size(layer.size):>10}  {dists}")
        if layer.created_by:
            lines.append(f"{'':>36}{layer.created_by[:100]}")
    return "\n".join(lines)

"""``envship index``: turn a lock and the store into a static package index."""

from __future__ import annotations

from pathlib import Path

import click

from ..index import export_index
from ..lockfile import LockFile
from ..store import Store
from ._common import Progress, echo_json, groups_option, json_option, lock_option, store_option


@click.group("index")
def command() -> None:
    """Static package indexes for networks that cannot reach PyPI."""


@command.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@lock_option("The PEP 751 lock whose artifacts to export.")
@store_option
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="NAME",
    help="Export only what this target (repeatable) installs; default: every target.",
)
@groups_option("Include")
@click.option(
    "--force",
    is_flag=True,
    help="Replace OUT even if it is not an earlier export (never the store, a folder "
    "holding it, or the lock).",
)
@json_option
def export(
    out: Path,
    lock_path: Path,
    store_dir: Path | None,
    targets: tuple[str, ...],
    groups: tuple[str, ...] | None,
    force: bool,
    as_json: bool,
) -> None:
    """Write OUT: a PEP 503/691 simple index, the files, and a localized pylock.toml.

    Hrefs are relative, so OUT works from file:// and from any static web server.
    OUT/pylock.toml points at OUT/files, for PEP 751 installers. OUT is replaced only
    when the export succeeds; every file is checked against the lock's sha256.

    \b
    Examples:
      envship index export ./wheelhouse
      pip install --index-url file://$PWD/wheelhouse/simple NAME
      uv pip install -r ./wheelhouse/pylock.toml
    """
    lock = LockFile.load(lock_path)
    store = Store.at(store_dir)
    result = export_index(
        lock,
        store,
        out,
        targets=list(targets) or None,
        groups=groups,
        force=force,
        progress=Progress("export"),
    )
    if as_json:
        echo_json(result.to_json())
        return
    index_url = result.to_json()["index_url"]
    # envship locks install no group by default (default-groups = []): name the
    # exported ones, or the command would install the export without them.
    with_groups = "".join(f" --group {g}" for g in result.groups)
    click.echo(
        f"exported {result.files} files of {result.projects} projects to {result.out}\n"
        f"  pip install --index-url {index_url} NAME\n"
        f"  uv pip install --offline -r {result.lock}{with_groups}"
    )

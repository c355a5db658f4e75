"""``envship fetch``: download every locked artifact into the verified store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import SpecError
from ..fetch import FetchResult, fetch
from ..lockfile import LockFile
from ..store import Store
from ._common import (
    Progress,
    _size,
    echo_json,
    groups_option,
    json_option,
    lock_option,
    store_option,
)

if TYPE_CHECKING:
    from .._http import Credential

__all__ = ["command"]


def _credentials(lock_path: Path) -> list[Credential]:
    """Index credentials from the spec beside the lock; none (netrc only) without one."""
    from .._http import index_credentials
    from ..spec import find_spec, load_spec

    try:
        spec_path = find_spec(lock_path.parent)
    except SpecError:
        return []
    # A spec that exists but is broken is an error worth seeing, not a silent "no auth".
    return index_credentials(load_spec(spec_path).indexes)


@click.command("fetch")
@lock_option("The PEP 751 lock file to fetch.")
@store_option
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="NAME",
    help="Fetch for this target only (repeatable) [default: every target in the lock].",
)
@groups_option("Include")
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Parallel downloads.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Re-hash every artifact already in the store (reads every byte) and download "
    "again any that does not match; separate copies under the store's named/ folder (what "
    "installers read, made where hard links fail) are hashed too and a damaged one is "
    "replaced. Without it, a present artifact is checked by the size the lock records, "
    "which finds truncated or emptied files but not same-size damage; an entry without "
    "a size (indexes without PEP 700 sizes) is trusted by its content address.",
)
@json_option
def command(
    lock_path: Path,
    store_dir: Path | None,
    targets: tuple[str, ...],
    groups: tuple[str, ...] | None,
    jobs: int,
    verify: bool,
    as_json: bool,
) -> None:
    """Download every artifact the lock selects into a verified store.

    Artifacts already in the store are reused without touching the network, once their
    size matches the lock (with --verify, their sha256); a damaged one is downloaded
    again and replaced. An interrupted fetch resumes where it stopped.
    """
    lock = LockFile.load(lock_path)
    store = Store.at(store_dir)
    result = fetch(
        lock,
        store,
        targets=list(targets) or None,
        groups=groups,
        jobs=jobs,
        verify=verify,
        # Reading the spec is only worth it when something must be downloaded.
        credentials=lambda: _credentials(lock_path),
        progress=Progress("fetch"),
    )
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(_summary(result))


def _summary(result: FetchResult) -> str:
    total = len(result.artifacts)
    repaired = (
        f", {result.repaired} of them replacing a damaged copy in the store"
        if result.repaired
        else ""
    )
    n = result.named_repaired
    named = (
        f"; {n} damaged cop{'ies' if n != 1 else 'y'} under named/ (what installers read) replaced"
        if n
        else ""
    )
    return (
        f"{total} artifact{'s' if total != 1 else ''} in {result.store.root}: "
        f"{result.downloaded} downloaded ({_size(result.bytes_downloaded)}{repaired}), "
        f"{result.reused} already in the store{named}"
    )

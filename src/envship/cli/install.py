"""``envship install``: materialize the lock offline from the store into a venv."""

from __future__ import annotations

from pathlib import Path

import click

from .._envfiles import LINK_MODES
from .._quickinstall import summary_text
from .._quickplan import facts_before, remember
from ..install import InstallResult, LinkMode, install, resolve_python
from ..lockfile import LockFile
from ..store import Store
from ._common import (
    Progress,
    compile_option,
    echo_json,
    groups_option,
    json_option,
    lock_option,
    python_option,
    store_option,
    target_option,
)

__all__ = ["command"]


@click.command("install")
@click.argument("dest", metavar="PATH", type=click.Path(readable=False, path_type=Path))
@lock_option("The PEP 751 lock file to install.")
@store_option
@python_option("the one running envship; for an existing environment, the one it was made with")
@target_option
@groups_option("Include")
@compile_option
@click.option(
    "--link-mode",
    type=click.Choice(LINK_MODES),
    default=None,
    help="How uv puts files in place [default: uv's, hard links into its cache where it "
    "can: fast, but editing an installed file then edits the cache]. `copy` makes an "
    "independent environment; the mode is recorded and kept by later repairs.",
)
@click.option(
    "--reinstall",
    is_flag=True,
    help="Make PATH again from the store's wheels, unpacked afresh (its interpreter, "
    "byte-code and link mode kept; the wheels are hashed first): for files edited or "
    "deleted inside packages, which `envship verify` reports and a plain re-run does not "
    "look for.",
)
@json_option
def command(
    dest: Path,
    lock_path: Path,
    store_dir: Path | None,
    python: str | None,
    target: str | None,
    groups: tuple[str, ...] | None,
    compile_bytecode: bool,
    link_mode: LinkMode | None,
    reinstall: bool,
    as_json: bool,
) -> None:
    """Create or update the virtual environment PATH from the lock, offline.

    Every artifact comes from the store (run `envship fetch` first); nothing goes to
    the network. The interpreter must match one of the lock's targets. Re-running with
    the same lock does nothing, unless a distribution was removed, added or replaced
    since (then it is repaired); with a new lock it updates PATH to exactly the new set.
    A non-empty folder that is not an envship environment is refused, never changed.

    \b
    Examples:
      envship install .venv
      envship install /opt/envs/ds --python /usr/bin/python3.11 --compile --json
      envship install .venv --reinstall   # after `envship verify` found edited files
    """
    lock = LockFile.load(lock_path)
    store = Store.at(store_dir)
    # What the quick path's plan will be keyed by, taken before anything can change it.
    facts = facts_before(lock_path, store_dir, resolve_python(python), target, groups)
    result = install(
        lock,
        store,
        dest,
        python=python,
        target=target,
        groups=groups,
        compile_bytecode=compile_bytecode,
        link_mode=link_mode,
        reinstall=reinstall,
        progress=Progress("stage"),
    )
    if result.action == "created":
        # The next new environment from this lock here starts uv at once (see there).
        remember(facts, store_root=store.root, dest=result.dest)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(_summary(result))


def _summary(result: InstallResult) -> str:
    return summary_text(
        result.action,
        str(result.dest),
        len(result.packages),
        result.target.name,
        result.seconds,
        result.installed,
        result.removed,
    )

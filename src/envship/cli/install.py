"""``envship install``: materialize the lock offline from the store into a venv."""

from __future__ import annotations

from pathlib import Path

import click

from ..install import InstallResult, LinkMode, install
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
    type=click.Choice(["hardlink", "copy", "clone", "symlink"]),
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
    result = install(
        lock,
        Store.at(store_dir),
        dest,
        python=python,
        target=target,
        groups=groups,
        compile_bytecode=compile_bytecode,
        link_mode=link_mode,
        reinstall=reinstall,
        progress=Progress("stage"),
    )
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(_summary(result))


def _summary(result: InstallResult) -> str:
    count = len(result.packages)
    what = f"{count} package{'s' if count != 1 else ''}, target {result.target.name}"
    if not result.changed:
        return f"{result.dest} is up to date ({what})"
    lines = [f"{result.action} {result.dest} ({what}) in {result.seconds:.1f}s"]
    # By name, the old version just above the new one (as uv prints them): "- attrs==23.1.0"
    # then "+ attrs==22.2.0" reads as the downgrade it is.
    changes = [(p.split("==")[0], 1, f"  + {p}") for p in result.installed]
    changes += [(p.split("==")[0], 0, f"  - {p}") for p in result.removed]
    lines += [line for _, _, line in sorted(changes)]
    return "\n".join(lines)

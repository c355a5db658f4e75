"""``envship init``: write envship.toml from requirements.txt, pyproject.toml or environment.yml."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from ..importers import DEFAULT_INIT_TARGETS, ImportResult, init_spec
from ._common import echo_json, json_option


def _shown(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def _next_command(folder: Path) -> str:
    """``envship lock`` as it works from where the user is: the spec is found in the
    current folder by default, so another folder must be named."""
    try:
        here = folder.resolve() == Path.cwd().resolve()
    except OSError:  # the current folder was removed
        here = False
    return "envship lock" if here else f"envship lock --spec {shlex.quote(str(folder))}"


def _to_json(result: ImportResult, written: Path, folder: Path) -> dict[str, Any]:
    spec = result.spec
    return {
        "path": str(written),
        "sources": [_shown(p, folder) for p in result.sources],
        "name": spec.name,
        "python": list(spec.python),
        "dependencies": list(spec.dependencies),
        "groups": {name: list(reqs) for name, reqs in spec.groups.items()},
        "indexes": [index.to_toml() for index in spec.indexes],
        "targets": [target.name for target in spec.targets],
        "notes": list(result.notes),
    }


@click.command("init")
@click.argument(
    "folder",
    # readable=False: click's default check would make a folder this user may not read a
    # usage error (exit 2); import_spec raises the permission error naming who refuses.
    type=click.Path(path_type=Path, file_okay=False, readable=False),
    default=Path(),
    required=False,
)
@click.option("--name", help="Environment name [default: the folder's name, normalized].")
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="TARGET",
    help=f"A target to declare (repeatable) [default: {', '.join(DEFAULT_INIT_TARGETS)}].",
)
@click.option("--force", is_flag=True, help="Overwrite an existing envship.toml.")
@json_option
def command(
    folder: Path, name: str | None, targets: tuple[str, ...], force: bool, as_json: bool
) -> None:
    """Write FOLDER/envship.toml from the files the project already has.

    Reads the first of environment.yml, pyproject.toml (PEP 621, PEP 735 groups,
    Poetry) and requirements.txt, plus runtime.txt for the Python version. A binder/
    or .binder/ folder, when present, is the only place read (as repo2docker does).
    Anything envship cannot lock from a package index (conda packages outside
    environment.yml's pip: list, editable installs, URLs, local paths) is reported
    with its file and line.

    \b
    Examples:
      envship init
      envship init path/to/repo --name ds --target linux-x86_64
      envship init --force --json
    """
    result, written = init_spec(folder, name=name, targets=targets or None, force=force)
    if as_json:
        echo_json(_to_json(result, written, folder))
        return
    spec = result.spec
    click.echo(f"wrote {written} from {', '.join(_shown(p, folder) for p in result.sources)}")
    groups = ", ".join(f"{g} ({len(reqs)})" for g, reqs in spec.groups.items())
    click.echo(
        f"  {spec.name}: Python {', '.join(spec.python)}, {len(spec.dependencies)} "
        f"dependencies{f', groups: {groups}' if groups else ''}; "
        f"targets: {', '.join(t.name for t in spec.targets)}"
    )
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"next: {_next_command(folder)}")

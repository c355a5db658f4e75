"""``envship lock``: resolve the spec into pylock.toml, or check that it is current."""

from __future__ import annotations

from pathlib import Path

import click
from packaging.utils import InvalidName, canonicalize_name

from ..lock import check_lock, lock, lock_path_problem
from ..spec import load_spec
from ._common import echo_json, json_mode, json_option


def _log(message: str) -> None:
    if not json_mode():
        click.echo(message, err=True)


def _package_names(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    for name in value:
        try:
            canonicalize_name(name, validate=True)
        except InvalidName:
            raise click.BadParameter(f"{name!r} is not a valid package name") from None
    return value


@click.command("lock")
# readable=False on both paths: click's own check ends in a usage error (exit 2) without
# saying whose folder refuses; the spec and lock readers raise the permission error.
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(path_type=Path, readable=False),
    default=Path(),
    show_default="current folder",
    help="envship.toml, a pyproject.toml with [tool.envship], or a folder holding one.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, readable=False),
    help="Where to write (or, with --check, read) the lock: pylock.toml or "
    "pylock.<name>.toml (PEP 751) [default: beside the spec].",
)
@click.option("--check", is_flag=True, help="Only check the lock is current; exit 1 if stale.")
@click.option("-U", "--upgrade", is_flag=True, help="Ignore locked versions; take the newest.")
@click.option(
    "-P",
    "--upgrade-package",
    "upgrade_packages",
    multiple=True,
    metavar="NAME",
    callback=_package_names,
    help="Let this package (repeatable) move to its newest version; keep the rest.",
)
@json_option
@click.pass_context
def command(
    ctx: click.Context,
    spec_path: Path,
    output: Path | None,
    check: bool,
    upgrade: bool,
    upgrade_packages: tuple[str, ...],
    as_json: bool,
) -> None:
    """Resolve the spec into a hashed PEP 751 pylock.toml, checked for every target.

    Every package selected for every declared target must have a wheel that target
    can install (platform, glibc level, CPython ABI); otherwise the lock fails and lists
    each (package, version, target). Re-locking keeps the versions already locked where
    the spec still allows them, unless --upgrade or --upgrade-package says otherwise,
    and lists every version that moved.

    \b
    Examples:
      envship lock
      envship lock --check          # in CI: exit 1 when the spec changed
      envship lock -P numpy --json
    """
    if check and (upgrade or upgrade_packages):
        raise click.UsageError("--check only reads the lock; it takes no -U/-P", ctx=ctx)
    if output is not None:
        problem = lock_path_problem(output, writing=not check)
        if problem is not None:
            raise click.BadParameter(problem, ctx=ctx, param_hint="'-o' / '--output'")
    spec = load_spec(spec_path)
    if check:
        lockfile = check_lock(spec, output)
        if as_json:
            echo_json({"path": str(lockfile.path), "current": True, "digest": lockfile.digest})
        else:
            click.echo(f"{lockfile.path} is current")
        return
    result = lock(spec, output=output, upgrade=upgrade, upgrade_packages=upgrade_packages, log=_log)
    if as_json:
        echo_json(result.to_json())
        return
    verb = "wrote" if result.changed else "unchanged:"
    click.echo(
        f"{verb} {result.path} ({result.packages} packages, targets: "
        f"{', '.join(result.targets)}) in {result.seconds:.1f}s"
    )
    for change in result.changes:
        click.echo(f"  {change}")
    for note in result.notes:
        click.secho(f"warning: {note}", fg="yellow", err=True)

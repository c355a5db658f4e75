"""``envship add``: install into an environment without moving a locked package; record it."""

from __future__ import annotations

from pathlib import Path

import click
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ..add import AddResult, add
from ._common import echo_json, json_mode, json_option

__all__ = ["command"]


def _log(message: str) -> None:
    if not json_mode():
        click.echo(message, err=True)


@click.command("add")
@click.argument("requirements", nargs=-1, required=True, metavar="NAME[SPEC]...")
@click.option(
    "--env",
    type=click.Path(readable=False, path_type=Path),
    default=None,
    help="The environment, a venv made by `envship install` [default: $VIRTUAL_ENV].",
)
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The spec to record the addition in [default: the one beside the environment's "
    "lock, else in the current folder].",
)
@click.option(
    "-i",
    "--index-url",
    metavar="URL",
    help="Take packages from this index instead of the spec's default index.",
)
@click.option(
    "--extra-index-url",
    "extra_index_urls",
    multiple=True,
    metavar="URL",
    help="Also look in this index (repeatable).",
)
@click.option(
    "-f",
    "--find-links",
    multiple=True,
    metavar="PATH",
    help="Also look in this folder or page of links (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be installed and recorded.")
@json_option
def command(
    requirements: tuple[str, ...],
    env: Path | None,
    spec_path: Path | None,
    index_url: str | None,
    extra_index_urls: tuple[str, ...],
    find_links: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
) -> None:
    """Install NAME[SPEC]... into an environment, holding every locked package.

    Every distribution the environment got from its lock stays at its locked version:
    a request that needs another version is refused, with the locked package that
    blocks it named. What is added is recorded in the spec's dependencies (comments
    and layout kept), so the lock is stale until `envship lock` takes it in, and in the
    environment's install record, so `envship verify` says where those extras came from.
    A name the spec already lists has its entry replaced (and the output says so), unless
    that would drop extras the entry asks for. Versions the lock pins for groups the
    environment was installed without are held too: such a package is installed only
    at its locked version, and the output says so. A requirement whose marker is false here
    is recorded for where it applies, and not installed.
    Environments under an `envship env` root are shared and immutable: refused.

    \b
    Examples:
      envship add 'requests>=2.31' --env .venv
      envship add rich --dry-run --json
    """
    result = add(
        requirements,
        env=env,
        spec=spec_path,
        index_url=index_url,
        extra_index_urls=extra_index_urls,
        find_links=find_links,
        dry_run=dry_run,
        log=_log,
    )
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(_summary(result))


def _summary(result: AddResult) -> str:
    would = "would " if result.dry_run else ""
    lines = [f"{p} is already locked; nothing to do" for p in result.already_locked]
    for req in result.not_applicable:
        nowhere = ", nor to any target of the spec" if req in result.applies_nowhere else ""
        lines.append(
            f"{req!r} does not apply to this environment (its marker is false){nowhere}: "
            f"{'would not be' if result.dry_run else 'not'} installed"
        )
    if result.installed or result.removed:
        lines.append(
            f"{would}change {result.env} ({result.held} locked packages held at their versions):"
        )
        lines += [f"  + {p}" for p in result.installed]
        lines += [f"  - {p}" for p in result.removed]
        lines += [
            f"  {package} is the version the lock pins for group {', '.join(groups)}, which "
            f"{result.env} was installed without"
            if groups
            else f"  {package} is the version the lock pins for it"
            for package, groups in result.group_locked
        ]
    else:
        done = {canonicalize_name(p.split("==")[0]) for p in result.already_locked}
        skip = set(result.not_applicable)
        rest = [
            r
            for r in result.requested
            if canonicalize_name(Requirement(r).name) not in done and r not in skip
        ]
        if rest:
            lines.append(f"{result.env} already has {', '.join(rest)}")
    if result.recorded:
        lines.append(f"{would}record in {result.spec}: {', '.join(result.recorded)}")
        verb = "would replace" if result.dry_run else "replaced"
        lines += [f"  {verb} {old!r} with {new!r}" for old, new in result.replaced]
    if result.lock_stale:
        state = "would be" if result.dry_run else "is"
        why = "to take the addition into" if result.recorded else "to bring up to date"
        lines.append(f"the lock {state} stale: run `envship lock` {why} {result.lock}")
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)

"""``envship``: the entry point and the table of command groups."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click

from .. import __version__
from ..errors import EnvshipError
from ._common import render_error, reset_json

# Command name -> module under envship.cli. Modules are imported when their command is
# looked up, so `envship fetch` does not pay for importing the importers, the verifier
# or the installer (imports are most of a fetch that finds everything in the store).
_COMMANDS = (
    "init",
    "lock",
    "fetch",
    "index",
    "install",
    "verify",
    "env",
    "kernel",
    "image",
    "add",
)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*_COMMANDS, *(n for n in self.commands if n not in _COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in _COMMANDS:
            module = importlib.import_module(f"{__package__}.{cmd_name}")
            found = module.command
            assert isinstance(found, click.Command)
            self.add_command(found, cmd_name)
        return found


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="envship")
def cli() -> None:
    """Lock, fetch, ship and verify one declared Python environment.

    \b
    envship init      write envship.toml from requirements.txt / pyproject / environment.yml
    envship lock      resolve the spec into pylock.toml, checked for every target
    envship fetch     download every locked artifact into a verified store
    envship index     export a static package index for offline networks
    envship install   materialize the lock offline from the store into a venv
    envship verify    check an environment's installed bits against the lock
    envship env       immutable environment versions on a shared root (EFS)
    envship kernel    register an environment as a Jupyter kernel that checks the machine
    envship image     build the environment into an OCI image with no daemon; inspect one
    envship add       install into an environment without moving a locked package

    Exit codes: 0 ok, 1 failed check, 2 bad input, 3 network, 4 integrity, 130 interrupted.
    """


def _register() -> None:
    """Load every command now (the group loads them on demand otherwise)."""
    for name in _COMMANDS:
        cli.get_command(click.Context(cli), name)


def main(argv: Sequence[str] | None = None) -> int:
    # --json sets a context variable; start each call clean (tests call main repeatedly).
    reset_json()
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except EnvshipError as exc:
        return render_error(exc)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted; re-run the same command to resume", err=True)
        return 130
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``envship``: the entry point and the table of command groups."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .. import __version__
from .._entry import closed_to_others
from ..errors import EnvshipError, Problem
from ._common import (
    echo_json,
    end_progress_line,
    json_mode,
    json_option,
    render_error,
    reset_json,
)

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


class _Interrupted(BaseException):
    """A KeyboardInterrupt (Ctrl-C, or SIGTERM through :func:`_terminate`) carried past
    click's own main, which answers one with a blank line on stderr to close the
    terminal's ``^C`` echo. With ``--json`` stderr must stay empty, so :func:`main` says
    it, in text or JSON. A BaseException, as KeyboardInterrupt is: nothing on the way
    takes it for an error. Every clean-up under the command still sees the
    KeyboardInterrupt itself; only the group turns it into this on its way out."""


class _LazyGroup(click.Group):
    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:  # parsing runs eager callbacks (--help loads every command module)
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt as exc:
            raise _Interrupted from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:  # the command, and the import of its module on first lookup
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted from exc

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


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # click's own version_option prints before any other option is read, so it could
    # not honour `--json`; main() has already looked for it in the arguments.
    if not value or ctx.resilient_parsing:
        return
    if json_mode():
        echo_json({"name": "envship", "version": __version__})
    else:
        click.echo(f"envship, version {__version__}")
    ctx.exit()


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit (with --json, as a JSON document).",
)
@json_option
def cli(as_json: bool) -> None:
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

    Exit codes: 0 ok, 1 failed check, 2 bad input, 3 network, 4 integrity,
    70 internal error (a bug in envship), 130 interrupted (Ctrl-C or SIGTERM).
    """


def _register() -> None:
    """Load every command now (the group loads them on demand otherwise)."""
    for name in _COMMANDS:
        cli.get_command(click.Context(cli), name)


def _json_asked(args: Sequence[str]) -> bool:
    """``--json`` among the options: usage errors happen before click sees the flag."""
    end = args.index("--") if "--" in args else len(args)
    return "--json" in args[:end]


def _fail(kind: str, message: str, code: int, *, as_json: bool, hint: str | None = None) -> int:
    """An error that is not an EnvshipError (usage, interruption), rendered the same way."""
    end_progress_line()
    if as_json:
        echo_json({"error": kind, "message": message, "problems": [], "hint": hint})
    else:
        click.echo(f"error: {message}" if kind == "usage" else message, err=True)
        if hint:
            click.echo(f"hint: {hint}", err=True)
    return code


class _SystemError(EnvshipError):
    """An OSError no command expected (``"error": "os-error"`` in --json)."""

    kind = "os-error"


def os_error(exc: OSError) -> int:
    """The last resort for an OSError no command turned into an error of its own: one
    message naming the path and the system's reason, exit 1, and with ``--json`` one
    document, never a traceback. A refused path (EACCES, EPERM: a folder another user
    made private) also names the folder that refuses, its owner and this user. Commands
    still raise their own errors first; this catches what slipped past them."""
    # Imported here: only a failure pays for it (it pulls in the lock and target models).
    from .._environment import blocked_at, denied, is_denied
    from .._flock import denied as refuses
    from .._flock import whom
    from ..errors import PermissionDeniedError

    reason = exc.strerror or exc.__class__.__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    error: EnvshipError
    if is_denied(exc) and paths:
        user, path = whom(), Path(paths[0])
        readable = not os.path.lexists(path) or os.access(path, os.R_OK)
        if blocked_at(path) != Path(os.path.realpath(path)) or not readable:
            # A folder on the way cannot be entered, or the path cannot be read.
            error = denied(
                paths[0],
                paths[0],
                hint=f"ask the owner of the folder named to let {user} read it, or run the "
                "command as a user who can",
            )
        else:
            # Reachable: it is writing it (or, when it does not exist, its folder) that
            # was refused.
            place, action = (
                (path, "change") if os.path.lexists(path) else (path.parent, "create files in")
            )
            error = PermissionDeniedError(
                f"permission denied: {user} may not {action} {place}",
                problems=[Problem(str(place), refuses(place, action))],
                hint=f"ask the owner of {place} to let {user} {action} it, or choose a place "
                f"{user} can write",
            )
    elif is_denied(exc):
        error = PermissionDeniedError(f"permission denied: {reason}")
    else:
        where = ": " + " -> ".join(paths) if paths else ""
        error = _SystemError(
            f"{reason[:1].lower()}{reason[1:]}{where}",
            problems=[Problem(p, reason) for p in paths[:1]],
        )
    try:
        return render_error(error)
    except OSError:  # the output itself is what failed (a closed pipe): nothing to say it on
        return error.exit_code


# sysexits.h's EX_SOFTWARE, "an internal software error": an exception no command
# turned into an error of its own is a bug, not bad input or a failed check.
EX_SOFTWARE = 70


class _InternalError(EnvshipError):
    """A bug (``"error": "internal"`` in --json): rendered as every error is."""

    exit_code = EX_SOFTWARE
    kind = "internal"


def _internal(exc: Exception, *, as_json: bool) -> int:
    """The last resort for an exception that is a bug: its traceback on stderr (it must
    stay visible, to be reported), and, with ``--json``, still one document on stdout in
    the shape of every other error, so a program reading it is not left with nothing.
    The place it was raised is the one problem."""
    end_progress_line()
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    frames = traceback.extract_tb(exc.__traceback__)
    problems = [Problem(f"{f.filename}:{f.lineno} ({f.name})", "raised here") for f in frames[-1:]]
    said = str(exc).strip().splitlines()
    message = f"internal error ({type(exc).__name__})" + (f": {said[0]}" if said else "")
    hint = (
        f"this is a bug in envship {__version__}: please report it with the traceback "
        "printed on stderr and the command that was run"
    )
    error = _InternalError(message, problems=problems, hint=hint)
    # The output itself may be what failed (a closed pipe): the traceback is out already.
    with contextlib.suppress(OSError):
        render_error(error)
    return EX_SOFTWARE


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (`docker stop`, systemd, a batch scheduler) runs the same clean-up as Ctrl-C:
    # a half-made environment or store entry is removed and uv is stopped with us.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv) if argv is not None else sys.argv[1:]
    as_json = _json_asked(args)
    # --json sets a context variable; start each call afresh (tests call main repeatedly).
    reset_json(as_json)
    # Only the main thread may set handlers; the previous one comes back afterwards,
    # since main() also runs inside other programs (the IPython magic, tests).
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    umask = closed_to_others()  # put back afterwards too (the IPython magic's kernel)
    try:
        cli.main(args=args, prog_name="envship", standalone_mode=False)
    except EnvshipError as exc:
        return render_error(exc)
    except (_Interrupted, click.exceptions.Abort, KeyboardInterrupt) as exc:
        if isinstance(exc, _Interrupted) and not as_json:
            click.echo(err=True)  # what click did: the line ends the terminal's "^C"
        message = "interrupted; re-run the same command to resume"
        return _fail("interrupted", message, 130, as_json=as_json)
    except click.exceptions.ClickException as exc:
        if not as_json:
            exc.show()
            return exc.exit_code
        ctx = getattr(exc, "ctx", None)
        hint = f"{ctx.command_path} --help" if ctx is not None else "envship --help"
        return _fail("usage", exc.format_message(), exc.exit_code, as_json=True, hint=hint)
    except OSError as exc:
        return os_error(exc)
    except Exception as exc:  # a bug: no command turned it into an error of its own
        return _internal(exc, as_json=as_json)
    finally:
        os.umask(umask)
        if on_main:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Shared CLI plumbing: ``--json``, progress on stderr, and rendering of errors.

This is the one place where an :class:`~envship.errors.EnvshipError` becomes a
message, a hint and an exit code.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from ..errors import EnvshipError

__all__ = [
    "Progress",
    "compile_option",
    "echo_json",
    "end_progress_line",
    "groups_option",
    "json_mode",
    "json_option",
    "lock_option",
    "python_option",
    "render_error",
    "reset_json",
    "store_option",
    "target_option",
]

F = TypeVar("F", bound=Callable[..., Any])
_JSON: ContextVar[bool] = ContextVar("envship_json", default=False)


def json_mode() -> bool:
    return _JSON.get()


def reset_json(on: bool = False) -> None:
    """Start a call with JSON output off, or on when ``--json`` is among its options."""
    _JSON.set(on)


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        _JSON.set(True)
    return value


def json_option(func: F) -> F:
    """Add ``--json``: the result (or the error) as one JSON document on stdout."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        # `envship --json CMD` (the group's flag) counts for the command too.
        default=json_mode,
        is_eager=True,
        expose_value=True,
        callback=_set_json,
        help="Print the result (or the error) as JSON on stdout.",
    )(func)


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def end_progress_line() -> None:
    """Finish a progress line left open on a terminal, so what follows starts afresh."""
    if Progress.line_open:
        Progress.line_open = False
        click.echo("", err=True)


def render_error(exc: EnvshipError) -> int:
    end_progress_line()
    if json_mode():
        echo_json(exc.to_json())
    else:
        click.secho(f"error: {exc.message}", fg="red", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        if exc.hint:
            click.secho(f"hint: {exc.hint}", fg="yellow", err=True)
    return exc.exit_code


class Progress:
    """Progress on stderr: a redrawn line on a terminal, a line every few seconds otherwise.

    Silent in ``--json`` mode so stdout stays one JSON document and stderr stays quiet.
    """

    line_open = False  # a terminal line redrawn in place and not yet ended (any instance)

    def __init__(self, label: str, *, quiet: bool = False) -> None:
        self.label = label
        self.quiet = quiet or json_mode()
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int, detail: str = "") -> None:
        if self.quiet or total <= 0:
            return
        now = time.monotonic()
        final = total > 0 and done >= total
        if not final and now - self._last < (0.1 if self.tty else 5.0):
            return
        self._last = now
        line = f"{self.label}: {_size(done)} / {_size(total)}"
        if total:
            line += f" ({100 * done // total}%)"
        if detail:
            line += f" {detail}"
        if self.tty:
            click.echo(f"\r\033[K{line}", err=True, nl=final)
            Progress.line_open = not final
        else:
            click.echo(line, err=True)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def lock_option(help_text: str) -> Callable[[F], F]:
    """``--lock FILE`` (default ./pylock.toml), passed as ``lock_path``."""
    from ..lockfile import LOCK_FILENAME

    return click.option(
        "--lock",
        "lock_path",
        # readable=False: a lock this user may not read is envship's permission error
        # (exit 1, naming the folder and owner), not click's usage error.
        type=click.Path(dir_okay=False, readable=False, path_type=Path),
        default=Path(LOCK_FILENAME),
        show_default=True,
        # Other tools' PEP 751 locks carry no targets (tool.envship.targets): say whose.
        help=f"{help_text} A pylock.toml written by `envship lock`.",
    )


def store_option(func: F) -> F:
    """``--store DIR`` (or $ENVSHIP_STORE), passed as ``store_dir``."""
    return click.option(
        "--store",
        "store_dir",
        # readable=False: a store another user keeps private is envship's to explain
        # (whose folder, the fix), not click's "is not readable" usage error.
        type=click.Path(file_okay=False, readable=False, path_type=Path),
        envvar="ENVSHIP_STORE",
        default=None,
        help="The artifact store [default: $ENVSHIP_STORE, else the user cache].",
    )(func)


def groups_option(verb: str, default: str = "every group in the lock") -> Callable[[F], F]:
    """``--group NAME`` (repeatable) and ``--no-groups``, passed as ``groups``: the names
    given, ``()`` for none of the lock's groups, None (neither option) for the command's
    ``default`` (all of them, for most). Without ``--no-groups`` a lock's only group
    could not be left out."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def command(*args: Any, groups: tuple[str, ...], no_groups: bool, **kwargs: Any) -> Any:
            if no_groups and groups:
                raise click.UsageError("--group and --no-groups exclude each other")
            return func(*args, groups=() if no_groups else (groups or None), **kwargs)

        with_flag = click.option(
            "--no-groups",
            is_flag=True,
            help=f"{verb} none of the lock's dependency groups: only the packages outside them.",
        )(command)
        return cast(
            F,
            click.option(
                "--group",
                "groups",
                multiple=True,
                metavar="NAME",
                help=f"{verb} this dependency group (repeatable) [default: {default}].",
            )(with_flag),
        )

    return decorate


def python_option(default_text: str) -> Callable[[F], F]:
    """``--python PY``: the base interpreter of the environment to build."""
    return click.option(
        "--python",
        metavar="PY",
        default=None,
        help=f"Base interpreter (path or name on PATH) [default: {default_text}].",
    )


def target_option(func: F) -> F:
    """``--target NAME``: one of the lock's targets, passed as ``target``."""
    return click.option(
        "--target",
        metavar="NAME",
        default=None,
        help="Install for this lock target [default: the one this machine matches].",
    )(func)


def compile_option(func: F) -> F:
    return click.option(
        "--compile",
        "compile_bytecode",
        is_flag=True,
        help="Write byte-code (.pyc) at install time, recorded in the install marker "
        "(install: asked of an environment without it, compiles it; env create: a "
        "version of its own).",
    )(func)

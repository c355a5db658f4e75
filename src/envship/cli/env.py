"""``envship env``: persistent environments on a shared root (create, list, gc, check)."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import click

from .._envlist import EnvInfo
from .._envroot import stamp_problem
from .._flock import whom
from ..envs import EnvInputError, EnvVersion, check_env, create_env, gc, list_envs
from ..lockfile import LockFile
from ..store import Store
from ._common import (
    F,
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

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _root_option(func: F) -> F:
    return click.option(
        "--root",
        "root",
        type=click.Path(file_okay=False, readable=False, path_type=Path),  # see store_option
        envvar="ENVSHIP_ROOT",
        default=None,
        help="The shared folder holding the environments [default: $ENVSHIP_ROOT].",
    )(func)


def _root(root: Path | None) -> Path:
    if root is None:
        raise EnvInputError(
            "no environment root given",
            hint="pass --root DIR or set ENVSHIP_ROOT to a folder on the shared volume "
            "(for example an EFS mount seen by every instance)",
        )
    return root


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    # A callback rather than a ParamType: ParamType is generic only from click 8.2 on.
    found = _DURATION.match(value.strip())
    if found is None:
        raise click.BadParameter(f"{value!r} is not a duration like 30s, 15m, 12h or 7d")
    try:
        return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    except OverflowError:  # timedelta stops at 999999999 days
        raise click.BadParameter(
            f"{value!r} is too long; the longest is {timedelta.max.days}d"
        ) from None


def _with_notes(version: EnvVersion, as_json: bool) -> dict[str, object]:
    """The version's JSON form, its notes joined by one on its use stamp when this
    user's use cannot be recorded (``gc`` would not see it), with ``use_recorded``;
    in text mode each note goes to stderr first: nothing of it passes in silence."""
    problem = stamp_problem(version.path)
    notes = [*version.notes, *([problem] if problem else [])]
    if not as_json:
        for note in notes:
            click.secho(f"note: {note}", fg="yellow", err=True)
    return {**version.to_json(), "notes": notes, "use_recorded": problem is None}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@click.group("env")
def command() -> None:
    """Persistent environments on a shared root (EFS, NFS): one copy, every instance.

    Each version is an immutable venv under ROOT/NAME/versions/KEY, made once from
    (lock, target, groups, base Python); ROOT/NAME/current points at the one in use
    and is switched atomically. Concurrent creators make one copy; a killed one
    leaves nothing that is ever pointed at.
    """


@command.command("create")
@click.argument("name")
@_root_option
@lock_option("The PEP 751 lock file to install.")
@store_option
@python_option("the one running envship")
@target_option
@groups_option("Include")
@compile_option
@click.option(
    "--reinstall",
    is_flag=True,
    help="Make an existing version again, in place, from the store's wheels (hashed "
    "first): for files edited or deleted inside its packages, which `envship verify` "
    "reports and a plain create does not look for.",
)
@json_option
def create(
    name: str,
    root: Path | None,
    lock_path: Path,
    store_dir: Path | None,
    python: str | None,
    target: str | None,
    groups: tuple[str, ...] | None,
    compile_bytecode: bool,
    reinstall: bool,
    as_json: bool,
) -> None:
    """Create (or reuse) the version of NAME for the lock and make it current.

    \b
    Examples:
      envship env create ds --root /mnt/efs/envs --lock pylock.toml
      ENVSHIP_ROOT=/mnt/efs/envs envship env create ds --group dev --json
    """
    env_root = _root(root)  # first: with no root, nothing else matters
    version = create_env(
        LockFile.load(lock_path),
        Store.at(store_dir),
        env_root,
        name=name,
        python=python,
        target=target,
        groups=groups,
        compile_bytecode=compile_bytecode,
        progress=Progress("stage"),
        reinstall=reinstall,
    )
    data = _with_notes(version, as_json)
    if as_json:
        echo_json(data)
    elif version.repaired:
        click.echo(
            f"made {name} version {version.key} again, in place (target "
            f"{version.target.name}), in {version.seconds:.1f}s\n  python: {version.python}"
        )
    elif version.created:
        click.echo(
            f"created {name} version {version.key} (target {version.target.name}) "
            f"in {version.seconds:.1f}s\n  python: {version.python}"
        )
    else:
        click.echo(f"{name} is current at existing version {version.key}: {version.python}")


@command.command("list")
@_root_option
@click.option("--sizes", is_flag=True, help="Also measure each version's disk use (slow).")
@json_option
def list_(root: Path | None, sizes: bool, as_json: bool) -> None:
    """List the environments under the root and their versions."""
    where = _root(root)
    envs = list_envs(where, sizes=sizes)
    if as_json:
        # An object, as every other command prints (`kernel list`: {"kernels": [...]}).
        echo_json({"root": str(where), "envs": [e.to_json() for e in envs]})
        return
    if not envs:
        click.echo(f"no environments under {where}")
    for env in envs:
        click.echo(f"{env.name}  current: {_current(env)}")
        if env.unreadable:
            click.echo(f"  unreadable: {env.unreadable}")
        for v in env.versions:
            mark = "*" if v.current else " "
            state = (v.target.name if v.target else "?") if v.complete else "incomplete"
            state = "unreadable" if v.unreadable else state
            used = v.last_used.astimezone().strftime("%Y-%m-%d %H:%M")
            size = f"  {_size(v.size)}" if sizes else ""
            click.echo(f"  {mark} {v.key}  {state}  used {used}{size}")
            if v.unreadable:  # the folder that refuses, its owner and mode, as --json has
                click.echo(f"      {v.unreadable}")


def _current(env: EnvInfo) -> str:
    """What ``current`` names; "(none)" only when it is known to name nothing. In a folder
    this user cannot enter, ``current`` cannot be read: that is not the same as none (the
    line after it names the folder that refuses, whose it is and its mode)."""
    if env.current is not None:
        return env.current
    return "(none)" if _readable(env.path) else f"cannot be read by {whom()}"


def _readable(env_dir: Path) -> bool:
    """Whether ``current`` in ``env_dir`` could be looked up by this user."""
    try:
        os.lstat(env_dir / "current")
    except PermissionError:
        return False
    except OSError:
        return True  # there is no `current` to read: none, truly
    return True


@command.command("gc")
@_root_option
@click.option(
    "--older-than",
    default="7d",
    metavar="DURATION",
    callback=_duration,
    show_default=True,
    help="Remove versions not current and unused for this long (30s, 15m, 12h, 7d).",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@json_option
def gc_command(root: Path | None, older_than: timedelta, dry_run: bool, as_json: bool) -> None:
    """Remove versions that are not current and have not been used for a while.

    \b
    A version is never removed while:
      - it is current;
      - it was used within --older-than: `env create`, `env check` and every
        start of a kernel envship registered refresh its use stamp
        (VERSION/.envship-used, writable by every user, so any user's use
        counts; a use that cannot be recorded is said by create and check);
      - it is being created or made current (its lock is held);
      - a process on THIS machine runs from it: its command line, VIRTUAL_ENV
        or PATH, executable, working directory, or a mapped or open file names
        a path inside it, by whichever path reaches the same folder (matched
        by device and inode: a symlinked or bind-mounted root too; for other
        users' processes only the command line, unless gc runs as root).

    What a failed create leaves is removed at any age, each only while no creator
    holds it: the lock files of keys with no version, and an environment with no
    version and no `current`.

    What this user may not remove (another user's version, lock file or folder)
    is left as it is and listed with whose it is, as is what stayed in .trash
    when a removal could not finish; gc goes on with the rest and exits 0, as
    for busy and in-use versions (`denied` in --json). --dry-run writes nothing,
    needs no write access, and lists what the real run would be denied.

    Processes on other machines sharing the root (and in containers with a
    process namespace of their own) cannot be seen. For them only the use
    stamp and the --older-than grace count: a job started there straight from
    a version's bin/ (not as a kernel) and still running after --older-than
    without a new create, check or kernel start may lose its version. Give
    --older-than longer than such jobs run.
    """
    result = gc(_root(root), older_than=older_than, dry_run=dry_run)
    if as_json:
        echo_json(result.to_json())
        return
    verb = "would remove" if dry_run else "removed"
    for v in result.removed:
        state = "" if v.complete else " (incomplete)"
        left = sum(d.size or 0 for d in result.denied if d.key == v.key and d.size is not None)
        if left:
            click.echo(
                f"{verb} {v.name}/{v.key}{state}, but only {_size((v.size or 0) - left)} "
                f"of {_size(v.size)} was freed (see below)"
            )
        else:
            click.echo(f"{verb} {v.name}/{v.key}{state} {_size(v.size)}")
    for v in result.busy:
        click.echo(f"skipped {v.name}/{v.key}: being created or made current (its lock is held)")
    for u in result.in_use:
        who = ", ".join(f"{p.pid} ({p.command})" for p in u.processes)
        click.echo(f"kept {u.name}/{u.key}: in use by process {who}")
    for lock in result.stale_locks:
        click.echo(f"{verb} the lock file {lock} (its key has no version)")
    for env_dir in result.empty_envs:
        click.echo(f"{verb} {env_dir.name} ({env_dir}): no version, no current")
    for d in result.denied:
        what = f"{d.name}/{d.key}" if d.key else str(d.path)
        if d.size is not None:  # moved to .trash, not all of it deleted
            of = f" of {d.name}/{d.key}" if d.key else ""
            click.echo(f"{_size(d.size)}{of} stayed in {d.path}: {d.reason}")
        else:
            may = "would not be allowed to" if dry_run else "could not"
            click.echo(f"{may} remove {what}: {d.reason}")
    for stray in result.strays:
        click.echo(f"left {stray}: not a version (a file or link in versions/)")
    # In-use versions are listed above and counted apart: "kept" alone read as all kept.
    in_use = f", {len(result.in_use)} in use" if result.in_use else ""
    refused = sum(1 for d in result.denied if d.key and d.size is None)
    not_ours = f"; {refused} version(s) not this user's to remove" if refused else ""
    versions = result.freed - result.leftovers_freed
    earlier = (
        f" (and {_size(result.leftovers_freed)} earlier runs left in .trash)"
        if result.leftovers_freed
        else ""
    )
    click.echo(
        f"{verb} {len(result.removed)} version(s), {_size(versions)}{earlier}; "
        f"kept {result.kept} current or recently used{in_use}{not_ours}"
    )


@command.command("check")
@click.argument("name")
@_root_option
@click.option(
    "--python",
    metavar="PY",
    default=None,
    help="Interpreter to check [default: the one the environment was built on].",
)
@json_option
def check(name: str, root: Path | None, python: str | None, as_json: bool) -> None:
    """Check that this machine can run NAME's current version (exit 2 if it cannot)."""
    version = check_env(_root(root), name, python=python)
    data = _with_notes(version, as_json)
    if as_json:
        echo_json(data)
    else:
        click.echo(
            f"{name} version {version.key} (target {version.target.name}) runs here: "
            f"{version.python}"
        )

"""``envship kernel``: register an environment as a Jupyter kernel, list and remove them."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .._environment import denied
from ..kernels import KernelInfo, install_kernel, list_kernels, remove_kernel
from ._common import F, echo_json, json_option

__all__ = ["command"]

_KERNEL_DIR_HELP = (
    "A `kernels` folder to {verb} instead of Jupyter's search path "
    "(for kernelspecs written with --kernel-dir or --prefix)."
)


@click.group("kernel")
def command() -> None:
    """Jupyter kernels for environments made by `envship install` or `envship env create`.

    The kernelspec is written straight into a Jupyter data dir, so it shows at once.
    At every start its launcher checks that the machine fits the environment
    (platform, CPython, glibc, GPU for cuda) before it starts ipykernel, and says why
    when it does not. A kernel for ROOT/NAME/current runs, at each start, the version
    `current` names then.
    """


@command.command("install")
@click.argument(
    "env",
    # readable=False: an unreadable environment is envship's to explain (whose, which folder)
    type=click.Path(file_okay=False, readable=False, path_type=Path),
)
@click.option(
    "--name",
    help="Kernel name [default: the environment's name: NAME for ROOT/NAME/current, "
    "else its folder's].",
)
@click.option(
    "--display-name",
    help=(
        "Name shown in Jupyter [default: the one the environment's lock records, from the "
        "spec's [kernel] display-name, else 'Python (SPEC_NAME)'; for a lock that records "
        "none, 'Python (ENV_NAME)']."
    ),
)
@click.option(
    "--user",
    "user_flag",
    is_flag=True,
    help="Into the user's Jupyter data dir (the default).",
)
@click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    help="Into PREFIX/share/jupyter/kernels (e.g. a server environment's sys.prefix).",
)
@click.option(
    "--kernel-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Into this `kernels` folder (the kernelspec goes to DIR/NAME).",
)
@json_option
def install_cmd(
    env: Path,
    name: str | None,
    display_name: str | None,
    user_flag: bool,
    prefix: Path | None,
    kernel_dir: Path | None,
    as_json: bool,
) -> None:
    """Register the environment at ENV as a Jupyter kernel."""
    chosen = [
        opt
        for opt, on in (("--user", user_flag), ("--prefix", prefix), ("--kernel-dir", kernel_dir))
        if on
    ]
    if len(chosen) > 1:
        raise click.UsageError(
            f"choose one of --user, --prefix, --kernel-dir (got {' '.join(chosen)})"
        )
    result = install_kernel(
        env,
        name=name,
        display_name=display_name,
        user=True,
        prefix=prefix,
        kernel_dir=kernel_dir,
    )
    if as_json:
        echo_json(result.to_json())
        return
    verb = "replaced" if result.replaced else "installed"
    click.echo(f"{verb} kernel {result.name!r} ({result.display_name}) in {result.resource_dir}")
    t = result.target
    if result.follows:
        click.echo(
            f"  each start runs the version {result.env} names then, after checking the "
            f"machine fits it (now {t.platform.id}, glibc >= {t.glibc}, CPython {t.python}, "
            f"{t.variant})"
        )
    else:
        click.echo(
            f"  starts {result.python} after checking the machine fits {t.platform.id} "
            f"(glibc >= {t.glibc}, CPython {t.python}, {t.variant})"
        )
    if not result.on_jupyter_path:
        click.echo(_path_note(result.resource_dir.parent, result.name), err=True)


def _path_note(kernels_dir: Path, name: str) -> str:
    """How to make Jupyter find a kernelspec written off its search path. Jupyter looks
    for kernelspecs in ``ENTRY/kernels/NAME`` of each JUPYTER_PATH entry (jupyter_client's
    KernelSpecManager.kernel_dirs), so only a folder named ``kernels`` can be reached."""
    if kernels_dir.name == "kernels":
        return (
            f"note: {kernels_dir} is not on Jupyter's search path; "
            f"add {kernels_dir.parent} to JUPYTER_PATH"
        )
    return (
        f"note: {kernels_dir} is not on Jupyter's search path, and cannot be put on it: "
        "Jupyter only finds kernelspecs in a folder named `kernels` under a JUPYTER_PATH "
        f"entry; use --kernel-dir {kernels_dir / 'kernels'} and add {kernels_dir} to "
        f"JUPYTER_PATH (the kernelspec then goes to {kernels_dir / 'kernels' / name})"
    )


def _status(k: KernelInfo) -> str:
    verdict = "fits" if k.fits else "refuses"
    return f"{verdict}, shadowed" if k.shadowed else verdict


def _searchable(
    ctx: click.Context, param: click.Parameter, dirs: tuple[Path, ...]
) -> tuple[Path, ...]:
    """Each ``--kernel-dir`` must be a folder this user can list. One that does not exist
    is a typo, not an empty folder (exit 2); one another user keeps private is said as
    such, with whose folder refuses (click's own check calls both "does not exist")."""
    for folder in dirs:
        try:
            os.stat(folder)
        except PermissionError:
            raise denied(f"the kernel folder {folder}", folder) from None
        except OSError:
            raise click.BadParameter(f"{folder} does not exist", ctx, param) from None
        if not os.access(folder, os.R_OK | os.X_OK):
            raise denied(f"the kernel folder {folder}", folder)
    return dirs


def _search_dirs_option(func: F) -> F:
    return click.option(
        "--kernel-dir",
        "kernel_dirs",
        multiple=True,
        type=click.Path(file_okay=False, readable=False, path_type=Path),
        callback=_searchable,
        help=_KERNEL_DIR_HELP.format(verb="search") + " Repeatable.",
    )(func)


@command.command("list")
@_search_dirs_option
@json_option
def list_cmd(kernel_dirs: tuple[Path, ...], as_json: bool) -> None:
    """List the kernels envship made, where Jupyter finds them, and whether each would
    start on this machine: its own launcher is asked, in the check mode that starts
    nothing ("fits", or "refuses", its reasons and the commands that fix them). It
    refuses a machine the environment was not built for, an environment that is gone
    or half installed, and one without ipykernel."""
    kernels = list_kernels(list(kernel_dirs) if kernel_dirs else None)
    if as_json:
        echo_json({"kernels": [k.to_json() for k in kernels]})
        return
    if not kernels:
        click.echo("no envship kernels found")
        return
    width = max(len(k.name) for k in kernels)
    pad = " " * width
    for k in kernels:
        click.echo(f"{k.name:<{width}}  {_status(k):<17}  {k.env}  ({k.display_name})")
        click.echo(f"{pad}  {'':<17}  {k.resource_dir}")
        for reason in k.reasons:
            click.echo(f"{pad}  refuses: {reason}")
        for fix in k.remedies:
            click.echo(f"{pad}  fix: {fix}")
        if k.launcher_outdated:
            where = k.resource_dir.parent
            again = f"envship kernel install {k.env} --name {k.name} --kernel-dir {where}"
            click.echo(f"{pad}  its launcher is an older envship's; renew it: {again}")


@command.command("remove")
@click.argument("name")
@_search_dirs_option
@json_option
def remove_cmd(name: str, kernel_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Remove the kernel NAME, if envship made it (the environment stays)."""
    removed = remove_kernel(name, kernel_dirs=list(kernel_dirs) if kernel_dirs else None)
    if as_json:
        echo_json({"removed": removed.to_json()})
        return
    click.echo(f"removed kernel {removed.name!r} ({removed.resource_dir})")

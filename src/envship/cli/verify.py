"""``envship verify``: an installed environment against the lock, down to RECORD hashes."""

from __future__ import annotations

from pathlib import Path

import click

from ..lockfile import LockFile
from ..verify import KINDS, Difference, DifferenceKind, VerifyMismatchError, VerifyReport, verify
from ._common import echo_json, groups_option, json_option, lock_option, store_option

__all__ = ["command", "render_report"]

_TITLES: dict[DifferenceKind, str] = {
    "incomplete": "half made: a run of envship install or add did not finish",
    "missing": "missing distributions (locked, not installed)",
    "extra": "extra distributions (installed, not locked)",
    "version": "wrong versions",
    "duplicate": "duplicate distributions (a second metadata folder of a locked name)",
    "config": "settings that let in packages from outside the environment",
    "changed": "changed files",
    "removed": "removed files",
    "added": "added files (in a package folder, in no RECORD)",
    "unowned": "unowned paths (in the venv, from no installed distribution)",
}

_UNASKED = "distributions of dependency groups verify was not asked for (locked, installed)"


def _line(d: Difference) -> str:
    if d.kind == "incomplete":
        return f"{d.path}: {d.actual}" + (f"\n      {d.note}" if d.note else "")
    if d.kind == "missing":
        return f"{d.name} {d.expected}  (not in {d.path})"
    if d.kind == "extra" and d.locked_in:
        why = f"installed, in a group not asked for ({', '.join(d.locked_in)})"
        if d.expected is not None:  # that group locks another version
            why = f"locked at {d.expected} in a group not asked for ({', '.join(d.locked_in)})"
        return f"{d.name} {d.actual}  {d.path}  ({why})" + (f"  ({d.note})" if d.note else "")
    if d.kind == "extra":
        return f"{d.name} {d.actual}  {d.path}" + (f"  ({d.note})" if d.note else "")
    if d.kind == "version":
        return f"{d.name}: locked {d.expected}, installed {d.actual}  {d.path}"
    if d.kind == "duplicate":
        return f"{d.name} {d.actual}  {d.path}  (locked: {d.expected})"
    if d.kind == "config":
        line = f"{d.path}: {d.name} = {d.actual}, expected {d.expected}"
    elif d.kind == "unowned":
        line = f"{d.path}  ({d.actual})"
    elif d.kind == "changed":
        line = f"{d.name}  {d.path}\n      expected {d.expected}\n      found    {d.actual}"
    elif d.kind == "added" and d.actual not in (None, "not in RECORD"):
        # A link (named with its target), a FIFO or device node, a setuid file: said.
        line = f"{d.name}  {d.path}  ({(d.actual or '').removesuffix(', not in RECORD')})"
    else:
        line = f"{d.name}  {d.path}"
    # The note says why it matters (a .pth file runs code at every start): never dropped.
    return line + (f"\n      {d.note}" if d.note else "")


def render_report(report: VerifyReport) -> str:
    """The report as text: one summary line, then the differences grouped by kind."""
    how = "hashed" if report.full else "stat-checked"
    summary = (
        f"{report.environment.root} vs {report.lock} (target {report.target.name}): "
        f"{report.distributions} distributions, {report.checked_files} files {how}"
    )
    if report.checked_bytecode is not None:
        summary += f", {report.checked_bytecode} cached .pyc compared with their sources"
    notes = [f"note: {n}" for n in report.notes]
    if report.identical:
        return "\n".join([f"ok: {summary}; identical", *notes])
    lines = [summary]
    groups = report.by_kind()
    for kind in KINDS:
        found = groups.get(kind, [])
        # An extra the lock holds in a group verify was not asked for is no "not locked".
        parts = [(_TITLES[kind], found)]
        if kind == "extra":
            parts = [
                (_TITLES[kind], [d for d in found if not d.locked_in]),
                (_UNASKED, [d for d in found if d.locked_in]),
            ]
        for title, part in parts:
            if part:
                lines.append(f"{title} ({len(part)}):")
                lines.extend(f"  {_line(d)}" for d in part)
    return "\n".join([*lines, *notes])


@click.command("verify")
@click.argument(
    "env", required=False, type=click.Path(readable=False, path_type=Path)
)  # an unreadable one is envship's to explain: whose, which folder
@lock_option("The PEP 751 lock the environment must match.")
@click.option(
    "--target",
    "target_name",
    metavar="NAME",
    help="The lock target to compare with [default: the one fitting the env's Python "
    "and this machine].",
)
@groups_option(
    "Expect", "every group in the lock; with --image, the groups the image was built with"
)
@click.option("--full", is_flag=True, help="Also hash every file its RECORD lists (sha256).")
@click.option(
    "--bytecode",
    is_flag=True,
    help="Also check that every cached .pyc holds the code its source compiles to "
    "(compiles each source: slower).",
)
@click.option(
    "--ignore",
    "ignore",
    multiple=True,
    metavar="NAME",
    help="Leave this distribution out of the comparison (repeatable), e.g. pip.",
)
@click.option(
    "--image",
    metavar="IMAGE",
    help="Check the environment inside this image instead, by reading its layers (no "
    "container runs): a registry reference, oci:DIR[:TAG] or docker-archive:FILE. "
    "Always hashes every file.",
)
@store_option
@click.option(
    "--insecure",
    is_flag=True,
    help="With --image: allow plain HTTP and unverified TLS to a registry that is not on "
    "this machine.",
)
@json_option
def command(
    env: Path | None,
    lock_path: Path,
    target_name: str | None,
    groups: tuple[str, ...] | None,
    full: bool,
    bytecode: bool,
    ignore: tuple[str, ...],
    image: str | None,
    store_dir: Path | None,
    insecure: bool,
    as_json: bool,
) -> None:
    """Check that ENV holds exactly the locked distributions, byte for byte.

    ENV is a venv folder, an interpreter (e.g. a venv's bin/python), or a site-packages
    folder [default: $VIRTUAL_ENV]; any other folder is refused (exit 2). Exit 0 only
    when identical, 1 with every difference otherwise: first an environment still marked
    .envship-incomplete (a run of envship install or add that was killed or failed; kind
    "incomplete" in --json, with the text the mark holds, and the command that finishes
    it in the hint; one killed before its venv existed is the error "incomplete", exit
    1), then missing, extra and wrong-version distributions (by dist-info; every
    distribution under its normalized name, e.g. typing-extensions; one the lock holds
    in a dependency group verify was not asked for is named with its group, "locked_in"
    in --json), a pyvenv.cfg that includes the system site-packages, changed, removed
    and added files (a RECORD emptied or cut short is a changed RECORD), and unowned
    paths: anything at the top of site-packages that no installed distribution's RECORD
    lists (a stray module, package or .pth file). A venv's interpreter is run once (with
    -I -S, so no .pth file runs) and must exist and be the target's Python (exit 2
    otherwise, as for an interpreter no target fits).

    The quick check stats every file each RECORD lists (existence and size) and looks
    for files in package and .dist-info folders that no RECORD lists; --full also
    compares every file's sha256 with its RECORD entry (a same-size edit needs it).
    Modes no installer gives are changed files in both: a file with the setuid or setgid
    bit, and a folder others may write into (1777 too; group-writable and setgid
    folders, as under umask 002 or a shared env root, are fine). The quick check reads
    the mode of every folder and every file but the byte-code in __pycache__ folders,
    which --full also reads (a .pyc others may write is changed too); --image reads
    them all, as the layers set them.
    RECORD does not cover byte-code in __pycache__, yet Python runs a cached .pyc in
    place of its source; --bytecode compiles each source (with the environment's
    interpreter, run with no site; for --image, a CPython of the image's version here)
    and compares the code objects. With the locked wheels in the store (--store, or
    $ENVSHIP_STORE), each installed RECORD must match its wheel's own RECORD, and the
    files are checked against the wheel's hashes; without them the installed RECORD is
    all there is, and a note says so. Everything installed but not locked (pip and
    setuptools too) counts as extra unless --ignore names it.

    \b
    Examples:
      envship verify .venv
      envship verify --lock pylock.toml /opt/env/bin/python --full
      envship verify --ignore pip --json
      envship verify --image oci:out:ds --bytecode
    """
    lock = LockFile.load(lock_path)
    if image is not None:
        if env is not None or target_name:
            raise click.UsageError("--image takes no ENV or --target (the image says which)")
        report = _verify_image(lock, image, store_dir, insecure, groups, ignore, bytecode)
    else:
        # Imported here, as for --image: the store module is only needed now.
        from ..store import Store

        target = lock.target(target_name) if target_name else None
        report = verify(
            lock,
            env,
            target=target,
            groups=groups,
            full=full,
            ignore=ignore,
            bytecode=bytecode,
            store=Store.at(store_dir),
        )
    if not report.identical:
        if not as_json:
            click.echo(render_report(report))
        # The one place errors become exit codes renders this (its JSON is the report).
        raise VerifyMismatchError(report)
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(render_report(report))


def _verify_image(
    lock: LockFile,
    image: str,
    store_dir: Path | None,
    insecure: bool,
    groups: tuple[str, ...] | None,
    ignore: tuple[str, ...],
    bytecode: bool,
) -> VerifyReport:
    # Imported here: the image modules are only needed for --image.
    from ..imageinspect import verify_image
    from ..imageio import default_client, open_image
    from ..store import Store

    store = Store.at(store_dir)
    source = open_image(image, store, client=default_client(insecure=insecure))
    return verify_image(lock, source, groups=groups, ignore=ignore, bytecode=bytecode, store=store)

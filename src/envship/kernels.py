"""Jupyter kernelspecs for envship environments: install, list and remove them.

A kernelspec is a folder holding ``kernel.json`` inside one of the ``kernels`` folders
Jupyter searches (JUPYTER_PATH, the user data dir, ``{sys.prefix}/share/jupyter``, then
the system dirs); see the kernelspec docs,
https://jupyter-client.readthedocs.io/en/stable/kernels.html#kernel-specs, and
https://docs.jupyter.org/en/latest/use/jupyter-directories.html#data-files. Jupyter
lists these folders on every request, so writing the folder straight into a data dir
makes the kernel appear at once; nothing waits for a discovery cache.

``argv`` does not start the environment's Python with ipykernel directly. It runs a
launcher copied into the kernelspec folder (:mod:`envship._launcher`, a sh + Python
file that needs only the standard library, since envship is not installed in the
environment). At every start the launcher resolves the environment through every link
(``ROOT/NAME/current``, or a link to it, to the version folder it names then), reads
that environment's own install marker and checks that this machine can run it
(platform, CPython X.Y, glibc floor, a GPU for cuda), and refuses with a readable
reason instead of importing wheels built for another machine.
``metadata.envship`` (the docs' "additional attributes", namespaced per tool as they
ask) records which environment the kernel is for and, for listing, what it was when
registered. ``{connection_file}`` in ``argv`` is filled in by Jupyter, as the docs
specify. ``kernel list`` runs each launcher in its check mode, so what it shows is what
a start would do.

The folder also holds ``envship_magic.py``, a copy of :mod:`envship._magic` (the
``%envship add`` notebook magic, standard library only), which the launcher preloads
into the kernel; ``metadata.envship.envship_command`` records how to run the envship
that installed the kernel (this interpreter, ``-m envship``), since the environment
itself has no envship to run.

Every kernelspec is written in a staging folder nested inside the ``kernels`` folder
(Jupyter only looks one level down, so it never sees it half made) and put in place in
one step where the file system can exchange two names (:mod:`envship._swap`): a reader
sees the old kernelspec or the new one, whole, and never finds a replaced one missing,
nor does an install killed at any point leave it missing. What killed installs and
removals left (``.envship-staging-*``) is removed by the next one in the same folder.
What must hold of the environment first, and the kernel's name, are
:mod:`envship._kernelenv`'s; the kernelspec's file names and its ``kernel.json`` are
:mod:`envship._kernelspec`'s, and listing, with each launcher's verdict, is
:mod:`envship._kernellist`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ._kernelenv import checked_name, env_label, env_root, kernel_name_for, read_env
from ._kernellist import KernelInfo, kernel_info, list_kernels
from ._kernelspec import (
    KERNEL_JSON,
    LAUNCHER_NAME,
    MAGIC_NAME,
    jupyter_kernel_dirs,
    kernel_json,
    read_facts,
    result_json,
    specs_in,
)
from ._swap import Staging
from .errors import KernelError, KernelInputError, Problem
from .targets import Target

__all__ = [
    "KERNEL_JSON",
    "LAUNCHER_NAME",
    "MAGIC_NAME",
    "KernelError",
    "KernelInfo",
    "KernelInputError",
    "KernelSpecResult",
    "install_kernel",
    "jupyter_kernel_dirs",
    "kernel_name_for",
    "list_kernels",
    "remove_kernel",
]

_STAGING_PREFIX = ".envship-staging-"

Placement = Literal["user", "system", "prefix", "kernel-dir"]


@dataclass(frozen=True, slots=True)
class KernelSpecResult:
    """A kernelspec ``install_kernel`` wrote."""

    name: str
    display_name: str
    resource_dir: Path  # the kernelspec folder, holding kernel.json and the launcher
    placement: Placement
    env: Path
    follows: bool  # env is a link (ROOT/NAME/current): each start runs what it names then
    python: Path  # the environment's interpreter the launcher checks and then runs
    lock_digest: str
    target: Target
    argv: tuple[str, ...]
    replaced: bool  # an earlier envship kernelspec of the same name was replaced
    on_jupyter_path: bool  # False: Jupyter will not find it without JUPYTER_PATH

    def to_json(self) -> dict[str, Any]:
        return result_json(self)


def _placement(user: bool, prefix: Path | None, kernel_dir: Path | None) -> tuple[Path, Placement]:
    """The ``kernels`` folder to write into; mirrors KernelSpecManager's choice."""
    from jupyter_core.paths import SYSTEM_JUPYTER_PATH, jupyter_data_dir

    if prefix is not None and kernel_dir is not None:
        raise KernelInputError("give --prefix or --kernel-dir, not both")
    if kernel_dir is not None:
        return Path(os.path.abspath(kernel_dir)), "kernel-dir"
    if prefix is not None:
        return Path(os.path.abspath(prefix)) / "share" / "jupyter" / "kernels", "prefix"
    if user:
        return Path(jupyter_data_dir()) / "kernels", "user"
    return Path(SYSTEM_JUPYTER_PATH[0]) / "kernels", "system"


def _populate(folder: Path, spec: dict[str, Any], env: Path) -> None:
    """Fill a staging kernelspec folder; ``kernel.json`` goes last."""
    launcher = folder / LAUNCHER_NAME
    launcher.write_bytes(resources.files("envship").joinpath("_launcher.py").read_bytes())
    launcher.chmod(0o755)
    magic = resources.files("envship").joinpath("_magic.py").read_bytes()
    (folder / MAGIC_NAME).write_bytes(magic)
    # ipykernel's own logos, when the environment has them, for JupyterLab's launcher.
    for logo in sorted(env.glob("lib/python*/site-packages/ipykernel/resources/logo-*")):
        shutil.copyfile(logo, folder / logo.name)
    data = json.dumps(spec, indent=2, sort_keys=True) + "\n"
    (folder / KERNEL_JSON).write_text(data, encoding="utf-8")


def _write(kernels_dir: Path, name: str, spec: dict[str, Any], env: Path) -> bool:
    """Write the kernelspec ``kernels_dir/name`` atomically; True when one was replaced."""
    dest = kernels_dir / name
    with contextlib.ExitStack() as stack:
        try:
            kernels_dir.mkdir(parents=True, exist_ok=True)
            staging = stack.enter_context(Staging(kernels_dir, _STAGING_PREFIX))
        except OSError as exc:
            raise KernelError(
                f"cannot write into {kernels_dir}",
                problems=[Problem(str(kernels_dir), str(exc))],
                hint="use --user (the default), --prefix DIR or --kernel-dir DIR",
            ) from None
        try:
            new = staging.path / "new"
            new.mkdir()
            _populate(new, spec, env)
            # One exchange where the file system has it: Jupyter never finds the name
            # missing, nor does a killed install leave it missing (see envship._swap).
            return staging.replace(new, dest)
        except OSError as exc:
            raise KernelError(
                f"cannot write the kernelspec {dest}",
                problems=[Problem(str(dest), str(exc))],
            ) from None


def install_kernel(
    env: Path,
    *,
    name: str | None = None,
    display_name: str | None = None,
    user: bool = True,
    prefix: Path | None = None,
    kernel_dir: Path | None = None,
) -> KernelSpecResult:
    """Register the environment at ``env`` (made by ``envship install`` or ``envship env
    create``) as a kernel.

    Placement, as ``jupyter kernelspec install`` does it: ``kernel_dir`` (a ``kernels``
    folder; the kernelspec goes to ``kernel_dir/name``), else ``prefix`` (to
    ``prefix/share/jupyter/kernels``), else the user data dir when ``user``, else the
    first system dir. An earlier kernelspec of the same name is replaced only if envship
    made it. The environment path is kept as given (not resolved), so a kernel made
    for a symlink such as ``envs/ds/current`` (or a chain of links to it) follows it: each
    start resolves every link and runs the version it names then, by that version's own
    interpreter.
    """
    env = Path(os.path.abspath(env))
    marker, target = read_env(env)
    label = env_label(env)
    name = checked_name(name) if name is not None else kernel_name_for(label)
    # The spec's [kernel] display-name travels in the lock, and from there in the marker.
    recorded = marker.get("display_name")
    display_name = display_name or (recorded if isinstance(recorded, str) else None)
    display_name = display_name or f"Python ({label})"
    kernels_dir, placement = _placement(user, prefix, kernel_dir)
    resource_dir = kernels_dir / name
    if resource_dir.exists() and read_facts(resource_dir) is None:
        raise KernelError(
            f"a kernelspec named {name!r} that envship did not make is at {resource_dir}",
            hint="pick another --name, or remove it with `jupyter kernelspec remove`",
        )
    spec = kernel_json(name, display_name, resource_dir, env, marker, target, env_root(env))
    replaced = _write(kernels_dir, name, spec, env)
    return KernelSpecResult(
        name=name,
        display_name=display_name,
        resource_dir=resource_dir,
        placement=placement,
        env=env,
        follows=env.is_symlink(),
        python=env / "bin" / "python",
        lock_digest=marker["lock"]["digest"],
        target=target,
        argv=tuple(spec["argv"]),
        replaced=replaced,
        on_jupyter_path=any(
            os.path.realpath(kernels_dir) == os.path.realpath(d) for d in jupyter_kernel_dirs()
        ),
    )


def _list_hint(kernel_dirs: Sequence[Path] | None) -> str:
    """The ``kernel list`` that searches where ``kernel remove`` searched: with the same
    ``--kernel-dir`` folders (a bare ``kernel list`` searches Jupyter's path only), and,
    when none were named, how to reach a kernelspec written with ``--prefix`` or
    ``--kernel-dir``, which Jupyter's path may not include."""
    if kernel_dirs:
        where = " ".join(f"--kernel-dir {shlex.quote(os.path.abspath(d))}" for d in kernel_dirs)
        return f"`envship kernel list {where}` shows the kernels envship made there"
    return (
        "`envship kernel list` shows the kernels envship made on Jupyter's path; one "
        "installed with --prefix P is removed with `envship kernel remove NAME --kernel-dir "
        "P/share/jupyter/kernels`, one installed with --kernel-dir D with `--kernel-dir D`"
    )


def remove_kernel(name: str, *, kernel_dirs: Sequence[Path] | None = None) -> KernelInfo:
    """Remove the kernelspec Jupyter would use for ``name``, if envship made it."""
    dirs = list(kernel_dirs) if kernel_dirs is not None else jupyter_kernel_dirs()
    key = name.lower()
    match = next(
        (s for d in dirs for s in specs_in(d) if s.name.lower() == key),
        None,
    )
    if match is None:  # bad input, as `env check` of an unknown name
        raise KernelInputError(
            f"no kernelspec named {name!r}",
            problems=[Problem(str(d), "searched") for d in dirs],
            hint=_list_hint(kernel_dirs),
        )
    facts = read_facts(match)
    if facts is None:
        raise KernelInputError(
            f"the kernelspec {name!r} at {match} was not made by envship; refusing to remove it",
            hint=f"remove it with `jupyter kernelspec remove {key}` if you mean to",
        )
    info = kernel_info(match, facts, shadowed=False, check=False)
    # Out of Jupyter's sight in one rename, then deleted at leisure; never put back.
    try:
        with Staging(match.parent, _STAGING_PREFIX) as staging:
            os.rename(match, staging.path / "removed")
    except OSError as exc:
        raise KernelError(
            f"cannot remove the kernelspec {match}",
            problems=[Problem(str(match), str(exc))],
        ) from None
    return info

"""The uv command lines of ``envship install``, and the environment uv runs in.

Standard library only (``os``), because the quick path (:mod:`envship._quickinstall`)
starts uv before it imports anything else; the full path (:mod:`envship.install`) builds
the same lines here, so the two never ask uv for different things.
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: importing typing costs the quick path of ``envship
# install`` ~7 ms before uv starts; type checkers take the name alone (mypy, pyright).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from pathlib import Path

__all__ = ["plain_environment", "requirement_line", "sync_command", "venv_command"]

# Colour codes would end up in the lines we read and pass on (FORCE_COLOR, set in every
# Jupyter kernel, beats NO_COLOR in uv), and COLUMNS makes uv wrap them mid-sentence.
_LAYOUT_VARIABLES = ("FORCE_COLOR", "CLICOLOR_FORCE", "COLUMNS")


def plain_environment(base: Mapping[str, str], drop: Collection[str] = ()) -> dict[str, str]:
    """``base`` (an environment for uv) without ``drop`` and without what colours or
    wraps uv's output: uv's lines are read by envship, not a terminal."""
    env = {k: v for k, v in base.items() if k not in _LAYOUT_VARIABLES and k not in drop}
    env["NO_COLOR"] = "1"
    return env


def venv_command(
    uv: str, base: str, dest: str, *, cache_args: Sequence[str] = (), relocatable: bool = False
) -> list[str]:
    """``uv venv`` making ``dest`` from the interpreter ``base``, offline; an existing
    folder (ours, marked incomplete) is kept."""
    command = [uv, "venv", "--quiet", "--no-project", "--offline", "--no-python-downloads"]
    command += [*cache_args, *(["--relocatable"] if relocatable else [])]
    return [*command, "--allow-existing", "--python", base, dest]


def sync_command(
    uv: str,
    env_python: str,
    requirements: str,
    *,
    cache_args: Sequence[str] = (),
    no_build: bool,
    compile_bytecode: bool,
    link_mode: str | None,
    relink: bool = False,
    replaced: Sequence[str] = (),
) -> list[str]:
    """``uv pip sync`` of exactly the hashed ``name @ file://`` lines in ``requirements``
    into the environment of ``env_python``: no index, no network, every sha256 checked
    (``--require-hashes``), nothing built when every artifact is a wheel (``no_build``).
    ``relink``: every file put in place again (another link mode); ``replaced``: names
    installed again at the same version (their RECORD is not the one installed)."""
    command = [uv, "pip", "sync", "--quiet", "--python", env_python]
    command += ["--offline", "--no-index", "--require-hashes", "--allow-empty-requirements"]
    command += cache_args
    if no_build:
        command.append("--no-build")
    if compile_bytecode:
        command.append("--compile-bytecode")
    if link_mode is not None:
        command += ["--link-mode", link_mode]
    if relink:
        command.append("--reinstall")
    for name in replaced:
        command += ["--reinstall-package", name]
    return [*command, requirements]


def requirement_line(name: str, path: Path, sha256: str) -> str:
    """One line of the requirements ``uv pip sync`` installs: the artifact at ``path``
    (absolute), its hash required. ``name @ URL`` percent-encodes odd paths and lets uv
    check the file's name matches."""
    return f"{name} @ {path.as_uri()} --hash=sha256:{sha256}"

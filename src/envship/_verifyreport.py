"""What :func:`envship.verify.verify` returns, and the error the CLI raises when it differs.

The hint is built here from the differences found: each kind that has a remedy names it
(a half-made environment's command, ``envship lock`` for what ``envship add`` put in,
the command that makes a changed environment again from the store's wheels, the install
that returns missing, extra or wrong-version distributions to the lock).
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._difference import Difference, DifferenceKind
from ._environment import InstalledEnvironment
from ._halfmade import base_option, remake
from ._strays import VENV_CREATION
from ._verifymodes import OPEN_EXPECTED, SETID_EXPECTED
from .errors import EnvshipError
from .targets import Target

__all__ = ["CONFIG_ENV", "VerifyMismatchError", "VerifyReport"]

#: The ``path`` of ``config`` differences in an image config's environment variables.
CONFIG_ENV = "config.Env"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify`; ``identical`` only when there is no difference."""

    lock: Path
    target: Target
    environment: InstalledEnvironment
    full: bool
    distributions: int  # distributions the lock expects
    checked_files: int  # RECORD entries stat-ed (quick) or hashed (full)
    differences: tuple[Difference, ...]
    checked_bytecode: int | None = None  # cached .pyc files compared; None: not asked
    notes: tuple[str, ...] = ()  # what could not be checked, and why
    # What finishes a half-made environment (an ``incomplete`` difference), a command;
    # the error's hint says it.
    remedy: str | None = None
    # The options that repeat what verify was asked to expect, shell-quoted: the groups
    # (``--group G``/``--no-groups``) and the store (``--store S``); a command that makes
    # the environment again takes them from here (all of :attr:`asked` when it has no
    # usable record of its own).
    asked_groups: str = ""
    asked_store: str = ""
    # The dependency groups verify expected, and every group of the lock: a verify that
    # expects a group it was not asked for is built from them.
    groups: tuple[str, ...] = ()
    lock_groups: tuple[str, ...] = ()
    # The image the environment was read from (``verify --image``), as named: its remedies
    # are a new build, since no command changes an image's layers in place.
    image: str | None = None

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def asked(self) -> str:
        return self.asked_groups + self.asked_store

    def by_kind(self) -> dict[DifferenceKind, list[Difference]]:
        groups: dict[DifferenceKind, list[Difference]] = {}
        for d in self.differences:
            groups.setdefault(d.kind, []).append(d)
        return groups

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "lock": str(self.lock),
            "target": self.target.to_json(),
            "env": str(self.environment.root),
            "site_packages": str(self.environment.site_packages[0]),
            "search_path": [str(p) for p in self.environment.site_packages],
            "python": self.environment.python,
            "interpreter": (
                str(self.environment.interpreter) if self.environment.interpreter else None
            ),
            "mode": "full" if self.full else "quick",
            "distributions": self.distributions,
            "checked_files": self.checked_files,
            "checked_bytecode": self.checked_bytecode,
            "differences": [d.to_json() for d in self.differences],
            "notes": list(self.notes),
        }


def _hint(report: VerifyReport) -> str | None:
    hints = []
    if report.remedy is not None:
        hints.append(f"the environment is half made: {report.remedy}")
    added = [d.name for d in report.differences if d.kind == "extra" and d.note]
    if added:
        it = "them" if len(added) > 1 else "it"
        hints.append(f"{', '.join(added)} came from `envship add`: `envship lock` takes {it} in")
    # An extra its group locks at another version (``expected``) is no verify's to expect:
    # the install that returns the environment to the lock removes it.
    unasked = [
        d for d in report.differences if d.kind == "extra" and d.locked_in and d.expected is None
    ]
    if unasked:
        hints.append(_unasked_hint(report, unasked))
    kinds = {d.kind for d in report.differences}
    if "unowned" in kinds:
        hint = "no installed distribution claims the unowned paths: remove them"
        if "missing" in kinds:
            hint += " (or reinstall the missing distributions they may belong to)"
        elif any(_is_record(d) for d in report.differences):
            hint += " (or make it again: a RECORD that lost lines no longer claims them)"
        hints.append(hint)
    if "config" in kinds:
        hints.append(_config_hint(report))
    if not unasked and (made := _made_hint(report, kinds)) is not None:
        hints.append(made)
    again = _remake(report, kinds) if report.remedy is None else None
    if again is not None:
        hints.append(again)
        if (linked := _linked_hint(report)) is not None:
            hints.append(linked)
    if report.image is None and (modes := _modes_hint(report, again)) is not None:
        hints.append(modes)
    if not report.full:
        hints.append("--full also compares every file's sha256")
    return "; ".join(hints) or None


def _unasked_hint(report: VerifyReport, unasked: list[Difference]) -> str:
    """Distributions of groups verify was not asked for: the verify that expects them
    (the groups asked and theirs), or an install without them (the remedy that follows,
    with the groups verify was asked for)."""
    groups = sorted({g for d in unasked for g in d.locked_in})
    wanted = _expecting(report, unasked)
    lock = shlex.quote(os.path.abspath(report.lock))
    if report.image is not None:
        where = f"--image {shlex.quote(report.image)}"
    else:
        where = shlex.quote(os.path.abspath(report.environment.root))
    # A venv is verified against every group of the lock by default; an image against
    # the groups it was built with, which may be others: those are named.
    every = report.image is None and set(wanted) >= set(report.lock_groups)
    options = "" if every else "".join(f" --group {shlex.quote(g)}" for g in wanted)
    options += " --full" if report.full and report.image is None else ""
    command = f"envship verify {where} --lock {lock}{options}{report.asked_store}"
    names = ", ".join(d.name for d in unasked)
    it = "them" if len(unasked) > 1 else "it"
    return (
        f"{names} {'are' if len(unasked) > 1 else 'is'} locked in dependency group"
        f"{'s' if len(groups) > 1 else ''} {', '.join(groups)}, which verify was not asked "
        f"for: `{command}` expects {it}, or install the lock without "
        f"{'them' if len(groups) > 1 else 'it'} to drop {it}"
    )


def made_with(report: VerifyReport) -> tuple[str, ...] | None:
    """The dependency groups the environment was installed with, as its install marker
    records them (None: no marker, or groups the lock does not have)."""
    marker = report.environment.marker() if report.image is None else None
    recorded = marker.get("groups") if marker is not None else None
    if not isinstance(recorded, list) or not all(isinstance(g, str) for g in recorded):
        return None
    if not set(recorded) <= set(report.lock_groups):
        return None
    return tuple(sorted(recorded))


def _expecting(report: VerifyReport, unasked: list[Difference]) -> list[str]:
    """The groups a verify that expects the ``unasked`` extras names: those the
    environment was installed with, when they hold every one (then that verify checks it
    as made); else the groups asked and the fewest that hold them all (a group more
    expects more that may not be there: attrs in a and b, idna in a, asks for a only)."""
    made = made_with(report)
    if made is not None and all(set(d.locked_in) & set(made) for d in unasked):
        return list(made)
    left = [set(d.locked_in) for d in unasked if not set(d.locked_in) & set(report.groups)]
    cover: set[str] = set()
    while left:
        counts: dict[str, int] = {}
        for held in left:
            for g in held:
                counts[g] = counts.get(g, 0) + 1
        best = min(counts, key=lambda g: (-counts[g], g))
        cover.add(best)
        left = [held for held in left if best not in held]
    return sorted({*report.groups, *cover})


def _made_hint(report: VerifyReport, kinds: set[DifferenceKind]) -> str | None:
    """Missing or extra distributions in an environment installed with other groups than
    verify was asked for: the verify that checks it as it was made."""
    made = made_with(report)
    if made is None or set(made) == set(report.groups) or not kinds & {"missing", "extra"}:
        return None
    lock = shlex.quote(os.path.abspath(report.lock))
    where = shlex.quote(os.path.abspath(report.environment.root))
    every = set(made) >= set(report.lock_groups)
    options = (
        "" if every else "".join(f" --group {shlex.quote(g)}" for g in made) or (" --no-groups")
    )
    options += " --full" if report.full else ""
    said = "".join(f" --group {g}" for g in made) or " --no-groups"
    if every:
        said = " every group of the lock"
    return (
        f"the environment was installed with{said}, as its install record says: "
        f"`envship verify {where} --lock {lock}{options}{report.asked_store}` checks it as made"
    )


def _linked_hint(report: VerifyReport) -> str | None:
    """A changed file that is a hard link (uv's default link mode links each file to
    its cache): a chmod or an edit in place changed uv's cached copy too, which a new
    environment installed from that cache links again (the reinstall the remedy gives
    makes this one from a cache of its own: seen clean)."""
    if report.image is not None:
        return None
    for d in report.differences:
        if d.kind != "changed" or d.name == VENV_CREATION:
            continue
        try:
            st = os.lstat(d.path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            return (
                f"{d.path} is a hard link ({st.st_nlink} names): installed with uv's default "
                "link mode, its files are linked to uv's cache, so the change is in the "
                "cache too and another environment installed from that cache gets it; clean "
                "the cache (uv cache clean, with the UV_CACHE_DIR the install used), or "
                "install with --link-mode copy"
            )
    return None


def _modes_hint(report: VerifyReport, again: str | None) -> str | None:
    """``chmod`` for the modes no installer gives (:mod:`envship._verifymodes`) that
    making the environment again (``again``, the remedy given) leaves: the environment's
    own folder, which a reinstall empties but keeps; all of them when nothing makes it
    again in place (an environment envship did not make)."""
    setid = [d.path for d in report.differences if d.expected == SETID_EXPECTED]
    opened = [
        d.path for d in report.differences if d.expected == OPEN_EXPECTED and d.kind == "changed"
    ]
    in_place = again is not None and not again.startswith(_NEW_ENV)
    if in_place:
        root = report.environment.record_root
        opened = [p for p in opened if root is not None and p == os.path.normpath(root)]
        setid = []
    commands = []
    if opened:
        commands.append(f"`chmod o-w {' '.join(shlex.quote(p) for p in opened)}`")
    if setid:
        commands.append(f"`chmod ug-s {' '.join(shlex.quote(p) for p in setid)}`")
    if not commands:
        return None
    what = "closes the environment's own folder" if in_place else "takes those bits back"
    if len(commands) > 1:  # both commands: "take"
        what = what.replace("takes", "take")
    return f"{' and '.join(commands)} {what}, then verify again"


def _is_record(d: Difference) -> bool:
    """A difference in a distribution's RECORD itself (gone, emptied, cut short)."""
    path = Path(d.path)
    return (
        d.kind in ("changed", "removed")
        and path.name == "RECORD"
        and path.parent.name.endswith(".dist-info")
    )


def _config_hint(report: VerifyReport) -> str:
    """What puts the settings right: a venv's pyvenv.cfg is edited; an image's config
    (``PATH``, ``VIRTUAL_ENV``) is the derived image's ``ENV`` or a new build, and its
    pyvenv.cfg a new build (a layer cannot be edited in place)."""
    if report.image is None:
        return "set include-system-site-packages = false in pyvenv.cfg"
    env = [d.name for d in report.differences if d.kind == "config" and d.path == CONFIG_ENV]
    if not env:
        return f"build the image again: {_image_build(report)}"
    prefix = str(report.environment.root).rpartition(":")[2]
    wanted = {"PATH": f"PATH={prefix}/bin:...", "VIRTUAL_ENV": f"VIRTUAL_ENV={prefix}"}
    settings = " and ".join(wanted[name] for name in wanted if name in env)
    return (
        f"the image's config must set {settings}, as `envship image build` did: build it "
        f"again ({_image_build(report)}), or put that back in the derived image's ENV"
    )


def _image_build(report: VerifyReport) -> str:
    lock = shlex.quote(os.path.abspath(report.lock))  # pasted from any folder
    return f"`envship image build --lock {lock}{report.asked}` with the image's --base and outputs"


_FILES = frozenset({"changed", "removed", "added"})
_NEW_ENV = "`envship install NEW_ENV"  # the remedy for an environment envship did not make
_DISTRIBUTIONS = frozenset({"missing", "extra", "version", "duplicate"})


def _remake(report: VerifyReport, kinds: set[DifferenceKind]) -> str | None:
    """The command that makes the environment the lock again. Changed files: make it
    again from the store's wheels (``--reinstall``, which puts the set of distributions
    right too); the set alone: an install of the lock (``uv pip sync`` adds what is
    missing and removes extras). A version under an env root: ``env create --reinstall``
    in either case (without it, env create finds the version of that key and keeps it).
    An environment envship did not make is not envship's to change: a new one is made.
    An image's is built again (``envship image build``, with the groups and store verify
    was asked for)."""
    if report.image is not None and kinds & (_FILES | _DISTRIBUTIONS | {"unowned"}):
        # A layer on top can add or hide files, never give back the ones as built.
        return (
            f"{_image_build(report)} builds an image of exactly the locked distributions "
            f"from the store's wheels (envship does not change {report.image}: no layer "
            "added on top of it can take back what the layers below hold)"
        )
    if report.image is not None or not kinds & (_FILES | _DISTRIBUTIONS):
        return None
    lock = shlex.quote(os.path.abspath(report.lock))  # pasted from any folder
    root, marker = report.environment.record_root, report.environment.marker()
    if root is not None and marker is None and report.environment.marker_damage() is not None:
        # Its record damaged after the fact: install (or env create, for a version) takes
        # it for a half-made environment and makes it again.
        again = f"--lock {lock} --target {shlex.quote(report.target.name)}{report.asked}"
        return f"`envship {remake(root, {})} {again}` makes it again"
    if root is None or marker is None:
        if not kinds & _DISTRIBUTIONS:
            return None  # its files: nothing envship made to make again
        return (
            f"{_NEW_ENV} --lock {lock}{report.asked}` makes an environment of "
            "exactly the locked distributions (envship install does not change "
            f"{report.environment.root}, which it did not make)"
        )
    command = remake(root, marker)
    # The groups verify was asked to expect (install's default, every group of the lock,
    # is what the next verify reports as extras) and the base it was made on.
    made = base_option(root, marker) + report.asked_groups
    if kinds & _FILES or command.startswith("env create"):
        return (
            f"`envship {command} --reinstall --lock {lock}{made}` makes it again from the "
            "store's wheels"
        )
    return f"`envship {command} --lock {lock}{made}` returns it to the lock"


class VerifyMismatchError(EnvshipError):
    """The environment differs from the lock; carries the whole report (exit code 1)."""

    exit_code = 1
    kind = "mismatch"

    def __init__(self, report: VerifyReport) -> None:
        n = len(report.differences)
        half = next((d for d in report.differences if d.kind == "incomplete"), None)
        state = f" is half made ({half.actual}) and" if half is not None else ""
        super().__init__(
            f"{report.environment.root}{state} differs from {report.lock} "
            f"(target {report.target.name}): {n} difference{'s' if n != 1 else ''}",
            hint=_hint(report),
        )
        self.report = report

    def to_json(self) -> dict[str, object]:
        return {**self.report.to_json(), **super().to_json()}

"""What :func:`envship.verify.verify` returns, and the error the CLI raises when it differs.

The hint is built here from the differences found: each kind that has a remedy names it
(a half-made environment's command, ``envship lock`` for what ``envship add`` put in,
the command that makes a changed environment again from the store's wheels).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._difference import Difference, DifferenceKind
from ._environment import InstalledEnvironment
from ._halfmade import remake
from .errors import EnvshipError
from .targets import Target

__all__ = ["VerifyMismatchError", "VerifyReport"]


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

    @property
    def identical(self) -> bool:
        return not self.differences

    def by_kind(self) -> dict[DifferenceKind, list[Difference]]:
        groups: dict[DifferenceKind, list[Difference]] = {}
        for d in self.differences:
            groups.setdefault(d.kind, []).append(d)
        return groups

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "lock": str(self.lock),
            "target": self.target.name,
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
    kinds = {d.kind for d in report.differences}
    if "unowned" in kinds:
        hint = "no installed distribution claims the unowned paths: remove them"
        if "missing" in kinds:
            hint += " (or reinstall the missing distributions they may belong to)"
        hints.append(hint)
    if "config" in kinds:
        hints.append("set include-system-site-packages = false in pyvenv.cfg")
    if kinds & {"changed", "removed", "added"} and report.remedy is None:
        root, marker = report.environment.record_root, report.environment.marker()
        if root is not None and marker is not None:
            hints.append(
                f"`envship {remake(root, marker)} --reinstall --lock "
                f"{shlex.quote(str(report.lock))}` makes it again from the store's wheels"
            )
    if not report.full:
        hints.append("--full also compares every file's sha256")
    return "; ".join(hints) or None


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

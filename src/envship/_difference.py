"""One way an environment differs from its lock, and the kinds in their report order.

Every check of ``envship verify`` reports in these terms: the distributions against
the lock (:mod:`envship.verify`), each RECORD against the files on disk
(:mod:`envship._records`), and what else lets code in (:mod:`envship._strays`). The
type lives apart from all of them so each imports it without an import cycle;
:mod:`envship.verify` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["KINDS", "Difference", "DifferenceKind"]

DifferenceKind = Literal[
    "incomplete", "missing", "extra", "version", "duplicate", "config", "changed", "removed",
    "added", "unowned",
]  # fmt: skip
#: Report order: a run that did not finish (``incomplete``: the environment still carries
#: ``.envship-incomplete``), distribution-level differences, the environment's settings,
#: then files. ``duplicate``: a second metadata folder of a locked name (the locked one is
#: checked).
KINDS: tuple[DifferenceKind, ...] = (
    "incomplete", "missing", "extra", "version", "duplicate", "config", "changed", "removed",
    "added", "unowned",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the environment differs from the lock, and where."""

    kind: DifferenceKind
    # The distribution concerned; for ``unowned`` the entry's name, for ``config`` the
    # setting, for a file the venv's creation wrote :data:`envship._strays.VENV_CREATION`,
    # for ``incomplete`` the marker's file name.
    name: str
    path: str  # a dist-info folder, a file or folder, pyvenv.cfg, or (missing) site-packages
    expected: str | None = None
    actual: str | None = None
    note: str | None = None  # why it is there or why it matters, when known
    # For an ``extra`` distribution the lock does hold, in dependency groups verify was
    # not asked for (``--no-groups``, or ``--group a`` of an environment made with a and
    # b): those groups, sorted. ``note`` keeps its one meaning (what ``envship add`` put
    # there), so a reader of ``--json`` that knows neither sees an extra, as before.
    locked_in: tuple[str, ...] = ()

    def to_json(self) -> dict[str, str | list[str] | None]:
        data: dict[str, str | list[str] | None] = {
            f: getattr(self, f) for f in ("kind", "name", "path", "expected", "actual")
        }
        if self.note is not None:
            data["note"] = self.note
        if self.locked_in:
            data["locked_in"] = list(self.locked_in)
        return data

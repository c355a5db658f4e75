"""The install marker's record of what ``envship add`` installed (``added``).

``envship add`` installs distributions no lock vouches for; ``envship verify`` then
reports each as ``extra``. So that it can also say where one came from (which request,
or as a dependency) and what takes it in (``envship lock``), ``add`` keeps a list of
``{"name", "version", "requested"}`` entries in the environment's install marker
(``ENV/.envship-install.json``), and ``verify`` reads it back as notes. Writer and
reader share this module so the record has one shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from ._installmarker import write_marker

if TYPE_CHECKING:
    from . import _snapshot
    from ._addplan import Plan
    from ._environment import InstalledEnvironment

__all__ = ["ADDED_KEY", "added_notes", "write_added"]

ADDED_KEY = "added"  # the install marker's list of distributions `envship add` installed


def write_added(env: Path, plan: Plan, after: _snapshot.Installed) -> None:
    """Keep the marker's list of what `envship add` put there (for `envship verify`)."""
    entries: dict[str, dict[str, Any]] = {}
    for entry in plan.marker.get(ADDED_KEY) or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            entries[canonicalize_name(entry["name"])] = entry
    requested: dict[str, Any] = {canonicalize_name(r.name): str(r) for r in plan.todo}
    for key, (name, version, _) in after.items():
        before = plan.installed.get(key)
        if key in plan.pins:
            continue
        if key in requested or key in entries or before is None or before[1] != version:
            asked = requested.get(key, entries.get(key, {}).get("requested"))
            entries[key] = {"name": name, "version": version, "requested": asked}
    data = dict(plan.marker)
    data[ADDED_KEY] = [entries[k] for k in sorted(entries) if k in after]
    write_marker(env, data)


def added_notes(environment: InstalledEnvironment) -> dict[tuple[str, str], str]:
    """(name, version) -> note for what ``envship add`` installed, from the install marker
    (``ENV/.envship-install.json``, ``added``) of the venv holding the site-packages."""
    notes: dict[tuple[str, str], str] = {}
    marker = environment.marker()
    entries = marker.get(ADDED_KEY) if marker is not None else None
    for e in entries if isinstance(entries, list) else ():
        if isinstance(e, dict) and isinstance(e.get("name"), str):
            why = f" ({e['requested']})" if e.get("requested") else " as a dependency"
            note = f"added by envship add{why}: run envship lock to take it in"
            notes[(canonicalize_name(e["name"]), str(e.get("version")))] = note
    return notes

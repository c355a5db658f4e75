"""``envship._snapshot.drift``: what ``envship add`` finds before anything runs, in real
environments made by lock, fetch and install (test_add.py) and then changed by real tools.

One row per way an environment leaves its lock. A locked distribution re-installed at its
version (another wheel, another tool, a RECORD rewritten) shows only in its RECORD, which
the install marker keeps the sha256 of; an extra distribution is no drift (additions are
what ``add`` makes).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from envship._snapshot import drift, installed
from envship.install import MARKER_NAME
from indexlib import build_wheel
from test_add import Project, add_index_root, add_server, project  # noqa: F401  (fixtures)
from test_install import REPLACEMENTS, _remove_dist, _site, _uv_install

Damage = Callable[[Path, Path, dict[str, Path]], None]
REPLACED = (
    "beta 1.0 was re-installed at its locked version from another wheel or by another "
    "tool: its RECORD is not the one `envship install` wrote"
)


def _as_installed(env: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    pass


def _removed(env: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    _remove_dist(env, "beta")


def _moved(env: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    _uv_install(env, build_wheel(tmp / "moved", "beta", "1.1"))


def _twice(env: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    """A second metadata folder (a tool that left the old one): by name, 1.0 is there."""
    site = _site(env)
    shutil.copytree(site / "beta-1.0.dist-info", site / "beta-0.9.dist-info")


def _an_extra(env: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    _uv_install(env, build_wheel(tmp / "extra", "stray", "1.0"))


def _two_replaced(env: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    _uv_install(env, build_wheel(tmp / "a", "alpha", "1.0", files={"alpha/x.py": "x = 1\n"}))
    _uv_install(env, build_wheel(tmp / "b", "beta", "1.0", files={"beta/x.py": "x = 1\n"}))


def _forget_records(damage: Damage) -> Damage:
    """The same damage in an environment whose marker predates the RECORD digests."""

    def apply(env: Path, tmp: Path, wheels: dict[str, Path]) -> None:
        marker = json.loads((env / MARKER_NAME).read_text())
        del marker["records"]
        (env / MARKER_NAME).write_text(json.dumps(marker))
        damage(env, tmp, wheels)

    apply.__name__ = f"{damage.__name__}_old_marker"
    return apply


SITE = "{site}"
CASES: list[tuple[Damage, list[tuple[str, str]]]] = [
    (_as_installed, []),
    (_an_extra, []),
    (_removed, [("beta", "locked 1.0, installed nothing")]),
    (_moved, [("beta", "locked 1.0, installed 1.1")]),
    (_twice, [("beta", "locked 1.0, and more than one metadata folder names it")]),
    *((replace, [(f"{SITE}/beta-1.0.dist-info", REPLACED)]) for replace in REPLACEMENTS),
    (
        _two_replaced,
        [
            (f"{SITE}/alpha-1.0.dist-info", REPLACED.replace("beta", "alpha")),
            (f"{SITE}/beta-1.0.dist-info", REPLACED),
        ],
    ),
    # Older markers: names and versions alone, as before the digests.
    (_forget_records(REPLACEMENTS[0]), []),
    (_forget_records(_moved), [("beta", "locked 1.0, installed 1.1")]),
]


@pytest.mark.parametrize(("damage", "found"), CASES, ids=[d.__name__.strip("_") for d, _ in CASES])
def test_drift_names_each_locked_distribution_that_left_the_lock(
    project: Project,  # noqa: F811
    tmp_path: Path,
    damage: Damage,
    found: list[tuple[str, str]],
) -> None:
    env = project.env
    beta = next(a for a in project.lockfile().artifacts() if a.name == "beta")
    (tmp_path / "locked").mkdir()
    wheel = shutil.copy(project.store.path(beta.sha256), tmp_path / "locked" / beta.filename)
    damage(env, tmp_path, {"beta": Path(wheel)})

    marker = json.loads((env / MARKER_NAME).read_text())
    pins = {p["name"]: p["version"] for p in marker["packages"]}
    problems = drift(env, marker, pins, installed([_site(env)]))
    site = str(_site(env))
    assert [(p.where, p.message) for p in problems] == [
        (where.replace(SITE, site), message) for where, message in found
    ]

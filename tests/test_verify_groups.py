"""``envship verify`` asked for fewer dependency groups than are installed: a
distribution of a group not asked for is named with its group (``locked_in`` in
``--json``), never as "installed, not locked"; the hint's verify that expects it, and
its install without it, each make the next verify pass."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from envship.cli.main import main
from envship.imageinspect import verify_image
from envship.imageio import open_image
from envship.install import install
from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import VerifyMismatchError, verify
from indexlib import build_wheel
from test_image import Setup, _no_source_date_epoch, slim_layout
from test_install import build_wheels, stocked_store, write_lock
from test_verify import Venv
from test_verify_image import group_image

# Fixtures: slim_layout and group_image build the image; the other is test_image's.
__all__ = ["_no_source_date_epoch", "group_image", "slim_layout"]

TITLE = "distributions of dependency groups verify was not asked for (locked, installed)"
EXTRA_TITLE = "extra distributions (installed, not locked)"


@dataclass(frozen=True)
class Grouped:
    """A lock with dependency groups, a store holding it, and its wheels by name."""

    lock: LockFile
    store: Store
    wheels: dict[str, Path]


@pytest.fixture
def grouped(tmp_path: Path) -> Grouped:
    """alpha and beta outside any group; tool in "dev", omega in "docs", lint in "lint"."""
    wheels = build_wheels(tmp_path / "dist")
    wheels["omega"] = build_wheel(tmp_path / "dist", "omega", "1.0")
    wheels["lint"] = build_wheel(tmp_path / "dist", "lint", "1.0")
    wheels["stray"] = build_wheel(tmp_path / "dist", "stray", "1.0")  # in no lock
    lock = write_lock(
        tmp_path / "pylock.toml",
        [wheels[k] for k in ("alpha", "beta", "tool", "omega", "lint")],
        groups={"dev": ["tool"], "docs": ["omega"], "lint": ["lint"]},
    )
    # ENVSHIP_STORE names tmp_path/store (conftest): the hint's commands find it there.
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    return Grouped(lock, store, wheels)


def commands(hint: str | None) -> list[list[str]]:
    """Every ``envship ...`` command a hint names, as argv after ``envship``."""
    return [shlex.split(c)[1:] for c in re.findall(r"`(envship [^`]+)`", hint or "")]


def run_envship(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "envship", *argv], capture_output=True, text=True, check=False
    )


CASES = [
    # installed with, verified with, (name, groups) of the unasked, --group options expected
    (("dev", "docs"), (), [("omega", ("docs",)), ("tool", ("dev",))], ["dev", "docs"]),
    (("dev", "docs"), ("dev",), [("omega", ("docs",))], ["dev", "docs"]),
    # Every group of the lock: the verify that expects them needs no --group at all.
    (None, ("dev",), [("lint", ("lint",)), ("omega", ("docs",))], []),
]


@pytest.mark.parametrize(
    ("made_with", "asked", "unasked", "options"), CASES, ids=["none", "one", "every"]
)
def test_a_group_not_asked_for_is_named_and_either_hint_makes_verify_pass(
    tmp_path: Path,
    grouped: Grouped,
    made_with: tuple[str, ...] | None,
    asked: tuple[str, ...],
    unasked: list[tuple[str, tuple[str, ...]]],
    options: list[str],
) -> None:
    dest = tmp_path / "env"
    install(grouped.lock, grouped.store, dest, groups=made_with)
    report = verify(grouped.lock, dest, groups=asked, store=grouped.store)
    assert [(d.kind, d.name, d.locked_in) for d in report.differences] == [
        ("extra", name, groups) for name, groups in unasked
    ]
    assert all(d.note is None for d in report.differences)  # not "added by envship add"
    hint = VerifyMismatchError(report).hint
    (again, reinstall) = commands(hint)
    expects = [a for g in options for a in ("--group", g)]
    assert again == ["verify", str(dest), "--lock", str(grouped.lock.path), *expects], hint
    proc = run_envship(again)
    assert proc.returncode == 0, (hint, proc.stdout, proc.stderr)

    # The other way: install what verify was asked for, and nothing else.
    assert reinstall[:2] == ["install", str(dest)]
    proc = run_envship(reinstall)
    assert proc.returncode == 0, proc.stderr
    assert verify(grouped.lock, dest, groups=asked, store=grouped.store).identical


def test_text_and_json_name_the_group_apart_from_real_extras(
    tmp_path: Path, grouped: Grouped, capsys: pytest.CaptureFixture[str]
) -> None:
    """Installed with "dev", and a distribution no lock has: only that one is "not
    locked"; old readers of --json see both as extras, as before, and no note."""
    dest = tmp_path / "env"
    install(grouped.lock, grouped.store, dest, groups=["dev"])
    subprocess.run(
        [sys.executable, "-m", "uv", "pip", "install", "--no-config", "--python",
         dest / "bin" / "python", "--no-index", "--offline", grouped.wheels["stray"]],
        check=True, capture_output=True,
    )  # fmt: skip
    site = next(dest.glob("lib/python*/site-packages"))
    argv = ["verify", str(dest), "--lock", str(grouped.lock.path), "--no-groups"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 1
    assert (
        f"{EXTRA_TITLE} (1):\n"
        f"  stray 1.0  {site / 'stray-1.0.dist-info'}\n"
        f"{TITLE} (1):\n"
        f"  tool 1.0  {site / 'tool-1.0.dist-info'}  (installed, in a group not asked for (dev))\n"
    ) in out
    assert "tool is locked in dependency group dev, which verify was not asked for" in err

    assert main([*argv, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["differences"] == [
        {
            "kind": "extra",
            "name": "stray",
            "path": str(site / "stray-1.0.dist-info"),
            "expected": None,
            "actual": "1.0",
        },
        {
            "kind": "extra",
            "name": "tool",
            "path": str(site / "tool-1.0.dist-info"),
            "expected": None,
            "actual": "1.0",
            "locked_in": ["dev"],
        },
    ]
    assert "was not asked for" in data["hint"]


def test_another_version_than_its_group_locks_names_that_group_and_version(
    tmp_path: Path, grouped: Grouped, capsys: pytest.CaptureFixture[str]
) -> None:
    """tool 2.0 where group dev locks 1.0: not "not locked" (auditor a11, M8), but no
    verify expects it either: the hint's install removes it."""
    dest = tmp_path / "env"
    install(grouped.lock, grouped.store, dest, groups=())
    tool2 = build_wheel(tmp_path / "dist2", "tool", "2.0")
    subprocess.run(
        [sys.executable, "-m", "uv", "pip", "install", "--no-config", "--python",
         dest / "bin" / "python", "--no-index", "--offline", tool2],
        check=True, capture_output=True,
    )  # fmt: skip
    report = verify(grouped.lock, dest, groups=(), store=grouped.store)
    assert [(d.kind, d.name, d.expected, d.actual, d.locked_in) for d in report.differences] == [
        ("extra", "tool", "1.0", "2.0", ("dev",))
    ]
    hint = VerifyMismatchError(report).hint or ""
    assert "was not asked for" not in hint
    site = next(dest.glob("lib/python*/site-packages"))
    argv = ["verify", str(dest), "--lock", str(grouped.lock.path), "--no-groups"]
    assert main(argv) == 1
    out, _ = capsys.readouterr()
    assert (
        f"{TITLE} (1):\n  tool 2.0  {site / 'tool-2.0.dist-info'}  (locked at 1.0 in a group "
        "not asked for (dev))\n"
    ) in out
    assert EXTRA_TITLE not in out
    (reinstall,) = commands(hint)
    assert reinstall[:2] == ["install", str(dest)]
    proc = run_envship(reinstall)
    assert proc.returncode == 0, proc.stderr
    assert verify(grouped.lock, dest, groups=(), store=grouped.store).identical


def test_an_image_verified_without_its_group_names_it(
    group_image: tuple[Setup, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Built with every group (tool in "dev"), verified with --no-groups: the hint's verify
    of the image with that group passes."""
    setup, ref = group_image
    report = verify_image(setup.lock, open_image(ref, setup.store), groups=(), store=setup.store)
    assert [(d.kind, d.name, d.locked_in) for d in report.differences] == [
        ("extra", "tool", ("dev",))
    ]
    (again, _) = commands(VerifyMismatchError(report).hint)
    store = ["--store", str(setup.store.root)]
    assert again == ["verify", "--image", ref, "--lock", str(setup.lock.path), "--group", "dev",
                     *store]  # fmt: skip
    assert main(again) == 0, capsys.readouterr()


def test_a_new_environment_for_one_envship_did_not_make_takes_the_groups_asked_for(
    tmp_path: Path, grouped: Grouped
) -> None:
    """uv installed tool (group dev) too; verified with --no-groups, the new environment
    the hint makes is of the groups verify was asked for, so the same verify passes."""
    venv = Venv(tmp_path / "venv", tmp_path / "uv-cache")
    venv.uv("venv", "--no-config", "--python", sys.executable, venv.root)
    venv.install(*(grouped.wheels[k] for k in ("alpha", "beta", "tool")))
    report = verify(grouped.lock, venv.root, groups=(), store=grouped.store)
    assert [(d.kind, d.name, d.locked_in) for d in report.differences] == [
        ("extra", "tool", ("dev",))
    ]
    hint = VerifyMismatchError(report).hint or ""
    (_, new_env) = commands(hint)
    assert new_env == ["install", "NEW_ENV", "--lock", str(grouped.lock.path), "--no-groups"]
    new = tmp_path / "new"
    proc = run_envship([str(new) if a == "NEW_ENV" else a for a in new_env])
    assert proc.returncode == 0, proc.stderr
    assert verify(grouped.lock, new, groups=(), store=grouped.store).identical


# -- overlapping groups, and the groups the environment was made with (auditor a11) ---------


@pytest.fixture
def overlapping(tmp_path: Path) -> Grouped:
    """six outside any group; a = idna, attrs; b = iniconfig, attrs; c = colorama."""
    dist = tmp_path / "dist"
    names = ("six", "idna", "attrs", "iniconfig", "colorama")
    wheels = {n: build_wheel(dist, n, "1.0") for n in names}
    lock = write_lock(tmp_path / "pylock.toml", list(wheels.values()), groups={"c": ["colorama"]})
    # write_lock puts a package in one group: attrs is in a and b, as uv writes it.
    in_groups = {"idna": ("a",), "attrs": ("a", "b"), "iniconfig": ("b",)}
    text = lock.path.read_text()
    for name, groups in in_groups.items():
        marker = " or ".join(f"'{g}' in dependency_groups" for g in groups)
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nmarker = "{marker}"\n')
    text = text.replace('dependency-groups = [\n    "c",\n]', 'dependency-groups = ["a", "b", "c"]')
    lock.path.write_text(text)
    store = stocked_store(tmp_path / "store", list(wheels.values()))
    return Grouped(LockFile.load(lock.path), store, wheels)


def test_the_hint_expects_the_groups_the_environment_was_made_with(
    tmp_path: Path, overlapping: Grouped
) -> None:
    """Made with a, verified with --no-groups: idna (a) and attrs (a, b) are extras. The
    verify that expects them names a, as the install marker records it, not a and b
    (that one would miss iniconfig): M2."""
    assert set(overlapping.lock.groups) == {"a", "b", "c"}
    dest = tmp_path / "env"
    install(overlapping.lock, overlapping.store, dest, groups=["a"])
    report = verify(overlapping.lock, dest, groups=(), store=overlapping.store)
    assert [(d.kind, d.name, d.locked_in) for d in report.differences] == [
        ("extra", "attrs", ("a", "b")),
        ("extra", "idna", ("a",)),
    ]
    again, _ = commands(VerifyMismatchError(report).hint)
    assert again == ["verify", str(dest), "--lock", str(overlapping.lock.path), "--group", "a"]
    proc = run_envship(again)
    assert proc.returncode == 0, (again, proc.stdout, proc.stderr)


def test_without_a_marker_the_hint_expects_the_fewest_groups_that_hold_the_extras(
    tmp_path: Path, overlapping: Grouped
) -> None:
    """A venv envship did not make: a holds both extras, so a alone is expected."""
    venv = Venv(tmp_path / "venv", tmp_path / "uv-cache")
    venv.uv("venv", "--no-config", "--python", sys.executable, venv.root)
    venv.install(*(overlapping.wheels[n] for n in ("six", "idna", "attrs")))
    report = verify(overlapping.lock, venv.root, groups=(), store=overlapping.store)
    again = commands(VerifyMismatchError(report).hint)[0]
    assert again == ["verify", str(venv.root), "--lock", str(overlapping.lock.path), "--group", "a"]
    proc = run_envship(again)
    assert proc.returncode == 0, (again, proc.stdout, proc.stderr)


def test_missing_groups_name_the_groups_the_environment_was_made_with(
    tmp_path: Path, overlapping: Grouped, capsys: pytest.CaptureFixture[str]
) -> None:
    """Made with a, verified with every group: iniconfig and colorama are missing; the
    hint says the environment was made with --group a and gives that verify (M3), and
    still the install that adds them."""
    dest = tmp_path / "env"
    install(overlapping.lock, overlapping.store, dest, groups=["a"])
    report = verify(overlapping.lock, dest, store=overlapping.store)
    assert [(d.kind, d.name) for d in report.differences] == [
        ("missing", "colorama"),
        ("missing", "iniconfig"),
    ]
    hint = VerifyMismatchError(report).hint or ""
    assert "the environment was installed with --group a, as its install record says" in hint
    made, install_all = commands(hint)
    assert made == ["verify", str(dest), "--lock", str(overlapping.lock.path), "--group", "a"]
    assert install_all[:2] == ["install", str(dest)]
    proc = run_envship(made)
    assert proc.returncode == 0, (made, proc.stdout, proc.stderr)

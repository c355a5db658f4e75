"""What ``envship verify``'s report says about an environment ``envship install`` made from
real wheels: every distribution under its normalized name (PEP 503), however the lock or
its metadata folder spells it, in the text and in ``--json``; and, for a site-packages
folder named alone, notes that agree with the differences found around it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from envship.cli.main import main
from envship.install import install
from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import VENV_CREATION, verify
from indexlib import build_wheel
from test_install import PY, stocked_store, write_lock
from test_verify_incomplete import Made, made  # noqa: F401  (a fixture)

# -- names: the normalized one everywhere ----------------------------------------------------


@dataclass(frozen=True)
class Mixed:
    lock: LockFile
    store: Store
    env: Path
    wheels: dict[str, Path]

    @property
    def site(self) -> Path:
        return self.env / "lib" / f"python{PY}" / "site-packages"

    def uv(self, *args: str | Path) -> None:
        from test_verify import Venv

        python = self.env / "bin" / "python"
        Venv(self.env, self.env.parent / "uv-cache").uv(
            "pip", *args[:1], "--no-config", "--python", python, *args[1:]
        )


@pytest.fixture
def mixed(tmp_path: Path) -> Mixed:
    """An environment of Mixed_Name 1.0 (its METADATA spells it so, its folders
    mixed_name) and beta, from a lock that names it mixed-name."""
    out = tmp_path / "dist"
    wheels = {
        "mixed": build_wheel(out, "Mixed_Name", "1.0"),
        "mixed11": build_wheel(out / "v11", "Mixed_Name", "1.1"),
        "beta": build_wheel(out, "beta", "1.0"),
        "other": build_wheel(out / "extra", "Other.Thing", "1.0"),
    }
    lock = write_lock(tmp_path / "pylock.toml", [wheels["mixed"], wheels["beta"]])
    store = stocked_store(Path(os.environ["ENVSHIP_STORE"]), list(wheels.values()))
    env = tmp_path / "env"
    install(lock, store, env)
    return Mixed(lock, store, env, wheels)


def _edit(m: Mixed) -> str:
    with (m.site / "mixed_name" / "__init__.py").open("a") as f:
        f.write("# edited\n")
    return "changed"


def _delete(m: Mixed) -> str:
    (m.site / "mixed_name" / "__init__.py").unlink()
    return "removed"


def _add_a_module(m: Mixed) -> str:
    (m.site / "mixed_name" / "evil.py").write_text("import os\n")
    return "added"


def _uninstall(m: Mixed) -> str:
    m.uv("uninstall", "Mixed_Name")
    return "missing"


def _other_version(m: Mixed) -> str:
    m.uv("install", "--no-index", "--offline", m.wheels["mixed11"])
    return "version"


def _duplicate(m: Mixed) -> str:
    shutil.copytree(m.site / "mixed_name-1.0.dist-info", m.site / "Mixed_Name-1.0.dist-info")
    return "duplicate"


def _extra(m: Mixed) -> str:
    m.uv("install", "--no-index", "--offline", m.wheels["other"])
    return "extra"


NAMINGS: list[Callable[[Mixed], str]] = [
    _edit, _delete, _add_a_module, _uninstall, _other_version, _duplicate, _extra,
]  # fmt: skip


@pytest.mark.parametrize("change", NAMINGS, ids=[c.__name__.strip("_") for c in NAMINGS])
def test_every_difference_names_the_normalized_name(
    mixed: Mixed, capsys: pytest.CaptureFixture[str], change: Callable[[Mixed], str]
) -> None:
    kind = change(mixed)
    name = "other-thing" if kind == "extra" else "mixed-name"
    report = verify(mixed.lock, mixed.env, store=mixed.store)
    found = [(d.kind, d.name) for d in report.differences if d.name != VENV_CREATION]
    assert found == [(kind, name)]

    code = main(["verify", str(mixed.env), "--lock", str(mixed.lock.path), "--json"])
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert [(d["kind"], d["name"]) for d in data["differences"]] == found

    main(["verify", str(mixed.env), "--lock", str(mixed.lock.path)])
    text = capsys.readouterr().out
    assert f"  {name}" in text
    for spelled in ("Mixed_Name", "Other.Thing", "Other_Thing"):
        assert f"  {spelled}" not in text


# -- a site-packages folder named alone: notes that agree with the report ---------------------


def site_of(env: Path) -> Path:
    return env / "lib" / f"python{PY}" / "site-packages"


def _repoint_interpreter(env: Path) -> Path:
    python = env / "bin" / "python"
    python.unlink()
    python.symlink_to("/bin/sh")
    return python


def _edit_pyvenv_cfg(env: Path) -> Path:
    cfg = env / "pyvenv.cfg"
    cfg.write_text(cfg.read_text() + "include-system-site-packages = true\n")
    return cfg


AROUND: list[Callable[[Path], Path]] = [_repoint_interpreter, _edit_pyvenv_cfg]


@pytest.mark.parametrize("damage", AROUND, ids=[d.__name__.strip("_") for d in AROUND])
def test_a_site_packages_folders_note_agrees_with_what_was_checked_around_it(
    tmp_path: Path,
    made: Made,  # noqa: F811
    damage: Callable[[Path], Path],
) -> None:
    env = tmp_path / "env"
    install(made.lock, made.store, env)
    site = site_of(env)
    before = verify(made.lock, site, store=made.store)
    assert before.identical

    path = damage(env)
    report = verify(made.lock, site, store=made.store)
    assert [(d.kind, d.name, d.path) for d in report.differences] == [
        ("changed", VENV_CREATION, str(path))
    ]
    (note,) = [n for n in report.notes if str(env) in n]
    assert note == before.notes[-1]
    # It says what it checked there (the file just reported) and what it did not.
    assert "only the files its creation wrote (pyvenv.cfg, bin/python, ...) were checked" in note
    assert "its interpreter was not run" in note
    assert "(its interpreter and pyvenv.cfg) was not checked" not in note

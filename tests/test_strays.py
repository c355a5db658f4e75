"""What gets into an environment besides its distributions (``envship._strays``), through
:func:`envship.verify.verify` on real venvs: made by ``uv venv``, ``python -m venv`` (with
pip and setuptools seeded) and ``envship install``, filled from real wheels.

Every top-level entry of site-packages must be claimed by an installed distribution's
RECORD, be a ``__pycache__``, or be a file the venv's creation wrote (the install
marker's ``venv_files``); ``include-system-site-packages`` must be off.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import py_compile
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from envship.install import INCOMPLETE_NAME, MARKER_NAME, install, marker_data, write_marker
from envship.lockfile import LockFile
from envship.store import Store
from envship.verify import VENV_CREATION, VerifyReport, verify
from indexlib import build_wheel
from test_verify import (  # noqa: F401
    PYTHON,
    Venv,
    Wheels,
    kinds,
    make_venv,
    wheels,
    write_lock,
)

PTH_NOTE = "a .pth file: at every start Python runs its import lines"
VIRTUALENV_PTH = "import _virtualenv"  # the one line uv and virtualenv write
VIRTUALENV_PY = '"""Patches that are applied at runtime to the virtual environment."""\n'


@pytest.fixture
def venv(tmp_path: Path, wheels: Wheels) -> Venv:  # noqa: F811
    return make_venv(tmp_path, wheels)


def unchecked(report: VerifyReport) -> list[str]:
    """The report's notes on what could not be checked for want of a record."""
    return [n for n in report.notes if "could not be checked" in n]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- strays: each plants one entry at the top of site-packages and returns it ----------


def _module(site: Path) -> Path:
    return _write(site / "stray.py", "print('stray imported')\n")


def _package(site: Path) -> Path:
    _write(site / "evil" / "__init__.py", "print('evil imported')\n")
    return site / "evil"


def _pth(site: Path) -> Path:
    return _write(site / "zz.pth", 'import sys; sys.stderr.write("pth code ran\\n")\n')


def _path_pth(site: Path) -> Path:  # no import line: adds a folder outside the env
    return _write(site / "elsewhere.pth", "/opt/somewhere/else\n")


def _sitecustomize(site: Path) -> Path:
    return _write(site / "sitecustomize.py", "print('at every start')\n")


def _sourceless_pyc(site: Path) -> Path:
    source = _write(site.parent / "hidden.py", "print('no source in site-packages')\n")
    py_compile.compile(str(source), cfile=str(site / "hidden.pyc"))
    source.unlink()
    return site / "hidden.pyc"


def _link(site: Path) -> Path:
    outside = _write(site.parents[3] / "outside" / "__init__.py", "x = 1\n").parent
    (site / "linked").symlink_to(outside)
    return site / "linked"


def _empty_folder(site: Path) -> Path:
    (site / "leftover").mkdir()
    return site / "leftover"


def _virtualenv_files(site: Path) -> Path:
    """uv's hook planted into a venv whose creator did not write it (Python >= 3.10)."""
    _write(site / "_virtualenv.py", VIRTUALENV_PY)
    return _write(site / "_virtualenv.pth", VIRTUALENV_PTH)


STRAYS: list[tuple[Callable[[Path], Path], str, bool]] = [
    # (plant, what the report calls it, does Python run it at every start?)
    (_module, "a file", False),
    (_package, "a folder", False),
    (_pth, "a file", True),
    (_path_pth, "a file", True),
    (_sitecustomize, "a file", True),
    (_sourceless_pyc, "a file", False),
    (_link, "a link to {outside}", False),
    (_empty_folder, "a folder", False),
]


@pytest.mark.parametrize(
    ("plant", "what", "at_start"), STRAYS, ids=[p.__name__.strip("_") for p, _, _ in STRAYS]
)
@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_each_stray_is_unowned_with_its_path(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    plant: Callable[[Path], Path],
    what: str,
    at_start: bool,
    full: bool,
) -> None:
    path = plant(venv.site)
    report = verify(LockFile.load(wheels.lock_no_omega), venv.root, full=full)
    assert kinds(report.differences) == [("unowned", path.name, str(path))]
    (diff,) = report.differences
    assert diff.actual == what.format(outside=venv.root.parent / "outside")
    assert ("at every start" in (diff.note or "")) == at_start
    if path.suffix == ".pth":
        assert diff.note is not None and diff.note.startswith(PTH_NOTE)


def test_strays_run_in_the_env_but_not_in_verify(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    tmp_path: Path,
) -> None:
    ran = tmp_path / "pth-ran"
    _write(venv.site / "zz.pth", f"import pathlib; pathlib.Path({str(ran)!r}).touch()\n")
    _module(venv.site)
    _package(venv.site)
    lock = LockFile.load(wheels.lock_no_omega)
    for form in (venv.root, venv.python):  # both run bin/python, with -I -S
        report = verify(lock, form, full=True)
        assert [(d.kind, d.name) for d in report.differences] == [
            ("unowned", "evil"), ("unowned", "stray.py"), ("unowned", "zz.pth"),
        ]  # fmt: skip
        assert not ran.exists(), "verify ran the .pth file it was checking"
    # The audit's point: all three are live code in the environment.
    out = subprocess.run(
        [str(venv.python), "-c", "import stray, evil"], capture_output=True, text=True, check=True
    ).stdout
    assert ran.exists() and "stray imported" in out and "evil imported" in out


@pytest.mark.parametrize(
    "accepted",
    ["__pycache__/stray.cpython-311.pyc", "bogus-1.0.dist-info/METADATA"],
    ids=["pycache", "dist-info"],
)
def test_pycache_and_dist_info_folders_are_not_unowned(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    accepted: str,
) -> None:
    # A top-level __pycache__ only runs in place of a source (verify --bytecode checks
    # it); a .dist-info is checked as a distribution: one report each, not two.
    _write(venv.site / accepted, "Metadata-Version: 2.1\nName: bogus\nVersion: 1.0\n")
    report = verify(LockFile.load(wheels.lock_no_omega), venv.root)
    expected = [("extra", "bogus", str(venv.site / "bogus-1.0.dist-info"))]
    assert kinds(report.differences) == (expected if "dist-info" in accepted else [])


def test_a_pth_file_a_locked_wheel_installs_is_claimed(
    tmp_path: Path,
    wheels: Wheels,  # noqa: F811
) -> None:
    hooked = build_wheel(tmp_path / "dist", "hooked", "1.0", files={"hooked.pth": "import os\n"})
    venv = make_venv(tmp_path, wheels)
    venv.install(hooked)
    assert (venv.site / "hooked.pth").is_file()
    lock = LockFile.load(
        write_lock(tmp_path / "l.toml", [wheels.alpha, wheels.beta, wheels.tool, hooked])
    )
    assert verify(lock, venv.root).identical
    assert kinds(verify(LockFile.load(wheels.lock_no_omega), venv.root).differences) == [
        ("extra", "hooked", str(venv.site / "hooked-1.0.dist-info"))
    ]  # not locked: extra, and its .pth is its own, not unowned


def test_python_m_venv_with_seeded_pip_is_clean(
    tmp_path: Path,
    wheels: Wheels,  # noqa: F811
) -> None:
    """The stdlib's venv seeds pip (and, before 3.12, setuptools with its
    distutils-precedence.pth and _distutils_hack): all of it is in their RECORDs."""
    root = tmp_path / "stdvenv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "--isolated", "install", "--quiet",
         "--no-index", "--no-deps", str(wheels.alpha), str(wheels.beta), str(wheels.tool)],
        check=True, env=env,
    )  # fmt: skip
    site = root / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    seeded = {p.name.split("-")[0] for p in site.glob("*.dist-info")} - {"alpha", "beta", "tool"}
    assert "pip" in seeded
    lock = LockFile.load(wheels.lock_no_omega)
    report = verify(lock, root, full=True)
    assert sorted((d.kind, d.name) for d in report.differences) == [
        ("extra", name) for name in sorted(seeded)
    ]
    assert verify(lock, root, ignore=seeded, full=True).identical
    _pth(site)
    assert kinds(verify(lock, root, ignore=seeded).differences) == [
        ("unowned", "zz.pth", str(site / "zz.pth"))
    ]


# -- the files the venv's creation wrote ------------------------------------------------


def _mark(venv: Venv, lock: LockFile, files: dict[str, str] | None) -> None:
    """The install marker envship writes, with ``venv_files`` (None: an older marker)."""
    data = marker_data(lock, lock.targets[0], (), sys.executable, platform.python_version(), [])
    data.pop("venv_files", None)
    if files is not None:
        data["venv_files"] = files
    write_marker(venv.root, data)


def _recorded(venv: Venv) -> dict[str, str]:
    return {
        (venv.site / n).relative_to(venv.root).as_posix(): hashlib.sha256(
            (venv.site / n).read_bytes()
        ).hexdigest()
        for n in ("_virtualenv.py", "_virtualenv.pth")
    }


def test_virtualenv_files_without_a_record_are_accepted_with_a_note(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
) -> None:
    lock = LockFile.load(wheels.lock_no_omega)
    for record in (False, True):  # no marker; a marker from before venv_files
        if record:
            _mark(venv, lock, None)
        _virtualenv_files(venv.site)
        report = verify(lock, venv.root)
        assert report.identical, report.differences
        (note,) = [n for n in unchecked(report) if "_virtualenv.py" in n]
        assert str(venv.site / "_virtualenv.py") in note


def test_a_virtualenv_pth_without_a_record_must_be_the_one_line(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
) -> None:
    pth = _virtualenv_files(venv.site)
    pth.write_text(VIRTUALENV_PTH + "; import os; os.system('id')\n")
    (diff,) = verify(LockFile.load(wheels.lock_no_omega), venv.root).differences
    assert (diff.kind, diff.name, diff.path) == ("changed", VENV_CREATION, str(pth))
    assert "import _virtualenv" in (diff.expected or "")
    assert (diff.note or "").startswith(PTH_NOTE)


def _edit_pth(venv: Venv) -> list[tuple[str, str, str]]:
    pth = venv.site / "_virtualenv.pth"
    pth.write_text(VIRTUALENV_PTH + "\nimport os\n")
    return [("changed", VENV_CREATION, str(pth))]


def _edit_py(venv: Venv) -> list[tuple[str, str, str]]:
    module = venv.site / "_virtualenv.py"
    module.write_text(module.read_text().replace("Patches", "Patched"))  # same size
    return [("changed", VENV_CREATION, str(module))]


def _remove_py(venv: Venv) -> list[tuple[str, str, str]]:
    (venv.site / "_virtualenv.py").unlink()
    return [("removed", VENV_CREATION, str(venv.site / "_virtualenv.py"))]


def _plant_pth(venv: Venv) -> list[tuple[str, str, str]]:
    return [("unowned", "zz.pth", str(_pth(venv.site)))]


def _untouched(venv: Venv) -> list[tuple[str, str, str]]:
    return []


RECORDED: list[Callable[[Venv], list[tuple[str, str, str]]]] = [
    _untouched, _edit_pth, _edit_py, _remove_py, _plant_pth,
]  # fmt: skip


@pytest.mark.parametrize("change", RECORDED, ids=[c.__name__.strip("_") for c in RECORDED])
def test_recorded_venv_files_are_hashed_in_quick_mode(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    change: Callable[[Venv], list[tuple[str, str, str]]],
) -> None:
    lock = LockFile.load(wheels.lock_no_omega)
    _virtualenv_files(venv.site)
    _mark(venv, lock, _recorded(venv))
    expected = change(venv)
    report = verify(lock, venv.root)
    assert kinds(report.differences) == expected
    # recorded: checked, nothing to say about site-packages (this marker is an older
    # one, without venv_links: the rest of the venv is accepted by name)
    assert [n for n in unchecked(report) if "site-packages" in n] == []


def test_a_record_without_them_makes_virtualenv_files_unowned(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
) -> None:
    lock = LockFile.load(wheels.lock_no_omega)
    _mark(venv, lock, {})  # what envship records for a venv on Python >= 3.10
    _virtualenv_files(venv.site)
    assert kinds(verify(lock, venv.root).differences) == [
        ("unowned", name, str(venv.site / name)) for name in ("_virtualenv.pth", "_virtualenv.py")
    ]


def test_an_env_made_by_envship_install(
    tmp_path: Path,
    wheels: Wheels,  # noqa: F811
) -> None:
    store = Store(tmp_path / "store")
    for wheel in (wheels.alpha, wheels.beta, wheels.tool):
        store.add_file(wheel)
    lock = LockFile.load(wheels.lock_no_omega)
    dest = tmp_path / "env"
    install(lock, store, dest)
    report = verify(lock, dest, full=True)
    assert report.identical and unchecked(report) == [], report.differences
    site = report.environment.site_packages[0]
    _virtualenv_files(site)  # not what this venv's creation wrote (it recorded that)
    assert [d.kind for d in verify(lock, dest).differences] == ["unowned", "unowned"]


# -- include-system-site-packages --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "actual"),
    [
        ("true", "true"),
        ("True", "True"),
        (None, "(not set: Python's default is true)"),  # site.venv()'s default
        ("false", None),
    ],
)
def test_system_site_packages_is_a_config_difference(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    value: str | None,
    actual: str | None,
) -> None:
    cfg = venv.root / "pyvenv.cfg"
    lines = [ln for ln in cfg.read_text().splitlines() if "include-system" not in ln]
    if value is not None:
        lines.append(f"include-system-site-packages = {value}")
    cfg.write_text("\n".join(lines) + "\n")
    code = "import sys; print([p for p in sys.path if p.startswith(sys.base_prefix)])"
    seen = subprocess.run(
        [str(venv.python), "-c", code], capture_output=True, text=True, check=True
    ).stdout
    sees_base = "site-packages" in seen  # the base's stdlib is always there, its packages not
    assert sees_base == (actual is not None)
    lock = LockFile.load(wheels.lock_no_omega)
    for form in (venv.root, venv.python):
        report = verify(lock, form)
        expected = [] if actual is None else [("config", "include-system-site-packages", str(cfg))]
        assert kinds(report.differences) == expected
        if actual is not None:
            (diff,) = report.differences
            assert (diff.expected, diff.actual) == ("false", actual)


# -- the rest of the venv: bin/, share/, etc/, include/, pyvenv.cfg ----------------------


@pytest.fixture
def made(tmp_path: Path, wheels: Wheels) -> tuple[LockFile, Path]:  # noqa: F811
    """A venv made by ``envship install`` (its marker records the whole venv)."""
    store = Store(tmp_path / "store")
    for wheel in (wheels.alpha, wheels.beta, wheels.tool):
        store.add_file(wheel)
    lock = LockFile.load(wheels.lock_no_omega)
    install(lock, store, tmp_path / "env")
    return lock, tmp_path / "env"


Tamper = Callable[[Path], tuple[str, str, str, str]]  # -> kind, name, rel path, in note


def _script_in_bin(env: Path) -> tuple[str, str, str, str]:
    _write(env / "bin" / "pip", "#!/bin/sh\necho not pip\n").chmod(0o755)
    return "unowned", "bin/pip", "bin/pip", "first on PATH while the environment is activated"


def _link_in_bin(env: Path) -> tuple[str, str, str, str]:
    (env / "bin" / "ls").symlink_to("/bin/sh")
    return "unowned", "bin/ls", "bin/ls", "first on PATH"


def _edited_activate(env: Path) -> tuple[str, str, str, str]:
    with (env / "bin" / "activate").open("a") as f:
        f.write("export PYTHONPATH=/tmp/evil\n")
    return "changed", VENV_CREATION, "bin/activate", "the shell that activates"


def _python3_wrapper(env: Path) -> tuple[str, str, str, str]:
    (env / "bin" / "python3").unlink()
    _write(env / "bin" / "python3", '#!/bin/sh\nexec /usr/bin/env python3 "$@"\n').chmod(0o755)
    return "changed", VENV_CREATION, "bin/python3", "the environment's interpreter"


def _python_relinked(env: Path) -> tuple[str, str, str, str]:
    (env / "bin" / "python3.99").symlink_to("/opt/other/python3")
    os.replace(env / "bin" / "python3.99", env / "bin" / f"python{PYTHON}")
    return "changed", VENV_CREATION, f"bin/python{PYTHON}", "interpreter"


def _removed_activate(env: Path) -> tuple[str, str, str, str]:
    (env / "bin" / "activate.fish").unlink()
    return "removed", VENV_CREATION, "bin/activate.fish", ""


def _kernelspec(env: Path) -> tuple[str, str, str, str]:
    rel = "share/jupyter/kernels/evil/kernel.json"
    _write(env / rel, '{"argv": ["/bin/sh", "-c", "id"], "display_name": "Python 3"}\n')
    return "unowned", rel, rel, "argv is the command it runs"


def _jupyter_config(env: Path) -> tuple[str, str, str, str]:
    rel = "etc/jupyter/jupyter_server_config.py"
    _write(env / rel, "import os\n")
    return "unowned", rel, rel, "configuration"


def _header(env: Path) -> tuple[str, str, str, str]:
    _write(env / "include" / "site" / "evil.h", "#define X 1\n")
    return "unowned", "include/site/evil.h", "include/site/evil.h", ""


def _beside_site_packages(env: Path) -> tuple[str, str, str, str]:
    rel = f"lib/python{PYTHON}/evil.py"
    _write(env / rel, "print('evil')\n")
    return "unowned", rel, rel, ""


def _pyvenv_cfg(env: Path) -> tuple[str, str, str, str]:
    with (env / "pyvenv.cfg").open("a") as f:
        f.write("prompt = other\n")
    return "changed", VENV_CREATION, "pyvenv.cfg", "every start"


def _lib64_relinked(env: Path) -> tuple[str, str, str, str]:
    (env / "lib64").unlink()
    (env / "lib64").symlink_to("/usr/lib")
    return "changed", VENV_CREATION, "lib64", ""


def _bookkeeping_misplaced(env: Path) -> tuple[str, str, str, str]:
    # envship's names are accepted at the venv's top only, and only as files
    _write(env / "bin" / ".envship-used", "")
    return "unowned", "bin/.envship-used", "bin/.envship-used", ""


TAMPERS: list[Tamper] = [
    _script_in_bin, _link_in_bin, _edited_activate, _python3_wrapper, _python_relinked,
    _removed_activate, _kernelspec, _jupyter_config, _header, _beside_site_packages,
    _pyvenv_cfg, _lib64_relinked, _bookkeeping_misplaced,
]  # fmt: skip


@pytest.mark.parametrize("tamper", TAMPERS, ids=[t.__name__.strip("_") for t in TAMPERS])
@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_each_change_outside_site_packages_is_reported(
    made: tuple[LockFile, Path], tamper: Tamper, full: bool
) -> None:
    lock, env = made
    kind, name, rel, note = tamper(env)
    report = verify(lock, env, full=full)
    assert kinds(report.differences) == [(kind, name, str(env / rel))]
    assert note in (report.differences[0].note or "")
    assert unchecked(report) == []


def test_a_python3_wrapper_is_a_change_that_runs(made: tuple[LockFile, Path]) -> None:
    lock, env = made
    _python3_wrapper(env)
    (diff,) = verify(lock, env).differences
    assert diff.expected == "a link to python"
    assert (diff.actual or "").startswith("a file, sha256=")
    # The audit's point: the script is what `python3` in the activated venv now runs.
    out = subprocess.run(
        [str(env / "bin" / "python3"), "-c", "import sys; print(sys.prefix)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() != str(env)


@pytest.mark.parametrize(
    "name", [".envship-used", INCOMPLETE_NAME, ".lock"], ids=["used", "incomplete", "uv"]
)
def test_bookkeeping_at_the_top_is_not_unowned(made: tuple[LockFile, Path], name: str) -> None:
    lock, env = made
    _write(env / name, "")
    _write(env / "bin" / name, "")  # the same name anywhere else is nobody's
    path = env / "bin" / name
    expected = [("unowned", f"bin/{name}", str(path))]
    if name == INCOMPLETE_NAME:  # not a stray, but a run that did not finish
        expected.insert(0, ("incomplete", name, str(env / name)))
    assert kinds(verify(lock, env).differences) == expected


def test_files_a_record_lists_outside_site_packages_are_claimed(
    tmp_path: Path,
    wheels: Wheels,  # noqa: F811
) -> None:
    """Console scripts and data files (share/jupyter/kernels/...) are the distribution's:
    checked against its RECORD, never unowned; without it they are unowned."""
    kernel = build_wheel(
        tmp_path / "dist", "kern", "1.0",
        files={
            "kern/__init__.py": "",
            "kern-1.0.data/data/share/jupyter/kernels/kern/kernel.json": '{"argv": ["python"]}\n',
        },
    )  # fmt: skip
    store = Store(tmp_path / "store")
    for wheel in (wheels.alpha, wheels.beta, wheels.tool, kernel):
        store.add_file(wheel)
    lock = LockFile.load(
        write_lock(tmp_path / "l.toml", [wheels.alpha, wheels.beta, wheels.tool, kernel])
    )
    env = tmp_path / "env"
    install(lock, store, env)
    spec = env / "share" / "jupyter" / "kernels" / "kern" / "kernel.json"
    assert spec.is_file() and (env / "bin" / "tool").is_file()
    assert verify(lock, env, full=True).identical
    spec.write_text('{"argv": ["/bin/sh"]}\n')
    assert kinds(verify(lock, env, full=True).differences) == [("changed", "kern", str(spec))]
    site = verify(lock, env).environment.site_packages[0]
    (site / "kern-1.0.dist-info" / "RECORD").unlink()
    found = kinds(verify(lock, env).differences)
    assert ("unowned", "share/jupyter/kernels/kern/kernel.json", str(spec)) in found


def by_name(report: VerifyReport) -> set[str]:
    """The paths the note on files accepted by name lists."""
    (note,) = [n for n in unchecked(report) if "accepted by name" in n]
    return set(note.split(": ", 1)[1].split(" (what venv creators write)")[0].split(", "))


def _older_marker(env: Path) -> None:
    """The marker as envship wrote it before it recorded the venv outside site-packages."""
    data = json.loads((env / MARKER_NAME).read_text())
    data["venv_files"] = {k: v for k, v in data["venv_files"].items() if "site-packages" in k}
    del data["venv_links"]
    (env / MARKER_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("tamper", "seen"),
    [
        (_script_in_bin, True),  # no record lists it: unowned whatever made the venv
        (_kernelspec, True),
        (_python3_wrapper, True),  # no creator writes a #! script as the interpreter
        (_edited_activate, False),  # its content is what could not be checked
        (_pyvenv_cfg, False),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else str(v),
)
@pytest.mark.parametrize("made_by", ["older-envship", "uv-venv", "python-m-venv"])
def test_without_a_record_the_creators_files_are_known_by_name(
    tmp_path: Path,
    made: tuple[LockFile, Path],
    wheels: Wheels,  # noqa: F811
    made_by: str,
    tamper: Tamper,
    seen: bool,
) -> None:
    lock, env = made
    if made_by == "older-envship":
        _older_marker(env)
    elif made_by == "uv-venv":
        env = make_venv(tmp_path / "uv", wheels).root
    else:
        env = tmp_path / "stdvenv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
        Venv(env, tmp_path / "uv-cache").install(wheels.alpha, wheels.beta, wheels.tool)
    report = verify(lock, env)
    assert report.differences == ()
    assert {"bin/activate", "pyvenv.cfg", "bin/python", "bin/python3"} <= by_name(report)
    kind, name, rel, _ = tamper(env)
    report = verify(lock, env)
    assert kinds(report.differences) == ([(kind, name, str(env / rel))] if seen else [])
    assert (rel in by_name(report)) == (not seen)

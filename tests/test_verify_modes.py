"""Modes no installer gives, in a real uv-made venv: setuid and setgid files, folders
anyone may write into. Each is a changed file or folder with its path, in quick and full
mode (the byte-code in ``__pycache__`` in full mode only); what installers and shared
roots do make (group-writable files, setgid folders, the sticky bit alone) is not.

uv keeps only the executable bit of a wheel's modes (seen: an entry stored as
``-rwsr-sr-x`` installs as ``-rwxr-xr-x``, a folder stored ``0777`` as ``0755``), which
:func:`test_uv_keeps_only_the_executable_bit` holds it to."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from envship.cli.main import main
from envship.install import install
from envship.lockfile import LockFile
from envship.verify import VENV_CREATION, VerifyMismatchError, verify
from test_install import build_wheels, stocked_store, write_lock
from test_verify import Venv, Wheels, make_venv, wheels  # noqa: F401  (wheels: a fixture)

SETID = "no setuid or setgid bit"
OTHERS = "not writable by others"

Expect = list[tuple[str, str, str, str | None]]  # kind, name, path, expected


@pytest.fixture
def venv(tmp_path: Path, wheels: Wheels) -> Venv:  # noqa: F811
    return make_venv(tmp_path, wheels)


def compiled(v: Venv, package: str) -> Path:
    """The byte-code of ``package/__init__.py``, compiled as Python caches it."""
    subprocess.run([v.python, "-m", "compileall", "-q", v.site / package], check=True)
    (pyc,) = (v.site / package / "__pycache__").glob("__init__.*.pyc")
    return pyc


def _setuid_module(v: Venv) -> Expect:
    path = v.site / "beta" / "__init__.py"
    path.chmod(0o4644)
    return [("changed", "beta", str(path), SETID)]


def _setgid_script(v: Venv) -> Expect:
    path = v.root / "bin" / "tool"  # a console script uv wrote, 0755
    path.chmod(0o2755)
    return [("changed", "tool", str(path), SETID)]


def _setuid_metadata(v: Venv) -> Expect:
    path = v.site / "alpha-1.0.dist-info" / "METADATA"
    path.chmod(0o4755)
    return [("changed", "alpha", str(path), SETID)]


def _setgid_venv_file(v: Venv) -> Expect:
    """pyvenv.cfg, the venv's own: no RECORD lists it."""
    path = v.root / "pyvenv.cfg"
    path.chmod(0o2644)
    return [("changed", VENV_CREATION, str(path), SETID)]


def _setuid_activate(v: Venv) -> Expect:
    path = v.root / "bin" / "activate"
    path.chmod(0o4755)
    return [("changed", VENV_CREATION, str(path), SETID)]


def _package_folder_open(v: Venv) -> Expect:
    v.site.joinpath("beta").chmod(0o777)
    return [("changed", "beta", str(v.site / "beta"), OTHERS)]


def _package_folder_open_sticky(v: Venv) -> Expect:
    """The sticky bit keeps others from removing what is there, not from adding."""
    v.site.joinpath("beta").chmod(0o1777)
    return [("changed", "beta", str(v.site / "beta"), OTHERS)]


def _dist_info_open(v: Venv) -> Expect:
    v.site.joinpath("alpha-1.0.dist-info").chmod(0o777)
    return [("changed", "alpha", str(v.site / "alpha-1.0.dist-info"), OTHERS)]


def _empty_folder_in_a_package_open(v: Venv) -> Expect:
    """An empty folder holds no file to be added, and no RECORD line is on the way to it."""
    folder = v.site / "alpha" / "plugins"
    folder.mkdir()
    folder.chmod(0o777)
    return [("changed", "alpha", str(folder), OTHERS)]


def _pycache_open(v: Venv) -> Expect:
    folder = compiled(v, "beta").parent
    folder.chmod(0o777)
    return [("changed", "beta", str(folder), OTHERS)]


def _site_packages_open(v: Venv) -> Expect:
    v.site.chmod(0o1777)
    return [("changed", VENV_CREATION, str(v.site), OTHERS)]


def _bin_open(v: Venv) -> Expect:
    v.root.joinpath("bin").chmod(0o777)
    return [("changed", VENV_CREATION, str(v.root / "bin"), OTHERS)]


def _venv_open(v: Venv) -> Expect:
    v.root.chmod(0o777)
    return [("changed", VENV_CREATION, str(v.root), OTHERS)]


def _setuid_added_file(v: Venv) -> Expect:
    """One difference per path: a file no RECORD lists is added, setuid or not."""
    path = v.site / "alpha" / "evil.py"
    path.write_text("import os\n")
    path.chmod(0o4755)
    return [("added", "alpha", str(path), None)]


def _open_folder_beside_a_missing_distribution(v: Venv) -> Expect:
    """A missing distribution is named at site-packages: the folder is still walked."""
    shutil.rmtree(v.site / "beta-1.0.dist-info")
    v.site.joinpath("alpha").chmod(0o777)
    return [
        ("missing", "beta", str(v.site), "1.0"),
        ("changed", "alpha", str(v.site / "alpha"), OTHERS),
        ("unowned", "beta", str(v.site / "beta"), None),
    ]


def _setuid_byte_code(v: Venv) -> Expect:
    pyc = compiled(v, "beta")
    pyc.chmod(0o4644)
    return [("changed", "beta", str(pyc), SETID)]


def _byte_code_open(v: Venv) -> Expect:
    """Python runs a cached .pyc in place of its source: anyone may write this one."""
    pyc = compiled(v, "beta")
    pyc.chmod(0o666)
    return [("changed", "beta", str(pyc), OTHERS)]


MODES: list[tuple[Callable[[Venv], Expect], bool]] = [
    # (change, does the quick check see it?)
    (_setuid_module, True),
    (_setgid_script, True),
    (_setuid_metadata, True),
    (_setgid_venv_file, True),
    (_setuid_activate, True),
    (_package_folder_open, True),
    (_package_folder_open_sticky, True),
    (_dist_info_open, True),
    (_empty_folder_in_a_package_open, True),
    (_pycache_open, True),
    (_site_packages_open, True),
    (_bin_open, True),
    (_venv_open, True),
    (_setuid_added_file, True),
    (_open_folder_beside_a_missing_distribution, True),
    (_setuid_byte_code, False),  # inside __pycache__: --full reads it
    (_byte_code_open, False),
]


@pytest.mark.parametrize(
    ("change", "quick_sees"), MODES, ids=[c.__name__.strip("_") for c, _ in MODES]
)
@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_a_mode_no_installer_gives_is_a_difference(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    change: Callable[[Venv], Expect],
    quick_sees: bool,
    full: bool,
) -> None:
    expected = change(venv)
    report = verify(LockFile.load(wheels.lock_no_omega), venv.root, full=full)
    found = [(d.kind, d.name, d.path, d.expected) for d in report.differences]
    assert found == (expected if full or quick_sees else [])
    for d in report.differences:
        if d.expected in (SETID, OTHERS):
            assert d.actual == f"mode {stat.filemode(os.lstat(d.path).st_mode)}"
            assert d.note


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _shared_root_modes(root: Path) -> None:
    """What a group-shared root gives a version: every folder setgid and group-writable
    (2775), every file group-writable, as under umask 002 in a chgrp'd, chmod 2775 root."""
    for folder, _dirs, files in os.walk(root):  # links to folders are not walked
        os.chmod(folder, 0o2775)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):  # chmod would follow it (bin/python)
                os.chmod(path, os.lstat(path).st_mode | stat.S_IWGRP)


@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
@pytest.mark.parametrize("shared", [False, True], ids=["umask-002", "setgid-folders"])
def test_what_installers_and_shared_roots_make_is_no_difference(
    tmp_path: Path,
    wheels: Wheels,  # noqa: F811
    full: bool,
    shared: bool,
) -> None:
    """A venv made and compiled by uv under umask 002 (group-writable files, folders
    775), and with every folder setgid as a shared root makes it; a package folder with
    the sticky bit alone; byte-code Python cached itself."""
    with umask(0o002):
        v = make_venv(tmp_path, wheels)
        v.uv(
            "pip", "install", "--no-config", "--python", v.python, "--no-index", "--offline",
            "--reinstall", "--compile-bytecode", wheels.alpha, wheels.beta, wheels.tool,
        )  # fmt: skip
        subprocess.run([v.python, "-c", "import alpha, beta, tool"], check=True)
    assert stat.S_IMODE(os.lstat(v.site / "alpha" / "__pycache__").st_mode) == 0o775
    if shared:
        _shared_root_modes(v.root)
    v.site.joinpath("beta").chmod(0o1775 if not shared else 0o3775)  # sticky, not open
    report = verify(LockFile.load(wheels.lock_no_omega), v.root, full=full)
    assert report.identical, report.differences
    assert any("group-writable" in n for n in report.notes)  # said, not a difference


def test_a_site_packages_folder_named_alone_is_walked_alone(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
) -> None:
    """Named by its site-packages folder, the venv around it is not looked at (verify's
    note says so): its open bin/ is not reported, an open package folder is."""
    venv.root.joinpath("bin").chmod(0o777)
    venv.site.joinpath("beta").chmod(0o777)
    report = verify(LockFile.load(wheels.lock_no_omega), venv.site)
    assert [(d.kind, d.name, d.path) for d in report.differences] == [
        ("changed", "beta", str(venv.site / "beta"))
    ]


def test_cli_names_the_mode_in_text_and_json(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    venv.site.joinpath("beta").chmod(0o1777)
    script = venv.root / "bin" / "tool"
    script.chmod(0o4755)
    lock = ["--lock", str(wheels.lock_no_omega)]
    code = main(["verify", str(venv.root), *lock])
    out, _ = capsys.readouterr()
    assert code == 1
    assert (
        f"changed files (2):\n"
        f"  beta  {venv.site / 'beta'}\n"
        f"      expected {OTHERS}\n"
        f"      found    mode drwxrwxrwt\n"
        f"      anyone on this machine can add a module or a .pth file here"
    ) in out
    assert f"  tool  {script}\n      expected {SETID}\n      found    mode -rwsr-xr-x\n" in out

    code = main(["verify", str(venv.root), *lock, "--full", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["identical"] is False
    assert [(d["kind"], d["name"], d["path"], d["expected"], d["actual"]) for d in data[
        "differences"
    ]] == [
        ("changed", "beta", str(venv.site / "beta"), OTHERS, "mode drwxrwxrwt"),
        ("changed", "tool", str(script), SETID, "mode -rwsr-xr-x"),
    ]  # fmt: skip
    assert all(d["note"] for d in data["differences"])


# -- what uv does with a wheel's modes ------------------------------------------------------


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}\n"


def test_uv_keeps_only_the_executable_bit(tmp_path: Path) -> None:
    """A wheel whose zip entries carry setuid, setgid and world-writable modes (and a
    folder entry 0777): uv installs the files 0755 or 0644 and the folder 0755, so a
    verify that reports those bits reports what no install made."""
    files = {
        "modal/__init__.py": (b"x = 1\n", 0o104755),
        "modal/setgid.py": (b"y = 1\n", 0o102755),
        "modal/open.py": (b"z = 1\n", 0o100666),
        "modal-1.0.data/scripts/run": (b"#!python\nprint(1)\n", 0o104755),
        "modal-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: modal\nVersion: 1.0\n",
            0o100644,
        ),
        "modal-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            0o100644,
        ),
    }
    record = "".join(_record_line(p, d) for p, (d, _) in files.items())
    files["modal-1.0.dist-info/RECORD"] = (
        (record + "modal-1.0.dist-info/RECORD,,\n").encode(),
        0o100644,
    )
    wheel = tmp_path / "modal-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        folder = zipfile.ZipInfo("modal/sub/", (2020, 1, 1, 0, 0, 0))
        folder.external_attr = (0o40777 << 16) | 0x10
        folder.create_system = 3  # Unix: the mode is in the high bits
        zf.writestr(folder, b"")
        for path, (data, mode) in files.items():
            info = zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0))
            info.external_attr, info.create_system = mode << 16, 3
            zf.writestr(info, data)
    v = Venv(tmp_path / "venv", tmp_path / "uv-cache")
    v.uv("venv", "--no-config", "--python", sys.executable, v.root)
    v.install(wheel)

    def bits(path: Path) -> int:
        return stat.S_IMODE(os.lstat(path).st_mode)

    package = v.site / "modal"
    assert (bits(package / "__init__.py"), bits(package / "setgid.py")) == (0o755, 0o755)
    assert (bits(package / "open.py"), bits(v.root / "bin" / "run")) == (0o644, 0o755)
    assert bits(package / "sub") == 0o755


# -- the hint: what makes it identical again -------------------------------------------------


def run_hint(hint: str | None) -> None:
    """Run every command the hint names, in order, as a user would paste them."""
    found = re.findall(r"`([^`]+)`", hint or "")
    assert found, hint
    for command in found:
        argv = shlex.split(command)
        if argv[0] == "envship":
            argv = [sys.executable, "-m", "envship", *argv[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (command, proc.stderr)


def _open_everywhere(env: Path, site: Path) -> None:
    """The folder itself, its site-packages, a package folder; a setuid module."""
    for path, mode in ((env, 0o777), (site, 0o777), (site / "beta", 0o1777)):
        path.chmod(mode)
    (site / "beta" / "__init__.py").chmod(0o4644)


def test_the_hint_of_an_env_envship_made_closes_what_a_reinstall_keeps(tmp_path: Path) -> None:
    """A reinstall empties the environment and fills it again, but keeps its folder (and
    that folder's mode): the hint closes it too."""
    built = build_wheels(tmp_path / "dist")
    lock = write_lock(tmp_path / "pylock.toml", [built[k] for k in ("alpha", "beta", "tool")])
    # ENVSHIP_STORE names tmp_path/store (conftest): the hint's command finds it there.
    store = stocked_store(Path(os.environ["ENVSHIP_STORE"]), list(built.values()))
    env = tmp_path / "env"
    install(lock, store, env)
    site = next(env.glob("lib/python*/site-packages"))
    _open_everywhere(env, site)
    report = verify(lock, env, full=True, store=store)
    assert len(report.differences) == 4
    hint = VerifyMismatchError(report).hint or ""
    assert f"`chmod o-w {env}` closes the environment's own folder" in hint
    run_hint(hint)
    assert verify(lock, env, full=True, store=store).identical


def test_the_hint_of_an_env_envship_did_not_make_takes_the_bits_back(
    venv: Venv,
    wheels: Wheels,  # noqa: F811
) -> None:
    """Nothing makes it again (envship install does not change it): chmod is the fix."""
    _open_everywhere(venv.root, venv.site)
    report = verify(LockFile.load(wheels.lock_no_omega), venv.root)
    hint = VerifyMismatchError(report).hint or ""
    opened = " ".join(map(str, (venv.root, venv.site, venv.site / "beta")))
    assert (
        f"`chmod o-w {opened}` and `chmod ug-s {venv.site / 'beta' / '__init__.py'}` take "
        "those bits back"
    ) in hint
    run_hint(hint)
    assert verify(LockFile.load(wheels.lock_no_omega), venv.root, full=True).identical

"""What hides in byte-code caches and behind links, in a real uv-made venv (auditor a11:
H1, H2, H3, L1, L3, L6, L8). Every ``__pycache__`` is looked into in quick mode too: a
regular ``.pyc`` is all Python writes there, so anything else (a setuid program, a device
node, a FIFO, a link, a whole cache folder linked out) is a difference; a link to a
folder inside a package folder is an added file, never followed; a ``.pyc`` the byte-code
check cannot read as a regular file is named, never dropped from its count."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from envship.cli.main import main
from envship.lockfile import LockFile
from envship.verify import VENV_CREATION, verify
from indexlib import build_wheel
from test_verify import PYTHON, Venv, write_lock
from userlib import SYSTEM_PY, as_user, world_readable

SETID = "no setuid or setgid bit"
OTHERS = "not writable by others"
TAG = sys.implementation.cache_tag
SETUID_SH = "a file, mode -rwsr-xr-x: runs with its owner's or group's rights"
CACHE_NOTE = "in a byte-code cache, where Python writes only regular .pyc files"

Found = list[tuple[str, str, str, str | None]]  # kind, name, path, actual


class Env:
    """A venv of alpha (a package) and top (a top-level module, ``top.py``), compiled."""

    def __init__(self, tmp_path: Path) -> None:
        dist = tmp_path / "dist"
        wheels = [
            build_wheel(dist, "alpha", "1.0", files={"alpha/core.py": "X = 1\n"}),
            build_wheel(dist, "top", "1.0", files={"top.py": "Y = 2\n"}),
        ]
        self.lock = LockFile.load(write_lock(tmp_path / "pylock.toml", wheels))
        self.venv = Venv(tmp_path / "venv", tmp_path / "uv-cache")
        self.venv.uv("venv", "--no-config", "--python", sys.executable, self.venv.root)
        self.venv.install(*wheels)
        self.root, self.site = self.venv.root, self.venv.site
        self.outside = tmp_path / "outside"  # not the environment's
        self.outside.mkdir()
        subprocess.run(
            [self.venv.python, "-m", "compileall", "-q", self.site / "alpha", self.site / "top.py"],
            check=True,
            capture_output=True,
        )
        self.pyc = self.site / "alpha" / "__pycache__" / f"core.{TAG}.pyc"
        assert self.pyc.is_file()

    @staticmethod
    def setuid_program(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        program = folder / "sh"
        shutil.copyfile("/bin/sh", program)
        program.chmod(0o4755)
        return program


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def _setuid_in_the_venvs_cache(e: Env) -> Found:
    path = e.setuid_program(e.root / "__pycache__")
    return [("unowned", "__pycache__/sh", str(path), SETUID_SH)]


def _setuid_in_bins_cache(e: Env) -> Found:
    path = e.setuid_program(e.root / "bin" / "__pycache__")
    return [("unowned", "bin/__pycache__/sh", str(path), SETUID_SH)]


def _setuid_in_libs_cache(e: Env) -> Found:
    path = e.setuid_program(e.root / "lib" / "__pycache__")
    return [("unowned", "lib/__pycache__/sh", str(path), SETUID_SH)]


def _setuid_in_site_packages_cache(e: Env) -> Found:
    path = e.setuid_program(e.site / "__pycache__")
    return [("unowned", "__pycache__/sh", str(path), SETUID_SH)]


def _setuid_in_a_packages_cache(e: Env) -> Found:
    path = e.setuid_program(e.site / "alpha" / "__pycache__")
    return [("added", "alpha", str(path), f"{SETUID_SH}, not in RECORD")]


def _device_in_the_venvs_cache(e: Env) -> Found:
    (e.root / "__pycache__").mkdir()
    path = e.root / "__pycache__" / "mem"
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    path.chmod(0o666)
    return [("unowned", "__pycache__/mem", str(path), "not a regular file (crw-rw-rw-)")]


def _fifo_for_a_top_level_modules_pyc(e: Env) -> Found:
    pyc = e.site / "__pycache__" / f"top.{TAG}.pyc"
    pyc.unlink()
    os.mkfifo(pyc)
    return [("unowned", f"__pycache__/top.{TAG}.pyc", str(pyc), "not a regular file (prw-r--r--)")]


def _fifo_for_a_packages_pyc(e: Env) -> Found:
    e.pyc.unlink()
    os.mkfifo(e.pyc)
    return [("added", "alpha", str(e.pyc), "not a regular file (prw-r--r--), not in RECORD")]


def _pyc_linked_out(e: Env) -> Found:
    """One .pyc a link to an open copy: Python follows it."""
    copy = e.outside / e.pyc.name
    shutil.copyfile(e.pyc, copy)
    copy.chmod(0o666)
    e.pyc.unlink()
    e.pyc.symlink_to(copy)
    return [("added", "alpha", str(e.pyc), f"a link to {copy}, not in RECORD")]


def _cache_folder_linked_out(e: Env) -> Found:
    """The whole cache folder a link to an open copy of it."""
    cache = e.pyc.parent
    copy = e.outside / "owcache"
    shutil.copytree(cache, copy)
    copy.chmod(0o777)
    shutil.rmtree(cache)
    cache.symlink_to(copy)
    return [("added", "alpha", str(cache), f"a link to {copy}, not in RECORD")]


def _site_packages_cache_linked_out(e: Env) -> Found:
    cache = e.site / "__pycache__"
    copy = e.outside / "topcache"
    shutil.copytree(cache, copy)
    shutil.rmtree(cache)
    cache.symlink_to(copy)
    return [("unowned", "__pycache__", str(cache), f"a link to {copy}")]


def _folder_link_in_a_package(e: Env) -> Found:
    """``import alpha.sub.pwn`` runs what the link points at."""
    (e.outside / "owdir").mkdir()
    (e.outside / "owdir" / "pwn.py").write_text("print('pwned')\n")
    link = e.site / "alpha" / "sub"
    link.symlink_to(e.outside / "owdir")
    return [("added", "alpha", str(link), f"a link to {e.outside / 'owdir'}, not in RECORD")]


def _folder_link_in_a_dist_info(e: Env) -> Found:
    link = e.site / "alpha-1.0.dist-info" / "licenses"
    link.symlink_to(e.outside)
    return [("added", "alpha", str(link), f"a link to {e.outside}, not in RECORD")]


def _folder_link_deep_in_a_package(e: Env) -> Found:
    folder = e.site / "alpha" / "data"
    folder.mkdir()
    link = folder / "more"
    link.symlink_to(e.outside)
    return [("added", "alpha", str(link), f"a link to {e.outside}, not in RECORD")]


def _setuid_added_module(e: Env) -> Found:
    """Added, and the setuid bit said (L3)."""
    path = e.site / "alpha" / "evil.py"
    path.write_text("import os\n")
    path.chmod(0o4755)
    return [("added", "alpha", str(path), f"{SETUID_SH}, not in RECORD")]


CHANGES: list[Callable[[Env], Found]] = [
    _setuid_in_the_venvs_cache,
    _setuid_in_bins_cache,
    _setuid_in_libs_cache,
    _setuid_in_site_packages_cache,
    _setuid_in_a_packages_cache,
    _device_in_the_venvs_cache,
    _fifo_for_a_top_level_modules_pyc,
    _fifo_for_a_packages_pyc,
    _pyc_linked_out,
    _cache_folder_linked_out,
    _site_packages_cache_linked_out,
    _folder_link_in_a_package,
    _folder_link_in_a_dist_info,
    _folder_link_deep_in_a_package,
    _setuid_added_module,
]


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__.strip("_") for c in CHANGES])
@pytest.mark.parametrize(
    ("full", "bytecode"),
    [(False, False), (True, False), (True, True)],
    ids=["quick", "full", "bytecode"],
)
def test_what_hides_in_a_cache_or_behind_a_link_is_a_difference(
    env: Env, change: Callable[[Env], Found], full: bool, bytecode: bool
) -> None:
    expected = change(env)
    report = verify(env.lock, env.root, full=full, bytecode=bytecode)
    found = [(d.kind, d.name, d.path, d.actual) for d in report.differences]
    assert found == expected
    if bytecode:  # every .pyc of a recorded source there is counted, none dropped
        assert report.checked_bytecode == 3  # alpha/__init__, alpha/core, top


def test_a_cache_as_python_writes_it_is_no_difference(env: Env) -> None:
    for full, bytecode in ((False, False), (True, False), (True, True)):
        report = verify(env.lock, env.root, full=full, bytecode=bytecode)
        assert report.identical, report.differences


# -- modes: who owns byte-code, what the notes say, what is not open -----------------------


def _setuid_pyc_of_a_top_level_module(e: Env) -> Found:
    """Its source is top.py, top's: not the venv's creation's (L1)."""
    pyc = e.site / "__pycache__" / f"top.{TAG}.pyc"
    pyc.chmod(0o4644)
    return [("changed", "top", str(pyc), SETID)]


def _open_pyc_of_a_package(e: Env) -> Found:
    e.pyc.chmod(0o666)
    return [("changed", "alpha", str(e.pyc), OTHERS)]


def _folder_others_may_write_but_not_enter(e: Env) -> Found:
    """0776: writing into a folder takes search permission too (L8)."""
    (e.site / "alpha").chmod(0o776)
    return []


MODES = [
    (_setuid_pyc_of_a_top_level_module, False),  # quick: byte-code modes are not read
    (_open_pyc_of_a_package, False),
    (_folder_others_may_write_but_not_enter, True),
]


@pytest.mark.parametrize(("change", "quick_sees"), MODES, ids=[c.__name__ for c, _ in MODES])
@pytest.mark.parametrize(
    ("full", "bytecode"),
    [(False, False), (False, True), (True, False)],
    ids=["quick", "bytecode", "full"],
)
def test_byte_code_modes_are_read_when_byte_code_is(
    env: Env, change: Callable[[Env], Found], quick_sees: bool, full: bool, bytecode: bool
) -> None:
    """``--bytecode`` reads every .pyc: its mode is read too (L6)."""
    expected = change(env)
    report = verify(env.lock, env.root, full=full, bytecode=bytecode)
    found = [(d.kind, d.name, d.path, d.expected) for d in report.differences]
    assert found == (expected if full or bytecode or quick_sees else [])


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("bin", "anyone on this machine can add a program here, which runs in place of the "
         "command of its name while the environment is activated (bin/ is first on PATH)"),
        (".", "anyone on this machine can add files here or replace the ones there "
         "(pyvenv.cfg, which Python reads at every start of the environment)"),
        (f"lib/python{PYTHON}/site-packages", "anyone on this machine can add a module or a "
         ".pth file here, which every process that imports from it runs"),
    ],
)  # fmt: skip
def test_an_open_folder_says_what_others_can_do_there(env: Env, where: str, says: str) -> None:
    """bin/: a program on PATH, not a module (L2)."""
    folder = env.root / where
    folder.chmod(0o777)
    report = verify(env.lock, env.root)
    assert [(d.name, d.path, d.expected, d.note) for d in report.differences] == [
        (VENV_CREATION, os.path.normpath(folder), OTHERS, says)
    ]


# -- a folder this user may not read (M6) ----------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        "lib/python3.11/site-packages/alpha/priv",
        "etc/priv",
        "lib/python3.11/site-packages/__pycache__/priv",
    ],
)
@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_a_folder_the_user_may_not_read_is_a_permission_error(where: str, full: bool) -> None:
    """root's 0700 folder, with a setuid program in it, in a venv uid 1000 verifies:
    nothing in it can be vouched for, so verify says so, never "identical"."""
    with world_readable("envship-verify-") as top:
        wheel = build_wheel(top / "dist", "alpha", "1.0")
        lock = write_lock(top / "pylock.toml", [wheel])
        lock.chmod(0o644)
        venv = Venv(top / "venv", top / "uv-cache")
        venv.uv("venv", "--no-config", "--python", SYSTEM_PY, venv.root)
        venv.install(wheel)
        argv = [SYSTEM_PY, "-m", "envship", "verify", str(venv.root), "--lock", str(lock)]
        argv += ["--json", *(["--full"] if full else [])]
        proc = as_user(top, *argv)
        assert (proc.returncode, json.loads(proc.stdout)["identical"]) == (0, True), proc.stdout

        private = venv.root / where
        Env.setuid_program(private)
        private.chmod(0o700)
        proc = as_user(top, *argv)
        data = json.loads(proc.stdout)
        assert (proc.returncode, data["error"]) == (1, "permission"), proc.stdout
        assert [p["where"] for p in data["problems"]] == [str(private)]


def test_the_text_says_what_an_added_or_unowned_entry_is(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link names its target, a program in a cache its setuid bit and why it is out of
    place (L3)."""
    (e, owdir) = (env, env.outside / "owdir")
    owdir.mkdir()
    (e.site / "alpha" / "sub").symlink_to(owdir)
    program = e.setuid_program(e.root / "__pycache__")
    assert main(["verify", str(e.root), "--lock", str(e.lock.path)]) == 1
    out, _ = capsys.readouterr()
    assert (
        "added files (in a package folder, in no RECORD) (1):\n"
        f"  alpha  {e.site / 'alpha' / 'sub'}  (a link to {owdir})\n"
    ) in out
    assert (
        f"  {program}  ({SETUID_SH})\n      in a byte-code cache, where Python writes only "
        "regular .pyc files\n"
    ) in out

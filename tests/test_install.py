"""``envship.install``: real venvs made by uv from real wheels in a real store, offline."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from packaging.utils import parse_wheel_filename

import envship.install as install_mod
from disklib import MIB, SmallDisk
from envship._toml import read_toml
from envship._uv import uv_bin
from envship.errors import ArtifactError, LockError, StoreError, TargetError
from envship.host import probe
from envship.install import INCOMPLETE_NAME, MARKER_NAME, InstallError, install
from envship.lockfile import LockFile
from envship.store import Store
from envship.targets import host_platform
from indexlib import build_sdist, build_wheel, serve

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
HOST = host_platform() or "linux-x86_64"
OTHER_MACHINE = "linux-aarch64" if HOST != "linux-aarch64" else "linux-x86_64"
OTHER_PY = f"3.{sys.version_info[1] + 1}"


def target(name: str = HOST, **fields: str) -> dict[str, str]:
    base = {"name": name, "platform": HOST, "python": PY, "glibc": "2.28", "variant": "cpu"}
    return {**base, **fields}


def build_wheels(out: Path) -> dict[str, Path]:
    """alpha 1.0 (requires beta), beta 1.0 and 1.1, tool 1.0 with a console script."""
    tool_code = 'def main():\n    print("tool ran")\n'
    return {
        "alpha": build_wheel(out, "alpha", "1.0", requires=["beta>=1.0"]),
        "beta": build_wheel(out, "beta", "1.0"),
        "beta11": build_wheel(out, "beta", "1.1"),
        "tool": build_wheel(
            out, "tool", "1.0", scripts={"tool": "tool:main"}, files={"tool/__init__.py": tool_code}
        ),
    }


def build_huge(out: Path) -> Path:
    """huge 1.0: 6 MiB once installed, more than the 4 MiB ``small_disk`` holds."""
    blob = {"huge/blob.txt": os.urandom(3 * MIB).hex()}  # hex: deflate cannot shrink it away
    return build_wheel(out, "huge", "1.0", files=blob)


def write_lock(
    path: Path,
    wheels: Sequence[Path],
    *,
    targets: Sequence[dict[str, str]] | None = None,
    groups: dict[str, Sequence[str]] | None = None,
) -> LockFile:
    """A hand-written PEP 751 lock; ``groups`` maps a group to the package names in it."""
    in_group = {pkg: g for g, pkgs in (groups or {}).items() for pkg in pkgs}
    packages: list[dict[str, Any]] = []
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        entry: dict[str, Any] = {"name": str(name), "version": str(version)}
        if str(name) in in_group:
            entry["marker"] = f"'{in_group[str(name)]}' in dependency_groups"
        entry["wheels"] = [
            {
                "url": f"https://example.invalid/files/{wheel.name}",
                "hashes": {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
            }
        ]
        packages.append(entry)
    data: dict[str, Any] = {"lock-version": "1.0", "created-by": "test"}
    if groups:
        data["dependency-groups"] = sorted(groups)
    data["packages"] = packages
    data["tool"] = {"envship": {"targets": list(targets or [target()])}}
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return LockFile.load(path)


def stocked_store(root: Path, wheels: Sequence[Path]) -> Store:
    store = Store(root)
    for wheel in wheels:
        store.add_file(wheel)
    return store


def run_py(env: Path, code: str) -> str:
    proc = subprocess.run(
        [str(env / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def versions(env: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    found: dict[str, str] = json.loads(run_py(env, code))
    return found


@pytest.fixture
def wheels(tmp_path: Path) -> dict[str, Path]:
    return build_wheels(tmp_path / "dist")


@pytest.fixture
def lock(tmp_path: Path, wheels: dict[str, Path]) -> LockFile:
    return write_lock(tmp_path / "pylock.toml", [wheels[k] for k in ("alpha", "beta", "tool")])


@pytest.fixture
def store(tmp_path: Path, wheels: dict[str, Path]) -> Store:
    return stocked_store(tmp_path / "store", list(wheels.values()))


@pytest.fixture(autouse=True)
def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the GPU question out of the machine's hands: these tests use cpu targets."""

    def fake_probe(python: str | os.PathLike[str] | None = None) -> Any:
        return probe(python, gpu=lambda: False)

    monkeypatch.setattr(install_mod, "probe", fake_probe)


def test_install_creates_a_working_environment(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    result = install(lock, store, dest)

    assert result.action == "created" and result.changed
    assert result.target.name == HOST
    assert result.python == dest / "bin" / "python"
    assert run_py(dest, "import alpha, beta; print(alpha.__version__, beta.__version__)") == (
        "1.0 1.0"
    )
    tool = dest / "bin" / "tool"
    assert tool.read_text().splitlines()[0] == f"#!{dest / 'bin' / 'python'}"
    assert subprocess.run([str(tool)], capture_output=True, text=True).stdout == "tool ran\n"
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}
    assert sorted(result.installed) == ["alpha==1.0", "beta==1.0", "tool==1.0"]

    marker = json.loads((dest / MARKER_NAME).read_text())
    assert marker["lock"]["digest"] == lock.digest
    assert marker["target"]["name"] == HOST
    assert {p["filename"] for p in marker["packages"]} == {a.filename for a in result.packages}
    assert not (dest / INCOMPLETE_NAME).exists()
    assert not (tmp_path / "env.envship-tmp").exists()  # staging and lock file cleaned up


def test_rerun_with_the_same_lock_does_nothing(
    tmp_path: Path, lock: LockFile, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    marker = dest / MARKER_NAME
    before = (marker.read_bytes(), marker.stat().st_mtime_ns)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a no-op re-run must start neither uv nor an interpreter")

    monkeypatch.setattr(install_mod, "_run", forbidden)
    monkeypatch.setattr(install_mod, "probe", forbidden)
    result = install(lock, store, dest)

    assert not result.changed and result.action == "unchanged"
    assert result.installed == () and result.removed == ()
    assert (marker.read_bytes(), marker.stat().st_mtime_ns) == before
    assert [a.name for a in result.packages] == ["alpha", "beta", "tool"]


def test_missing_artifact_is_named_and_nothing_is_left(
    tmp_path: Path, wheels: dict[str, Path], lock: LockFile
) -> None:
    store = stocked_store(tmp_path / "partial-store", [wheels["alpha"], wheels["tool"]])
    dest = tmp_path / "env"
    with pytest.raises(StoreError) as err:
        install(lock, store, dest)

    assert [p.message.split(" ")[0] for p in err.value.problems] == [wheels["beta"].name]
    assert err.value.problems[0].where == "beta 1.0"
    hint = f"envship fetch --lock {lock.path} --target {HOST} --store {store.root}"
    assert err.value.hint == f"fetch them: {hint}"
    assert not dest.exists()


def test_lock_for_another_machine_is_refused_with_a_reason_per_target(
    tmp_path: Path, wheels: dict[str, Path], store: Store
) -> None:
    lock = write_lock(
        tmp_path / "other.toml",
        [wheels["alpha"], wheels["beta"]],
        targets=[
            target(OTHER_MACHINE, platform=OTHER_MACHINE),
            target("newpy", python=OTHER_PY),
            target("newglibc", glibc="2.99"),
            target("gpu", variant="cuda"),
        ],
    )
    dest = tmp_path / "env"
    with pytest.raises(TargetError) as err:
        install(lock, store, dest)

    reasons = {p.where: p.message for p in err.value.problems}
    machine = OTHER_MACHINE.split("-", 1)[1]
    assert reasons[OTHER_MACHINE].startswith(f"{machine} needed, machine is")
    assert reasons["newpy"] == f"Python {OTHER_PY} needed, interpreter is {PY}"
    assert reasons["newglibc"].startswith("glibc 2.99 needed, host has ")
    assert reasons["gpu"] == "cuda variant but no GPU found"
    assert not dest.exists()
    assert not (tmp_path / "env.envship-tmp").exists()


def test_explicit_target_must_fit_this_machine(
    tmp_path: Path, wheels: dict[str, Path], store: Store
) -> None:
    lock = write_lock(
        tmp_path / "two.toml",
        [wheels["beta"]],
        targets=[target(), target(OTHER_MACHINE, platform=OTHER_MACHINE)],
    )
    with pytest.raises(TargetError) as err:
        install(lock, store, tmp_path / "env", target=OTHER_MACHINE)
    assert [p.where for p in err.value.problems] == [OTHER_MACHINE]
    assert install(lock, store, tmp_path / "env", target=HOST).target.name == HOST


def test_new_lock_updates_the_environment_in_place(
    tmp_path: Path, wheels: dict[str, Path], lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    newer = write_lock(tmp_path / "newer.toml", [wheels["alpha"], wheels["beta11"]])

    result = install(newer, store, dest)

    assert result.action == "updated"
    assert result.installed == ("beta==1.1",)
    assert result.removed == ("beta==1.0", "tool==1.0")  # the upgrade's old version too
    assert versions(dest) == {"alpha": "1.0", "beta": "1.1"}
    assert not (dest / "bin" / "tool").exists()
    assert json.loads((dest / MARKER_NAME).read_text())["lock"]["digest"] == newer.digest
    assert install(newer, store, dest).action == "unchanged"


def test_progress_counts_every_artifact_once(
    tmp_path: Path, wheels: dict[str, Path], lock: LockFile, store: Store
) -> None:
    seen: list[tuple[int, int, str]] = []
    install(lock, store, tmp_path / "env", progress=lambda *step: seen.append(step))

    sizes = {w.name: w.stat().st_size for w in wheels.values()}
    names = [wheels[k].name for k in ("alpha", "beta", "tool")]
    assert [name for _, _, name in seen] == names
    running = [sum(sizes[n] for n in names[: i + 1]) for i in range(len(names))]
    assert [(done, total) for done, total, _ in seen] == [
        (r, sum(sizes[n] for n in names)) for r in running
    ]


def test_a_store_without_named_links_is_staged_next_to_dest(
    tmp_path: Path, wheels: dict[str, Path], lock: LockFile
) -> None:
    # A store whose named/ cannot be written (a shared, read-only volume; a file stands in
    # for it because root may write anywhere): artifacts are linked next to dest instead.
    store = stocked_store(tmp_path / "shared-store", list(wheels.values()))
    (store.root / "named").write_text("not a folder\n")
    dest = tmp_path / "env"

    assert install(lock, store, dest).action == "created"
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}
    assert (store.root / "named").read_text() == "not a folder\n"
    assert not (tmp_path / "env.envship-tmp").exists()


@pytest.mark.parametrize("kind", ["user-files", "foreign-venv", "file"])
def test_a_folder_that_is_not_ours_is_refused_and_untouched(
    tmp_path: Path, lock: LockFile, store: Store, kind: str
) -> None:
    dest = tmp_path / "data"
    if kind == "file":
        dest.write_text("precious\n")
    else:
        dest.mkdir()
        (dest / "notes.txt").write_text("precious\n")
        if kind == "foreign-venv":
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    with pytest.raises(InstallError, match="not an envship environment"):
        install(lock, store, dest)

    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (dest if kind == "file" else dest / "notes.txt").read_text() == "precious\n"


def test_an_empty_folder_is_used_and_kept(tmp_path: Path, lock: LockFile, store: Store) -> None:
    dest = tmp_path / "mount"
    dest.mkdir()
    assert install(lock, store, dest).action == "created"
    assert versions(dest)["alpha"] == "1.0"


def test_failed_install_into_an_empty_folder_leaves_it_empty(
    tmp_path: Path, lock: LockFile, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "mount"
    dest.mkdir()
    interrupt_sync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        install(lock, store, dest)
    assert dest.is_dir() and list(dest.iterdir()) == []


def interrupt_sync(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Let ``uv venv`` run for real, then interrupt the install step like a Ctrl-C."""
    real: Callable[..., None] = install_mod._run
    steps: list[str] = []

    def run(args: Sequence[str], *, what: str, **kw: Any) -> None:
        steps.append(args[1])
        if args[1:3] == ["pip", "sync"]:
            raise KeyboardInterrupt
        real(args, what=what, **kw)

    monkeypatch.setattr(install_mod, "_run", run)
    return steps


def test_interrupted_install_leaves_no_environment_and_a_rerun_succeeds(
    tmp_path: Path, lock: LockFile, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "env"
    steps = interrupt_sync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        install(lock, store, dest)
    assert steps == ["venv", "pip"]  # the venv existed when the interrupt came
    assert not dest.exists()

    monkeypatch.undo()
    monkeypatch.setattr(install_mod, "probe", lambda p=None: probe(p, gpu=lambda: False))
    assert install(lock, store, dest).action == "created"
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}


def test_killed_install_is_seen_as_incomplete_and_rebuilt(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    """SIGKILL runs no cleanup: the incomplete marker alone must say what happened."""
    dest = tmp_path / "env"
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        import envship.install as m
        from envship.lockfile import LockFile
        from envship.store import Store
        real = m._run
        def run(args, *, what, **kw):
            if args[1:3] == ["pip", "sync"]:
                os.kill(os.getpid(), signal.SIGKILL)
            real(args, what=what, **kw)
        m._run = run
        m.install(LockFile.load(Path(sys.argv[1])), Store(Path(sys.argv[2])), Path(sys.argv[3]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(lock.path), str(store.root), str(dest)], check=False
    )
    assert proc.returncode == -signal.SIGKILL
    assert (dest / "pyvenv.cfg").is_file() and (dest / INCOMPLETE_NAME).is_file()
    # The marker written at the start says how the run was made, not that it is done.
    assert json.loads((dest / MARKER_NAME).read_text())["store"] == str(store.root)

    result = install(lock, store, dest)

    assert result.action == "rebuilt"
    assert not (dest / INCOMPLETE_NAME).exists()
    assert not (tmp_path / "env.envship-tmp").exists()
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}


def test_failed_update_marks_the_environment_incomplete(
    tmp_path: Path, wheels: dict[str, Path], lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    newer = write_lock(tmp_path / "newer.toml", [wheels["alpha"], wheels["beta11"]])
    # Damage the stored beta 1.1 after the fact: uv's own hash check must catch it, and
    # the error then names the store file to fetch again (uv only names the package).
    stored = store.path(hashlib.sha256(wheels["beta11"].read_bytes()).hexdigest())
    stored.chmod(0o644)
    stored.write_bytes(stored.read_bytes() + b"\0")

    with pytest.raises(ArtifactError) as err:
        install(newer, store, dest)

    assert err.value.exit_code == 4
    assert err.value.artifact == str(stored)
    assert err.value.actual == "sha256:" + hashlib.sha256(stored.read_bytes()).hexdigest()
    assert wheels["beta11"].name in err.value.message
    assert "envship fetch --verify" in (err.value.hint or "")
    assert (dest / INCOMPLETE_NAME).exists()  # not complete, so the next run rebuilds


def compiled_alpha(env: Path) -> bool:
    site = run_py(env, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    return bool(list((Path(site) / "alpha" / "__pycache__").glob("__init__.*.pyc")))


def test_compile_bytecode(tmp_path: Path, lock: LockFile, store: Store) -> None:
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    install(lock, store, plain)
    install(lock, store, compiled, compile_bytecode=True)
    assert compiled_alpha(compiled) and not compiled_alpha(plain)
    assert json.loads((compiled / MARKER_NAME).read_text())["compiled"] is True
    assert json.loads((plain / MARKER_NAME).read_text())["compiled"] is False


def test_compile_asked_of_an_env_without_byte_code_compiles_it(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    # The env matches the lock, but not the request: --compile is not silently dropped.
    again = install(lock, store, dest, compile_bytecode=True)
    assert again.action == "updated" and again.installed == () and again.removed == ()
    assert compiled_alpha(dest)
    assert json.loads((dest / MARKER_NAME).read_text())["compiled"] is True
    # Now both requests are met as they are.
    assert install(lock, store, dest, compile_bytecode=True).action == "unchanged"
    assert install(lock, store, dest).action == "unchanged"


def test_groups_select_packages_and_a_group_change_updates(
    tmp_path: Path, wheels: dict[str, Path], store: Store
) -> None:
    lock = write_lock(
        tmp_path / "groups.toml",
        [wheels["alpha"], wheels["beta"], wheels["tool"]],
        groups={"dev": ["tool"]},
    )
    dest = tmp_path / "env"
    first = install(lock, store, dest, groups=[])
    assert first.groups == () and "tool" not in versions(dest)

    second = install(lock, store, dest)  # default: every group in the lock
    assert second.action == "updated" and second.groups == ("dev",)
    assert second.installed == ("tool==1.0",)
    assert versions(dest)["tool"] == "1.0"

    with pytest.raises(LockError, match="no dependency group 'docs'"):
        install(lock, store, dest, groups=["docs"])


def test_an_env_that_lost_its_interpreter_is_rebuilt(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    (dest / "bin" / "python").unlink()
    assert install(lock, store, dest).action == "rebuilt"
    assert versions(dest)["beta"] == "1.0"


def test_python_choice(tmp_path: Path, lock: LockFile, store: Store) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    alias = tmp_path / "bin" / "py"
    alias.parent.mkdir()
    alias.symlink_to(os.path.realpath(sys.executable))
    # The same interpreter under another name is the same choice: nothing to do.
    assert install(lock, store, dest, python=str(alias)).action == "unchanged"

    system = Path(f"/usr/bin/python{PY}")
    # The machine image ships Debian's CPython beside the one running the tests.
    assert system.exists(), f"this test needs a second CPython {PY} at {system}"
    assert os.path.realpath(system) != os.path.realpath(sys.executable)
    result = install(lock, store, dest, python=str(system))
    assert result.action == "rebuilt"
    cfg = (dest / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg
    assert versions(dest)["alpha"] == "1.0"


def test_install_imports_neither_the_spec_model_nor_the_resolver() -> None:
    # Imports are most of an install's fixed cost next to uv's (issue 3): the install
    # command must not load the spec model or the lock/resolve module. A fresh interpreter,
    # because this test session has imported everything already.
    code = (
        "import sys, envship.cli.main, envship.cli.install, envship.install; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('envship'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert "envship.install" in loaded
    assert not loaded & {"envship.spec", "envship.lock", "envship.importers", "envship.fetch"}


def test_the_package_api_loads_on_first_use() -> None:
    code = (
        "import sys, envship; before = set(sys.modules); "
        "values = {n: getattr(envship, n) for n in envship.__all__}; "
        "from envship.spec import Spec; from envship.store import Store; "
        "from envship.targets import PLATFORMS; "
        "assert values['Spec'] is Spec and values['Store'] is Store, values; "
        "assert values['PLATFORMS'] is PLATFORMS; "
        "assert set(envship.__all__) <= set(dir(envship)); "
        "print('envship.spec' in before, 'envship.spec' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def _site(env: Path) -> Path:
    return next((env / "lib").glob("python*/site-packages"))


def _remove_dist(env: Path, name: str) -> None:
    site = _site(env)
    for path in [*site.glob(f"{name}-*.dist-info"), site / name]:
        if path.is_dir():
            shutil.rmtree(path)


@pytest.mark.parametrize(
    ("damage", "installed", "removed"),
    [
        ("remove beta", ["beta==1.0"], []),
        ("add a stray distribution", [], ["beta==1.1"]),
        ("replace beta by 1.1", ["beta==1.0"], ["beta==1.1"]),
    ],
)
def test_a_rerun_repairs_distributions_that_drifted(
    tmp_path: Path,
    lock: LockFile,
    store: Store,
    wheels: dict[str, Path],
    damage: str,
    installed: list[str],
    removed: list[str],
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    if damage == "remove beta":
        _remove_dist(dest, "beta")
    else:
        if damage == "replace beta by 1.1":
            _remove_dist(dest, "beta")
        stray = wheels["beta11"]
        if damage == "add a stray distribution":  # another name, so nothing is replaced
            stray = build_wheel(tmp_path / "stray", "stray", "1.1")
            removed = ["stray==1.1"]
        subprocess.run(
            [
                *(uv_bin(), "pip", "install", "-q", "--offline", "--no-deps"),
                *("--python", str(dest / "bin" / "python"), str(stray)),
            ],
            check=True,
        )
    assert versions(dest) != {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}

    result = install(lock, store, dest)
    assert result.action == "repaired" and result.changed
    assert list(result.installed) == installed and list(result.removed) == removed
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}
    assert install(lock, store, dest).action == "unchanged"


def test_the_marker_records_what_the_venv_itself_wrote(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    marker = json.loads((dest / MARKER_NAME).read_text())
    files, links = marker["venv_files"], marker["venv_links"]
    # What `uv venv` alone writes, anywhere in the venv (older uv: _virtualenv.py and
    # .pth in site-packages too; 0.13: none there).
    bare = tmp_path / "bare"
    subprocess.run([uv_bin(), "venv", "-q", "--python", sys.executable, str(bare)], check=True)
    made = [p for p in bare.rglob("*") if "__pycache__" not in p.parts]
    assert set(files) == {
        p.relative_to(bare).as_posix() for p in made if p.is_file() and not p.is_symlink()
    }
    assert {"bin/activate", "pyvenv.cfg"} <= set(files)
    assert links == {p.relative_to(bare).as_posix(): os.readlink(p) for p in made if p.is_symlink()}
    assert {"bin/python", "bin/python3", f"bin/python{PY}"} <= set(links)
    for rel, digest in files.items():
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == digest
    for rel, target in links.items():
        assert os.readlink(dest / rel) == target


def test_copy_mode_shares_no_file_with_uvs_cache(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest, link_mode="copy")
    files = [p for p in _site(dest).rglob("*") if p.is_file() and not p.is_symlink()]
    assert files and all(p.stat().st_nlink == 1 for p in files)
    # The default is uv's: hard links into its cache (same filesystem here), which is
    # why shared environments ask for copies.
    other = tmp_path / "linked"
    install(lock, store, other)
    assert any(p.stat().st_nlink > 1 for p in (_site(other) / "beta").rglob("*.py"))


@pytest.mark.parametrize(
    "damage", ["none", "half made", "unreadable marker", "dangling python", "dangling current"]
)
def test_a_shared_version_is_never_installed_into(
    tmp_path: Path, lock: LockFile, store: Store, wheels: dict[str, Path], damage: str
) -> None:
    """Complete or not, a version is immutable: a damaged one is for `env create` (which
    discards and remakes it under the root's lock), never rebuilt in place."""
    from envship.envs import create_env

    root = tmp_path / "root"
    version = create_env(lock, store, root, name="ds")
    if damage == "half made":
        (version.path / INCOMPLETE_NAME).write_text("x")
    elif damage == "unreadable marker":
        (version.path / MARKER_NAME).write_text("{")
    elif damage == "dangling python":  # as a version made on another machine looks here
        (version.path / "bin" / "python").unlink()
        (version.path / "bin" / "python").symlink_to("/opt/elsewhere/python3")
    elif damage == "dangling current":
        (root / "ds" / "current").unlink()
        (root / "ds" / "current").symlink_to("versions/deadbeefdeadbeefdead")
    before = sorted(str(p) for p in version.path.rglob("*"))
    (tmp_path / "other").mkdir()
    other = write_lock(tmp_path / "other" / "pylock.toml", [wheels["beta11"]])
    for dest in (root / "ds" / "current", version.path):
        with pytest.raises(InstallError, match="immutable") as caught:
            install(other, store, dest)
        assert "envship env create ds" in (caught.value.hint or "")
    assert sorted(str(p) for p in version.path.rglob("*")) == before


def test_a_link_to_nothing_is_refused_not_followed(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    dest.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InstallError, match="symbolic link to nothing"):
        install(lock, store, dest)
    assert not (tmp_path / "nowhere").exists() and dest.is_symlink()


def test_another_link_mode_puts_every_file_in_place_again(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)  # uv's default: hard links into its cache
    assert any(p.stat().st_nlink > 1 for p in (_site(dest) / "beta").rglob("*.py"))
    assert install(lock, store, dest, link_mode="copy").action == "updated"
    files = [p for p in _site(dest).rglob("*") if p.is_file() and not p.is_symlink()]
    assert all(p.stat().st_nlink == 1 for p in files)
    assert json.loads((dest / MARKER_NAME).read_text())["link_mode"] == "copy"
    assert install(lock, store, dest, link_mode="copy").action == "unchanged"
    # A repair asked without the flag keeps what the environment was made with.
    _remove_dist(dest, "beta")
    assert install(lock, store, dest).action == "repaired"
    assert all(p.stat().st_nlink == 1 for p in (_site(dest) / "beta").rglob("*.py"))


def test_a_repair_keeps_the_byte_code(tmp_path: Path, lock: LockFile, store: Store) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest, compile_bytecode=True)
    _remove_dist(dest, "alpha")
    assert install(lock, store, dest).action == "repaired"
    assert json.loads((dest / MARKER_NAME).read_text())["compiled"] is True
    assert compiled_alpha(dest)


def test_two_metadata_folders_for_one_name_make_the_env_again(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    site = _site(dest)
    shutil.copytree(site / "beta-1.0.dist-info", site / "beta-0.9.dist-info")
    assert install(lock, store, dest).action == "rebuilt"
    assert not (site / "beta-0.9.dist-info").exists()
    assert install(lock, store, dest).action == "unchanged"


@pytest.mark.parametrize(
    ("extra", "action"),
    [
        ("lib/python3.99/site-packages/", "unchanged"),  # another Python's folder: not ours
        # Installed the old way: uv's sync cannot remove it, so the env is made again.
        ("{site}/stray-1.0-py3.11.egg-info/PKG-INFO", "rebuilt"),
    ],
)
def test_the_quick_look_reads_this_pythons_metadata_folders(
    tmp_path: Path, lock: LockFile, store: Store, extra: str, action: str
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    path = dest / extra.format(site=_site(dest).relative_to(dest))
    if extra.endswith("/"):
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True)
        path.write_text("Metadata-Version: 1.0\nName: stray\nVersion: 1.0\n")
    assert install(lock, store, dest).action == action
    assert install(lock, store, dest).action == "unchanged"


_SLOW_UV = """#!/bin/sh
case "$2" in sync) echo $$ > "{flag}"; while [ ! -e "{flag}.go" ]; do sleep 0.05; done;; esac
exec "{uv}" "$@"
"""


def test_a_killed_install_takes_its_uv_with_it_and_a_rerun_succeeds(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    """SIGKILL (the OOM killer, `docker stop`): uv must not go on writing into an env the
    next run clears; on Linux the child is killed with its parent."""
    flag = tmp_path / "uv-pid"
    slow = tmp_path / "slow-uv"
    slow.write_text(_SLOW_UV.format(flag=flag, uv=uv_bin()))
    slow.chmod(0o755)
    dest = tmp_path / "env"
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import envship.install as m
        from envship.lockfile import LockFile
        from envship.store import Store
        m.uv_bin = lambda: sys.argv[4]
        m.install(LockFile.load(Path(sys.argv[1])), Store(Path(sys.argv[2])), Path(sys.argv[3]))
        """
    )
    args = [sys.executable, "-c", script, str(lock.path), str(store.root), str(dest), str(slow)]
    proc = subprocess.Popen(args)
    deadline = time.monotonic() + 60
    while not (flag.exists() and flag.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    uv_pid = int(flag.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    while Path(f"/proc/{uv_pid}").exists() and _state(uv_pid) != "Z":
        assert time.monotonic() < deadline, "uv outlived the envship that started it"
        time.sleep(0.02)
    (tmp_path / "uv-pid.go").touch()  # nobody is left to read it

    assert (dest / INCOMPLETE_NAME).exists()
    assert install(lock, store, dest).action == "rebuilt"
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.fixture
def huge(tmp_path: Path, wheels: dict[str, Path], store: Store) -> LockFile:
    wheel = build_huge(tmp_path / "dist")
    store.add_file(wheel)
    return write_lock(tmp_path / "huge.toml", [wheels["alpha"], wheels["beta"], wheel])


def test_a_new_environment_on_a_full_disk_leaves_nothing(
    huge: LockFile, store: Store, small_disk: SmallDisk
) -> None:
    dest = small_disk.path / "env"
    before = small_disk.used()
    with pytest.raises(InstallError) as err:
        install(huge, store, dest)

    assert err.value.message == f"the disk holding {dest} is full"
    assert any("No space left on device" in p.message for p in err.value.problems)
    assert "nothing of this run was left behind" in (err.value.hint or "")
    assert not dest.exists() and not (small_disk.path / "env.envship-tmp").exists()
    assert small_disk.used() <= before

    small_disk.resize(32 * MIB)
    assert install(huge, store, dest).action == "created"


def test_an_update_on_a_full_disk_is_made_again_by_the_next_run(
    lock: LockFile, huge: LockFile, store: Store, small_disk: SmallDisk
) -> None:
    dest = small_disk.path / "env"
    install(lock, store, dest)
    with pytest.raises(InstallError) as err:
        install(huge, store, dest)

    assert err.value.message == f"the disk holding {dest} is full"
    assert "marked incomplete" in (err.value.hint or "")
    assert (dest / INCOMPLETE_NAME).exists()

    small_disk.resize(32 * MIB)
    result = install(huge, store, dest)
    assert result.action == "rebuilt" and not (dest / INCOMPLETE_NAME).exists()
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "huge": "1.0"}


# -- a distribution re-installed at the same version: seen by its RECORD ------------------


def _uv_install(dest: Path, wheel: Path) -> None:
    subprocess.run(
        [
            *(uv_bin(), "pip", "install", "-q", "--offline", "--no-deps", "--reinstall"),
            *("--python", str(dest / "bin" / "python"), str(wheel)),
        ],
        check=True,
    )


def _rebuilt_by_uv(dest: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    """Another wheel of beta 1.0 (rebuilt, other content), installed by uv."""
    _uv_install(dest, build_wheel(tmp / "rebuilt", "beta", "1.0", files={"beta/x.py": "x = 1\n"}))


def _rebuilt_by_pip(dest: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    """The same, installed by pip (isolated: this machine's pip config adds sources)."""
    wheel = build_wheel(tmp / "rebuilt", "beta", "1.0", files={"beta/x.py": "x = 1\n"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--isolated", "--python", str(dest / "bin" / "python")),
            *("install", "-q", "--no-index", "--no-deps", "--force-reinstall", str(wheel)),
        ],
        check=True,
        env=env,
    )


def _same_wheel_from_elsewhere(dest: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    """The locked wheel itself, installed again by another tool from another place."""
    (tmp / "elsewhere").mkdir()
    _uv_install(dest, Path(shutil.copy(wheels["beta"], tmp / "elsewhere")))


def _record_rewritten(dest: Path, tmp: Path, wheels: dict[str, Path]) -> None:
    """A file edited and its RECORD line rewritten to match: verify --full passes it.
    (Replaced, not written in place: the default link mode hard-links uv's cache, and an
    edit in place edits the cache the repair would restore from.)"""
    site = _site(dest)
    module = site / "beta" / "__init__.py"
    data = module.read_bytes() + b"import os\n"
    (tmp / "edited.py").write_bytes(data)
    os.replace(tmp / "edited.py", module)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record = site / "beta-1.0.dist-info" / "RECORD"
    lines = [
        f"beta/__init__.py,sha256={digest},{len(data)}"
        if ln.startswith("beta/__init__.py,")
        else ln
        for ln in record.read_text().splitlines()
    ]
    record.write_text("\n".join(lines) + "\n")


REPLACEMENTS = [_rebuilt_by_uv, _rebuilt_by_pip, _same_wheel_from_elsewhere, _record_rewritten]


@pytest.mark.parametrize("replace", REPLACEMENTS, ids=[r.__name__.strip("_") for r in REPLACEMENTS])
def test_a_rerun_repairs_a_distribution_replaced_at_the_same_version(
    tmp_path: Path,
    lock: LockFile,
    store: Store,
    wheels: dict[str, Path],
    replace: Callable[[Path, Path, dict[str, Path]], None],
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    beta = _site(dest) / "beta-1.0.dist-info"
    files = {p: p.read_bytes() for p in (_site(dest) / "beta").rglob("*.py")}
    record = (beta / "RECORD").read_bytes()
    replace(dest, tmp_path, wheels)
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}  # same names
    assert (beta / "RECORD").read_bytes() != record

    result = install(lock, store, dest)
    assert result.action == "repaired" and result.changed
    assert (result.installed, result.removed) == (("beta==1.0",), ())
    assert {p: p.read_bytes() for p in (_site(dest) / "beta").rglob("*.py")} == files
    assert (beta / "RECORD").read_bytes() == record
    assert install(lock, store, dest).action == "unchanged"


def test_the_marker_keeps_each_record_digest_and_an_older_marker_still_works(
    tmp_path: Path, lock: LockFile, store: Store, wheels: dict[str, Path]
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    marker = json.loads((dest / MARKER_NAME).read_text())
    site = _site(dest)
    assert marker["records"] == {
        name: hashlib.sha256(next(site.glob(f"{name}-*.dist-info/RECORD")).read_bytes()).hexdigest()
        for name in ("alpha", "beta", "tool")
    }
    # A marker from before the digests: the quick look is by metadata folder names alone.
    del marker["records"]
    (dest / MARKER_NAME).write_text(json.dumps(marker))
    _rebuilt_by_uv(dest, tmp_path, wheels)
    assert install(lock, store, dest).action == "unchanged"


def test_envship_add_leaves_the_locked_records_as_recorded(tmp_path: Path) -> None:
    from envship._installmarker import drift
    from envship.add import add
    from test_add import build_add_index, make_project  # it imports this module

    with serve(build_add_index(tmp_path / "universe")) as server:
        project = make_project(tmp_path, server.simple_url)
        add(["kappa==1.0"], env=project.env, spec=project.spec)
    marker = json.loads((project.env / MARKER_NAME).read_text())
    found = drift(project.env, marker["packages"], PY, marker["records"])
    assert (found.replaced, found.missing, found.present) == ((), (), ("kappa==1.0",))
    result = install(project.lockfile(), project.store, project.env)
    assert result.action == "updated" and "kappa" not in versions(project.env)
    assert install(project.lockfile(), project.store, project.env).action == "unchanged"


def _edit_in_place(env: Path) -> None:
    """Through the file's hard link into uv's cache: the cached copy changes too."""
    beta = _site(env) / "beta" / "__init__.py"
    assert beta.stat().st_nlink > 1
    with beta.open("r+") as f:
        f.write("raise SystemExit('edited')  #")


def _delete_a_module(env: Path) -> None:
    (_site(env) / "beta" / "__init__.py").unlink()


@pytest.mark.parametrize("damage", [_edit_in_place, _delete_a_module])
def test_reinstall_makes_files_the_quick_look_misses_again_from_the_store(
    tmp_path: Path, lock: LockFile, store: Store, damage: Callable[[Path], None]
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest)
    damage(dest)
    code = "from beta import __version__"  # without __init__.py: a namespace package
    broken = subprocess.run([str(dest / "bin" / "python"), "-c", code], check=False)
    assert broken.returncode != 0
    # The quick look reads metadata only: a plain re-run does not see it.
    assert install(lock, store, dest).action == "unchanged"
    # Another env from the now edited cache gets the edit too (uv's own behaviour)...
    if damage is _edit_in_place:
        other = install(lock, store, tmp_path / "other").dest
        assert subprocess.run([str(other / "bin" / "python"), "-c", code]).returncode

    result = install(lock, store, dest, reinstall=True)

    # ...but a reinstall unpacks the store's wheel afresh.
    assert result.action == "rebuilt" and result.changed
    assert run_py(dest, "import beta; print(beta.__version__)") == "1.0"
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}
    assert (_site(dest) / "beta" / "__init__.py").stat().st_nlink == 1
    assert not (tmp_path / "env.envship-tmp").exists()
    assert install(lock, store, dest).action == "unchanged"


def test_reinstall_keeps_the_interpreter_byte_code_and_link_mode(
    tmp_path: Path, lock: LockFile, store: Store
) -> None:
    dest = tmp_path / "env"
    install(lock, store, dest, compile_bytecode=True, link_mode="copy")
    before = json.loads((dest / MARKER_NAME).read_text())

    assert install(lock, store, dest, reinstall=True).action == "rebuilt"

    after = json.loads((dest / MARKER_NAME).read_text())
    assert after["python"] == before["python"] and after["target"] == before["target"]
    assert after["compiled"] is True and after["link_mode"] == "copy"
    assert compiled_alpha(dest)


@pytest.mark.parametrize("relink", ["another interpreter", "a link to nothing"])
def test_a_relinked_interpreter_is_seen_and_the_env_made_again(
    tmp_path: Path, lock: LockFile, store: Store, relink: str
) -> None:
    """The launcher's remedy for a bin/python pointed elsewhere is `envship install`: the
    quick look must see the link, not only the metadata."""
    dest = tmp_path / "env"
    install(lock, store, dest)
    python = dest / "bin" / "python"
    base = os.path.realpath(python)
    elsewhere = tmp_path / "elsewhere-python"
    if relink == "another interpreter":  # a copy of the binary: it runs, from another path
        shutil.copy2(os.path.realpath(sys.executable), elsewhere)
    python.unlink()
    python.symlink_to(elsewhere)

    result = install(lock, store, dest)

    assert result.action == "rebuilt"
    assert os.path.realpath(python) == base
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}
    assert install(lock, store, dest).action == "unchanged"


@pytest.mark.parametrize("key", ["target", "lock", "python", "packages", "groups"])
def test_a_marker_missing_what_readers_need_is_no_marker(
    tmp_path: Path, lock: LockFile, store: Store, key: str
) -> None:
    """Damaged after the fact (markers are written in one rename): the env is ours and is
    made again, rather than a KeyError."""
    dest = tmp_path / "env"
    install(lock, store, dest)
    marker = json.loads((dest / MARKER_NAME).read_text())
    del marker[key]
    (dest / MARKER_NAME).write_text(json.dumps(marker))

    assert install(lock, store, dest).action == "rebuilt"
    assert versions(dest) == {"alpha": "1.0", "beta": "1.0", "tool": "1.0"}


def test_an_sdist_that_cannot_be_built_offline_is_explained(
    tmp_path: Path, wheels: dict[str, Path], lock: LockFile
) -> None:
    """PEP 751 locks no build requirements: an sdist's backend is not in the store, and the
    offline install says so instead of leaving uv's resolver error alone."""
    sdist = build_sdist(tmp_path / "dist", "gamma", "1.0")
    data, _ = read_toml(lock.path)
    data["packages"].append(
        {
            "name": "gamma",
            "version": "1.0",
            "sdist": {
                "url": f"https://example.invalid/files/{sdist.name}",
                "hashes": {"sha256": hashlib.sha256(sdist.read_bytes()).hexdigest()},
            },
        }
    )
    data["tool"]["envship"]["allow-sdist"] = True
    path = tmp_path / "sdist-lock.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    store = stocked_store(tmp_path / "store", [*wheels.values(), sdist])
    dest = tmp_path / "env"
    with pytest.raises(InstallError) as err:
        install(LockFile.load(path), store, dest)
    assert err.value.hint is not None
    assert err.value.hint.startswith("the lock installs gamma from source: building needs")
    assert not dest.exists()

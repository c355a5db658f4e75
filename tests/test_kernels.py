"""``envship.kernels``: real environments, real kernelspec dirs, real Jupyter, a real kernel.

Every test points Jupyter's data, config, runtime and path variables (and HOME) into
``tmp_path``, so nothing is written outside it. Tests that start a real ipykernel need
its wheels from PyPI (marked ``pypi``); the rest use tiny wheels built here plus a
stand-in ``ipykernel`` distribution whose ``ipykernel_launcher`` module reports how the
launcher started it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jupyter_core.paths
import pytest
import tomli_w
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

import envship.kernels as kernels_mod
from envship._envroot import point_current
from envship._launcher import (
    INCOMPLETE_MARKER,
    INSTALL_MARKER,
    MAGIC_FILE,
    USED_FILE,
    host_glibc,
    lock_targets,
)
from envship._toml import load_toml
from envship.cli.main import main
from envship.envs import USED_NAME, create_env
from envship.install import INCOMPLETE_NAME, MARKER_NAME, install
from envship.kernels import (
    KERNEL_JSON,
    LAUNCHER_NAME,
    MAGIC_NAME,
    KernelError,
    KernelInputError,
    install_kernel,
    kernel_name_for,
    list_kernels,
    remove_kernel,
)
from envship.lockfile import LockFile
from envship.store import Store
from indexlib import build_wheel
from test_install import HOST, OTHER_PY, PY, stocked_store, target, write_lock

GLIBC = host_glibc() or "2.28"
OTHER_MACHINE = "aarch64" if HOST != "linux-aarch64" else "x86_64"
MACHINE = HOST.split("-", 1)[1]

STAND_IN = """\
import json, os, sys
print(json.dumps({
    "argv": sys.argv[1:],
    "executable": sys.executable,
    "prefix": sys.prefix,
    "virtual_env": os.environ.get("VIRTUAL_ENV"),
    "path0": os.environ["PATH"].split(os.pathsep)[0],
    "magic": getattr(sys.modules.get("envship_magic"), "__file__", None),
    "pythonpath": os.environ.get("PYTHONPATH"),
    "sys_path": sys.path,
}))
"""


def stand_in(dist: Path) -> Path:
    """A wheel of a distribution named ipykernel (what the launcher looks for) whose
    ``ipykernel_launcher`` module (what it runs) is ``STAND_IN``."""
    return build_wheel(dist, "ipykernel", "0.1", files={"ipykernel_launcher.py": STAND_IN})


def isolate_jupyter(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every Jupyter location into ``root``; return the user ``kernels`` folder."""
    for var, sub in (
        ("HOME", "home"),
        ("JUPYTER_DATA_DIR", "jupyter-data"),
        ("JUPYTER_CONFIG_DIR", "jupyter-config"),
        ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
        ("IPYTHONDIR", "ipython"),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(root / sub))
    for var in ("JUPYTER_PATH", "JUPYTER_PREFER_ENV_PATH", "JUPYTER_PLATFORM_DIRS"):
        monkeypatch.delenv(var, raising=False)
    return root / "jupyter-data" / "kernels"


@pytest.fixture(autouse=True)
def user_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_jupyter(tmp_path, monkeypatch)


def make_env(
    root: Path,
    name: str = "ds-env",
    extra: list[Path] | None = None,
    groups: dict[str, Sequence[str]] | None = None,
    installed: Sequence[str] | None = None,
) -> Path:
    """An environment made by ``envship.install`` from alpha (requires beta), beta and the
    stand-in launcher module, plus ``extra`` wheels; locked for this machine, with
    ``groups`` (group: package names) of which ``installed`` are installed (all)."""
    dist = root / "dist"
    wheels = [
        build_wheel(dist, "alpha", "1.0", requires=["beta>=1.0"]),
        build_wheel(dist, "beta", "1.0"),
        stand_in(dist),
    ]
    if extra:
        wheels = wheels[:2] + extra
    lock = write_lock(root / "pylock.toml", wheels, targets=[target(glibc=GLIBC)], groups=groups)
    store = stocked_store(root / "store", wheels)
    install(lock, store, root / name, groups=installed)
    return root / name


@pytest.fixture
def env(tmp_path: Path) -> Path:
    return make_env(tmp_path / "work")


def test_display_name_comes_from_the_spec_by_way_of_the_lock(
    tmp_path: Path, user_kernels: Path
) -> None:
    root = tmp_path / "work"
    dist = root / "dist"
    wheels = [build_wheel(dist, "beta", "1.0"), stand_in(dist)]
    lock = write_lock(root / "pylock.toml", wheels, targets=[target(glibc=GLIBC)])
    # What `envship lock` writes for a spec with [kernel] display-name.
    data = load_toml(lock.path)
    data["tool"]["envship"].update({"name": "ds", "display-name": "Team DS (2026)"})
    lock.path.write_text(tomli_w.dumps(data))
    install(LockFile.load(lock.path), stocked_store(root / "store", wheels), root / "ds-env")

    assert install_kernel(root / "ds-env").display_name == "Team DS (2026)"
    assert install_kernel(root / "ds-env", display_name="Mine").display_name == "Mine"


def kernel_json(resource_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((resource_dir / KERNEL_JSON).read_text())
    return data


def edit_marker(env: Path, **target_fields: str) -> None:
    """Rewrite the environment's recorded target, as if it had been built elsewhere (the
    launcher reads the environment's own marker at every start)."""
    marker = json.loads((env / MARKER_NAME).read_text())
    marker["target"].update(target_fields)
    (env / MARKER_NAME).write_text(json.dumps(marker))


def run_launcher(
    resource_dir: Path, conn: Path, env_vars: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the kernelspec's argv exactly as Jupyter would, connection file filled in."""
    argv = [a.replace("{connection_file}", str(conn)) for a in kernel_json(resource_dir)["argv"]]
    return subprocess.run(argv, capture_output=True, text=True, env=env_vars, timeout=120)


# --- install -------------------------------------------------------------------------------


def test_install_writes_a_kernelspec_jupyter_sees_at_once(env: Path, user_kernels: Path) -> None:
    result = install_kernel(env)

    assert result.name == "ds-env" and result.display_name == "Python (ds-env)"
    assert result.resource_dir == user_kernels / "ds-env" and result.placement == "user"
    assert result.on_jupyter_path and not result.replaced
    assert result.target.name == HOST and result.lock_digest.startswith("sha256:")
    specs = KernelSpecManager().get_all_specs()
    spec = specs["ds-env"]["spec"]
    assert specs["ds-env"]["resource_dir"] == str(result.resource_dir)
    assert spec["argv"] == [
        "/bin/sh",
        str(result.resource_dir / LAUNCHER_NAME),
        str(env / "bin" / "python"),
        "-f",
        "{connection_file}",
    ]
    assert spec["language"] == "python" and spec["display_name"] == "Python (ds-env)"
    facts = spec["metadata"]["envship"]
    marker = json.loads((env / MARKER_NAME).read_text())
    assert facts["env"] == str(env) and facts["lock_digest"] == marker["lock"]["digest"]
    assert facts["target"] == marker["target"] and facts["machine"] == MACHINE
    launcher = (result.resource_dir / LAUNCHER_NAME).read_bytes()
    assert launcher == (Path(kernels_mod.__file__).parent / "_launcher.py").read_bytes()
    assert os.access(result.resource_dir / LAUNCHER_NAME, os.X_OK)
    magic = (result.resource_dir / MAGIC_NAME).read_bytes()
    assert magic == (Path(kernels_mod.__file__).parent / "_magic.py").read_bytes()
    assert MAGIC_NAME == MAGIC_FILE  # the name the launcher looks for
    # The launcher is stdlib-only and copied alone: it spells these names itself.
    assert (INSTALL_MARKER, INCOMPLETE_MARKER, USED_FILE) == (
        MARKER_NAME,
        INCOMPLETE_NAME,
        USED_NAME,
    )
    assert facts["envship_command"] == [sys.executable, "-m", "envship"]


def test_jupyter_kernelspec_list_command_shows_it(env: Path) -> None:
    install_kernel(env, name="Team.DS", display_name="Team DS")
    jupyter = Path(sys.executable).parent / "jupyter"
    proc = subprocess.run(
        [str(jupyter), "kernelspec", "list", "--json"], capture_output=True, text=True, check=True
    )
    found = json.loads(proc.stdout)["kernelspecs"]
    assert found["team.ds"]["spec"]["display_name"] == "Team DS"
    assert found["team.ds"]["spec"]["metadata"]["envship"]["env"] == str(env)


def test_names_are_normalized_and_validated(tmp_path: Path) -> None:
    assert kernel_name_for("My Env (GPU)") == "my-env-gpu"
    assert kernel_name_for("ds_2.1") == "ds_2.1"
    env = make_env(tmp_path / "w", name="My Env")
    assert install_kernel(env).name == "my-env"
    with pytest.raises(KernelInputError) as err:
        install_kernel(env, name="bad name!")
    assert err.value.kind == "kernel-input" and err.value.hint == "for example 'bad-name'"
    assert err.value.exit_code == 2 and isinstance(err.value, KernelError)
    with pytest.raises(KernelInputError):
        install_kernel(env, name="my kernel/..")
    with pytest.raises(KernelInputError):
        kernel_name_for("???")


def test_reinstall_replaces_only_its_own_kernelspec(env: Path, user_kernels: Path) -> None:
    install_kernel(env)
    again = install_kernel(env, display_name="Renamed")
    assert again.replaced
    assert kernel_json(again.resource_dir)["display_name"] == "Renamed"
    assert sorted(p.name for p in user_kernels.iterdir()) == ["ds-env"]  # no staging left

    foreign = user_kernels / "other"
    foreign.mkdir()
    (foreign / KERNEL_JSON).write_text(json.dumps({"argv": ["x"], "display_name": "Other"}))
    with pytest.raises(KernelError, match="envship did not make"):
        install_kernel(env, name="other")
    assert kernel_json(foreign) == {"argv": ["x"], "display_name": "Other"}


def test_refuses_what_envship_install_did_not_finish(tmp_path: Path, user_kernels: Path) -> None:
    plain = tmp_path / "plain"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(plain)], check=True)
    with pytest.raises(KernelError, match=r"not an environment made by `envship install`") as err:
        install_kernel(plain)
    # `envship install PLAIN` would refuse a folder envship did not make: never hinted.
    assert f"envship install {plain}" not in (err.value.hint or "")
    assert "`envship install NEW_DIR --lock LOCK` (a new or empty folder)" in (err.value.hint or "")
    assert f"`{plain / 'bin' / 'python'} -m ipykernel install --user`" in (err.value.hint or "")
    with pytest.raises(KernelError, match="there is no environment") as err:
        install_kernel(tmp_path / "nowhere")
    assert err.value.hint == (
        f"`envship install {tmp_path / 'nowhere'} --lock LOCK`, "
        f"then `envship kernel install {tmp_path / 'nowhere'}` (LOCK: the lock it is made from)"
    )

    env = make_env(tmp_path / "w")
    marker_text = (env / MARKER_NAME).read_text()
    marker = json.loads(marker_text)
    del marker["target"]["glibc"]
    (env / MARKER_NAME).write_text(json.dumps(marker))
    with pytest.raises(KernelError, match="is damaged") as err:
        install_kernel(env)
    assert "target needs name, platform, python, glibc, variant" in str(err.value)
    # A record of another shape is damaged too, not a crash in the remedies (a lock.path
    # that is a list reached open() once bin/python was relinked).
    marker = json.loads(marker_text)
    marker["lock"]["path"] = ["x"]
    (env / MARKER_NAME).write_text(json.dumps(marker))
    (env / "bin" / "python").unlink()
    (env / "bin" / "python").symlink_to("/usr/bin/python3.11")
    with pytest.raises(KernelError, match="is damaged") as err:
        install_kernel(env)
    assert [str(p) for p in err.value.problems] == [
        f"{env / MARKER_NAME}: lock.path: a path needed"
    ]
    assert err.value.hint is not None and f"`envship install {env} --lock LOCK`" in err.value.hint
    (env / MARKER_NAME).write_text(marker_text)

    (env / INCOMPLETE_NAME).write_text("install in progress\n")
    with pytest.raises(KernelError, match="half installed") as err:
        install_kernel(env)
    assert not user_kernels.exists()
    # The command that finishes it is the one the record says it was made with: the lock
    # by its absolute path (it said `--lock pylock.toml`, true in one folder only), the
    # target and the store; pasted in another folder, it finishes the environment.
    hint = err.value.hint or ""
    finish = hint.removeprefix("finish it: `").split("`, then ", 1)[0]
    assert finish.startswith(f"envship install {env} "), hint
    assert f"--lock {json.loads(marker_text)['lock']['path']}" in finish, hint
    assert f"--target {HOST}" in finish and "--store " in finish, hint
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "envship", *shlex.split(finish)[1:]],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert install_kernel(env).name == env.name


def test_prefix_and_kernel_dir_placement(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = tmp_path / "prefix"
    placed = install_kernel(env, prefix=prefix)
    assert placed.placement == "prefix" and not placed.on_jupyter_path
    assert placed.resource_dir == prefix / "share" / "jupyter" / "kernels" / "ds-env"
    assert "ds-env" not in KernelSpecManager().find_kernel_specs()
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    assert KernelSpecManager().find_kernel_specs()["ds-env"] == str(placed.resource_dir)
    assert install_kernel(env, prefix=prefix).on_jupyter_path

    kd = tmp_path / "kd"
    direct = install_kernel(env, kernel_dir=kd, name="direct")
    assert direct.placement == "kernel-dir" and direct.resource_dir == kd / "direct"
    assert [k.name for k in list_kernels([kd])] == ["direct"]

    system = tmp_path / "system"
    monkeypatch.setattr(jupyter_core.paths, "SYSTEM_JUPYTER_PATH", [str(system)])
    assert install_kernel(env, user=False).resource_dir == system / "kernels" / "ds-env"
    with pytest.raises(KernelError, match="not both"):
        install_kernel(env, prefix=prefix, kernel_dir=kd)


def test_a_failed_write_leaves_no_half_kernelspec(
    env: Path, user_kernels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = kernels_mod._populate
    seen_while_writing: list[dict[str, str]] = []

    def populate_then_fail(folder: Path, spec: dict[str, Any], env: Path) -> None:
        real(folder, spec, env)  # everything written, kernel.json included
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Jupyter warns about odd folder names
            seen_while_writing.append(KernelSpecManager().find_kernel_specs())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kernels_mod, "_populate", populate_then_fail)
    with pytest.raises(KernelError, match="cannot write the kernelspec"):
        install_kernel(env)
    assert "ds-env" not in seen_while_writing[0]
    assert list(user_kernels.iterdir()) == []

    monkeypatch.setattr(kernels_mod, "_populate", real)
    install_kernel(env, display_name="First")
    monkeypatch.setattr(kernels_mod, "_populate", populate_then_fail)
    with pytest.raises(KernelError):
        install_kernel(env, display_name="Second")
    assert kernel_json(user_kernels / "ds-env")["display_name"] == "First"
    assert sorted(p.name for p in user_kernels.iterdir()) == ["ds-env"]


# --- list and remove -----------------------------------------------------------------------


def test_list_shows_envship_kernels_their_env_and_shadowing(
    tmp_path: Path, user_kernels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = make_env(tmp_path / "one", name="one")
    two = make_env(tmp_path / "two", name="two")
    install_kernel(one)
    two_spec = install_kernel(two).resource_dir
    KernelSpecManager().install_kernel_spec(str(_foreign_source(tmp_path)), "foreign", user=True)
    early = tmp_path / "early"
    monkeypatch.setenv("JUPYTER_PATH", str(early))
    install_kernel(one, kernel_dir=early / "kernels", name="two")  # hides user's "two"

    found = [(k.name, k.env, k.env_exists, k.shadowed, k.fits) for k in list_kernels()]
    assert found == [
        ("two", one, True, False, True),
        ("one", one, True, False, True),
        ("two", two, True, True, True),
    ]
    shutil.rmtree(two)
    gone = [k for k in list_kernels() if k.env == two]
    assert [(k.name, k.env_exists, k.fits) for k in gone] == [("two", False, False)]
    # The target as the kernelspec recorded it, in the object form `env create --json` has.
    assert gone[0].to_json()["target"] == kernel_json(two_spec)["metadata"]["envship"]["target"]
    assert gone[0].to_json()["target"]["name"] == HOST
    assert gone[0].reasons == (f"the environment {two} is gone.",)
    assert [k.fits for k in list_kernels(check=False)] == [None, None, None]
    assert "foreign" in KernelSpecManager().find_kernel_specs()


def test_list_says_what_the_launcher_would_say(
    env: Path, tmp_path: Path, user_kernels: Path
) -> None:
    """ "ok because the folder exists" is not enough: each kernelspec's own launcher is asked."""
    made = install_kernel(env)
    (fits,) = list_kernels()
    assert (fits.fits, fits.reasons, fits.launcher_outdated) == (True, (), False)

    edit_marker(env, glibc="2.99", python="3.99")
    (refused,) = list_kernels()
    start = run_launcher(made.resource_dir, tmp_path / "c.json")
    said = [line[4:] for line in start.stderr.splitlines() if line.startswith("  - ")]
    assert refused.fits is False and list(refused.reasons) == said
    assert refused.reasons == (
        f"Python 3.99 needed, the interpreter is {PY}",
        f"glibc >= 2.99 needed, this machine has {GLIBC}",
    )

    # A kernelspec written by an older envship answers with the launcher it holds.
    launcher = made.resource_dir / LAUNCHER_NAME
    launcher.write_text(launcher.read_text().replace("glibc >= {target", "glibc at least {target"))
    (old,) = list_kernels()
    assert old.launcher_outdated and f"glibc at least 2.99 needed, this machine has {GLIBC}" in (
        old.reasons
    )
    # A kernel.json that does not start the launcher is never run to ask it.
    spec = kernel_json(made.resource_dir)
    spec["argv"] = [sys.executable, "-c", "import sys; sys.exit(0)"]
    (made.resource_dir / KERNEL_JSON).write_text(json.dumps(spec))
    (other,) = list_kernels()
    assert other.fits is False and other.reasons == (
        "kernel.json does not start envship's launcher",
    )


def _foreign_source(tmp_path: Path) -> Path:
    src = tmp_path / "foreign-src"
    src.mkdir(exist_ok=True)
    spec = {"argv": [sys.executable, "-c", "pass"], "display_name": "Not ours", "language": "x"}
    (src / KERNEL_JSON).write_text(json.dumps(spec))
    return src


def test_remove_deletes_only_envship_kernelspecs(
    env: Path, tmp_path: Path, user_kernels: Path
) -> None:
    made = install_kernel(env)
    KernelSpecManager().install_kernel_spec(str(_foreign_source(tmp_path)), "foreign", user=True)

    removed = remove_kernel("DS-Env")
    assert removed.name == "ds-env" and removed.resource_dir == made.resource_dir
    assert not made.resource_dir.exists() and env.is_dir()
    assert "ds-env" not in KernelSpecManager().find_kernel_specs()
    assert sorted(p.name for p in user_kernels.iterdir()) == ["foreign"]

    with pytest.raises(KernelError, match="not made by envship") as err:
        remove_kernel("foreign")
    assert err.value.hint == "remove it with `jupyter kernelspec remove foreign` if you mean to"
    assert err.value.exit_code == 2  # never a kernelspec remove works on: bad input
    assert (user_kernels / "foreign" / KERNEL_JSON).is_file()
    with pytest.raises(KernelError, match="no kernelspec named 'ds-env'") as gone:
        remove_kernel("ds-env")
    assert gone.value.exit_code == 2  # as `env check` of an unknown name


# --- the launcher (no network: a stand-in ipykernel_launcher reports how it was started) ---


def test_launcher_execs_the_env_python_with_jupyters_arguments(env: Path, tmp_path: Path) -> None:
    made = install_kernel(env)
    conn = tmp_path / "kernel-123.json"
    proc = run_launcher(made.resource_dir, conn)

    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["argv"] == ["-f", str(conn), "--InteractiveShellApp.extra_extensions=envship_magic"]
    assert seen["executable"] == str(env / "bin" / "python") and seen["prefix"] == str(env)
    assert seen["virtual_env"] == str(env) and seen["path0"] == str(env / "bin")
    # The magic is preloaded from the kernelspec folder, which is on no search path.
    assert seen["magic"] == str(made.resource_dir / MAGIC_NAME)
    assert seen["pythonpath"] is None
    assert not [p for p in seen["sys_path"] if str(made.resource_dir) in p]

    # Without the magic file (a kernelspec from before it existed) ipykernel starts as before.
    (made.resource_dir / MAGIC_NAME).unlink()
    plain = json.loads(run_launcher(made.resource_dir, conn).stdout)
    assert plain["argv"] == ["-f", str(conn)] and plain["magic"] is None
    check = subprocess.run(
        [*kernel_json(made.resource_dir)["argv"][:3], "--envship-check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and check.stdout.startswith("envship: this machine can run")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"platform": f"linux-{OTHER_MACHINE}"},
            f"{OTHER_MACHINE} needed, this machine is {MACHINE}",
        ),
        ({"glibc": "2.99"}, f"glibc >= 2.99 needed, this machine has {GLIBC}"),
        (
            {"python": "3.99"},
            f"Python 3.99 needed, the interpreter is {sys.version_info[0]}.{sys.version_info[1]}",
        ),
    ],
)
def test_launcher_refuses_a_machine_the_env_was_not_built_for(
    env: Path, tmp_path: Path, fields: dict[str, str], reason: str
) -> None:
    made = install_kernel(env, name="elsewhere")
    edit_marker(env, **fields)
    proc = run_launcher(made.resource_dir, tmp_path / "conn.json")

    assert proc.returncode == 1 and proc.stdout == ""  # the stand-in never ran
    first, *rest = proc.stderr.splitlines()
    assert first.startswith(f"envship: kernel 'elsewhere' cannot start: the environment {env}")
    assert f"this machine is {MACHINE} with glibc {GLIBC}" in first
    assert f"  - {reason}" in rest
    marker = json.loads((env / MARKER_NAME).read_text())
    assert rest[-1] == (
        f"envship: make it again on this machine: envship install {env} --lock "
        f"{marker['lock']['path']} --target {HOST} --store {marker['store']}"
    )


def test_launcher_cuda_variant_needs_a_gpu(env: Path, tmp_path: Path) -> None:
    made = install_kernel(env)
    edit_marker(env, variant="cuda")
    no_smi = tmp_path / "bin-empty"
    no_smi.mkdir()
    with_smi = tmp_path / "bin-smi"
    with_smi.mkdir()
    (with_smi / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (with_smi / "nvidia-smi").chmod(0o755)

    found = run_launcher(made.resource_dir, tmp_path / "c.json", {"PATH": str(with_smi)})
    assert found.returncode == 0, found.stderr
    missing = run_launcher(made.resource_dir, tmp_path / "c.json", {"PATH": str(no_smi)})
    has_device = Path("/dev/nvidia0").exists()
    assert (missing.returncode == 0) == has_device
    assert ("cuda variant needs an NVIDIA GPU" in missing.stderr) == (not has_device)


def test_launcher_reports_a_missing_interpreter_and_a_half_installed_env(
    env: Path, tmp_path: Path
) -> None:
    made = install_kernel(env)
    (env / INCOMPLETE_NAME).write_text("update in progress\n")
    half = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert half.returncode == 1 and "is half installed" in half.stderr
    (env / INCOMPLETE_NAME).unlink()

    (env / "bin" / "python").rename(env / "bin" / "python.moved")
    gone = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert gone.returncode == 1 and gone.stdout == ""
    assert f"interpreter {env / 'bin' / 'python'} is missing or cannot run here" in gone.stderr


# --- kernels for a shared environment root (`envship env create`) ------------------------


@dataclass
class Shared:
    root: Path
    store: Store
    first: LockFile  # alpha 1.0, beta 1.0 and a kernel
    second: LockFile  # alpha 1.0, beta 1.1 and the same kernel


def make_shared(work: Path, kernel: list[Path]) -> Shared:
    """Two locks for one environment root; ``kernel`` are the wheels that start it."""
    dist = work / "dist"
    alpha = build_wheel(dist, "alpha", "1.0", requires=["beta>=1.0"])
    beta10, beta11 = build_wheel(dist, "beta", "1.0"), build_wheel(dist, "beta", "1.1")
    targets = [target(glibc=GLIBC)]
    first = write_lock(work / "first.toml", [alpha, beta10, *kernel], targets=targets)
    second = write_lock(work / "second.toml", [alpha, beta11, *kernel], targets=targets)
    store = stocked_store(work / "store", [alpha, beta10, beta11, *kernel])
    return Shared(work / "envs", store, first, second)


@pytest.fixture
def shared(tmp_path: Path) -> Shared:
    return make_shared(tmp_path / "work", [stand_in(tmp_path / "dist")])


def age(path: Path, days: float) -> float:
    stamp = time.time() - days * 24 * 3600
    os.utime(path, (stamp, stamp))
    return stamp


def test_a_kernel_on_current_runs_the_version_current_names_at_each_start(
    shared: Shared, tmp_path: Path
) -> None:
    s = shared
    with pytest.raises(KernelError, match="there is no environment") as err:
        install_kernel(s.root / "ds" / "current")
    assert err.value.hint == (
        f"`envship env create ds --root {s.root} --lock LOCK`, "
        f"then `envship kernel install {s.root / 'ds' / 'current'}` "
        "(LOCK: the lock it is made from)"
    )
    one = create_env(s.first, s.store, s.root, name="ds")
    # As if `one` were built for another interpreter (the audit's lock with a 3.11 and
    # a 3.12 target): a kernel registered now records facts that stop being true.
    edit_marker(one.path, python=OTHER_PY)
    made = install_kernel(s.root / "ds" / "current")
    assert made.follows and made.env == s.root / "ds" / "current" and made.name == "ds"
    assert kernel_json(made.resource_dir)["metadata"]["envship"]["target"]["python"] == OTHER_PY

    two = create_env(s.second, s.store, s.root, name="ds")  # current moves to a fitting one
    age(two.path / USED_NAME, 30)
    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert_ran(json.loads(proc.stdout), two.path)

    stamp = age(two.path / USED_NAME, 30)
    check = subprocess.run(
        [*kernel_json(made.resource_dir)["argv"][:3], "--envship-check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and check.stdout.strip().endswith(str(two.path))
    assert (two.path / USED_NAME).stat().st_mtime == stamp  # asking is not using

    # Back to `one` (as `env create` with the first lock does, without repairing it):
    # refused by what `one` is, with the command that makes a version.
    point_current(s.root / "ds", one.key)
    refused = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert refused.returncode == 1 and refused.stdout == ""
    first, *rest = refused.stderr.splitlines()
    assert first.startswith(f"envship: kernel 'ds' cannot start: the environment {one.path} ")
    assert f"  - Python {OTHER_PY} needed, the interpreter is {PY}" in rest
    marker = json.loads((one.path / MARKER_NAME).read_text())
    assert rest[-1] == (
        f"envship: make a version for this machine: envship env create ds --root {s.root} "
        f"--lock {s.first.path} --target {HOST} --python {marker['python']['base']} "
        f"--store {marker['store']}"
    )
    assert "envship install" not in refused.stderr

    # A kernel pinned to one version also needs registering again on `current`.
    pinned = install_kernel(one.path, name="pinned")
    assert not pinned.follows
    last = run_launcher(pinned.resource_dir, tmp_path / "c.json").stderr.splitlines()[-1]
    assert last.endswith(f", then envship kernel install {s.root / 'ds' / 'current'}")


def test_a_kernel_start_makes_a_missing_use_stamp_writable_by_every_user(
    shared: Shared, tmp_path: Path
) -> None:
    """As env create makes it: another user's kernel start must be able to refresh it."""
    s = shared
    made_env = create_env(s.first, s.store, s.root, name="ds")
    made = install_kernel(s.root / "ds" / "current")
    (made_env.path / USED_NAME).unlink()
    old = os.umask(0o022)
    try:
        proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    assert (made_env.path / USED_NAME).stat().st_mode & 0o777 == 0o666


@pytest.mark.parametrize("stamp", ["there", "missing"])
def test_a_read_only_root_still_starts_the_kernel(
    shared: Shared, tmp_path: Path, stamp: str
) -> None:
    """The use cannot be recorded (the stamp can be neither touched nor made): the kernel
    starts all the same, and the server log says gc may not see this use."""
    s = shared
    made_env = create_env(s.first, s.store, s.root, name="ds")
    made = install_kernel(s.root / "ds" / "current")
    used = made_env.path / USED_NAME
    if stamp == "there":
        before = age(used, 30)
    else:
        used.unlink()
    argv = [
        a.replace("{connection_file}", str(tmp_path / "c.json"))
        for a in kernel_json(made.resource_dir)["argv"]
    ]
    # A read-only bind mount of the root in a private mount namespace: a real EROFS.
    mount_ro = f'mount --bind -o ro "{s.root}" "{s.root}" && exec "$@"'
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount_ro, "sh", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prefix"] == str(made_env.path)
    assert f"envship: this use of {made_env.path} was not recorded for env gc" in proc.stderr
    if stamp == "there":
        assert used.stat().st_mtime == before
    else:
        assert not used.exists()


def assert_ran(seen: dict[str, str], version: Path) -> None:
    """The launcher ran ``version``'s own interpreter by its own path, never a path via
    ``current`` (so sys.prefix is the immutable version), and stamped the start as a use."""
    assert seen["executable"] == str(version / "bin" / "python")
    assert seen["prefix"] == seen["virtual_env"] == str(version)
    assert seen["path0"] == str(version / "bin")
    assert time.time() - (version / USED_NAME).stat().st_mtime < 3600


def link_chain(shape: str, root: Path, elsewhere: Path) -> Path:
    """A path to register that reaches ``root/ds/current`` through ``shape``'s links."""
    current = root / "ds" / "current"
    elsewhere.mkdir(exist_ok=True)
    if shape == "current":
        return current
    if shape == "absolute link to current":  # the audit's `ln -sfn ROOT/ds/current /tmp/myds`
        (elsewhere / "myds").symlink_to(current)
        return elsewhere / "myds"
    if shape == "relative link to an absolute link to current":
        (elsewhere / "first").symlink_to(current)
        (elsewhere / "myds").symlink_to("first")
        return elsewhere / "myds"
    # current itself, reached through a link to the folder holding it
    (elsewhere / "envdir").symlink_to(os.path.relpath(root / "ds", elsewhere))
    return elsewhere / "envdir" / "current"


CHAINS = [
    "current",
    "absolute link to current",
    "relative link to an absolute link to current",
    "current through a linked folder",
]


@pytest.mark.parametrize("shape", CHAINS)
def test_a_kernel_on_links_to_current_runs_the_version_current_names_then(
    shared: Shared, tmp_path: Path, shape: str
) -> None:
    s = shared
    create_env(s.first, s.store, s.root, name="ds")
    made = install_kernel(link_chain(shape, s.root, tmp_path / "elsewhere"), name="ds")
    assert made.follows or shape == "current through a linked folder"

    two = create_env(s.second, s.store, s.root, name="ds")  # current moves
    age(two.path / USED_NAME, 30)
    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert_ran(json.loads(proc.stdout), two.path)  # every link level resolved

    check = subprocess.run(
        [*kernel_json(made.resource_dir)["argv"][:3], "--envship-check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and check.stdout.strip().endswith(str(two.path))

    # Refused by what the version named now is; no registering again is needed.
    edit_marker(two.path, python=OTHER_PY)
    refused = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert refused.returncode == 1
    assert f"cannot start: the environment {two.path} " in refused.stderr
    marker = json.loads((two.path / MARKER_NAME).read_text())
    assert refused.stderr.splitlines()[-1].endswith(
        f"--lock {s.second.path} --target {HOST} --python {marker['python']['base']} "
        f"--store {marker['store']}"
    )


GONE_LINK = "envship: the environment {env} is a link to {gone}, which is gone."


@pytest.mark.parametrize(
    ("shape", "first_line"),
    [
        ("current", GONE_LINK),
        ("absolute link to current", GONE_LINK),
        ("relative link to an absolute link to current", GONE_LINK),
        ("pinned", "envship: the environment {gone} is gone."),
    ],
)
def test_a_kernel_whose_version_was_removed_says_so_and_how_to_make_it_again(
    shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str, first_line: str
) -> None:
    s = shared
    one = create_env(s.first, s.store, s.root, name="ds")
    env = one.path if shape == "pinned" else link_chain(shape, s.root, tmp_path / "elsewhere")
    made = install_kernel(env, name="ds")
    shutil.rmtree(one.path)  # what `envship env gc` does to a version no one used lately

    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 1 and proc.stdout == ""
    first, last = proc.stderr.splitlines()
    assert first == first_line.format(env=env, gone=one.path)
    assert last.startswith("envship: make ")
    # The lock kernel.json recorded, since the version that knew it is gone.
    assert last.endswith(f": envship env create ds --root {s.root} --lock {s.first.path}")

    monkeypatch.setenv("ENVSHIP_STORE", str(s.store.root))
    assert main(shlex.split(last.rsplit(": ", 1)[1])[1:]) == 0  # as it says
    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prefix"] == str(one.path)  # the same lock, the same version


def test_a_private_venv_in_a_folder_named_versions_gets_no_stamp(tmp_path: Path) -> None:
    env = make_env(tmp_path / "versions", name="mine")  # tmp_path has no .locks folder
    made = install_kernel(env)
    assert run_launcher(made.resource_dir, tmp_path / "c.json").returncode == 0
    assert not (env / USED_FILE).exists()
    edit_marker(env, python=OTHER_PY)
    refused = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert refused.stderr.splitlines()[-1].startswith("envship: make it again on this machine: ")
    assert f"envship install {env}" in refused.stderr and "env create" not in refused.stderr


# --- a real kernel (ipykernel and its dependencies from PyPI, installed offline) -----------


@pytest.fixture(scope="session")
def ipykernel_wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """ipykernel's wheels for this interpreter, downloaded once from PyPI.

    pip runs isolated, with no PIP_* variables and no config file, so this machine's
    extra local package sources play no part.
    """
    out = tmp_path_factory.mktemp("ipykernel-wheels")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    clean["PIP_CONFIG_FILE"] = os.devnull
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--isolated", "--disable-pip-version-check"),
            *("--only-binary", ":all:", "--dest", str(out), "ipykernel"),
        ],
        check=True,
        env=clean,
        capture_output=True,
    )
    wheels = sorted(out.glob("*.whl"))
    assert any(w.name.startswith("ipykernel-") for w in wheels)
    return wheels


@pytest.fixture
def kernel_env(tmp_path: Path, ipykernel_wheels: list[Path]) -> Path:
    return make_env(tmp_path / "work", name="real", extra=ipykernel_wheels)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[KernelManager]]:
    managers: list[KernelManager] = []
    yield managers
    for km in managers:
        if km.has_kernel:
            km.shutdown_kernel(now=True)


@pytest.mark.pypi
def test_a_real_kernel_runs_code_from_the_environment(
    kernel_env: Path, started: list[KernelManager]
) -> None:
    made = install_kernel(kernel_env, display_name="Real")
    km = KernelManager(kernel_name=made.name)
    started.append(km)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        out: list[str] = []

        def collect(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        code = (
            "import alpha, os, sys; print(alpha.__version__, sys.prefix, os.environ['VIRTUAL_ENV'])"
        )
        reply = kc.execute_interactive(code, output_hook=collect, timeout=120)
    finally:
        kc.stop_channels()
    assert reply["content"]["status"] == "ok"
    assert "".join(out).split() == ["1.0", str(kernel_env), str(kernel_env)]
    km.shutdown_kernel()
    assert not km.is_alive()


@pytest.mark.pypi
def start_dies(kernel_name: str, tmp_path: Path) -> str:
    """Start the kernel through jupyter_client as a notebook server would; it must die
    before it is ready. What it printed on stderr (the server log)."""
    km = KernelManager(kernel_name=kernel_name)
    err_path = tmp_path / f"{kernel_name}-stderr.txt"
    try:
        with err_path.open("w") as err:
            km.start_kernel(stderr=err)
            kc = km.client()
            kc.start_channels()
            try:
                with pytest.raises(RuntimeError, match="died"):
                    kc.wait_for_ready(timeout=120)
            finally:
                kc.stop_channels()
        assert not km.is_alive()
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    return err_path.read_text()


def test_a_kernel_for_another_machine_dies_with_the_reason(
    kernel_env: Path, tmp_path: Path
) -> None:
    made = install_kernel(kernel_env)
    edit_marker(kernel_env, platform=f"linux-{OTHER_MACHINE}")
    text = start_dies(made.name, tmp_path)
    assert f"was built for linux-{OTHER_MACHINE}" in text
    assert f"  - {OTHER_MACHINE} needed, this machine is {MACHINE}" in text


def execute(km: KernelManager, code: str) -> str:
    """Run ``code`` in the kernel; what it printed."""
    kc = km.client()
    kc.start_channels()
    out: list[str] = []
    try:
        kc.wait_for_ready(timeout=120)

        def collect(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = kc.execute_interactive(code, output_hook=collect, timeout=120)
    finally:
        kc.stop_channels()
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out)


@pytest.mark.pypi
@pytest.mark.parametrize("shape", ["current", "relative link to an absolute link to current"])
def test_a_real_kernel_on_current_never_mixes_two_versions(
    tmp_path: Path, ipykernel_wheels: list[Path], started: list[KernelManager], shape: str
) -> None:
    s = make_shared(tmp_path / "work", ipykernel_wheels)
    one = create_env(s.first, s.store, s.root, name="ds")
    made = install_kernel(link_chain(shape, s.root, tmp_path / "elsewhere"), name="ds")
    age(one.path / USED_NAME, 30)
    running = KernelManager(kernel_name=made.name)
    started.append(running)
    running.start_kernel()
    code = "import beta, os, sys; print(beta.__version__, sys.prefix, os.environ['VIRTUAL_ENV'])"
    assert execute(running, "import alpha; print(alpha.__version__)").split() == ["1.0"]
    assert time.time() - (one.path / USED_NAME).stat().st_mtime < 3600  # the start stamped it

    two = create_env(s.second, s.store, s.root, name="ds")  # current moves while it runs
    age(two.path / USED_NAME, 30)
    # The running kernel imports beta for the first time now: from its own version.
    assert execute(running, code).split() == ["1.0", str(one.path), str(one.path)]

    fresh = KernelManager(kernel_name=made.name)
    started.append(fresh)
    fresh.start_kernel()
    assert execute(fresh, code).split() == ["1.1", str(two.path), str(two.path)]
    assert time.time() - (two.path / USED_NAME).stat().st_mtime < 3600  # the start stamped it
    assert execute(running, code).split() == ["1.0", str(one.path), str(one.path)]


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/efs/envs/ds/current", "ds"),
        ("/efs/envs/ds/versions/1f96d18e6611b4aa9adb", "ds"),
        ("/home/me/.venv-ml", ".venv-ml"),
    ],
)
def test_env_label_follows_envship_env_layout(path: str, label: str) -> None:
    from envship._kernelenv import env_label

    assert env_label(Path(path)) == label


# --- every remedy the launcher prints is a command that works: each one is run -----------


def copied_python(folder: Path) -> str:
    """A copy of this interpreter to build an environment on, deleted later to stand for
    the base image it came from (it finds its standard library by its build prefix)."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / f"python{PY}"
    shutil.copy2(os.path.realpath(sys.executable), copy)
    return str(copy)


def remedy_of(resource_dir: Path, tmp_path: Path) -> list[str]:
    """The launcher's refusal, and the command its last line prints, split into argv."""
    proc = run_launcher(resource_dir, tmp_path / "c.json")
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    last = proc.stderr.splitlines()[-1]
    # The command that makes the environment (after `envship lock` when the lock has to
    # be made again first).
    start = max(last.rfind("envship install "), last.rfind("envship env create "))
    command = last[start:]
    assert command.split()[0] == "envship" and "LOCK" not in command.split()
    return shlex.split(command)[1:]


REMEDIES = ["interpreter gone", "lock has a target that fits", "lock has none that fits"]


@pytest.mark.parametrize("case", REMEDIES)
def test_a_private_envs_remedy_works_when_run_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    work = tmp_path / "work"
    wheels = [
        build_wheel(work / "dist", "beta", "1.0"),
        stand_in(work / "dist"),
    ]
    lock = write_lock(work / "pylock.toml", wheels, targets=[target(glibc=GLIBC)])
    store = stocked_store(work / "store", wheels)
    python = copied_python(tmp_path / "image") if case == "interpreter gone" else None
    env = work / "ds-env"
    install(lock, store, env, python=python)
    made = install_kernel(env)
    if case == "interpreter gone":  # the image it was made in is not this one
        shutil.rmtree(tmp_path / "image")
    else:  # made on a newer machine, for a target needing glibc 2.99
        edit_marker(env, name="future", glibc="2.99")
    if case == "lock has none that fits":
        write_lock(lock.path, wheels, targets=[target("future", glibc="2.99")])

    monkeypatch.setenv("ENVSHIP_STORE", str(store.root))
    monkeypatch.chdir(tmp_path)  # not where the lock is
    args = remedy_of(made.resource_dir, tmp_path)
    if case == "lock has none that fits":
        said = run_launcher(made.resource_dir, tmp_path / "c.json").stderr.splitlines()[-1]
        assert f"its lock {lock.path} has no target this machine can run (it has: future)" in said
        assert "set glibc = " in said and "target that future comes from" in said
        assert "run `envship lock` and `envship fetch`" in said
        # Following it: the lock made again with a target for this machine (what
        # `envship lock` writes for the spec with that target added), then the command.
        write_lock(lock.path, wheels, targets=[target("future", glibc=GLIBC)])
    assert args[:4] == ["install", str(env), "--lock", str(lock.path)]
    assert main(args) == 0
    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prefix"] == str(env)


@pytest.mark.parametrize("case", ["interpreter gone", "lock has a target that fits"])
def test_a_shared_versions_remedy_works_when_run_from_elsewhere(
    shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    s = shared
    python = copied_python(tmp_path / "image") if case == "interpreter gone" else None
    one = create_env(s.first, s.store, s.root, name="ds", python=python)
    made = install_kernel(s.root / "ds" / "current")
    if case == "interpreter gone":
        shutil.rmtree(tmp_path / "image")
    else:
        edit_marker(one.path, name="future", glibc="2.99")

    monkeypatch.setenv("ENVSHIP_STORE", str(s.store.root))
    monkeypatch.chdir(tmp_path)
    args = remedy_of(made.resource_dir, tmp_path)
    assert args[:6] == ["env", "create", "ds", "--root", str(s.root), "--lock"]
    assert args[6] == str(s.first.path)
    assert main(args) == 0
    proc = run_launcher(made.resource_dir, tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prefix"] != str(one.path) or case != "interpreter gone"


EXAMPLE_LOCK = Path(__file__).parents[1] / "examples" / "quickstart" / "pylock.toml"


@pytest.mark.parametrize("lock_file", [EXAMPLE_LOCK, None], ids=["example", "written"])
def test_the_launchers_line_reader_reads_targets_as_tomllib_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lock_file: Path | None
) -> None:
    """Before 3.11 there is no tomllib: the launcher reads envship's own target tables
    line by line. Both readers must agree on the locks envship writes."""
    if lock_file is None:
        lock_file = write_lock(tmp_path / "pylock.toml", [], targets=[target(), target("b")]).path
    with_tomllib = lock_targets(str(lock_file))
    assert with_tomllib  # the example lock declares targets
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails
    assert lock_targets(str(lock_file)) == with_tomllib

"""``envship.host``: probing interpreters and choosing the lock target a host can run."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from envship.errors import TargetError
from envship.host import HostInfo, has_gpu, match_target, probe
from envship.lockfile import LockFile
from envship.targets import Target, host_platform

HOST = HostInfo(
    executable="/usr/bin/python3",
    python="3.11",
    python_full="3.11.7",
    implementation="cpython",
    sys_platform="linux",
    machine="x86_64",
    glibc="2.31",
    prefix="/usr",
    base_prefix="/usr",
    purelib="/usr/lib/python3/dist-packages",
    gpu=False,
)


def t(
    name: str,
    plat: str = "linux-x86_64",
    py: str = "3.11",
    glibc: str = "2.28",
    variant: str = "cpu",
) -> Target:
    return Target.create(name, platform_id=plat, python=py, glibc=glibc, variant=variant)


def host(**changes: object) -> HostInfo:
    return dataclasses.replace(HOST, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("facts", "targets", "chosen"),
    [
        pytest.param({}, [t("a")], "a", id="exact"),
        pytest.param({}, [t("arm", "linux-aarch64"), t("x86")], "x86", id="machine"),
        pytest.param({}, [t("old", glibc="2.17"), t("new", glibc="2.28")], "new", id="best-glibc"),
        pytest.param({}, [t("eq", glibc="2.31")], "eq", id="glibc-equal"),
        pytest.param(
            {"gpu": True}, [t("cpu"), t("gpu", variant="cuda")], "gpu", id="gpu-prefers-cuda"
        ),
        pytest.param({}, [t("cpu"), t("gpu", variant="cuda")], "cpu", id="no-gpu-cpu"),
        pytest.param({"gpu": True}, [t("cpu")], "cpu", id="gpu-runs-cpu"),
        pytest.param({"glibc": "2.9"}, [t("a", glibc="2.5")], "a", id="glibc-numeric-not-text"),
        pytest.param({"python": "3.12"}, [t("a"), t("b", py="3.12")], "b", id="python"),
        pytest.param({}, [t("first"), t("second")], "first", id="tie-declaration-order"),
        pytest.param(
            {"machine": "aarch64"}, [t("x86"), t("arm", "linux-aarch64")], "arm", id="aarch64"
        ),
    ],
)
def test_match_target_chooses(facts: dict[str, object], targets: list[Target], chosen: str) -> None:
    assert match_target(targets, host(**facts)).name == chosen


@pytest.mark.parametrize(
    ("facts", "targets", "reasons"),
    [
        pytest.param(
            {},
            [t("linux-aarch64", "linux-aarch64")],
            [("linux-aarch64", "aarch64 needed, machine is x86_64")],
            id="machine",
        ),
        pytest.param(
            {},
            [t("py3.12", py="3.12")],
            [("py3.12", "Python 3.12 needed, interpreter is 3.11")],
            id="python",
        ),
        pytest.param(
            {},
            [t("new", glibc="2.34")],
            [("new", "glibc 2.34 needed, host has 2.31")],
            id="glibc",
        ),
        pytest.param(
            {},
            [t("gpu", variant="cuda")],
            [("gpu", "cuda variant but no GPU found")],
            id="cuda",
        ),
        pytest.param(
            {"glibc": None},
            [t("a")],
            [("a", "glibc 2.28 needed, host has no glibc (musl or unknown)")],
            id="musl",
        ),
        pytest.param(
            {"implementation": "pypy"},
            [t("a")],
            [("a", "CPython needed, interpreter is pypy")],
            id="pypy",
        ),
        pytest.param(
            {"sys_platform": "darwin", "machine": "arm64"},
            [t("a")],
            [("a", "linux needed, host is darwin")],
            id="os",
        ),
        pytest.param(
            {"python": "3.10"},
            [t("arm", "linux-aarch64", glibc="2.34", variant="cuda"), t("x86")],
            [
                ("arm", "aarch64 needed, machine is x86_64"),
                ("arm", "Python 3.11 needed, interpreter is 3.10"),
                ("arm", "glibc 2.34 needed, host has 2.31"),
                ("arm", "cuda variant but no GPU found"),
                ("x86", "Python 3.11 needed, interpreter is 3.10"),
            ],
            id="every-reason-of-every-target",
        ),
    ],
)
def test_match_target_explains_every_misfit(
    facts: dict[str, object], targets: list[Target], reasons: list[tuple[str, str]]
) -> None:
    with pytest.raises(TargetError) as err:
        match_target(targets, host(**facts))
    assert [(p.where, p.message) for p in err.value.problems] == reasons
    assert "none of the lock's targets" in err.value.message


@pytest.mark.parametrize(
    ("facts", "targets", "reasons"),
    [
        pytest.param(
            {"python": "3.10", "implementation": "pypy"},
            [t("arm", "linux-aarch64", glibc="2.34", variant="cuda")],
            [
                ("arm", "aarch64 needed, the base image is x86_64"),
                ("arm", "CPython needed, the base image has pypy"),
                ("arm", "Python 3.11 needed, the base image has 3.10"),
                ("arm", "glibc 2.34 needed, the base image has 2.31"),
                ("arm", "cuda variant but the base image has no CUDA"),
            ],
            id="every-reason",
        ),
        pytest.param(
            {"glibc": None, "sys_platform": "darwin"},
            [t("a")],
            [
                ("a", "linux needed, the base image is darwin"),
                ("a", "glibc 2.28 needed, the base image has no glibc (musl or unknown)"),
            ],
            id="os-and-musl",
        ),
    ],
)
def test_reasons_name_the_subject_they_are_about(
    facts: dict[str, object], targets: list[Target], reasons: list[tuple[str, str]]
) -> None:
    """Facts read from a base image are worded as the image's, not this machine's."""
    with pytest.raises(TargetError) as err:
        match_target(targets, host(**facts), subject="the base image")
    assert [(p.where, p.message) for p in err.value.problems] == reasons


def test_match_target_reads_a_lock(tmp_path: Path) -> None:
    lock = tmp_path / "pylock.toml"
    lock.write_text(
        'lock-version = "1.0"\ncreated-by = "test"\npackages = []\n'
        "[tool.envship]\ntargets = [\n"
        '  {name = "arm", platform = "linux-aarch64", python = "3.11", glibc = "2.28"},\n'
        '  {name = "x86", platform = "linux-x86_64", python = "3.11", glibc = "2.28"},\n]\n'
    )
    assert match_target(LockFile.load(lock), HOST).name == "x86"


def test_no_targets_is_an_error() -> None:
    with pytest.raises(TargetError, match="records no targets"):
        match_target([], HOST)


def test_probe_describes_this_interpreter() -> None:
    info = probe(gpu=lambda: True)
    assert info.python == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert info.python_full == ".".join(map(str, sys.version_info[:3]))
    assert info.implementation == sys.implementation.name
    assert info.sys_platform == sys.platform
    assert info.prefix == sys.prefix and info.base_prefix == sys.base_prefix
    assert info.purelib == sysconfig.get_paths()["purelib"]
    assert info.gpu is True  # the injected detector, not the machine
    if host_platform() is not None:
        assert info.platform_id == host_platform()
    libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    if libc and libc.startswith("glibc "):
        assert info.glibc == libc.split(" ", 1)[1]
    assert info.to_json()["platform"] == info.platform_id


def test_probe_of_a_venv_reports_its_prefix(tmp_path: Path) -> None:
    import venv

    venv.create(tmp_path / "v", with_pip=False)
    info = probe(tmp_path / "v" / "bin" / "python", gpu=lambda: False)
    assert Path(info.prefix) == tmp_path / "v"
    assert Path(info.purelib).is_relative_to(tmp_path / "v")
    assert info.machine == {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine()
    )


def test_probing_an_environment_runs_none_of_its_pth_files(tmp_path: Path) -> None:
    import venv

    venv.create(tmp_path / "v", with_pip=False)
    site = next((tmp_path / "v" / "lib").glob("python*/site-packages"))
    ran = tmp_path / "pth-ran"
    # site.addpackage executes a .pth line that starts with "import".
    (site / "evil.pth").write_text(f"import pathlib; pathlib.Path({str(ran)!r}).touch()\n")
    subprocess.run([str(tmp_path / "v" / "bin" / "python"), "-c", "pass"], check=True)
    assert ran.exists()  # the line does run when site is imported
    ran.unlink()

    info = probe(tmp_path / "v" / "bin" / "python", gpu=lambda: False)
    assert not ran.exists()
    assert Path(info.prefix) == tmp_path / "v" and Path(info.purelib) == site


# Run inside the venv under test: probe a path from there and say whether the probe was
# answered in-process (the path is the running interpreter) or by running the path.
_PROBE_FROM_INSIDE = """
import json, sys
from envship import host
path = sys.argv[1]
info = host.probe(path, gpu=lambda: False)
print(json.dumps({"in_process": host._is_running(path), "info": info.to_json()}))
"""


@pytest.fixture(scope="module")
def probe_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import venv

    root = tmp_path_factory.mktemp("probe") / "v"
    venv.create(root, with_pip=False, symlinks=True)
    return root


@pytest.mark.parametrize(
    ("probed", "env", "in_process", "prefix"),
    [
        pytest.param("bin/python", {}, True, "venv", id="itself"),
        pytest.param("bin/python3", {}, True, "venv", id="alias-in-the-same-folder"),
        # The same binary by its real path is the base interpreter, not the venv: the
        # pyvenv.cfg beside bin/python is what makes it the venv.
        pytest.param("base", {}, False, "base", id="its-base-binary"),
        # PYTHONHOME moves our prefix but not the probe's (it runs with -I).
        pytest.param("bin/python", {"PYTHONHOME": "base"}, False, "venv", id="pythonhome"),
    ],
)
def test_probe_in_process_equals_probe_by_running(
    probe_venv: Path, probed: str, env: dict[str, str], in_process: bool, prefix: str
) -> None:
    runner = probe_venv / "bin" / "python"
    base = Path(os.path.realpath(runner))
    base_prefix = sys.base_prefix
    path = str(base) if probed == "base" else str(probe_venv / probed)
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONHOME"}
    # envship and its dependencies come from this test run's path, not the bare venv.
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    child_env.update({k: base_prefix if v == "base" else v for k, v in env.items()})
    proc = subprocess.run(
        [str(runner), "-c", _PROBE_FROM_INSIDE, path],
        env=child_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["in_process"] is in_process
    # This test's interpreter is another one, so here the probe runs the path.
    assert seen["info"] == probe(path, gpu=lambda: False).to_json()
    assert seen["info"]["prefix"] == (str(probe_venv) if prefix == "venv" else base_prefix)
    assert seen["info"]["executable"] == path


def test_probe_refuses_what_is_not_a_python(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="no Python interpreter"):
        probe(tmp_path / "missing-python")
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho not json\n")
    fake.chmod(0o755)
    with pytest.raises(TargetError, match="is not a Python interpreter") as err:
        probe(fake)
    assert err.value.problems[0].message == "printed no facts: not json"


def test_has_gpu_follows_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/dev/nvidia0").exists():
        # A machine with a GPU answers yes whatever PATH holds.
        monkeypatch.setenv("PATH", str(tmp_path))
        assert has_gpu() is True
        return
    monkeypatch.setenv("PATH", str(tmp_path))
    assert has_gpu() is False
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n")
    smi.chmod(0o755)
    assert has_gpu() is True

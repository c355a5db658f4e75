"""``envship.verify`` against real uv-created environments built from real wheels.

Every test builds a venv with ``uv venv`` and installs wheels from tests/indexlib.py
with ``uv pip install --offline``, then damages it in one way and checks that exactly
that damage is reported, with its path.
"""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uv import find_uv_bin

from envship.errors import InvalidLockError, LockError, SpecError, TargetError
from envship.lockfile import LockFile
from envship.targets import host_platform
from envship.verify import (
    Difference,
    choose_target,
    decode_record_hash,
    encode_record_hash,
    find_environment,
    hash_file,
    verify,
)
from indexlib import _record_hash, build_wheel

PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
PLATFORM = host_platform()
BIG = 3 * (1 << 20) + 12345  # spans several 1 MiB read chunks

# envship's targets are Linux x86_64 and aarch64; on anything else these tests must fail
# loudly rather than quietly skip.
assert PLATFORM is not None, "the verify tests need a Linux x86_64 or aarch64 machine"


@dataclass(frozen=True)
class Wheels:
    dir: Path
    alpha: Path
    beta: Path
    beta_11: Path
    tool: Path
    omega: Path  # installed by nobody's lock: the "extra" one
    lock: Path  # alpha, beta 1.0, tool; omega only in the "dev" dependency group
    lock_no_omega: Path  # alpha, beta 1.0, tool


def target_table(name: str = "linux-x86_64", glibc: str = "2.28", variant: str = "cpu") -> str:
    return (
        f'{{name = "{name}", platform = "{PLATFORM}", python = "{PYTHON}", '
        f'glibc = "{glibc}", variant = "{variant}"}}'
    )


def write_lock(
    path: Path,
    wheels: Iterable[Path],
    *,
    targets: Sequence[str] = (),
    dev: Sequence[Path] = (),
) -> Path:
    """A hand-written PEP 751 lock; ``dev`` wheels are only in the "dev" group."""
    lines = ['lock-version = "1.0"', 'created-by = "test"']
    if dev:
        lines.append('dependency-groups = ["dev"]')
    lines.append("")
    for whl in [*wheels, *dev]:
        name, version = whl.name.split("-")[:2]
        sha = hashlib.sha256(whl.read_bytes()).hexdigest()
        lines += ["[[packages]]", f'name = "{name}"', f'version = "{version}"']
        if whl in dev:
            lines.append("marker = \"'dev' in dependency_groups\"")
        url = f"https://example.invalid/files/{whl.name}"
        lines += [f'wheels = [{{url = "{url}", hashes = {{sha256 = "{sha}"}}}}]', ""]
    tables = ", ".join(targets or [target_table()])
    lines += ["[tool.envship]", f"targets = [{tables}]"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    out = tmp_path_factory.mktemp("verify-wheels")
    data = {"alpha/data.bin": "".join(chr(48 + i % 64) for i in range(BIG))}
    alpha = build_wheel(out, "alpha", "1.0", requires=["beta>=1.0"], files=data)
    beta = build_wheel(out, "beta", "1.0")
    beta_11 = build_wheel(out / "v11", "beta", "1.1")
    tool = build_wheel(out, "tool", "1.0", scripts={"tool": "tool:main"})
    omega = build_wheel(out / "extra", "omega", "1.0")
    base = [alpha, beta, tool]
    return Wheels(
        out,
        alpha,
        beta,
        beta_11,
        tool,
        omega,
        lock=write_lock(out / "pylock.toml", base, dev=[omega]),
        lock_no_omega=write_lock(out / "pylock-base.toml", base),
    )


@dataclass(frozen=True)
class Venv:
    root: Path
    cache: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site(self) -> Path:
        return self.root / "lib" / f"python{PYTHON}" / "site-packages"

    def uv(self, *args: str | Path) -> None:
        env = {**os.environ, "UV_CACHE_DIR": str(self.cache)}
        for var in ("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "VIRTUAL_ENV"):
            env.pop(var, None)
        cmd = [find_uv_bin(), *map(str, args)]
        subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)

    def install(self, *wheels: Path) -> None:
        self.uv(
            "pip", "install", "--no-config", "--python", self.python,
            "--no-index", "--offline", *wheels,
        )  # fmt: skip


def make_venv(tmp_path: Path, wheels: Wheels) -> Venv:
    venv = Venv(tmp_path / "venv", tmp_path / "uv-cache")
    venv.uv("venv", "--no-config", "--python", sys.executable, venv.root)
    venv.install(wheels.alpha, wheels.beta, wheels.tool)
    return venv


@pytest.fixture
def venv(tmp_path: Path, wheels: Wheels) -> Venv:
    return make_venv(tmp_path, wheels)


def kinds(diffs: Iterable[Difference]) -> list[tuple[str, str, str]]:
    return [(d.kind, d.name, d.path) for d in diffs]


# -- corruptions: each returns the (kind, name, path)s the report must hold -------------

Expect = list[tuple[str, str, str]]


def _delete_dist_info(v: Venv, w: Wheels) -> Expect:
    shutil.rmtree(v.site / "beta-1.0.dist-info")
    # its package stays behind, importable, and no RECORD vouches for it any more
    return [("missing", "beta", str(v.site)), ("unowned", "beta", str(v.site / "beta"))]


def _append_to_file(v: Venv, w: Wheels) -> Expect:
    path = v.site / "alpha" / "__init__.py"
    path.write_text(path.read_text() + "import os\n")
    return [("changed", "alpha", str(path))]


def _same_size_edit(v: Venv, w: Wheels) -> Expect:
    path = v.site / "alpha" / "data.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 7] ^= 0x01  # one bit, in the middle of the third 1 MiB chunk
    path.write_bytes(bytes(data))
    return [("changed", "alpha", str(path))]


def _stray_module(v: Venv, w: Wheels) -> Expect:
    path = v.site / "alpha" / "sub" / "evil.py"
    path.parent.mkdir()
    path.write_text("print('hello')\n")
    return [("added", "alpha", str(path))]


def _metadata_file(v: Venv, w: Wheels) -> Expect:
    path = v.site / "beta-1.0.dist-info" / "entry_points.txt"
    path.write_text("[console_scripts]\nbeta = os:system\n")
    return [("added", "beta", str(path))]


def _delete_file(v: Venv, w: Wheels) -> Expect:
    (v.site / "beta" / "__init__.py").unlink()
    return [("removed", "beta", str(v.site / "beta" / "__init__.py"))]


def _delete_script(v: Venv, w: Wheels) -> Expect:
    (v.root / "bin" / "tool").unlink()
    return [("removed", "tool", str(v.root / "bin" / "tool"))]


def _delete_record(v: Venv, w: Wheels) -> Expect:
    record = v.site / "tool-1.0.dist-info" / "RECORD"
    record.unlink()
    # without its RECORD nothing vouches for the distribution's package either
    return [
        ("removed", "tool", str(record)),
        ("unowned", "bin/tool", str(v.root / "bin" / "tool")),  # its script, now nobody's
        ("unowned", "tool", str(v.site / "tool")),
    ]


def _script_not_executable(v: Venv, w: Wheels) -> Expect:
    (v.root / "bin" / "tool").chmod(0o644)  # what a RECORD put in bin/ must run
    return [("changed", "tool", str(v.root / "bin" / "tool"))]


def _world_writable_module(v: Venv, w: Wheels) -> Expect:
    path = v.site / "beta" / "__init__.py"
    path.chmod(0o666)  # anyone on the machine could change the code
    return [("changed", "beta", str(path))]


def _file_replaced_by_a_link(v: Venv, w: Wheels) -> Expect:
    path = v.site / "beta" / "__init__.py"
    outside = v.root.parent / "elsewhere.py"
    outside.write_bytes(path.read_bytes())  # the same bytes, living outside the env
    path.unlink()
    path.symlink_to(outside)
    return [("changed", "beta", str(path))]


def _package_replaced_by_a_link(v: Venv, w: Wheels) -> Expect:
    folder = v.site / "beta"
    outside = v.root.parent / "elsewhere"
    shutil.copytree(folder, outside)
    shutil.rmtree(folder)
    folder.symlink_to(outside)
    return [("changed", "beta", str(folder))]


def _package_replaced_by_a_link_to_a_bigger_folder(v: Venv, w: Wheels) -> Expect:
    """What the link points at is not the environment's: its other files are not listed
    as added to it (an image's link may point at the host's /etc once unpacked)."""
    folder = v.site / "beta"
    outside = v.root.parent / "elsewhere"
    shutil.copytree(folder, outside)
    (outside / "passwd").write_text("not the environment's\n")
    shutil.rmtree(folder)
    folder.symlink_to(outside)
    return [("changed", "beta", str(folder))]


def _install_extra(v: Venv, w: Wheels) -> Expect:
    v.install(w.omega)
    return [("extra", "omega", str(v.site / "omega-1.0.dist-info"))]


def _install_other_version(v: Venv, w: Wheels) -> Expect:
    v.install(w.beta_11)
    return [("version", "beta", str(v.site / "beta-1.1.dist-info"))]


CORRUPTIONS: list[tuple[Callable[[Venv, Wheels], Expect], bool]] = [
    # (corruption, does the quick check see it?)
    (_delete_dist_info, True),
    (_append_to_file, True),  # size differs from RECORD: a stat sees it
    (_same_size_edit, False),  # same size: only --full's hash sees it (documented)
    (_stray_module, True),
    (_metadata_file, True),
    (_delete_file, True),
    (_delete_script, True),
    (_delete_record, True),
    (_install_extra, True),
    (_install_other_version, True),
    (_script_not_executable, True),  # modes and links: the same lstat, in both modes
    (_world_writable_module, True),
    (_file_replaced_by_a_link, True),
    (_package_replaced_by_a_link, True),
    (_package_replaced_by_a_link_to_a_bigger_folder, True),
]


@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_pristine_env_is_identical(venv: Venv, wheels: Wheels, full: bool) -> None:
    report = verify(LockFile.load(wheels.lock_no_omega), venv.root, full=full)
    assert report.identical, report.differences
    assert report.target.name == "linux-x86_64"
    assert report.environment.site_packages == (venv.site,)
    assert report.environment.python == PYTHON
    assert report.distributions == 3
    # every RECORD line (RECORD itself only stat-ed), the script in bin/ included
    records = [venv.site / f"{n}-1.0.dist-info" / "RECORD" for n in ("alpha", "beta", "tool")]
    assert report.checked_files == sum(len(r.read_text().splitlines()) for r in records)


@pytest.mark.parametrize(
    ("corrupt", "quick_sees"), CORRUPTIONS, ids=[c.__name__.strip("_") for c, _ in CORRUPTIONS]
)
@pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])
def test_each_corruption_is_reported_with_its_path(
    venv: Venv,
    wheels: Wheels,
    corrupt: Callable[[Venv, Wheels], Expect],
    quick_sees: bool,
    full: bool,
) -> None:
    expected = corrupt(venv, wheels)
    report = verify(LockFile.load(wheels.lock_no_omega), venv.root, full=full)
    if full or quick_sees:
        assert kinds(report.differences) == expected
        assert not report.identical
    else:
        assert report.identical, report.differences


def test_same_size_edit_names_both_hashes(venv: Venv, wheels: Wheels) -> None:
    path = venv.site / "alpha" / "data.bin"
    _same_size_edit(venv, wheels)
    (diff,) = verify(LockFile.load(wheels.lock_no_omega), venv.root, full=True).differences
    size, digest = hash_file(path)
    assert diff.actual == f"sha256={encode_record_hash(digest)}, size {size}"
    record = (venv.site / "alpha-1.0.dist-info" / "RECORD").read_text()
    line = next(ln for ln in record.splitlines() if ln.startswith("alpha/data.bin,"))
    _, recorded, recorded_size = line.split(",")
    assert diff.expected == f"{recorded}, size {recorded_size}"
    assert recorded != f"sha256={encode_record_hash(digest)}"


def test_wrong_version_is_not_also_missing(venv: Venv, wheels: Wheels) -> None:
    venv.install(wheels.beta_11)
    (diff,) = verify(LockFile.load(wheels.lock_no_omega), venv.root).differences
    assert (diff.kind, diff.expected, diff.actual) == ("version", "1.0", "1.1")


def test_bytecode_compiled_later_is_not_a_difference(venv: Venv, wheels: Wheels) -> None:
    subprocess.run([str(venv.python), "-m", "compileall", "-q", str(venv.site)], check=True)
    assert list((venv.site / "alpha" / "__pycache__").glob("*.pyc"))
    report = verify(LockFile.load(wheels.lock_no_omega), venv.root, full=True)
    assert report.identical, report.differences


def test_ignore_leaves_a_distribution_out(venv: Venv, wheels: Wheels) -> None:
    venv.install(wheels.omega)
    lock = LockFile.load(wheels.lock_no_omega)
    assert kinds(verify(lock, venv.root).differences)[0][:2] == ("extra", "omega")
    assert verify(lock, venv.root, ignore=["Omega"], full=True).identical


def test_dependency_groups_change_the_expected_set(venv: Venv, wheels: Wheels) -> None:
    lock = LockFile.load(wheels.lock)  # omega only in group "dev"
    assert [d.kind for d in verify(lock, venv.root).differences] == ["missing"]
    assert verify(lock, venv.root, groups=[]).identical
    venv.install(wheels.omega)
    assert verify(lock, venv.root, groups=["dev"], full=True).identical
    assert [d.kind for d in verify(lock, venv.root, groups=[]).differences] == ["extra"]


@pytest.mark.parametrize("how", ["venv", "interpreter", "site-packages"])
def test_every_way_of_naming_the_env_finds_the_same_site(
    venv: Venv, wheels: Wheels, how: str
) -> None:
    path = {"venv": venv.root, "interpreter": venv.python, "site-packages": venv.site}[how]
    env = find_environment(path)
    assert env.site_packages == (venv.site,)
    assert env.python == PYTHON
    assert (env.interpreter is not None) == (how == "interpreter")
    _stray_module(venv, wheels)
    report = verify(LockFile.load(wheels.lock_no_omega), path, full=True)
    assert [d.kind for d in report.differences] == ["added"]


def test_bytes_in_the_lock_file_of_a_uv_target_folder_are_a_change(
    tmp_path: Path, wheels: Wheels
) -> None:
    """``uv pip install --target DIR`` flocks ``DIR/.lock`` (empty, 0666: astral-sh/uv
    #11328), as it does at a venv's top: uv's bookkeeping, not an unowned file (see
    test_environment), but bytes in it are a change, as in a venv."""
    folder = tmp_path / "target"
    venv = Venv(tmp_path / "unused", tmp_path / "uv-cache")
    venv.uv(
        "pip", "install", "--no-config", "--python", sys.executable, "--target", folder,
        "--no-index", "--offline", wheels.alpha, wheels.beta, wheels.tool,
    )  # fmt: skip
    uv_lock = folder / ".lock"
    assert uv_lock.is_file() and uv_lock.stat().st_size == 0  # what uv leaves, today
    uv_lock.write_text("import os\n")
    report = verify(LockFile.load(wheels.lock_no_omega), folder, full=True)
    assert kinds(report.differences) == [("changed", "(venv creation)", str(uv_lock))]


def test_default_env_is_the_active_venv(venv: Venv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTUAL_ENV", str(venv.root))
    assert find_environment(None).site_packages == (venv.site,)
    monkeypatch.delenv("VIRTUAL_ENV")
    with pytest.raises(SpecError, match="no environment") as info:
        find_environment(None)
    assert info.value.hint is not None and "activate" in info.value.hint


def test_not_an_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(SpecError, match="is not a Python interpreter") as info:
        find_environment(fake)
    assert "broken" in str(info.value)
    with pytest.raises(SpecError, match="does not exist"):
        find_environment(tmp_path / "nope")


def test_target_choice_by_glibc(tmp_path: Path, wheels: Wheels) -> None:
    targets = [target_table(f"g{g}", glibc=f"2.{g}") for g in (17, 28, 34)]
    lock = LockFile.load(write_lock(tmp_path / "l.toml", [wheels.beta], targets=targets))
    assert choose_target(lock, PYTHON, glibc=(2, 36)).name == "g34"
    assert choose_target(lock, PYTHON, glibc=(2, 31)).name == "g28"
    assert choose_target(lock, PYTHON, glibc=(2, 17)).name == "g17"
    with pytest.raises(TargetError, match="no lock target fits"):
        choose_target(lock, PYTHON, glibc=(2, 12))
    with pytest.raises(TargetError, match="no lock target fits"):
        choose_target(lock, "2.7", glibc=(2, 36))
    with pytest.raises(TargetError, match="no lock target fits"):
        choose_target(lock, PYTHON, platform_id="linux-riscv64")


def test_target_choice_refuses_to_guess_between_variants(tmp_path: Path, wheels: Wheels) -> None:
    targets = [target_table("cpu"), target_table("gpu", variant="cuda")]
    lock = LockFile.load(write_lock(tmp_path / "l.toml", [wheels.beta], targets=targets))
    with pytest.raises(TargetError, match="several lock targets fit") as info:
        choose_target(lock, PYTHON, glibc=(2, 36))
    assert info.value.hint is not None and "--target" in info.value.hint
    empty = tmp_path / "site-packages"
    empty.mkdir()
    report = verify(lock, empty, target=lock.target("gpu"))
    assert kinds(report.differences) == [("missing", "beta", str(empty))]


# -- the RECORD hash format (PEP 376 / PEP 427) -----------------------------------------


@given(st.binary(max_size=4096))
def test_record_hash_round_trips_and_matches_wheel_builders(data: bytes) -> None:
    digest = hashlib.sha256(data).digest()
    encoded = encode_record_hash(digest)
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded
    assert decode_record_hash(encoded) == digest
    assert f"sha256={encoded}" == _record_hash(data)  # what tests/indexlib.py writes
    padded = base64.urlsafe_b64encode(digest).decode()  # some tools keep the padding
    assert decode_record_hash(padded) == digest


@given(st.binary(min_size=0, max_size=64))
def test_any_digest_length_round_trips(digest: bytes) -> None:
    assert decode_record_hash(encode_record_hash(digest)) == digest


@settings(max_examples=30)
@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=3))
def test_hash_file_agrees_with_hashlib(
    tmp_path_factory: pytest.TempPathFactory, head: bytes, chunks: int
) -> None:
    data = head + b"\xa5" * ((1 << 20) * chunks)  # up to three whole chunks and a tail
    path = tmp_path_factory.getbasetemp() / "hash-file-example"
    path.write_bytes(data)
    assert hash_file(path) == (len(data), hashlib.sha256(data).digest())
    assert hash_file(path, "sha512") == (len(data), hashlib.sha512(data).digest())


def test_pip_installed_env_with_bytecode_in_record(tmp_path: Path, wheels: Wheels) -> None:
    """pip compiles byte-code and lists it in RECORD without a hash: never a difference."""
    root = tmp_path / "pipenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "--python", str(root / "bin" / "python"),
         "install", "--quiet", "--no-index", "--no-deps",
         str(wheels.alpha), str(wheels.beta), str(wheels.tool)],
        check=True, env=env,
    )  # fmt: skip
    site = root / "lib" / f"python{PYTHON}" / "site-packages"
    record = (site / "beta-1.0.dist-info" / "RECORD").read_text()
    assert "beta/__pycache__/__init__.cpython-" in record  # pip listed the .pyc it wrote
    shutil.rmtree(site / "beta" / "__pycache__")  # Python re-creates it on next import
    lock = LockFile.load(wheels.lock_no_omega)
    assert verify(lock, root, full=True).identical
    (site / "beta" / "__init__.py").write_text("x = 1\n")
    assert kinds(verify(lock, root, full=True).differences) == [
        ("changed", "beta", str(site / "beta" / "__init__.py"))
    ]


def test_lock_without_targets_is_a_clear_error(tmp_path: Path, wheels: Wheels) -> None:
    text = write_lock(tmp_path / "l.toml", [wheels.beta]).read_text()
    (tmp_path / "l.toml").write_text(text.split("[tool.envship]")[0])
    (tmp_path / "site-packages").mkdir()
    with pytest.raises(LockError, match="records no targets"):
        verify(LockFile.load(tmp_path / "l.toml"), tmp_path / "site-packages")


@pytest.mark.parametrize(
    ("hashes", "problem"),
    [
        ('{sha256 = "zz"}', "sha256 'zz' is not 64 lowercase hex digits"),
        ('{sha512 = "00"}', "no sha256 hash; envship requires one for every artifact"),
    ],
)
def test_an_artifact_without_a_usable_sha256_is_refused(
    tmp_path: Path, venv: Venv, wheels: Wheels, hashes: str, problem: str
) -> None:
    lock = wheels.lock_no_omega.read_text()
    sha = hashlib.sha256(wheels.beta.read_bytes()).hexdigest()
    assert f'{{sha256 = "{sha}"}}' in lock
    bad = tmp_path / "bad.toml"
    bad.write_text(lock.replace(f'{{sha256 = "{sha}"}}', hashes))
    with pytest.raises(InvalidLockError) as info:
        verify(LockFile.load(bad), venv.root)
    assert [p.message for p in info.value.problems] == [problem]
    assert info.value.problems[0].where.startswith(f"{bad}: packages[")


@pytest.mark.parametrize(
    ("folder", "version"),
    [("Beta-1.0.dist-info", "1.0"), ("beta-0.9.dist-info", "0.9")],
    ids=["same-version-other-spelling", "other-version-sorting-first"],
)
def test_a_second_dist_info_of_a_locked_name_is_a_duplicate(
    venv: Venv, wheels: Wheels, folder: str, version: str
) -> None:
    copy = venv.site / folder  # sorts before the locked beta-1.0.dist-info
    shutil.copytree(venv.site / "beta-1.0.dist-info", copy)
    meta = copy / "METADATA"
    meta.write_text(meta.read_text().replace("Version: 1.0", f"Version: {version}"))
    init = venv.site / "beta" / "__init__.py"
    init.write_text(init.read_text() + "#\n")  # the locked copy's files are still checked
    report = verify(LockFile.load(wheels.lock_no_omega), venv.root)
    assert kinds(report.differences) == [
        ("duplicate", "beta", str(copy)),
        ("changed", "beta", str(init)),
    ]
    assert report.differences[0].actual == version


@pytest.mark.parametrize(
    ("where", "python"),
    [
        ("plain", "refused"),
        ("site-packages", None),
        ("lib/python3.11/site-packages", "3.11"),  # the venv and posix_prefix schemes
        ("lib/python3.13t/site-packages", "3.13"),  # a free-threaded build's
        ("usr/lib/python3/dist-packages", None),  # Debian's deb_system scheme
        ("local/lib/python3.11/dist-packages", "3.11"),  # Debian's posix_local scheme
        ("home/lib/python", None),  # posix_home (pip install --home)
        ("python3.12/with-dist-info", None),  # a pythonX.Y above says nothing about it
        ("lib/python3.11", "refused"),  # the stdlib's folder (or a venv's lib/pythonX.Y)
        ("lib/python3.11/anything", "refused"),
        ("lib/python3.11/site-packages/requests", "refused"),  # a package folder
    ],
)
def test_a_folder_that_is_no_environment_is_refused(
    tmp_path: Path, where: str, python: str | None
) -> None:
    folder = tmp_path / where
    folder.mkdir(parents=True)
    if where.endswith("with-dist-info"):  # as `uv pip install --target` leaves it
        (folder / "beta-1.0.dist-info").mkdir()
    if python != "refused":
        env = find_environment(folder)
        assert (env.site_packages, env.python) == ((folder,), python)
        return
    with pytest.raises(SpecError, match="is not an environment") as info:
        find_environment(folder)
    assert info.value.exit_code == 2
    assert info.value.hint is not None and "site-packages" in info.value.hint


# -- the venv's interpreter: it must exist and be the target's Python ---------------------


def _next_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1] + 1}"


def _remove_interpreter(v: Venv, tmp_path: Path) -> tuple[type[SpecError], str, str]:
    v.python.unlink()
    return SpecError, "interpreter of .* is missing", "no such file"


def _dangling_interpreter(v: Venv, tmp_path: Path) -> tuple[type[SpecError], str, str]:
    v.python.unlink()
    v.python.symlink_to(tmp_path / "gone" / "python3")
    return SpecError, "interpreter of .* is missing", "which does not exist"


def _not_a_python(v: Venv, tmp_path: Path) -> tuple[type[SpecError], str, str]:
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\necho 'not python' >&2\nexit 3\n")
    script.chmod(0o755)
    v.python.unlink()
    v.python.symlink_to(script)
    return SpecError, "is not a Python interpreter", "not python"


def _other_python(v: Venv, tmp_path: Path) -> tuple[type[SpecError], str, str]:
    """bin/python runs this Python; the venv's packages are for the next one (as when
    bin/python is re-pointed at another version: the packages it would import are not
    the ones checked)."""
    other = _next_python()
    v.site.parent.rename(v.root / "lib" / f"python{other}")
    cfg = v.root / "pyvenv.cfg"  # uv's venv: "version_info = X.Y.Z"
    cfg.write_text(cfg.read_text().replace(f"= {platform.python_version()}", f"= {other}.0"))
    assert f"{other}.0" in cfg.read_text()
    return TargetError, "does not run the environment", f"it is Python {PYTHON}"


INTERPRETER_BREAKS = [_remove_interpreter, _dangling_interpreter, _not_a_python, _other_python]


@pytest.mark.parametrize(
    "damage", INTERPRETER_BREAKS, ids=[d.__name__.strip("_") for d in INTERPRETER_BREAKS]
)
def test_a_venv_folder_whose_interpreter_cannot_run_it_is_refused(
    venv: Venv,
    wheels: Wheels,
    tmp_path: Path,
    damage: Callable[[Venv, Path], tuple[type[SpecError], str, str]],
) -> None:
    error, message, problem = damage(venv, tmp_path)
    other = target_table("next", glibc="2.17").replace(f'"{PYTHON}"', f'"{_next_python()}"')
    lock = LockFile.load(
        write_lock(
            tmp_path / "l.toml",
            [wheels.alpha, wheels.beta, wheels.tool],
            targets=[target_table(), other],
        )
    )
    with pytest.raises(error, match=message) as caught:
        verify(lock, venv.root, full=True)
    assert caught.value.exit_code == 2  # as `envship verify VENV/bin/python` exits
    (found,) = caught.value.problems
    assert found.where == str(venv.python) and problem in found.message
    # An environment not meant to run here (read out of an image) skips the interpreter.
    report = verify(lock, venv.root, interpreter=False, target=lock.targets[0])
    assert all(d.kind != "unowned" for d in report.differences)


@pytest.mark.parametrize("how", ["venv", "interpreter"])
def test_an_interpreter_that_does_not_fit_the_named_target_is_refused(
    venv: Venv, wheels: Wheels, tmp_path: Path, how: str
) -> None:
    other = target_table("next").replace(f'"{PYTHON}"', f'"{_next_python()}"')
    lock = LockFile.load(
        write_lock(tmp_path / "l.toml", [wheels.beta], targets=[target_table(), other])
    )
    path = venv.root if how == "venv" else venv.python
    with pytest.raises(TargetError, match="cannot run the lock target next") as caught:
        verify(lock, path, target=lock.target("next"))
    assert [p.message for p in caught.value.problems] == [
        f"Python {_next_python()} needed, interpreter is {PYTHON}"
    ]
    assert verify(lock, path, target=lock.target("linux-x86_64"), groups=[]).environment.runs


def test_the_venv_folder_form_runs_its_interpreter(venv: Venv, wheels: Wheels) -> None:
    report = verify(LockFile.load(wheels.lock_no_omega), venv.root)
    assert report.environment.interpreter == venv.python
    runs = report.environment.runs
    assert runs is not None and runs.python == PYTHON and runs.site_packages == (venv.site,)
    assert runs.config == venv.root / "pyvenv.cfg" and runs.platform == PLATFORM


@pytest.mark.parametrize("how", ["venv", "site-packages"])
def test_a_site_packages_folder_in_a_venv_says_the_venv_was_not_checked(
    venv: Venv, wheels: Wheels, how: str
) -> None:
    cfg = venv.root / "pyvenv.cfg"
    cfg.write_text(
        cfg.read_text().replace(
            "include-system-site-packages = false", "include-system-site-packages = true"
        )
    )
    path = venv.root if how == "venv" else venv.site
    report = verify(LockFile.load(wheels.lock_no_omega), path)
    if how == "venv":  # the setting is a difference
        assert [d.kind for d in report.differences] == ["config"]
    else:  # these files alone are identical, and the report says what was not looked at
        assert report.identical
        assert any("was not checked" in n and str(venv.root) in n for n in report.notes)


# -- arguments as a library caller writes them -------------------------------------------

# A bare str where a collection of names goes is one name, not its letters: ignore="six"
# silently ignored nothing (nor "s", "i", "x"); target="linux-x86_64" was AttributeError.
# omega is installed; the "dev" group of lock "with-dev" has it, lock "base" does not.
ARGUMENTS: dict[str, tuple[dict[str, object], str, bool]] = {
    "ignore-a-name": ({"ignore": "omega"}, "base", True),
    "ignore-a-list": ({"ignore": ["omega"]}, "base", True),
    "groups-a-name": ({"groups": "dev"}, "with-dev", True),
    "groups-a-list": ({"groups": ["dev"]}, "with-dev", True),
    "target-a-name": ({"target": "linux-x86_64"}, "base", False),
    "nothing": ({}, "base", False),
}


@pytest.mark.parametrize("case", ARGUMENTS)
def test_names_may_be_given_as_one_string(venv: Venv, wheels: Wheels, case: str) -> None:
    venv.install(wheels.omega)
    given, which, identical = ARGUMENTS[case]
    lock = LockFile.load(wheels.lock if which == "with-dev" else wheels.lock_no_omega)
    report = verify(lock, venv.root, **given)  # type: ignore[arg-type]
    assert report.identical is identical
    assert report.target.name == "linux-x86_64"


def test_a_target_of_another_type_or_name_is_refused(venv: Venv, wheels: Wheels) -> None:
    lock = LockFile.load(wheels.lock)
    with pytest.raises(TargetError, match="the lock has no target 'nope'"):
        verify(lock, venv.root, target="nope")
    with pytest.raises(TypeError, match="target must be a Target, a target's name or None"):
        verify(lock, venv.root, target=3)  # type: ignore[arg-type]

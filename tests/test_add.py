"""``envship.add``: real environments made by lock, fetch and install from a local index.

The index is the test universe plus packages made for additions: ``kappa`` 1.0 (any
beta) and 2.0 (beta>=1.1), ``omega`` (beta>=1.1), ``clobber``, which ships a file
inside the locked ``beta`` package, and ``rho``, whose extra ``socks`` brings
``socksy``. The spec locks ``alpha`` and ``beta<1.1``, so beta is held at 1.0 and
anything needing a newer beta must be refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from disklib import SmallDisk
from envship import _uvpip
from envship.add import ADDED_KEY, AddConflictError, AddError, add
from envship.envs import create_env
from envship.errors import NetworkError, SpecError, StaleLockError
from envship.fetch import fetch
from envship.install import INCOMPLETE_NAME, MARKER_NAME, install
from envship.lock import check_lock, lock
from envship.lockfile import LockFile
from envship.spec import load_spec
from envship.store import Store
from envship.verify import verify
from indexlib import IndexServer, build_universe, build_wheel, serve, write_simple_index
from test_install import REPLACEMENTS, _site, run_py, versions

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"

SPEC = """\
# The team's environment: keep this comment.
name = "addtest"
python = "{python}"
dependencies = [
    "alpha",  # what the notebooks import
    "beta<1.1",  # 1.1 changed the API
]

[[indexes]]
name = "local"
url = "{url}"
default = true
"""

PYPROJECT = """\
[project]
name = "analysis"
version = "0"
dependencies = ["requests"]  # not envship's

[tool.envship]
name = "addtest"
python = "{python}"
dependencies = ["alpha", "beta<1.1"]

[[tool.envship.indexes]]
name = "local"
url = "{url}"
default = true

[tool.ruff]
line-length = 100
"""


def build_add_index(root: Path) -> Path:
    """The universe plus the packages additions need; returns the index folder."""
    files = build_universe(root)
    dist = root / "dist"
    files += [
        build_wheel(dist, "kappa", "1.0", requires=["beta"]),
        build_wheel(dist, "kappa", "2.0", requires=["beta>=1.1"]),
        build_wheel(dist, "omega", "1.0", requires=["beta>=1.1"]),
        build_wheel(dist, "clobber", "1.0", files={"beta/__init__.py": "clobbered = True\n"}),
        # metadata_text writes no Provides-Extra; the line break in the requirement does.
        build_wheel(
            dist, "rho", "1.0", requires=['socksy; extra == "socks"\nProvides-Extra: socks']
        ),
        build_wheel(dist, "socksy", "1.0"),
    ]
    write_simple_index(root / "index", files, yanked={"beta-1.2-py3-none-any.whl": "bad"})
    return root / "index"


@pytest.fixture(scope="session")
def add_index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_add_index(tmp_path_factory.mktemp("add-universe"))


@pytest.fixture
def add_server(add_index_root: Path) -> Iterator[IndexServer]:
    with serve(add_index_root) as server:
        yield server


@dataclass
class Project:
    spec: Path
    lock: Path
    store: Store
    env: Path

    def lockfile(self) -> LockFile:
        return LockFile.load(self.lock)


def make_project(
    root: Path, url: str, *, template: str = SPEC, filename: str = "envship.toml"
) -> Project:
    """Spec -> envship lock -> envship fetch -> envship install, all for real."""
    folder = root / "proj"
    folder.mkdir(parents=True)
    spec_path = folder / filename
    spec_path.write_text(template.format(python=PY, url=url))
    spec = load_spec(spec_path)
    locked = LockFile.load(lock(spec).path)
    store = Store.at(root / "store")
    fetch(locked, store)
    env = root / "env"
    install(locked, store, env)
    return Project(spec_path, locked.path, store, env)


@pytest.fixture
def project(tmp_path: Path, add_server: IndexServer) -> Project:
    return make_project(tmp_path, add_server.simple_url)


def repair_hint(p: Project, again: str = "") -> str:
    """The hint of an environment that left its lock: both commands name the lock, so
    they work from any folder (a bare `envship install ENV` reads ./pylock.toml)."""
    return (
        f"`envship install {p.env} --lock {p.lock}` repairs it from its lock{again}; "
        f"`envship verify {p.env} --lock {p.lock}` lists every difference"
    )


def snapshot(p: Project) -> tuple[bytes, bytes, dict[str, str]]:
    return p.spec.read_bytes(), (p.env / MARKER_NAME).read_bytes(), versions(p.env)


# --- adding --------------------------------------------------------------------------------


def test_add_installs_records_marks_the_lock_stale_and_verify_says_why(project: Project) -> None:
    assert versions(project.env) == {"alpha": "1.0", "beta": "1.0"}
    check_lock(load_spec(project.spec))  # current before the addition
    spec_before = project.spec.read_text()
    logged: list[str] = []

    result = add(["kappa"], env=project.env, log=logged.append)

    # kappa 2.0 is the newest, but it needs beta>=1.1: the held pin makes uv take 1.0.
    assert result.installed == ("kappa==1.0",) and result.removed == ()
    assert result.recorded == ("kappa",) and result.already_locked == ()
    assert result.held == 2 and result.lock_stale and result.changed
    assert result.spec == project.spec and result.lock == project.lock
    code = "import kappa, beta; print(kappa.__version__, beta.__version__)"
    assert run_py(project.env, code) == "1.0 1.0"
    assert any("kappa" in line for line in logged)
    # The spec: one entry appended, every comment and the layout kept.
    assert project.spec.read_text() == spec_before.replace(
        '    "beta<1.1",  # 1.1 changed the API\n',
        '    "beta<1.1",  # 1.1 changed the API\n    "kappa",\n',
    )
    with pytest.raises(StaleLockError):
        check_lock(load_spec(project.spec))
    # The install record names the addition; verify labels the extra but still fails.
    marker = json.loads((project.env / MARKER_NAME).read_text())
    assert marker[ADDED_KEY] == [{"name": "kappa", "version": "1.0", "requested": "kappa"}]
    assert not (project.env / INCOMPLETE_NAME).exists()
    assert not (project.env.parent / "env.envship-tmp").exists()
    report = verify(project.lockfile(), project.env)
    assert [(d.kind, d.name, d.note) for d in report.differences] == [
        ("extra", "kappa", "added by envship add (kappa): run envship lock to take it in")
    ]


def test_an_env_installed_with_byte_code_gets_it_for_additions_too(project: Project) -> None:
    install(project.lockfile(), project.store, project.env, compile_bytecode=True)
    add(["kappa"], env=project.env)
    assert list(project.env.rglob("kappa/__pycache__/__init__.*.pyc"))
    assert json.loads((project.env / MARKER_NAME).read_text())["compiled"] is True


def test_the_next_lock_takes_the_addition_in(project: Project) -> None:
    add(["kappa"], env=project.env)
    relocked = LockFile.load(lock(load_spec(project.spec)).path)
    fetch(relocked, project.store)
    assert install(relocked, project.store, project.env).action == "updated"

    check_lock(load_spec(project.spec))  # current again
    assert verify(relocked, project.env, full=True).identical
    assert ADDED_KEY not in json.loads((project.env / MARKER_NAME).read_text())
    assert versions(project.env) == {"alpha": "1.0", "beta": "1.0", "kappa": "1.0"}


@pytest.mark.parametrize(
    ("request_", "where", "says"),
    [
        ("omega", "omega", "omega requires beta>=1.1; the lock pins beta==1.0"),
        ("kappa>=2", "kappa>=2", "kappa requires beta>=1.1; the lock pins beta==1.0"),
        ("beta>=1.1", "beta>=1.1", "the lock pins beta==1.0"),  # refused before uv runs
    ],
)
def test_a_request_needing_another_locked_version_is_refused_and_explained(
    project: Project, request_: str, where: str, says: str
) -> None:
    before = snapshot(project)
    with pytest.raises(AddConflictError) as err:
        add([request_], env=project.env)

    assert err.value.kind == "add-conflict" and err.value.exit_code == 1
    assert (err.value.problems[0].where, err.value.problems[0].message) == (where, says)
    assert err.value.hint is not None
    assert "never moves a locked package" in err.value.hint and "envship lock -P beta" in (
        err.value.hint
    )
    if request_ != "beta>=1.1":  # uv's own words are kept as detail
        assert any(p.where == "uv" and "beta==1.0" in p.message for p in err.value.problems)
    # Nothing changed: verify proves the environment still equals the lock.
    assert snapshot(project) == before
    assert verify(project.lockfile(), project.env, full=True).identical
    assert not (project.env / INCOMPLETE_NAME).exists()
    check_lock(load_spec(project.spec))


@pytest.mark.parametrize(
    "requests",
    [["beta<1.1"], ["Alpha", "BETA <1.1"], ["beta<1.1.0"], ["alpha[]"]],
)
def test_an_already_locked_request_is_nothing_to_do(project: Project, requests: list[str]) -> None:
    before = snapshot(project)
    result = add(requests, env=project.env)

    assert result.installed == result.removed == result.recorded == ()
    assert not result.changed and not result.lock_stale
    assert len(result.already_locked) == len(requests)
    assert snapshot(project) == before


def test_adding_a_present_name_replaces_its_requirement(project: Project) -> None:
    add(["kappa"], env=project.env)
    again = add(["kappa<2"], env=project.env)

    assert again.recorded == ("kappa<2",) and again.installed == ()
    assert again.replaced == (("kappa", "kappa<2"),)
    text = project.spec.read_text()
    assert text.count("kappa") == 1 and '    "kappa<2",\n' in text
    marker = json.loads((project.env / MARKER_NAME).read_text())
    assert marker[ADDED_KEY] == [{"name": "kappa", "version": "1.0", "requested": "kappa<2"}]
    # The same request a third time changes nothing at all.
    spec_bytes = project.spec.read_bytes()
    third = add(["kappa<2"], env=project.env)
    assert not third.changed and third.replaced == ()
    assert project.spec.read_bytes() == spec_bytes


def test_pyproject_spec_keeps_everything_else(tmp_path: Path, add_server: IndexServer) -> None:
    p = make_project(tmp_path, add_server.simple_url, template=PYPROJECT, filename="pyproject.toml")
    before = p.spec.read_text()
    result = add(["kappa"], env=p.env)

    assert result.spec == p.spec and result.recorded == ("kappa",)
    assert p.spec.read_text() == before.replace(
        'dependencies = ["alpha", "beta<1.1"]', 'dependencies = ["alpha", "beta<1.1", "kappa"]'
    )
    assert load_spec(p.spec).dependencies == ("alpha", "beta<1.1", "kappa")


def test_the_spec_is_replaced_in_one_rename(project: Project) -> None:
    project.spec.chmod(0o640)
    old = project.spec.read_bytes()
    link = project.spec.with_name("spec-before.toml")
    os.link(project.spec, link)  # an in-place rewrite would show through this link
    inode = project.spec.stat().st_ino

    add(["kappa"], env=project.env)

    assert link.read_bytes() == old
    assert project.spec.stat().st_ino != inode
    assert project.spec.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in project.spec.parent.iterdir()) == [
        "envship.toml",
        "pylock.toml",
        "spec-before.toml",
    ]


@pytest.mark.parametrize("where", ["a link in a read-only folder", "a read-only folder"])
def test_the_folder_that_must_be_writable_is_the_spec_files_own(
    project: Project, small_disk: SmallDisk, where: str
) -> None:
    """add writes through a link to the spec into the linked file's folder (the team's
    spec linked into a read-only place): that folder must be writable, not the link's,
    which used to be refused."""
    spec = small_disk.path / "envship.toml"
    if where == "a link in a read-only folder":
        spec.symlink_to(project.spec)
    else:
        shutil.copy(project.spec, spec)
    small_disk.read_only()
    before = spec.read_text()
    if where == "a read-only folder":
        with pytest.raises(AddError, match=f"{small_disk.path} is not writable"):
            add(["kappa"], env=project.env, spec=spec)
        assert spec.read_text() == before and "kappa" not in versions(project.env)
        return
    result = add(["kappa"], env=project.env, spec=spec)
    assert result.recorded == ("kappa",) and versions(project.env)["kappa"] == "1.0"
    assert spec.is_symlink() and '    "kappa",\n' in project.spec.read_text()


def test_dry_run_says_what_would_happen_and_changes_nothing(project: Project) -> None:
    before = snapshot(project)
    result = add(["kappa", "beta<1.1"], env=project.env, dry_run=True)

    assert result.dry_run and not result.changed
    assert result.installed == ("kappa==1.0",) and result.recorded == ("kappa",)
    assert result.already_locked == ("beta==1.0",) and result.lock_stale
    assert snapshot(project) == before
    check_lock(load_spec(project.spec))


def test_a_package_that_overwrites_a_locked_file_is_caught_loudly(project: Project) -> None:
    with pytest.raises(AddError, match="changed locked packages") as err:
        add(["clobber"], env=project.env)

    assert any(
        p.where.endswith("beta/__init__.py") and p.message.startswith("rewritten")
        for p in err.value.problems
    )
    assert err.value.hint is not None and "envship install" in err.value.hint
    # Marked incomplete: the kernel launcher refuses it, and install rebuilds it.
    assert (project.env / INCOMPLETE_NAME).exists()
    check_lock(load_spec(project.spec))  # nothing recorded
    assert install(project.lockfile(), project.store, project.env).action == "rebuilt"
    assert verify(project.lockfile(), project.env, full=True).identical


def test_re_adding_a_recorded_name_says_what_it_replaces_and_keeps_its_extras(
    project: Project,
) -> None:
    recorded = 'rho[socks]>=1; python_version >= "3.8"'
    first = add([recorded], env=project.env)
    assert first.installed == ("rho==1.0", "socksy==1.0") and first.recorded == (recorded,)
    assert first.replaced == ()
    spec_bytes = project.spec.read_bytes()

    # A bare name would drop [socks]: socksy would stay installed, but the spec would no
    # longer ask for it, and the next lock would leave it out.
    for dry_run in (True, False):
        with pytest.raises(AddError, match=r"refusing to drop what .* asks for") as err:
            add(["Rho"], env=project.env, dry_run=dry_run)
        assert [(p.where, p.message) for p in err.value.problems] == [
            ("Rho", f"would replace {recorded!r}, dropping [socks]")
        ]
        assert err.value.hint is not None and "envship add 'Rho[socks]'" in err.value.hint
    assert project.spec.read_bytes() == spec_bytes

    # Keeping the extra, the entry is replaced (constraint and marker go) and said so.
    preview = add(["Rho[socks]"], env=project.env, dry_run=True)
    again = add(["Rho[socks]"], env=project.env)
    for result in (preview, again):
        assert result.replaced == ((recorded, "Rho[socks]"),)
        assert result.recorded == ("Rho[socks]",) and result.installed == ()
    assert load_spec(project.spec).dependencies == ("alpha", "beta<1.1", "Rho[socks]")
    assert versions(project.env)["socksy"] == "1.0"


@pytest.mark.parametrize("name", ["alpha", "kappa"])  # locked, and added before
def test_a_replacement_that_no_longer_applies_here_is_refused(project: Project, name: str) -> None:
    """The entry would stop covering this environment, which still holds the package:
    the next lock would take it away here."""
    if name == "kappa":
        add(["kappa"], env=project.env)
    before = snapshot(project)
    with pytest.raises(AddError, match="refusing to drop what") as err:
        add([f'{name}; sys_platform == "win32"'], env=project.env)
    assert [(p.where, p.message) for p in err.value.problems] == [
        (
            f'{name}; sys_platform == "win32"',
            f"would replace {name!r}, which applies to this environment, with a requirement "
            "that does not",
        )
    ]
    assert snapshot(project) == before


@pytest.mark.parametrize(
    ("marker", "nowhere"), [('sys_platform == "win32"', True), ("other", False)]
)
def test_a_requirement_whose_marker_is_false_here_is_recorded_not_installed(
    project: Project, add_server: IndexServer, marker: str, nowhere: bool
) -> None:
    """Recorded for the machines it applies to; the result says so, and whether the
    spec targets any of them. uv does not even run."""
    other = "3.12" if PY != "3.12" else "3.11"
    spec_text = project.spec.read_text().replace(
        f'python = "{PY}"', f'python = ["{PY}", "{other}"]'
    )
    project.spec.write_text(spec_text)  # a second target, where `python_version == other`
    if marker == "other":
        marker = f'python_version == "{other}"'
    requested = f"kappa; {marker}"
    before = versions(project.env)

    for dry_run in (True, False):
        result = add([requested], env=project.env, dry_run=dry_run)
        assert result.not_applicable == (requested,) and result.already_locked == ()
        assert result.applies_nowhere == ((requested,) if nowhere else ())
        assert result.installed == result.removed == ()
        assert result.recorded == (requested,) and result.lock_stale
    assert load_spec(project.spec).dependencies == ("alpha", "beta<1.1", requested)
    assert versions(project.env) == before
    assert not any("kappa" in path for path in add_server.knobs.requests)
    assert ADDED_KEY not in json.loads((project.env / MARKER_NAME).read_text())


def test_of_one_request_only_what_applies_here_is_installed(project: Project) -> None:
    """Markers are evaluated by the environment's own interpreter (here, the one the
    tests run on); a true one is installed, a false one only recorded."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}"
    result = add(
        [f'kappa; python_full_version == "{here}"', 'omega; sys_platform == "win32"'],
        env=project.env,
    )
    assert result.installed == ("kappa==1.0",)
    assert result.not_applicable == ('omega; sys_platform == "win32"',)


# --- the user's environment must not change what add reads or does ---------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("FORCE_COLOR", "1"), ("CLICOLOR_FORCE", "1"), ("COLUMNS", "30"), ("RUST_LOG", "debug")],
)
def test_uvs_output_is_read_whatever_the_terminal_settings(
    project: Project, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """Every Jupyter kernel sets FORCE_COLOR: coloured, uv's plan was read as empty."""
    monkeypatch.setenv(name, value)
    logged: list[str] = []
    result = add(["kappa"], env=project.env, dry_run=True, log=logged.append)
    assert result.installed == ("kappa==1.0",) and result.recorded == ("kappa",)

    with pytest.raises(AddConflictError) as err:
        add(["omega"], env=project.env, log=logged.append)
    first = err.value.problems[0]
    assert (first.where, first.message) == (
        "omega",
        "omega requires beta>=1.1; the lock pins beta==1.0",
    )
    assert any("Would install 1 package" in line for line in logged)
    assert not [ln for ln in logged if "\x1b[" in ln or ln.startswith("DEBUG")]


@pytest.mark.parametrize(
    "case", ["UV_EXCLUDE", "UV_OVERRIDE", "UV_REQUIRE_HASHES", "uv.toml above the env"]
)
def test_uv_settings_cannot_undo_the_held_pins(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """An excluded (or overridden) beta let uv take kappa 2.0, which needs beta>=1.1,
    beside the held beta 1.0; required hashes made every add fail."""
    listed = tmp_path / "beta.txt"
    if case == "UV_EXCLUDE":
        listed.write_text("beta\n")
        monkeypatch.setenv(case, str(listed))
    elif case == "UV_OVERRIDE":
        listed.write_text("beta>=1.1\n")
        monkeypatch.setenv(case, str(listed))
    elif case == "UV_REQUIRE_HASHES":
        monkeypatch.setenv(case, "1")
    else:  # a project's uv configuration around the environment: not the spec's
        (tmp_path / "uv.toml").write_text('exclude-dependencies = ["beta"]\n')

    for dry_run in (True, False):
        result = add(["kappa"], env=project.env, dry_run=dry_run)
        assert result.installed == ("kappa==1.0",)
    assert versions(project.env) == {"alpha": "1.0", "beta": "1.0", "kappa": "1.0"}


def test_a_uv_setting_that_installs_elsewhere_is_an_error_not_success(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's own uv.toml is read, as by `envship lock`; if it sends the packages
    somewhere else, the addition did not happen and must not be reported or recorded."""
    elsewhere = tmp_path / "elsewhere"
    config = tmp_path / "xdg" / "uv" / "uv.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[pip]\ntarget = "{elsewhere}"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    before = snapshot(project)

    with pytest.raises(AddError, match="uv reported success, but kappa is not installed") as err:
        add(["kappa"], env=project.env)
    assert err.value.hint is not None and "`target`" in err.value.hint
    assert list(elsewhere.glob("kappa*"))  # where uv put it
    assert snapshot(project) == before
    assert not (project.env / INCOMPLETE_NAME).exists()


def test_a_plan_envship_cannot_read_is_an_error_not_an_empty_plan(
    project: Project, add_server: IndexServer
) -> None:
    """uv's real dry-run output, its plan lines in a form envship does not know (here:
    left out): the counts uv prints do not match, so it is never "nothing to do"."""
    from envship.lock import uv_bin

    proc = subprocess.run(
        [
            *(uv_bin(), "--color", "never", "pip", "install", "--dry-run", "kappa"),
            *("--python", str(project.env / "bin" / "python")),
            *("--default-index", add_server.simple_url),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    plan = _uvpip.planned(proc.stderr)
    assert plan == (("beta==1.1", "kappa==2.0"), ("beta==1.0",))  # no pins held here
    unknown = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith(" + "))
    with pytest.raises(AddError, match="cannot read uv's plan: it would install 2 packages, 0"):
        _uvpip.planned(unknown)


def test_relative_paths_are_the_callers_not_uvs_working_folder(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_wheel(tmp_path / "caller" / "wheels", "localonly", "1.0")
    monkeypatch.chdir(tmp_path / "caller")
    result = add(["localonly"], env=project.env, find_links=["wheels"])
    assert result.installed == ("localonly==1.0",)


# --- refusals ------------------------------------------------------------------------------


def test_a_version_under_an_env_root_is_refused(project: Project, tmp_path: Path) -> None:
    root = tmp_path / "efs"
    made = create_env(project.lockfile(), project.store, root, name="ds")
    before = versions(made.path)
    for env in (root / "ds" / "current", made.path, made.path / "bin" / "python"):
        with pytest.raises(AddError, match="a version of the shared environment 'ds'") as err:
            add(["kappa"], env=env)
        assert err.value.hint is not None and "envship env create ds" in err.value.hint
        assert err.value.exit_code == 2  # never a place add works: bad input
    assert versions(made.path) == before
    check_lock(load_spec(project.spec))


@pytest.mark.parametrize(
    ("texts", "bad"),
    [
        (["kappa>="], "'kappa>='"),
        (["kappa", "not a requirement!"], "'not a requirement!'"),
        (["kappa @ https://example.invalid/kappa-1.0-py3-none-any.whl"], None),
        (["kappa", "Kappa<2"], "'Kappa<2'"),
        ([], None),
    ],
)
def test_malformed_requirements_are_named(
    project: Project, texts: list[str], bad: str | None
) -> None:
    before = snapshot(project)
    with pytest.raises(SpecError) as err:
        add(texts, env=project.env)
    assert err.value.exit_code == 2
    if bad is not None:
        assert [p.where for p in err.value.problems] == [bad]
    elif texts:
        assert "direct URL" in err.value.problems[0].message
    else:
        assert err.value.message == "nothing to add"
    assert snapshot(project) == before


@pytest.fixture
def plain_venv(tmp_path: Path) -> Path:
    path = tmp_path / "plain"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("no-env-given", "no environment to add to"),
        ("missing", "there is no environment at"),
        ("plain-venv", "not an environment made by `envship install`"),
        ("half-installed", "is half installed"),
    ],
)
def test_environments_envship_did_not_finish_are_refused(
    project: Project,
    plain_venv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    match: str,
) -> None:
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    env: Path | None = {
        "no-env-given": None,
        "missing": tmp_path / "nowhere",
        "plain-venv": plain_venv,
        "half-installed": project.env,
    }[case]
    if case == "half-installed":
        (project.env / INCOMPLETE_NAME).write_text("install in progress\n")
    with pytest.raises(AddError, match=match) as err:
        add(["kappa"], env=env)
    assert err.value.hint
    # Nothing to add to, or a venv envship did not make, is bad input (as for `kernel
    # install`); a half-installed env is a state `install` changes.
    assert err.value.exit_code == (1 if case == "half-installed" else 2)
    assert "kappa" not in versions(project.env)


def test_virtual_env_is_the_default(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTUAL_ENV", str(project.env))
    assert add(["kappa"]).env == project.env


@pytest.mark.parametrize("cwd", ["elsewhere", "the lock's folder"])
def test_spec_is_found_beside_the_lock_else_every_folder_searched_is_named(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cwd: str
) -> None:
    here = tmp_path / "elsewhere" if cwd == "elsewhere" else project.spec.parent
    here.mkdir(exist_ok=True)
    monkeypatch.chdir(here)  # elsewhere, the marker's lock says where the spec is
    assert add(["kappa"], env=project.env, dry_run=True).spec == project.spec

    moved = tmp_path / "moved.toml"
    project.spec.rename(moved)
    with pytest.raises(SpecError, match="no spec to record the addition in") as err:
        add(["kappa"], env=project.env)
    # Both folders searched are named (the current one was left out), each once.
    searched = [str(project.spec.parent)] + ([str(here)] if cwd == "elsewhere" else [])
    assert [p.where for p in err.value.problems] == searched
    assert add(["kappa"], env=project.env, spec=moved).recorded == ("kappa",)


def test_a_drifted_environment_is_refused(project: Project, add_server: IndexServer) -> None:
    from envship.lock import uv_bin

    subprocess.run(
        [
            *(uv_bin(), "pip", "install", "--python", str(project.env / "bin" / "python")),
            *("--default-index", add_server.simple_url, "beta==1.1"),
        ],
        check=True,
        capture_output=True,
    )
    with pytest.raises(AddError, match="already differs from its lock") as err:
        add(["kappa"], env=project.env)
    assert [(p.where, p.message) for p in err.value.problems] == [
        ("beta", "locked 1.0, installed 1.1")
    ]
    assert err.value.hint == repair_hint(project)
    assert install(project.lockfile(), project.store, project.env).action == "repaired"
    assert add(["kappa"], env=project.env).installed == ("kappa==1.0",)


def _locked_wheel(p: Project, tmp_path: Path) -> dict[str, Path]:
    """The locked beta wheel under its own name, somewhere else than the store."""
    beta = next(a for a in p.lockfile().artifacts() if a.name == "beta")
    (tmp_path / "locked").mkdir()
    return {
        "beta": Path(shutil.copy(p.store.path(beta.sha256), tmp_path / "locked" / beta.filename))
    }


@pytest.mark.parametrize("replace", REPLACEMENTS, ids=[r.__name__.strip("_") for r in REPLACEMENTS])
def test_a_locked_distribution_replaced_at_its_version_is_refused_until_install_repairs_it(
    project: Project, tmp_path: Path, replace: Callable[[Path, Path, dict[str, Path]], None]
) -> None:
    """Names and versions alike, only the RECORD (its digest in the install marker) shows
    that beta 1.0 is not the wheel the lock installed."""
    info = _site(project.env) / "beta-1.0.dist-info"
    record = (info / "RECORD").read_bytes()
    replace(project.env, tmp_path, _locked_wheel(project, tmp_path))
    assert versions(project.env) == {"alpha": "1.0", "beta": "1.0"}
    before = snapshot(project)

    with pytest.raises(AddError, match="already differs from its lock") as err:
        add(["kappa"], env=project.env)
    assert [(p.where, p.message) for p in err.value.problems] == [
        (
            str(info),
            "beta 1.0 was re-installed at its locked version from another wheel or by "
            "another tool: its RECORD is not the one `envship install` wrote",
        )
    ]
    assert err.value.hint == repair_hint(project)
    assert err.value.exit_code == 1
    assert snapshot(project) == before  # nothing installed, nothing recorded
    with pytest.raises(AddError, match="already differs from its lock"):
        add(["kappa"], env=project.env, dry_run=True)

    assert install(project.lockfile(), project.store, project.env).action == "repaired"
    assert (info / "RECORD").read_bytes() == record
    result = add(["kappa"], env=project.env)
    assert result.installed == ("kappa==1.0",) and result.recorded == ("kappa",)


@pytest.mark.parametrize("replace", REPLACEMENTS, ids=[r.__name__.strip("_") for r in REPLACEMENTS])
def test_a_replacement_after_an_earlier_addition_is_refused_and_repaired_too(
    project: Project, tmp_path: Path, replace: Callable[[Path, Path, dict[str, Path]], None]
) -> None:
    """The hint says that the repair also takes the earlier addition away; the repair
    (an update: the marker records the addition) installs the replaced one again."""
    add(["kappa"], env=project.env)
    info = _site(project.env) / "beta-1.0.dist-info"
    record = (info / "RECORD").read_bytes()
    replace(project.env, tmp_path, _locked_wheel(project, tmp_path))

    with pytest.raises(AddError, match="already differs from its lock") as err:
        add(["socksy"], env=project.env)
    assert [p.where for p in err.value.problems] == [str(info)]
    assert err.value.hint == repair_hint(project, " (it also removes what `envship add` added)")
    assert "socksy" not in versions(project.env)

    repaired = install(project.lockfile(), project.store, project.env)
    assert "beta==1.0" in repaired.installed and repaired.removed == ("kappa==1.0",)
    assert (info / "RECORD").read_bytes() == record
    assert versions(project.env) == {"alpha": "1.0", "beta": "1.0"}
    assert add(["socksy"], env=project.env).installed == ("socksy==1.0",)


def test_an_older_marker_without_record_digests_is_checked_by_versions_as_before(
    project: Project, tmp_path: Path
) -> None:
    marker = json.loads((project.env / MARKER_NAME).read_text())
    del marker["records"]
    (project.env / MARKER_NAME).write_text(json.dumps(marker))
    REPLACEMENTS[0](project.env, tmp_path, {})
    assert add(["kappa"], env=project.env).installed == ("kappa==1.0",)


@pytest.mark.parametrize("case", ["unknown-name", "no-wheel", "dead-index"])
def test_uv_failures_are_explained(
    project: Project, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    before = snapshot(project)
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    err: AddError | NetworkError
    if case == "unknown-name":
        with pytest.raises(AddError, match="nosuchthing was not found on the package index") as e:
            add(["nosuchthing"], env=project.env)
        err = e.value
    elif case == "no-wheel":
        with pytest.raises(AddError, match="has no wheel") as e:
            add(["epsilon"], env=project.env)  # sdist only, and the spec does not allow them
        err = e.value
        assert err.hint is not None and "allow-sdist" in err.hint
    else:
        with pytest.raises(NetworkError) as ne:
            add(["kappa"], env=project.env, index_url="http://127.0.0.1:9/simple")
        err = ne.value
        assert err.exit_code == 3 and err.url.startswith("http://127.0.0.1:9/simple")
    assert err.hint
    assert snapshot(project) == before
    assert not (project.env / INCOMPLETE_NAME).exists()


@pytest.mark.parametrize("case", ["UV_OFFLINE", "UV_OFFLINE, page cached", "uv.toml offline"])
def test_uv_with_its_network_turned_off_is_a_network_error_with_a_way_out(
    project: Project, add_index_root: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The air-gapped user's case: exit 3 saying the network is off, not "uv could not
    add" with uv's text, and the hint's local index works offline."""
    if case == "UV_OFFLINE, page cached":
        add(["kappa"], env=project.env, dry_run=True)  # uv caches kappa's page, not its wheel
    if case == "uv.toml offline":
        config = project.spec.parent.parent / "uv-offline.toml"
        config.write_text("offline = true\n")
        monkeypatch.setenv("UV_CONFIG_FILE", str(config))
        said = "uv's network access is turned off (`offline = true` in its configuration)"
    else:
        monkeypatch.setenv("UV_OFFLINE", "1")
        said = "UV_OFFLINE=1 turns uv's network access off"
    before = snapshot(project)
    runs: tuple[bool, ...] = (True, False)
    if case == "UV_OFFLINE, page cached":  # the plan comes from the cache; the wheel cannot
        assert add(["kappa"], env=project.env, dry_run=True).installed == ("kappa==1.0",)
        runs = (False,)
    for dry_run in runs:
        with pytest.raises(NetworkError) as err:
            add(["kappa"], env=project.env, dry_run=dry_run)
        assert err.value.exit_code == 3
        assert err.value.message == f"cannot reach the package index: {said}"
        assert err.value.hint is not None and "--index-url file://OUT/simple" in err.value.hint
        assert "envship index export OUT" in err.value.hint
        if case == "UV_OFFLINE, page cached":  # uv names the file it lacks
            assert err.value.url.endswith("/kappa-1.0-py3-none-any.whl")
            assert f"which lacks {err.value.url}." in err.value.hint
        else:
            assert "which lacks kappa." in err.value.hint
    assert snapshot(project) == before
    assert not (project.env / INCOMPLETE_NAME).exists()

    # The way out the hint gives: an index on this machine, read with the network off.
    local = (add_index_root / "simple").as_uri()
    assert add(["kappa"], env=project.env, index_url=local).installed == ("kappa==1.0",)


def test_ctrl_c_while_uv_works_leaves_the_environment_as_it_was(
    project: Project, add_server: IndexServer
) -> None:
    """A real SIGINT to a real `envship add` while uv waits on the index."""
    before = snapshot(project)
    add_server.knobs.delay = 60.0  # every answer is late: uv is mid-resolution when we stop it
    script = (
        "import sys\n"
        "from envship.cli.add import command\n"
        "from envship.cli.main import cli, main\n"
        "cli.add_command(command)\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "add", "kappa", "--env", str(project.env)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # a bound on the wait for the event, not a timing
        while not any("kappa" in path for path in add_server.knobs.requests):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        assert (project.env / INCOMPLETE_NAME).exists()  # uv is running: marked
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert snapshot(project) == before
    assert not (project.env / INCOMPLETE_NAME).exists()
    assert not (project.env.parent / "env.envship-tmp").exists()
    assert verify(project.lockfile(), project.env, full=True).identical


# --- a locked request that replaces the spec's entry -----------------------------------------


@pytest.mark.parametrize(
    ("request_", "entry"),
    [
        ("beta>=1.0,<1.1", "beta<1.1,>=1.0"),  # a tighter floor (the audit's requests>=2.32)
        ("beta==1.0", "beta==1.0"),
        ('beta<1.1; python_version >= "3"', 'beta<1.1; python_version >= "3"'),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_locked_request_unlike_the_spec_entry_replaces_it_and_installs_nothing(
    project: Project, request_: str, entry: str, dry_run: bool
) -> None:
    before = snapshot(project)
    result = add([request_], env=project.env, dry_run=dry_run)

    assert result.installed == result.removed == result.already_locked == ()
    assert result.recorded == (entry,) and result.replaced == (("beta<1.1", entry),)
    assert result.lock_stale and result.changed is not dry_run
    spec_bytes, marker_bytes, installed = snapshot(project)
    assert (marker_bytes, installed) == before[1:]  # nothing installed, no added record
    assert verify(project.lockfile(), project.env, full=True).identical
    if dry_run:
        assert spec_bytes == before[0]
        check_lock(load_spec(project.spec))
    else:
        # The entry is replaced in place; its comment stays.
        assert project.spec.read_text() == before[0].decode().replace(
            '"beta<1.1",  # 1.1', f"{json.dumps(entry)},  # 1.1"
        )
        with pytest.raises(StaleLockError):
            check_lock(load_spec(project.spec))
        # Asked again, it is the entry now: nothing to do.
        again = add([request_], env=project.env)
        assert again.already_locked == ("beta==1.0",) and not again.changed
        assert project.spec.read_bytes() == spec_bytes


@pytest.mark.parametrize("request_", ["beta", "BETA", "beta[]"])
def test_a_bare_name_the_spec_constrains_asks_only_that_it_be_there(
    project: Project, request_: str
) -> None:
    """`envship add beta` must not loosen the team's `beta<1.1` to `beta`."""
    before = snapshot(project)
    result = add([request_], env=project.env)
    assert result.already_locked == ("beta==1.0",) and result.recorded == ()
    assert not result.changed and snapshot(project) == before
    check_lock(load_spec(project.spec))  # still current


def test_the_cli_reports_the_replaced_entry_and_the_stale_lock(project: Project) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "envship", "add", "beta>=1.0,<1.1", "--env", str(project.env)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" not in proc.stdout
    assert "replaced 'beta<1.1' with 'beta<1.1,>=1.0'" in proc.stdout
    assert "the lock is stale" in proc.stdout
    check = subprocess.run(
        [sys.executable, "-m", "envship", "lock", "--check", "--spec", str(project.spec)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1, check.stdout + check.stderr

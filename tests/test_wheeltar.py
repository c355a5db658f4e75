"""``envship._wheeltar``: wheels installed straight into a layer, then used for real.

The layers are unpacked with plain :mod:`tarfile` into a venv made by ``python -m venv``
at the very prefix the scheme names, so console scripts, ``.data`` scripts and imports
run as they would in the image, and :func:`envship.verify.verify` checks every RECORD
hash. A last test loads the layer over the debootstrapped bookworm root into the real
Docker engine and runs the console script inside the container.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from envship._wheeltar import INSTALLER, Locked, VenvScheme, WheelInstall, write_wheel
from envship.errors import ArtifactError, ImageError
from envship.layer import LayerBlob, LayerWriter
from envship.lockfile import LockFile
from envship.targets import host_platform
from envship.verify import decode_record_hash, verify
from indexlib import _record_hash, build_wheel
from serviceslib import DockerEngine

PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
MTIME = 1_700_000_000

CLI = """\
import os, sys


def main():
    print("tool ran", sys.prefix)
    return 0


def gui():
    print("gui ran")
    return 0
"""
ENTRY_POINTS = "[console_scripts]\ntool = tool.cli:main\n\n[gui_scripts]\ntool-gui = tool.cli:gui\n"
LEGACY = "#!python\nimport sys\nprint('legacy ran', sys.prefix)\n"
HELPER = "#!/bin/sh\necho helper ran\n"


def rewrite_wheel(
    wheel: Path,
    out: Path,
    *,
    modes: dict[str, int] | None = None,
    replace: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    record: bool = True,
) -> Path:
    """A copy of ``wheel`` in ``out`` with members changed; RECORD recomputed unless not."""
    members: dict[str, tuple[bytes, int]] = {}
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            members[info.filename] = (zf.read(info), info.external_attr >> 16)
    for name in drop:
        members.pop(name)
    for name, data in {**(replace or {}), **(add or {})}.items():
        members[name] = (data, members.get(name, (b"", 0o644))[1])
    for name, mode in (modes or {}).items():
        # installer honours the bits of regular files only, as wheel builders write them
        members[name] = (members[name][0], stat.S_IFREG | mode)
    records = [n for n in members if n.endswith(".dist-info/RECORD")]
    if record and records:
        lines = [f"{n},{_record_hash(d)},{len(d)}\n" for n, (d, _) in members.items()]
        text = "".join(line for line in lines if not line.startswith(records[0] + ","))
        members[records[0]] = ((text + f"{records[0]},,\n").encode(), 0o644)
    out.mkdir(parents=True, exist_ok=True)
    path = out / wheel.name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (data, mode) in members.items():
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


@dataclass(frozen=True)
class Wheels:
    tool: Path  # console + gui entry points, .data scripts/data/headers/platlib, an exec file
    alpha: Path  # requires beta
    beta: Path

    def all(self) -> tuple[Path, ...]:
        return (self.tool, self.alpha, self.beta)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    out = tmp_path_factory.mktemp("wheeltar-wheels")
    files = {
        "tool/cli.py": CLI,
        "tool/helper.sh": HELPER,
        "tool-1.0.dist-info/entry_points.txt": ENTRY_POINTS,
        "tool-1.0.data/scripts/legacy": LEGACY,
        "tool-1.0.data/scripts/plain.sh": "#!/bin/sh\necho plain ran\n",
        "tool-1.0.data/data/share/tool/notes.txt": "shared data\n",
        "tool-1.0.data/headers/tool.h": "#define TOOL 1\n",
        "tool-1.0.data/platlib/_tool_native.py": "KIND = 'platlib'\n",
    }
    built = build_wheel(out / "raw", "tool", "1.0", files=files)
    tool = rewrite_wheel(built, out, modes={"tool/helper.sh": 0o755})
    return Wheels(
        tool=tool,
        alpha=build_wheel(out, "alpha", "1.0", requires=["beta>=1.0"]),
        beta=build_wheel(out, "beta", "1.0"),
    )


def write_layer(
    dest: Path,
    wheels: tuple[Path, ...],
    scheme: VenvScheme,
    *,
    interpreter: str | None = None,
) -> tuple[LayerBlob, list[WheelInstall]]:
    dest.mkdir(parents=True, exist_ok=True)
    with LayerWriter(dest, mtime=MTIME) as layer:
        done = [
            write_wheel(w, layer, scheme, interpreter=interpreter or f"{scheme.prefix}/bin/python")
            for w in wheels
        ]
        blob = layer.close()
    return blob, done


def members(blob: LayerBlob) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(blob.path) as tar:
        return {m.name: m for m in tar.getmembers()}


@dataclass(frozen=True)
class Installed:
    venv: Path
    scheme: VenvScheme
    blob: LayerBlob
    results: list[WheelInstall]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site(self) -> Path:
        return Path(self.scheme.site_packages)

    def run(self, *args: str | Path) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PATH"] = f"{self.venv / 'bin'}:/usr/bin:/bin"
        out = subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, env=env, check=False
        )
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheels: Wheels) -> Installed:
    """A stdlib venv at the scheme's prefix, with the layer's files unpacked into it."""
    venv = tmp_path_factory.mktemp("wheeltar") / "root" / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    scheme = VenvScheme.for_python(str(venv), PYTHON)
    blob, results = write_layer(venv.parent.parent / "layers", wheels.all(), scheme)
    # Layer paths are image paths without the leading "/": everything must lie below the
    # prefix, and is unpacked relative to it (the parents above it are the venv's).
    inside = str(venv).lstrip("/") + "/"
    with tarfile.open(blob.path) as tar:
        chosen = []
        for member in tar.getmembers():
            if inside.startswith(member.name + "/"):
                assert member.isdir(), member.name
                continue
            assert member.name.startswith(inside), member.name
            member.name = member.name[len(inside) :]
            chosen.append(member)
        tar.extractall(venv, members=chosen, filter="tar")
    return Installed(venv, scheme, blob, results)


# -- the scheme -------------------------------------------------------------------------


def test_venv_scheme_paths() -> None:
    scheme = VenvScheme.for_python("/opt/envship/venv", "3.11")
    assert scheme.paths("tool") == {
        "purelib": "/opt/envship/venv/lib/python3.11/site-packages",
        "platlib": "/opt/envship/venv/lib/python3.11/site-packages",
        "headers": "/opt/envship/venv/include/site/python3.11/tool",
        "scripts": "/opt/envship/venv/bin",
        "data": "/opt/envship/venv",
    }


@pytest.mark.parametrize(
    ("prefix", "version", "where"),
    [
        ("opt/venv", "3.11", "prefix"),
        ("/opt/../venv", "3.11", "prefix"),
        ("/opt/venv/", "3.11", "prefix"),
        ("/", "3.11", "prefix"),
        ("//opt/venv", "3.11", "prefix"),
        ("/opt/my venv", "3.11", "prefix"),
        ("/opt/venv", "3", "python_version"),
        ("/opt/venv", "3.11.4", "python_version"),
        ("/opt/venv", "py3.11", "python_version"),
    ],
)
def test_venv_scheme_refuses(prefix: str, version: str, where: str) -> None:
    with pytest.raises(ImageError) as err:
        VenvScheme.for_python(prefix, version)
    assert [p.where for p in err.value.problems] == [where]


# -- installed and used -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param(["bin/tool"], "tool ran {venv}", id="console-script"),
        pytest.param(["bin/tool-gui"], "gui ran", id="gui-script"),
        pytest.param(["bin/legacy"], "legacy ran {venv}", id="data-script-#!python"),
        pytest.param(["bin/plain.sh"], "plain ran", id="data-script-sh"),
        pytest.param(
            ["lib/python{py}/site-packages/tool/helper.sh"], "helper ran", id="exec-bit-kept"
        ),
        pytest.param(
            ["bin/python", "-c", "import alpha, beta, tool, _tool_native; print(tool.__file__)"],
            "{site}/tool/__init__.py",
            id="imports",
        ),
    ],
)
def test_installed_files_run(installed: Installed, command: list[str], expected: str) -> None:
    fmt = {"venv": installed.venv, "py": PYTHON, "site": installed.site}
    program = installed.venv / command[0].format(**fmt)
    assert installed.run(program, *command[1:]).strip() == expected.format(**fmt)


def test_scripts_name_the_image_interpreter(installed: Installed) -> None:
    interpreter = f"#!{installed.venv}/bin/python"
    scripts = ["tool", "tool-gui", "legacy"]
    assert [(installed.venv / "bin" / s).read_text().splitlines()[0] for s in scripts] == [
        interpreter
    ] * 3
    # A shebang that is not "#!python" is the wheel's own business: left as written.
    assert (installed.venv / "bin/plain.sh").read_text().startswith("#!/bin/sh\n")
    assert sys.executable not in (installed.venv / "bin/tool").read_text()


def write_lock(path: Path, wheels: tuple[Path, ...]) -> Path:
    """A PEP 751 lock of ``wheels`` with one target: this machine and Python."""
    lines = ['lock-version = "1.0"', 'created-by = "test"', ""]
    for whl in wheels:
        name, version = whl.name.split("-")[:2]
        sha = hashlib.sha256(whl.read_bytes()).hexdigest()
        url = f"https://example.invalid/files/{whl.name}"
        lines += ["[[packages]]", f'name = "{name}"', f'version = "{version}"']
        lines += [f'wheels = [{{url = "{url}", hashes = {{sha256 = "{sha}"}}}}]', ""]
    target = (
        f'{{name = "here", platform = "{host_platform()}", python = "{PYTHON}", '
        'glibc = "2.17", variant = "cpu"}'
    )
    lines += ["[tool.envship]", f"targets = [{target}]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_verify_finds_every_record_hash_right(
    installed: Installed, wheels: Wheels, tmp_path: Path
) -> None:
    lock = LockFile.load(write_lock(tmp_path / "pylock.toml", wheels.all()))
    report = verify(lock, installed.venv, full=True)
    assert report.differences == ()
    assert report.distributions == 3
    assert report.checked_files == sum(r.files for r in installed.results) == 15 + 2 * 5


def test_record_lists_every_file_of_the_layer(installed: Installed) -> None:
    inside = str(installed.venv).lstrip("/") + "/"
    in_layer = {name[len(inside) :] for name, m in members(installed.blob).items() if m.isfile()}
    listed: dict[str, tuple[str, str, str]] = {}
    for record in installed.site.glob("*.dist-info/RECORD"):
        for line in record.read_text().splitlines():
            path, digest, size = line.split(",")
            full = os.path.normpath(installed.site / path)
            listed[os.path.relpath(full, installed.venv)] = (path, digest, size)
    assert set(listed) == in_layer
    for rel, (path, digest, size) in listed.items():
        data = (installed.venv / rel).read_bytes()
        if path.endswith(".dist-info/RECORD"):
            assert (digest, size) == ("", "")
        else:
            algorithm, _, value = digest.partition("=")
            assert algorithm == "sha256"
            assert hashlib.sha256(data).digest() == decode_record_hash(value), rel
            assert int(size) == len(data)
    assert not [n for n in in_layer if n.endswith(".pyc")]  # no byte-code compiled


def test_installer_file_and_results(installed: Installed) -> None:
    by_name = {r.name: r for r in installed.results}
    assert sorted(by_name) == ["alpha", "beta", "tool"]
    tool = by_name["tool"]
    dist_info = installed.site / "tool-1.0.dist-info"
    assert (tool.version, tool.dist_info) == ("1.0", str(dist_info))
    assert (dist_info / "INSTALLER").read_bytes() == INSTALLER
    record = (dist_info / "RECORD").read_text()
    assert f"tool-1.0.dist-info/INSTALLER,{_record_hash(INSTALLER)},8\n" in record
    bin_dir = installed.venv / "bin"
    assert set(tool.scripts) == {
        str(bin_dir / s) for s in ("tool", "tool-gui", "legacy", "plain.sh")
    }
    inside = "/" + str(installed.venv).lstrip("/")
    layer_files = [m for m in members(installed.blob).values() if m.isfile()]
    assert sum(r.files for r in installed.results) == len(layer_files)
    assert sum(r.bytes for r in installed.results) == sum(m.size for m in layer_files)
    assert all(f"/{m.name}".startswith(inside) for m in layer_files)


def test_layer_entries_are_normalized(installed: Installed) -> None:
    entries = members(installed.blob)
    inside = str(installed.venv).lstrip("/")
    executable = {f"{inside}/bin/{s}" for s in ("tool", "tool-gui", "legacy", "plain.sh")} | {
        f"{inside}/lib/python{PYTHON}/site-packages/tool/helper.sh"
    }
    for name, m in entries.items():
        want = 0o755 if m.isdir() or name in executable else 0o644
        assert (m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime) == (
            want, 0, 0, "", "", MTIME
        ), name  # fmt: skip
    assert executable <= set(entries)


# -- reproducibility --------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tool", "alpha", "beta"])
def test_same_wheel_same_digest(tmp_path: Path, wheels: Wheels, which: str) -> None:
    wheel = getattr(wheels, which)
    scheme = VenvScheme.for_python("/opt/envship/venv", PYTHON)
    a, _ = write_layer(tmp_path / "one" / "deep" / "folder", (wheel,), scheme)
    copy = tmp_path / "two" / wheel.name  # the same bytes under another path
    copy.parent.mkdir()
    shutil.copyfile(wheel, copy)
    b, _ = write_layer(tmp_path / "two" / "layers", (copy,), scheme)
    assert (a.digest, a.diff_id, a.size) == (b.digest, b.diff_id, b.size)
    assert a.path.read_bytes() == b.path.read_bytes()
    with tarfile.open(a.path) as ta, tarfile.open(b.path) as tb:
        assert ta.getnames() == tb.getnames()


@pytest.mark.parametrize(
    ("prefix", "interpreter"),
    [
        pytest.param("/opt/other", "/opt/envship/venv/bin/python", id="prefix"),
        pytest.param("/opt/envship/venv", "/usr/bin/python3", id="interpreter"),
    ],
)
def test_inputs_change_the_digest(
    tmp_path: Path, wheels: Wheels, prefix: str, interpreter: str
) -> None:
    base = VenvScheme.for_python("/opt/envship/venv", PYTHON)
    a, _ = write_layer(tmp_path / "a", (wheels.tool,), base)
    other = VenvScheme.for_python(prefix, PYTHON)
    b, _ = write_layer(tmp_path / "b", (wheels.tool,), other, interpreter=interpreter)
    assert a.digest != b.digest


# -- wheels that must be refused --------------------------------------------------------

BadWheel = Callable[[Wheels, Path], Path]


def _escape_data(w: Wheels, out: Path) -> Path:
    return rewrite_wheel(w.beta, out, add={"beta-1.0.data/data/../../../../etc/evil": b"x"})


def _escape_root(w: Wheels, out: Path) -> Path:
    return rewrite_wheel(w.beta, out, add={"../../evil.py": b"x"})


def _absolute_member(w: Wheels, out: Path) -> Path:
    return rewrite_wheel(w.beta, out, add={"/etc/evil": b"x"})


def _escape_script(w: Wheels, out: Path) -> Path:
    entry = b"[console_scripts]\n../../../../evil = beta:main\n"
    return rewrite_wheel(w.beta, out, add={"beta-1.0.dist-info/entry_points.txt": entry})


def _tampered(w: Wheels, out: Path) -> Path:
    changed = {"beta/__init__.py": b'__version__ = "6.6"\n'}
    return rewrite_wheel(w.beta, out, replace=changed, record=False)


def _no_metadata(w: Wheels, out: Path) -> Path:
    return rewrite_wheel(w.beta, out, drop=("beta-1.0.dist-info/METADATA",))


def _two_dist_infos(w: Wheels, out: Path) -> Path:
    return rewrite_wheel(w.beta, out, add={"other-1.0.dist-info/METADATA": b"Name: other\n"})


def _same_path_twice(w: Wheels, out: Path) -> Path:
    return rewrite_wheel(w.beta, out, add={"beta-1.0.data/purelib/beta/__init__.py": b""})


def _not_a_zip(w: Wheels, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / w.beta.name
    path.write_bytes(b"not a zip file at all")
    return path


def _bad_name(w: Wheels, out: Path) -> Path:
    meta = b"Metadata-Version: 2.1\nName: ../beta\nVersion: 1.0\n\n"
    return rewrite_wheel(w.beta, out, replace={"beta-1.0.dist-info/METADATA": meta})


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        pytest.param(_escape_data, ImageError, "outside its data folder", id="data-escape"),
        pytest.param(_escape_root, ImageError, "outside its purelib folder", id="root-escape"),
        pytest.param(_absolute_member, ImageError, "cannot install", id="absolute-member"),
        pytest.param(_escape_script, ImageError, "outside its scripts folder", id="script"),
        pytest.param(_tampered, ArtifactError, "does not match the wheel's RECORD", id="hash"),
        pytest.param(_no_metadata, ImageError, "METADATA", id="no-metadata"),
        pytest.param(_two_dist_infos, ImageError, "exactly one .dist-info", id="dist-infos"),
        pytest.param(_same_path_twice, ImageError, "duplicate layer entry", id="duplicate"),
        pytest.param(_not_a_zip, ImageError, "cannot install", id="not-a-zip"),
        pytest.param(_bad_name, ImageError, "no valid Name", id="bad-name"),
    ],
)
def test_bad_wheel_is_refused(
    tmp_path: Path, wheels: Wheels, make: BadWheel, error: type[Exception], match: str
) -> None:
    wheel = make(wheels, tmp_path / "bad")
    scheme = VenvScheme.for_python("/opt/envship/venv", PYTHON)
    with pytest.raises(error, match=match):
        write_layer(tmp_path / "layers", (wheel,), scheme)
    assert list((tmp_path / "layers").iterdir()) == []  # the aborted layer is gone


OTHER_SHA = "0" * 64


@pytest.mark.parametrize(
    ("locked", "fields", "problems"),
    [
        pytest.param(
            lambda sha, size: Locked(OTHER_SHA, size),
            (OTHER_SHA, "{sha}"),
            ["sha256 {sha}, the lock says " + OTHER_SHA],
            id="other-sha256",
        ),
        pytest.param(
            lambda sha, size: Locked(sha, size + 1),
            ("{more}", "{size}"),  # the hash is right: the size is what differs
            ["{size} bytes, the lock says {more}"],
            id="other-size",
        ),
        pytest.param(
            lambda sha, size: Locked(OTHER_SHA, size - 1),
            (OTHER_SHA, "{sha}"),
            ["sha256 {sha}, the lock says " + OTHER_SHA, "{size} bytes, the lock says {less}"],
            id="both",
        ),
    ],
)
def test_a_wheel_that_is_not_the_locks_writes_nothing(
    tmp_path: Path,
    wheels: Wheels,
    locked: Callable[[str, int], Locked],
    fields: tuple[str, str],
    problems: list[str],
) -> None:
    """Checked before any of it is read as a zip: the layer gets no entry."""
    sha = hashlib.sha256(wheels.beta.read_bytes()).hexdigest()
    size = wheels.beta.stat().st_size
    said = {"sha": sha, "size": size, "more": size + 1, "less": size - 1}
    scheme = VenvScheme.for_python("/opt/envship/venv", PYTHON)
    with LayerWriter(tmp_path, mtime=MTIME) as layer:
        with pytest.raises(ArtifactError) as caught:
            write_wheel(
                wheels.beta, layer, scheme, interpreter="/x/bin/python", locked=locked(sha, size)
            )
        assert layer.close().entries == 0
    error = caught.value
    assert (error.artifact, error.kind, error.exit_code) == (wheels.beta.name, "integrity", 4)
    assert (error.expected, error.actual) == tuple(f.format(**said) for f in fields)
    assert error.hint == "`envship fetch --verify` replaces it"
    assert [p.message for p in error.problems] == [m.format(**said) for m in problems]
    assert {p.where for p in error.problems} == {str(wheels.beta)}


def test_the_locks_own_bytes_install(tmp_path: Path, wheels: Wheels) -> None:
    sha = hashlib.sha256(wheels.beta.read_bytes()).hexdigest()
    scheme = VenvScheme.for_python("/opt/envship/venv", PYTHON)
    with LayerWriter(tmp_path, mtime=MTIME) as layer:
        done = write_wheel(
            wheels.beta,
            layer,
            scheme,
            interpreter="/x/bin/python",
            locked=Locked(sha, wheels.beta.stat().st_size),
        )
        layer.close()
    assert (done.name, done.version) == ("beta", "1.0")


@pytest.mark.parametrize(
    "interpreter",
    ["python3", "/opt/my venv/bin/python", "/opt/" + "x" * 130 + "/bin/python", "/a\n/python"],
)
def test_interpreter_must_fit_a_shebang(tmp_path: Path, wheels: Wheels, interpreter: str) -> None:
    scheme = VenvScheme.for_python("/opt/envship/venv", PYTHON)
    with pytest.raises(ImageError, match="shebang"):
        write_layer(tmp_path, (wheels.tool,), scheme, interpreter=interpreter)


# -- inside a real container ------------------------------------------------------------

PREFIX = "/opt/envship/venv"


def _docker_archive(path: Path, tag: str, layers: list[LayerBlob]) -> None:
    """A ``docker load`` archive: manifest.json, the config, one tar per layer."""
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine],
        "os": "linux",
        "config": {"Env": [f"PATH={PREFIX}/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in layers]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = [
        {
            "Config": "config.json",
            "RepoTags": [tag],
            "Layers": [f"{b.digest.split(':')[1]}.tar" for b in layers],
        }
    ]
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("config.json", config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for blob in layers:
            tar.add(blob.path, arcname=f"{blob.digest.split(':')[1]}.tar")


def _venv_skeleton(dest: Path) -> LayerBlob:
    """What ``python3 -m venv --without-pip`` makes, written by hand as a layer."""
    with LayerWriter(dest, mtime=MTIME) as layer:
        layer.add_file(
            f"{PREFIX[1:]}/pyvenv.cfg",
            b"home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n",
        )
        layer.add_symlink(f"{PREFIX[1:]}/bin/python3", "/usr/bin/python3")
        layer.add_symlink(f"{PREFIX[1:]}/bin/python", "python3")
        layer.add_dir(f"{PREFIX[1:]}/lib/python3.11/site-packages")
        layer.add_symlink(f"{PREFIX[1:]}/lib64", "lib")
        return layer.close()


@pytest.fixture(scope="module")
def image(
    tmp_path_factory: pytest.TempPathFactory,
    docker_engine: DockerEngine,
    bookworm_root: Path,
    wheels: Wheels,
) -> Iterator[str]:
    """bookworm root + venv skeleton + the wheels' layer, ``docker load``-ed."""
    tmp_path = tmp_path_factory.mktemp("wheeltar-image")
    layers = tmp_path / "layers"
    layers.mkdir()
    with LayerWriter(layers, mtime=MTIME, compress=False, exact=True) as base:
        base.add_tree(bookworm_root)
        base_blob = base.close()
    scheme = VenvScheme.for_python(PREFIX, "3.11")
    env_blob, _ = write_layer(layers, wheels.all(), scheme)
    tag = f"envship-test/wheeltar:{uuid.uuid4().hex[:12]}"
    archive = tmp_path / "image.tar"
    _docker_archive(archive, tag, [base_blob, _venv_skeleton(layers), env_blob])
    try:
        docker_engine.docker("load", "-i", str(archive))
        yield tag
    finally:
        if docker_engine.docker("image", "inspect", tag, check=False).returncode == 0:
            docker_engine.docker("rmi", tag)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param(["tool"], f"tool ran {PREFIX}", id="console-script"),
        pytest.param(["legacy"], f"legacy ran {PREFIX}", id="data-script"),
        pytest.param(["python", "-c", "import alpha, beta; print('ok')"], "ok", id="import"),
    ],
)
def test_console_script_runs_in_a_container(
    docker_engine: DockerEngine, image: str, command: list[str], expected: str
) -> None:
    out = docker_engine.docker("run", "--rm", "--network", "none", image, *command)
    assert out.stdout.strip() == expected

"""Build the data-science set into an image: envship (no daemon) against ``docker build``.

Goals (issue 4), all measured in this run on the same base (a debootstrap Debian 12 root
with Python 3.11) and the same wheels from a warm store:

* a cold ``envship image build`` (empty layer cache) at most 0.3x ``docker build`` of a
  Dockerfile that copies the wheelhouse and pip-installs it (and a uv variant, shown);
* a rebuild after a one-package change at most 0.1x docker's rebuild;
* bytes that rebuild's push uploads at most 10% of the environment's bytes;
* image size no larger than the Dockerfile's (``docker image inspect`` Size).

pip compiles byte-code and envship does not unless ``--compile``: the cold build and the
image size are also measured with ``--compile``, the like-for-like comparison with pip.

Needs a Docker engine (``DOCKER_HOST``; start dockerd with ``--bridge=none
--iptables=false``), Debian's ``docker-registry``, a bookworm root from debootstrap
(``--root``, default ``/var/cache/envship-tests/bookworm-root``) and PyPI once.
Run: ``DOCKER_HOST=unix:///path/docker.sock python benchmarks/bench_image.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tomli_w
from _util import DS_SET, clean_env, envship_cmd, median, report, row, timed

from envship.layer import LayerWriter
from envship.lock import uv_bin
from envship.lockfile import LockFile
from envship.oci import OCI_CONFIG, OCI_MANIFEST, ImageConfig, ImageManifest
from envship.ocilayout import OciLayout

DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The package whose version the "one-package change" moves back by one release.
CHANGED = "requests"
OURS = "envship-bench/ours:1"


def _base_layout(root: Path, dest: Path) -> str:
    layout = OciLayout.open(dest, create=True)
    with LayerWriter(dest, mtime=0, exact=True) as writer:
        writer.add_tree(root)
        blob = writer.close()
    layer = layout.add_blob_file(blob.path, blob.digest, blob.size, blob.media_type)
    config = ImageConfig("amd64", "linux", (blob.diff_id,), config={"Env": [f"PATH={DEBIAN_PATH}"]})
    config_desc = layout.add_blob(config.to_bytes(), OCI_CONFIG)
    manifest = layout.add_blob(ImageManifest(config_desc, (layer,)).to_bytes(), OCI_MANIFEST)
    layout.tag("base", manifest)
    return f"oci:{dest}:base"


def _docker_import(root: Path, tag: str, env: dict[str, str]) -> None:
    proc = subprocess.Popen(["docker", "import", "-", tag], stdin=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
        tar.add(root, arcname=".")
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit("docker import of the base failed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _registry(work: Path) -> Iterator[str]:
    port = _free_port()
    config = work / "registry.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(work / "registry")}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "log": {"level": "error"},
            }
        )
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _dockerfile(folder: Path, installer: str) -> None:
    folder.mkdir()
    if installer == "pip":
        run = (
            "python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index "
            "--no-deps /wheels/*.whl"
        )
    else:
        shutil.copy(uv_bin(), folder / "uv")
        run = (
            "/uv venv -q /opt/venv --python /usr/bin/python3.11 && UV_CACHE_DIR=/tmp/uvc "
            "/uv pip install -q --offline --no-deps --python /opt/venv/bin/python "
            "/wheels/*.whl && rm -rf /tmp/uvc"
        )
    copy_uv = "COPY uv /uv\n" if installer == "uv" else ""
    (folder / "Dockerfile").write_text(
        f"FROM envship-bench/base\n{copy_uv}COPY wheels /wheels\nRUN {run}\n"
    )


def _fill_wheels(lock_path: Path, store: Path, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for a in LockFile.load(lock_path).artifacts():
        os.link(store / "sha256" / a.sha256[:2] / a.sha256, folder / a.filename)


def _image_size(tag: str, env: dict[str, str]) -> int:
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", tag],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def _lock(work: Path, name: str, deps: list[str], env: dict[str, str]) -> Path:
    folder = work / name
    folder.mkdir()
    spec = {
        "name": "ds",
        "python": "3.11",
        "dependencies": deps,
        "targets": {"linux-x86_64": {"glibc": "2.28"}},
    }
    (folder / "envship.toml").write_text(tomli_w.dumps(spec))
    timed([*envship_cmd(), "lock", "--spec", str(folder)], env=env)
    timed([*envship_cmd(), "fetch", "--lock", str(folder / "pylock.toml")], env=env)
    return folder / "pylock.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement")
    parser.add_argument("--root", type=Path, default=Path("/var/cache/envship-tests/bookworm-root"))
    args = parser.parse_args()
    if not os.environ.get("DOCKER_HOST"):
        raise SystemExit("set DOCKER_HOST to a running Docker engine")
    with tempfile.TemporaryDirectory(prefix="envship-bench-image-") as tmp:
        work = Path(tmp)
        store = work / "store"
        env = clean_env(UV_CACHE_DIR=str(work / "uv-cache"), ENVSHIP_STORE=str(store))
        lock = _lock(work, "ds", DS_SET, env)
        old = next(p for p in LockFile.load(lock).pylock.packages if p.name == CHANGED)
        major, minor, *_ = str(old.version).split(".")
        changed_pin = f"{CHANGED}<{major}.{minor}"  # the previous minor release
        lock2 = _lock(work, "ds2", [*DS_SET, changed_pin], env)
        base = _base_layout(args.root, work / "base")
        _docker_import(args.root, "envship-bench/base", env)
        build = [*envship_cmd(), "image", "build", "--base", base]

        cold: list[float] = []
        cold_compiled: list[float] = []
        warm_change: list[float] = []
        docker_pip: list[float] = []
        docker_uv: list[float] = []
        docker_pip2: list[float] = []
        with _registry(work) as registry:
            for i in range(args.repeat):
                shutil.rmtree(store / "layers", ignore_errors=True)  # an empty layer cache
                cold.append(
                    timed(
                        [*build, "--lock", str(lock), "-o", f"oci:{work / 'out'}:{i}"],
                        env=env,
                    )
                )
                warm_change.append(
                    timed(
                        [*build, "--lock", str(lock2), "-o", f"oci:{work / 'out'}:c{i}"],
                        env=env,
                    )
                )
                shutil.rmtree(store / "layers", ignore_errors=True)
                cold_compiled.append(
                    timed(
                        [*build, "--compile", "--lock", str(lock), "-o", f"oci:{work}/out:p{i}"],
                        env=env,
                    )
                )
                for installer, times, lk in (
                    ("pip", docker_pip, lock),
                    ("uv", docker_uv, lock),
                    ("pip", docker_pip2, lock2),
                ):
                    ctx = work / f"ctx-{installer}-{len(times)}-{lk.parent.name}"
                    _dockerfile(ctx, installer)
                    _fill_wheels(lk, store, ctx / "wheels")
                    tag = f"envship-bench/{installer}-{lk.parent.name}:{len(times)}"
                    cmd = ["docker", "build", "-q", "--network", "none", "-t", tag, str(ctx)]
                    times.append(timed(cmd, env=dict(env, DOCKER_BUILDKIT="0")))
            # Push: the first image, then the changed one, counting the second's upload.
            repo = f"{registry}/bench/ds"
            push = [*build, "--json"]
            subprocess.run(
                [*push, "--lock", str(lock), "--push", f"{repo}:1"],
                env=env,
                check=True,
                capture_output=True,
            )
            second = subprocess.run(
                [*push, "--lock", str(lock2), "--push", f"{repo}:2"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(second.stdout)
            env_bytes = sum(layer["size"] for layer in result["layers"] if layer["label"] != "base")
            uploaded = result["push"]["bytes_uploaded"]

            # Image size: ours, loaded through a docker-archive, against the Dockerfile's.
            def loaded_size(tag: str, *extra: str) -> int:
                archive = work / "ours.tar"
                out = f"docker-archive:{archive}:envship-bench/{tag}"
                cmd = [*build, *extra, "--lock", str(lock), "-o", out]
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                subprocess.run(["docker", "load", "-q", "-i", str(archive)], env=env, check=True)
                return _image_size(f"envship-bench/{tag}", env)

            ours_size = loaded_size("ours:1")
            compiled_size = loaded_size("ours-pyc:1", "--compile")
            pip_size = _image_size("envship-bench/pip-ds:0", env)
            for tag in ("ours:1", "ours-pyc:1", "pip-ds:0", "uv-ds:0", "pip-ds2:0", "base"):
                subprocess.run(
                    ["docker", "rmi", "-f", f"envship-bench/{tag}"], env=env, capture_output=True
                )
        print(
            f"{len(LockFile.load(lock).artifacts())} wheels; changed {CHANGED} "
            f"({changed_pin}); env layers {env_bytes / 1e6:.1f} MB compressed"
        )
        rows = [
            row("cold build vs docker build (pip)", median(cold), median(docker_pip), 0.3),
            row(
                "cold build --compile vs docker build (pip)",
                median(cold_compiled),
                median(docker_pip),
                0.3,
            ),
            row("cold build vs docker build (uv)", median(cold), median(docker_uv)),
            row(
                "rebuild after one change vs docker (pip)",
                median(warm_change),
                median(docker_pip2),
                0.1,
            ),
            row("bytes pushed after one change vs env bytes", uploaded / 1e6, env_bytes / 1e6, 0.1),
            row("image size vs Dockerfile image (MB)", ours_size / 1e6, pip_size / 1e6, 1.0),
            row(
                "image size --compile vs Dockerfile image (MB)",
                compiled_size / 1e6,
                pip_size / 1e6,
                1.0,
            ),
        ]
        report("image", rows)


if __name__ == "__main__":
    main()

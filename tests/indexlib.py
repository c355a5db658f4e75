"""A real package index for tests: tiny wheels and sdists built here, served on 127.0.0.1.

The server is a plain ``http.server`` with knobs for the failure modes the store must
survive: transient 503s, slow responses, tampered bytes and connections cut mid-body.
Every request is logged so tests can prove a second fetch goes to no server at all.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import tarfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def metadata_text(
    name: str, version: str, requires: Sequence[str] = (), requires_python: str | None = None
) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {r}" for r in requires)
    return "\n".join(lines) + "\n\n"


def build_wheel(
    out: Path,
    name: str,
    version: str,
    *,
    tag: str = "py3-none-any",
    requires: Sequence[str] = (),
    requires_python: str | None = None,
    files: dict[str, str] | None = None,
    scripts: dict[str, str] | None = None,
) -> Path:
    """Write a valid PEP 427 wheel with a module named after the project and a RECORD."""
    out.mkdir(parents=True, exist_ok=True)
    module = canonicalize_name(name).replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    contents: dict[str, bytes] = {
        f"{module}/__init__.py": f'__version__ = "{version}"\n'.encode(),
    }
    for rel, text in (files or {}).items():
        contents[rel] = text.encode()
    contents[f"{dist_info}/METADATA"] = metadata_text(
        name, version, requires, requires_python
    ).encode()
    wheel_meta = "Wheel-Version: 1.0\nGenerator: envship-tests\nRoot-Is-Purelib: true\n"
    for t in tag.split("-")[2].split("."):
        for py in tag.split("-")[0].split("."):
            wheel_meta += f"Tag: {py}-{tag.split('-')[1]}-{t}\n"
    contents[f"{dist_info}/WHEEL"] = wheel_meta.encode()
    if scripts:
        entry = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
        contents[f"{dist_info}/entry_points.txt"] = entry.encode()
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in contents.items())
    record += f"{dist_info}/RECORD,,\n"
    contents[f"{dist_info}/RECORD"] = record.encode()
    path = out / f"{module}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in contents.items():
            info = zipfile.ZipInfo(rel, ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return path


def build_sdist(out: Path, name: str, version: str, *, requires: Sequence[str] = ()) -> Path:
    """Write an sdist whose setup would run code: envship must never build it by default."""
    out.mkdir(parents=True, exist_ok=True)
    module = canonicalize_name(name).replace("-", "_")
    base = f"{module}-{version}"
    pkg_info = metadata_text(name, version, requires).replace(
        "Metadata-Version: 2.1", "Metadata-Version: 2.1"
    )
    pyproject = (
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    members = {
        f"{base}/PKG-INFO": pkg_info.encode(),
        f"{base}/pyproject.toml": pyproject.encode(),
        f"{base}/{module}/__init__.py": b"",
    }
    path = out / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for rel, data in members.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mtime = 1577836800
            tf.addfile(info, io.BytesIO(data))
    return path


def write_simple_index(
    root: Path, files: Iterable[Path], *, yanked: dict[str, str] | None = None
) -> Path:
    """Lay ``files`` out as a PEP 503 index under ``root`` (``root/simple/<project>/``)."""
    files_dir = root / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    by_project: dict[str, list[Path]] = {}
    for f in files:
        target = files_dir / f.name
        if f.resolve() != target.resolve():
            target.write_bytes(f.read_bytes())
        if f.name.endswith(".whl"):
            project = str(parse_wheel_filename(f.name)[0])
        else:
            project = str(parse_sdist_filename(f.name)[0])
        by_project.setdefault(project, []).append(target)
    simple = root / "simple"
    simple.mkdir(exist_ok=True)
    links = []
    for project, paths in sorted(by_project.items()):
        (simple / project).mkdir(exist_ok=True)
        anchors = []
        for p in sorted(paths):
            sha = hashlib.sha256(p.read_bytes()).hexdigest()
            attrs = ""
            if yanked and p.name in yanked:
                attrs = f' data-yanked="{html.escape(yanked[p.name])}"'
            anchors.append(f'<a href="../../files/{p.name}#sha256={sha}"{attrs}>{p.name}</a><br>')
        (simple / project / "index.html").write_text(
            "<!DOCTYPE html><html><body>\n" + "\n".join(anchors) + "\n</body></html>\n"
        )
        links.append(f'<a href="{project}/">{project}</a><br>')
    (simple / "index.html").write_text(
        "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n"
    )
    return simple


@dataclass
class ServerKnobs:
    """What the server does wrong, per file name (basename of the request path)."""

    fail_times: dict[str, int] = field(default_factory=dict)  # 503 this many times
    fail_always: set[str] = field(default_factory=set)  # 500 forever
    tamper: set[str] = field(default_factory=set)  # flip a byte in the body
    cut_after: dict[str, int] = field(default_factory=dict)  # close after N body bytes, once
    delay: float = 0.0  # seconds before each response
    requests: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(SimpleHTTPRequestHandler):
    knobs: ServerKnobs

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _name(self) -> str:
        return self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]

    def do_GET(self) -> None:
        knobs = self.knobs
        name = self._name()
        with knobs.lock:
            knobs.requests[self.path.split("?")[0]] += 1
            remaining = knobs.fail_times.get(name, 0)
            if remaining:
                knobs.fail_times[name] = remaining - 1
            cut = knobs.cut_after.pop(name, None)
        if knobs.delay:
            time.sleep(knobs.delay)
        if remaining:
            self.send_error(503, "try again")
            return
        if name in knobs.fail_always:
            self.send_error(500, "broken")
            return
        fs_path = Path(self.translate_path(self.path))
        if fs_path.is_dir():
            fs_path = fs_path / "index.html"
        if not fs_path.is_file():
            self.send_error(404)
            return
        data = fs_path.read_bytes()
        if name in knobs.tamper:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng[6:].rstrip("-").isdigit():
            start = int(rng[6:].rstrip("-"))
        body = data[start:]
        self.send_response(206 if start else 200)
        ctype = "text/html" if fs_path.suffix == ".html" else "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@dataclass
class IndexServer:
    root: Path
    url: str  # base URL, e.g. http://127.0.0.1:PORT
    knobs: ServerKnobs

    @property
    def simple_url(self) -> str:
        return f"{self.url}/simple"

    def file_requests(self) -> int:
        return sum(n for p, n in self.knobs.requests.items() if p.startswith("/files/"))


@contextmanager
def serve(root: Path) -> Iterator[IndexServer]:
    """Serve ``root`` on 127.0.0.1 on a free port until the context ends."""
    knobs = ServerKnobs()
    handler = type("Handler", (_Handler,), {"knobs": knobs})

    def factory(*args: Any, **kwargs: Any) -> _Handler:
        made: _Handler = handler(*args, directory=str(root), **kwargs)
        return made

    server = ThreadingHTTPServer(("127.0.0.1", 0), factory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield IndexServer(root, f"http://127.0.0.1:{server.server_address[1]}", knobs)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


X86 = "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64"
ARM = "cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64"


def build_universe(root: Path) -> list[Path]:
    """The test universe: one package per situation a lock or a store must handle."""
    dist = root / "dist"
    files = [
        build_wheel(dist, "alpha", "1.0", requires=["beta>=1.0"]),
        build_wheel(dist, "beta", "1.0"),
        build_wheel(dist, "beta", "1.1"),
        build_wheel(dist, "beta", "1.2"),  # yanked below
        build_wheel(dist, "gamma", "1.0", tag=X86),
        build_wheel(dist, "gamma", "1.0", tag=ARM),
        build_wheel(dist, "gamma", "1.0", tag="cp311-cp311-win_amd64"),  # no target uses it
        build_wheel(dist, "eta", "2.0", tag="cp38-abi3-manylinux_2_17_x86_64"),
        build_wheel(dist, "eta", "2.0", tag="cp38-abi3-manylinux_2_17_aarch64"),
        build_wheel(dist, "delta", "1.0", tag=X86),  # no wheel for aarch64
        build_sdist(dist, "delta", "1.0"),
        build_wheel(dist, "zeta", "1.0", tag="cp311-cp311-manylinux_2_34_x86_64"),
        build_wheel(dist, "zeta", "1.0", tag="cp311-cp311-manylinux_2_34_aarch64"),
        build_sdist(dist, "epsilon", "1.0"),  # sdist only
        build_wheel(dist, "tool", "1.0", scripts={"tool": "tool:main"}),
    ]
    return files


def make_index(root: Path) -> Path:
    files = build_universe(root)
    return write_simple_index(root / "index", files, yanked={"beta-1.2-py3-none-any.whl": "bad"})

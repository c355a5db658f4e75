"""The TOML reader under locks and specs: whatever a file holds, one EnvshipError naming
the file (and the line where there is one), never a traceback and never a hang."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envship._toml import MAX_BYTES, loads_toml, read_toml
from envship.errors import EnvshipError, InvalidLockError, PermissionDeniedError, SpecError

AS_USER = ["setpriv", "--reuid", "1000", "--regid", "100", "--clear-groups"]
SRC = Path(__file__).resolve().parents[1] / "src"
SITE = sysconfig.get_paths()["purelib"]  # envship's dependencies, readable by every user
GOOD = b'a = 1\n[t]\nb = "x"\n'

# (bytes, where the problem is, what it says), one row per way a file is not TOML.
MALFORMED = [
    (b"\xef\xbb\xbf" + GOOD, ":1:1", "byte-order mark"),
    (b'a = 1\nb = "ok"\nc = "caf\xe9"\n', ":3:9", "byte 0xe9 is not UTF-8"),
    (b'x = "\xc3\xa9\xc3\xa9"\ny = "\xff"\n', ":2:6", "byte 0xff is not UTF-8"),
    ("a = 1\n".encode("utf-16"), ":1:1", "UTF-16"),
    (b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n", "", "nested too deeply"),
    (b"x = " + b"{y = " * 3000 + b"1" + b"}" * 3000 + b"\n", "", "nested too deeply"),
    (b"x = " + b"1" * 5000 + b"\n", "", "4300 digits"),
    (b"a = 1\nb = [\n", ":3:1", "Invalid value at the end of the file"),
    (b"a = 1\na = 2\n", ":2:6", "Cannot overwrite a value"),
]
IDS = ["bom", "latin-1", "bad-byte-after-utf8", "utf-16", "arrays", "tables", "huge-int"]
IDS += ["truncated", "duplicate-key"]


@pytest.mark.parametrize(("raw", "at", "says"), MALFORMED, ids=IDS)
@pytest.mark.parametrize("error", [InvalidLockError, SpecError])
def test_a_file_that_is_not_toml_is_the_callers_error_at_its_place(
    tmp_path: Path, raw: bytes, at: str, says: str, error: type[EnvshipError]
) -> None:
    path = tmp_path / "pylock.toml"
    path.write_bytes(raw)
    with pytest.raises(error) as caught:
        read_toml(path, error)
    assert type(caught.value) is error and caught.value.exit_code == 2
    assert str(path) in caught.value.message
    (problem,) = caught.value.problems
    assert problem.where == f"{path}{at}", problem
    assert says in problem.message


def test_the_bytes_returned_are_the_bytes_parsed(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(GOOD)
    assert read_toml(path) == ({"a": 1, "t": {"b": "x"}}, GOOD)


def test_a_missing_file_gives_the_callers_hint(tmp_path: Path) -> None:
    path = tmp_path / "pylock.toml"
    with pytest.raises(InvalidLockError, match="does not exist") as caught:
        read_toml(path, InvalidLockError, missing_hint="run `envship lock`")
    assert caught.value.hint == "run `envship lock`"


# -- what is not a regular file is refused before a byte is read --------------------------


def _fifo(path: Path) -> str:
    os.mkfifo(path)  # no writer: a blocking open would wait for ever
    return "a named pipe"


def _device(path: Path) -> str:
    path.symlink_to("/dev/zero")  # never ends: a plain read would fill the memory
    return "a character device: /dev/zero"


def _socket(path: Path) -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return "a socket"


@pytest.mark.parametrize("make", [_fifo, _device, _socket], ids=["fifo", "dev-zero", "socket"])
def test_what_is_not_a_regular_file_is_refused(tmp_path: Path, make: Callable[[Path], str]) -> None:
    path = tmp_path / "pylock.toml"
    seen = make(path)
    with pytest.raises(InvalidLockError, match="is not a file envship can read") as caught:
        read_toml(path, InvalidLockError)
    assert [(p.where, p.message) for p in caught.value.problems] == [(str(path), seen)]
    assert caught.value.hint and "regular file" in caught.value.hint


def test_a_path_with_a_nul_byte_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidLockError, match="holds a NUL character"):
        read_toml(tmp_path / "a\0b.toml", InvalidLockError)


def test_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a folder, not a file"):
        read_toml(tmp_path, SpecError)


def test_a_file_larger_than_the_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "pylock.toml"
    with path.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: no disk is used, and nothing may read it
    with pytest.raises(InvalidLockError, match=f"is {MAX_BYTES + 1} bytes, more than"):
        read_toml(path, InvalidLockError)


def test_the_cap_is_far_above_real_locks() -> None:
    # The auditor's 50 MB lock worked; uv's largest real locks are a few MB.
    assert MAX_BYTES >= 200 * 1024 * 1024


# -- a file this user may not read --------------------------------------------------------


@pytest.fixture
def open_top() -> Iterator[Path]:
    """A world-readable folder under /tmp (pytest's tmp_path lies under a 0700 one)."""
    top = Path(tempfile.mkdtemp(prefix="envship-toml-", dir="/tmp"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top)


def test_a_file_below_a_closed_folder_is_a_permission_error_naming_the_folder(
    open_top: Path,
) -> None:
    """As uid 1000 (root ignores modes): the folder that refuses, its owner, the fix."""
    assert os.getuid() == 0, "this test drops privileges: it must run as root"
    closed = open_top / "locks"
    closed.mkdir(mode=0o700)
    (closed / "pylock.toml").write_bytes(GOOD)
    code = (
        "import json, sys; from pathlib import Path\n"
        "from envship._toml import read_toml\nfrom envship.errors import InvalidLockError\n"
        "try:\n"
        "    read_toml(Path(sys.argv[1]), InvalidLockError, what='the lock')\n"
        "except Exception as e:\n"
        "    print(json.dumps({**e.to_json(), 'type': type(e).__name__}))\n"
    )
    proc = subprocess.run(
        [*AS_USER, "/usr/bin/python3.11", "-c", code, str(closed / "pylock.toml")],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{SRC}{os.pathsep}{SITE}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["type"] == PermissionDeniedError.__name__ and doc["error"] == "permission"
    assert doc["message"].startswith(f"permission denied: the lock {closed}/pylock.toml")
    assert [p["where"] for p in doc["problems"]] == [str(closed)]
    assert "owned by root (uid 0), mode 0700" in doc["problems"][0]["message"]
    assert f"chmod a+rX {closed}" in doc["hint"]


# -- nothing but EnvshipError, whatever the bytes ----------------------------------------


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode()))
def test_any_bytes_give_a_table_or_an_envship_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "any.toml"
    path.write_bytes(raw)
    try:
        data, content = read_toml(path, InvalidLockError)
    except InvalidLockError as exc:
        assert exc.problems or "does not exist" not in exc.message
        return
    assert content == raw and isinstance(data, dict)


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(min_value=1, max_value=20_000), table=st.booleans())
def test_any_nesting_gives_a_table_or_an_envship_error(depth: int, table: bool) -> None:
    text = "x = " + ("{a = " * depth + "1" + "}" * depth if table else "[" * depth + "]" * depth)
    try:
        data = loads_toml(text, "f.toml", SpecError)
    except SpecError as exc:
        assert [p.where for p in exc.problems] == ["f.toml"]
        assert "nested too deeply" in exc.problems[0].message
        return
    value: Any = data["x"]
    for _ in range(depth if table else depth - 1):
        value = value["a"] if table else value[0]
    assert value == (1 if table else [])

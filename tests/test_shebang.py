"""``envship._shebang``: reading the interpreter an installed script runs, as uv, pip
(distlib) and pypa/installer write it, and whether it is the environment's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from envship._shebang import Interpreter, ScriptHead, check_heads, read_head

BODY = b"import sys\nfrom tool import main\nsys.exit(main())\n"
RELOCATABLE = b"""#!/bin/sh
'''exec' "$(dirname -- "$(realpath -- "$0")")"/'python' "$0" "$@"
' '''
"""


TRAMPOLINE = b"#!/bin/sh\n'''exec' %s \"$0\" \"$@\"\n' '''\n"


@pytest.mark.parametrize(
    ("head", "interpreter", "beside"),
    [
        (b"#!/env/bin/python\n", "/env/bin/python", False),
        (b"#!/env/bin/python3.11\n", "/env/bin/python3.11", False),
        # uv and pypa/installer quote with '...', distlib with "...".
        (TRAMPOLINE % b"'/a b/bin/python'", "/a b/bin/python", False),
        (TRAMPOLINE % b'"/a b/bin/python"', "/a b/bin/python", False),
        (RELOCATABLE, "python", True),
        (b"#!/usr/bin/env python\n", "/usr/bin/env python", False),
        (b"#!\n", None, False),
        (b"#!/bin/sh\n", "/bin/sh", False),  # a shell script: its body is shell
        (TRAMPOLINE % b"'unterminated", None, False),
        (TRAMPOLINE % b"'/a' '/b'", None, False),
    ],
    ids=[
        "plain", "versioned", "uv-trampoline", "distlib-trampoline", "relocatable",
        "env", "empty", "sh-script", "bad-quote", "two-words",
    ],
)  # fmt: skip
def test_read_head(head: bytes, interpreter: str | None, beside: bool) -> None:
    found = read_head(head + BODY)
    assert found == ScriptHead(len(head), interpreter, beside)
    assert (head + BODY)[found.end :] == BODY  # the body starts where it says


@pytest.mark.parametrize("data", [b"import sys\n", b"", b" #!/env/bin/python\n"])
def test_no_shebang_no_head(data: bytes) -> None:
    assert read_head(data) == ScriptHead(-1, None)


@pytest.mark.parametrize(
    ("interpreter", "head", "accepted"),
    [
        (Interpreter("/env", "3.11", resolve=False), "#!/env/bin/python", True),
        (Interpreter("/env/", "3.11", resolve=False), "#!/env/bin/python3", True),
        (Interpreter("/env", "3.11", resolve=False), "#!/env/bin/python3.11", True),
        (Interpreter("/env", "3.11", resolve=False), "#!/env/bin/python3.12", False),
        (Interpreter("/env", "3.11", resolve=False), "#!/old/env/bin/python", False),
        (Interpreter("/env", "3.11", resolve=False), "#!/env/bin/../bin/python", True),
        (Interpreter("/env", "3.11", resolve=False), "#!/usr/bin/python3", False),
        (Interpreter("/env", None, resolve=False), "#!/env/bin/python3.11", False),
        (Interpreter("/env", "3.11", resolve=False), RELOCATABLE.decode(), False),
        (Interpreter("/env", "3.11", True, resolve=False), RELOCATABLE.decode(), True),
        (Interpreter("/env", "3.11", True, resolve=False), "#!/env/bin/python", True),
    ],
)
def test_whether_a_head_runs_the_environments_python(
    interpreter: Interpreter, head: str, accepted: bool
) -> None:
    data = head.encode() if head.endswith("\n") else head.encode() + b"\n"
    assert interpreter.accepts(read_head(data + BODY)) is accepted


@given(st.binary(max_size=300))
def test_read_head_never_fails_and_stays_inside(data: bytes) -> None:
    head = read_head(data)
    assert -1 <= head.end <= len(data) + 1
    assert (head.end < 0) == (not data.startswith(b"#!"))


@pytest.mark.parametrize(
    ("head", "actual"),
    [
        (b"#!/usr/bin/python3\n", "runs /usr/bin/python3"),
        (RELOCATABLE, "runs the python beside it (a relocatable script)"),
        (RELOCATABLE.replace(b"'python'", b"'py thon' 'x'"), "runs an unreadable relocatable line"),
        (b"#!\n", "runs no interpreter"),
    ],
)
def test_check_heads_says_what_a_script_runs(tmp_path: Path, head: bytes, actual: str) -> None:
    script = tmp_path / "tool"
    script.write_bytes(head + BODY)
    ours = tmp_path / "ours.py"
    ours.write_bytes(b"#!/env/bin/python\n" + BODY)
    runs_here = Interpreter("/env", "3.11", resolve=False)

    [diff] = check_heads([("tool", str(script)), ("tool", str(ours))], runs_here)

    assert (diff.kind, diff.path, diff.actual) == ("changed", str(script), actual)
    assert diff.expected == "runs /env/bin/python"

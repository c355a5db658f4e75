"""Which interpreter an installed script runs: its ``#!`` line, or the ``/bin/sh``
trampoline installers write instead.

Installers rewrite a wheel's ``#!python`` scripts and write console-script launchers
with the environment's interpreter as the first line (PEP 427, "Recommended installer
features"). Where that line cannot name it, because Linux reads at most 127 bytes of it
before 5.1 or the path has a space, uv, pip (distlib) and pypa/installer write a script
that is both a shell script and a Python module::

    #!/bin/sh
    '''exec' '/a/long/venv/bin/python' "$0" "$@"
    ' '''

A venv made with ``uv venv --relocatable`` gets the same trampoline with the interpreter
found beside the script at run time (``"$(dirname -- "$(realpath -- "$0")")"/'python'``),
so its scripts keep working wherever the folder is mounted.

A script whose interpreter is another one than its environment's runs its code with the
packages of somewhere else (a moved or copied environment's scripts still name the old
place), so :mod:`envship.verify` checks this line for every script it knows an installer
wrote, not only their bodies.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from ._difference import Difference

__all__ = ["Interpreter", "ScriptHead", "check_heads", "read_head"]

# The trampoline's exec line; the interpreter is shell-quoted ('...' by uv and
# pypa/installer, "..." by distlib) or, in a relocatable venv, found beside the script.
_EXEC = re.compile(r"^'''exec' (?P<interpreter>.+) \"\$0\" \"\$@\"$")
_BESIDE = '"$(dirname -- "$(realpath -- "$0")")"/'
_HEAD_BYTES = 4096  # a trampoline with a long path fits; a body needs no reading here


@dataclass(frozen=True, slots=True)
class ScriptHead:
    """A script's interpreter lines: ``end`` is where its body starts (-1: no ``#!``);
    ``interpreter`` the path it runs, or a bare name (``python``) that a relocatable
    trampoline looks for beside the script (``beside`` True)."""

    end: int
    interpreter: str | None
    beside: bool = False


def read_head(data: bytes) -> ScriptHead:
    """The interpreter ``data`` (a script, or its first few KiB) names."""
    first, _, rest = data.partition(b"\n")
    if not first.startswith(b"#!"):
        return ScriptHead(-1, None)
    if first == b"#!/bin/sh" and rest.startswith(b"'''exec' "):
        second, _, third = rest.partition(b"\n")
        if third.startswith(b"' '''\n"):
            end = len(first) + len(second) + len(b"' '''\n") + 2
            match = _EXEC.match(second.decode("utf-8", "replace"))
            if match is None:
                return ScriptHead(end, None)
            quoted = match.group("interpreter")
            beside = quoted.startswith(_BESIDE)
            try:
                words = shlex.split(quoted.removeprefix(_BESIDE))
            except ValueError:
                return ScriptHead(end, None)
            return ScriptHead(end, words[0] if len(words) == 1 else None, beside)
    text = first[2:].decode("utf-8", "replace").strip()
    return ScriptHead(len(first) + 1, text or None)


@dataclass(frozen=True, slots=True)
class Interpreter:
    """What the scripts of an environment may name: its ``bin/python`` where it runs
    (``prefix``: the venv folder, or an image's prefix inside the image), under the names
    installers use, and, in a relocatable venv, the interpreter beside the script."""

    prefix: str
    python: str | None  # "3.11": python3.11 is one of the names
    relocatable: bool = False
    # Compare folders by where they lead on this machine: ROOT/NAME/current/bin/x names
    # versions/KEY/bin/python. Not for a prefix inside an image, which is not here.
    resolve: bool = True

    def names(self) -> tuple[str, ...]:
        return ("python", "python3", *((f"python{self.python}",) if self.python else ()))

    def accepts(self, head: ScriptHead) -> bool:
        if head.interpreter is None:
            return False
        if head.beside:
            return self.relocatable and head.interpreter in self.names()
        folder, _, name = head.interpreter.rpartition("/")
        same = os.path.realpath if self.resolve else os.path.normpath
        return name in self.names() and same(folder) == same(os.path.join(self.prefix, "bin"))


def check_heads(scripts: Iterable[tuple[str, str]], interpreter: Interpreter) -> list[Difference]:
    """Each ``(distribution, path)`` script must run ``interpreter``; one ``changed``
    difference per script that names another (or none). Unreadable or missing ones are
    left to the file checks, which name them."""
    diffs = []
    expected = f"{interpreter.prefix.rstrip('/')}/bin/python"
    if interpreter.relocatable:
        expected += " (or, relocatable, the python beside it)"
    for name, path in scripts:
        try:
            with open(path, "rb") as f:
                head = read_head(f.read(_HEAD_BYTES))
        except OSError:
            continue
        if head.end < 0 or interpreter.accepts(head):
            continue
        found = head.interpreter or "no interpreter"
        if head.beside:
            found = (
                f"the {head.interpreter} beside it (a relocatable script)"
                if head.interpreter
                else "an unreadable relocatable line"
            )
        diffs.append(
            Difference(
                "changed", name, path, f"runs {expected}", f"runs {found}",
                "a script of another place (a moved or copied environment) or edited",
            )
        )  # fmt: skip
    return diffs

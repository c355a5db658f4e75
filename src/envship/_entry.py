"""The ``envship`` command's entry point: Ctrl-C and SIGTERM answered from the first moment.

:func:`envship.cli.main.main` turns an interruption into "interrupted" and exit 130 (one
JSON document with ``--json``), but only once it runs: importing the CLI (click, the
errors, their dataclasses) takes tens of milliseconds, and a Ctrl-C or a ``docker stop``
in that window ended in a ``KeyboardInterrupt`` traceback, or, for SIGTERM, in a silent
exit 143. Nothing has been done then, and the answer says so. Stdlib only, imported
before anything else of the CLI.

``envship install`` of a new environment from a plan remembered on this machine runs
here without the CLI (:mod:`envship._quickinstall`); anything that path does not take,
the CLI runs.
"""

from __future__ import annotations

import os
import sys

__all__ = ["closed_to_others", "main"]


def _terminate(signum: int, frame: object) -> None:
    # As the CLI's own handler does: SIGTERM runs the same path as Ctrl-C.
    raise KeyboardInterrupt


def closed_to_others() -> int:
    """Add "others may not write" to this process's umask; return the umask it had.

    envship makes nothing others may write: under a umask of 000 a venv, a shared
    version or a store entry would be world-writable, which ``envship verify`` reports
    (anyone could put code into it) and no remake it hints at could mend. Group write
    stays as the umask has it (umask 002, roots shared by a group at 2775)."""
    old = os.umask(0o022)
    os.umask(old | 0o002)
    return old


def main() -> int:
    closed_to_others()
    try:
        import signal  # here: a Ctrl-C while it is imported is answered too

        # Kept while the CLI runs: its main() sets its own handler and puts this one back.
        signal.signal(signal.SIGTERM, _terminate)
    except KeyboardInterrupt:
        return _interrupted("interrupted before it started; nothing was done")
    if "install" in sys.argv[1:3]:
        try:
            from ._quickinstall import run as quick

            code = quick(sys.argv[1:])
        except KeyboardInterrupt:
            # uv was stopped and the new environment removed; said as the CLI says it,
            # the blank line first (it ends the terminal's "^C" line).
            return _interrupted("interrupted; re-run the same command to resume", blank=True)
        if code is not None:
            return code
    try:
        from .cli.main import main as run
    except KeyboardInterrupt:
        return _interrupted("interrupted before it started; nothing was done")
    return run()


def _interrupted(message: str, *, blank: bool = False) -> int:
    if "--json" in sys.argv[1:]:
        import json

        # The shape of every other error of the CLI (envship.cli._common.echo_json).
        doc: dict[str, object] = {
            "error": "interrupted",
            "hint": None,
            "message": message,
            "problems": [],
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"\n{message}" if blank else message, file=sys.stderr)
    return 130

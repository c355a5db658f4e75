"""CLI plumbing: progress lines and the errors printed after them."""

from __future__ import annotations

import pytest

from envship.cli._common import Progress, render_error, reset_json
from envship.errors import StoreError


@pytest.mark.parametrize("done", [10, 100], ids=["unfinished", "finished"])
def test_an_error_after_a_progress_line_starts_on_its_own_line(
    done: int, capsys: pytest.CaptureFixture[str]
) -> None:
    reset_json()  # an earlier test's `--json` call may have left JSON mode on
    progress = Progress("fetch")
    progress.tty = True  # a terminal: the line is redrawn in place, no newline until done
    progress(done, 100, "big.whl")
    assert render_error(StoreError("boom")) == 1
    line, _, _ = capsys.readouterr().err.partition("error: boom")
    # An unfinished line is ended first; a finished one already was; never twice.
    assert line.endswith("big.whl\n") and line.count("\n") == 1
    assert not Progress.line_open

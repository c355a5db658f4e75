"""TOML reading with errors that name the file and line (tomllib on 3.11+, tomli before)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from .errors import EnvshipError, Problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["load_toml", "loads_toml", "read_toml"]

_AT_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")


def loads_toml(text: str, where: str, error: type[EnvshipError] = EnvshipError) -> dict[str, Any]:
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        match = _AT_LINE.search(msg)
        loc = f"{where}:{match.group(1)}:{match.group(2)}" if match else where
        raise error(
            f"{where} is not valid TOML",
            problems=[Problem(loc, _AT_LINE.sub("", msg).strip())],
        ) from None


def read_toml(path: Path, error: type[EnvshipError] = EnvshipError) -> tuple[dict[str, Any], bytes]:
    """The table in ``path`` and the exact bytes it was parsed from, read once: a digest
    of what was parsed cannot come from a file replaced in between."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"cannot read {path}: {exc}") from None
    return loads_toml(text, str(path), error), raw


def load_toml(path: Path, error: type[EnvshipError] = EnvshipError) -> dict[str, Any]:
    return read_toml(path, error)[0]

"""A spec's ``[[indexes]]`` entries: :class:`IndexConfig` and the rules one must meet.

An index entry goes to uv and its URL into the lock; its credentials come from
environment variables uv derives from its name. The rules that follow (uv's name
characters, one URL per entry, no credentials in a URL, names that differ in their
``UV_INDEX_<KEY>_*`` key) stand apart from the rest of the spec, so they live here;
:mod:`envship.spec` re-exports :class:`IndexConfig` and :func:`index_key`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import Problem

__all__ = ["IndexConfig", "index_key", "parse_indexes"]

# uv refuses any other character in an index name (and so the whole lock). Both are
# used with fullmatch: "$" also matches before a final newline ("a\n" passed).
_INDEX_NAME = re.compile(r"[A-Za-z0-9._-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX_KEYS = {"name", "url", "default", "username-env", "password-env"}


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """A package index. Credentials are named by environment variable, never stored."""

    name: str
    url: str
    default: bool = False
    username_env: str | None = None
    password_env: str | None = None

    def to_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "url": self.url}
        if self.default:
            data["default"] = True
        if self.username_env:
            data["username-env"] = self.username_env
        if self.password_env:
            data["password-env"] = self.password_env
        return data


def index_key(name: str) -> str:
    """The part of uv's ``UV_INDEX_<KEY>_USERNAME`` / ``_PASSWORD`` variables an index name
    gives (upper case, anything else an underscore): two indexes with one key would read
    each other's credentials, so names must differ in it."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def _index(value: object, where: str, problems: list[Problem]) -> IndexConfig | None:
    if not isinstance(value, dict):
        problems.append(Problem(where, "expected a table"))
        return None
    for key in sorted(set(value) - _INDEX_KEYS, key=str):  # str: a library caller's keys
        known = ", ".join(sorted(_INDEX_KEYS))
        problems.append(Problem(f"{where}.{key}", f"unknown key (keys here: {known})"))
    url = value.get("url")
    name = value.get("name", "")
    if not isinstance(url, str) or not url:
        problems.append(Problem(f"{where}.url", "required, a URL string"))
        return None
    if any(c.isspace() or not c.isprintable() for c in url):
        # e.g. a requirements.txt line "-i A --extra-index-url B" pasted whole: uv would
        # percent-encode the blanks and ask a server for a path that does not exist.
        problems.append(
            Problem(
                f"{where}.url",
                f"{url!r} contains whitespace or control characters; give one URL per "
                "[[indexes]] entry",
            )
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 address
        problems.append(Problem(f"{where}.url", f"invalid URL {url!r}: {exc}"))
        return None
    if parts.scheme not in ("http", "https", "file"):
        problems.append(Problem(f"{where}.url", f"unsupported scheme in {url!r}"))
    if parts.username or parts.password:
        problems.append(
            Problem(
                f"{where}.url",
                "credentials in the URL are not allowed (they would be written into the "
                "lock); use username-env/password-env or a netrc entry",
            )
        )
    named = True
    if name == "":
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", host).strip("-") or "index"
    elif not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
        problems.append(
            Problem(f"{where}.name", "expected letters, digits, '-', '_' or '.' (uv's rule)")
        )
        named = False
    envs: dict[str, str | None] = {}
    for key in ("username-env", "password-env"):
        val = value.get(key)
        if val is not None and not (isinstance(val, str) and _ENV_NAME.fullmatch(val)):
            problems.append(
                Problem(f"{where}.{key}", "expected an environment variable name, e.g. IDX_TOKEN")
            )
            val = None
        envs[key] = val
    default = value.get("default", False)
    if not isinstance(default, bool):
        problems.append(Problem(f"{where}.default", "expected true or false"))
        default = False
    if not named:
        return None
    assert isinstance(name, str)
    return IndexConfig(name, url, default, envs["username-env"], envs["password-env"])


def parse_indexes(value: object, problems: list[Problem]) -> list[IndexConfig]:
    """The spec's ``indexes`` array; each problem is added to ``problems`` with its key."""
    if not isinstance(value, list):
        problems.append(Problem("indexes", "expected an array of tables ([[indexes]])"))
        return []
    out: list[IndexConfig] = []
    seen: dict[str, int] = {}  # index_key -> position
    for i, raw in enumerate(value):
        idx = _index(raw, f"indexes[{i}]", problems)
        if idx is None:
            continue
        key = index_key(idx.name)
        if key in seen:
            j = seen[key]
            # uv refuses a repeated name; names equal but for case or punctuation would
            # share UV_INDEX_<KEY>_* credentials.
            problems.append(
                Problem(
                    f"indexes[{i}].name",
                    f"{idx.name!r} is also the name of indexes[{j}] (names must differ in "
                    f"more than case and punctuation: uv reads UV_INDEX_{key}_* for both)"
                    + ("" if isinstance(raw, dict) and raw.get("name") else "; set a name"),
                )
            )
        seen.setdefault(key, i)
        out.append(idx)
    if sum(i.default for i in out) > 1:
        problems.append(Problem("indexes", "at most one index may be the default"))
    return out

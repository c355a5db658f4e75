"""``uv pip install`` for ``envship add``: the command line, running it, and its failures.

uv is run with the spec's indexes (named, so it finds their credentials as ``envship
lock`` does) and ``--no-build`` unless the spec allows sdists. What the user's
environment would change is taken out, because ``envship add`` reads uv's output and
promises the lock's pins (each was seen to matter; issue 3, item 5):

* colour (``--color never``, ``NO_COLOR``; ``FORCE_COLOR`` and ``CLICOLOR_FORCE``, which
  every Jupyter kernel sets, made the dry-run plan unreadable) and ``COLUMNS`` (wraps
  the resolver's explanation mid-sentence) and ``RUST_LOG`` (tracing in the output);
* ``UV_OVERRIDE`` and ``UV_EXCLUDE``, which rewrite or remove what packages require
  of locked ones (with ``beta`` excluded, uv put ``kappa`` 2.0, which needs
  ``beta>=1.1``, beside the held ``beta`` 1.0), and ``UV_REQUIRE_HASHES``, which no
  request by name can satisfy (the next ``envship lock`` hashes what is added);
* the configuration of a project around the environment: uv runs in a folder holding an
  empty ``uv.toml``, so a ``[tool.uv]`` or ``uv.toml`` above the environment is not
  read, as ``envship lock`` runs uv in a project of its own (``UV_WORKING_DIR`` and
  ``UV_PROJECT``, which would move that search, are dropped). The user's and the
  system's uv configuration, and the variables naming indexes, apply as they do to
  ``envship lock``.

Its progress lines are passed on as they come. When it fails, its output is read for
what the user can act on: uv's network turned off (``UV_OFFLINE``), an index that
cannot be reached, a name the index does not have, a package without a wheel, or a
locked pin that blocks the request (named from uv's resolver explanation).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ._uv import plain_environment, uv_bin
from .errors import AddConflictError, AddError, EnvshipError, NetworkError, Problem
from .lock import uv_environment
from .spec import Spec

__all__ = ["AddConflictError", "AddError", "command", "failure", "planned", "run", "uv_lines"]

Log = Callable[[str], None]


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# uv's resolver explanation names our constraint as a bare ``name==version`` beside what
# needs something else: "Because you require beta>=1.1 and beta==1.0", "Because all
# versions of omega depend on beta>=1.1 and beta==1.0", "Because kappa>=2.0 depends on
# beta>=1.1 and beta==1.0".
_PIN_CONFLICT = re.compile(
    rf"(?:you require|(?:all versions of )?(?P<dep>{_NAME})\S* depends? on) "
    rf"(?P<need>{_NAME}\S*) and (?P<pin>{_NAME})==(?P<ver>[^\s,]+)"
)
_PINNED = re.compile(rf"(?P<pin>{_NAME})==(?P<ver>[^\s,;]+)")
_YOU_REQUIRE = re.compile(rf"you require (?P<req>{_NAME})")
_NOT_FOUND = re.compile(rf"(?P<name>{_NAME}) was not found in the package registry")
_NETWORK = re.compile(
    r"Failed to fetch|error sending request|Could not connect|dns error|tcp connect error"
)
# uv with its network turned off (UV_OFFLINE, or `offline = true` in its configuration)
# reads only its cache, and says so in one of these (uv 0.13): "hint: Packages were
# unavailable because the network was disabled" when the resolver lacks an index page,
# "Network connectivity is disabled, but the requested data wasn't found in the cache:
# URL" when a file is missing (older uv: "... in the cache for: `URL`"), and "Remote Git
# fetches are not allowed because network connectivity is disabled".
_OFFLINE = re.compile(
    r"because the network was disabled|network connectivity is disabled", re.IGNORECASE
)
_NOT_CACHED = re.compile(
    rf"(?:Because (?P<name>{_NAME}) was not found in the cache"
    r"|wasn't found in the cache(?: for)?: `?(?P<url>[^\s`]+))"
)
_URL = re.compile(r"((?:https?|file)://[^\s`'\"()]+)")
_PLAN = re.compile(rf"^ (?P<op>[+-]) (?P<name>{_NAME})==(?P<ver>\S+)")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # should uv colour its output after all
_PLAN_COUNT = re.compile(r"^Would (?P<what>install|uninstall) (?P<n>\d+) packages?\b")

# Taken out of uv's environment (see the module's docstring for why each one), besides
# what colours or wraps its output (`_uv.plain_environment`).
_DROPPED = (
    "RUST_LOG",
    "UV_OVERRIDE",
    "UV_EXCLUDE",
    "UV_REQUIRE_HASHES",
    "UV_WORKING_DIR",
    "UV_PROJECT",
)


def _local(where: str) -> str:
    """A path given on the command line, made absolute: uv runs in a folder of its own.
    URLs stay as they are."""
    return where if "://" in where else os.path.abspath(where)


def _index_args(
    spec: Spec, index_url: str | None, extra_index_urls: Sequence[str], find_links: Sequence[str]
) -> list[str]:
    """The spec's indexes (named, so uv finds credentials as `envship lock` does) and
    the command line's: ``index_url`` takes the place of the spec's default index."""
    args: list[str] = []
    for idx in spec.indexes:
        if idx.default and index_url:
            continue
        args += ["--default-index" if idx.default else "--index", f"{idx.name}={idx.url}"]
    if index_url:
        args += ["--default-index", _local(index_url)]
    for url in extra_index_urls:
        args += ["--index", _local(url)]
    for link in find_links:
        args += ["--find-links", _local(link)]
    return args


def command(
    python: Path,
    spec: Spec,
    *,
    index_url: str | None = None,
    extra_index_urls: Sequence[str] = (),
    find_links: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """``uv pip install`` into the environment of ``python`` (constraints and requirements
    still to be appended), and the process environment to run it in."""
    args = [uv_bin(), "--color", "never", "pip", "install", "--python", str(python)]
    args += _index_args(spec, index_url, extra_index_urls, find_links)
    if not spec.allow_sdist:
        args.append("--no-build")  # as in `envship lock`: resolving must not run code
    return args, plain_environment(uv_environment(spec), _DROPPED)


def run(args: Sequence[str], cwd: Path, env: Mapping[str, str], say: Log) -> tuple[int, str]:
    """Run uv in ``cwd``, passing its progress lines on as they come (up to its error,
    which the raised exception carries), and return its exit code and full output."""
    # An empty uv.toml ends uv's search for project configuration here.
    (cwd / "uv.toml").write_text("", encoding="utf-8")
    proc = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    failing = False
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = _ANSI.sub("", raw.rstrip("\n"))
            lines.append(line)
            failing = failing or line.startswith("error:")
            if not failing and line.strip() and not line.startswith("Using Python"):
                say(line.rstrip())
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return code, "\n".join(lines)


def planned(out: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a ``--dry-run`` would install and remove, each as ``name==version``.

    uv's own counts are checked against the lines read: a plan that cannot be read is
    an error, never an empty plan (which the result would report as "already has").
    """
    lines = out.splitlines()
    found = [m for ln in lines if (m := _PLAN.match(ln))]
    # Named as PEP 503 normalizes them, as the lock does (and the result of a real run).
    installed = tuple(
        f"{canonicalize_name(m['name'])}=={m['ver']}" for m in found if m["op"] == "+"
    )
    removed = tuple(f"{canonicalize_name(m['name'])}=={m['ver']}" for m in found if m["op"] == "-")
    read = {"install": len(installed), "uninstall": len(removed)}
    for m in filter(None, map(_PLAN_COUNT.match, lines)):
        if int(m["n"]) != read[m["what"]]:
            raise AddError(
                f"cannot read uv's plan: it would {m['what']} {m['n']} packages, "
                f"{read[m['what']]} of them named in a form envship knows",
                problems=uv_lines(out),
                hint="nothing was changed; please report this with `uv --version`",
            )
    return installed, removed


def uv_lines(text: str) -> list[Problem]:
    keep = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in keep if not ln.startswith("Using Python")]
    return [Problem("uv", ln) for ln in keep[-12:]]


def _same(a: str, b: str) -> bool:
    return canonicalize_name(a) == canonicalize_name(b)


def _conflict(
    text: str,
    reqs: Sequence[Requirement],
    pins: Mapping[str, str],
    spec: Spec,
    install: str,
    why: Mapping[str, str],
) -> AddError | None:
    """Which locked pin blocks which requested requirement, from uv's explanation."""
    flat = " ".join(text.split())  # uv wraps its explanation at the terminal's width
    asked = [m["req"] for m in _YOU_REQUIRE.finditer(flat)]
    blocked = [str(r) for r in reqs if any(_same(r.name, a) for a in asked)] or [
        str(r) for r in reqs
    ]
    problems: list[Problem] = []
    blocking: list[str] = []
    for m in _PIN_CONFLICT.finditer(flat):
        pin = canonicalize_name(m["pin"])
        if pin not in pins or pin in blocking:
            continue
        who = next((str(r) for r in reqs if m["dep"] and _same(r.name, m["dep"])), None)
        where = who or ", ".join(blocked)
        through = f"{m['dep']} requires {m['need']}" if m["dep"] else f"asks for {m['need']}"
        locked = f"the lock pins {m['pin']}=={pins[pin]}{why.get(pin, '')}"
        problems.append(Problem(where, f"{through}; {locked}"))
        blocking.append(pin)
    if not problems:  # another phrasing: name the locked pins uv mentions
        for m in _PINNED.finditer(flat):
            pin = canonicalize_name(m["pin"])
            if pin in pins and pin not in blocking and not any(_same(r.name, pin) for r in reqs):
                locked = f"the locked {pin}=={pins[pin]}{why.get(pin, '')}"
                problems.append(Problem(", ".join(blocked), f"conflicts with {locked}"))
                blocking.append(pin)
    if not problems:
        return None
    flags = " ".join(f"-P {p}" for p in blocking)
    where = f" --spec {shlex.quote(str(spec.path))}" if spec.path is not None else ""
    return AddConflictError(
        f"cannot add {', '.join(blocked)}: it needs a locked package at another version",
        problems=[*problems, *uv_lines(text)],
        hint=f"envship add never moves a locked package. To let {', '.join(blocking)} move, "
        f"add the requirement to the spec's dependencies, then `envship lock {flags}{where}` "
        f"and {install}",
    )


def _offline(flat: str) -> NetworkError:
    """uv's network is turned off, and its cache lacks what the addition needs: the
    air-gapped user's case, whose way out is an index on this machine."""
    offline = os.environ.get("UV_OFFLINE", "").strip().lower()
    if offline in ("1", "true", "yes", "on", "y", "t"):
        why = f"UV_OFFLINE={os.environ['UV_OFFLINE']} turns uv's network access off"
    else:
        why = "uv's network access is turned off (`offline = true` in its configuration)"
    missing = _NOT_CACHED.search(flat)
    url = missing["url"] if missing and missing["url"] else "(the configured index)"
    what = missing["url"] or missing["name"] if missing else "what the addition needs"
    return NetworkError(
        f"cannot reach the package index: {why}",
        url=url,
        hint=f"uv then reads only its cache, which lacks {what}. Turn the network back on "
        "(unset UV_OFFLINE, or uv's `offline` setting), or add from an index this machine "
        "can read: `envship add NAME --index-url file://OUT/simple`, OUT being an "
        "`envship index export OUT` of a lock that holds NAME (or pass --find-links with "
        "a folder of wheels)",
    )


def failure(
    text: str,
    reqs: Sequence[Requirement],
    pins: Mapping[str, str],
    env: Path,
    spec: Spec,
    *,
    install: str,
    why: Mapping[str, str] | None = None,
) -> EnvshipError:
    """The error for uv's failed attempt to add ``reqs`` to ``env`` holding ``pins``
    (canonical name -> locked version), from uv's output ``text``. ``install``: the
    command (in backticks) that installs the lock ``envship lock`` makes again into
    ``env``; ``why``: what to add to "the lock pins NAME==VERSION" for a pinned package
    the environment does not have (locked for groups it was installed without)."""
    flat = " ".join(text.split())  # uv wraps its messages at the terminal's width
    if _OFFLINE.search(flat):
        return _offline(flat)
    if _NETWORK.search(flat):
        found = _URL.search(flat)
        url = found.group(1) if found else "(the configured index)"
        return NetworkError(
            f"cannot reach the package index: {url}",
            url=url,
            hint="check the spec's [[indexes]] (or --index-url), your network or proxy, "
            "and the index credentials' environment variables",
        )
    missing = _NOT_FOUND.search(flat)
    if missing:
        return AddError(
            f"{missing['name']} was not found on the package index",
            problems=uv_lines(text),
            hint="check the name, and the spec's [[indexes]] (or pass --index-url)",
        )
    if "has no usable wheels" in flat and not spec.allow_sdist:
        return AddError(
            "a requested package has no wheel for this environment",
            problems=uv_lines(text),
            hint="allow-sdist = true in the spec permits building it (that runs its code)",
        )
    conflict = _conflict(text, reqs, pins, spec, install, why or {})
    if conflict is not None:
        return conflict
    return AddError(
        f"uv could not add {', '.join(map(str, reqs))} to {env}", problems=uv_lines(text)
    )

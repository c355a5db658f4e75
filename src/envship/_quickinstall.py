"""``envship install`` of a new environment from a plan remembered on this machine: uv
starts before anything but ``os`` is imported.

Issue 3 asks install to cost at most 1.1x ``uv venv`` + ``uv pip install`` of the same
wheels. The full path cannot: before uv runs it imports click, packaging and the lock
model (~90 ms here), parses the lock and probes the interpreter, against ~210 ms of
uv's own work on the data-science set. So after the full path *created* an environment,
the CLI remembers what it decided, in a plan (:mod:`envship._quickplan`: where plans are
kept, what keys them, what they hold).

A later ``envship install PATH`` with the same key and a new PATH (missing, or an empty
folder) takes the plan (:func:`run`). It checks that the store still holds every
artifact under its real name as a hard link of its content, of the locked size, takes
PATH's lock without waiting, and runs the full path's steps in the full path's order:
the incomplete mark, ``uv venv``, the marker saying how to repeat the run, the record of
the venv's files, ``uv pip sync --require-hashes`` of the same lines, the final marker,
the mark removed. While uv installs, it confirms what ``os.stat`` cannot: the lock's
bytes hash to the plan's digest (an edit within a file system's timestamp granularity,
a second or two on some network and FAT mounts, keeps size and times), the lock's path
is spelled as the marker records it, the GPU answer is the plan's, and the marker it
will write passes the check every reader of markers applies. Anything it does not
expect (an option it does not take, an environment already there, no plan, a plan that
does not parse, a store without its links, a busy PATH, a failed confirmation, a uv
failure) hands the run to the full path, before anything is made or after the new
environment is discarded as a failed new install is: every error the user sees is the
full path's.

One difference, on purpose: uv is started with ``posix_spawn``, which takes no pre-exec
hook, so it is not killed with envship by ``PR_SET_PDEATHSIG``. SIGTERM and Ctrl-C kill it
and discard the environment; after a SIGKILL it finishes (in under a second on the
data-science set) holding PATH's lock, which it inherited, so the next run waits for it
and then makes the half-made PATH again, as after a killed full path.
"""

from __future__ import annotations

import os
import stat
import sys
import time

from ._envfiles import (
    FILES_KEY,
    INCOMPLETE_NAME,
    LINK_MODES,
    LINKS_KEY,
    MARKER_FORMAT,
    MARKER_NAME,
    RECORDS_KEY,
    REINSTALLING,
    STORE_KEY,
    WORK_SUFFIX,
    record_digests,
    venv_digests,
    venv_snapshot,
    write_marker_file,
)
from ._quickplan import (
    Plan,
    executable,
    native,
    plan_key,
    read_plan,
    requirements,
    store_holds,
    store_place,
    venv_version,
)
from ._uvargs import plain_environment, sync_command, venv_command

# Not ``typing.TYPE_CHECKING``: importing typing costs the quick path of ``envship
# install`` ~7 ms before uv starts; type checkers take the name alone (mypy, pyright).
TYPE_CHECKING = False
if TYPE_CHECKING:  # at run time only where they are used
    from collections.abc import Sequence
    from typing import Any

__all__ = ["run", "summary_text"]

_VALUE_OPTIONS = ("--lock", "--store", "--python", "--target", "--link-mode")


class _Fallback(Exception):
    """The quick path does not take this run: the full path does it all."""


class _Asked:
    """The options of one ``envship install`` (a plain class: dataclasses cost ~8 ms)."""

    __slots__ = (
        "as_json",
        "compile_bytecode",
        "dest",
        "groups",
        "link_mode",
        "lock",
        "python",
        "store",
        "target",
    )

    def __init__(
        self,
        *,
        dest: str,
        lock: str,
        store: str | None,
        python: str | None,
        target: str | None,
        groups: tuple[str, ...] | None,
        compile_bytecode: bool,
        link_mode: str | None,
        as_json: bool,
    ) -> None:
        self.dest, self.lock, self.store, self.python = dest, lock, store, python
        self.target, self.groups = target, groups
        self.compile_bytecode, self.link_mode, self.as_json = compile_bytecode, link_mode, as_json


def _parse(argv: Sequence[str]) -> _Asked | None:
    """``[--json] install PATH [options]`` with only the options install takes, each
    given once; None for anything else (help, a typo, ``--``: click's to answer)."""
    args = list(argv)
    as_json = args[:1] == ["--json"]
    if as_json:
        args = args[1:]
    if args[:1] != ["install"]:
        return None
    values: dict[str, str] = {}
    groups: list[str] = []
    flags: set[str] = set()
    dests: list[str] = []
    rest = args[1:]
    while rest:
        token = rest.pop(0)
        name, eq, value = token.partition("=")
        if name in (*_VALUE_OPTIONS, "--group"):
            if not eq:
                if not rest:
                    return None
                value = rest.pop(0)
            if not value or value.startswith("-") or name in values:
                return None
            if name == "--group":
                groups.append(value)
            else:
                values[name] = value
        elif token in ("--compile", "--no-groups", "--json"):
            flags.add(token)
        elif token.startswith("-") or not token:
            return None
        else:
            dests.append(token)
    if len(dests) != 1 or ("--no-groups" in flags and groups):
        return None
    if values.get("--link-mode", "hardlink") not in LINK_MODES:
        return None
    return _Asked(
        dest=dests[0],
        lock=values.get("--lock", "pylock.toml"),
        store=values.get("--store") or os.environ.get("ENVSHIP_STORE") or None,
        python=values.get("--python"),
        target=values.get("--target"),
        groups=() if "--no-groups" in flags else (tuple(groups) or None),
        compile_bytecode="--compile" in flags,
        link_mode=values.get("--link-mode"),
        as_json=as_json or "--json" in flags,
    )


def run(argv: Sequence[str]) -> int | None:
    """Run ``envship ARGV`` here when it is an install the quick path takes: the exit
    code; None when the full path is to run it (nothing made, or what was made is gone).
    KeyboardInterrupt (Ctrl-C, SIGTERM through the entry point's handler) after uv was
    killed and the new environment discarded."""
    started = time.monotonic()
    asked = _parse(argv)
    if asked is None or sys.platform != "linux":
        return None
    try:
        return _take(asked, started)
    except _Fallback:
        return None


def _base(python: str | None) -> str | None:
    """The base interpreter as the full path resolves it (``shutil.which``, made
    absolute); None for a bare name, which needs a search of PATH (the full path's)."""
    exe = python if python is not None else sys.executable
    if "/" not in exe or not executable(exe):
        return None
    return os.path.abspath(exe)


def _new(dest: str) -> str | None:
    """``missing`` or ``empty`` (``env_state``'s names), else None: everything else, a
    link included, is the full path's to judge."""
    if not os.path.lexists(dest):
        return "missing"
    if os.path.isdir(dest) and not os.path.islink(dest) and not os.listdir(dest):
        return "empty"
    return None


def _other_place(dest: str) -> bool:
    """Where the full path refuses or shares (a version under an env root, its
    ``current``), or a folder shared with its group (the full path makes its work folder
    group-writable there): not the quick path's."""
    if os.path.basename(dest) == "current":
        return True
    if os.path.basename(os.path.dirname(os.path.realpath(dest))) == "versions":
        return True
    try:
        mode = os.stat(os.path.dirname(dest)).st_mode
    except OSError:
        return True
    return not stat.S_ISDIR(mode) or bool(mode & stat.S_ISGID and mode & stat.S_IWGRP)


def _lock(work: str) -> int | None:
    """The work folder's lock held (as ``envship._flock.acquire`` takes it), or None
    when it is busy or cannot be taken: the full path waits, or says why."""
    import fcntl

    path = os.path.join(work, "lock")
    try:
        os.makedirs(work, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not removed while we took it
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _take(asked: _Asked, started: float) -> int | None:
    dest = os.path.abspath(asked.dest)
    base = _base(asked.python)
    if base is None or not native(base) or _new(dest) is None or _other_place(dest):
        return None
    lock = os.path.abspath(asked.lock)
    store = store_place(asked.store)
    try:
        name, key = plan_key(lock, store, base, asked.target, asked.groups)
    except OSError:
        return None
    plan = read_plan(name, key, store)
    if plan is None or not executable(plan.uv) or not store_holds(plan):
        return None
    work = dest + WORK_SUFFIX
    fd = _lock(work)
    if fd is None:
        return None
    try:
        state = _new(dest)  # again, now that we hold the lock
        if state is None:
            return None
        doc = _install(asked, dest, work, fd, state == "missing", plan, base, lock)
        import contextlib

        with contextlib.suppress(OSError):
            os.utime(plan.path)  # used: kept from pruning (envship._quickplan)
    finally:
        import shutil  # removed while still locked, as the full path does

        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)
    doc["seconds"] = round(time.monotonic() - started, 3)
    return _report(doc, asked.as_json)


def _spawn(command: list[str], env: dict[str, str], kept: tuple[int, ...]) -> int:
    """Start uv with no input and its output dropped: on a failure the full path runs
    it again and reports uv's own words."""
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # As subprocess's close_fds: uv gets no descriptor of ours but the lock's (made
    # inheritable for it), never a pipe or a file a caller left open to us.
    keep = {0, 1, 2, *kept}
    for name in os.listdir("/proc/self/fd"):
        if name.isdigit() and int(name) not in keep:
            actions.append((os.POSIX_SPAWN_CLOSE, int(name)))
    return os.posix_spawn(command[0], command, env, file_actions=actions)


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _install(
    asked: _Asked,
    dest: str,
    work: str,
    fd: int,
    made: bool,
    plan: Plan,
    base: str,
    lock: str,
) -> dict[str, Any]:
    """The full path's steps for a new environment (envship.install), with the plan's
    decisions; the result as ``InstallResult.to_json`` has it."""
    pid = 0
    incomplete = os.path.join(dest, INCOMPLETE_NAME)
    try:
        if made:
            os.mkdir(dest)
        with open(incomplete, "w", encoding="utf-8") as f:
            f.write("install in progress\n")
        env = plain_environment(os.environ)
        os.set_inheritable(fd, True)  # uv holds the lock too, for as long as it runs
        pid = _spawn(venv_command(plan.uv, base, dest), env, (fd,))
        # While uv makes the venv: what the marker says from now on (how to repeat this).
        import json

        template: dict[str, Any] = json.loads(plan.marker)
        if template.get("format") != MARKER_FORMAT:
            raise _Fallback
        per_run: dict[str, Any] = {"compiled": asked.compile_bytecode, STORE_KEY: plan.store}
        if asked.link_mode is not None:
            per_run["link_mode"] = asked.link_mode
        marker = os.path.join(dest, MARKER_NAME)
        write_marker_file(marker, {**template, **per_run, REINSTALLING: False})
        lines = requirements(plan, template["packages"])  # ValueError: not the plan's
        code, pid = _wait(pid), 0
        # The interpreter uv ran must be the plan's (one that picks its Python per run,
        # or one replaced since the plan was made, is not).
        if code != 0 or venv_version(dest) != template["python"]["version"]:
            raise _Fallback
        snapshot = venv_snapshot(dest)  # what the venv's creation wrote, before the sync
        reqs = os.path.join(work, "requirements.txt")
        with open(reqs, "w", encoding="utf-8") as f:
            f.write(lines)
        python = os.path.join(dest, "bin", "python")
        sync = sync_command(
            plan.uv,
            python,
            reqs,
            no_build=True,  # a plan is remembered for wheels alone
            compile_bytecode=asked.compile_bytecode,
            link_mode=asked.link_mode,
        )
        pid = _spawn(sync, env, (fd,))
        # While uv installs: what the key cannot tell, and the report, which must find its
        # keys in the marker. No more: uv works on both of this machine's cores, and every
        # millisecond spent here is one uv waits for (envship._markerread's full check,
        # with the lock model it imports, cost uv ~30 ms; the plan passed that check when
        # it was written, and only its owner can write it since).
        _confirm(asked.lock, lock, plan, template)
        files, links = venv_digests(snapshot)
        final = {**template, **per_run, FILES_KEY: files, LINKS_KEY: links}
        doc = _result(dest, python, template)
        code, pid = _wait(pid), 0
        if code != 0:
            raise _Fallback
        final[RECORDS_KEY] = record_digests(dest, str(template["target"]["python"]))
        write_marker_file(marker, final)
        os.unlink(incomplete)
    except BaseException as exc:
        _clean_up(pid, dest, work, made)
        if isinstance(exc, Exception):
            raise _Fallback from exc
        raise
    return doc


def _clean_up(pid: int, dest: str, work: str, made: bool) -> None:
    """Stop uv and discard the new environment, as a failed new install is (its folder
    renamed aside and removed, or emptied if it was given), with Ctrl-C and SIGTERM held
    until it is done: a second one must not leave it half removed. Delivered after."""
    import signal  # imported already (the entry point's handler): nothing to cut short

    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        # Imported while uv installed, unless the failure came before: held signals
        # cannot cut this import short either.
        import contextlib
        from pathlib import Path

        from ._installmarker import discard

        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        # What is left if this fails is still marked incomplete: the next run makes it.
        with contextlib.suppress(OSError):
            discard(Path(dest), Path(work) / "discarded", keep_folder=not made)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)


def _result(dest: str, python: str, template: dict[str, Any]) -> dict[str, Any]:
    """What ``InstallResult.to_json`` says of a new environment (``seconds`` aside); a
    KeyError or TypeError for a marker without what the report reads."""
    after = {str(p["name"]): str(p["version"]) for p in template["packages"]}
    if not isinstance(template["target"]["name"], str) or not template["lock"]["digest"]:
        raise TypeError("not the marker of a plan")
    return {
        "dest": dest,
        "python": python,
        "target": template["target"],
        "lock_digest": template["lock"]["digest"],
        "groups": template["groups"],
        "action": "created",
        "changed": True,
        "packages": template["packages"],
        "installed": [f"{n}=={v}" for n, v in after.items()],
        "removed": [],
    }


def _confirm(asked_lock: str, lock: str, plan: Plan, template: dict[str, Any]) -> None:
    """What the key cannot tell by ``os.stat``: the lock's bytes are the plan's (its
    digest), the marker's spelling of the lock's path is this run's (``Path.absolute``
    keeps ``..``), and the GPU answer is the plan's."""
    import hashlib
    from pathlib import Path

    from ._gpu import has_gpu

    with open(lock, "rb") as f:
        digest = f"sha256:{hashlib.sha256(f.read()).hexdigest()}"
    recorded = template["lock"]
    if digest != recorded["digest"] or str(Path(asked_lock).absolute()) != recorded["path"]:
        raise _Fallback
    if has_gpu() != plan.gpu:
        raise _Fallback


def summary_text(
    action: str,
    dest: str,
    count: int,
    target: str,
    seconds: float,
    installed: Sequence[str],
    removed: Sequence[str],
) -> str:
    """What ``envship install`` prints without ``--json``."""
    what = f"{count} package{'s' if count != 1 else ''}, target {target}"
    if action == "unchanged":
        return f"{dest} is up to date ({what})"
    lines = [f"{action} {dest} ({what}) in {seconds:.1f}s"]
    # By name, the old version just above the new one (as uv prints them): "- attrs==23.1.0"
    # then "+ attrs==22.2.0" reads as the downgrade it is.
    changes = [(p.split("==")[0], 1, f"  + {p}") for p in installed]
    changes += [(p.split("==")[0], 0, f"  - {p}") for p in removed]
    lines += [line for _, _, line in sorted(changes)]
    return "\n".join(lines)


def _report(doc: dict[str, Any], as_json: bool) -> int:
    import json

    if as_json:
        text = json.dumps(doc, indent=2, sort_keys=True)
    else:
        text = summary_text(
            "created",
            doc["dest"],
            len(doc["packages"]),
            doc["target"]["name"],  # a string: _result saw it
            doc["seconds"],
            doc["installed"],
            doc["removed"],
        )
    try:
        print(text, flush=True)
    except OSError as exc:  # a full disk, a closed pipe: the environment is made anyway
        from .cli._common import reset_json
        from .cli.main import os_error

        reset_json(as_json)
        return os_error(exc)  # said as the full path says it
    return 0

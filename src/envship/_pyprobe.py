"""One probe for every question envship asks a Python interpreter it does not run in.

Choosing a lock target (:mod:`envship.host`), finding an environment's site-packages
(:mod:`envship._environment`) and evaluating a requirement's markers for ``envship add``
(:mod:`envship._addspec`) all need facts only the interpreter itself can give. One
script answers all three, run as ``python -I -S``:

- ``-I``: no ``PYTHON*`` variables, no user site, no script folder on ``sys.path``;
- ``-S``: no ``site``. Importing ``site`` executes every ``.pth`` file in the
  environment's site-packages (``site.addpackage``), that is, code of the environment
  being checked or installed into. What ``site.venv()`` would do is done by the script
  instead: a ``pyvenv.cfg`` beside the executable or one folder up makes the
  executable's parent's parent the prefix, and sysconfig's paths for that prefix are the
  site-packages.

The script is kept compatible with old Pythons (no f-strings, no walrus): the
interpreter may be a system 3.6 that we only want to refuse with a clear reason. It is
given on standard input (``python -I -S -``), so a program that is no Python never has
it among its arguments to print back, and what such a program says is read up to a
bound and cut to a line: it is named as no interpreter, briefly.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import signal
import subprocess
import time
from typing import Any

__all__ = ["ProbeFailure", "facts_here", "facts_of"]

_FACTS = r"""
import os, platform, sys, sysconfig
def facts():
    glibc = None
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
        if text.startswith("glibc "):
            glibc = text.split(" ", 1)[1]
    except (AttributeError, ValueError, OSError):
        pass
    if glibc is None:
        lib, ver = platform.libc_ver()
        if lib == "glibc" and ver:
            glibc = ver
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    config = venv = None
    for folder in (exe_dir, os.path.dirname(exe_dir)):
        if os.path.isfile(os.path.join(folder, "pyvenv.cfg")):
            config = os.path.join(folder, "pyvenv.cfg")
            venv = os.path.dirname(exe_dir)
            break
    if venv is None:
        paths = sysconfig.get_paths()
    else:
        scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
        paths = sysconfig.get_paths(scheme, vars={"base": venv, "platbase": venv})
    impl = getattr(sys, "implementation", None)
    name = impl.name if impl else platform.python_implementation().lower()
    impl_version = platform.python_version()
    if impl:
        v = impl.version
        impl_version = "%d.%d.%d" % (v.major, v.minor, v.micro)
        if v.releaselevel != "final":
            impl_version += v.releaselevel[0] + str(v.serial)
    return {
        "executable": sys.executable,
        "version": list(sys.version_info[:3]),
        "implementation": name,
        "sys_platform": sys.platform,
        "machine": platform.machine(),
        "glibc": glibc,
        "prefix": venv or sys.prefix,
        "base_prefix": getattr(sys, "base_prefix", sys.prefix),
        "purelib": paths["purelib"],
        "platlib": paths["platlib"],
        "venv": venv,
        "config": config,
        # PEP 508's marker variables, as packaging.markers.default_environment() has them.
        "markers": {
            "implementation_name": name,
            "implementation_version": impl_version,
            "os_name": os.name,
            "platform_machine": platform.machine(),
            "platform_release": platform.release(),
            "platform_system": platform.system(),
            "platform_version": platform.version(),
            "python_full_version": platform.python_version(),
            "platform_python_implementation": platform.python_implementation(),
            "python_version": ".".join(platform.python_version_tuple()[:2]),
            "sys_platform": sys.platform,
        },
    }
"""
_SCRIPT = _FACTS + "import json\nprint(json.dumps(facts()))\n"
# The facts are about 2 KB; a program that never stops printing (``yes``, named where an
# interpreter should be) would otherwise be read into memory until the timeout.
_MAX_OUTPUT = 1 << 20
_SAID = 200  # characters of what a program that is no Python said, in a failure


class ProbeFailure(Exception):
    """The interpreter could not be run (``ran`` False) or gave no answer (True).

    Each caller turns it into its own EnvshipError, in the words of its question.
    ``detail`` is short: the exit status and a line of what the program said.
    """

    def __init__(self, python: str, ran: bool, detail: str) -> None:
        super().__init__(python, ran, detail)
        self.python = python
        self.ran = ran
        self.detail = detail


def facts_here(executable: str) -> dict[str, Any]:
    """The facts computed in this process, by the script's own code.

    For the interpreter running envship, started as ``executable``: the caller makes
    sure that a child started that way would see what this process sees.
    """
    namespace: dict[str, Any] = {}
    exec(compile(_FACTS, "<envship interpreter probe>", "exec"), namespace)
    data: dict[str, Any] = namespace["facts"]()
    data["executable"] = executable  # what the child would report as its sys.executable
    return data


def facts_of(python: str, *, timeout: float = 60) -> dict[str, Any]:
    """The facts from running ``python -I -S -``; ProbeFailure when there are none.

    The script goes in on standard input, not as ``-c SCRIPT``: a program that is not
    Python then never has it among its arguments, and cannot print it back in its
    complaint (``ls: cannot access '...3 KB of script...'``)."""
    try:
        code, out, err = _run([python, "-I", "-S", "-"], _SCRIPT.encode(), timeout)
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:  # a file with execute bits the kernel cannot run
            raise ProbeFailure(python, True, f"not a program: {exc.strerror}") from None
        raise ProbeFailure(python, False, exc.strerror or str(exc)) from None
    if code is None:
        raise ProbeFailure(python, False, f"no answer within {timeout:g} s")
    try:
        data = json.loads(out) if code == 0 else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProbeFailure(python, True, _said(code, out, err))
    return data


def _said(code: int, out: bytes, err: bytes) -> str:
    """``exit status 2: ls: cannot access '-': No such file or directory``: how it ended
    and the last line it wrote (standard error first), cut short."""
    if len(out) + len(err) > _MAX_OUTPUT:
        how = f"printed more than {_MAX_OUTPUT} bytes"
    elif code < 0:
        how = f"killed by signal {-code}"
    else:
        how = f"exit status {code}" if code else "printed no facts"
    for stream in (err, out):
        lines = [s.strip() for s in stream.decode("utf-8", "replace").splitlines() if s.strip()]
        if lines:
            line = lines[-1] if len(lines[-1]) <= _SAID else lines[-1][: _SAID - 3] + "..."
            return f"{how}: {line}"
    return f"{how}, and no output"


def _run(argv: list[str], script: bytes, timeout: float) -> tuple[int | None, bytes, bytes]:
    """Run ``argv`` with ``script`` on its standard input: its exit status (None when it
    did not end within ``timeout``, then killed) and what it wrote, read up to
    :data:`_MAX_OUTPUT` bytes (then killed). OSError when it cannot be started."""
    deadline = time.monotonic() + timeout
    # A session of its own, so that what it started goes with it when it is killed (a
    # shell script's children keep its pipes open, and would outlive it).
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    streams: dict[int, bytearray] = {}
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        with contextlib.suppress(BrokenPipeError):  # a program that never reads it
            proc.stdin.write(script)  # a few KB: the pipe takes them without a reader
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        with selectors.DefaultSelector() as selector:
            for stream in (proc.stdout, proc.stderr):
                selector.register(stream, selectors.EVENT_READ)
                streams[stream.fileno()] = bytearray()
            while selector.get_map() and sum(map(len, streams.values())) <= _MAX_OUTPUT:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, b"", b""
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        streams[key.fd] += chunk
                    else:
                        selector.unregister(key.fileobj)
        out, err = bytes(streams[proc.stdout.fileno()]), bytes(streams[proc.stderr.fileno()])
        if len(out) + len(err) > _MAX_OUTPUT:
            _kill(proc)  # it may never stop: what it said is enough to refuse it
            return proc.wait(), out, err
        try:
            return proc.wait(max(deadline - time.monotonic(), 0)), out, err
        except subprocess.TimeoutExpired:
            return None, b"", b""
    finally:
        if proc.poll() is None:
            _kill(proc)
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to ``proc``'s session: it and whatever it started."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()

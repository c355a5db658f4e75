#!/bin/sh
""":"
# envship's kernel launcher: this one file is both a POSIX sh script and a Python module.
#
# kernel.json runs it as `/bin/sh LAUNCHER ENV/bin/python -f {connection_file}`. For sh
# the first line is the no-op `:`, and the lines below run up to `exec`, which never
# returns; for Python all of this is the module docstring.
#
# When ENV is a symlink (ROOT/NAME/current, which `envship env create` points at
# versions/KEY, or any chain of links ending there, relative or absolute), it is
# resolved here, through every level, once per start, and the version's own interpreter
# runs: its sys.prefix is then the immutable version, so a kernel started before
# `current` moves keeps importing from the version it started with instead of mixing
# two locks. `cd -P` and `pwd -P` are POSIX and give the physical folder (`readlink -f`
# is not POSIX; `readlink` serves only the message for a link to a removed version).
# The sh part also answers the one question Python cannot answer about itself: does
# the interpreter still exist here (a venv's bin/python links to the base interpreter
# of the image it was made in)? Then Python, in isolated mode, checks the rest, given
# the resolved ENV as its first argument.
py="$1"
shift
env=${py%/bin/python}
# What the kernel's kernel.json records in metadata.envship (envship writes it indented,
# one key a line): "lock_path", the lock the environment was made from when the kernel
# was registered, and, for a kernel on ROOT/NAME/current (or a link to it), "env_root",
# ROOT/NAME. Read only on a refusal. Status 2: a path JSON had to escape (named, not
# spelled, here).
recorded() {
    [ -r "${0%/*}/kernel.json" ] || return 1
    while IFS= read -r line; do
        case $line in
            "      \"$1\": \""*)
                v=${line#*\": \"}
                v=${v%,}
                v=${v%\"}
                case $v in *\\*|*\"*) return 2 ;; esac
                echo "$v"
                return 0 ;;
        esac
    done < "${0%/*}/kernel.json"
    return 1
}
# Whether the install marker is a regular file this user can read, not a link: sed
# would read a marker linked to /dev/zero for ever (`-f` follows links, `-L` sees them).
marker_file() {
    [ -f "$env/.envship-install.json" ] && [ ! -L "$env/.envship-install.json" ] \
        && [ -r "$env/.envship-install.json" ]
}
# What the environment's install marker records as "$2" in its table "$1" (envship
# writes the marker indented, one key a line); statuses as for `recorded`. sed finds the
# table: a marker lists every package, and sh's `read` may take a system call a byte.
marked() {
    marker_file || return 1
    sed -n '/^  "'"$1"'": {$/,/^  }/p' "$env/.envship-install.json" | {
        while IFS= read -r line; do
            case $line in
                "    \"$2\": \""*)
                    v=${line#*\": \"}
                    v=${v%,}
                    v=${v%\"}
                    case $v in *\\*|*\"*) exit 2 ;; esac
                    echo "$v"
                    exit 0 ;;
            esac
        done
        exit 1
    }
}
# ` --store STORE` when the marker records the store the environment's wheels came from
# (a key of its own, outside the tables `marked` reads): a command that installs from it
# must name it, as the kernel's environment may lack the ENVSHIP_STORE the user's has.
store_opt() {
    marker_file || return 0
    s=$(sed -n 's/^  "store": "//p' "$env/.envship-install.json")
    s=${s%,}
    s=${s%\"}
    case $s in ""|*\\*|*\"*) ;; *) echo " --store $s" ;; esac
}
# ` --group G` for each dependency group the marker records (a list, one item a line):
# without them, install takes every group of the lock.
groups_opt() {
    marker_file || return 0
    sed -n '/^  "groups": [[]$/,/^  []]/p' "$env/.envship-install.json" | {
        while IFS= read -r g; do
            case $g in '    "'*) ;; *) continue ;; esac
            g=${g#*\"}
            g=${g%,}
            g=${g%\"}
            case $g in *\\*|*\"*) ;; *) printf ' --group %s' "$g" ;; esac
        done
    }
    # Installed with none of its lock's groups (a line of its own: an empty list).
    if grep -q '^  "groups": [[]],$' "$env/.envship-install.json" \
        && grep -Eq '^dependency-groups = [[][[:space:]]*("|$)' "$lock" 2>/dev/null; then
        printf ' --no-groups'
    fi
}
# What a command that makes the environment again must repeat of how it was made.
made_opts() {
    groups_opt
    store_opt
}
# The lock to make the environment again from when it cannot tell itself (it is gone, or
# its marker is unreadable): the one recorded at registration, else a placeholder.
recorded_lock() {
    l=$(recorded lock_path) && [ -n "$l" ] || l=LOCK
    echo "$l"
}
# When a kernel's ROOT/NAME is gone or moved, the fix is `envship env create`, never
# `envship install`, which would put a plain venv where the root's `current` link belongs.
root_fix() {
    r=$(recorded env_root)
    case $? in
        0) ;;
        2)
            echo "envship env create NAME --root ROOT --lock $(recorded_lock) (ROOT/NAME as" \
                "metadata.envship.env_root in ${0%/*}/kernel.json names it)"
            return 0 ;;
        *) return 1 ;;
    esac
    case $r in /?*) ;; *) return 1 ;; esac
    echo "envship env create ${r##*/} --root ${r%/*} --lock $(recorded_lock) (or, if the" \
        "root now lives elsewhere, register the kernel there: envship kernel" \
        "install NEW_ROOT/${r##*/}/current)"
}
# The folder nearest the top on the way to $1 (a path under it) that this user may not
# enter: a version or root another user made under a private umask (077), a base
# interpreter under a private home. What lies behind it is there, not gone.
closed() {
    c=
    p=$1
    while p=${p%/*} && [ -n "$p" ]; do
        if [ -d "$p" ] && [ ! -x "$p" ]; then c=$p; fi
    done
    [ -n "$c" ] && echo "$c"
}
# Refuse, naming the closed folder $2, its owner and mode (ls -ld is POSIX), and what its
# owner can do; $1 is what cannot be used. Exits.
denied() {
    set -- "$1" "$2" $(ls -ld "$2" 2>/dev/null)
    echo "envship: permission denied: $1 cannot be read by uid $(id -u) ($(id -un))" >&2
    echo "  - $2: permission denied to uid $(id -u); owned by ${5:-?}, mode ${3:-?}" >&2
    echo "envship: $fix" >&2
    exit 1
}
if [ -L "$env" ]; then
    if real=$(cd -P "$env" 2>/dev/null && pwd -P); then
        env=$real
        py=$env/bin/python
    else
        # Follow the chain by hand to name what is gone (env gc removed the version).
        gone=$env
        i=0
        while [ -L "$gone" ] && [ $i -lt 40 ] && link=$(readlink "$gone" 2>/dev/null); do
            case $link in
                /*) gone=$link ;;
                *) gone=${gone%/*}/$link ;;
            esac
            i=$((i + 1))
        done
        if c=$(closed "$gone/bin/python"); then
            fix="ask its owner to make it readable by every user: chmod -R a+rX $c"
            denied "the environment $env (a link to $gone)" "$c"
        fi
        if [ -e "$gone" ]; then
            echo "envship: the environment $env (a link to $gone) cannot be entered here." >&2
            exit 1
        fi
        echo "envship: the environment $env is a link to $gone, which is gone." >&2
        case $gone in
            */versions/*)
                n=${gone%/versions/*}
                fix="make it again (the same lock makes the same version and points current at it):"
                fix="$fix envship env create ${n##*/} --root ${n%/*} --lock $(recorded_lock)" ;;
            *)
                if shared=$(root_fix); then
                    fix="make it again (the same lock makes the same version): $shared"
                else
                    fix="make the environment again: envship install $gone --lock $(recorded_lock)"
                fi ;;
        esac
        echo "envship: $fix" >&2
        exit 1
    fi
fi
if [ ! -x "$py" ] && c=$(closed "$py"); then
    fix="ask its owner to make it readable by every user: chmod -R a+rX $c"
    denied "the environment $env" "$c"
fi
if [ ! -x "$py" ] && [ -L "$py" ] && base=$(readlink "$py"); then
    case $base in /*) ;; *) base=$env/bin/$base ;; esac
    if c=$(closed "$base"); then
        case $env in
            */versions/*)
                n=${env%/versions/*}
                fix="make it again with a base interpreter every user can run: envship env"
                fix="$fix create ${n##*/} --root ${n%/*} --lock $(recorded_lock) --python PY" ;;
            *) fix="make it again with a base interpreter every user can run: envship install"
                fix="$fix NEW_DIR --lock $(recorded_lock) --python PY" ;;
        esac
        fix="$fix (PY outside a private home, such as /usr/bin/python3)"
        denied "the interpreter $py (a link to $base)" "$c"
    fi
fi
if [ ! -x "$py" ]; then
    make="make a version for this machine:"
    if [ -d "$env" ]; then
        echo "envship: the environment's interpreter $py is missing or cannot run here." >&2
    else
        echo "envship: the environment $env is gone." >&2
        make="make it again (the same lock makes the same version):"
    fi
    # The lock it was made from, as its install marker records it, else as the
    # kernelspec does.
    lock=$(marked lock path) && [ -n "$lock" ] || lock=$(recorded_lock)
    case $env in
        */versions/*)
            n=${env%/versions/*}
            fix="$make envship env create ${n##*/} --root ${n%/*} --lock $lock$(made_opts)" ;;
        *)
            if [ ! -d "$env" ] && shared=$(root_fix); then
                fix="$make $shared"
            else
                fix="make the environment again on this machine: envship install $env --lock"
                fix="$fix $lock$(made_opts)"
            fi ;;
    esac
    echo "envship: $fix" >&2
    exit 1
fi
# The interpreter the environment was made with, as its marker records the link (a
# marker from before `venv_links` records none: not compared). bin/python relinked to
# another build of its X.Y, or to another X.Y, runs the environment's compiled bits on an
# interpreter they were not made for (a start dies on "No module named
# '_posixsubprocess'"), and Python's checks would run on it and blame this machine: it is
# refused here, before it runs. Compared as the files the links end at (`-ef`, POSIX
# 2024, where the shell has it), as `envship install` and `env create` judge a relinked
# interpreter, so their command repairs it. One made with an interpreter this machine
# lacks is judged by what it runs, as before (neither calls that relink a change: the
# base is this machine's lack); a half-installed one is left to Python's check.
if [ ! -e "$env/.envship-incomplete" ] && made=$(marked venv_links bin/python); then
    case $made in /*) base=$made ;; *) base=$env/bin/$made ;; esac
    if [ -e "$base" ] && [ "$py" -ef "$py" ] 2>/dev/null && ! [ "$py" -ef "$base" ]; then
        now="a file"
        [ -L "$py" ] && now="a link to $(readlink "$py")"
        name=$(recorded kernel_name) || name="?"
        echo "envship: kernel '$name' cannot start: the environment $env was changed since" \
            "it was made: its interpreter bin/python is now $now; it was made with $made" >&2
        echo "  - $py is $now, not the link to $made its install record names" >&2
        lock=$(marked lock path) && [ -n "$lock" ] || lock=$(recorded_lock)
        n=${env%/versions/*}
        if [ "$n" != "$env" ] && [ -d "$n/.locks" ]; then
            # On the base it was made with: the same version, repaired in place.
            was=$(marked python base) && [ -e "$was" ] && was=" --python $was" || was=
            fix="make the version again (env create repairs it in place): envship env"
            fix="$fix create ${n##*/} --root ${n%/*} --lock $lock$was$(made_opts)"
        else
            fix="make it again from its lock: envship install $env --lock $lock$(made_opts)"
        fi
        echo "envship: $fix" >&2
        exit 1
    fi
fi
exec "$py" -I "$0" "$env" "$@"
"""

# The Python part runs in isolated mode (-I) with nothing but the standard library,
# because envship itself is not installed in the environment. It checks that this
# machine can run the bits the environment holds, using the environment's own install
# marker (read at every start, so a version `current` now names, or an environment
# installed again from another lock, is judged by what it is, not by what it was when
# the kernel was registered), then execs ipykernel the way ipykernel's own kernelspec
# does (``python -m ipykernel_launcher -f {connection_file}``). The kernelspec's
# ``metadata.envship`` (the Jupyter kernelspec docs reserve that field for such data:
# https://jupyter-client.readthedocs.io/en/stable/kernels.html#kernel-specs) gives the
# kernel's name for messages. It stays compatible with Python 3.7 so that an
# environment whose base interpreter was swapped for an older one is rejected with a
# reason rather than a syntax error.
#
# A version under an environment root gets its use stamp (``.envship-used``) touched at
# every start, so `envship env gc` sees kernels as use; a root mounted read-only only
# loses the stamp, never the start.
#
# When the kernelspec holds envship's notebook magic (``envship_magic.py``, a copy of
# ``envship._magic``, standard library only), the launcher does not exec ``-m
# ipykernel_launcher`` but a few lines that preload that file as the module
# ``envship_magic``, ask ipykernel to load it as an extension, and then run
# ``ipykernel_launcher`` exactly as ``-m`` would (``runpy``, as ``__main__``). The
# environment, ``sys.path`` and ``PYTHONPATH`` stay untouched, so nothing of it leaks
# into the notebook's imports, its subprocesses or ``envship verify``.

from __future__ import annotations

import json
import os
import sys

# Every kernel start pays for what this module imports: typing, shutil, platform and
# contextlib cost about 20 ms together here, so they are left out or imported lazily.
MYPY = False
if MYPY:  # true for type checkers only (mypy reads MYPY like TYPE_CHECKING)
    from typing import Any

__all__ = [
    "CHECK_FLAG",
    "FACTS_FILE",
    "MAGIC_FILE",
    "NO_KERNEL",
    "USED_FILE",
    "check",
    "examine",
    "host_glibc",
    "host_machine",
    "kernel_remedy",
    "made_options",
    "remade",
    "load_facts",
    "lock_targets",
    "main",
    "missing_kernel",
    "remedy",
    "report",
    "stamp_use",
]

FACTS_FILE = "kernel.json"
MAGIC_FILE = "envship_magic.py"
USED_FILE = ".envship-used"  # _envroot.USED_NAME: its mtime is a version's last use
CHECK_FLAG = "--envship-check"  # check, say the verdict, start nothing, stamp nothing
# The command line after `python -c`: BOOT, the magic's path, then ipykernel's arguments.
_BOOT = r"""
import importlib.util, runpy, sys
path = sys.argv.pop(1)
try:
    spec = importlib.util.spec_from_file_location("envship_magic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
except Exception as exc:
    sys.stderr.write("envship: the %%envship magic is unavailable: %r\n" % (exc,))
else:
    sys.modules["envship_magic"] = module
    sys.argv.append("--InteractiveShellApp.extra_extensions=envship_magic")
runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
"""
INSTALL_MARKER = ".envship-install.json"
NO_KERNEL = "ipykernel is not installed in it"  # how missing_kernel's reason starts
INCOMPLETE_MARKER = ".envship-incomplete"
_MACHINES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def _version(text: str) -> tuple[int, ...]:
    # ASCII digits, and few: int() refuses more than 4300 (a lock edited by hand).
    return tuple(int(p) for p in text.split(".") if p.isascii() and p.isdigit() and len(p) < 10)


def host_glibc() -> str | None:
    """This machine's glibc version, or None (musl, or unknown)."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        text = ""
    if text.startswith("glibc "):
        return text.split(" ", 1)[1]
    import platform

    lib, ver = platform.libc_ver()
    return ver if lib == "glibc" and ver else None


def host_machine() -> str:
    machine = os.uname().machine  # what platform.machine() returns on POSIX
    return _MACHINES.get(machine.lower(), machine)


def _interpreter() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def has_gpu() -> bool:
    if os.path.exists("/dev/nvidia0"):
        return True
    import shutil

    return shutil.which("nvidia-smi") is not None


def load_facts(folder: str) -> dict[str, Any]:
    """The ``metadata.envship`` table of the kernel.json in ``folder``."""
    with open(os.path.join(folder, FACTS_FILE), encoding="utf-8") as f:
        spec = json.load(f)
    facts = (spec.get("metadata") or {}).get("envship")
    if not isinstance(facts, dict):
        raise ValueError("kernel.json has no metadata.envship table")
    return facts


def _relinked(env: str, marker: dict[str, Any]) -> str | None:
    """How ``bin/python`` differs from the link the marker records, as the sh part judges
    it (a marker not indented as envship writes it gets past the sh part's sed): None
    when it ends at the same file, when none is recorded, or when the recorded one is not
    on this machine (this machine's lack, not a change)."""
    links = marker.get("venv_links")
    made = links.get("bin/python") if isinstance(links, dict) else None
    if not isinstance(made, str) or not made:
        return None
    py = os.path.join(env, "bin", "python")
    base = made if os.path.isabs(made) else os.path.join(env, "bin", made)
    try:
        if not os.path.exists(base) or os.path.samefile(py, base):
            return None
        now = f"a link to {os.readlink(py)}" if os.path.islink(py) else "a file"
    except OSError:
        return None
    return f"{py} is {now}, not the link to {made} its install record names"


def remade(env: str, marker: dict[str, Any]) -> str:
    """The sh part's command for a relinked environment: made again from its lock, a
    version in place on the base it was made with."""
    lock = marker.get("lock")
    path = lock.get("path") if isinstance(lock, dict) else None
    path = path if isinstance(path, str) and path else "LOCK"
    version = _version_dir(env)
    if version is None:
        return f"make it again from its lock: envship install {env} --lock {path}" + made_options(
            marker
        )
    python = marker.get("python")
    base = python.get("base") if isinstance(python, dict) else None
    was = f" --python {base}" if isinstance(base, str) and os.path.exists(base) else ""
    return (
        "make the version again (env create repairs it in place): envship env create "
        f"{version[0]} --root {version[1]} --lock {path}{was}{made_options(marker)}"
    )


def _version_dir(env: str) -> tuple[str, str] | None:
    """``(name, root)`` when ``env`` is ``ROOT/NAME/versions/KEY`` of an environment root
    (``envship env``): as in ``_envroot.shared_version``, ``ROOT/NAME`` holds the root's
    ``.locks`` folder, so a private venv that merely sits in a folder named ``versions``
    is not taken for one (and gets no stray stamp)."""
    parent = os.path.dirname(env)
    if os.path.basename(parent) != "versions":
        return None
    env_dir = os.path.dirname(parent)
    if not os.path.isdir(os.path.join(env_dir, ".locks")):
        return None
    return os.path.basename(env_dir), os.path.dirname(env_dir)


def _follows(registered: object, current: str) -> bool:
    """Whether the registered path is ``current`` or a chain of links through it (any
    depth, relative or absolute): such a kernel needs no registering again."""
    if not isinstance(registered, str) or not registered:
        return False

    def where(path: str) -> str:  # the link itself, its folder resolved
        return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))

    want, path = where(current), registered
    for _ in range(40):  # as the kernel's own limit on a chain of links (ELOOP)
        if where(path) == want:
            return True
        try:
            link = os.readlink(path)
        except OSError:
            return False
        path = os.path.join(os.path.dirname(path), link)  # an absolute link replaces all
    return False


def stamp_use(env: str) -> None:
    """Record a use of a version under an environment root: ``env gc`` keeps it."""
    if _version_dir(env) is None:
        return  # a venv of its own: nothing collects it, and no stray file goes into it
    path = os.path.join(env, USED_FILE)
    try:
        os.utime(path)
    except FileNotFoundError:
        try:
            # Writable by all, as env create makes it: every user's kernel start counts.
            # O_NOFOLLOW: a link planted there is never followed.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
            try:
                os.fchmod(fd, 0o666)
            finally:
                os.close(fd)
        except OSError as exc:
            sys.stderr.write(f"envship: this use of {env} was not recorded for env gc: {exc}\n")
    except OSError as exc:
        # A read-only root, or a stamp an older envship made 0644 for its owner: the kernel
        # starts all the same, and the server log says why gc may not see this use.
        sys.stderr.write(f"envship: this use of {env} was not recorded for env gc: {exc}\n")


def check(target: dict[str, Any], *, interpreter: bool = True) -> list[str]:
    """Every reason this machine (and, with ``interpreter``, this interpreter) cannot run
    ``target``; without it, whether some interpreter of this machine could."""
    reasons = []
    sys_platform, _, needed_machine = str(target["platform"]).partition("-")
    machine, glibc = host_machine(), host_glibc()
    if sys.platform != sys_platform:
        reasons.append(f"{sys_platform} needed, this machine runs {sys.platform}")
    elif machine != needed_machine:
        reasons.append(f"{needed_machine} needed, this machine is {machine}")
    if interpreter and sys.implementation.name != "cpython":
        reasons.append(f"CPython needed, the interpreter is {sys.implementation.name}")
    here = _interpreter()
    if interpreter and here != target["python"]:
        reasons.append(f"Python {target['python']} needed, the interpreter is {here}")
    # A manylinux_2_X wheel runs on glibc >= 2.X (PEP 600), so the target's level is a floor.
    if glibc is None:
        reasons.append(f"glibc {target['glibc']} needed, this machine has none")
    elif _version(glibc) < _version(target["glibc"]):
        reasons.append(f"glibc >= {target['glibc']} needed, this machine has {glibc}")
    if target["variant"] == "cuda" and not has_gpu():
        reasons.append("the cuda variant needs an NVIDIA GPU; none found")
    return reasons


def missing_kernel(env: str, python: str | None) -> str | None:
    """Why ``env`` cannot start ipykernel, or None: ipykernel must be installed in it, as
    its ``.dist-info`` folder in the site-packages of Python ``python`` (None: of any
    ``lib/python*``) says. A look at a folder, no interpreter started; a kernel without
    it dies on an ImportError."""
    lib = os.path.join(env, "lib")
    try:
        versions = [f"python{python}"] if python else sorted(os.listdir(lib))
    except OSError:
        versions = []
    sites = [os.path.join(lib, v, "site-packages") for v in versions if v.startswith("python")]
    for site in sites:
        try:
            names = os.listdir(site)
        except OSError:
            continue
        for entry in names:
            name, _, rest = entry.partition("-")
            # Wheel and installer folder names (PEP 427, PEP 376) spell it ipykernel-VER.
            if name.lower() == "ipykernel" and rest.endswith(".dist-info"):
                return None
    where = sites[0] if len(sites) == 1 else os.path.join(lib, "python*", "site-packages")
    return f"{NO_KERNEL} (no ipykernel-*.dist-info in {where})"


def _lock_has_groups(path: object) -> bool:
    """Whether the lock at ``path`` declares dependency groups (``dependency-groups``,
    which envship writes as an array starting on its own line)."""
    import re

    if not isinstance(path, str) or not path:  # a damaged record: nothing to read
        return False
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError):
        return False
    return re.search(r'^dependency-groups = \[\s*"', text, re.MULTILINE) is not None


def made_options(marker: dict[str, Any] | None) -> str:
    """`` --group G`` for each dependency group ``marker`` records (install's default is
    every group of the lock; `` --no-groups`` when it records none of its lock's), then
    `` --store STORE`` when it records the store the environment was made from (a kernel
    runs where ENVSHIP_STORE may not be set): what the sh part's ``groups_opt`` and
    ``store_opt`` say."""
    mark = marker if isinstance(marker, dict) else {}
    groups = mark.get("groups")
    said = "".join(
        f" --group {g}" for g in (groups if isinstance(groups, list) else []) if isinstance(g, str)
    )
    lock = mark.get("lock")
    if groups == [] and isinstance(lock, dict) and _lock_has_groups(lock.get("path")):
        said = " --no-groups"
    store = mark.get("store")
    return said + (f" --store {store}" if isinstance(store, str) and store else "")


def kernel_remedy(env: str, marker: dict[str, Any] | None, then: str = "") -> str:
    """The command that gives ``env`` ipykernel. Locked but gone (uninstalled, deleted):
    made again from its lock (``envship install`` repairs a venv, ``env create`` a
    version). Not locked: ``envship add`` for a venv of its own; a version under an
    environment root is shared and immutable, so its lock is made again with it."""
    mark = marker if isinstance(marker, dict) else {}
    lock = mark.get("lock")
    lock_path = lock.get("path") if isinstance(lock, dict) else None
    if not (isinstance(lock_path, str) and lock_path):
        lock_path = "LOCK"
    packages = mark.get("packages")
    locked = isinstance(packages, list) and any(
        isinstance(p, dict) and str(p.get("name")).lower() == "ipykernel" for p in packages
    )
    relock = "put ipykernel in the spec's dependencies, run `envship lock` and `envship fetch`"
    version = _version_dir(env)
    if version is None:
        if locked:
            again = made_options(mark)
            return f"its lock has it: repair it: envship install {env} --lock {lock_path}{again}"
        return (
            f"add it: envship add ipykernel --env {env} (or {relock}, then "
            f"envship install {env} --lock {lock_path})"
        )
    name, root = version
    make = f"envship env create {name} --root {root} --lock {lock_path}"
    if locked:
        make += made_options(mark)
        return f"its lock has it: make the version again (env create repairs it): {make}{then}"
    make += then
    return f"{relock} for its lock {lock_path}, then {make}"


# As envship's own reader (envship._markerread): larger than any marker envship writes.
MAX_MARKER_BYTES = 16 * 1024 * 1024


def _load_marker(path: str) -> Any:
    """The JSON document at ``path``, read without trusting it: never through a link nor
    from anything but a regular file (one linked to /dev/zero would be read for ever, a
    FIFO waited on), at most MAX_MARKER_BYTES; ValueError (the reason) when it is none
    of these or not JSON, OSError as the system says (FileNotFoundError, PermissionError)."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = os.read(fd, MAX_MARKER_BYTES + 1)
        while data and len(data) <= MAX_MARKER_BYTES:
            more = os.read(fd, MAX_MARKER_BYTES + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    if len(data) > MAX_MARKER_BYTES:
        raise ValueError("larger than any install record envship writes")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _unreadable(exc: Exception) -> str:
    """Why a marker does not read, in words (a refusal's reason is read by a person)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 (byte {exc.start})"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if "integer string conversion" in str(exc):
        return "a number longer than any envship writes"  # CPython's digit limit
    return str(exc)


# What ``check`` reads of a recorded target, and the form envship writes each in.
_TARGET_KEYS = {
    "platform": r"[a-z0-9]+-[A-Za-z0-9_]+",
    # Digits capped: CPython's int() refuses more than 4300 of them (a ValueError here).
    "python": r"[0-9]{1,4}\.[0-9]{1,4}",
    "glibc": r"[0-9]{1,4}\.[0-9]{1,4}",
    "variant": r"[a-z0-9]+",
}


def _unusable_target(marker: Any) -> str | None:
    """Why the marker's ``target`` is not the table envship writes, else None: checked
    before ``check`` reads it, so a damaged record gets a reason, not an exception."""
    import re

    if not isinstance(marker, dict):
        return "the record is not a JSON object"
    target = marker.get("target")
    if not isinstance(target, dict):
        return "'target' is missing or not a table"
    for key, form in _TARGET_KEYS.items():
        value = target.get(key)
        if not isinstance(value, str) or not re.fullmatch(form, value):
            return f"target.{key} is missing or not in the form envship writes"
    return None


def _read_marker(path: str) -> dict[str, Any] | None:
    """The install marker at ``path`` when it reads as a JSON object, else None."""
    try:
        marker = _load_marker(path)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def examine(env: str) -> tuple[dict[str, Any] | None, str, list[str]]:
    """The environment's install marker (None when unreadable), what kind of refusal it
    gets and every reason for it; no reason (kind ``""``) means this machine can run it.

    The kinds: ``"machine"``, the environment was built for another machine or
    interpreter (ipykernel may be missing too); ``"half"``, an install or update did not
    finish; ``"damaged"``, its install record is missing or unusable; ``"kernel"``, it
    fits this machine but has no ipykernel; ``"denied"``, this user may not read its
    record (another user's private umask). A half-installed environment's marker is
    returned too (the last install's, or the one before it): it names the lock that
    finishes it."""
    path = os.path.join(env, INSTALL_MARKER)
    if os.path.exists(os.path.join(env, INCOMPLETE_MARKER)):
        half = f"the environment {env} is half installed ({INCOMPLETE_MARKER} present)"
        return _read_marker(path), "half", [half]
    try:
        marker = _load_marker(path)
    except FileNotFoundError:
        return None, "damaged", [f"the environment {env} has no {INSTALL_MARKER}"]
    except PermissionError:
        # Made by another user under a private umask: there, and whole, but not ours.
        return None, "denied", [f"permission denied: uid {os.getuid()} cannot read {path}"]
    except (OSError, ValueError) as exc:
        return None, "damaged", [f"cannot read {path}: {_unreadable(exc)}"]
    relinked = _relinked(env, marker) if isinstance(marker, dict) else None
    if relinked is not None:
        return marker, "changed", [relinked]
    unusable = _unusable_target(marker)
    if unusable is not None:
        return None, "damaged", [f"{path} records no usable target: {unusable}"]
    reasons = check(marker["target"])
    # This interpreter is the environment's own: where its imports would come from.
    # One of another X.Y (a marker that records no link to compare) would look under
    # a lib/pythonX.Y the environment never had: any of its own is asked instead.
    here = _interpreter()
    missing = missing_kernel(env, here if here == marker["target"]["python"] else None)
    kind = "machine" if reasons else ("kernel" if missing else "")
    return marker, kind, reasons + ([missing] if missing else [])


def lock_targets(path: str) -> list[dict[str, Any]] | None:
    """The targets the lock at ``path`` declares (``[[tool.envship.targets]]``), or None
    when it cannot be read. tomllib where the interpreter has it (3.11+); before that,
    those tables read line by line as envship writes them (``key = "text"``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError):
        return None
    try:
        import tomllib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        import re

        found: list[dict[str, Any]] = []
        table: dict[str, Any] | None = None
        for line in text.splitlines():
            line = line.strip()
            if line == "[[tool.envship.targets]]":
                table = {}
                found.append(table)
            elif line.startswith("["):
                table = None
            elif table is not None:
                pair = re.match(r'^([A-Za-z0-9_-]+)\s*=\s*"([^"\\]*)"$', line)
                if pair:
                    table[pair.group(1)] = pair.group(2)
        return found
    try:
        targets = tomllib.loads(text)["tool"]["envship"]["targets"]
    except (ValueError, KeyError, TypeError):
        return None
    return [t for t in targets if isinstance(t, dict)] if isinstance(targets, list) else None


def _fitting(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets some interpreter of this machine can run, this one's Python first."""
    fits = []
    for t in targets:
        try:
            if not check(t, interpreter=False):
                fits.append(t)
        except (KeyError, TypeError, AttributeError):
            continue
    return sorted(fits, key=lambda t: t.get("python") != _interpreter())


def _then(facts: dict[str, Any], env: str) -> str:
    """What follows making a version when the kernel is pinned to one: registering it
    on ``current``, which a new version moves."""
    version = _version_dir(env)
    if version is None:
        return ""
    current = os.path.join(version[1], version[0], "current")
    return "" if _follows(facts.get("env"), current) else f", then envship kernel install {current}"


def remedy(
    facts: dict[str, Any],
    env: str,
    marker: dict[str, Any] | None,
    *,
    machine: bool = True,
    damaged: bool = False,
) -> str:
    """A command that makes an environment this machine can run, for how ``env`` was
    made: from the lock its marker records (else the one the kernelspec recorded when it
    was registered), with a target of that lock that fits here; or, when the lock has
    none, the lock made again with one. ``machine``: the refusal is this machine's (the
    words say so), not a half-made or damaged environment's."""
    mark = marker if isinstance(marker, dict) else {}
    lock = mark.get("lock")
    lock_path = lock.get("path") if isinstance(lock, dict) else None
    if not (isinstance(lock_path, str) and lock_path):
        lock_path = facts.get("lock_path")
    if not (isinstance(lock_path, str) and lock_path):
        lock_path = None
    version = _version_dir(env)
    then = _then(facts, env)
    targets = lock_targets(lock_path) if lock_path else None
    options = ""
    if targets is not None:
        fitting = _fitting(targets)
        if not fitting and lock_path is not None:
            return _relock(env, lock_path, version, targets, mark) + then
        chosen = fitting[0]
        options = f" --target {chosen.get('name')}"
        base = (
            (mark.get("python") or {}).get("base") if isinstance(mark.get("python"), dict) else None
        )
        if chosen.get("python") != _interpreter():
            options += f" --python python{chosen.get('python')}"  # any interpreter of it
        elif version is not None and isinstance(base, str) and os.path.exists(base):
            options += f" --python {base}"  # the one this version runs, not envship's own
    with_lock = f" --lock {lock_path}{options}" if lock_path else " --lock LOCK"
    if lock_path is not None and isinstance(lock, dict) and lock_path == lock.get("path"):
        with_lock += made_options(mark)  # its groups, and the store of this lock's wheels
    unread = (
        ""
        if lock_path is None or targets is not None
        else (f" (its lock {lock_path} cannot be read: name the lock it was made from)")
    )
    if version is None:
        if damaged and not os.path.lexists(os.path.join(env, INSTALL_MARKER)):
            # Without its record the folder is not envship's to replace (install refuses
            # it): moved aside, the same path is made again and this kernel starts it. A
            # record there but damaged, install takes for a half-made one of its own.
            return (
                f"move it aside and make it again where it was: mv {env} {env}.damaged && "
                f"envship install {env}{with_lock}{unread}"
            )
        make = "make it again on this machine" if machine else "make it again"
        return f"{make}: envship install {env}{with_lock}{unread}"
    name, root = version
    make = "make a version for this machine" if machine else "make the version again"
    return f"{make}: envship env create {name} --root {root}{with_lock}{unread}{then}"


def _relock(
    env: str,
    lock_path: str,
    version: tuple[str, str] | None,
    targets: list[dict[str, Any]],
    marker: dict[str, Any],
) -> str:
    """The lock has no target for this machine: it must be made again with one."""
    platform = f"{sys.platform}-{host_machine()}"
    glibc = host_glibc()
    floor = f'"{".".join(glibc.split(".")[:2])}" or lower' if glibc else "a level it has"
    names = [str(t.get("name")) for t in targets]
    target = marker.get("target")
    was = target.get("name") if isinstance(target, dict) else None
    ours = next((t for t in targets if t.get("name") == was), None)
    if ours is not None and ours.get("platform") == platform:
        # Lowering the glibc of the target the environment was made for keeps its name,
        # which the install marker records and a re-install uses.
        change = f"set glibc = {floor} in the spec's target that {was} comes from"
        pick = ""
    else:
        change = f"add a target [targets.NAME] for {platform} with glibc = {floor} to the spec"
        pick = " --target NAME"
    if version is None:
        make = f"envship install {env} --lock {lock_path}{pick}"
    else:
        make = f"envship env create {version[0]} --root {version[1]} --lock {lock_path}{pick}"
    return (
        f"its lock {lock_path} has no target this machine can run (it has: "
        f"{', '.join(names) or 'none'}); make the lock again with one: {change}, run "
        f"`envship lock` and `envship fetch`, then {make}"
    )


# The refusal's first line after "the environment ENV", for a kind of refusal other than
# "machine" (whose line compares what the environment was built for with this machine).
_HEADS = {
    "changed": "was changed since it was made: its interpreter bin/python was relinked",
    "half": "is half installed: an install or update of it did not finish",
    "damaged": f"is damaged: its install record ({INSTALL_MARKER}) is missing or unusable",
    "kernel": "has no ipykernel to start a kernel with",
    "denied": "cannot be read by this user",
}


def report(
    facts: dict[str, Any], env: str, marker: dict[str, Any] | None, kind: str, reasons: list[str]
) -> str:
    """The readable refusal printed on stderr (Jupyter shows it in the server log): a
    first line that fits ``kind`` (see ``examine``), the reasons, then the remedies."""
    head = f"envship: kernel {facts.get('kernel_name', '?')!r} cannot start: the environment {env}"
    target = marker.get("target") if isinstance(marker, dict) else None
    if kind == "machine" and isinstance(target, dict):
        here = _interpreter()
        machine = f"{host_machine()} with glibc {host_glibc() or '(none)'} and CPython {here}"
        cuda = ", cuda" if target.get("variant") == "cuda" else ""
        built = (
            f"{target.get('platform')} (glibc >= {target.get('glibc')}, "
            f"CPython {target.get('python')}{cuda})"
        )
        head += f" was built for {built}; this machine is {machine}"
    else:
        head += " " + _HEADS.get(kind, "cannot be used")
    lines = [head, *(f"  - {reason}" for reason in reasons)]
    no_kernel = [r for r in reasons if r.startswith(NO_KERNEL)]
    if kind == "denied":
        fix = f"ask its owner to make it readable by every user: chmod -R a+rX {env}"
        return "\n".join([*lines, "envship: " + fix])
    if kind == "changed":
        return "\n".join([*lines, "envship: " + remade(env, marker or {})])
    if len(no_kernel) < len(reasons):  # the machine (or the install) needs a remedy
        fix = remedy(facts, env, marker, machine=kind == "machine", damaged=kind == "damaged")
        lines.append("envship: " + fix)
    if no_kernel:
        lines.append("envship: " + kernel_remedy(env, marker, _then(facts, env)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = args.pop(0) if args else ""  # resolved by the sh part
    folder = os.path.dirname(os.path.abspath(__file__))
    checking = args[:1] == [CHECK_FLAG]
    try:
        facts = load_facts(folder)
    except (OSError, ValueError) as exc:
        where = os.path.join(folder, FACTS_FILE)
        sys.stderr.write(f"envship: cannot read the facts recorded in {where}: {exc!r}\n")
        sys.stderr.write("envship: re-run `envship kernel install`\n")
        return 2
    if not checking:
        stamp_use(env)  # first: a gc deciding now sees the use
    marker, kind, reasons = examine(env)
    if reasons:
        sys.stderr.write(report(facts, env, marker, kind, reasons) + "\n")
        return 1
    if checking:
        sys.stdout.write(f"envship: this machine can run the environment {env}\n")
        return 0
    # Like activating the environment: shell escapes (``!pip``) find its tools first.
    env_bin = os.path.join(env, "bin")
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[:1] != [env_bin]:
        os.environ["PATH"] = env_bin + (os.pathsep + path if path else "")
    os.environ["VIRTUAL_ENV"] = env
    os.environ.pop("PYTHONHOME", None)
    # The version's own interpreter by its path under the resolved ENV (never through
    # `current`), which makes it the process's sys.prefix.
    python = os.path.join(env, "bin", "python")
    magic = os.path.join(folder, MAGIC_FILE)
    if os.path.isfile(magic):
        os.execv(python, [python, "-c", _BOOT, magic, *args])
    os.execv(python, [python, "-m", "ipykernel_launcher", *args])
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())

"""The record an environment keeps of how envship made it, and the quick look at its state.

``.envship-install.json`` (the marker) says which lock, target, groups and interpreter
an environment was made from; what the venv's creation itself wrote, anywhere in the
venv (``venv_files``: the activate scripts, ``pyvenv.cfg``, uv's ``_virtualenv.py``,
... with their sha256; ``venv_links``: ``bin/python*`` and ``lib64`` with their
targets), so ``verify`` can tell them from stray files and see them changed; and the
sha256 of each installed distribution's ``RECORD`` as the installer wrote it
(``records``). ``.envship-incomplete`` says it is being made. The quick look
(:func:`drift`) compares the installed distributions' metadata folders with the marker,
and their RECORD files with those digests: a listing and one small file per
distribution read, so a re-install of the same name and version (another wheel,
another tool) is seen too.

While a run makes an environment (and after one that did not finish) the marker says
how to make it again: the interpreter, ``compiled``, ``link_mode`` and the store the run
took its wheels from (``store``, also kept once it is complete), so the next run, and
the command ``verify`` prints to finish it, repeat the run as it was asked.

Markers written before ``venv_links`` recorded only site-packages in ``venv_files``,
and those before ``records`` kept no RECORD digests, those before ``store`` no store;
all are still read, and what they cannot tell is said where it matters (``verify``'s
notes), not checked (drift) or left to the default (the store).

A marker is written whole, in one rename, so one that cannot be used was damaged after
the fact (:class:`MarkerDamaged`, naming the key): unreadable, not a regular file (a
link is never followed, a FIFO never waited on), larger than any marker written (a link
to ``/dev/zero`` was read until the OOM killer came), no JSON, or not the shape
:func:`marker_data` writes, down to each entry every reader indexes without looking.
:func:`load_marker` tells it apart from a missing one, :func:`read_marker` does not:
install takes either for a half-made environment and makes it again, ``verify``
reports it, ``add`` and ``env check`` refuse it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._atomic import write_atomic
from .errors import Problem

if TYPE_CHECKING:
    from .lockfile import Artifact, LockFile
    from .targets import Target

__all__ = [
    "FILES_KEY",
    "INCOMPLETE_NAME",
    "LINKS_KEY",
    "MARKER_NAME",
    "MAX_MARKER_BYTES",
    "RECORDS_KEY",
    "STORE_KEY",
    "Drift",
    "MarkerDamaged",
    "State",
    "artifact_entry",
    "check_marker",
    "clear",
    "discard",
    "drift",
    "env_state",
    "interpreter_damage",
    "load_marker",
    "marker_data",
    "read_marker",
    "read_record",
    "record_digests",
    "site_packages",
    "store_option",
    "venv_record",
    "work_folder",
    "write_marker",
]

MARKER_NAME = ".envship-install.json"
INCOMPLETE_NAME = ".envship-incomplete"
MARKER_FORMAT = 1
# The marker's keys (module docstring): env-relative POSIX path -> hex sha256 of a file
# the venv's creation wrote; -> target of a link it made; canonical name -> hex sha256
# of the installed dist-info/RECORD; the absolute path of the store the wheels came from.
FILES_KEY = "venv_files"
LINKS_KEY = "venv_links"
RECORDS_KEY = "records"
STORE_KEY = "store"


def work_folder(dest: Path) -> Path:
    """``DEST.envship-tmp``: where a run of install stages beside ``dest`` (a private
    uv cache, requirements, a failed new environment set aside). Its file ``lock`` is
    the lock install holds while it changes ``dest``, which ``envship add`` takes too."""
    return dest.parent / f"{dest.name}.envship-tmp"


def store_option(marker: Mapping[str, Any]) -> str:
    """`` --store S`` when the marker's wheels came from a store other than the one
    envship takes without ``--store`` here (``$ENVSHIP_STORE``, else the user cache): a
    command printed for the user to run must find them. Empty for the default store and
    for a marker from before ``store`` was kept."""
    from .store import Store  # not at import: the store pulls in platformdirs

    store = marker.get(STORE_KEY)
    if not isinstance(store, str) or not store:
        return ""
    if os.path.realpath(store) == os.path.realpath(Store.default().root):
        return ""
    return f" --store {shlex.quote(store)}"


# Metadata folders: ``name-version.dist-info`` (wheels) and ``name-version[-pyX.Y]
# .egg-info`` (anything installed the old way, e.g. ``setup.py install``).
_METADATA = (".dist-info", ".egg-info")

State = Literal["missing", "empty", "complete", "incomplete", "foreign"]


def artifact_entry(a: Artifact) -> dict[str, str]:
    return {"name": a.name, "version": a.version, "filename": a.filename, "sha256": a.sha256}


class MarkerDamaged(Exception):
    """An install marker is there but cannot be used: unreadable, not a regular file,
    larger than any marker envship writes, not JSON, or not the shape it writes.

    Markers are written whole, in one rename, so such a marker was damaged after the
    fact. Not an EnvshipError: each caller words it (install makes the environment
    again, ``env check`` and ``add`` refuse, ``verify`` reports a difference), as
    :class:`envship._pyprobe.ProbeFailure` leaves its callers to.
    """

    def __init__(self, path: Path, key: str, reason: str, cause: OSError | None = None) -> None:
        super().__init__(path, key, reason)
        self.path = path  # the marker file
        self.key = key  # "packages[0].name"; "" for the file as a whole
        self.reason = reason
        self.cause = cause  # the OSError that kept it from being read, if that was it

    @property
    def where(self) -> str:
        return f"{self.path}: {self.key}" if self.key else str(self.path)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def problem(self) -> Problem:
        return Problem(self.where, self.reason)


# A data-science environment's marker (51 distributions, their RECORD digests, the venv's
# own files) weighs 17 KB; 16 MiB is a thousand times that. Without a cap, a marker
# replaced by a link to /dev/zero is read until the OOM killer ends the run.
MAX_MARKER_BYTES = 16 * 1024 * 1024


def read_record(path: Path) -> Any:
    """The JSON document at ``path`` (an install marker), read without trusting it: None
    when nothing is there, else the parsed value; :class:`MarkerDamaged` when it cannot
    be read, is not a regular file (a link is never followed, a FIFO never waited on),
    is larger than :data:`MAX_MARKER_BYTES`, or is not JSON (nesting too deep too)."""
    text = _read_text(path)
    return None if text is None else _parse(path, text)


def _read_text(path: Path) -> str | None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            where = os.readlink(path) if os.path.islink(path) else "?"
            raise MarkerDamaged(path, "", f"a symbolic link (to {where}), not a file") from None
        raise MarkerDamaged(path, "", f"cannot be read: {exc.strerror or exc}", exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise MarkerDamaged(path, "", f"{what} (mode {stat.filemode(st.st_mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_MARKER_BYTES:  # the file may grow while it is read
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise MarkerDamaged(path, "", f"cannot be read: {exc.strerror or exc}", exc) from None
    finally:
        os.close(fd)
    if size > MAX_MARKER_BYTES:
        raise MarkerDamaged(
            path, "", f"more than {MAX_MARKER_BYTES} bytes: larger than any marker envship writes"
        )
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MarkerDamaged(path, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def _parse(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise MarkerDamaged(path, "", f"not JSON: {exc}") from None
    except RecursionError:
        raise MarkerDamaged(path, "", "not JSON envship writes: nested too deep") from None


def load_marker(dest: Path) -> dict[str, Any] | None:
    """The install marker of the environment at ``dest``, None when it has none;
    :class:`MarkerDamaged`, naming the key, when one is there that envship cannot use
    (:func:`read_record`, :func:`check_marker`)."""
    path = dest / MARKER_NAME
    text = _read_text(path)
    if text is None:
        return None
    # JSON has no raw control characters in strings: a NUL or a lone surrogate is an
    # escape. Without one, the walk over every string (most of the time taken) is spared.
    return check_marker(_parse(path, text), path, strings=bool(_SUSPECT.search(text)))


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The marker at ``dest``, or None when it is missing or damaged (:func:`load_marker`
    tells the two apart)."""
    try:
        return load_marker(dest)
    except MarkerDamaged:
        return None


_LINK_MODES = ("hardlink", "copy", "clone", "symlink")
_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")  # the escapes of NUL and surrogates
_Check = Callable[[Any], "str | None"]


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string needed"


def _path(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "a path needed"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false needed"


def _text_or_null(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "a string or null needed"


def _table(value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    return None if ok else "an object of strings needed"


def _target(value: Any) -> str | None:
    from .errors import TargetError  # not at import: the kernel launcher's path is small
    from .targets import Target

    try:
        Target.from_json(value)
    except TargetError as exc:
        return "; ".join(p.message for p in exc.problems) or exc.message
    return None


# What each key holds: (key, required, check) at the top, then inside the objects. What
# every reader indexes without looking is required; what markers of older envships lack
# (``venv_files``, ``venv_links``, ``records``, ``store``, ...) may be missing.
_TOP: tuple[tuple[str, bool, _Check], ...] = (
    ("lock", True, lambda v: None if isinstance(v, dict) else "an object needed"),
    ("target", True, _target),
    ("python", True, lambda v: None if isinstance(v, dict) else "an object needed"),
    ("groups", True, lambda v: None if isinstance(v, list) else "a list needed"),
    ("packages", True, lambda v: None if isinstance(v, list) else "a list needed"),
    ("name", False, _text_or_null),
    ("display_name", False, _text_or_null),
    ("compiled", False, _flag),
    ("link_mode", False, lambda v: None if v in _LINK_MODES else f"one of {_LINK_MODES}"),
    (STORE_KEY, False, _path),
    (FILES_KEY, False, _table),
    (LINKS_KEY, False, _table),
    (RECORDS_KEY, False, _table),
    ("reinstalling", False, _flag),
    ("added", False, lambda v: None if isinstance(v, list) else "a list needed"),
)
_INNER: dict[str, tuple[tuple[str, bool, _Check], ...]] = {
    "lock": (("path", True, _path), ("digest", True, _string)),
    "python": (("base", True, _path), ("version", False, _string)),
}
_PACKAGE = ("name", "version", "sha256", "filename")


def _strings(data: Any) -> tuple[str, str] | None:
    """The first string in ``data`` (keys too) no path or name of envship's can hold, and
    its key: a NUL byte (every path call refuses it) or a lone surrogate (no file name
    decodes to one); iterative, so any depth ``json`` gave back is walked."""
    todo: list[tuple[str, Any]] = [("", data)]
    while todo:
        key, value = todo.pop()
        items: list[tuple[str, Any]] = []
        if isinstance(value, dict):
            items = [(f"{key}.{k}" if key else str(k), k) for k in value]
            items += [(f"{key}.{k}" if key else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, str):
            if "\0" in value:
                return key, "holds a NUL character"
            try:
                value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                return key, "holds a character no file name has (a lone surrogate)"
        todo.extend(items)
    return None


def check_marker(data: Any, path: Path, *, strings: bool = True) -> dict[str, Any]:
    """``data`` (read from the marker at ``path``) when it has the shape
    :func:`marker_data` writes, and what install adds to it; else
    :class:`MarkerDamaged` naming the first key that is not (``packages[0].name``).
    ``strings``: look at every string for what no path holds (False: the text read
    had no escape that could make one)."""

    def damaged(key: str, reason: str) -> MarkerDamaged:
        return MarkerDamaged(path, key, reason)

    if not isinstance(data, dict):
        raise damaged("", f"not a JSON object but {type(data).__name__}")
    if data.get("format") != MARKER_FORMAT:
        found = repr(data["format"]) if "format" in data else "none"
        raise damaged("format", f"{found}: this envship reads format {MARKER_FORMAT}")
    if strings and (bad := _strings(data)) is not None:
        raise damaged(*bad)
    for key, required, check in _TOP:
        if key not in data:
            if required:
                raise damaged(key, "missing")
            continue
        if (why := check(data[key])) is not None:
            raise damaged(key, why)
        for inner, needed, inner_check in _INNER.get(key, ()):
            if inner not in data[key]:
                if needed:
                    raise damaged(f"{key}.{inner}", "missing")
            elif (why := inner_check(data[key][inner])) is not None:
                raise damaged(f"{key}.{inner}", why)
    for i, group in enumerate(data["groups"]):
        if not isinstance(group, str):
            raise damaged(f"groups[{i}]", "a group name needed")
    for i, package in enumerate(data["packages"]):
        if not isinstance(package, dict):
            raise damaged(f"packages[{i}]", "an object needed")
        for field in _PACKAGE:
            if field not in package:
                raise damaged(f"packages[{i}].{field}", "missing")
            if not isinstance(package[field], str) or not package[field]:
                raise damaged(f"packages[{i}].{field}", "a string needed")
    for i, entry in enumerate(data.get("added", ())):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise damaged(f"added[{i}]", "an object with a name needed")
    return data


def marker_data(
    lock: LockFile,
    target: Target,
    groups: tuple[str, ...],
    base_python: str,
    python_full: str,
    artifacts: Sequence[Artifact],
    compiled: bool = False,
    venv: Mapping[str, str] | None = None,
    link_mode: str | None = None,
    links: Mapping[str, str] | None = None,
    records: Mapping[str, str] | None = None,
    store: Path | None = None,
) -> dict[str, Any]:
    """What an environment made from ``lock`` records about itself (the install marker);
    image builds write the same record into the image. ``compiled``: every installed
    module's byte-code was written at install time. ``venv`` and ``links``: the files and
    links the venv's creation wrote (:func:`venv_record`, or for an image the skeleton
    layer's :func:`envship._imageenv.skeleton_record`); None when unknown (an environment
    made before envship recorded them; ``links`` None with ``venv``
    given: a record of site-packages alone, as envship kept before). ``link_mode``: how
    uv was asked to put files in place, when it was asked (repairs keep it).
    ``records``: :func:`record_digests` of the environment as installed. ``store``: where
    its wheels came from (None for an image: the store is the build machine's)."""
    data: dict[str, Any] = {
        "format": MARKER_FORMAT,
        "lock": {"path": str(lock.path.absolute()), "digest": lock.digest},
        "name": lock.name,
        "display_name": lock.display_name,
        "target": target.to_json(),
        "groups": list(groups),
        "python": {"base": base_python, "version": python_full},
        "packages": [artifact_entry(a) for a in artifacts],
        "compiled": compiled,
    }
    if venv is not None:
        data[FILES_KEY] = dict(sorted(venv.items()))
    if links is not None:
        data[LINKS_KEY] = dict(sorted(links.items()))
    if records is not None:
        data[RECORDS_KEY] = dict(sorted(records.items()))
    if link_mode is not None:
        data["link_mode"] = link_mode
    if store is not None:
        data[STORE_KEY] = str(store)
    return data


def write_marker(dest: Path, data: dict[str, Any]) -> None:
    """Replace the install marker of the environment at ``dest`` in one rename.

    Whatever damage left at its place that is not a regular file goes first: rename(2)
    cannot replace a folder with a file, and the new marker must not take the mode of
    what a link there points to (``write_atomic`` keeps the replaced file's mode)."""
    path = dest / MARKER_NAME
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        elif not stat.S_ISREG(st.st_mode):
            path.unlink()
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def site_packages(dest: Path, python: str | None = None) -> Path | None:
    """``dest/lib/pythonX.Y/site-packages`` of a POSIX venv: the one of ``python``
    ("3.11") when given, else the only one there is."""
    if python is not None:
        found = dest / "lib" / f"python{python}" / "site-packages"
        return found if found.is_dir() else None
    candidates = sorted((dest / "lib").glob("python*/site-packages"))
    return candidates[0] if len(candidates) == 1 else None


def _sha256(path: str | Path) -> str:
    # Small files (activate scripts, RECORD): one read; hashlib.file_digest is 3.11+.
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def venv_record(dest: Path) -> tuple[dict[str, str], dict[str, str]]:
    """What a freshly made venv holds, as the venv's creation wrote it: ``(files, links)``,
    env-relative POSIX paths -> hex sha256 and -> link target. uv writes the activate
    scripts, ``pyvenv.cfg``, ``.gitignore``, ``CACHEDIR.TAG``, the ``bin/python*`` links
    and ``lib64``, and for Python < 3.10 ``_virtualenv.py`` and a ``.pth`` importing it.
    A link is recorded, never followed (``bin/python`` names the base interpreter)."""
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    folders = [str(dest)]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                rel = Path(entry.path).relative_to(dest).as_posix()
                if entry.is_symlink():
                    links[rel] = os.readlink(entry.path)
                elif entry.is_dir():
                    if entry.name != "__pycache__":
                        folders.append(entry.path)
                elif entry.is_file() and rel not in (INCOMPLETE_NAME, MARKER_NAME):
                    files[rel] = _sha256(entry.path)
    return files, links


def interpreter_damage(path: Path, marker: Mapping[str, Any]) -> list[str]:
    """Whether a complete environment's ``bin/python`` still links to the base it was made
    with (the quick look at its metadata cannot see a relinked interpreter)."""
    python = path / "bin" / "python"
    base = str(marker["python"]["base"])
    # A base missing here is this machine's lack (check_env says so), not damage.
    if not os.path.exists(base):
        return []
    if not python.exists():
        return [f"{python} is missing or a link to nothing"]
    if os.path.realpath(python) != os.path.realpath(base):
        return [f"{python} runs {os.path.realpath(python)}, not {base}"]
    return []


def _dist_infos(site: Path) -> dict[str, list[tuple[str, Path]]]:
    """Installed distributions by canonical name -> (version, metadata folder), from the
    metadata folder names."""
    found: dict[str, list[tuple[str, Path]]] = {}
    with os.scandir(site) as entries:
        for entry in entries:
            suffix = next((s for s in _METADATA if entry.name.endswith(s)), None)
            if suffix is None:
                continue
            parts = entry.name[: -len(suffix)].split("-")
            if len(parts) < 2:
                continue
            found.setdefault(canonicalize_name(parts[0]), []).append((parts[1], Path(entry.path)))
    return found


def _record_digest(info: Path) -> str:
    try:
        return _sha256(info / "RECORD")
    except OSError:
        return ""  # none, or unreadable: matches no digest


def record_digests(dest: Path, python: str | None = None) -> dict[str, str]:
    """Canonical name -> sha256 of its ``RECORD``, for each distribution installed in
    ``dest``'s site-packages (of ``python``). An installer writes RECORD last, listing
    every file with its hash (PEP 376/427), so a re-install of the same name and version
    from another wheel, or by another tool, writes another RECORD."""
    site = site_packages(dest, python)
    found = _dist_infos(site) if site is not None else {}
    return {
        name: _record_digest(info)
        for name, infos in sorted(found.items())
        for _version, info in infos[:1]
    }


def env_state(dest: Path) -> State:
    """What ``dest`` is to ``envship install``: nothing yet, an empty folder, a complete or
    half-made environment of ours, or something else (never touched)."""
    if not dest.exists():
        return "foreign" if dest.is_symlink() else "missing"  # a link to nothing
    if not dest.is_dir():
        return "foreign"
    if (dest / INCOMPLETE_NAME).exists():
        return "incomplete"
    if os.path.lexists(dest / MARKER_NAME):
        # The marker is written atomically, so one we cannot use (unreadable, a folder or
        # a link there, not the shape we write: :func:`load_marker`), or an env without
        # its interpreter, was damaged after the fact; the folder is still ours (it holds
        # our marker's name), and rebuilding it is the safe answer.
        usable = read_marker(dest) is not None and (dest / "bin" / "python").exists()
        return "complete" if usable else "incomplete"
    return "foreign" if any(dest.iterdir()) else "empty"


def clear(dest: Path, keep: Collection[str] = ()) -> None:
    """Empty ``dest`` but keep the folder itself (it may be a mount point or a symlink),
    the entries named in ``keep`` and, always, the incomplete mark: emptying a folder of
    thousands of files takes long enough to be killed in the middle (``docker stop``'s
    SIGKILL), and a folder left with files but no mark is foreign to every later run.
    Removing the mark is the caller's last step."""
    for child in dest.iterdir():
        if child.name in keep or child.name == INCOMPLETE_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def discard(dest: Path, aside: Path, *, keep_folder: bool) -> None:
    """Remove what a run that failed left of a new environment at ``dest`` so that at
    every instant ``dest`` is gone, empty or still marked incomplete.

    A folder the run made is renamed to ``aside`` (on the same file system: a sibling's
    folder) in one step, and removed there; whoever stops this midway leaves ``aside``
    for the next run to remove. One the user gave (``keep_folder``: maybe a mount point,
    which cannot be renamed) is emptied with its mark removed last."""
    if not keep_folder:
        shutil.rmtree(aside, ignore_errors=True)  # a leftover of one stopped midway
        try:
            os.rename(dest, aside)
        except OSError:
            pass  # emptied in place instead, below
        else:
            shutil.rmtree(aside)
            return
    clear(dest)
    (dest / INCOMPLETE_NAME).unlink(missing_ok=True)
    if not keep_folder:
        dest.rmdir()


@dataclass(frozen=True, slots=True)
class Drift:
    """How an environment's installed metadata differs from what it should hold."""

    present: tuple[str, ...] = ()  # "name==version" installed, not expected
    missing: tuple[str, ...] = ()  # "name==version" expected, not installed
    duplicated: tuple[str, ...] = ()  # names with more than one metadata folder
    replaced: tuple[str, ...] = ()  # "name==version" as expected, but its RECORD is not

    def __bool__(self) -> bool:
        return bool(self.present or self.missing or self.duplicated or self.replaced)


def drift(
    dest: Path,
    packages: Sequence[Mapping[str, str]],
    python: str | None,
    records: Mapping[str, str] | None = None,
) -> Drift:
    """Where the metadata folders in ``dest``'s site-packages (of ``python``) differ from
    ``packages`` (marker entries): a listing, like ``envship verify`` without ``--full``.
    A wrong version is both present and missing. With ``records`` (the marker's), each
    expected distribution's RECORD is hashed too: one that is not the one installed is
    ``replaced``. Names ``records`` lacks are not compared (a marker from before them)."""
    site = site_packages(dest, python)
    found = _dist_infos(site) if site is not None else {}
    installed = {n: [v for v, _ in infos] for n, infos in found.items()}
    expected: dict[str, str] = {canonicalize_name(p["name"]): p["version"] for p in packages}
    present = [
        f"{n}=={v}"
        for n, versions in sorted(installed.items())
        for v in versions
        if not _same(expected.get(n), v)
    ]
    missing = [
        f"{n}=={v}"
        for n, v in sorted(expected.items())
        if not any(_same(v, got) for got in installed.get(n, []))
    ]
    duplicated = [n for n, versions in sorted(installed.items()) if len(versions) > 1]
    replaced = [
        f"{n}=={v}"
        for n, v in sorted(expected.items())
        if records is not None
        and isinstance(digest := records.get(n), str)
        and len(infos := found.get(n, [])) == 1
        and _same(v, infos[0][0])
        and _record_digest(infos[0][1]) != digest
    ]
    return Drift(tuple(present), tuple(missing), tuple(duplicated), tuple(replaced))


def _same(a: str | None, b: str) -> bool:
    if a is None or a == b:
        return a == b
    try:  # a folder name may spell the version unnormalized (1.0 vs 1.0.0)
        return Version(a) == Version(b)
    except InvalidVersion:
        return False

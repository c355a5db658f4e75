"""The simple repository API's pages, as :func:`envship.index.export_index` writes them.

Pure functions of a project list and its files: the PEP 503 HTML pages and the PEP 691
JSON documents, with the PEP 629 version, PEP 658 / 714 metadata attributes and PEP 700
sizes and versions, every href relative to the page. They depend on nothing in the
store or the lock, so they live apart from the export that lays the files out;
:mod:`envship.index` re-exports them.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from packaging.utils import canonicalize_name
from packaging.version import Version

__all__ = [
    "API_VERSION",
    "IndexFile",
    "file_href",
    "file_url",
    "project_dir",
    "render_project_html",
    "render_project_json",
    "render_root_html",
    "render_root_json",
]

API_VERSION = "1.1"  # PEP 629 version of the pages; 1.1 adds size and versions (PEP 700)


@dataclass(frozen=True, slots=True)
class IndexFile:
    """One file as the simple API describes it."""

    filename: str
    version: str
    sha256: str
    size: int
    requires_python: str | None = None
    metadata_sha256: str | None = None  # of ``<filename>.metadata`` (PEP 658)


def project_dir(name: str) -> str:
    """The PEP 503 normalized name: the directory of the project's page."""
    return canonicalize_name(name)


def file_url(filename: str) -> str:
    """Relative URL from ``simple/<project>/`` to the file (PEP 503 and PEP 691 allow it)."""
    return f"../../files/{quote(filename, safe='')}"


def file_href(filename: str, sha256: str) -> str:
    """:func:`file_url` with the PEP 503 hash fragment."""
    return f"{file_url(filename)}#sha256={sha256}"


def _page(title: str, anchors: Sequence[str]) -> str:
    # PEP 629: every page says which API version it speaks.
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
        + "".join(f"{a}<br>\n" for a in anchors)
        + "</body>\n</html>\n"
    )


def render_root_html(names: Collection[str]) -> str:
    """PEP 503 root page: one anchor per project, linking to its normalized directory."""
    dirs = sorted({project_dir(n) for n in names})
    anchors = [f'<a href="{html.escape(quote(d) + "/")}">{html.escape(d)}</a>' for d in dirs]
    return _page("Simple index", anchors)


def render_project_html(name: str, files: Sequence[IndexFile]) -> str:
    """PEP 503 project page; ``data-requires-python`` (PEP 503), both metadata attributes
    (``data-dist-info-metadata`` from PEP 658 and ``data-core-metadata`` from PEP 714)."""
    anchors = []
    for f in sorted(files, key=lambda f: f.filename):
        attrs = f'href="{html.escape(file_href(f.filename, f.sha256))}"'
        if f.requires_python:
            attrs += f' data-requires-python="{html.escape(f.requires_python)}"'
        if f.metadata_sha256:
            value = html.escape(f"sha256={f.metadata_sha256}")
            attrs += f' data-dist-info-metadata="{value}" data-core-metadata="{value}"'
        anchors.append(f"<a {attrs}>{html.escape(f.filename)}</a>")
    return _page(f"Links for {project_dir(name)}", anchors)


def render_root_json(names: Collection[str]) -> dict[str, Any]:
    """PEP 691 root: ``projects`` by name."""
    projects = [{"name": d} for d in sorted({project_dir(n) for n in names})]
    return {"meta": {"api-version": API_VERSION}, "projects": projects}


def render_project_json(name: str, files: Sequence[IndexFile]) -> dict[str, Any]:
    """PEP 691 project detail, with PEP 700's ``versions`` and ``size``."""
    entries: list[dict[str, Any]] = []
    for f in sorted(files, key=lambda f: f.filename):
        metadata = {"sha256": f.metadata_sha256} if f.metadata_sha256 else False
        entry: dict[str, Any] = {
            "filename": f.filename,
            "url": file_url(f.filename),
            "hashes": {"sha256": f.sha256},
            "core-metadata": metadata,  # PEP 714 name
            "dist-info-metadata": metadata,  # PEP 658 name, for older clients
            "yanked": False,
            "size": f.size,
        }
        if f.requires_python:
            entry["requires-python"] = f.requires_python
        entries.append(entry)
    return {
        "meta": {"api-version": API_VERSION},
        "name": project_dir(name),
        "files": entries,
        "versions": sorted({f.version for f in files}, key=Version),
    }

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from indexlib import IndexServer, make_index, serve

# Fixtures for the real services (Docker engine, OCI registry, base images) live in their
# own modules; pytest loads them as plugins so every test can ask for them by name.
pytest_plugins = ["serviceslib", "registrylib", "imagelib", "disklib"]


@pytest.fixture(scope="session")
def index_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test universe laid out as a PEP 503 tree (built once per session)."""
    root = tmp_path_factory.mktemp("universe")
    make_index(root)
    return root / "index"


@pytest.fixture
def index_server(index_root: Path) -> Iterator[IndexServer]:
    """A fresh HTTP server (fresh knobs and request log) over the shared tree."""
    with serve(index_root) as server:
        yield server


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep uv's cache, envship's store and the user cache per test so no test sees another's
    downloads or remembered install plans."""
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("ENVSHIP_STORE", str(tmp_path / "store"))
    # install remembers plans for its quick path in the user cache (envship._quickinstall).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("UV_INDEX_URL", raising=False)
    monkeypatch.delenv("UV_EXTRA_INDEX_URL", raising=False)

"""The exception hierarchy: structured fields survive pickling (process pools)."""

from __future__ import annotations

import pickle

import pytest

from envship.errors import (
    ArtifactError,
    EnvshipError,
    ImageError,
    NetworkError,
    Problem,
    RegistryAuthError,
    RegistryError,
    SpecError,
    UnsafeLayerError,
    UnsupportedBaseError,
)


@pytest.mark.parametrize(
    "error",
    [
        EnvshipError("plain"),
        SpecError("bad", problems=[Problem("envship.toml:3", "no")], hint="fix it"),
        NetworkError("down", url="https://example.invalid/x", hint="retry"),
        ArtifactError("bad hash", artifact="a.whl", expected="sha256:1", actual="sha256:2"),
        ImageError("bad image"),
        UnsupportedBaseError("no python", hint="use another base"),
        UnsafeLayerError("escape", layer="sha256:ab", entry="../etc/passwd"),
        RegistryError("503", url="http://127.0.0.1:1/v2/", registry="127.0.0.1:1", status=503),
        RegistryAuthError("denied", url="u", registry="r", status=401, hint="docker login r"),
    ],
)
def test_errors_survive_pickling_with_every_field(error: EnvshipError) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert again.to_json() == error.to_json()
    assert again.exit_code == error.exit_code

"""Registry credentials: Docker's config.json, credential helpers, Basic and Bearer flows.

The flows run against real registries (htpasswd and token auth, see registrylib); the
credential helpers are real executables written into tmp_path and put on PATH.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from envship._http import RetryPolicy
from envship._registry_auth import (
    Challenge,
    Credentials,
    docker_config_file,
    find_credentials,
    parse_challenges,
)
from envship.errors import EnvshipError, RegistryAuthError
from envship.oci import OCI_LAYER, Descriptor, sha256_digest
from envship.registry import RegistryClient
from registrylib import Registry, TokenServer

FAST = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.01)
HOST = "registry.example:5000"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def assert_secret_hidden(error: EnvshipError, *secrets: str) -> None:
    shown = [str(error), error.hint or "", json.dumps(error.to_json()), repr(error)]
    for secret in secrets:
        for text in shown:
            assert secret not in text


# -- parsing challenges ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        (
            'Bearer realm="https://auth.example/token",service="reg",'
            'scope="repository:a/b:pull,push"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.example/token",
                        "service": "reg",
                        "scope": "repository:a/b:pull,push",
                    },
                )
            ],
        ),
        (
            'Bearer realm="r", error="insufficient_scope", scope=a',
            [Challenge("bearer", {"realm": "r", "error": "insufficient_scope", "scope": "a"})],
        ),
        (
            'Basic realm="x", Bearer realm="y",service="s"',
            [
                Challenge("basic", {"realm": "x"}),
                Challenge("bearer", {"realm": "y", "service": "s"}),
            ],
        ),
        ('Basic realm="say \\"hi\\""', [Challenge("basic", {"realm": 'say "hi"'})]),
        ("Bearer", [Challenge("bearer", {})]),
        ("", []),
    ],
    ids=["basic", "bearer-comma-in-quotes", "spaces-and-bare", "two", "escapes", "bare", "empty"],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges([header]) == expected


# -- config.json -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "entry", "expected"),
    [
        (HOST, {"auth": b64("alice:s3cret:with:colons")}, ("alice", "s3cret:with:colons", "")),
        (f"https://{HOST}", {"username": "bob", "password": "pw"}, ("bob", "pw", "")),
        (f"http://{HOST}/v2/", {"auth": b64("carol:pw")}, ("carol", "pw", "")),
        (f"{HOST}/", {"identitytoken": "refresh-1"}, ("", "", "refresh-1")),
        ("REGISTRY.example:5000", {"auth": b64("dave:pw")}, ("dave", "pw", "")),
    ],
    ids=["auth", "https-key", "path-key", "identitytoken", "case"],
)
def test_auths_entries(
    tmp_path: Path, key: str, entry: dict[str, str], expected: tuple[str, str, str]
) -> None:
    config = write_config(tmp_path / "config.json", {"auths": {key: entry, "other:1": entry}})
    found = find_credentials(HOST, config)
    assert found is not None
    assert (found.username, found.password, found.identity_token) == expected
    assert str(config) in found.source


@pytest.mark.parametrize(
    "data",
    [{}, {"auths": {}}, {"auths": {"other.example": {"auth": b64("a:b")}}}, {"auths": {HOST: {}}}],
    ids=["empty", "no-auths", "other-host", "empty-entry"],
)
def test_no_credentials(tmp_path: Path, data: dict[str, Any]) -> None:
    assert find_credentials(HOST, write_config(tmp_path / "config.json", data)) is None
    assert find_credentials(HOST, tmp_path / "missing.json") is None


def test_docker_hub_names_share_the_hub_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json",
        {"auths": {"https://index.docker.io/v1/": {"auth": b64("hubuser:pw")}}},
    )
    for host in ("registry-1.docker.io", "docker.io", "index.docker.io"):
        found = find_credentials(host, config)
        assert found is not None and found.username == "hubuser"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        (json.dumps({"auths": {HOST: {"auth": "%%%"}}}), "not base64"),
        (json.dumps({"auths": {HOST: {"auth": b64("no-colon")}}}), "not base64"),
    ],
    ids=["json", "array", "base64", "colon"],
)
def test_broken_config_is_named(tmp_path: Path, text: str, match: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(text)
    with pytest.raises(RegistryAuthError, match=match) as caught:
        find_credentials(HOST, config)
    assert str(config) in str(caught.value)


def test_credentials_repr_hides_secrets() -> None:
    creds = Credentials("alice", "pw-hidden", "idt-hidden", "rt-hidden", "somewhere")
    assert "alice" in repr(creds)
    for secret in ("pw-hidden", "idt-hidden", "rt-hidden"):
        assert secret not in repr(creds)


def test_config_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert docker_config_file(environ={"DOCKER_CONFIG": "/etc/dc"}) == Path("/etc/dc/config.json")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert docker_config_file(environ={}) == tmp_path / ".docker" / "config.json"
    assert docker_config_file(tmp_path / "x.json") == tmp_path / "x.json"
    assert docker_config_file(tmp_path) == tmp_path / "config.json"


# -- credential helpers ------------------------------------------------------------------------


HELPER = """#!{python}
import json, os, sys
assert sys.argv[1:] == ["get"], sys.argv
server = sys.stdin.read()
with open({log!r}, "a") as log:
    log.write(server + "\\n")
known = json.loads(os.environ["HELPER_SECRETS"])
if server not in known:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = known[server]
print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
"""


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``docker-credential-envtest`` on PATH; HELPER_SECRETS maps servers to (user,
    secret); every server it is asked for is appended to the returned log file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    program = bindir / "docker-credential-envtest"
    program.write_text(HELPER.format(python=sys.executable, log=str(log)))
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HELPER_SECRETS", "{}")
    return log


def set_helper_secrets(monkeypatch: pytest.MonkeyPatch, secrets: dict[str, list[str]]) -> None:
    monkeypatch.setenv("HELPER_SECRETS", json.dumps(secrets))


@pytest.mark.parametrize(
    "data",
    [{"credHelpers": {HOST: "envtest"}}, {"credsStore": "envtest"}],
    ids=["credHelpers", "credsStore"],
)
def test_helper_gives_credentials(
    tmp_path: Path, helper: Path, monkeypatch: pytest.MonkeyPatch, data: dict[str, Any]
) -> None:
    set_helper_secrets(monkeypatch, {HOST: ["helpuser", "helper-secret"]})
    found = find_credentials(HOST, write_config(tmp_path / "config.json", data))
    assert found is not None
    assert (found.username, found.password) == ("helpuser", "helper-secret")
    assert found.source == "credential helper docker-credential-envtest"
    assert helper.read_text().splitlines() == [HOST]


def test_helper_token_user_is_an_identity_token(
    tmp_path: Path, helper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_helper_secrets(monkeypatch, {HOST: ["<token>", "refresh-xyz"]})
    config = write_config(tmp_path / "config.json", {"credsStore": "envtest"})
    found = find_credentials(HOST, config)
    assert found is not None and (found.username, found.identity_token) == ("", "refresh-xyz")


def test_helper_without_entry_falls_back_to_auths(
    tmp_path: Path, helper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path / "config.json",
        {"credsStore": "envtest", "auths": {HOST: {"auth": b64("fileuser:pw")}}},
    )
    found = find_credentials(HOST, config)
    assert found is not None and found.username == "fileuser"
    assert helper.read_text().splitlines() == [HOST]


def test_per_registry_helper_wins_over_store(
    tmp_path: Path, helper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_helper_secrets(monkeypatch, {HOST: ["from-envtest", "pw"]})
    config = write_config(
        tmp_path / "config.json", {"credsStore": "absent", "credHelpers": {HOST: "envtest"}}
    )
    found = find_credentials(HOST, config)
    assert found is not None and found.username == "from-envtest"


def test_missing_helper_is_named(tmp_path: Path, helper: Path) -> None:
    config = write_config(tmp_path / "config.json", {"credHelpers": {HOST: "not-installed"}})
    with pytest.raises(RegistryAuthError) as caught:
        find_credentials(HOST, config)
    assert "docker-credential-not-installed" in str(caught.value)
    assert str(config) in (caught.value.hint or "")


# -- Basic auth against the htpasswd registry ------------------------------------------------


def layer(data: bytes) -> Descriptor:
    return Descriptor(OCI_LAYER, sha256_digest(data), len(data))


def push_and_pull(c: RegistryClient, repo: str, tmp_path: Path) -> None:
    data = os.urandom(4096)
    assert c.push_blob(repo, layer(data), lambda: io.BytesIO(data)) == "uploaded"
    assert c.fetch_blob(repo, layer(data), tmp_path / "pulled").read_bytes() == data


def basic_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    return write_config(
        tmp_path / "docker" / "config.json", {"auths": {host: {"auth": b64(f"{user}:{password}")}}}
    )


def test_basic_auth_from_config(auth_registry: Registry, tmp_path: Path) -> None:
    assert auth_registry.username and auth_registry.password
    config = basic_config(
        tmp_path, auth_registry.host, auth_registry.username, auth_registry.password
    )
    push_and_pull(
        RegistryClient(auth_registry.host, docker_config=config, retry=FAST), "basic/a", tmp_path
    )


def test_basic_auth_from_docker_config_env(
    auth_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert auth_registry.username and auth_registry.password
    config = basic_config(
        tmp_path, auth_registry.host, auth_registry.username, auth_registry.password
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(config.parent))
    push_and_pull(RegistryClient(auth_registry.host, retry=FAST), "basic/env", tmp_path)


def test_basic_auth_from_a_credential_helper(
    auth_registry: Registry, tmp_path: Path, helper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert auth_registry.username and auth_registry.password
    set_helper_secrets(
        monkeypatch, {auth_registry.host: [auth_registry.username, auth_registry.password]}
    )
    config = write_config(
        tmp_path / "config.json", {"credHelpers": {auth_registry.host: "envtest"}}
    )
    c = RegistryClient(auth_registry.host, docker_config=config, retry=FAST)
    push_and_pull(c, "basic/helper", tmp_path)
    assert helper.read_text().splitlines() == [auth_registry.host]  # asked once per client


def test_basic_auth_wrong_password(auth_registry: Registry, tmp_path: Path) -> None:
    wrong = "wrong-" + os.urandom(8).hex()
    config = basic_config(tmp_path, auth_registry.host, "alice", wrong)
    c = RegistryClient(auth_registry.host, docker_config=config, retry=FAST)
    with pytest.raises(RegistryAuthError) as caught:
        c.get_manifest("basic/a", "v1")
    error = caught.value
    assert error.registry == auth_registry.host and error.status == 401
    assert "rejected the credentials of user 'alice'" in str(error)
    assert f"docker login {auth_registry.host}" in (error.hint or "")
    assert_secret_hidden(error, wrong, b64(f"alice:{wrong}"))


def test_basic_auth_missing_credentials(auth_registry: Registry, tmp_path: Path) -> None:
    config = tmp_path / "nothing" / "config.json"
    c = RegistryClient(auth_registry.host, docker_config=config, retry=FAST)
    with pytest.raises(RegistryAuthError) as caught:
        c.blob_exists("basic/a", sha256_digest(b"x"))
    error = caught.value
    assert f"{auth_registry.host} requires credentials" in str(error)
    assert error.hint == (
        f"log in with `docker login {auth_registry.host}` (it writes {config}), then try again"
    )
    assert error.exit_code == 3 and error.to_json()["error"] == "registry-auth"


# -- Bearer tokens against the token registry ------------------------------------------------


def token_client(
    registry: Registry, tmp_path: Path, entry: dict[str, str] | None, name: str = "config.json"
) -> RegistryClient:
    data = {"auths": {registry.host: entry}} if entry else {}
    config = write_config(tmp_path / name, data)
    return RegistryClient(registry.host, docker_config=config, retry=FAST)


def alice(registry: Registry) -> dict[str, str]:
    assert registry.password
    return {"auth": b64(f"alice:{registry.password}")}


def test_bearer_push_and_pull_with_one_token_per_scope(
    token_registry: tuple[Registry, TokenServer], tmp_path: Path
) -> None:
    registry, tokens = token_registry
    before = len(tokens.log)
    c = token_client(registry, tmp_path, alice(registry))
    for i in range(3):
        data = os.urandom(1000)
        c.push_blob("bearer/app", layer(data), partial(io.BytesIO, data))
        assert c.fetch_blob("bearer/app", layer(data), tmp_path / f"b{i}").read_bytes() == data
    asked = tokens.log[before:]
    assert asked == [
        ("GET", "alice", ("repository:bearer/app:pull,push",)),
        ("GET", "alice", ("repository:bearer/app:pull",)),
    ]


def test_bearer_mount_asks_for_the_source_too(
    token_registry: tuple[Registry, TokenServer], tmp_path: Path
) -> None:
    registry, tokens = token_registry
    c = token_client(registry, tmp_path, alice(registry))
    data = os.urandom(2000)
    c.push_blob("bearer/base", layer(data), lambda: io.BytesIO(data))
    before = len(tokens.log)
    assert (
        c.push_blob(
            "bearer/derived", layer(data), lambda: io.BytesIO(data), mount_from="bearer/base"
        )
        == "mounted"
    )
    assert tokens.log[before:] == [
        ("GET", "alice", ("repository:bearer/base:pull", "repository:bearer/derived:pull,push"))
    ]


def test_bearer_identity_token(
    token_registry: tuple[Registry, TokenServer], tmp_path: Path
) -> None:
    registry, tokens = token_registry
    refresh = next(iter(tokens.refresh_tokens))
    before = len(tokens.log)
    push_and_pull(
        token_client(registry, tmp_path, {"identitytoken": refresh}), "bearer/idt", tmp_path
    )
    assert {entry[:2] for entry in tokens.log[before:]} == {("POST", "alice")}


def test_bearer_anonymous_pull_works_and_push_says_how_to_log_in(
    token_registry: tuple[Registry, TokenServer], tmp_path: Path
) -> None:
    registry, _ = token_registry
    data = os.urandom(500)
    token_client(registry, tmp_path, alice(registry), "alice.json").push_blob(
        "bearer/public", layer(data), lambda: io.BytesIO(data)
    )
    anonymous = token_client(registry, tmp_path, None)
    assert anonymous.fetch_blob("bearer/public", layer(data), tmp_path / "x").read_bytes() == data
    with pytest.raises(RegistryAuthError) as caught:
        anonymous.push_blob("bearer/public", layer(b"new"), lambda: io.BytesIO(b"new"))
    assert "requires credentials (repository:bearer/public:pull,push)" in str(caught.value)
    assert f"docker login {registry.host}" in (caught.value.hint or "")


def test_bearer_user_without_push_permission(
    token_registry: tuple[Registry, TokenServer], tmp_path: Path
) -> None:
    registry, tokens = token_registry
    password = tokens.users["reader"][0]
    c = token_client(registry, tmp_path, {"auth": b64(f"reader:{password}")})
    with pytest.raises(RegistryAuthError) as caught:
        c.push_blob("bearer/ro", layer(b"x"), lambda: io.BytesIO(b"x"))
    assert "denied user 'reader' repository:bearer/ro:pull,push" in str(caught.value)
    assert "ask for the right to push to the repository" in (caught.value.hint or "")
    assert_secret_hidden(caught.value, password)


def test_bearer_wrong_password_at_the_token_service(
    token_registry: tuple[Registry, TokenServer], tmp_path: Path
) -> None:
    registry, _ = token_registry
    wrong = "wrong-" + os.urandom(8).hex()
    c = token_client(registry, tmp_path, {"username": "alice", "password": wrong})
    with pytest.raises(RegistryAuthError) as caught:
        c.get_manifest("bearer/app", "v1")
    error = caught.value
    assert "token service" in str(error) and "rejected the credentials of user 'alice'" in str(
        error
    )
    assert error.status == 401 and error.registry == registry.host
    assert_secret_hidden(error, wrong, b64(f"alice:{wrong}"))

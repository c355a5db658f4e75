"""Credentials and challenges for OCI registries.

Credentials come from Docker's ``config.json`` (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``), exactly where ``docker login`` puts them: a per-registry
``credHelpers`` entry, else the global ``credsStore``, both spoken to with the
docker-credential-helpers ``get`` protocol (the server on stdin, ``{"Username",
"Secret"}`` on stdout, ``Username == "<token>"`` marking an identity token), else an
``auths`` entry (base64 ``auth``, ``username``/``password``, ``identitytoken``).

Challenges follow RFC 7235 and the distribution token spec (docs/spec/auth/token.md and
oauth.md of the distribution project): ``Basic`` sends the credentials as they are;
``Bearer`` trades them (or nothing, for anonymous pulls) at the realm for a token per
set of scopes, which is cached until it expires.

Secrets stay in this module and in ``Authorization`` headers: :class:`Credentials`
hides them from ``repr`` and no message built here contains one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from .errors import RegistryAuthError, RegistryError

__all__ = [
    "Authenticator",
    "Challenge",
    "Credentials",
    "docker_config_file",
    "find_credentials",
    "login_hint",
    "parse_challenges",
    "run_helper",
]

#: Docker Hub's key in config.json, whatever host name the reference used.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_NOT_FOUND = (
    "credentials not found"  # the helpers' fixed message (credentials.ErrCredentialsNotFound)
)
_HELPER_TIMEOUT = 60.0
_TOKEN_MARGIN = 10.0  # refresh a token this many seconds before it expires
_DEFAULT_TOKEN_LIFE = 60.0  # token.md: "if omitted, the token lifetime is 60 seconds"

#: ``(method, url, headers, body) -> (status, body)``: the registry client's transport,
#: with its retries and TLS policy, lent to the token flow.
Transport = Callable[[str, str, Mapping[str, str], bytes | None], tuple[int, bytes]]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What config.json or a helper holds for one registry. Secrets never print."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # OAuth2 refresh token
    registry_token: str = field(default="", repr=False)  # a bearer token to send as is
    source: str = ""  # where they came from, for messages

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def docker_config_file(
    docker_config: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The config.json to read: ``docker_config`` (a file, or a folder holding one),
    else ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    if docker_config is not None:
        return docker_config / "config.json" if docker_config.is_dir() else docker_config
    env = os.environ if environ is None else environ
    folder = env.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def login_hint(host: str, config: Path) -> str:
    return f"log in with `docker login {host}` (it writes {config}), then try again"


def _hostname(key: str) -> str:
    # Docker's convertToHostname: keys may carry a scheme and a path ("https://h/v1/").
    rest = key.strip()
    for scheme in ("http://", "https://"):
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme) :]
    return rest.split("/", 1)[0].lower()


def _same_registry(key: str, host: str) -> bool:
    name = _hostname(key)
    return name == host or (name in _HUB_HOSTS and host in _HUB_HOSTS)


def find_credentials(host: str, config: Path) -> Credentials | None:
    """The credentials config.json gives ``host``, or None when it gives none."""
    host = host.lower()
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _config_error(host, config, f"cannot read it: {exc.strerror}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise _config_error(host, config, f"not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise _config_error(host, config, "not a JSON object")
    helpers = data.get("credHelpers")
    helper = None
    if isinstance(helpers, dict):
        helper = next((v for k, v in helpers.items() if _same_registry(k, host)), None)
    if helper is None and isinstance(data.get("credsStore"), str) and data["credsStore"]:
        helper = data["credsStore"]
    if isinstance(helper, str) and helper:
        server = DOCKER_HUB_KEY if host in _HUB_HOSTS else host
        found = run_helper(helper, server, host, config)
        if found is not None:
            return found
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return None
    # An exact key first, so "h:5000" beats "https://h:5000/v2/" when both are present.
    keys = sorted((k for k in auths if _same_registry(k, host)), key=lambda k: k != host)
    for key in keys:
        entry = auths[key]
        if isinstance(entry, dict):
            found = _from_entry(entry, host, config, key)
            if found is not None:
                return found
    return None


def _from_entry(
    entry: Mapping[str, object], host: str, config: Path, key: str
) -> Credentials | None:
    source = f"{config} (auths[{key!r}])"

    def text(name: str) -> str:
        value = entry.get(name)
        return value if isinstance(value, str) else ""

    username, password = text("username"), text("password")
    encoded = text("auth")
    if encoded:
        try:
            raw = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raw = ""
        if ":" not in raw:
            raise _config_error(
                host, config, f"auths[{key!r}].auth is not base64 of 'user:password'"
            )
        username, password = raw.split(":", 1)
    identity, token = text("identitytoken"), text("registrytoken")
    if not (username or password or identity or token):
        return None  # "{}": docker login put the secret in a credsStore
    return Credentials(username, password, identity, token, source)


def run_helper(name: str, server: str, host: str, config: Path) -> Credentials | None:
    """Ask ``docker-credential-<name>`` for ``server``'s credentials."""
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise RegistryAuthError(
            f"the credential helper {program} named in {config} is not installed",
            url=server,
            registry=host,
            hint=f"install {program} or remove it from credHelpers/credsStore in {config}",
        ) from None
    except subprocess.TimeoutExpired:
        raise RegistryAuthError(
            f"the credential helper {program} did not answer in {_HELPER_TIMEOUT:.0f} s",
            url=server,
            registry=host,
        ) from None
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        said = (out.strip() or done.stderr.decode("utf-8", "replace").strip()).splitlines()
        first = said[0][:200] if said else f"exit status {done.returncode}"
        if _NOT_FOUND in first.lower():
            return None
        raise RegistryAuthError(
            f"the credential helper {program} failed for {host}: {first}",
            url=server,
            registry=host,
            hint=login_hint(host, config),
        )
    try:
        answer = json.loads(out)
        username, secret = answer["Username"], answer["Secret"]
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        # The output is not shown: it may hold the secret.
        raise RegistryAuthError(
            f"the credential helper {program} gave an answer that is not "
            '{"Username": ..., "Secret": ...}',
            url=server,
            registry=host,
        ) from None
    source = f"credential helper {program}"
    if username == "<token>":
        return Credentials(identity_token=secret, source=source)
    return Credentials(username, secret, source=source)


def _config_error(host: str, config: Path, what: str) -> RegistryAuthError:
    return RegistryAuthError(
        f"cannot use the Docker config {config}: {what}",
        url=str(config),
        registry=host,
        hint=f"fix or remove {config}, or log in again with `docker login {host}`",
    )


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a lowercase scheme and its parameters."""

    scheme: str
    params: Mapping[str, str]


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf'[\s,]*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)')
_SCHEME = re.compile(rf"[\s,]*({_TOKEN})(?=\s|,|$)")
_ESCAPE = re.compile(r"\\(.)")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` values (RFC 7235 section 4.1); quoted values may hold
    commas (``scope="repository:a:pull,push"``)."""
    found: list[tuple[str, dict[str, str]]] = []
    for header in values:
        pos = 0
        while pos < len(header):
            param = _PARAM.match(header, pos)
            if param and found:
                value = param.group(2)
                if value.startswith('"'):
                    value = _ESCAPE.sub(r"\1", value[1:-1])
                found[-1][1][param.group(1).lower()] = value
                pos = param.end()
                continue
            scheme = _SCHEME.match(header, pos)
            if scheme is None:
                break
            found.append((scheme.group(1).lower(), {}))
            pos = scheme.end()
    return [Challenge(scheme, params) for scheme, params in found]


_UNSET = object()


class Authenticator:
    """The auth state of one registry: its scheme, the credentials, tokens per scope.

    Thread-safe. ``allow_realm(url)`` says whether a token realm may be contacted (the
    client's plain-HTTP policy); ``transport`` performs the token request.
    """

    def __init__(
        self,
        host: str,
        config: Path,
        transport: Transport,
        allow_realm: Callable[[str], None],
    ) -> None:
        self.host = host
        self.config = config
        self._transport = transport
        self._allow_realm = allow_realm
        self._lock = threading.RLock()
        self._scheme: str | None = None
        self._realm = ""
        self._service = ""
        self._creds: object = _UNSET
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    @property
    def scheme(self) -> str | None:
        return self._scheme

    def credentials(self) -> Credentials | None:
        """Looked up once, at the first challenge: a helper may be slow or prompt."""
        with self._lock:
            if self._creds is _UNSET:
                self._creds = find_credentials(self.host, self.config)
            creds = self._creds
        return creds if isinstance(creds, Credentials) else None

    def learn(self, challenges: Sequence[Challenge], scopes: Sequence[str] = ()) -> bool:
        """Take a 401's challenges; True when another attempt may now succeed."""
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        with self._lock:
            if bearer is not None and bearer.params.get("realm"):
                self._scheme = "bearer"
                self._realm = bearer.params["realm"]
                self._service = bearer.params.get("service", "")
                self._tokens.pop(_key(scopes), None)
                return True
            if basic is not None:
                self._scheme = "basic"
                return self.credentials() is not None
        return False

    def authorization(self, scopes: Sequence[str]) -> str | None:
        """The header value for a request needing ``scopes``, fetching a token if due."""
        with self._lock:
            scheme = self._scheme
        if scheme == "basic":
            creds = self.credentials()
            return creds.basic() if creds is not None and not creds.registry_token else None
        if scheme != "bearer":
            return None
        key = _key(scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            token, life = self._fetch_token(key)
            self._tokens[key] = (token, time.monotonic() + max(0.0, life - _TOKEN_MARGIN))
        return f"Bearer {token}"

    def _fetch_token(self, scopes: tuple[str, ...]) -> tuple[str, float]:
        creds = self.credentials()
        if creds is not None and creds.registry_token:
            return creds.registry_token, float("inf")
        self._allow_realm(self._realm)
        headers = {"Accept": "application/json"}
        body: bytes | None = None
        params: list[tuple[str, str]] = []
        if self._service:
            params.append(("service", self._service))
        if creds is not None and creds.identity_token:
            # oauth.md: a refresh token is traded with a POSTed form; scopes space-separated.
            method = "POST"
            form = [*params, ("grant_type", "refresh_token"), ("client_id", "envship")]
            form.append(("refresh_token", creds.identity_token))
            if scopes:
                form.append(("scope", " ".join(scopes)))
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            url = self._realm
        else:
            method = "GET"
            params.extend(("scope", s) for s in scopes)
            if creds is not None:
                params.append(("account", creds.username))
                headers["Authorization"] = creds.basic()
            query = urlencode(params)
            url = self._realm + (("&" if "?" in self._realm else "?") + query if query else "")
        status, data = self._transport(method, url, headers, body)
        shown = _strip_query(url)
        if status in (401, 403):
            raise self.error(status, scopes, url=shown, denied=status == 403, at_token_service=True)
        if status != 200:
            raise RegistryError(
                f"the token service of {self.host} answered HTTP {status}",
                url=shown,
                registry=self.host,
                status=status,
            )
        try:
            answer = json.loads(data)
            token = answer.get("token") or answer.get("access_token")
            life = answer.get("expires_in", _DEFAULT_TOKEN_LIFE)
            if not isinstance(token, str) or not token:
                raise TypeError
        except (json.JSONDecodeError, AttributeError, TypeError):
            raise RegistryError(
                f"the token service of {self.host} answered without a token",
                url=shown,
                registry=self.host,
            ) from None
        life = float(life) if isinstance(life, int | float) and life > 0 else _DEFAULT_TOKEN_LIFE
        return token, life

    def error(
        self,
        status: int,
        scopes: Sequence[str],
        *,
        url: str,
        denied: bool = False,
        at_token_service: bool = False,
        detail: str = "",
    ) -> RegistryAuthError:
        """The error for a refusal: which registry, whose credentials, how to log in.
        ``denied``: the credentials were accepted but lack the scopes (403, or a 401
        whose challenge says ``error="insufficient_scope"``)."""
        creds = self.credentials()
        wanted = ", ".join(scopes) if scopes else "access"
        login = login_hint(self.host, self.config)
        if creds is None:
            message = f"{self.host} requires credentials ({wanted}) and none were found in "
            message += str(self.config)
            hint = login
        else:
            who = f"user {creds.username!r}" if creds.username else "the token"
            by = f"the token service of {self.host}" if at_token_service else self.host
            if denied:
                message = f"{by} denied {who} {wanted}"
                hint = f"ask for the right to {_verbs(scopes)} the repository, or {login}"
            else:
                message = f"{by} rejected the credentials of {who} from {creds.source}"
                hint = login
        if detail:
            message += f": {detail}"
        return RegistryAuthError(message, url=url, registry=self.host, status=status, hint=hint)


def _verbs(scopes: Sequence[str]) -> str:
    return "push to" if any("push" in s.rsplit(":", 1)[-1] for s in scopes) else "pull from"


def _key(scopes: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(set(scopes)))


def _strip_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"

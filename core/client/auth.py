"""Challenge auth for the registry client: Basic, and Bearer tokens (the Docker token protocol).

How one request is authorised (:class:`Authenticator`):

1. Before it is sent (:meth:`Authenticator.authorization`): once the registry has answered
   with a Bearer challenge, a token for (realm, service, the request's scope) — from the cache,
   or fetched now, so a request with a streamed body goes out with a token that is valid; once
   it has asked for Basic (or with ``preemptive_basic``), the provider's Basic credentials;
   otherwise nothing (the first request of an anonymous-capable session).
2. On a 401 (:meth:`Authenticator.after_challenge`): the ``WWW-Authenticate`` challenge
   decides. Bearer → a token for the challenge's scope (the refused one is dropped from the
   cache first: an expired or revoked token is renewed here); Basic → the credentials, unless
   they were what was just refused. The caller retries once with the answer.

Tokens are fetched with ``GET <realm>?service=...&scope=...`` (Basic credentials when the
provider has some, anonymous otherwise), accept ``token`` or ``access_token`` and honour
``expires_in`` (60 s when absent). They are cached per (realm, service, scope) until shortly
before they expire, with at most one request per key in flight: concurrent requests needing
the same token wait for that one.

Like httpx's ``Auth.auth_flow``, the decisions are pure functions over headers and answers
(:func:`parse_challenges`, :func:`parse_token_answer`, :class:`TokenCache`); unlike it, the flow
is driven by the client, because a single-flight token fetch must await a lock shared by
requests, and a streamed request body cannot be replayed by httpx.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import trio

from core.client.credentials import CredentialsProvider
from core.client.failures import answer_error, transport_boundary
from core.client.http import read_body, send_with_retry
from core.errors import Unavailable
from core.reference import RepositoryName

#: Lifetime of a token whose answer has no ``expires_in`` (the token spec's default).
DEFAULT_TOKEN_SECONDS = 60.0
#: A token is used until this long before it expires (half its lifetime when shorter).
EXPIRY_MARGIN_SECONDS = 10.0
TOKEN_CACHE_SIZE = 1024
MAX_TOKEN_ANSWER_BYTES = 1024 * 1024

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME = re.compile(rf"[\s,]*({_TOKEN})(?=\s|$)")
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_TOKEN})\s*(?:,|$)')
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: Mapping[str, str]  # names in lower case, values unquoted


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` value (RFC 7235 auth-params; several
    challenges may share one header). Parsing stops at the first malformed part."""
    challenges: list[Challenge] = []
    position = 0
    while position < len(header):
        scheme = _SCHEME.match(header, position)
        if scheme is None:
            break
        position = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM.match(header, position)) is not None:
            value = param.group(2)
            if value.startswith('"'):
                value = _ESCAPE.sub(r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            position = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def pull_scope(repository: RepositoryName) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: RepositoryName) -> str:
    return f"repository:{repository}:pull,push"


CATALOG_SCOPE = "registry:catalog:*"


def normalise_scope(scope: str) -> str:
    """Scopes in one canonical spelling, so ``repository:a:push,pull`` and
    ``repository:a:pull,push`` share a cache entry: sorted, actions sorted and merged."""
    merged: dict[str, set[str]] = {}
    for item in scope.split():
        resource, _, actions = item.rpartition(":")
        if not resource:
            resource, actions = item, ""
        merged.setdefault(resource, set()).update(a for a in actions.split(",") if a)
    return " ".join(
        f"{resource}:{','.join(sorted(actions))}" for resource, actions in sorted(merged.items())
    )


def parse_token_answer(body: bytes) -> tuple[str, float]:
    """(token, lifetime in seconds) from a token service's JSON answer."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise Unavailable("the token service sent malformed JSON") from exc
    token = None
    expires_in: object = None
    if isinstance(document, dict):
        token = document.get("token") or document.get("access_token")
        expires_in = document.get("expires_in")
    if not isinstance(token, str) or not token:
        raise Unavailable("the token service's answer has no token")
    lifetime = DEFAULT_TOKEN_SECONDS
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetime = float(expires_in)
    return token, lifetime


def usable_seconds(lifetime: float) -> float:
    """How long a token of ``lifetime`` seconds is used: until shortly before it expires."""
    return lifetime - min(EXPIRY_MARGIN_SECONDS, lifetime / 2)


@dataclass(frozen=True, slots=True)
class TokenKey:
    realm: str
    service: str
    scope: str  # normalised; "" for none


class TokenCache:
    """Tokens by key until a given time (trio's clock), least recently used dropped first."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[TokenKey, tuple[str, float]] = OrderedDict()

    def get(self, key: TokenKey, now: float) -> str | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: TokenKey, token: str, until: float) -> None:
        self._entries[key] = (token, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, token: str) -> None:
        """Drop every entry holding ``token`` (the registry refused it)."""
        for key in [k for k, (value, _) in self._entries.items() if value == token]:
            del self._entries[key]


@dataclass
class _Flight:
    """The one token request for a key, and how many requests wait for it."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    users: int = 0


class Authenticator:
    """The auth state of one client towards one registry host (see the module doc)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        credentials: CredentialsProvider,
        host: str,
        *,
        preemptive_basic: bool = False,
    ) -> None:
        self._http = http
        self._credentials = credentials
        self._host = host
        self._preemptive_basic = preemptive_basic
        self._bearer: Challenge | None = None  # the last Bearer challenge: realm, service
        self._basic = False  # the registry asked for Basic
        self._tokens = TokenCache()
        self._fetching: dict[TokenKey, _Flight] = {}

    async def has_credentials(self) -> bool:
        return await self._credentials.credentials(self._host) is not None

    async def authorization(self, scope: str | None) -> str | None:
        """The ``Authorization`` value to send a request needing ``scope`` with, if any."""
        if self._bearer is not None:
            return "Bearer " + await self._token(self._key(self._bearer, scope))
        if self._basic or self._preemptive_basic:
            credentials = await self._credentials.credentials(self._host)
            if credentials is not None:
                return credentials.basic_authorization()
        return None

    async def after_challenge(
        self, header: str | None, scope: str | None, sent: str | None
    ) -> str | None:
        """What to retry with after a 401 carrying ``header`` (WWW-Authenticate), when the
        request needed ``scope`` and was sent with ``sent``; None when a retry cannot help."""
        challenges = parse_challenges(header or "")
        bearer = next(
            (c for c in challenges if c.scheme == "bearer" and c.params.get("realm")), None
        )
        if bearer is not None:
            self._bearer = bearer
            if sent is not None and sent.startswith("Bearer "):
                self._tokens.forget(sent.removeprefix("Bearer "))
            wanted = bearer.params.get("scope") or scope
            return "Bearer " + await self._token(self._key(bearer, wanted))
        if any(c.scheme == "basic" for c in challenges):
            self._basic = True
            credentials = await self._credentials.credentials(self._host)
            if credentials is None:
                return None
            basic = credentials.basic_authorization()
            return None if basic == sent else basic
        return None

    @staticmethod
    def _key(challenge: Challenge, scope: str | None) -> TokenKey:
        return TokenKey(
            challenge.params["realm"],
            challenge.params.get("service", ""),
            normalise_scope(scope or ""),
        )

    async def _token(self, key: TokenKey) -> str:
        cached = self._tokens.get(key, trio.current_time())
        if cached is not None:
            return cached
        flight = self._fetching.get(key)
        if flight is None:
            flight = self._fetching[key] = _Flight()
        flight.users += 1
        try:
            async with flight.lock:
                cached = self._tokens.get(key, trio.current_time())
                if cached is not None:
                    return cached
                asked_at = trio.current_time()
                token, lifetime = await self._fetch(key)
                self._tokens.put(key, token, asked_at + usable_seconds(lifetime))
                return token
        finally:
            flight.users -= 1
            if flight.users == 0:
                del self._fetching[key]

    async def _fetch(self, key: TokenKey) -> tuple[str, float]:
        credentials = await self._credentials.credentials(self._host)
        params = httpx.QueryParams([("service", key.service)] if key.service else [])
        for scope in key.scope.split():
            params = params.add("scope", scope)
        headers = (
            {} if credentials is None else {"Authorization": credentials.basic_authorization()}
        )
        realm_host = urlsplit(key.realm).netloc or key.realm
        with transport_boundary(realm_host, "GET token"):
            request = self._http.build_request("GET", key.realm, params=params, headers=headers)
            response = await send_with_retry(self._http, request, stream=True)
            try:
                body = await read_body(response, MAX_TOKEN_ANSWER_BYTES)
            finally:
                await response.aclose()
        if response.status_code != 200:
            raise answer_error(
                response.status_code,
                response.headers,
                body,
                not_found=Unavailable,
                host=realm_host,
            )
        return parse_token_answer(body)

"""Origin's control plane, as the edge's gate needs it: the JWKS that tokens verify
against, the org of a legacy project id or of an org id, and a client's token exchanged at
``/token``; and as its mirrors need it: the upstreams an org registered, with their
credentials decrypted (only an edge credential gets those, and they are never logged).

This is :class:`edge.auth.OriginAuthority` over HTTP, on its own pooled httpx client (the
``/v2`` traffic goes through :class:`core.client.registry.RegistryClient`). JWKS and project
lookups authenticate as the edge (Basic ``x-token:<edge token>``); a token exchange carries
the client's own credential (or none) and the client's ``Host``, never the edge's.

It is an httpx boundary: every failure leaves it as a :mod:`core.errors` value
(``Unavailable`` with ``Retry-After``, or for an exchange ``Unauthorized`` /
``TooManyRequests``). The gate's protocol takes no deadline, so each lookup has a backstop
here (:data:`LOOKUP_DEADLINE_SECONDS`) that keeps a hung origin from hanging a request, and
every call goes through the edge's circuit breaker on origin (:mod:`edge.breaker`): while it
is open, nothing is asked and callers get ``Unavailable`` at once.

A token exchange names the client it is made for in ``X-Forwarded-For`` (origin believes it
from the edges it trusts), so origin limits failed logins per client, not per edge: one
client's wrong passwords must not lock every client of the edge out.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import trio

from core.client.failures import MAX_ERROR_BYTES, retry_after, transport_boundary
from core.client.http import open_http_client, read_body, send_with_retry, x_token_auth
from core.errors import NameInvalid, TooManyRequests, Unauthorized, Unavailable
from core.reference import parse_repository_name
from core.tenancy import is_org_id, is_org_slug
from edge.breaker import CircuitBreaker

log = logging.getLogger("depot.edge.origin_control")

#: Backstop for one lookup or exchange (small answers).
LOOKUP_DEADLINE_SECONDS = 10.0
MAX_JSON_BYTES = 1024 * 1024
#: A project that does not exist may be created later; one that does never changes org.
PROJECT_MISS_SECONDS = 30.0
PROJECT_CACHE_SIZE = 10_000
#: Retry-After when origin could not be asked (the breaker's own figure when it is open).
UNAVAILABLE_RETRY_AFTER_SECONDS = 10
_ORIGIN = "origin"
#: Origin's answers that mean "not now": they count against the circuit.
_NOT_NOW = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class RegisteredUpstream:
    """An upstream registry an org registered (origin's ``/api/v1/edge/orgs/{org}/upstreams``)."""

    name: str
    url: str
    username: str
    password: str = field(repr=False)


class OriginControl:
    def __init__(
        self,
        http: httpx.AsyncClient,
        edge_token: str,
        *,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """``http`` carries origin's base URL; ``edge_token`` is the edge's credential."""
        self._http = http
        self._edge_auth = x_token_auth(edge_token)
        self._breaker = breaker if breaker is not None else CircuitBreaker()
        # project id / org id → (org slug or None, monotonic expiry)
        self._projects: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._orgs: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        origin_url: str,
        edge_token: str,
        *,
        max_connections: int = 4,
        breaker: CircuitBreaker | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> AsyncIterator[OriginControl]:
        """A control-plane client with its own connection pool, closed on exit."""
        http = open_http_client(
            origin_url, auth_header=None, max_connections=max_connections, verify=verify
        )
        async with http:
            yield cls(http, edge_token, breaker=breaker)

    async def jwks(self) -> dict[str, Any]:
        """Origin's published token-verification keys (a JWKS document)."""
        document = await self._json("/.well-known/jwks.json")
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise Unavailable("origin's JWKS is not a key set")
        return document

    async def project_org(self, project_id: str) -> str | None:
        """The org slug of legacy project ``project_id``; None when origin knows no such
        project. A found org is cached for good (a project never changes org), a miss
        for :data:`PROJECT_MISS_SECONDS`."""
        if not _is_project_id(project_id):
            return None
        path = f"/api/v1/projects/{quote(project_id, safe='')}"
        return await self._slug(self._projects, project_id, path, "org_slug")

    async def org_slug(self, org_id: str) -> str | None:
        """The slug of the org with id ``org_id`` (an org's id as its subdomain); None when
        origin knows no such org. Cached like projects: a slug never changes."""
        if not is_org_id(org_id):
            return None
        path = f"/api/v1/orgs/{quote(org_id, safe='')}"
        return await self._slug(self._orgs, org_id, path, "name")

    async def _slug(
        self,
        cache: OrderedDict[str, tuple[str | None, float]],
        key: str,
        path: str,
        field: str,
    ) -> str | None:
        """An org slug origin answers at ``path`` (in ``field``), through ``cache``."""
        now = trio.current_time()
        cached = cache.get(key)
        if cached is not None and cached[1] > now:
            cache.move_to_end(key)
            return cached[0]
        document = await self._json(path, missing_ok=True)
        org: str | None = None
        expiry = now + PROJECT_MISS_SECONDS
        if document is not None:
            slug = document.get(field) if isinstance(document, dict) else None
            if not isinstance(slug, str) or not is_org_slug(slug):
                raise Unavailable(f"origin's answer has no valid {field}", detail={"path": path})
            org, expiry = slug, math.inf
        cache[key] = (org, expiry)
        cache.move_to_end(key)
        while len(cache) > PROJECT_CACHE_SIZE:
            cache.popitem(last=False)
        return org

    async def org_upstreams(self, org: str) -> list[RegisteredUpstream] | None:
        """The upstreams ``org`` registered, credentials included; None when origin has no
        such org. Malformed entries are skipped (logged by name, never by secret)."""
        if not is_org_slug(org):
            return None
        document = await self._json(
            f"/api/v1/edge/orgs/{quote(org, safe='')}/upstreams", missing_ok=True
        )
        if document is None:
            return None
        listed = document.get("upstreams") if isinstance(document, dict) else None
        if not isinstance(listed, list):
            raise Unavailable("origin's upstreams answer has no upstreams list")
        found = []
        for entry in listed:
            values = [entry.get(k) if isinstance(entry, dict) else None for k in _UPSTREAM_KEYS]
            strings = [value for value in values if isinstance(value, str)]
            if len(strings) != len(_UPSTREAM_KEYS):
                log.warning("origin sent a malformed upstream of org %s: skipped", org)
                continue
            found.append(RegisteredUpstream(*strings))
        return found

    async def token(
        self,
        *,
        host: str,
        secret: str | None,
        service: str,
        scopes: Sequence[str],
        forwarded_for: str | None = None,
    ) -> str:
        """Exchange a client's registry token (None: anonymous) at origin's ``/token`` as if
        the client had asked on ``host`` (so names resolve as the client meant them); the JWT.
        ``forwarded_for`` names the client (``X-Forwarded-For``, the client's own hops and its
        address).

        Never sends the edge's own credential. Unauthorized (with a Basic challenge) when
        origin refuses the secret; TooManyRequests when it rate-limits; else Unavailable.
        """
        params: dict[str, str | list[str]] = {"service": service, "scope": list(scopes)}
        authorization = None if secret is None else x_token_auth(secret)
        headers = {"Host": host}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        response, body = await self._exchange(
            "/token", authorization, params=params, headers=headers
        )
        if response.status_code == 401:
            raise Unauthorized(
                "invalid credentials", headers={"WWW-Authenticate": 'Basic realm="depot-registry"'}
            )
        if response.status_code == 429:
            raise TooManyRequests(
                "too many failed token requests", headers=retry_after(response.headers)
            )
        if response.status_code != 200:
            raise Unavailable(
                "origin's token service failed",
                detail=_status(response),
                headers=retry_after(response.headers) or _retry_later(),
            )
        try:
            token = json.loads(body)["token"]
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unavailable("origin's token answer has no token", headers=_retry_later())
        return token

    async def _exchange(
        self,
        path: str,
        authorization: str | None,
        *,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """GET ``path`` with exactly ``authorization`` (none when None, whatever the httpx
        client's defaults), one retry after a transport error; read the body, close. Refused
        at once while the breaker is open; the outcome is the breaker's to know."""
        if not self._breaker.allow():
            raise self._breaker.unavailable()
        try:
            with self._breaker.record((Unavailable, _AnsweredNotNow)):
                response, body = await self._get(path, authorization, params, headers)
                if response.status_code in _NOT_NOW:
                    raise _AnsweredNotNow(response, body)
        except _AnsweredNotNow as answered:
            return answered.response, answered.body
        return response, body

    async def _get(
        self, path: str, authorization: str | None, params: Any, headers: dict[str, str] | None
    ) -> tuple[httpx.Response, bytes]:
        try:
            with trio.fail_after(LOOKUP_DEADLINE_SECONDS), transport_boundary(_ORIGIN, path):
                request = self._http.build_request("GET", path, params=params, headers=headers)
                if authorization is None:
                    request.headers.pop("Authorization", None)
                else:
                    request.headers["Authorization"] = authorization
                response = await send_with_retry(self._http, request, stream=True)
                try:
                    limit = MAX_JSON_BYTES if response.status_code == 200 else MAX_ERROR_BYTES
                    return response, await read_body(response, limit)
                finally:
                    await response.aclose()
        except trio.TooSlowError as exc:
            raise Unavailable(
                "origin did not answer in time", detail={"during": path}, headers=_retry_later()
            ) from exc
        except Unavailable as exc:
            exc.headers.setdefault("Retry-After", str(UNAVAILABLE_RETRY_AFTER_SECONDS))
            raise

    async def _json(self, path: str, *, missing_ok: bool = False) -> Any:
        response, body = await self._exchange(path, self._edge_auth)
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            log.error(
                "origin refused the edge credential: GET %s -> %d", path, response.status_code
            )
            raise Unavailable("edge credential rejected by origin")
        if response.status_code != 200:
            raise Unavailable(
                "origin's control plane failed",
                detail=_status(response),
                headers=retry_after(response.headers),
            )
        try:
            return json.loads(body)
        except ValueError as exc:
            raise Unavailable("origin sent malformed JSON", detail={"path": path}) from exc


_UPSTREAM_KEYS = ("name", "url", "username", "password")


class _AnsweredNotNow(Exception):
    """Origin answered 502/503/504: a failure for the breaker, an answer for the caller."""

    def __init__(self, response: httpx.Response, body: bytes) -> None:
        super().__init__(response.status_code)
        self.response, self.body = response, body


def _retry_later() -> dict[str, str]:
    return {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)}


def _status(response: httpx.Response) -> dict[str, int]:
    return {"status": response.status_code}


def _is_project_id(text: str) -> bool:
    try:
        return "/" not in parse_repository_name(text).value
    except NameInvalid:
        return False

"""Authorising ``/v2/`` requests at the edge, with origin's rules and answers but without a
round trip per request.

The contract is origin's ``Gate.authorize`` (see :mod:`core.auth.request`), and the rules,
names and refusals are the ones both gates share (:mod:`core.auth.gate`): realm is this
edge's ``/token``, which forwards to origin. What is the edge's own is how it learns who asks:

- Bearer tokens are verified locally against origin's JWKS, loaded at start, refreshed every
  few minutes, and refetched (at most once per 30 s) when a token names a key id the edge
  has not seen: origin rotated its key.
- Basic ``x-token:<token>`` is exchanged at origin's ``/token`` as if the client had asked
  there (same Host, same scopes, and ``X-Forwarded-For`` naming the client, so origin's
  failed-login limit counts that client and not the edge); the resulting grant is cached
  under the token's sha256, the host and the scopes until shortly before it expires, and
  used until it does expire while origin cannot be asked. A refused secret is remembered
  briefly per client address, sparing origin: one client's wrong token refuses nobody else.
- No credentials: origin serves public repositories to anyone, so the edge asks origin for
  an anonymous grant (cached the same way) before challenging.
- Legacy project ids are resolved by asking origin which org holds the project.
- The edge serves reads only. Any other method is passed to origin with the client's own
  ``Authorization``: then the gate only resolves names and origin decides.
- What origin's event feed said (:class:`edge.events.revocations.Revocations`) applies to
  every grant, verified or exchanged, cached or not: one whose long-lived token (its
  ``parent``) was revoked is refused, and access to a repository made private that came
  only from its being public is dropped. The follower also drops cached exchanges
  (:meth:`EdgeGate.forget_parent`, :meth:`EdgeGate.forget_repository`).
- Mirrored upstreams (:meth:`EdgeGate.authorize_mirror`) are decided here alone, on a
  :class:`~core.auth.access.Mirror` resource: who the credentials stand for (a verified
  bearer token, or Basic credentials exchanged at origin: their kind and orgs, not their
  access claim, since origin knows no mirror's names), never origin's visibility.

Secrets and tokens are never logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jwt
import trio

from core.auth import gate as rules
from core.auth.access import Decision, Mirror, Reason, decide
from core.auth.credentials import parse_authorization
from core.auth.principal import ANONYMOUS
from core.auth.request import Authorization, Caller, RequestView
from core.auth.scopes import Access
from core.auth.tokens import MAX_TOKEN_LENGTH, Grant, verify_grant
from core.endpoints import Kind
from core.errors import Unauthorized, Unavailable
from core.reference import RepositoryName
from edge.events.revocations import Revocations

log = logging.getLogger("depot.edge.auth")

#: Methods the edge serves itself; anything else is origin's to authorise.
READ_METHODS = frozenset({"GET", "HEAD"})
JWKS_REFRESH_SECONDS = 300.0
#: At most one JWKS refetch per this long because of an unknown key id.
KID_REFETCH_SECONDS = 30.0
#: Retry backoff while origin's keys cannot be fetched: 1 s, doubling up to this.
LOAD_RETRY_MAX_SECONDS = 30.0
#: An exchanged grant is reused until this long before it expires (at most half its life).
GRANT_EXPIRY_MARGIN_SECONDS = 30.0
#: A secret origin refused is refused from memory (for the same client) for this long.
REFUSED_SECONDS = 10.0
#: Retry-After on a 503 when origin could not be asked and said nothing of its own.
UNAVAILABLE_RETRY_AFTER_SECONDS = 10
CACHE_SIZE = 10_000


class OriginAuthority(Protocol):
    """What the gate needs from origin (:class:`edge.origin_control.OriginControl` has it)."""

    async def jwks(self) -> dict[str, Any]: ...

    async def project_org(self, project_id: str) -> str | None: ...

    async def org_slug(self, org_id: str) -> str | None: ...

    async def token(
        self,
        *,
        host: str,
        secret: str | None,
        service: str,
        scopes: Sequence[str],
        forwarded_for: str | None = None,
    ) -> str: ...


class _Expiring:
    """A bounded LRU map whose entries expire at a given time."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    def get(self, key: str, now: float) -> Any:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, value: Any, until: float) -> None:
        self._entries[key] = (value, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def drop(self, matches: Callable[[str, Any], bool]) -> int:
        """Remove the entries ``matches(key, value)`` says; how many."""
        doomed = [key for key, (value, _) in self._entries.items() if matches(key, value)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()


class EdgeGate:
    def __init__(
        self,
        origin: OriginAuthority,
        *,
        base_domain: str = "",
        token_service: str = "depot-registry",
        token_issuer: str = "depot-registry",
        auth: bool = True,
        clock: Callable[[], float] = time.time,
        jwks_refresh_seconds: float = JWKS_REFRESH_SECONDS,
        kid_refetch_seconds: float = KID_REFETCH_SECONDS,
        revocations: Revocations | None = None,
    ) -> None:
        """``clock`` is wall time (token expiry); throttles use trio's clock."""
        self._origin = origin
        self._base_domain = base_domain or None
        self._service = token_service
        self._issuer = token_issuer
        self._auth = auth
        self._clock = clock
        self._jwks_refresh_seconds = jwks_refresh_seconds
        self._kid_refetch_seconds = kid_refetch_seconds
        self._jwks: dict[str, Any] | None = None
        self._kids: frozenset[str] = frozenset()
        self._next_kid_refetch = -float("inf")
        self._refetch_lock = trio.Lock()
        self._grants = _Expiring(CACHE_SIZE)
        self._refused = _Expiring(CACHE_SIZE)
        self._exchanges: dict[str, trio.Lock] = {}
        self.revocations = revocations if revocations is not None else Revocations()

    # -- what origin's event feed said -------------------------------------------------------

    def forget_parent(self, parent: str) -> int:
        """Drop cached exchanges of the long-lived token ``parent`` (revoked)."""
        return self._grants.drop(lambda _, cached: cached[0].parent == parent)

    def forget_repository(self, repository: str) -> int:
        """Drop cached exchanges that decided anything about ``repository`` (its
        visibility changed), and every anonymous one."""

        def decided(key: str, cached: tuple[Grant, float]) -> bool:
            anonymous = key.startswith("-\n")
            return anonymous or any(access.name == repository for access in cached[0].access)

        return self._grants.drop(decided)

    def forget_all(self) -> None:
        """Drop every cached exchange (the follower lost track: revalidate everything)."""
        self._grants.clear()

    # -- origin's keys -------------------------------------------------------------------

    @property
    def jwks(self) -> dict[str, Any] | None:
        """Origin's token keys as last loaded (None before the first load): what an edge
        below this one (a tier) verifies bearer tokens with, so it keeps working from this
        edge's copy while origin is down."""
        return self._jwks

    @property
    def ready(self) -> bool:
        """True once origin's keys are loaded (always, with auth off): for ``/readyz``."""
        return not self._auth or self._jwks is not None

    async def load(self) -> None:
        """Fetch origin's JWKS now; Unavailable when origin cannot be asked."""
        document = await self._origin.jwks()
        listed = document.get("keys")
        keys = [
            dict(key)
            for key in (listed if isinstance(listed, list) else [])
            if isinstance(key, Mapping) and isinstance(key.get("kid"), str)
        ]
        if not keys:
            raise Unavailable("origin publishes no token keys")
        self._jwks = {"keys": keys}
        self._kids = frozenset(key["kid"] for key in keys)
        log.debug("loaded %d token keys from origin", len(keys))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load origin's keys (started after the first attempt, ready or not), then keep
        them fresh; while origin cannot be reached, retry with backoff."""
        if not self._auth:
            task_status.started()
            return
        loaded = await self._try_load()
        task_status.started()
        delay = 1.0
        while True:
            if loaded:
                delay = 1.0
                await trio.sleep(self._jwks_refresh_seconds)
            else:
                await trio.sleep(delay)
                delay = min(delay * 2, LOAD_RETRY_MAX_SECONDS)
            loaded = await self._try_load()

    async def _try_load(self) -> bool:
        try:
            await self.load()
        except Unavailable as exc:
            log.warning("cannot load origin's token keys: %s", exc.message)
            return False
        return True

    async def _verify(self, token: str) -> Grant:
        kid = _unverified_kid(token)
        if kid is not None and kid not in self._kids:
            await self._refetch_for(kid)
        if self._jwks is None:
            raise Unavailable("the edge has not loaded origin's token keys yet")
        return verify_grant(
            token, jwks=self._jwks, issuer=self._issuer, audience=self._service, now=self._clock()
        )

    async def _refetch_for(self, kid: str) -> None:
        async with self._refetch_lock:
            now = trio.current_time()
            if kid in self._kids or now < self._next_kid_refetch:
                return
            self._next_kid_refetch = now + self._kid_refetch_seconds
            log.info("a token names an unknown key id: refetching origin's keys")
            await self._try_load()

    # -- names ---------------------------------------------------------------------------

    async def resolve(self, host: str, name: RepositoryName) -> RepositoryName | None:
        """The internal name ``name`` means on ``host``; None when it addresses nothing."""
        if not self._auth:
            return name
        return await rules.resolve_name(
            host,
            name,
            base_domain=self._base_domain,
            project_org=self._origin.project_org,
            org_slug=self._origin.org_slug,
        )

    # -- authorising -----------------------------------------------------------------------

    async def authorize(self, view: RequestView) -> Authorization:
        required = rules.required_for(view)
        if not self._auth:
            return rules.open_authorization(required)
        names = await rules.resolve_names(view.host, required, self.resolve)
        if view.method.upper() not in READ_METHODS:
            return Authorization(Caller(frozenset()), names)  # origin authorises writes
        presented = await self._present(view, required, names)
        # Only grants are ever presented here: visibility is in their claims.
        return await rules.decide_request(
            view, required, names, presented, service=self._service, is_public=None
        )

    async def authorize_mirror(
        self, view: RequestView, resource: Mirror, repository: RepositoryName | None
    ) -> Authorization:
        """Authorise a pull of ``repository`` (its name at the upstream) from a mirror.

        An anonymous operator's mirror asks for nothing. Otherwise the credentials must
        stand for someone :func:`~core.auth.access.decide` lets pull ``resource``; the
        refusals are the origin's (a challenge naming the scope as the client wrote it, or
        403 for valid Basic credentials of another org). ``/v2/`` needs valid credentials.
        """
        required = rules.required_for(view)
        names = {}
        if repository is not None:
            names = {a.name: repository for a in required if a.type == "repository"}
        if not self._auth:
            return Authorization(Caller(frozenset(), everything=True), names)
        open_mirror = resource.anonymous and resource.org is None
        if open_mirror:
            presented = rules.Presented(rules.NONE, ANONYMOUS)
        else:
            # No names: an anonymous caller is not given origin's anonymous grant.
            presented = await self._present(view, required, {})
        missing: list[tuple[Access, Reason]] = []
        for access in required:
            decision = (
                Decision(frozenset(), Reason.NO_CREDENTIALS)
                if presented.who is None
                else decide(presented.who, access.actions, resource)
            )
            if not access.actions <= decision.granted:
                missing.append((access, decision.reason))
        if view.endpoint.kind is Kind.BASE and not open_mirror and not presented.authenticated:
            missing.append((Access("registry", "base", frozenset()), Reason.NO_CREDENTIALS))
        if missing:
            log.debug("refused %s", "; ".join(f"{access}: {why}" for access, why in missing))
            raise rules.refusal(view, presented, required, service=self._service)
        return Authorization(Caller(presented.orgs), names)

    async def _present(
        self, view: RequestView, required: Sequence[Access], names: Mapping[str, RepositoryName]
    ) -> rules.Presented:
        credentials = parse_authorization(view.authorization)
        revocations = self.revocations
        if credentials is not None and credentials.scheme == rules.BEARER:
            try:
                grant = await self._verify(credentials.secret)
            except Unauthorized:
                return rules.Presented(rules.BEARER, None, "invalid_token")
            if revocations.refuses(grant):
                return rules.Presented(rules.BEARER, None, "invalid_token")
            return rules.Presented(rules.BEARER, revocations.restrict(grant))
        if credentials is not None and credentials.scheme == rules.BASIC:
            if not credentials.secret:
                raise rules.invalid_credentials()
            grant = await self._exchange(credentials.secret, view, required)
            if revocations.refuses(grant):  # a cached exchange, origin down: still refused
                raise rules.invalid_credentials()
            return rules.Presented(rules.BASIC, revocations.restrict(grant))
        # Anonymous (or a scheme we do not take): origin would still serve public repositories.
        if any(access.type == "repository" and access.name in names for access in required):
            grant = await self._exchange(None, view, required)
            return rules.Presented(rules.NONE, revocations.restrict(grant))
        return rules.Presented(rules.NONE, None)

    async def _exchange(
        self, secret: str | None, view: RequestView, required: Sequence[Access]
    ) -> Grant:
        """The grant origin's ``/token`` gives ``secret`` (None: anonymous) for ``required``
        asked on the request's host, from the cache while it lasts."""
        fingerprint = "-" if secret is None else hashlib.sha256(secret.encode()).hexdigest()
        scopes = sorted({str(access) for access in required})
        key = "\n".join([fingerprint, view.host.lower(), *scopes])
        refusal_key = f"{view.remote_addr or '-'}\n{fingerprint}"
        if self._refused.get(refusal_key, self._clock()):
            raise rules.invalid_credentials()
        fresh = self._fresh(key)
        if fresh is not None:
            return fresh
        lock = self._exchanges.setdefault(key, trio.Lock())
        try:
            async with lock:  # one exchange at a time per key; the others find it cached
                fresh = self._fresh(key)
                if fresh is not None:
                    return fresh
                return await self._exchange_now(secret, view, scopes, key, refusal_key)
        finally:
            if not lock.statistics().tasks_waiting:
                self._exchanges.pop(key, None)

    def _fresh(self, key: str) -> Grant | None:
        now = self._clock()
        cached: tuple[Grant, float] | None = self._grants.get(key, now)
        return cached[0] if cached is not None and cached[1] > now else None

    async def _exchange_now(
        self, secret: str | None, view: RequestView, scopes: list[str], key: str, refusal: str
    ) -> Grant:
        try:
            token = await self._origin.token(
                host=view.host,
                secret=secret,
                service=self._service,
                scopes=scopes,
                forwarded_for=_forwarded_for(view),
            )
        except Unauthorized:
            if secret is not None:
                self._refused.put(refusal, True, self._clock() + REFUSED_SECONDS)
            raise
        except Unavailable as exc:
            # Origin cannot be asked: a grant it gave earlier serves until it expires.
            cached: tuple[Grant, float] | None = self._grants.get(key, self._clock())
            if cached is not None:
                log.info("origin unavailable: using a cached grant until it expires")
                return cached[0]
            exc.headers.setdefault("Retry-After", str(UNAVAILABLE_RETRY_AFTER_SECONDS))
            raise
        try:
            grant = await self._verify(token)
        except Unauthorized as exc:
            raise Unavailable(
                "origin issued a token the edge cannot verify",
                headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
            ) from exc
        lifetime = grant.expires_at - grant.issued_at
        fresh_until = grant.expires_at - min(GRANT_EXPIRY_MARGIN_SECONDS, lifetime / 2)
        if grant.expires_at > self._clock():
            self._grants.put(key, (grant, fresh_until), grant.expires_at)
        return grant


def _forwarded_for(view: RequestView) -> str | None:
    """``X-Forwarded-For`` for origin: the client's own hops, then its address."""
    hops = [hop for hop in (view.forwarded_for, view.remote_addr) if hop]
    return ", ".join(hops) or None


def _unverified_kid(token: str) -> str | None:
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    return kid if isinstance(kid, str) and kid else None

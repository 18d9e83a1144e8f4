"""The one ``/v2/`` dispatch: parse the path, pick the handler, authorise, call it.

Every ``/v2/`` request goes through the same steps, on origin and on the edge:

1. the path becomes a typed :data:`~core.endpoints.Endpoint` (``NOT_FOUND``,
   ``NAME_INVALID``, ``DIGEST_INVALID``, ``MANIFEST_INVALID`` for a malformed path);
2. the app's chooser picks the :class:`V2Routes` that answer it (one set on origin; the edge
   may pick per request, e.g. by name or ``?ns=`` once it mirrors other registries);
3. no handler for the endpoint's kind and the method: the routes' ``fallback`` takes the
   request as it is (the edge passes it to origin), or it is refused with 405
   ``UNSUPPORTED``, ``Allow`` listing the methods that have handlers and the routes'
   ``unsupported`` message when they have one (a mirror: "pushes go to the upstream");
4. the routes' gate authorises it (``gate.authorize(RequestView)``); a repository the
   request names but the gate did not resolve is ``NAME_UNKNOWN``;
5. the handler gets a :class:`Call`: the typed endpoint, the authorization and the internal
   repository name. It reads the rest of the request (headers, query, body) from Quart's
   ``request`` and returns the response.

An app registers its handlers per endpoint type and methods::

    routes = V2Routes(gate)
    routes.on(BlobEndpoint, ("GET", "HEAD"), get_blob)   # get_blob(call: Call[BlobEndpoint])
    install_v2(app, routes)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

from quart import Quart, g, request

from core import mediatypes
from core.auth.request import Authorization, RequestView
from core.endpoints import BaseEndpoint, Endpoint, Kind, parse_endpoint
from core.errors import NameUnknown, Unsupported
from core.reference import RepositoryName
from core.web.response import RegistryResponse as Response

#: The methods the ``/v2/`` route takes at all; any other is 405 before parsing.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

E = TypeVar("E", bound=Endpoint)


class V2Gate(Protocol):
    """Who may do what: origin's ``Gate`` and the edge's ``EdgeGate``."""

    async def authorize(self, view: RequestView) -> Authorization: ...


@dataclass(frozen=True, slots=True)
class Call(Generic[E]):
    """One authorised request to a handler."""

    endpoint: E
    authorization: Authorization
    _repository: RepositoryName | None = None

    @property
    def repository(self) -> RepositoryName:
        """The internal name of the repository the endpoint names (the client's name, as
        written, is ``endpoint.name``). Only for endpoints within a repository."""
        if self._repository is None:
            raise TypeError(f"a {self.endpoint.kind.value} endpoint names no repository")
        return self._repository


Handler = Callable[[Call[E]], Awaitable[Response]]
#: Takes a request no handler is registered for, unauthorised (the edge: pass to origin).
Fallback = Callable[[RequestView], Awaitable[Response]]


class V2Routes:
    """One registry's ``/v2/`` answers: a gate, and a handler per endpoint kind and method.

    ``unsupported``: the message of the 405 for a request without a handler (and without a
    fallback), saying why (``Unsupported``'s generic text otherwise).
    """

    def __init__(
        self, gate: V2Gate, *, fallback: Fallback | None = None, unsupported: str | None = None
    ) -> None:
        self.gate = gate
        self.fallback = fallback
        self.unsupported = unsupported
        self._handlers: dict[tuple[Kind, str], Handler[Any]] = {}

    def with_gate(self, gate: V2Gate) -> V2Routes:
        """These routes behind another gate, sharing the handlers (a chooser that resolves
        per request makes the gate that carries what it resolved)."""
        routes = V2Routes(gate, fallback=self.fallback, unsupported=self.unsupported)
        routes._handlers = self._handlers
        return routes

    def on(self, endpoint: type[E], methods: Iterable[str], handler: Handler[E]) -> None:
        keys = [(endpoint.kind, method) for method in methods]
        for kind, method in keys:  # all checked before any is registered
            if method not in METHODS:
                raise ValueError(f"/v2/ takes no {method} requests")
            if (kind, method) in self._handlers:
                raise ValueError(f"two handlers for {method} on {kind.value}")
        self._handlers.update(dict.fromkeys(keys, handler))

    def handler(self, kind: Kind, method: str) -> Handler[Any] | None:
        return self._handlers.get((kind, method))

    def allowed(self, kind: Kind) -> list[str]:
        """The methods with a handler for ``kind``, sorted (the ``Allow`` of a 405)."""
        return sorted(method for k, method in self._handlers if k is kind)


#: Picks the routes for one request (after its path is parsed, before it is authorised).
Chooser = Callable[[RequestView], Awaitable[V2Routes]]


def install_v2(app: Quart, routes: V2Routes | Chooser) -> None:
    """Serve ``/v2/`` with ``routes``, or with the routes ``routes(view)`` picks per request."""
    choose = _always(routes) if isinstance(routes, V2Routes) else routes

    @app.route("/v2", methods=list(METHODS))
    @app.route("/v2/", methods=list(METHODS))
    @app.route("/v2/<path:rest>", methods=list(METHODS))
    async def v2(rest: str = "") -> Response:
        endpoint = parse_endpoint(request.path)
        g.v2_endpoint = endpoint
        view = RequestView(
            method=request.method,
            host=request.host,
            scheme=request.scheme,
            authorization=request.headers.get("Authorization"),
            endpoint=endpoint,
            query=request.args,
            remote_addr=request.remote_addr,
            forwarded_for=request.headers.get("X-Forwarded-For"),
        )
        chosen = await choose(view)
        handler = chosen.handler(endpoint.kind, request.method)
        if handler is None:
            if chosen.fallback is not None:
                return await chosen.fallback(view)
            raise Unsupported(
                chosen.unsupported,
                headers={"Allow": ", ".join(chosen.allowed(endpoint.kind))},
            )
        authorization = await chosen.gate.authorize(view)
        repository = None
        if endpoint.name is not None:
            repository = authorization.names.get(endpoint.name.value)
            if repository is None:
                raise NameUnknown(detail={"name": endpoint.name.value})
        return await handler(Call(endpoint, authorization, repository))


async def version_check(call: Call[BaseEndpoint]) -> Response:
    """``GET /v2/``: an empty JSON object (the gate decided whether that is a 200)."""
    return Response(b"{}", content_type=mediatypes.JSON)


def current_endpoint() -> Endpoint | None:
    """The endpoint this request's path was parsed into; None before (or without) that."""
    return cast("Endpoint | None", getattr(g, "v2_endpoint", None))


def _always(routes: V2Routes) -> Chooser:
    async def choose(view: RequestView) -> V2Routes:
        return routes

    return choose

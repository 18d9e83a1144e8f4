"""``/api/v1/``: the upstream registries an org registers for the edges to mirror with its own
credentials (the management API's style and credentials: see ``origin/routes/api.py``).

* ``GET /api/v1/orgs/{org}/upstreams``: ``{"upstreams": [{"name", "url", "username",
  "has_password", "created_at"}]}`` to anyone who reads the org; never a password.
* ``POST /api/v1/orgs/{org}/upstreams`` ``{"name", "url", "username"?, "password"?}`` → 201
  (org and user tokens): ``name`` is the registry's host as clients will write it
  (``ghcr.io``), then pulled through an edge as ``EDGE/<org>/<name>/<repository>``; 409 when
  the org has one of that name; 400 for a URL at ``localhost`` or a private address unless
  the origin allows that (``upstreams_allow_private_addresses``).
* ``DELETE /api/v1/orgs/{org}/upstreams/{name}`` → 204 (org and user tokens).
* ``GET /api/v1/edge/orgs/{org}/upstreams``: the same with the passwords decrypted, for edge
  credentials only (:class:`core.auth.access.UpstreamCredentials`); 404 when there is no such
  org, which is also how an edge learns that a name's first part is no org.

Passwords are never logged, never echoed in an error, and answered with ``Cache-Control:
no-store``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from quart import Quart

from core.auth.access import READ, UpstreamCredentials, decide
from core.errors import BadRequest, Denied, NotFound
from core.tenancy import is_org_slug
from core.upstream_names import (
    MAX_UPSTREAM_NAME_LENGTH,
    check_upstream_url,
    is_private_host,
    is_upstream_name,
)
from core.web.response import RegistryResponse as Response
from origin.auth.store import TenancyStore
from origin.routes.api import ManagementApi
from origin.routes.json_body import read_json_object
from origin.upstreams.store import UpstreamRecord, UpstreamStore

log = logging.getLogger("depot.api")

MAX_CREDENTIAL_LENGTH = 4096


def install_upstream_routes(
    app: Quart,
    tenancy: TenancyStore,
    upstreams: UpstreamStore,
    clock: Callable[[], float],
    *,
    allow_private_addresses: bool = False,
) -> None:
    api = _UpstreamsApi(tenancy, upstreams, clock, allow_private_addresses)
    rules: list[tuple[str, str, Callable[..., Any]]] = [
        ("/orgs/<org>/upstreams", "GET", api.list_upstreams),
        ("/orgs/<org>/upstreams", "POST", api.add_upstream),
        ("/orgs/<org>/upstreams/<name>", "DELETE", api.remove_upstream),
        ("/edge/orgs/<org>/upstreams", "GET", api.upstream_credentials),
    ]
    for rule, method, view in rules:
        app.add_url_rule("/api/v1" + rule, f"api_{view.__name__}", view, methods=[method])


def _json(document: Any, status: int = 200) -> Response:
    response = Response(json.dumps(document), status=status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


class _UpstreamsApi(ManagementApi):
    def __init__(
        self,
        tenancy: TenancyStore,
        upstreams: UpstreamStore,
        clock: Callable[[], float],
        allow_private_addresses: bool,
    ) -> None:
        super().__init__(tenancy, clock, allow_insecure_loopback=False)
        self._upstreams = upstreams
        self._allow_private = allow_private_addresses

    async def list_upstreams(self, org: str) -> Response:
        _, record = await self._org(org)
        found = await self._upstreams.of_org(record.id)
        return _json({"upstreams": [_document(upstream) for upstream in found]})

    async def add_upstream(self, org: str) -> Response:
        principal, record = await self._managed_org(org)
        body = await read_json_object()
        name = body.text("name", limit=MAX_UPSTREAM_NAME_LENGTH)
        url = body.text("url")
        username = body.optional_text("username", limit=MAX_CREDENTIAL_LENGTH) or ""
        password = body.optional_text("password", limit=MAX_CREDENTIAL_LENGTH) or ""
        body.done()
        if not is_upstream_name(name):
            raise BadRequest(
                "name is the registry's host as clients write it: lower case, with a dot "
                "(e.g. ghcr.io)",
                detail={"name": name[:MAX_UPSTREAM_NAME_LENGTH]},
            )
        try:
            url = check_upstream_url(url)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        if is_private_host(url) and not self._allow_private:
            raise BadRequest(
                "an upstream on localhost or a private address needs the origin's "
                "upstreams_allow_private_addresses setting",
                detail={"url": url[:200]},
            )
        if bool(username) != bool(password):
            raise BadRequest("give username and password together, or neither")
        added = await self._upstreams.add(
            record.id, name=name, url=url, username=username, password=password, now=self._clock()
        )
        log.info("org %s: upstream %s (%s) added by %s", record.slug, name, url, principal.subject)
        return _json(_document(added), 201)

    async def remove_upstream(self, org: str, name: str) -> Response:
        principal, record = await self._managed_org(org)
        if not await self._upstreams.remove(record.id, name):
            raise NotFound("upstream not found", detail={"name": name[:MAX_UPSTREAM_NAME_LENGTH]})
        log.info("org %s: upstream %s removed by %s", record.slug, name, principal.subject)
        return Response(b"", status=204)

    async def upstream_credentials(self, org: str) -> Response:
        principal = await self._principal()
        if READ not in decide(principal, {READ}, UpstreamCredentials(org)).granted:
            raise Denied("only an edge's credential reads upstream credentials")
        found = await self._tenancy.org_by_slug(org) if is_org_slug(org) else None
        if found is None:
            raise NotFound("organization not found", detail={"org": org[:100]})
        upstreams = [
            {
                "name": item.record.name,
                "url": item.record.url,
                "username": item.record.username,
                "password": item.password,
            }
            for item in await self._upstreams.credentials(found.id)
        ]
        return _json({"org": found.slug, "upstreams": upstreams})


def _document(upstream: UpstreamRecord) -> dict[str, Any]:
    """Never a password: the record carries only whether there is one."""
    return {
        "name": upstream.name,
        "url": upstream.url,
        "username": upstream.username,
        "has_password": upstream.has_password,
        "created_at": upstream.created_at,
    }

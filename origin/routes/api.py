"""``/api/v1/``: the JSON management API (orgs, projects, tokens, trust relationships,
repository visibility), authenticated with long-lived registry tokens only.

``Authorization: Bearer <token>`` or Basic ``x-token:<token>``; the short-lived JWTs of
``/token`` are not accepted. Org and user tokens manage the orgs they reach; project and pull
tokens only read (a project token: its own project). An org the caller does not reach is
answered exactly like one that does not exist (404). A new token's secret is in the 201
response and nowhere else: not in listings, not in logs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from quart import Quart, request

from core.auth.access import MANAGE, READ, RESOLVE, Org, Project
from core.auth.credentials import parse_authorization
from core.auth.principal import ALL_ACTIONS, Principal
from core.errors import BadRequest, NotFound, Unauthorized
from core.tenancy import internal_name, is_org_id, is_org_slug
from core.web.response import RegistryResponse as Response
from origin.auth import management
from origin.auth.issuer_url import MAX_ISSUER_LENGTH, check_issuer
from origin.auth.ratelimit import CredentialFailures
from origin.auth.records import OrgRecord, ProjectRecord, TokenRecord, TrustRecord
from origin.auth.store import TenancyStore
from origin.routes.json_body import read_json_object

log = logging.getLogger("depot.api")

PREFIX = "/api/v1/orgs"
MAX_CONDITIONS = 32
MAX_CONDITION_VALUE_LENGTH = 1000
#: Ten years: beyond that, a token that never expires says what is meant.
MAX_EXPIRES_IN_SECONDS = 10 * 365 * 86400
CREATABLE_KINDS = ("org", "project", "pull")


def install_api_routes(
    app: Quart,
    tenancy: TenancyStore,
    clock: Callable[[], float],
    *,
    allow_insecure_loopback: bool = False,
    failures: CredentialFailures | None = None,
) -> None:
    api = ManagementApi(tenancy, clock, allow_insecure_loopback, failures=failures)
    rules: list[tuple[str, str, Callable[..., Any]]] = [
        ("", "GET", api.list_orgs),
        ("/<org>", "GET", api.get_org),
        ("/<org>/projects", "GET", api.list_projects),
        ("/<org>/projects", "POST", api.create_project),
        ("/<org>/projects/<project_id>", "GET", api.get_project),
        ("/<org>/tokens", "GET", api.list_tokens),
        ("/<org>/tokens", "POST", api.create_token),
        ("/<org>/tokens/<token_id>", "DELETE", api.revoke_token),
        ("/<org>/trust-relationships", "GET", api.list_trusts),
        ("/<org>/trust-relationships", "POST", api.create_trust),
        ("/<org>/trust-relationships/<trust_id>", "DELETE", api.revoke_trust),
        ("/<org>/repositories/<path:name>/visibility", "GET", api.get_visibility),
        ("/<org>/repositories/<path:name>/visibility", "PUT", api.set_visibility),
    ]
    for rule, method, view in rules:
        app.add_url_rule(PREFIX + rule, f"api_{view.__name__}", view, methods=[method])
    # Legacy project URLs name only a project: edges (and the project's own org) ask here
    # which org it belongs to.
    app.add_url_rule(
        "/api/v1/projects/<project_id>",
        "api_resolve_project",
        api.resolve_project,
        methods=["GET"],
    )


def _json(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document), status=status, content_type="application/json")


def _no_content() -> Response:
    return Response(b"", status=204)


class ManagementApi:
    """The org routes, and the base of every ``/api/v1/`` route class: who is asking (a
    registry token), and the org or project they name when they reach it (the decisions
    are :mod:`origin.auth.management`'s)."""

    def __init__(
        self,
        tenancy: TenancyStore,
        clock: Callable[[], float],
        allow_insecure_loopback: bool,
        *,
        failures: CredentialFailures | None = None,
    ) -> None:
        """``failures``: the process's failed-credential limit, shared with ``/token`` and
        ``/v2/`` (none: not limited here)."""
        self._tenancy = tenancy
        self._clock = clock
        self._allow_insecure_loopback = allow_insecure_loopback
        self._failures = failures

    # -- who is asking, and for which org -------------------------------------------------

    async def _principal(self) -> Principal:
        credentials = parse_authorization(request.headers.get("Authorization"))
        if credentials is None:
            raise Unauthorized(headers=management.CHALLENGE)
        client = None
        if self._failures is not None:
            client = self._failures.client(
                request.remote_addr, request.headers.get("X-Forwarded-For")
            )
            await self._failures.check(client)
        principal = None
        if credentials.scheme in ("bearer", "basic") and credentials.secret:
            principal = await self._tenancy.authenticate(credentials.secret, self._clock())
        if principal is None and self._failures is not None and client is not None:
            await self._failures.failed(client)
        return management.require_principal(principal)

    async def _org(self, ref: str, action: str = READ) -> tuple[Principal, OrgRecord]:
        """The caller and the org ``ref`` (slug or id) names; 404 unless the caller reaches
        it, so another org's existence is not revealed. Ids of orgs created now have a slug's
        shape too (``core.tenancy.ORG_ID``): such a ref is looked up as an id first."""
        principal = await self._principal()
        org = None
        if is_org_id(ref) or not is_org_slug(ref):
            org = await self._tenancy.org_by_id(ref)
        if org is None and is_org_slug(ref):
            org = await self._tenancy.org_by_slug(ref)
        return principal, management.reached_org(principal, org, ref, action)

    async def _managed_org(self, ref: str) -> tuple[Principal, OrgRecord]:
        principal, org = await self._org(ref)
        management.require(principal, MANAGE, Org(org.slug), "manage the organization")
        return principal, org

    async def _project_of(self, org: OrgRecord, project_id: str) -> ProjectRecord:
        project = await self._tenancy.project(project_id)
        if project is None or project.org_id != org.id:
            raise NotFound("project not found", detail={"project_id": project_id[:100]})
        return project

    # -- orgs and projects ----------------------------------------------------------------

    async def list_orgs(self) -> Response:
        principal = await self._principal()
        found: list[OrgRecord] = []
        if principal.orgs:
            found = await self._tenancy.list_orgs(principal.orgs)
        visible = [o for o in found if management.allows(principal, READ, Org(o.slug))]
        return _json({"orgs": [_org_document(o) for o in visible]})

    async def get_org(self, org: str) -> Response:
        # Resolving is enough: edges ask here which org an id (a subdomain) names.
        _, record = await self._org(org, RESOLVE)
        return _json(_org_document(record))

    async def list_projects(self, org: str) -> Response:
        principal, record = await self._org(org)
        found = await self._tenancy.list_projects(record.id)
        visible = [p for p in found if management.allows(principal, READ, _part(record, p))]
        return _json({"projects": [_project_document(p) for p in visible]})

    async def get_project(self, org: str, project_id: str) -> Response:
        principal, record = await self._org(org)
        if not management.allows(principal, READ, Project(record.slug, project_id)):
            raise NotFound("project not found", detail={"project_id": project_id[:100]})
        return _json(_project_document(await self._project_of(record, project_id)))

    async def resolve_project(self, project_id: str) -> Response:
        principal = await self._principal()
        project = await self._tenancy.project(project_id)
        project = management.reached_project(principal, project, project_id, RESOLVE)
        return _json({**_project_document(project), "org_slug": project.org_slug})

    async def create_project(self, org: str) -> Response:
        principal, record = await self._managed_org(org)
        body = await read_json_object()
        name = body.text("name")
        body.done()
        project = await self._tenancy.create_project(record.id, name, self._clock())
        log.info("org %s: project %s created by %s", record.slug, project.id, principal.subject)
        return _json(_project_document(project), 201)

    # -- tokens ---------------------------------------------------------------------------

    async def list_tokens(self, org: str) -> Response:
        principal, record = await self._org(org)
        include_revoked = request.args.get("include_revoked", "") in ("1", "true")
        found = await self._tenancy.list_tokens(record.id, include_revoked=include_revoked)
        visible = [t for t in found if management.allows(principal, READ, _part(record, t))]
        return _json({"tokens": [_token_document(t) for t in visible]})

    async def create_token(self, org: str) -> Response:
        principal, record = await self._managed_org(org)
        body = await read_json_object()
        kind = body.text("kind")
        project_id = body.optional_text("project_id")
        description = body.optional_text("description") or ""
        expires_in = body.optional_positive("expires_in_seconds", maximum=MAX_EXPIRES_IN_SECONDS)
        body.done()
        if kind not in CREATABLE_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(CREATABLE_KINDS)}")
        if kind == "org" and project_id is not None:
            raise BadRequest("an org token belongs to no project: leave out project_id")
        if kind == "project" and project_id is None:
            raise BadRequest("a project token needs project_id")
        if project_id is not None:
            await self._project_of(record, project_id)
        now = self._clock()
        created, secret = await self._tenancy.create_token(
            kind,
            org_id=record.id,
            project_id=project_id,
            description=description,
            expires_at=None if expires_in is None else now + expires_in,
            now=now,
        )
        log.info(
            "org %s: %s token %s created by %s",
            record.slug,
            kind,
            created.token_id,
            principal.subject,
        )
        response = _json({**_token_document(created), "token": secret}, 201)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def revoke_token(self, org: str, token_id: str) -> Response:
        principal, record = await self._managed_org(org)
        found = await self._tenancy.list_tokens(record.id, include_revoked=True)
        if not any(t.token_id == token_id for t in found):
            raise NotFound("token not found", detail={"token_id": token_id[:40]})
        revoked = await self._tenancy.revoke_token(token_id, self._clock())
        if revoked:  # already revoked: DELETE is idempotent
            log.info("org %s: token %s revoked by %s", record.slug, token_id, principal.subject)
        return _no_content()

    # -- OIDC trust relationships ---------------------------------------------------------

    async def list_trusts(self, org: str) -> Response:
        principal, record = await self._org(org)
        found = await self._tenancy.list_trusts(record.id)
        visible = [t for t in found if management.allows(principal, READ, _part(record, t))]
        return _json({"trust_relationships": [_trust_document(t) for t in visible]})

    async def create_trust(self, org: str) -> Response:
        principal, record = await self._managed_org(org)
        body = await read_json_object()
        issuer = body.text("issuer", limit=MAX_ISSUER_LENGTH)
        audience = body.text("audience")
        conditions = body.string_map(
            "conditions", max_entries=MAX_CONDITIONS, max_value=MAX_CONDITION_VALUE_LENGTH
        )
        actions = body.choices("actions", ALL_ACTIONS)
        project_id = body.optional_text("project_id")
        description = body.optional_text("description") or ""
        body.done()
        try:
            check_issuer(issuer, allow_insecure_loopback=self._allow_insecure_loopback)
        except ValueError as exc:
            raise BadRequest(str(exc), detail={"issuer": issuer[:200]}) from exc
        if project_id is not None:
            await self._project_of(record, project_id)
        trust = await self._tenancy.create_trust(
            record.id,
            issuer=issuer,
            audience=audience,
            conditions=conditions,
            actions=actions,
            project_id=project_id,
            description=description,
            now=self._clock(),
        )
        log.info("org %s: trust %s created by %s", record.slug, trust.id, principal.subject)
        return _json(_trust_document(trust), 201)

    async def revoke_trust(self, org: str, trust_id: str) -> Response:
        principal, record = await self._managed_org(org)
        found = await self._tenancy.list_trusts(record.id, include_revoked=True)
        if not any(t.id == trust_id for t in found):
            raise NotFound("trust relationship not found", detail={"id": trust_id[:40]})
        revoked = await self._tenancy.revoke_trust(trust_id, self._clock())
        if revoked:
            log.info("org %s: trust %s revoked by %s", record.slug, trust_id, principal.subject)
        return _no_content()

    # -- repository visibility ------------------------------------------------------------

    async def get_visibility(self, org: str, name: str) -> Response:
        principal, record = await self._org(org)
        repository = internal_name(record.slug, name).value
        if not management.allows(principal, READ, management.repository_part(record.slug, name)):
            raise NotFound("repository not found", detail={"name": name[:300]})
        public = await self._tenancy.is_public(repository)
        return _json({"repository": repository, "public": public})

    async def set_visibility(self, org: str, name: str) -> Response:
        principal, record = await self._managed_org(org)
        repository = internal_name(record.slug, name).value
        body = await read_json_object()
        public = body.boolean("public")
        body.done()
        await self._tenancy.set_public(record.id, repository, public)
        log.info("repository %s: public=%s set by %s", repository, public, principal.subject)
        return _json({"repository": repository, "public": public})


def _part(org: OrgRecord, item: ProjectRecord | TokenRecord | TrustRecord) -> Project:
    """The part of ``org``'s surface an item belongs to (tokens and trusts: maybe none)."""
    return Project(org.slug, item.id if isinstance(item, ProjectRecord) else item.project_id)


# -- documents --------------------------------------------------------------------------------


def _org_document(org: OrgRecord) -> dict[str, Any]:
    return {"id": org.id, "name": org.slug, "created_at": org.created_at}


def _project_document(project: ProjectRecord) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "org_id": project.org_id,
        "repository": project.repository,
        "created_at": project.created_at,
    }


def _token_document(token: TokenRecord) -> dict[str, Any]:
    """Never a secret or its hash: a :class:`TokenRecord` carries neither."""
    return {
        "token_id": token.token_id,
        "kind": token.kind,
        "org_id": token.org_id,
        "project_id": token.project_id,
        "description": token.description,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
    }


def _trust_document(trust: TrustRecord) -> dict[str, Any]:
    conditions: Mapping[str, str] = trust.conditions
    return {
        "id": trust.id,
        "org_id": trust.org_id,
        "issuer": trust.issuer,
        "audience": trust.audience,
        "conditions": dict(conditions),
        "actions": sorted(trust.actions),
        "project_id": trust.project_id,
        "description": trust.description,
        "created_at": trust.created_at,
        "revoked_at": trust.revoked_at,
    }

"""``/api/v1/``: saved builds, build retention and storage usage (the management API's style
and credentials: long-lived registry tokens, see ``origin/routes/api.py``).

* ``POST /api/v1/projects/{id}/builds`` (body optional: ``{"save_tags": [...]}``) → 201, then
  push the image to ``<project id>:<build id>``; ``GET …/builds`` newest first;
  ``GET``/``DELETE …/builds/{build id}``. Any token reaching the project reads; creating and
  deleting need push (org, user or that project's token).
* ``GET``/``PUT /api/v1/orgs/{org}/retention`` and ``/api/v1/projects/{id}/retention``:
  ``{"build_ttl_seconds": n | null}``; setting needs an org or user token.
* ``GET /api/v1/orgs/{org}/usage``: stored bytes, byte-hours and cost, month to date.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from quart import Quart, request

from core.auth.access import MANAGE, READ, Project
from core.auth.principal import PUSH, Principal
from core.errors import BadRequest, NotFound
from core.web.response import RegistryResponse as Response
from origin.auth import management
from origin.auth.ratelimit import CredentialFailures
from origin.auth.records import ProjectRecord
from origin.auth.store import TenancyStore
from origin.builds.metering import Metering
from origin.builds.records import BuildRecord, Retention, effective_ttl
from origin.builds.service import BuildService
from origin.routes.api import ManagementApi
from origin.routes.json_body import JsonObject, read_json_object

log = logging.getLogger("depot.api")

#: Ten years: a longer build TTL is a mistake.
MAX_TTL_SECONDS = 10 * 365 * 86400
MAX_PAGE = 1000


def install_build_routes(
    app: Quart,
    tenancy: TenancyStore,
    builds: BuildService,
    metering: Metering,
    clock: Callable[[], float],
    *,
    failures: CredentialFailures | None = None,
) -> None:
    api = _BuildsApi(tenancy, builds, metering, clock, failures=failures)
    rules: list[tuple[str, str, Callable[..., Any]]] = [
        ("/projects/<project_id>/builds", "POST", api.create_build),
        ("/projects/<project_id>/builds", "GET", api.list_builds),
        ("/projects/<project_id>/builds/<build_id>", "GET", api.get_build),
        ("/projects/<project_id>/builds/<build_id>", "DELETE", api.delete_build),
        ("/projects/<project_id>/retention", "GET", api.get_project_retention),
        ("/projects/<project_id>/retention", "PUT", api.set_project_retention),
        ("/orgs/<org>/retention", "GET", api.get_org_retention),
        ("/orgs/<org>/retention", "PUT", api.set_org_retention),
        ("/orgs/<org>/usage", "GET", api.get_usage),
    ]
    for rule, method, view in rules:
        app.add_url_rule("/api/v1" + rule, f"api_{view.__name__}", view, methods=[method])


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(document), status=status, headers=headers, content_type="application/json"
    )


class _BuildsApi(ManagementApi):
    def __init__(
        self,
        tenancy: TenancyStore,
        builds: BuildService,
        metering: Metering,
        clock: Callable[[], float],
        *,
        failures: CredentialFailures | None = None,
    ) -> None:
        super().__init__(tenancy, clock, allow_insecure_loopback=False, failures=failures)
        self._builds = builds
        self._metering = metering

    async def _project(self, project_id: str) -> tuple[Principal, ProjectRecord]:
        """The caller and the project; 404 unless the caller reaches it (as for an org)."""
        principal = await self._principal()
        project = await self._tenancy.project(project_id)
        return principal, management.reached_project(principal, project, project_id)

    async def _build(self, project: ProjectRecord, build_id: str) -> BuildRecord:
        build = await self._builds.get(project, build_id)
        if build is None:
            raise NotFound("build not found", detail={"build_id": build_id[:40]})
        return build

    # -- builds ---------------------------------------------------------------------------

    async def create_build(self, project_id: str) -> Response:
        principal, project = await self._project(project_id)
        management.require(principal, PUSH, _resource(project), "save builds")
        save_tags: list[str] = []
        if request.content_length or request.mimetype:
            body = await read_json_object()
            save_tags = _string_list(body, "save_tags")
            body.done()
        build = await self._builds.create(project, save_tags)
        log.info("project %s: build %s created by %s", project.id, build.id, principal.subject)
        location = f"/api/v1/projects/{project.id}/builds/{build.id}"
        return _json(self._document(build), 201, {"Location": location})

    async def list_builds(self, project_id: str) -> Response:
        _, project = await self._project(project_id)
        limit = _page_size(request.args.get("n"))
        found = await self._builds.list_builds(project, limit)
        return _json({"builds": [self._document(b) for b in found]})

    async def get_build(self, project_id: str, build_id: str) -> Response:
        _, project = await self._project(project_id)
        return _json(self._document(await self._build(project, build_id)))

    async def delete_build(self, project_id: str, build_id: str) -> Response:
        principal, project = await self._project(project_id)
        management.require(principal, PUSH, _resource(project), "delete builds")
        build = await self._build(project, build_id)
        await self._builds.delete(build)
        log.info("project %s: build %s deleted by %s", project.id, build.id, principal.subject)
        return Response(b"", status=204)

    def _document(self, build: BuildRecord) -> dict[str, Any]:
        return {
            "id": build.id,
            "project_id": build.project_id,
            "org": build.org_slug,
            "repository": build.repository,
            "state": build.state(self._builds.now()),
            "created_at": build.created_at,
            "expires_at": build.expires_at,
            "digest": build.digest,
            "media_type": build.media_type,
            "platforms": list(build.platforms),
            "size": build.size,
            "save_tags": list(build.save_tags),
            "tags": [build.id, *build.save_tags],
        }

    # -- retention ------------------------------------------------------------------------

    def _retention(self, org: str, project_id: str | None, found: Retention) -> Response:
        own = found.org_ttl_seconds if project_id is None else found.project_ttl_seconds
        effective = effective_ttl(
            self._builds.default_ttl_seconds, found.org_ttl_seconds, found.project_ttl_seconds
        )
        document: dict[str, Any] = {"org": org}
        if project_id is not None:
            document["project_id"] = project_id
        document["build_ttl_seconds"] = own
        document["effective_build_ttl_seconds"] = effective
        return _json(document)

    async def get_org_retention(self, org: str) -> Response:
        _, record = await self._org(org)
        found = await self._builds.retention(record.id)
        return self._retention(record.slug, None, found)

    async def set_org_retention(self, org: str) -> Response:
        principal, record = await self._managed_org(org)
        ttl = await _ttl_body()
        await self._builds.set_retention(record.id, None, ttl)
        found = await self._builds.retention(record.id)
        log.info("org %s: build TTL %s set by %s", record.slug, ttl, principal.subject)
        return self._retention(record.slug, None, found)

    async def get_project_retention(self, project_id: str) -> Response:
        _, project = await self._project(project_id)
        found = await self._builds.retention(project.org_id, project.id)
        return self._retention(project.org_slug, project.id, found)

    async def set_project_retention(self, project_id: str) -> Response:
        principal, project = await self._project(project_id)
        management.require(principal, MANAGE, _resource(project), "set retention")
        ttl = await _ttl_body()
        await self._builds.set_retention(project.org_id, project.id, ttl)
        found = await self._builds.retention(project.org_id, project.id)
        log.info("project %s: build TTL %s set by %s", project.id, ttl, principal.subject)
        return self._retention(project.org_slug, project.id, found)

    # -- usage ----------------------------------------------------------------------------

    async def get_usage(self, org: str) -> Response:
        principal, record = await self._org(org)
        org_wide = Project(record.slug, None)
        management.require(principal, READ, org_wide, "read the organization's usage")
        found = await self._metering.usage(record.slug)
        return _json(found.document())


def _resource(project: ProjectRecord) -> Project:
    return Project(project.org_slug, project.id)


async def _ttl_body() -> float | None:
    body = await read_json_object()
    ttl = body.optional_positive("build_ttl_seconds", maximum=MAX_TTL_SECONDS)
    body.done()
    return ttl


def _string_list(body: JsonObject, field: str) -> list[str]:
    # JsonObject has no list-of-strings reader; _get marks the field read for done().
    value = body._get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f"{field} must be a list of strings")
    return value


def _page_size(text: str | None) -> int:
    if text is None:
        return 100
    # ASCII digits, and few of them: int() of thousands of digits raises.
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or not 0 < int(text) <= MAX_PAGE:
        raise BadRequest(f"n must be a number from 1 to {MAX_PAGE}")
    return int(text)

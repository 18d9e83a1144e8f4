"""Who may touch what through the management API (``/api/v1/``): the access decisions of
:func:`core.auth.access.decide` for orgs and projects, answered the management API's way.

The API authenticates long-lived registry tokens only (never the short-lived JWTs of
``/token``) and looks the org or project up; these functions decide. An org or project the
caller does not reach is answered exactly like one that does not exist (404), so another
org's existence is not revealed; one it reaches but may not change that way is 403.
Org and user tokens manage the orgs they reach; project and pull tokens only read (one bound
to a project: its project's part); edges only resolve which org holds a project.
"""

from __future__ import annotations

from core.auth.access import READ, Org, Project, decide
from core.auth.principal import Principal
from core.errors import Denied, NotFound, Unauthorized
from origin.auth.records import OrgRecord, ProjectRecord

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="depot-registry"'}


def require_principal(principal: Principal | None) -> Principal:
    """The caller, or 401 when its credentials named no valid registry token."""
    if principal is None:
        # Never echo the credential: it may be a real token with one character wrong.
        raise Unauthorized("a valid registry token is required", headers=CHALLENGE)
    return principal


def allows(principal: Principal, action: str, resource: Org | Project) -> bool:
    return action in decide(principal, {action}, resource).granted


def reached_org(
    principal: Principal, org: OrgRecord | None, ref: str, action: str = READ
) -> OrgRecord:
    """``org`` (looked up by ``ref``, a slug or an id) when the caller may ``action`` it (read;
    resolve: which org an id names); else 404."""
    if org is None or not allows(principal, action, Org(org.slug)):
        raise NotFound("organization not found", detail={"org": ref[:100]})
    return org


def reached_project(
    principal: Principal, project: ProjectRecord | None, project_id: str, action: str = READ
) -> ProjectRecord:
    """``project`` when the caller may ``action`` it (read; resolve: which org holds it);
    else 404, as for an org."""
    if project is None or not allows(principal, action, Project(project.org_slug, project.id)):
        raise NotFound("project not found", detail={"project_id": project_id[:100]})
    return project


def require(principal: Principal, action: str, resource: Org | Project, doing: str) -> None:
    """403 unless the caller may ``action`` the resource it reaches (``doing``: what for)."""
    if not allows(principal, action, resource):
        raise Denied(f"a {principal.kind} token cannot {doing}")


def repository_part(org: str, path: str) -> Project:
    """The part of ``org``'s management surface a repository ``<org>/<path>`` belongs to: a
    one-component path is project ``path``'s repository (when that project exists); a deeper
    one belongs to no project."""
    return Project(org, None if "/" in path else path)

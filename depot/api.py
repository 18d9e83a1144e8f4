"""Calls of the registry's JSON API (``/api/v1/``) for ``depot``, and its ``/v2`` client.

Every request carries the token as Basic ``x-token:<token>``, which both ``/v2/`` and
``/api/v1/`` accept: ``/api/v1`` through a plain httpx client (:func:`open_client`), ``/v2``
through the registry client (:func:`open_registry`, sending the token up front). A non-2xx
answer raises :class:`ApiError` with the registry's error code and message (the OCI error
envelope), never with request headers.
"""

from __future__ import annotations

import json
import os
import ssl
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from core.client.credentials import x_token_credentials
from core.client.http import open_http_client, request_with_retry, x_token_auth
from core.client.registry import RegistryClient
from core.client.trust import verifying_context
from core.errors import DepotError, RegistryError, Unauthorized, Unavailable

MAX_CONNECTIONS = 8


class ApiError(DepotError):
    """The registry answered with an error status (or not with the expected document)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


#: A CA bundle (PEM) to verify the registry's certificate with instead of the default
#: bundle: a registry whose certificate a private CA signed (README, TLS).
CA_FILE_VARIABLE = "DEPOT_CA_FILE"


def trust() -> ssl.SSLContext | bool:
    """How the registry's certificate is verified: ``$DEPOT_CA_FILE``, else httpx's
    default bundle."""
    ca_file = os.environ.get(CA_FILE_VARIABLE)
    return verifying_context(Path(ca_file)) if ca_file else True


def open_client(registry: str, token: str) -> httpx.AsyncClient:
    return open_http_client(
        registry, auth_header=x_token_auth(token), max_connections=MAX_CONNECTIONS, verify=trust()
    )


def open_registry(registry: str, token: str) -> AbstractAsyncContextManager[RegistryClient]:
    """The ``/v2`` client of ``registry``, authenticated with ``token``."""
    return RegistryClient.open(
        registry,
        x_token_credentials(token),
        preemptive_basic=True,
        max_connections=MAX_CONNECTIONS,
        verify=trust(),
    )


def segment(value: str) -> str:
    """``value`` as one URL path segment."""
    return quote(value, safe="")


def error_from(response: httpx.Response, action: str) -> ApiError:
    """An :class:`ApiError` describing ``response`` (its body must have been read)."""
    code: str | None = None
    message = ""
    try:
        errors = json.loads(response.content).get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code") or "") or None
            message = str(errors[0].get("message") or "")
    except (ValueError, AttributeError):
        message = response.text[:200].strip()
    detail = ": ".join(part for part in (code, message) if part) or response.reason_phrase
    hint = ""
    if response.status_code == 401:
        hint = " (is the token valid? run depot login again)"
    return ApiError(
        f"{action}: HTTP {response.status_code} {detail}{hint}", response.status_code, code
    )


def registry_error(exc: RegistryError, action: str) -> ApiError:
    """An :class:`ApiError` describing what the registry client raised while doing ``action``:
    the HTTP status and the registry's code and message (a failure in transit has none)."""
    if isinstance(exc, Unavailable):
        return ApiError(f"{action}: {exc.code}: {exc.message}", None, exc.code)
    hint = " (is the token valid? run depot login again)" if isinstance(exc, Unauthorized) else ""
    return ApiError(
        f"{action}: HTTP {exc.status} {exc.code}: {exc.message}{hint}", exc.status, exc.code
    )


async def call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    action: str,
    *,
    expect: tuple[int, ...] = (200,),
    json_body: Any = None,
) -> Any:
    """Send a JSON API request; return the decoded JSON answer (None for an empty body)."""
    kwargs: dict[str, Any] = {}
    if json_body is not None:
        kwargs["content"] = json.dumps(json_body).encode()
        kwargs["headers"] = {"Content-Type": "application/json"}
    response = await request_with_retry(client, method, url, **kwargs)
    if response.status_code not in expect:
        raise error_from(response, action)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise ApiError(f"{action}: the registry answered with invalid JSON") from exc


async def check_login(registry: RegistryClient) -> None:
    """``GET /v2/`` with the token: 200 or :class:`ApiError`."""
    try:
        await registry.ping()
    except RegistryError as exc:
        raise registry_error(exc, "checking the token against /v2/") from exc


async def create_build(
    client: httpx.AsyncClient, project: str, save_tags: list[str]
) -> dict[str, Any]:
    body: dict[str, Any] = {"save_tags": save_tags} if save_tags else {}
    document = await call(
        client,
        "POST",
        f"/api/v1/projects/{segment(project)}/builds",
        f"creating a build in project {project}",
        expect=(200, 201),
        json_body=body,
    )
    if not isinstance(document, dict) or not isinstance(document.get("id"), str):
        raise ApiError("creating a build: the answer has no build id")
    return document


async def list_builds(
    client: httpx.AsyncClient, project: str, limit: int | None = None
) -> list[dict[str, Any]]:
    """The project's builds, newest first (expired ones included)."""
    query = f"?n={limit}" if limit is not None else ""
    document = await call(
        client,
        "GET",
        f"/api/v1/projects/{segment(project)}/builds{query}",
        f"listing the builds of project {project}",
    )
    builds = document.get("builds") if isinstance(document, dict) else None
    if not isinstance(builds, list):
        raise ApiError("listing builds: the answer has no builds list")
    return [b for b in builds if isinstance(b, dict)]


async def delete_build(client: httpx.AsyncClient, project: str, build_id: str) -> None:
    await call(
        client,
        "DELETE",
        f"/api/v1/projects/{segment(project)}/builds/{segment(build_id)}",
        f"deleting build {build_id}",
        expect=(200, 202, 204),
    )


async def org_usage(client: httpx.AsyncClient, org: str) -> dict[str, Any]:
    document = await call(
        client, "GET", f"/api/v1/orgs/{segment(org)}/usage", f"reading the usage of org {org}"
    )
    if not isinstance(document, dict):
        raise ApiError("reading usage: the answer is not a JSON object")
    return document


async def get_build(
    client: httpx.AsyncClient, project: str, build_id: str
) -> dict[str, Any] | None:
    """The build, or None when the project has none by that id."""
    try:
        document = await call(
            client,
            "GET",
            f"/api/v1/projects/{segment(project)}/builds/{segment(build_id)}",
            f"reading build {build_id} of project {project}",
        )
    except ApiError as exc:
        if exc.status == 404:  # no such build (a missing project shows when listing)
            return None
        raise
    if not isinstance(document, dict) or not isinstance(document.get("id"), str):
        raise ApiError("reading a build: the answer is not a build")
    return document


async def list_orgs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    document = await call(client, "GET", "/api/v1/orgs", "listing organizations")
    orgs = document.get("orgs") if isinstance(document, dict) else None
    if not isinstance(orgs, list):
        raise ApiError("listing organizations: the answer has no orgs list")
    return [o for o in orgs if isinstance(o, dict)]


async def list_projects(client: httpx.AsyncClient, org: str) -> list[dict[str, Any]]:
    document = await call(
        client,
        "GET",
        f"/api/v1/orgs/{segment(org)}/projects",
        f"listing the projects of org {org}",
    )
    projects = document.get("projects") if isinstance(document, dict) else None
    if not isinstance(projects, list):
        raise ApiError("listing projects: the answer has no projects list")
    return [p for p in projects if isinstance(p, dict)]


async def get_project(client: httpx.AsyncClient, project: str) -> dict[str, Any]:
    """The project with its org (``org_id``, ``org_slug``)."""
    document = await call(
        client, "GET", f"/api/v1/projects/{segment(project)}", f"reading project {project}"
    )
    if not isinstance(document, dict) or not isinstance(document.get("org_id"), str):
        raise ApiError("reading a project: the answer names no org")
    return document


async def create_token(
    client: httpx.AsyncClient,
    org: str,
    kind: str,
    *,
    project: str | None,
    expires_in_seconds: float | None,
    description: str,
) -> dict[str, Any]:
    """A new token of ``org``; the answer carries its secret (``token``) once."""
    body: dict[str, Any] = {"kind": kind, "description": description}
    if project is not None:
        body["project_id"] = project
    if expires_in_seconds is not None:
        body["expires_in_seconds"] = expires_in_seconds
    document = await call(
        client,
        "POST",
        f"/api/v1/orgs/{segment(org)}/tokens",
        f"creating a {kind} token in org {org}",
        expect=(200, 201),
        json_body=body,
    )
    if not isinstance(document, dict) or not isinstance(document.get("token"), str):
        raise ApiError("creating a token: the answer has no token")
    return document

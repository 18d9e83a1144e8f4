"""Helpers for the management API tests: clients that check every answer for leaks."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.integration.oci import guarded, new_image, push_manifest
from tests.integration.tenants import Tenants, basic, bearer

TIMEOUT = 30
ORGS = "/api/v1/orgs"


def fixed_secrets(tenants: Tenants) -> list[str]:
    return [tenants.acme, tenants.other, tenants.acme_pull, tenants.acme_project]


def _json_keys(document: Any) -> set[str]:
    if isinstance(document, dict):
        return set(document).union(*map(_json_keys, document.values()))
    if isinstance(document, list):
        return set().union(*map(_json_keys, document))
    return set()


def client_for(tenants: Tenants, token: str | None = None) -> httpx.AsyncClient:
    """A client whose every response must not be a 5xx nor carry a hash or a known secret."""

    async def no_secrets(response: httpx.Response) -> None:
        text = (await response.aread()).decode(errors="replace")
        if response.headers.get("Content-Type") == "application/json" and text:
            keys = _json_keys(json.loads(text))
            assert not {k for k in keys if "hash" in k.lower() or "secret" in k.lower()}, text
        for secret in fixed_secrets(tenants):
            assert secret not in text, response.request.url

    headers = bearer(token) if token else {}
    http = httpx.AsyncClient(
        base_url=tenants.url, trust_env=False, timeout=TIMEOUT, headers=headers
    )
    http.event_hooks["response"] = [no_secrets]
    return guarded(http)


async def create(http: httpx.AsyncClient, path: str, document: Any) -> dict[str, Any]:
    response = await http.post(path, json=document)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def seed(tenants: Tenants, repo: str) -> None:
    async with httpx.AsyncClient(
        base_url=tenants.url, trust_env=False, timeout=TIMEOUT, headers=basic(tenants.acme)
    ) as http:
        await push_manifest(http, repo, new_image(), "v1")

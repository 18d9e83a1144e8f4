"""The edge's ``/api/v1`` catch-all forwarder yields to every route the edge serves itself
under ``/api/v1`` (the relay's), whichever was registered first; a path in the edge's own
space that no route matches is a 404 of the edge, never forwarded."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from core.web.app import create_app
from edge.app import _install_management_api
from edge.metrics import EdgeMetrics


class Forwarded(Exception):
    """Raised where the forwarder would have called origin."""


class NoOrigin:
    """Stands in for the edge's pass-through: reaching it means "forwarded to origin"."""

    async def forward(self, request: Any) -> Any:
        raise Forwarded(request.path)


def app_with_relay_route(relay_first: bool) -> Any:
    app = create_app("edge-under-test")
    services = SimpleNamespace(origin=NoOrigin(), metrics=EdgeMetrics())

    async def relay_job(job: str) -> tuple[str, int]:
        return f"relay {job}", 202

    def relay() -> None:
        app.add_url_rule(
            "/api/v1/relay/jobs/<job>", "relay_job", relay_job, methods=["GET", "POST"]
        )

    if relay_first:
        relay()
    _install_management_api(app, services)  # type: ignore[arg-type]
    if not relay_first:
        relay()

    @app.errorhandler(Forwarded)
    async def forwarded(exc: Forwarded) -> tuple[str, int]:
        return "forwarded", 599

    return app


@pytest.mark.parametrize("relay_first", [True, False])
async def test_edge_routes_win_over_the_forwarder(relay_first: bool) -> None:
    client = app_with_relay_route(relay_first).test_client()
    mine = await client.post("/api/v1/relay/jobs/j1")
    assert (mine.status_code, await mine.get_data()) == (202, b"relay j1")
    for path in ("/api/v1/relay", "/api/v1/relay/other", "/api/v1/relay/jobs/j1/x"):
        unknown = await client.get(path)
        assert unknown.status_code == 404, path
    forwarded = await client.get("/api/v1/orgs")
    assert (forwarded.status_code, await forwarded.get_data()) == (599, b"forwarded")
    similar = await client.get("/api/v1/relayed")  # not under the prefix: origin's
    assert similar.status_code == 599

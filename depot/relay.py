"""The client of the edge's relay API (``/api/v1/relay/jobs``), for ``depot push``.

The edge copies the build to the targets itself; ``depot`` only starts the job and reads its
events, so the image's bytes never pass through this machine. Events are NDJSON lines (see
``edge/relay/routes.py``); each carries ``seq``, and the last one is ``done``, ``error`` or
``cancelled``. When the connection drops before that, the job is followed again from the
last event seen (:data:`REATTACH_ATTEMPTS` times): the edge keeps a job whose client went
away for a few seconds before cancelling it.

The target credentials go in the request body and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from depot import api
from depot.api import ApiError
from depot.docker_credentials import RegistryLogin

JOBS = "/api/v1/relay/jobs"
FINAL_EVENTS = frozenset({"done", "error", "cancelled"})
REATTACH_ATTEMPTS = 3
REATTACH_BACKOFF_SECONDS = 0.5

Event = dict[str, Any]


@dataclass
class JobState:
    job_id: str | None = None
    last_seq: int = -1


def job_body(
    project: str, reference: str, targets: list[str], logins: Mapping[str, RegistryLogin]
) -> dict[str, Any]:
    """The ``POST`` body: the source, the targets and each target registry's credentials."""
    return {
        "source": {"repository": project, "reference": reference},
        "targets": targets,
        "credentials": {
            registry: {"username": login.username, "password": login.password}
            for registry, login in logins.items()
        },
    }


class _StreamEnded(Exception):
    """The event stream ended before the job's final event."""


async def run_job(
    client: httpx.AsyncClient,
    body: Mapping[str, Any],
    on_event: Callable[[Event], None],
    state: JobState,
) -> Event:
    """Start the job, hand each event to ``on_event``; return the final event."""
    attempts = 0
    while True:
        try:
            return await _read(client, body, on_event, state)
        except (httpx.TransportError, _StreamEnded) as exc:
            if state.job_id is None:  # never started, or we cannot tell: not sent twice
                raise ApiError(
                    f"starting the relay: the connection to the edge failed: {exc}"
                ) from exc
            attempts += 1
            if attempts > REATTACH_ATTEMPTS:
                raise ApiError(
                    f"lost the connection to the edge during relay job {state.job_id}"
                ) from exc
            await trio.sleep(REATTACH_BACKOFF_SECONDS * attempts)


async def _read(
    client: httpx.AsyncClient,
    body: Mapping[str, Any],
    on_event: Callable[[Event], None],
    state: JobState,
) -> Event:
    if state.job_id is None:
        action = "starting the relay"
        request = client.build_request(
            "POST",
            JOBS,
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
    else:
        action = f"following relay job {state.job_id}"
        request = client.build_request(
            "GET", f"{JOBS}/{state.job_id}", params={"after": str(state.last_seq)}
        )
    response = await client.send(request, stream=True)
    try:
        if response.status_code not in (200, 201):
            await response.aread()
            raise api.error_from(response, action)
        state.job_id = response.headers.get("X-Relay-Job") or state.job_id
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise ApiError(f"{action}: the edge sent a malformed event") from exc
            if not isinstance(event, dict) or event.get("event") == "heartbeat":
                continue
            if isinstance(event.get("seq"), int):
                state.last_seq = event["seq"]
            if event.get("event") == "accepted" and isinstance(event.get("job"), str):
                state.job_id = event["job"]
            on_event(event)
            if event.get("event") in FINAL_EVENTS:
                return event
    finally:
        await response.aclose()
    raise _StreamEnded("the event stream ended early")


async def cancel_job(client: httpx.AsyncClient, job_id: str) -> None:
    """Ask the edge to cancel the job (a job already ended is no error)."""
    response = await client.delete(f"{JOBS}/{job_id}")
    if response.status_code not in (202, 404):
        raise api.error_from(response, f"cancelling relay job {job_id}")

"""The relay's HTTP API, served by the edge itself (never passed to origin).

- ``POST /api/v1/relay/jobs`` with the body of :mod:`edge.relay.request`: the caller must be
  allowed to pull the source, decided by the edge's gate exactly as a ``GET`` of the source
  manifest would be (same credentials, same name resolution). The source manifest is
  resolved before the job starts (an unknown build is a 404 here, not a failed job). Answers
  ``201`` with ``Location`` and ``X-Relay-Job``, and streams the job's events as NDJSON (one
  JSON object per line) until the final one (``done``, ``error`` or ``cancelled``).
- ``GET /api/v1/relay/jobs/<id>?after=<seq>``: follow the job again (after a dropped
  connection, within the grace period), from the event after ``seq``.
- ``DELETE /api/v1/relay/jobs/<id>``: cancel it (``202``).

Events (each line one object with ``seq`` and ``event``; targets are named
``registry/repository``, digests ``sha256:...``; a follower with nothing new for 10 s gets
``{"event": "heartbeat"}``, which has no ``seq``):

- ``accepted``: ``job``, ``source`` (as named), ``digest`` (the build's root), ``targets``
  (every ``registry/repository:tag``);
- ``plan``: ``digest``, ``media_type``, ``manifests``, ``referrers``, ``blobs``, ``bytes``;
- ``blob``: ``target``, ``digest``, ``size``, ``status`` = ``skipped`` (the target has it),
  ``mounted`` (with ``source``, the repository it came from), ``started``, ``done``;
- ``bytes``: ``target``, ``digest``, ``sent``, ``size`` (at most every 0.5 s per blob);
- ``manifest``: ``target``, ``digest``, ``media_type`` (a child, the root by digest);
- ``tag``: ``target`` (``registry/repository:tag``), ``digest``;
- ``referrer``: ``target``, ``digest``, ``media_type``, ``subject``, ``artifact_type``,
  ``via`` = ``referrers-api`` or ``tag-schema``;
- last, one of: ``done`` (``digest``, ``blobs_copied``, ``blobs_skipped``, ``blobs_mounted``,
  ``bytes_copied``, ``seconds``), ``error`` (``code``, ``status`` and ``message`` as the
  failing registry answered them, ``target`` when it was a target), ``cancelled``
  (``reason``).

Only the credential that created a job may follow or cancel it (a fingerprint of its
``Authorization`` header is kept, never the header). The target credentials in the body
are handed to the job and nowhere else: not logged, not echoed in events or errors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

from quart import Quart, g, request

from core.auth.request import RequestView
from core.endpoints import ManifestEndpoint
from core.errors import BadRequest, InputError, NameUnknown
from core.web.response import RegistryResponse as Response
from edge.auth import EdgeGate
from edge.relay.job import RelayJob
from edge.relay.plan import plan_targets
from edge.relay.request import parse_job_request
from edge.relay.service import RelayRequest, RelayService

MAX_BODY_BYTES = 1 << 20
#: A follower with no event for this long gets ``{"event": "heartbeat"}`` (the CLI's reads
#: time out after 30 s of silence).
HEARTBEAT_SECONDS = 10.0
NDJSON = "application/x-ndjson"


def install_relay(app: Quart, gate: EdgeGate, relay: RelayService) -> None:
    @app.route("/api/v1/relay/jobs", methods=["POST"])
    async def create_job() -> Response:
        g.route = "relay"
        wanted = parse_job_request(await _json_body())
        authorization = request.headers.get("Authorization")
        view = RequestView(
            method="GET",
            host=request.host,
            scheme=request.scheme,
            authorization=authorization,
            endpoint=ManifestEndpoint(wanted.repository, wanted.reference),
            query={},
        )
        decided = await gate.authorize(view)
        internal = decided.names.get(wanted.repository.value)
        if internal is None:
            raise NameUnknown(detail={"name": wanted.repository.value})
        root = await relay.reader.manifest(internal, wanted.reference)
        job = relay.start(
            RelayRequest(
                repository=internal,
                source=wanted.source,
                root=root,
                targets=plan_targets(wanted.targets, relay.insecure),
                credentials=wanted.credentials,
            ),
            owner=_fingerprint(authorization),
        )
        return _events(job, after=-1, status=201)

    @app.route("/api/v1/relay/jobs/<job_id>", methods=["GET"])
    async def follow_job(job_id: str) -> Response:
        g.route = "relay"
        job = relay.job(job_id, _fingerprint(request.headers.get("Authorization")))
        after = request.args.get("after", "-1")
        if not after.lstrip("-").isdigit():
            raise BadRequest("after must be an event number")
        return _events(job, after=int(after), status=200)

    @app.route("/api/v1/relay/jobs/<job_id>", methods=["DELETE"])
    async def cancel_job(job_id: str) -> Response:
        g.route = "relay"
        job = relay.job(job_id, _fingerprint(request.headers.get("Authorization")))
        job.cancel("cancelled by the client")
        body = json.dumps({"job": job.id, "cancelling": not job.ended}).encode()
        return Response(body, status=202, content_type="application/json")


def _fingerprint(authorization: str | None) -> str:
    return hashlib.sha256((authorization or "").encode()).hexdigest()


async def _json_body() -> object:
    received = bytearray()
    async for chunk in request.body:
        received += chunk
        if len(received) > MAX_BODY_BYTES:
            raise InputError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(received)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError("the body is not valid JSON") from exc


def _events(job: RelayJob, *, after: int, status: int) -> Response:
    async def lines() -> AsyncIterator[bytes]:
        async for event in job.follow(after, HEARTBEAT_SECONDS):
            line = json.dumps(event if event is not None else {"event": "heartbeat"})
            yield line.encode() + b"\n"

    headers = {
        "X-Relay-Job": job.id,
        "Location": f"/api/v1/relay/jobs/{job.id}",
        "Cache-Control": "no-store",
    }
    response = Response(lines(), status=status, content_type=NDJSON, headers=headers)
    response.timeout = None
    return response

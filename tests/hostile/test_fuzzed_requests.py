"""Property tests against real origin and edge processes: whatever a client sends — any
method, any path bytes, any header values, any Range or Content-Range — the answer is below
500, it comes (no hang), and both processes live on.

Every header and path parser is reached through a real server: paths through the ``/v2``
endpoint parser (names, tags, digests, upload ids), ``Range`` on blob reads,
``Content-Range`` on upload chunks, ``Authorization`` (Basic, Bearer, junk) at the gates and
the token service, ``n``/``last`` pagination, ``scope`` at ``/token``, and everything the edge
passes through to origin. A few hundred requests per property: seconds, not minutes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.fleet import Answer, Fleet, Server, fleet, raw_request
from tests.integration.oci import random_blob

pytestmark = pytest.mark.hostile

EXAMPLES = 120
FUZZ_SOURCE = "127.0.0.9"  # its failed logins count against nobody else
properties = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a real network round trip per example
    derandomize=True,  # the same requests on every run: a CI failure replays
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Deployed:
    fleet: Fleet
    blob_digest: str  # a blob of acme/app
    blob: bytes = field(repr=False)

    def servers(self) -> tuple[Server, Server]:
        return self.fleet.servers()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    with fleet(tmp_path_factory.mktemp("fuzz")) as running:
        yield trio.run(_seed, running)


async def _seed(running: Fleet) -> Deployed:
    blob = random_blob(4096)
    auth = [(b"Authorization", running.basic().encode())]
    target = f"/v2/acme/app/blobs/uploads/?digest={blob.digest}".encode()
    answer = await raw_request(running.origin, "POST", target, auth, blob.data)
    assert answer.status == 201, answer.body
    return Deployed(running, blob.digest, blob.data)


# -- what clients may send ------------------------------------------------------------------

PIECES = [
    b"acme", b"app", b"acme/app", b"v2", b"blobs", b"uploads", b"manifests", b"tags", b"list",
    b"referrers", b"_catalog", b"sha256:", b"0" * 64, b"v1", b"latest", b"/", b"//", b"..",
    b"%00", b"%2F", b"%ff", b"%", b"\xff", b"\xe9", b"\x80", b"?", b"&", b"=", b"n", b"last",
    b"mount", b"from", b"digest", b"9" * 30, b"1" * 4400, b"-", b":", b"@", b"A", b"*",
]  # fmt: skip
#: Header values as a client can put them on the wire: any byte but CR and LF.
header_values = st.one_of(
    st.binary(max_size=80).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")),
    st.lists(st.sampled_from(PIECES), max_size=6).map(b"".join),
    st.sampled_from(
        [
            b"bytes=0-0",
            b"bytes=-1",
            b"bytes=" + b"1" * 4301 + b"-",
            "bytes=\u0660-\u0661".encode(),
            b"0-" + b"5" * 5000,
            b"Basic \x80\xff",
            b"Basic " + base64.b64encode(b"x-token:dpo_" + b"x" * 40),
            b"Bearer e30.e30.e30",
            b"Bearer " + b"a" * 20_000,
        ]
    ),
)
header_names = st.sampled_from(
    [
        b"Range",
        b"Content-Range",
        b"Authorization",
        b"Content-Type",
        b"Accept",
        b"X-Forwarded-For",
        b"If-None-Match",
        b"Docker-Content-Digest",
        b"X-Custom",
    ]
)
headers = st.lists(st.tuples(header_names, header_values), max_size=4)
targets = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=10).map(lambda parts: b"/v2/" + b"/".join(parts)),
    st.lists(st.sampled_from(PIECES), max_size=6).map(lambda parts: b"/" + b"".join(parts)),
    st.builds(
        lambda query: b"/token?" + query,
        st.lists(st.sampled_from(PIECES), max_size=8).map(b"".join),
    ),
)
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


def served(server: Server, answer: Answer, what: object, method: str = "GET") -> None:
    """Below 500, from a live server; an error in the OCI envelope, unless the HTTP layer
    refused the request itself (a bare 400: a header value h11 does not accept)."""
    assert server.alive, f"{server.url} died on {what!r}"
    assert answer.status < 500, (server.url, what, answer.status, answer.body[:300])
    if answer.status < 400 or method == "HEAD":
        return
    if answer.body:
        body = json.loads(answer.body)  # the OCI envelope, not an HTML page
        assert body["errors"][0]["code"], body
    else:
        assert answer.status == 400 and answer.header("Content-Type") is None, answer.head


# -- the properties -------------------------------------------------------------------------


@properties
@given(
    methods,
    targets,
    headers,
    st.binary(max_size=64),
    st.booleans(),
    st.sampled_from([0, 1]),
)
async def test_any_request_is_answered_below_500(
    deployed: Deployed,
    method: str,
    target: bytes,
    extra: list[tuple[bytes, bytes]],
    body: bytes,
    authenticated: bool,
    which: int,
) -> None:
    running, server = deployed.fleet, deployed.servers()[which]
    sent = list(extra)
    if authenticated and not any(name == b"Authorization" for name, _ in sent):
        sent.append((b"Authorization", running.basic().encode()))
    answer = await raw_request(server, method, target, sent, body, source=FUZZ_SOURCE)
    served(server, answer, (method, target[:200], sent), method)


@properties
@given(header_values, st.sampled_from([0, 1]))
async def test_blob_reads_with_any_range(deployed: Deployed, value: bytes, which: int) -> None:
    running, server = deployed.fleet, deployed.servers()[which]
    sent = [(b"Authorization", running.basic().encode()), (b"Range", value)]
    target = f"/v2/acme/app/blobs/{deployed.blob_digest}".encode()
    answer = await raw_request(server, "GET", target, sent, source=FUZZ_SOURCE)
    served(server, answer, value[:200])
    if answer.status == 400:  # refused by the HTTP layer (e.g. a NUL in the value)
        assert not answer.body, answer.body[:300]
        return
    assert answer.status in (200, 206, 416), (value[:200], answer.status)
    if answer.status == 206:
        assert answer.body and answer.body in deployed.blob
    if answer.status == 200:
        assert answer.body == deployed.blob


@properties
@given(
    header_values,
    st.binary(max_size=32),
    st.sampled_from(["PATCH", "PUT"]),
    st.sampled_from([0, 1]),
)
async def test_upload_chunks_with_any_content_range(
    deployed: Deployed, value: bytes, body: bytes, method: str, which: int
) -> None:
    running, server = deployed.fleet, deployed.servers()[which]
    auth = (b"Authorization", running.basic().encode())
    started = await raw_request(server, "POST", b"/v2/acme/app/blobs/uploads/", [auth])
    assert started.status == 202, started.body
    location = (started.header("Location") or "").encode()
    target = location + (b"?digest=sha256:" + b"0" * 64 if method == "PUT" else b"")
    answer = await raw_request(
        server, method, target, [auth, (b"Content-Range", value)], body, source=FUZZ_SOURCE
    )
    served(server, answer, (method, value[:200]))
    await raw_request(server, "DELETE", location, [auth])  # no session left behind


@properties
@given(
    st.lists(st.sampled_from(PIECES), max_size=6).map(b"".join),
    st.lists(st.sampled_from(PIECES), max_size=4).map(b"".join),
    st.sampled_from([0, 1]),
)
async def test_tag_lists_and_the_catalog_with_any_page(
    deployed: Deployed, n: bytes, last: bytes, which: int
) -> None:
    running, server = deployed.fleet, deployed.servers()[which]
    auth = [(b"Authorization", running.basic().encode())]
    for path in (b"/v2/acme/app/tags/list", b"/v2/_catalog"):
        answer = await raw_request(
            server, "GET", path + b"?n=" + n + b"&last=" + last, auth, source=FUZZ_SOURCE
        )
        served(server, answer, (path, n[:100], last[:100]))

"""Hostile clients against real origin and edge processes: stalled uploads, guessed logins,
and the inputs that used to be 500s. Afterwards both processes are alive, every answer was
the 4xx it should be, and open descriptors and RSS are back near where they started.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import trio

from tests.hostile.fleet import (
    ANSWER_SECONDS,
    MIB,
    Fleet,
    Server,
    answer_on,
    fleet,
    raw_request,
    stalled_request,
)
from tests.integration.oci import Manifest, new_image, push_manifest

pytestmark = pytest.mark.hostile

PER_CLIENT = 6
#: Descriptors a process may hold beyond its base afterwards (pooled keep-alive connections,
#: cache files): a leak per hostile request would be dozens.
FD_SLACK = 16
RSS_SLACK = 64 * MIB


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Manifest]]:
    with fleet(
        tmp_path_factory.mktemp("fleet"),
        edge_settings={"passthrough_per_client_max": PER_CLIENT, "passthrough_writes_max": 16},
    ) as running:
        image = trio.run(_seed, running)
        yield running, image


async def _seed(running: Fleet) -> Manifest:
    image = new_image(layers=2)
    headers = {"Authorization": running.basic()}
    async with httpx.AsyncClient(base_url=running.origin.url, headers=headers) as http:
        await push_manifest(http, "acme/app", image, "v1")
        await push_manifest(http, "acme/public", image, "v1")
        visible = await http.put(
            "/api/v1/orgs/acme/repositories/public/visibility", json={"public": True}
        )
        assert visible.status_code == 200, visible.text
    return image


def _levels(running: Fleet) -> dict[str, tuple[int, int]]:
    return {s.url: (s.descriptors(), s.rss()) for s in running.servers()}


def _assert_back_near(running: Fleet, before: dict[str, tuple[int, int]]) -> None:
    for server in running.servers():
        assert server.alive
        fds, rss = before[server.url]
        assert server.descriptors() <= fds + FD_SLACK, (server.url, fds, server.descriptors())
        assert server.rss() <= rss + RSS_SLACK, (server.url, rss, server.rss())


async def _settled(server: Server, base: int) -> None:
    """Wait (bounded) until the server has let go of closed connections."""
    for _ in range(int(ANSWER_SECONDS * 10)):
        if server.descriptors() <= base + FD_SLACK:
            return
        await trio.sleep(0.1)  # the server noticing the hang-ups: what is checked next


async def test_stalled_uploads_and_guessed_logins_lock_out_nobody(
    deployed: tuple[Fleet, Manifest],
) -> None:
    running, image = deployed
    edge = running.edge
    before = _levels(running)
    upload = b"/v2/acme/app/blobs/uploads/?digest=sha256:" + b"0" * 64
    stalled: list[trio.SocketStream] = []
    try:
        # 1. One client opens twice its share of uploads and sends no body: the excess is
        #    refused at once (429), the rest hold a slot each (until the serving layer's
        #    body timeout, or the client leaves).
        for _ in range(2 * PER_CLIENT):
            stalled.append(
                await stalled_request(edge, "POST", upload, declared_length=MIB, source="127.0.0.2")
            )
        refused: list[int | None] = []
        with trio.fail_after(ANSWER_SECONDS):
            async with trio.open_nursery() as nursery:

                async def watch(stream: trio.SocketStream) -> None:
                    refused.append(await answer_on(stream))
                    if len(refused) == PER_CLIENT:
                        nursery.cancel_scope.cancel()

                for stream in stalled:
                    nursery.start_soon(watch, stream)
        assert refused == [429] * PER_CLIENT

        # 2. Another client guesses logins at the edge: ten wrong ones.
        wrong = running.basic("dpo_" + "w" * 40).encode()
        answers = [
            await raw_request(
                edge,
                "GET",
                b"/v2/acme/app/manifests/v1",
                [(b"Authorization", wrong)],
                source="127.0.0.3",
            ),
            *[
                await raw_request(
                    edge,
                    "GET",
                    b"/token?service=depot-registry",
                    [(b"Authorization", wrong)],
                    source="127.0.0.3",
                )
                for _ in range(9)
            ],
        ]
        assert [a.status for a in answers] == [401] * 10
        good = running.basic().encode()
        limited = await raw_request(
            edge,
            "GET",
            b"/token?service=depot-registry",
            [(b"Authorization", good)],
            source="127.0.0.3",
        )
        assert limited.status == 429 and limited.header("Retry-After")

        # 3. A fresh client is served at once: login, tags, pulls, anonymous public pulls.
        scope = b"/token?service=depot-registry&scope=repository:acme/app:pull"
        login = await raw_request(
            edge, "GET", scope, [(b"Authorization", good)], source="127.0.0.4"
        )
        assert login.status == 200, login.body[:300]
        bearer = b"Bearer " + json.loads(login.body)["token"].encode()
        tags = await raw_request(
            edge, "GET", b"/v2/acme/app/tags/list", [(b"Authorization", bearer)], source="127.0.0.4"
        )
        assert tags.status == 200 and json.loads(tags.body)["tags"] == ["v1"]
        pulled = await raw_request(
            edge,
            "GET",
            b"/v2/acme/app/manifests/v1",
            [(b"Authorization", bearer)],
            source="127.0.0.4",
        )
        assert pulled.status == 200 and pulled.body == image.payload
        public = await raw_request(edge, "GET", b"/v2/acme/public/manifests/v1", source="127.0.0.4")
        assert public.status == 200 and public.body == image.payload
    finally:
        for stream in stalled:
            await stream.aclose()
    for server in running.servers():
        await _settled(server, before[server.url][0])
    _assert_back_near(running, before)


async def test_inputs_that_were_500s_are_4xx_on_origin_and_edge(
    deployed: tuple[Fleet, Manifest],
) -> None:
    running, image = deployed
    before = _levels(running)
    auth = (b"Authorization", running.basic().encode())
    layer = image.blobs[-1].digest.encode()
    for server in running.servers():
        session = await raw_request(server, "POST", b"/v2/acme/app/blobs/uploads/", [auth])
        assert session.status == 202
        location = (session.header("Location") or "").encode()
        cases: list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes, set[int]]] = [
            (
                "GET",
                b"/v2/acme/app/blobs/" + layer,
                [auth, (b"Range", b"bytes=" + b"1" * 4301 + b"-")],
                b"",
                {416},
            ),
            (
                "GET",
                b"/v2/acme/app/blobs/" + layer,
                [auth, (b"Range", "bytes=\u0660-\u0661".encode())],
                b"",
                {200},
            ),
            ("PATCH", location, [auth, (b"Content-Range", b"0-" + b"5" * 5000)], b"x", {400}),
            ("PATCH", location, [auth, (b"Content-Range", "\u0660-\u0661".encode())], b"x", {416}),
            ("GET", location, [auth, (b"X-Note", b"caf\xe9 \xff\x80")], b"", {204}),
            ("PATCH", b"/v2/acme/app/blobs/uploads/abc%00def", [auth], b"x", {404}),
            ("GET", b"/v2/acme/app/tags/list?n=" + b"9" * 5000, [auth], b"", {200}),
            ("GET", b"/v2/", [(b"Authorization", b"Basic \x80\xff")], b"", {401}),
            ("GET", b"/v2/acme/app%00/manifests/v1", [auth], b"", {400}),
        ]
        for method, target, headers, body, expected in cases:
            answer = await raw_request(server, method, target, headers, body)
            assert answer.status in expected, (server.url, method, target[:80], answer.body[:300])
            if answer.status >= 400:
                assert json.loads(answer.body)["errors"][0]["code"], answer.body[:300]
    _assert_back_near(running, before)

"""A fault-injecting reverse proxy between an edge and its origin, for the edge tests.

An ASGI app served by hypercorn on 127.0.0.1 (port 0, or the port it had before a
``disconnect``), forwarding every request to ``target`` with httpx: bodies stream both ways,
``Host`` and every end-to-end header go along unchanged, blob bytes are relayed raw.

It counts what arrives, per ``(method, kind)`` (``kind`` from the path: ``blob``,
``manifest``, ``upload``, ``token``, ``jwks``, ``base``, ``other``), and injects faults on
switches a test flips at any time:

- ``down``: every request is answered ``down_status`` (503) with ``Retry-After: 1``;
  ``await disconnect()`` stops listening instead (connections refused, open ones closed)
  and ``await reconnect()`` listens on the same port again;
- ``status_for_manifests`` / ``status_for_blobs``: GET/HEAD of that kind answered so;
- ``hold``: requests of these kinds wait before being forwarded until ``release()``;
  ``hold_when(method, path, headers)``: so do requests for which it returns True;
- ``add_headers``: sent with every forwarded answer (e.g. Docker Hub's ``ratelimit-remaining``);
- on blob GET bodies (200/206): ``stall_blob_after_bytes`` (relay N bytes, then nothing
  until ``release()``), ``fail_blob_after_bytes`` (relay N bytes, then cut the connection),
  ``corrupt_blob`` (the first body byte flipped: same length, wrong digest).

``release()`` frees every held request and stalled body (and re-arms: a later one waits
again while the switch is set); ``waiting`` counts requests held or stalled right now and
``wait_for(predicate)`` waits until a condition on the proxy holds.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

log = logging.getLogger("tests.origin_proxy")

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}
)
_BLOB = re.compile(r"^/v2/.+/blobs/[a-z0-9]+:[a-zA-Z0-9=_-]+$")
_UPLOAD = re.compile(r"^/v2/.+/blobs/uploads(/.*)?$")
_MANIFEST = re.compile(r"^/v2/.+/manifests/[^/]+$")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def path_kind(path: str) -> str:
    if _UPLOAD.match(path):
        return "upload"
    if _BLOB.match(path):
        return "blob"
    if _MANIFEST.match(path):
        return "manifest"
    if path in ("/v2", "/v2/"):
        return "base"
    if path == "/token":
        return "token"
    if path == "/.well-known/jwks.json":
        return "jwks"
    return "other"


class OriginProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.url = ""
        self.counts: Counter[tuple[str, str]] = Counter()
        self.requests: list[tuple[str, str]] = []  # (method, path), in arrival order
        self.blob_bytes_sent = 0  # blob body bytes relayed to clients, all requests
        self.down = False
        self.down_status = 503
        self.status_for_manifests: int | None = None
        self.status_for_blobs: int | None = None
        self.hold: frozenset[str] = frozenset()
        self.hold_when: Callable[[str, str, list[tuple[str, str]]], bool] | None = None
        self.stall_blob_after_bytes: int | None = None
        self.fail_blob_after_bytes: int | None = None
        self.corrupt_blob = False
        self.add_headers: dict[str, str] = {}
        self.waiting = 0  # requests held or bodies stalled right now
        self._release = trio.Event()
        self._changed = trio.Event()
        self._port = 0
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._client = httpx.AsyncClient(
            trust_env=False,
            timeout=httpx.Timeout(30, connect=5),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    # -- switches and conditions ---------------------------------------------------------------

    def count(self, method: str, kind: str) -> int:
        return self.counts[(method, kind)]

    def release(self) -> None:
        """Let every held request and stalled body go on."""
        self._release.set()
        self._release = trio.Event()

    def heal(self) -> None:
        """Every switch off, everything waiting released."""
        self.down, self.down_status = False, 503
        self.status_for_manifests = self.status_for_blobs = None
        self.hold = frozenset()
        self.hold_when = None
        self.stall_blob_after_bytes = self.fail_blob_after_bytes = None
        self.corrupt_blob = False
        self.release()

    async def wait_for(self, predicate: Callable[[OriginProxy], bool]) -> None:
        """Return once ``predicate(self)`` holds (checked on every change of the proxy)."""
        while not predicate(self):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_released(self) -> None:
        self.waiting += 1
        self._notify()
        try:
            await self._release.wait()
        finally:
            self.waiting -= 1
            self._notify()

    # -- the ASGI app ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        kind = path_kind(path)
        self.counts[(method, kind)] += 1
        self.requests.append((method, path))
        self._notify()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        has_body = any(
            k.lower() == "transfer-encoding" or (k.lower() == "content-length" and v != "0")
            for k, v in headers
        )
        if not has_body:
            # Nothing to read: watch for the client leaving, and stop relaying if it does.
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                await self._handle(scope, kind, headers, None, send)
                nursery.cancel_scope.cancel()
        else:
            await self._handle(scope, kind, headers, _request_body(receive), send)

    async def _handle(
        self,
        scope: Scope,
        kind: str,
        headers: list[tuple[str, str]],
        body: AsyncIterator[bytes] | None,
        send: Send,
    ) -> None:
        method = scope["method"]
        if self.down:
            await _answer(send, method, self.down_status)
            return
        reads = method in ("GET", "HEAD")
        if reads and kind == "manifest" and self.status_for_manifests is not None:
            await _answer(send, method, self.status_for_manifests)
            return
        if reads and kind == "blob" and self.status_for_blobs is not None:
            await _answer(send, method, self.status_for_blobs)
            return
        if kind in self.hold or (
            self.hold_when is not None and self.hold_when(method, scope["path"], headers)
        ):
            await self._wait_released()
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.target + scope["raw_path"].decode("latin-1") + (f"?{query}" if query else "")
        # As bytes: httpx would encode str values as ASCII and fail on latin-1 ones.
        forwarded = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in headers
            if k.lower() not in _HOP_BY_HOP
        ]
        request = self._client.build_request(method, url, headers=forwarded, content=body)
        try:
            upstream = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.info("origin proxy: %s %s failed: %r", method, url, exc)
            await _answer(send, method, 502)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status_code,
                    "headers": [
                        (k.encode("latin-1"), v.encode("latin-1"))
                        for k, v in [*upstream.headers.multi_items(), *self.add_headers.items()]
                        if k.lower() not in _HOP_BY_HOP
                    ],
                }
            )
            faulty = method == "GET" and kind == "blob" and upstream.status_code in (200, 206)
            complete = await self._relay(upstream, send, faulty)
            if complete:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            # Else return mid-body: hypercorn closes the connection (a truncated response).
        finally:
            with trio.CancelScope(shield=True):
                await upstream.aclose()

    async def _relay(self, upstream: httpx.Response, send: Send, faulty: bool) -> bool:
        """Relay the body; False when it was cut short (a fault, or the origin failed)."""
        sent = 0
        stalled = corrupted = False
        try:
            async for chunk in upstream.aiter_raw():
                while chunk:
                    piece = chunk
                    if faulty:
                        stall = None if stalled else self.stall_blob_after_bytes
                        limits = [
                            n
                            for n in (stall, self.fail_blob_after_bytes)
                            if n is not None and n >= sent
                        ]
                        if limits:
                            piece = piece[: min(limits) - sent]
                        if self.corrupt_blob and not corrupted and piece:
                            piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
                            corrupted = True
                    chunk = chunk[len(piece) :]
                    if piece:
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
                        sent += len(piece)
                        if faulty:
                            self.blob_bytes_sent += len(piece)
                            self._notify()
                    if not faulty:
                        continue
                    if sent == self.fail_blob_after_bytes:
                        return False
                    if not stalled and sent == self.stall_blob_after_bytes:
                        stalled = True
                        await self._wait_released()
        except httpx.HTTPError as exc:
            log.info("origin proxy: the origin's body failed after %d bytes: %r", sent, exc)
            return False
        return True

    # -- serving ---------------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        config = Config()
        config.bind = [f"127.0.0.1:{self._port}"]
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = None
        self._shutdown, self._stopped = trio.Event(), trio.Event()
        binds = await nursery.start(self._serve, config)
        self.url = binds[0]
        self._port = int(self.url.rsplit(":", 1)[1])

    async def _serve(self, config: Config, *, task_status: trio.TaskStatus[list[str]]) -> None:
        stopped = self._stopped
        try:
            app: Any = self
            await serve(app, config, shutdown_trigger=self._shutdown.wait, task_status=task_status)
        finally:
            stopped.set()

    async def disconnect(self) -> None:
        """Stop listening: new connections are refused, open ones closed."""
        self.release()
        self._shutdown.set()
        await self._stopped.wait()

    async def reconnect(self) -> None:
        """Listen again, on the same port."""
        assert self._nursery is not None
        await self.start(self._nursery)

    async def stop(self) -> None:
        self.heal()
        await self.disconnect()
        await self._client.aclose()


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise httpx.ReadError("the client left mid-request")  # aborts the upstream send
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


async def _answer(send: Send, method: str, status: int) -> None:
    body = json.dumps(
        {"errors": [{"code": "UNAVAILABLE", "message": "origin proxy fault", "detail": None}]}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


@asynccontextmanager
async def open_origin_proxy(target: str) -> AsyncIterator[OriginProxy]:
    async with trio.open_nursery() as nursery:
        proxy = OriginProxy(target)
        await proxy.start(nursery)
        try:
            yield proxy
        finally:
            with trio.CancelScope(shield=True):
                await proxy.stop()

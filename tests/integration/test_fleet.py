"""The whole fleet as processes: two origins, a shield edge and a region of three edges, on
real PostgreSQL and a real (private, restartable) Redis.

Topology (every name a process, except the two counting proxies, which run in the test)::

    clients -> edge1 \
            -> edge2  > region R -> shield-proxy -> shield -> origin-proxy -> origin1 | origin2
            -> edge3 /

- edge1..3: one region (one Redis); a peer streams a blob from the region's leader over HTTP;
- shield-proxy: counts the GETs reaching the shield edge (a tier with its own cache and fills);
- origin-proxy: counts the GETs reaching origin and sends requests to the two origins in turn;
- origin1, origin2: one PostgreSQL schema, one data directory (filesystem storage).

The region edges' upstream is the shield, so ``shield-proxy`` counts what the region fetched
from upstream (one GET per cold digest, the region's coordination) and ``origin-proxy`` what
reached origin through the tier. One sequential scenario, as a fleet lives it:

1. a cold blob pulled by 64 concurrent clients spread over the region: one GET at the shield,
   one at origin, 64 verified bodies;
2. the region's leader killed (SIGKILL) mid-fill: the others finish with the right bytes;
3. a tag moved, a manifest deleted and a token revoked at origin (through either origin):
   every running edge and the shield act within ``ACT_WITHIN_SECONDS`` (printed: the time
   from origin's answer, and each edge's own lag from origin's append to acting), and an
   edge stopped before the changes catches up from its saved position when it restarts;
4. Redis killed mid-fill and restarted: no wrong bytes, every pull served, and one GET at the
   shield again for a new cold blob once the edges are back on Redis.
"""

from __future__ import annotations

import base64
import secrets
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import httpx
import pytest
import trio

from origin.auth.token_format import parse_token
from tests.integration.edges import edge_client, fetch, metric, metrics, upstream_gets
from tests.integration.oci import (
    Blob,
    config_blob,
    image_manifest,
    new_image,
    push_manifest,
    random_blob,
)
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import OwnTenancyStore, basic, bearer_for
from tests.postgres import fresh_schema, require_postgres
from tests.processes import OriginProcess, edge_process, origin_process, tail
from tests.redis_server import RedisServer, redis_server

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MIB = 1024 * 1024
#: The cold blob of step 1 and the clients pulling it.
COLD_BLOB_BYTES = 64 * MIB
CLIENTS = 64
TEST_SECONDS = 240
#: A change not acted on by every edge within this long fails (freshness windows are 1 h).
ACT_WITHIN_SECONDS = 10.0
REPO = "acme/app"


class BalancingProxy(OriginProxy):
    """The counting proxy, sending each request to the next origin in turn (a load
    balancer in front of the origins)."""

    def __init__(self, targets: list[str]) -> None:
        self._targets = cycle([target.rstrip("/") for target in targets])
        super().__init__(targets[0])

    @property  # type: ignore[override]
    def target(self) -> str:
        return next(self._targets)

    @target.setter
    def target(self, value: str) -> None:
        pass  # the rotation is fixed at construction


@dataclass
class Accounts:
    store: OwnTenancyStore
    acme: str  # org token: pushes, deletes, revocations
    pull: str  # pull token the clients use
    doomed: str  # pull token revoked in step 3
    edge: Path  # file with the edges' service token


async def accounts(database_url: str, root: Path) -> Accounts:
    store = OwnTenancyStore.open(database_url)
    now = time.time()
    org = await store.create_org("acme", now)
    _, acme = await store.create_token("org", org_id=org.id, now=now)
    _, pull = await store.create_token("pull", org_id=org.id, now=now)
    _, doomed = await store.create_token("pull", org_id=org.id, now=now)
    _, edge = await store.create_token("edge", now=now)
    token_file = root / "edge.token"
    token_file.write_text(edge)
    return Accounts(store, acme, pull, doomed, token_file)


def write_origin_settings(root: Path, database_url: str) -> Path:
    key = root / "upstream-credentials.key"
    key.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    key.chmod(0o600)
    config = root / "origin.toml"
    config.write_text(
        "\n".join(
            [
                f'database_url = "{database_url}"',
                f'storage_url = "file://{root / "shared-storage"}"',
                f'upstream_credentials_key_file = "{key}"',
                "graceful_timeout_seconds = 2",
            ]
        )
        + "\n"
    )
    return config


def write_edge_settings(path: Path, **fields: object) -> Path:
    settings = {
        "graceful_timeout_seconds": 1,
        "tag_freshness_seconds": 3600,  # only the feed can explain an edge acting at once
        "events_wait_seconds": 5,
        **fields,
    }
    lines = [
        f"{key} = {value!r}".replace("'", '"') if isinstance(value, str) else f"{key} = {value}"
        for key, value in settings.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Kept:
    """A process held open by a task of its own, so that several start and stop at once."""

    process: OriginProcess
    stop: trio.Event
    stopped: trio.Event


async def keep(nursery: trio.Nursery, manager: AbstractAsyncContextManager[OriginProcess]) -> Kept:
    """Enter ``manager`` (a process) in a task of ``nursery``; it leaves on ``stop``."""

    async def hold(task_status: trio.TaskStatus[Kept]) -> None:
        stop, stopped = trio.Event(), trio.Event()
        try:
            async with manager as running:
                task_status.started(Kept(running, stop, stopped))
                await stop.wait()
        finally:
            stopped.set()

    kept: Kept = await nursery.start(hold)
    return kept


async def stop_all(kept: list[Kept]) -> None:
    """Stop them all at once (SIGTERM each, then wait for every one)."""
    with trio.CancelScope(shield=True):
        for each in kept:
            each.stop.set()
        for each in kept:
            await each.stopped.wait()


class Fleet:
    """The running processes; edges are started, killed and restarted by name."""

    def __init__(self, root: Path, nursery: trio.Nursery, accounts: Accounts) -> None:
        self.root = root
        self.nursery = nursery
        self.accounts = accounts
        self.origins: list[OriginProcess] = []
        self.edges: dict[str, OriginProcess] = {}
        self.kept: list[Kept] = []  # every edge process started, running or not
        self.shield_url = ""
        self.redis_url = ""
        self.region = f"r-{uuid.uuid4().hex[:8]}"

    async def start_edge(self, name: str) -> OriginProcess:
        directory = self.root / name
        directory.mkdir(exist_ok=True)
        config = write_edge_settings(
            directory / "edge.toml",
            redis_url=self.redis_url,
            region=self.region,
            region_lock_seconds=2,
        )
        kept = await keep(
            self.nursery,
            edge_process(
                self.shield_url,
                self.accounts.edge,
                directory / "cache",
                self.root / f"{name}.log",
                ["--config", str(config)],
            ),
        )
        self.kept.append(kept)
        self.edges[name] = kept.process
        return kept.process

    async def stop_edges(self) -> None:
        await stop_all(self.kept)

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.root.glob("*.log"))
        )

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {path.name}\n{tail(path, lines)}" for path in sorted(self.root.glob("*.log"))
        )


@asynccontextmanager
async def running_fleet(
    root: Path, redis: RedisServer
) -> AsyncIterator[tuple[Fleet, OriginProxy, OriginProxy]]:
    """Origins, proxies, shield and region edges, all running; stopped on exit (the edges,
    then the shield, then the origins)."""
    server_url = require_postgres()
    with fresh_schema(server_url) as database_url:
        config = write_origin_settings(root, database_url)
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            origins = []
            for name in ("origin1", "origin2"):  # one after the other: the first migrates
                data_dir = root / name
                data_dir.mkdir()
                log = root / f"{name}.log"
                origins.append(
                    await keep(nursery, origin_process(data_dir, log, ["--config", str(config)]))
                )
            stack.push_async_callback(stop_all, origins)
            account = await accounts(database_url, root)
            stack.callback(account.store.close)
            at_origin = BalancingProxy([origin.process.url for origin in origins])
            await at_origin.start(nursery)
            stack.push_async_callback(_stop_proxy, at_origin)
            shield_dir = root / "shield"
            shield_dir.mkdir()
            shield = await keep(
                nursery,
                edge_process(
                    at_origin.url,
                    account.edge,
                    shield_dir / "cache",
                    root / "shield.log",
                    ["--config", str(write_edge_settings(shield_dir / "edge.toml"))],
                ),
            )
            stack.push_async_callback(stop_all, [shield])
            at_shield = OriginProxy(shield.process.url)
            await at_shield.start(nursery)
            stack.push_async_callback(_stop_proxy, at_shield)
            running = Fleet(root, nursery, account)
            running.origins = [origin.process for origin in origins]
            running.shield_url = at_shield.url
            running.redis_url = redis.url
            stack.push_async_callback(running.stop_edges)
            async with trio.open_nursery() as starting:
                for name in ("edge1", "edge2", "edge3"):
                    starting.start_soon(running.start_edge, name)
            yield running, at_origin, at_shield


async def _stop_proxy(proxy: OriginProxy) -> None:
    with trio.CancelScope(shield=True):
        await proxy.stop()


def client(url: str, token: str | None = None) -> httpx.AsyncClient:
    return edge_client(url, basic(token) if token else None)


async def pull(url: str, token: str, blob: Blob) -> str:
    async with client(url, token) as http:
        got = await fetch(http, f"/v2/{REPO}/blobs/{blob.digest}")
    assert got.status == 200 and got.error is None, (got.status, got.error)
    assert got.size == len(blob.data)
    return got.digest


async def push_blob_image(fleet: Fleet, size: int, tag: str) -> Blob:
    layer = random_blob(size)
    async with client(fleet.origins[0].url, fleet.accounts.acme) as origin:
        await push_manifest(origin, REPO, image_manifest(config_blob(), [layer]), tag)
    return layer


async def wait_metric(url: str, name: str, wanted: float) -> None:
    async with client(url) as http:
        with trio.fail_after(30):
            while metric(await metrics(http), name) != wanted:  # noqa: ASYNC110
                await trio.sleep(0.1)


async def all_acted(
    what: str, urls: list[str], check: Callable[[httpx.AsyncClient], Awaitable[bool]]
) -> float:
    """Poll every edge (each on a connection of its own, at once) until ``check`` holds at
    all of them; the seconds it took the last one (printed with each edge's own lag)."""
    began = time.perf_counter()
    took: dict[str, float] = {}

    async def watch(url: str) -> None:
        async with client(url) as http:
            while not await check(http):  # noqa: ASYNC110 (the edge's answers are watched)
                await trio.sleep(0.005)
            took[url] = time.perf_counter() - began

    with trio.fail_after(ACT_WITHIN_SECONDS):
        async with trio.open_nursery() as watchers:
            for url in urls:
                watchers.start_soon(watch, url)
    lags = []
    for url in urls:
        async with client(url) as http:
            lags.append(metric(await metrics(http), "depot_edge_events_lag_seconds"))
    print(
        f"every edge acted on {what}: "
        + ", ".join(f"{took[url] * 1000:.0f}" for url in urls)
        + " ms after origin's answer; each edge's own lag from origin's append to acting: "
        + ", ".join(f"{lag * 1000:.0f}" for lag in lags)
        + " ms"
    )
    return max(took.values())


async def digest_at(http: httpx.AsyncClient, path: str, token: str) -> str | None:
    answer = await http.get(path, headers={**basic(token), "Accept": MANIFEST_TYPES})
    return answer.headers["Docker-Content-Digest"] if answer.status_code == 200 else None


MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


async def test_fleet(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as redis, trio.fail_after(TEST_SECONDS):
        await redis.start()
        began = time.perf_counter()
        async with running_fleet(tmp_path, redis) as (running, at_origin, at_shield):
            print(f"fleet started in {time.perf_counter() - began:.1f} s")
            try:
                await _scenario(running, at_origin, at_shield, redis)
            except BaseException:
                print(running.log_tails())
                raise
        assert "Traceback" not in running.logs()


async def _scenario(
    fleet: Fleet, at_origin: OriginProxy, at_shield: OriginProxy, redis: RedisServer
) -> None:
    token = fleet.accounts.pull
    started = time.perf_counter()

    def phase(name: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {name}")

    edges = [fleet.edges[f"edge{i}"].url for i in (1, 2, 3)]

    # 1. A cold blob, CLIENTS concurrent clients over the three edges: fetched once.
    blob = await push_blob_image(fleet, COLD_BLOB_BYTES, "cold")
    received: list[str] = []

    async def one_client(i: int) -> None:
        received.append(await pull(edges[i % 3], token, blob))

    began = time.perf_counter()
    async with trio.open_nursery() as clients:
        for i in range(CLIENTS):
            clients.start_soon(one_client, i)
    took = time.perf_counter() - began
    assert received == [blob.digest] * CLIENTS
    assert upstream_gets(at_shield, blob.digest) == 1
    assert upstream_gets(at_origin, blob.digest) == 1
    print(
        f"cold pull: {CLIENTS} clients x {COLD_BLOB_BYTES // MIB} MiB over 3 edges in"
        f" {took:.2f} s ({CLIENTS * COLD_BLOB_BYTES / took / 1e6:.0f} MB/s delivered),"
        " 1 GET at the shield, 1 at origin"
    )
    peer_fetches = 0.0
    for url in edges:
        async with client(url) as http:
            peer_fetches += metric(await metrics(http), "depot_edge_region_peer_fetches")
    assert peer_fetches >= 2

    phase("leader killed mid-fill")
    # 2. The leader killed mid-fill: the others take over and finish with the right bytes.
    blob = await push_blob_image(fleet, 8 * MIB, "kill")
    at_origin.stall_blob_after_bytes = 2 * MIB
    leader, followers = fleet.edges["edge1"], [edges[1], edges[2]]
    finished: list[str] = []

    async def doomed_client() -> None:
        async with client(leader.url, token) as http:
            await fetch(http, f"/v2/{REPO}/blobs/{blob.digest}")  # cut by the kill

    async def follower(url: str) -> None:
        finished.append(await pull(url, token, blob))

    coalesced = "depot_edge_fill_waiters_coalesced"
    async with client(leader.url) as http:
        before = metric(await metrics(http), coalesced)
    async with trio.open_nursery() as clients:
        clients.start_soon(doomed_client)
        await at_origin.wait_for(lambda p: p.waiting == 1)  # the fill is under way, stalled
        for url in followers:
            clients.start_soon(follower, url)
        # Both followers stream from the leader (their peer requests joined its fill).
        async with client(leader.url) as http:
            with trio.fail_after(20):
                while metric(await metrics(http), coalesced) < before + 2:  # noqa: ASYNC110
                    await trio.sleep(0.05)
        await leader.kill()  # SIGKILL: the followers' streams from it break
        at_origin.stall_blob_after_bytes = None
        at_origin.release()
    assert finished == [blob.digest] * 2
    takeovers = 0.0
    for url in followers:
        async with client(url) as http:
            takeovers += metric(await metrics(http), "depot_edge_region_takeovers")
    assert takeovers >= 1
    print(
        f"leader killed mid-fill: {upstream_gets(at_shield, blob.digest)} GETs at the shield,"
        f" {upstream_gets(at_origin, blob.digest)} at origin, {takeovers:.0f} takeover(s)"
    )
    # The killed edge comes back on its cache directory and serves right bytes.
    edges[0] = (await fleet.start_edge("edge1")).url
    assert await pull(edges[0], token, blob) == blob.digest

    phase("changes at origin")
    # 3. Changes at origin reach every edge at once; a restarted edge catches up.
    moving, deleted = new_image(), new_image()
    async with client(fleet.origins[1].url, fleet.accounts.acme) as origin:
        await push_manifest(origin, REPO, new_image(), "moving")
        await push_manifest(origin, REPO, moving, "moving")  # a move: the log's first event
        await push_manifest(origin, REPO, deleted, "gone")
    tag_path = f"/v2/{REPO}/manifests/moving"
    deleted_path = f"/v2/{REPO}/manifests/{deleted.digest}"
    async with client(edges[0]) as http:
        doomed_bearer = await bearer_for(http, fleet.accounts.doomed, f"repository:{REPO}:pull")
    for url in edges:
        async with client(url) as http:
            assert await digest_at(http, tag_path, token) == moving.digest
            assert await digest_at(http, deleted_path, token) == deleted.digest
            assert await digest_at(http, tag_path, fleet.accounts.doomed) == moving.digest
            assert (await http.get(tag_path, headers=doomed_bearer)).status_code == 200
    restarted = fleet.edges["edge3"]
    async with client(restarted.url) as http:
        with trio.fail_after(ACT_WITHIN_SECONDS):
            while not (position := metric(await metrics(http), "depot_edge_events_position")):  # noqa: ASYNC110
                await trio.sleep(0.01)
    assert await restarted.stop() == 0
    watched = [*edges[:2], fleet.shield_url]  # the running edges, and the shield

    moved = new_image()
    timings: dict[str, float] = {}
    async with client(fleet.origins[0].url, fleet.accounts.acme) as origin:
        await push_manifest(origin, REPO, moved, "moving")

        async def tag_moved(http: httpx.AsyncClient) -> bool:
            return await digest_at(http, tag_path, token) == moved.digest

        timings["tag moved"] = await all_acted("tag moved", watched, tag_moved)

    async with client(fleet.origins[1].url, fleet.accounts.acme) as origin:
        answer = await origin.delete(deleted_path)
        assert answer.status_code == 202, answer.text

        async def manifest_gone(http: httpx.AsyncClient) -> bool:
            return (await http.get(deleted_path, headers=basic(token))).status_code == 404

        timings["manifest deleted"] = await all_acted("manifest deleted", watched, manifest_gone)

    parsed = parse_token(fleet.accounts.doomed)
    assert parsed is not None
    async with client(fleet.origins[0].url, fleet.accounts.acme) as origin:
        answer = await origin.delete(f"/api/v1/orgs/acme/tokens/{parsed[1]}")
        assert answer.status_code == 204, answer.text

        async def token_refused(http: httpx.AsyncClient) -> bool:
            answers = [
                await http.get(tag_path, headers=basic(fleet.accounts.doomed)),
                await http.get(tag_path, headers=doomed_bearer),
            ]
            return all(answer.status_code == 401 for answer in answers)

        timings["token revoked"] = await all_acted("token revoked", watched, token_refused)

    edges[2] = (await fleet.start_edge("edge3")).url
    began = time.perf_counter()
    async with client(edges[2]) as http:
        with trio.fail_after(ACT_WITHIN_SECONDS):
            while not (  # noqa: ASYNC110
                await tag_moved(http) and await manifest_gone(http) and await token_refused(http)
            ):
                await trio.sleep(0.005)
        print(f"restarted edge caught up in {(time.perf_counter() - began) * 1000:.0f} ms")
        scrape = await metrics(http)
        assert metric(scrape, "depot_edge_events_revalidations") == 0  # resumed, not revalidated
        assert metric(scrape, "depot_edge_events_position") > position
    print(
        "origin commit -> every edge acting:",
        ", ".join(f"{what} {seconds * 1000:.0f} ms" for what, seconds in timings.items()),
        f"(median {statistics.median(timings.values()) * 1000:.0f} ms)",
    )

    phase("Redis killed mid-fill")
    # 4. Redis killed mid-fill, then restarted.
    blob = await push_blob_image(fleet, 8 * MIB, "redis-mid")
    at_shield.stall_blob_after_bytes = MIB
    finished.clear()

    async def any_edge(url: str) -> None:
        finished.append(await pull(url, token, blob))

    async with trio.open_nursery() as clients:
        for url in edges * 2:
            clients.start_soon(any_edge, url)
        await at_shield.wait_for(lambda p: p.waiting >= 1)
        redis.stop()
        at_shield.stall_blob_after_bytes = None
        at_shield.release()
    assert finished == [blob.digest] * 6
    for url in edges:
        await wait_metric(url, "depot_edge_region_redis_up", 0)
    alone = await push_blob_image(fleet, 2 * MIB, "redis-down")
    async with trio.open_nursery() as clients:
        for url in edges:
            clients.start_soon(pull, url, token, alone)
    assert 1 <= upstream_gets(at_shield, alone.digest) <= 3  # each edge on its own

    await redis.start()  # same port, empty
    for url in edges:
        await wait_metric(url, "depot_edge_region_redis_up", 1)
    together = await push_blob_image(fleet, 4 * MIB, "redis-back")
    finished.clear()

    async def collect(url: str) -> None:
        finished.append(await pull(url, token, together))

    async with trio.open_nursery() as clients:
        for url in edges * 4:
            clients.start_soon(collect, url)
    assert finished == [together.digest] * 12
    assert upstream_gets(at_shield, together.digest) == 1  # coordination resumed
    assert upstream_gets(at_origin, together.digest) == 1
    phase("done")

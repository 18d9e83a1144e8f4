"""How long from a change committed at origin to every edge acting on it (origin's event feed,
``edge/events/``): one origin and ``--edges`` edges, each its own ``depot-registry`` process
on 127.0.0.1, SQLite, tag freshness windows of an hour (so only the feed explains an edge's
changed answer).

For each change the clock starts when origin has answered the request that made it (its
commit came before) and stops, per edge, at the first answer of that edge that reflects it;
each edge is polled by its own task every 2 ms. Reported per kind: median and max over the
rounds of the time until ALL edges acted, and the median per edge.

- tag moved: a new image pushed to ``acme/app:v1``; the edge answers the new digest;
- token revoked: a pull token (used through every edge first, so each holds a grant for it)
  revoked with the management API; every edge answers 401;
- made private: ``acme/app`` made private after every edge served it anonymously; every
  edge answers anonymous pulls 401 (and made public: every edge serves them again, once it
  heard the repository is no longer private).

    .venv/bin/python bench/events_bench.py                 # 3 edges, 20 rounds of each
    .venv/bin/python bench/events_bench.py --edges 5 --rounds 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import edge_bench as eb
import registry_bench as rb

from tests.integration.oci import new_image, push_manifest

LOOPBACK = rb.LOOPBACK
POLL_SECONDS = 0.002
#: A change not acted on by every edge within this long is reported as a failure.
GIVE_UP_SECONDS = 30.0
VISIBILITY = "/api/v1/orgs/acme/repositories/app/visibility"
TAG_PATH = "/v2/acme/app/manifests/v1"


def client(url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, trust_env=False, timeout=30, headers=headers or {}, follow_redirects=False
    )


async def until_all(
    edges: list[httpx.AsyncClient], acted: Callable[[httpx.AsyncClient], Awaitable[bool]]
) -> list[float]:
    """Seconds until each edge acted, started now."""
    began = time.perf_counter()
    took = [0.0] * len(edges)

    async def watch(index: int) -> None:
        while not await acted(edges[index]):  # noqa: ASYNC110 (its answers are watched)
            await trio.sleep(POLL_SECONDS)
        took[index] = time.perf_counter() - began

    with trio.fail_after(GIVE_UP_SECONDS):
        async with trio.open_nursery() as nursery:
            for index in range(len(edges)):
                nursery.start_soon(watch, index)
    return took


async def digest_of(http: httpx.AsyncClient, headers: dict[str, str]) -> str | None:
    answer = await http.get(TAG_PATH, headers=headers)
    return answer.headers.get("Docker-Content-Digest") if answer.status_code == 200 else None


async def tag_moves(
    origin: httpx.AsyncClient, edges: list[httpx.AsyncClient], pull: str, rounds: int
) -> list[list[float]]:
    headers = eb.basic(pull)
    image = new_image()
    await push_manifest(origin, "acme/app", image, "v1")
    for http in edges:
        assert await digest_of(http, headers) == image.digest
    results = []
    for _ in range(rounds):
        image = new_image()
        await push_manifest(origin, "acme/app", image, "v1")

        async def moved(http: httpx.AsyncClient, digest: str = image.digest) -> bool:
            return await digest_of(http, headers) == digest

        results.append(await until_all(edges, moved))
    return results


async def revocations(
    origin: httpx.AsyncClient, edges: list[httpx.AsyncClient], data_dir: Path, rounds: int
) -> list[list[float]]:
    results = []
    for _ in range(rounds):
        token = await eb.depot_cli(data_dir, "token", "create", "--kind", "pull", "--org", "acme")
        headers = eb.basic(token["token"])
        for http in edges:  # each edge exchanges it once and keeps the grant
            assert (await http.get(TAG_PATH, headers=headers)).status_code == 200
        revoked = await origin.delete(f"/api/v1/orgs/acme/tokens/{token['token_id']}")
        assert revoked.status_code == 204, revoked.text

        async def refused(http: httpx.AsyncClient, headers: dict[str, str] = headers) -> bool:
            return (await http.get(TAG_PATH, headers=headers)).status_code == 401

        results.append(await until_all(edges, refused))
    return results


async def visibility(
    origin: httpx.AsyncClient, edges: list[httpx.AsyncClient], rounds: int
) -> tuple[list[list[float]], list[list[float]]]:
    private, public = [], []

    async def served(http: httpx.AsyncClient) -> bool:
        return (await http.get(TAG_PATH)).status_code == 200  # anonymous, through the edge

    async def refused(http: httpx.AsyncClient) -> bool:
        return (await http.get(TAG_PATH)).status_code == 401

    for _ in range(rounds):
        assert (await origin.put(VISIBILITY, json={"public": True})).status_code in (200, 204)
        # Until an edge hears of it, what it learned of the last "private" still holds.
        public.append(await until_all(edges, served))
        assert (await origin.put(VISIBILITY, json={"public": False})).status_code in (200, 204)
        private.append(await until_all(edges, refused))
    return private, public


def report(kind: str, results: list[list[float]]) -> None:
    every = [max(round_) for round_ in results]
    per_edge = [statistics.median(r[i] for r in results) for i in range(len(results[0]))]
    print(
        f"{kind:15} all edges: median {statistics.median(every) * 1000:6.1f} ms,"
        f" max {max(every) * 1000:6.1f} ms over {len(every)};"
        f" per edge median {', '.join(f'{v * 1000:.1f}' for v in per_edge)} ms"
    )


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    # Every client here is 127.0.0.1, the edges too: a few refused logins must not lock the
    # bench out (the limit itself is not what is measured).
    os.environ["DEPOT_ORIGIN_TOKEN_FAILURES_ALLOWED"] = "1000000"
    async with AsyncExitStack() as stack:
        data_dir = tmp / "origin-data"
        data_dir.mkdir()
        origin = await stack.enter_async_context(
            eb.run_depot(
                "origin",
                ["origin", "serve", "--listen", f"{LOOPBACK}:0", "--data-dir", str(data_dir)],
                tmp / "origin.log",
                data_dir,
            )
        )
        await eb.depot_cli(data_dir, "org", "create", "acme")
        org = await eb.depot_cli(data_dir, "token", "create", "--kind", "org", "--org", "acme")
        pull = await eb.depot_cli(data_dir, "token", "create", "--kind", "pull", "--org", "acme")
        edge_token = await eb.depot_cli(data_dir, "token", "create", "--kind", "edge")
        token_file = tmp / "edge.token"
        token_file.write_text(edge_token["token"] + "\n")
        token_file.chmod(0o600)
        os.environ["DEPOT_EDGE_TAG_FRESHNESS_SECONDS"] = "3600"
        edges = []
        for index in range(args.edges):
            cache_dir = tmp / f"edge-{index}"
            server = await stack.enter_async_context(
                eb.run_depot(
                    f"edge-{index}",
                    [
                        *("edge", "serve", "--listen", f"{LOOPBACK}:0", "--upstream", origin.url),
                        *("--cache-dir", str(cache_dir), "--upstream-token-file", str(token_file)),
                    ],
                    tmp / f"edge-{index}.log",
                    cache_dir,
                )
            )
            edges.append(await stack.enter_async_context(client(server.url)))
        at_origin = await stack.enter_async_context(client(origin.url, eb.basic(org["token"])))
        print(
            f"{args.edges} edges + 1 origin, each its own process; {os.cpu_count()} CPUs; "
            f"SQLite; 127.0.0.1; time from origin's answer to the change to each edge's first "
            f"changed answer (polled every {POLL_SECONDS * 1000:g} ms)"
        )
        report("tag moved", await tag_moves(at_origin, edges, pull["token"], args.rounds))
        report("token revoked", await revocations(at_origin, edges, data_dir, args.rounds))
        private, public = await visibility(at_origin, edges, args.rounds)
        report("made private", private)
        report("made public", public)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="work in this (empty) directory, kept")
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        trio.run(main_async, args, args.keep)
        return 0
    with tempfile.TemporaryDirectory(prefix="events-bench-") as tmp:
        trio.run(main_async, args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the edge does about each of origin's events, on a real edge cache (diskcache on disk)
and a real gate: only origin's namespace is touched, mirrors' tags and links never."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import trio

from core.digest import Digest, parse_digest, sha256_of
from core.reference import parse_repository_name, parse_tag
from edge.auth import EdgeGate
from edge.cache.store import EdgeCache
from edge.events.actions import EventActions
from edge.token_memory import TokenMemory

REPO = parse_repository_name("acme/app")
MT = "application/vnd.oci.image.manifest.v1+json"


def digest(n: int) -> Digest:
    return parse_digest("sha256:" + f"{n:x}" * 64)


class Orgs:
    def __init__(self) -> None:
        self.forgotten: list[str | None] = []

    def forget(self, slug: str | None = None) -> None:
        self.forgotten.append(slug)


def entry_missing() -> Any:
    raise AssertionError("the tag entry is missing")


def remembered(memory: TokenMemory, key: str, claims: dict[str, Any]) -> None:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert memory.remember(key, json.dumps({"token": f"e30.{body}.s"}).encode(), time.time())


async def test_each_event_acts_on_origin_s_namespace_only(tmp_path: Path) -> None:
    with trio.fail_after(30):
        cache = EdgeCache.open(tmp_path / "cache", 1 << 30)
        mirror = cache.namespaced("docker.io")
        gate = EdgeGate(origin=None)  # type: ignore[arg-type]
        memory, orgs = TokenMemory(), Orgs()
        actions = EventActions(cache, gate, memory, orgs, time.time)
        now = time.time()
        tag = parse_tag("v1")
        for view in (cache, mirror):
            await view.put_tag(REPO, tag, digest(1), MT, now)
            await view.put_tag(REPO, parse_tag("main"), digest(1), MT, now)
            await view.add_links(REPO, [digest(1), digest(2), digest(3)])

        assert await actions.apply({"seq": 1, "kind": "tag.moved", "repository": "acme/app",
                                    "tag": "v1", "digest": str(digest(2))})  # fmt: skip
        assert await cache.get_tag(REPO, tag) is None
        assert await mirror.get_tag(REPO, tag) is not None
        # A revalidation that asked origin before the event cannot store its older answer;
        # one that began after it can.
        await cache.put_tag(REPO, tag, digest(1), MT, now)
        assert await cache.get_tag(REPO, tag) is None
        await cache.put_tag(REPO, tag, digest(2), MT, time.time() + 1)
        assert (await cache.get_tag(REPO, tag) or entry_missing()).digest == digest(2)
        assert await actions.apply(
            {
                "seq": 2,
                "kind": "manifest.deleted",
                "repository": "acme/app",
                "digest": str(digest(1)),
            }
        )
        assert not await cache.has_link(REPO, digest(1)) and await cache.has_link(REPO, digest(2))
        assert await mirror.has_link(REPO, digest(1))
        # A fill that fetched it before the deletion cannot link it again.
        await cache.add_links(REPO, [digest(1), digest(5)])
        assert not await cache.has_link(REPO, digest(1)) and await cache.has_link(REPO, digest(5))

        # A blob collected from the content store: its cached bytes go.
        data = b"layer bytes"
        blob = sha256_of(data)
        spool = cache.spool_path(blob)
        spool.write_bytes(data)
        assert await cache.adopt_blob(blob, spool, len(data))
        assert await actions.apply({"seq": 3, "kind": "blob.deleted", "digest": str(blob)})
        assert await cache.blob_size(blob) is None
        assert await actions.apply(
            {"seq": 4, "kind": "blob.deleted", "repository": "acme/app", "digest": str(digest(2))}
        )
        assert not await cache.has_link(REPO, digest(2))

        remembered(memory, "q1", {"parent": "tok1", "access": []})
        assert await actions.apply({"seq": 5, "kind": "token.revoked", "token": "tok1"})
        assert gate.revocations.is_revoked("tok1") and memory.recall("q1", time.time()) is None
        assert await actions.apply({"seq": 6, "kind": "token.expired", "token": "tok2"})
        assert gate.revocations.is_revoked("tok2")

        access = [{"type": "repository", "name": "acme/app", "actions": ["pull"]}]
        remembered(memory, "q2", {"access": access})
        private = {"seq": 7, "kind": "repository.visibility", "repository": "acme/app"}
        assert await actions.apply({**private, "public": False})
        assert gate.revocations.is_private("acme/app") and memory.recall("q2", time.time()) is None
        assert await actions.apply({**private, "public": True})
        assert not gate.revocations.is_private("acme/app")

        build = {"seq": 8, "kind": "build.expired", "repository": "acme/app", "build": "b" * 12,
                 "tags": ["main"], "manifests": [str(digest(3))]}  # fmt: skip
        assert await actions.apply(build)
        assert await cache.get_tag(REPO, parse_tag("main")) is None
        assert not await cache.has_link(REPO, digest(3))
        assert await actions.apply({"seq": 9, "kind": "org.upstreams", "org": "acme"})
        assert orgs.forgotten == ["acme"]

        # Unknown kinds and malformed fields are skipped, never raised.
        assert not await actions.apply({"seq": 10, "kind": "future.kind"})
        for bad in (
            {"seq": 11, "kind": "tag.moved", "repository": "Not A Name", "tag": "v1"},
            {"seq": 12, "kind": "manifest.deleted", "repository": "acme/app", "digest": "x"},
            {"seq": 13, "kind": "token.revoked"},
        ):
            assert not await actions.apply(bad)

        # Revalidating everything: origin's tags stale and links gone; the mirror's kept.
        await cache.put_tag(REPO, tag, digest(1), MT, time.time() + 2)
        await cache.add_links(REPO, [digest(4)])
        remembered(memory, "q3", {"access": []})
        await actions.revalidate_all()
        entry = await cache.get_tag(REPO, tag)
        assert entry is not None and entry.fetched_at == 0 and entry.digest == digest(1)
        assert not await cache.has_link(REPO, digest(4))
        assert (await mirror.get_tag(REPO, tag) or entry).fetched_at == now
        assert await mirror.has_link(REPO, digest(2))
        assert len(memory) == 0 and orgs.forgotten[-1] is None
        cache.close()


async def test_a_link_read_while_it_is_dropped_is_not_remembered(tmp_path: Path) -> None:
    """``has_link`` reads the disk in a thread; a drop (origin deleted the manifest) that
    completed meanwhile must win: before, the read put the link back into memory and the edge
    served the deleted manifest until that memory forgot it (seen with a shield hammered by
    the edges below it, tests/integration/test_fleet.py)."""
    with trio.fail_after(30):
        cache = EdgeCache.open(tmp_path / "cache", 1 << 30)
        await cache.add_links(REPO, [digest(1)])
        cache._hot_links.clear()  # as after a restart: the next has_link reads the disk
        original = cache._meta.get
        read, go_on = threading.Event(), threading.Event()

        def slow_get(key: str, *args: Any, **kwargs: Any) -> Any:
            value = original(key, *args, **kwargs)
            read.set()
            go_on.wait(10)
            return value

        cache._meta.get = slow_get  # type: ignore[method-assign]
        answers: list[bool] = []
        async with trio.open_nursery() as nursery:

            async def ask() -> None:
                answers.append(await cache.has_link(REPO, digest(1)))

            nursery.start_soon(ask)
            await trio.to_thread.run_sync(read.wait, 10)  # it read the link: still there
            await cache.drop_links(REPO, [digest(1)])
            go_on.set()
        cache._meta.get = original  # type: ignore[method-assign]
        assert answers == [False]
        assert not await cache.has_link(REPO, digest(1))
        # Nor does a fill that linked it meanwhile bring it back.
        await cache.add_links(REPO, [digest(1)])
        assert not await cache.has_link(REPO, digest(1))

"""Contract of the build store (builds, retention, usage), run against SQLite (a file) and
PostgreSQL. (What builds read of the registry's tables is the metadata store's contract.)

PostgreSQL runs on 127.0.0.1:5432, database ``test``; each test gets a schema of its own
(through ``search_path`` in the URL), dropped afterwards. Without a server the PostgreSQL cases
skip locally and fail on CI (``CI=true``), as in ``test_metadata_store.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import trio

from origin.builds.records import BoundImage, BuildRecord, Retention
from origin.builds.store import BuildStore
from origin.metadata.database import Database

NOW = datetime(2030, 3, 10, tzinfo=UTC).timestamp()
REPO = "acme/p1p1p1p1p1p1"


@pytest.fixture
def store(database: Database) -> BuildStore:
    return BuildStore(database)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(
    build_id: str, *, created: float = NOW, ttl: float = 3600, **extra: object
) -> BuildRecord:
    fields: dict[str, object] = {
        "id": build_id,
        "project_id": "p1p1p1p1p1p1",
        "org_slug": "acme",
        "repository": REPO,
        "created_at": created,
        "expires_at": created + ttl,
        "save_tags": (),
        **extra,
    }
    return BuildRecord(**fields)  # type: ignore[arg-type]


def image(digest: str, *children: str, size: int = 100) -> BoundImage:
    return BoundImage(
        digest,
        "application/vnd.oci.image.index.v1+json",
        ("linux/amd64",),
        size,
        frozenset({digest, *children}),
    )


async def test_create_list_get_delete(store: BuildStore) -> None:
    with trio.fail_after(60):
        await store.create_build(build("aaaaaaaaaaaa", created=NOW, save_tags=("main", "v1")))
        await store.create_build(build("bbbbbbbbbbbb", created=NOW + 2))
        await store.create_build(build("cccccccccccc", created=NOW + 1))
        await store.create_build(
            dataclasses.replace(build("dddddddddddd"), project_id="other0000000")
        )
        found = await store.build("aaaaaaaaaaaa")
        assert found == build("aaaaaaaaaaaa", created=NOW, save_tags=("main", "v1"))
        assert await store.build("zzzzzzzzzzzz") is None
        listed = await store.list_builds("p1p1p1p1p1p1", 10)
        assert [b.id for b in listed] == ["bbbbbbbbbbbb", "cccccccccccc", "aaaaaaaaaaaa"]
        assert [b.id for b in await store.list_builds("p1p1p1p1p1p1", 1)] == ["bbbbbbbbbbbb"]
        assert await store.delete_build("cccccccccccc", NOW + 5)
        assert not await store.delete_build("cccccccccccc", NOW + 6)
        assert not await store.delete_build("zzzzzzzzzzzz", NOW + 6)
        assert (await store.build("cccccccccccc")) == build(
            "cccccccccccc", created=NOW + 1, deleted_at=NOW + 5
        )
        listed = await store.list_builds("p1p1p1p1p1p1", 10)
        assert [b.id for b in listed] == ["bbbbbbbbbbbb", "aaaaaaaaaaaa"]


async def test_bind_once_while_live(store: BuildStore) -> None:
    root, child = digest_of(b"index"), digest_of(b"child")
    with trio.fail_after(60):
        await store.create_build(build("aaaaaaaaaaaa", save_tags=("main",)))
        await store.create_build(build("bbbbbbbbbbbb"))
        await store.create_build(build("cccccccccccc", save_tags=("main",)))
        assert await store.bind("aaaaaaaaaaaa", image(root, child), NOW + 1)
        assert not await store.bind("aaaaaaaaaaaa", image(child), NOW + 2)  # bound already
        assert not await store.bind("bbbbbbbbbbbb", image(root), NOW + 3600)  # expired
        assert await store.delete_build("cccccccccccc", NOW)
        assert not await store.bind("cccccccccccc", image(root), NOW + 1)  # deleted
        assert not await store.bind("zzzzzzzzzzzz", image(root), NOW + 1)

        bound = await store.build("aaaaaaaaaaaa")
        assert bound is not None and bound.digest == root and bound.size == 100
        assert bound.platforms == ("linux/amd64",) and bound.media_type is not None
        assert [b.id for b in await store.builds_for_tag(REPO, "main")] == ["aaaaaaaaaaaa"]
        assert [b.id for b in await store.builds_for_tag(REPO, "aaaaaaaaaaaa")] == ["aaaaaaaaaaaa"]
        assert [b.id for b in await store.builds_for_tag(REPO, "bbbbbbbbbbbb")] == ["bbbbbbbbbbbb"]
        assert await store.builds_for_tag(REPO, "other") == []
        assert await store.builds_for_tag("acme/elsewhere0", "main") == []
        for digest in (root, child):
            assert [b.id for b in await store.builds_for_digest(REPO, digest)] == ["aaaaaaaaaaaa"]
        assert await store.builds_for_digest(REPO, digest_of(b"none")) == []
        assert await store.builds_for_digest("acme/app", root) == []


async def test_concurrent_binds_one_wins(
    store: BuildStore, open_database: Callable[[], Database]
) -> None:
    second = BuildStore(open_database())  # another process
    results: list[bool] = []
    with trio.fail_after(60):
        await store.create_build(build("aaaaaaaaaaaa", save_tags=("main",)))

        async def bind(on: BuildStore, payload: bytes) -> None:
            results.append(await on.bind("aaaaaaaaaaaa", image(digest_of(payload)), NOW + 1))

        async with trio.open_nursery() as nursery:
            for i, on in enumerate([store, second] * 3):
                nursery.start_soon(bind, on, b"%d" % i)
    assert sorted(results) == [False] * 5 + [True]
    assert len(await store.builds_for_tag(REPO, "main")) == 1


async def test_retention(store: BuildStore) -> None:
    with trio.fail_after(60):
        assert await store.retention("org_a", "p1") == Retention(None, None)
        await store.set_retention("org_a", None, 86400, NOW)
        await store.set_retention("org_a", "p1", 3600, NOW)
        await store.set_retention("org_b", None, 60, NOW)
        assert await store.retention("org_a", "p1") == Retention(86400, 3600)
        assert await store.retention("org_a", "p2") == Retention(86400, None)
        assert await store.retention("org_a") == Retention(86400, None)
        await store.set_retention("org_a", "p1", 7200, NOW + 1)  # replaces
        assert await store.retention("org_a", "p1") == Retention(86400, 7200)
        await store.set_retention("org_a", None, None, NOW + 2)  # unsets
        assert await store.retention("org_a", "p1") == Retention(None, 7200)
        await store.set_retention("org_a", None, None, NOW + 2)  # idempotent


async def test_accrual(store: BuildStore, open_database: Callable[[], Database]) -> None:
    with trio.fail_after(60):
        assert await store.accrue("acme", 1000, NOW) == 0  # starts the clock
        assert await store.accrue("acme", 5000, NOW) == 0  # re-measures only
        assert await store.accrue("acme", 2000, NOW + 3600) == 5000
        assert await store.accrue("acme", 2000, NOW + 1800) == 0  # clock went back
        usage = await store.usage("acme", "2030-03")
        assert usage.byte_hours == 5000 and usage.accrued_at == NOW + 3600
        assert (await store.usage("acme", "2030-04")).byte_hours == 0
        nobody = await store.usage("nobody", "2030-03")
        assert nobody.byte_hours == 0 and nobody.accrued_at is None

        # Across the month boundary: split at 2030-04-01T00:00Z.
        april = datetime(2030, 4, 1, tzinfo=UTC).timestamp()
        assert await store.accrue("acme", 0, april + 7200) == pytest.approx(
            2000 * (april + 7200 - NOW - 3600) / 3600
        )
        march = await store.usage("acme", "2030-03")
        assert march.byte_hours == pytest.approx(5000 + 2000 * (april - NOW - 3600) / 3600)
        assert (await store.usage("acme", "2030-04")).byte_hours == pytest.approx(4000)

        # Concurrent rounds (several origins) count an interval once.
        others = [BuildStore(open_database()) for _ in range(3)]
        added: list[float] = []
        await store.accrue("race", 3600, NOW)

        async def round_on(on: BuildStore) -> None:
            added.append(await on.accrue("race", 3600, NOW + 3600))

        async with trio.open_nursery() as nursery:
            for on in [store, *others]:
                nursery.start_soon(round_on, on)
        assert sorted(added) == [0, 0, 0, 3600]
        assert (await store.usage("race", "2030-03")).byte_hours == 3600

"""The pure parts of the event feed: the edge's revocations, the forgetting /token memory,
the feed's query parameters and answers, events as JSON, and the follower's loop (on trio's
MockClock, against a scripted feed)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from core.auth.scopes import Access
from core.auth.tokens import Grant
from core.errors import BadRequest, Unavailable
from edge.events.feed_client import Batch, FeedGone, parse_batch
from edge.events.follower import Follower
from edge.events.position import Position, load_position, save_position, state_path
from edge.events.revocations import Revocations
from edge.token_memory import TokenMemory
from origin.metadata.events import TAG_MOVED, TOKEN_REVOKED, Event
from origin.routes.events import parse_after, parse_wait


def grant(
    *names: str,
    kind: str = "pull",
    orgs: tuple[str, ...] = ("acme",),
    project: str | None = None,
    parent: str | None = "tok1",
) -> Grant:
    return Grant(
        subject=parent or "anonymous",
        kind=kind,
        orgs=frozenset(orgs),
        access=tuple(Access("repository", name, frozenset({"pull"})) for name in names),
        issued_at=0,
        expires_at=300,
        token_id="jti",
        project=project,
        parent=parent,
    )


# -- revocations ---------------------------------------------------------------------------


def test_a_revoked_parent_refuses_its_grants_only() -> None:
    revocations = Revocations()
    assert not revocations.refuses(grant("acme/app"))
    revocations.revoke("tok1", now=10.0)
    assert revocations.refuses(grant("acme/app"))
    assert not revocations.refuses(grant("acme/app", parent="tok2"))
    assert not revocations.refuses(grant("acme/app", parent=None))  # anonymous, OIDC


def test_private_repositories_keep_only_member_access() -> None:
    revocations = Revocations()
    public_only = grant("acme/app", "other/lib", kind="anonymous", orgs=(), parent=None)
    assert revocations.restrict(public_only) is public_only  # nothing private: untouched
    revocations.made_private("acme/app", now=1.0)
    assert [a.name for a in revocations.restrict(public_only).access] == ["other/lib"]
    # Members keep it: the org's tokens, its project's token, edges; not another project.
    assert revocations.restrict(grant("acme/app")).access == grant("acme/app").access
    assert revocations.restrict(grant("acme/app", project="app")).access != ()
    assert revocations.restrict(grant("acme/app", project="web")).access == ()
    assert revocations.restrict(grant("acme/app", orgs=("other",))).access == ()
    assert revocations.restrict(grant("acme/app", kind="edge", orgs=())).access != ()
    revocations.made_public("acme/app")
    assert revocations.restrict(public_only) is public_only


def test_revocations_expire_are_bounded_and_survive_a_restart() -> None:
    revocations = Revocations(size=2, keep_seconds=100)
    for name, at in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        revocations.revoke(name, now=at)
    assert [revocations.is_revoked(n) for n in "abc"] == [False, True, True]
    revocations.made_private("acme/app", now=50.0)
    revocations.expire(now=103.5)  # b and c are older than 100 s; the repository is not
    assert not revocations.is_revoked("b") and not revocations.is_revoked("c")
    revocations.revoke("d", now=103.0)
    restored = Revocations()
    restored.restore(json.loads(json.dumps(revocations.snapshot())))
    assert restored.is_revoked("d") and restored.is_private("acme/app")
    restored.restore({"revoked": {"": 1, "x": "soon"}, "private": ["junk"]})
    assert restored.is_revoked("x") and not restored.is_revoked("")
    restored.restore("junk")


# -- the /token memory forgets -------------------------------------------------------------


def jwt_with(claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"e30.{body}.sig"


def test_token_memory_forgets_revoked_parents_and_changed_repositories() -> None:
    memory = TokenMemory()
    access = [{"type": "repository", "name": "acme/app", "actions": ["pull"]}]
    tokens = {
        "pull": jwt_with({"parent": "tok1", "access": access}),
        "other": jwt_with({"parent": "tok2", "access": []}),
        "anonymous": jwt_with({"access": access}),
        "opaque": "not-a-jwt",
    }
    for key, token in tokens.items():
        assert memory.remember(key, json.dumps({"token": token}).encode(), now=0.0)
    assert memory.forget_parent("tok1") == 1
    assert memory.recall("pull", now=1.0) is None and memory.recall("other", now=1.0)
    assert memory.forget_repository("acme/app") == 1  # the anonymous answer
    assert memory.recall("anonymous", now=1.0) is None
    assert memory.recall("opaque", now=1.0) is not None
    memory.clear()
    assert len(memory) == 0


# -- the feed's parameters, answers and events ---------------------------------------------


def test_after_and_wait_are_parsed_strictly() -> None:
    assert parse_after(None) is None and parse_after("0") == 0 and parse_after("42") == 42
    for bad in ("", "-1", "+1", "1.0", " 1", "x", "\u0661", "9" * 20, str(2**63)):
        with pytest.raises(BadRequest):
            parse_after(bad)
    assert parse_wait(None) == 0 and parse_wait("2.5") == 2.5 and parse_wait("60") == 60
    for bad in ("", "-0.1", "60.5", "nan", "inf", "1e400", "x", "1" * 30):
        with pytest.raises(BadRequest):
            parse_wait(bad)


def test_events_render_their_subject_under_the_kind_s_name() -> None:
    moved = Event(7, TAG_MOVED, 1.5, "acme/app", "v1", {"digest": "sha256:a", "tag": "x"})
    assert moved.document() == {
        "seq": 7,
        "kind": "tag.moved",
        "at": 1.5,
        "repository": "acme/app",
        "tag": "v1",  # the column wins over a data field of the same name
        "digest": "sha256:a",
    }
    assert Event(8, TOKEN_REVOKED, 2.0, None, "tok1").document() == {
        "seq": 8,
        "kind": "token.revoked",
        "at": 2.0,
        "token": "tok1",
    }


def test_feed_answers_are_checked() -> None:
    batch = parse_batch(b'{"events": [{"seq": 3, "kind": "x"}, {"kind": "no seq"}], "last": 3}')
    assert batch == Batch([{"seq": 3, "kind": "x"}], 3)
    for bad in (b"nope", b"[]", b'{"events": [], "last": true}', b'{"events": {}, "last": 1}'):
        with pytest.raises(Unavailable):
            parse_batch(bad)


# -- the follower ----------------------------------------------------------------------------


class ScriptedFeed:
    """Answers (or raises) what the test queued, one per poll; then waits forever."""

    def __init__(self, *steps: Batch | Exception) -> None:
        self.steps = list(steps)
        self.asked: list[tuple[int | None, float]] = []
        self.drained = trio.Event()  # set when the follower asks past the script

    async def poll(self, after: int | None, wait: float) -> Batch:
        self.asked.append((after, wait))
        if not self.steps:
            self.drained.set()
            await trio.sleep_forever()
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


class RecordingActions:
    def __init__(self) -> None:
        self.applied: list[int] = []
        self.revalidations = 0

    async def apply(self, event: dict[str, Any]) -> bool:
        self.applied.append(event["seq"])
        return event.get("kind") != "unknown"

    async def revalidate_all(self) -> None:
        self.revalidations += 1


def event(seq: int, kind: str = "tag.moved") -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "at": 0.0}


async def run_until_idle(follower: Follower, feed: ScriptedFeed) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(follower.run)
        await feed.drained.wait()  # every scripted answer acted on (retries included)
        nursery.cancel_scope.cancel()


async def test_follower_revalidates_first_then_follows_and_retries(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    feed = ScriptedFeed(
        Batch([], 10),  # the head: first start
        Unavailable("origin down"),
        Unavailable("origin down"),
        Batch([event(11), event(12, "unknown")], 12),
        Batch([], 12),
    )
    actions = RecordingActions()
    state = state_path(tmp_path)
    revocations = Revocations()
    follower = Follower(feed, actions, revocations, state, wait_seconds=20)  # type: ignore[arg-type]
    await run_until_idle(follower, feed)
    assert actions.revalidations == 1 and actions.applied == [11, 12]
    assert [after for after, _ in feed.asked] == [None, 10, 10, 10, 12, 12]
    assert follower.stats.applied == 1 and follower.stats.failures == 2
    assert load_position(state).last == 12


async def test_follower_resumes_from_its_position_and_starts_over_when_gone(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    state = state_path(tmp_path)
    learned = time.time()  # the follower expires what is older than a day, by wall time
    await save_position(state, Position(5, {"revoked": {"tok1": learned}, "private": {}}))
    feed = ScriptedFeed(
        Batch([event(6)], 6),  # caught up at start, before serving
        Batch([], 6),
        FeedGone(),  # pruned past 6 meanwhile
        Batch([], 40),  # the new head
        Batch([event(41)], 41),
    )
    actions = RecordingActions()
    revocations = Revocations()
    follower = Follower(feed, actions, revocations, state, wait_seconds=20)  # type: ignore[arg-type]
    await run_until_idle(follower, feed)
    assert revocations.is_revoked("tok1")  # restored from the saved state
    assert actions.applied == [6, 41] and actions.revalidations == 1
    assert [after for after, _ in feed.asked][:5] == [5, 6, 6, None, 40]
    assert load_position(state).last == 41


def test_an_unreadable_position_means_none(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    assert load_position(path) == Position(None, {})
    path.parent.mkdir(parents=True)
    for text in ("{", '{"last": -1}', '{"last": true}', "[]"):
        path.write_text(text)
        assert load_position(path).last is None

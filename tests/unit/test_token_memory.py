"""The edge's memory of /token answers, and the headers its pass-through forwards."""

from __future__ import annotations

import json

from edge.passthrough import forward_headers
from edge.token_memory import TokenMemory, question_key


def answer(token: str = "jwt", expires_in: object = 300) -> bytes:
    return json.dumps({"token": token, "access_token": token, "expires_in": expires_in}).encode()


def test_a_remembered_answer_counts_down_and_expires() -> None:
    memory = TokenMemory()
    key = question_key("GET", "Basic abc", "Edge:443", [("scope", "a"), ("service", "s")], b"")
    assert memory.remember(key, answer(), now=1000.0)
    recalled = json.loads(memory.recall(key, now=1100.5) or b"")
    assert recalled["token"] == "jwt" and recalled["expires_in"] == 199
    assert memory.recall(key, now=1299.5) is None  # less than a second left
    assert len(memory) == 0


def test_questions_are_keyed_by_everything_asked_never_stored_in_clear() -> None:
    base = question_key("GET", "Basic abc", "edge", [("scope", "a")], b"")
    assert question_key("get", "Basic abc", "EDGE", [("scope", "a")], b"") == base
    for other in (
        question_key("GET", "Basic abd", "edge", [("scope", "a")], b""),
        question_key("GET", None, "edge", [("scope", "a")], b""),
        question_key("GET", "Basic abc", "other", [("scope", "a")], b""),
        question_key("GET", "Basic abc", "edge", [("scope", "b")], b""),
        question_key("POST", "Basic abc", "edge", [("scope", "a")], b"password=x"),
    ):
        assert other != base
    assert "abc" not in base  # a sha256 of the question, not the credential


def test_only_usable_answers_are_remembered() -> None:
    memory = TokenMemory()
    for body in (
        b"not json",
        b"[]",
        json.dumps({"expires_in": 300}).encode(),
        answer(expires_in=2),
        answer(expires_in="300"),
        answer(expires_in=True),
    ):
        assert not memory.remember("k", body, now=0.0)
    assert memory.remember("k", json.dumps({"token": "t"}).encode(), now=0.0)  # default 60 s
    assert json.loads(memory.recall("k", now=30.0) or b"")["expires_in"] == 30


def test_memory_is_bounded() -> None:
    memory = TokenMemory(size=2)
    for key in ("a", "b", "c"):
        memory.remember(key, answer(key), now=0.0)
    assert memory.recall("a", now=1.0) is None
    assert memory.recall("c", now=1.0) is not None


def test_forwarded_headers_keep_the_bytes_and_name_the_client() -> None:
    forwarded = forward_headers(
        [
            ("Host", "edge"),
            ("X-Note", "caf\xe9 \xff"),  # as hypercorn decodes latin-1 bytes
            ("Connection", "keep-alive"),
            ("Content-Length", "3"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Accept-Encoding", "gzip"),
        ],
        "192.0.2.7",
    )
    assert (b"X-Note", b"caf\xe9 \xff") in forwarded
    assert (b"X-Forwarded-For", b"10.0.0.1, 192.0.2.7") in forwarded
    assert (b"Accept-Encoding", b"identity") in forwarded
    names = [name.lower() for name, _ in forwarded]
    assert b"connection" not in names and b"content-length" not in names
    assert names.count(b"x-forwarded-for") == 1

"""The relay API's request body (edge/relay/request.py): typed values out, ``InputError`` for
anything else, and never a password in an error or a repr."""

from __future__ import annotations

from typing import Any

import pytest

from core.digest import Digest
from core.errors import InputError
from core.reference import Tag
from edge.relay.request import parse_job_request

SECRET = "s3cr3t-password"


def body(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "source": {"repository": "p1x2p1x2p1x2", "reference": "b1b2b3b4b5b6"},
        "targets": ["127.0.0.1:5000/team/app:v1", "Index.Docker.IO/team/app"],
        "credentials": {
            "127.0.0.1:5000": {"username": "u", "password": SECRET},
            "registry-1.docker.io": {"username": "hub", "password": SECRET},
        },
    }
    document.update(changes)
    return document


def test_parsed() -> None:
    parsed = parse_job_request(body())
    assert parsed.repository.value == "p1x2p1x2p1x2"
    assert parsed.reference == Tag("b1b2b3b4b5b6")
    assert parsed.source == "p1x2p1x2p1x2:b1b2b3b4b5b6"
    assert [str(t) for t in parsed.targets] == [
        "127.0.0.1:5000/team/app:v1",
        "docker.io/team/app:latest",
    ]
    assert set(parsed.credentials) == {"127.0.0.1:5000", "docker.io"}
    assert parsed.credentials["docker.io"].username == "hub"
    assert SECRET not in repr(parsed)
    by_digest = parse_job_request(
        body(source={"repository": "acme/app", "reference": "sha256:" + "a" * 64})
    )
    assert isinstance(by_digest.reference, Digest)
    assert by_digest.source == "acme/app@sha256:" + "a" * 64
    assert parse_job_request(body(credentials=None)).credentials == {}


@pytest.mark.parametrize(
    "document",
    [
        [],
        body(extra=True),
        body(source="p:b"),
        body(source={"repository": "p"}),
        body(source={"repository": "P!", "reference": "b"}),
        body(source={"repository": "p", "reference": "bad tag"}),
        body(targets="r.example/app:v1"),
        body(targets=[1]),
        body(targets=["r.example/App:v1"]),
        body(credentials=[]),
        body(credentials={"r.example": "user:" + SECRET}),
        body(credentials={"r.example": {"username": "u", "password": 5}}),
        body(credentials={"r.example": {"username": "u", "password": SECRET * 10_000}}),
    ],
)
def test_refused(document: Any) -> None:
    with pytest.raises(InputError) as raised:
        parse_job_request(document)
    assert SECRET not in str(raised.value)

"""core/client: how registry answers map into core.errors (pure), and the upload and pull logic
against an in-memory registry (httpx.MockTransport, virtual time) for the cases a real one
cannot be made to produce on demand: a PATCH torn after part of it was stored, a session the
registry dropped, a final PUT whose answer was lost, sources of the wrong length, redirects."""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import trio

from core import errors
from core.client.failures import answer_error, retry_after
from core.client.http import open_http_client
from core.client.listings import next_link
from core.client.registry import RegistryClient
from core.client.uploads import BlobSource
from core.digest import sha256_of
from core.errors import RegistryError
from core.reference import RepositoryName, Tag

REPO = RepositoryName("team/app")


def envelope(code: str, message: str = "", detail: object = None) -> bytes:
    entry = {"code": code, "message": message, "detail": detail}
    return json.dumps({"errors": [entry]}).encode()


B, M = errors.BlobUnknown, errors.ManifestUnknown
DENIED_TEXT = "requested access to the resource is denied"
ANSWERS = [
    # status, body, what a 404 means for the operation, the error expected, its message
    (404, envelope("NAME_UNKNOWN", "no such repo"), B, errors.NameUnknown, "no such repo"),
    (404, envelope("BLOB_UPLOAD_UNKNOWN"), B, errors.BlobUploadUnknown, None),
    (404, b"", M, M, None),
    (404, envelope("NOT_FOUND", "x"), B, B, "x"),
    (401, envelope("UNAUTHORIZED", "who are you"), B, errors.Unauthorized, "who are you"),
    (403, envelope("DENIED", DENIED_TEXT), B, errors.Denied, DENIED_TEXT),
    (403, b"", B, errors.Denied, None),
    (400, envelope("DIGEST_INVALID", "mismatch"), B, errors.DigestInvalid, "mismatch"),
    (400, envelope("MANIFEST_BLOB_UNKNOWN"), B, errors.ManifestBlobUnknown, None),
    (400, envelope("SIZE_INVALID"), B, errors.SizeInvalid, None),
    (413, envelope("SIZE_INVALID", "too big"), B, errors.TooLarge, "too big"),
    (416, b"", B, errors.RangeInvalid, None),
    (405, envelope("UNSUPPORTED"), B, errors.Unsupported, None),
    (405, b"", B, errors.Unsupported, None),
    (400, b"<html>", B, errors.Unavailable, "unexpected answer from r.test: HTTP 400"),
    (
        418,
        envelope("TEAPOT", "tea"),
        B,
        errors.Unavailable,
        "unexpected answer from r.test: HTTP 418: tea",
    ),
    (500, b"", B, errors.Unavailable, "r.test answered HTTP 500"),
    (503, envelope("UNAVAILABLE", "maintenance"), B, errors.Unavailable, "maintenance"),
    (401, b'{"details": "incorrect password"}', B, errors.Unauthorized, "incorrect password"),
]


@pytest.mark.parametrize(("status", "body", "not_found", "expected", "message"), ANSWERS)
def test_answers_map_into_core_errors(
    status: int,
    body: bytes,
    not_found: type[RegistryError],
    expected: type[RegistryError],
    message: str | None,
) -> None:
    error = answer_error(status, {}, body, not_found=not_found, host="r.test")
    assert type(error) is expected
    assert error.message == (message or expected.default_message)


def test_the_registry_detail_and_retry_after_are_kept() -> None:
    detail = [{"Type": "repository", "Name": "a/b", "Action": "push"}]
    error = answer_error(
        429,
        {"Retry-After": "12"},
        envelope("TOOMANYREQUESTS", "slow down", detail),
        not_found=errors.BlobUnknown,
        host="r.test",
    )
    assert isinstance(error, errors.TooManyRequests)
    assert (error.message, error.detail, error.headers) == (
        "slow down",
        detail,
        {"Retry-After": "12"},
    )
    unavailable = answer_error(
        502, {"Retry-After": "3"}, b"", not_found=errors.BlobUnknown, host="r"
    )
    assert unavailable.headers == {"Retry-After": "3"}
    assert unavailable.detail == {"status": 502}
    denied = answer_error(
        401, {}, b"", not_found=errors.BlobUnknown, host="r", insufficient_scope=True
    )
    assert isinstance(denied, errors.Denied)


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after({"Retry-After": "30"}) == {"Retry-After": "30"}
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)
    seconds = int(retry_after({"Retry-After": email.utils.format_datetime(later)})["Retry-After"])
    assert 100 <= seconds <= 120
    assert retry_after({"Retry-After": "soon"}) == {}
    assert retry_after({"Retry-After": "-1"}) == {}
    assert retry_after({}) == {}


def test_next_links() -> None:
    assert next_link('</v2/a/tags/list?n=2&last=b>; rel="next"') == "/v2/a/tags/list?n=2&last=b"
    assert next_link("<https://r/v2/_catalog?last=x>; rel=next") == "https://r/v2/_catalog?last=x"
    assert next_link('<https://r/x>; rel="prev"') is None
    assert next_link(None) is None


# -- uploads against an in-memory registry -------------------------------------------------------

_UPLOAD = re.compile(r"^/v2/team/app/blobs/uploads/(\w+)$")


@dataclass
class FakeUploads:
    """Upload sessions in memory, with faults on switches."""

    tear_patches: set[int] = field(default_factory=set)  # PATCH numbers cut halfway
    drop_sessions: bool = False  # status GETs answer BLOB_UPLOAD_UNKNOWN
    lose_put_answer: bool = False  # the final PUT lands, its answer is lost
    range_style: str = "0-{last}"  # how Range is written
    sessions: dict[str, bytearray] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    patches: int = 0

    def _range(self, size: int) -> str:
        return self.range_style.format(last=max(size - 1, 0))

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        path = request.url.path
        self.log.append(f"{request.method} {path}")
        if request.method == "POST":
            upload = f"u{len(self.sessions)}"
            self.sessions[upload] = bytearray()
            return self._status(202, upload)
        if request.method == "HEAD":
            digest = path.rsplit("/", 1)[1]
            if digest not in self.blobs:
                return httpx.Response(404)
            return httpx.Response(200, headers={"Content-Length": str(len(self.blobs[digest]))})
        match = _UPLOAD.match(path)
        assert match is not None, path
        upload = match.group(1)
        if upload not in self.sessions or (request.method == "GET" and self.drop_sessions):
            return httpx.Response(404, content=envelope("BLOB_UPLOAD_UNKNOWN"))
        stored = self.sessions[upload]
        if request.method == "GET":
            return self._status(204, upload)
        if request.method == "PATCH":
            self.patches += 1
            first = int(request.headers["Content-Range"].split("-")[0])
            if first != len(stored):
                return httpx.Response(416, content=envelope("RANGE_INVALID"))
            if self.patches in self.tear_patches:
                stored += body[: len(body) // 2]
                raise httpx.ReadError("connection reset by peer", request=request)
            stored += body
            return self._status(202, upload)
        assert request.method == "PUT"
        stored += body
        digest = request.url.params["digest"]
        if "sha256:" + hashlib.sha256(stored).hexdigest() != digest:
            return httpx.Response(400, content=envelope("DIGEST_INVALID"))
        self.blobs[digest] = bytes(stored)
        del self.sessions[upload]
        if self.lose_put_answer:
            raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(201, headers={"Docker-Content-Digest": digest})

    def _status(self, status: int, upload: str) -> httpx.Response:
        headers = {
            "Location": f"/v2/team/app/blobs/uploads/{upload}",
            "Range": self._range(len(self.sessions[upload])),
        }
        return httpx.Response(status, headers=headers)


def registry_client(handler: object) -> RegistryClient:
    transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
    return RegistryClient(open_http_client("http://r.test", auth_header=None, transport=transport))


@dataclass
class Source:
    data: bytes
    opened_at: list[int] = field(default_factory=list)

    async def __call__(self, offset: int) -> AsyncIterator[bytes]:
        self.opened_at.append(offset)
        for start in range(offset, len(self.data), 1000):
            yield self.data[start : start + 1000]


DATA = bytes(range(256)) * 40  # 10240 bytes
DIGEST = sha256_of(DATA)


async def test_a_torn_patch_resumes_where_the_registry_stands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = FakeUploads(tear_patches={2})
    source = Source(DATA)
    await registry_client(registry).upload_blob_chunked(
        REPO, DIGEST, len(DATA), source, chunk_bytes=4096
    )
    assert registry.blobs[str(DIGEST)] == DATA
    # Half of the second window (2048 bytes) was stored before the cut: resumed from 6144,
    # and 4096 bytes from there is the rest of the blob.
    assert source.opened_at == [0, 4096, 6144]
    assert "GET /v2/team/app/blobs/uploads/u0" in registry.log
    assert registry.log.count("POST /v2/team/app/blobs/uploads/") == 1


async def test_a_dropped_session_starts_over(autojump_clock: trio.testing.MockClock) -> None:
    registry = FakeUploads(tear_patches={2}, drop_sessions=True)
    source = Source(DATA)
    await registry_client(registry).upload_blob_chunked(
        REPO, DIGEST, len(DATA), source, chunk_bytes=4096
    )
    assert registry.blobs[str(DIGEST)] == DATA
    assert source.opened_at == [0, 4096, 0, 4096, 8192]
    assert registry.log.count("POST /v2/team/app/blobs/uploads/") == 2


async def test_a_lost_put_answer_finds_the_blob_complete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = FakeUploads(lose_put_answer=True)
    source = Source(DATA)
    await registry_client(registry).upload_blob_chunked(
        REPO, DIGEST, len(DATA), source, chunk_bytes=8192
    )
    assert registry.blobs[str(DIGEST)] == DATA
    assert source.opened_at == [0, 8192]  # nothing sent twice
    assert registry.log[-1] == f"HEAD /v2/team/app/blobs/{DIGEST}"


async def test_resumes_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    registry = FakeUploads(tear_patches=set(range(1, 100)))
    with pytest.raises(errors.Unavailable, match="unreachable"):
        await registry_client(registry).upload_blob_chunked(
            REPO, DIGEST, len(DATA), Source(DATA), chunk_bytes=4096, resume_attempts=2
        )
    assert registry.patches == 3


async def test_one_byte_ranges_are_read_right(autojump_clock: trio.testing.MockClock) -> None:
    """``Range: 0-0`` is what registries write for 0 bytes and for 1: a one-byte first chunk
    must not be sent again."""
    registry = FakeUploads()
    data = b"ab"
    source = Source(data)
    await registry_client(registry).upload_blob_chunked(
        REPO, sha256_of(data), len(data), source, chunk_bytes=1
    )
    assert registry.blobs[str(sha256_of(data))] == data
    assert source.opened_at == [0, 1]


@pytest.mark.parametrize(("size", "kind"), [(len(DATA) + 1, "ended"), (len(DATA) - 1, "more")])
async def test_a_source_of_the_wrong_length_is_size_invalid(size: int, kind: str) -> None:
    with trio.fail_after(5), pytest.raises(errors.SizeInvalid, match=kind):
        await registry_client(FakeUploads()).upload_blob(REPO, DIGEST, size, Source(DATA))


async def test_a_failing_source_passes_its_error_through() -> None:
    async def broken(offset: int) -> AsyncIterator[bytes]:
        yield b"x"
        raise OSError("disk on fire")

    source: BlobSource = broken
    with trio.fail_after(5), pytest.raises(OSError, match="disk on fire"):
        await registry_client(FakeUploads()).upload_blob(REPO, DIGEST, len(DATA), source)


# -- pulls --------------------------------------------------------------------------------------


def blob_answer(data: bytes) -> httpx.Response:
    """A 200 whose body streams (as from the network, so it can be read raw)."""
    headers = {"Content-Length": str(len(data))}
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(data))


async def test_blob_redirects_are_followed_without_our_credentials() -> None:
    seen: list[tuple[str, str | None]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("Authorization")))
        if request.url.host == "r.test":
            return httpx.Response(307, headers={"Location": "https://cdn.test/blob?sig=1"})
        return blob_answer(DATA)

    http = open_http_client(
        "http://r.test",
        auth_header="Basic c2VjcmV0",
        transport=httpx.MockTransport(handler),
    )
    with trio.fail_after(5):
        async with RegistryClient(http).open_blob(REPO, DIGEST) as blob:
            assert b"".join([chunk async for chunk in blob.chunks]) == DATA
    assert seen == [("r.test", "Basic c2VjcmV0"), ("cdn.test", None)]


async def test_a_registry_that_ignores_range_is_read_past_the_offset() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Range"] == "bytes=1000-"
        return blob_answer(DATA)

    with trio.fail_after(5):
        async with registry_client(handler).open_blob(REPO, DIGEST, offset=1000) as blob:
            assert (blob.offset, blob.length, blob.size) == (1000, len(DATA) - 1000, len(DATA))
            assert b"".join([chunk async for chunk in blob.chunks]) == DATA[1000:]


async def test_tag_lists_follow_links_and_stop_on_a_loop() -> None:
    pages = {
        "": (["a", "b"], '</v2/team/app/tags/list?n=2&last=b>; rel="next"'),
        "b": (["c"], None),
    }

    async def handler(request: httpx.Request) -> httpx.Response:
        tags, link = pages[request.url.params.get("last", "")]
        headers = {"Link": link} if link else {}
        return httpx.Response(200, headers=headers, json={"name": "team/app", "tags": tags})

    with trio.fail_after(5):
        assert await registry_client(handler).list_tags(REPO, page_size=2) == [
            Tag("a"),
            Tag("b"),
            Tag("c"),
        ]
        pages["b"] = (["c"], '</v2/team/app/tags/list?n=2&last=b>; rel="next"')
        with pytest.raises(errors.Unavailable, match="linked back"):
            await registry_client(handler).list_tags(REPO, page_size=2)

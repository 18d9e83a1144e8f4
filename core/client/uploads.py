"""Pushing blobs: upload sessions, monolithic and chunked uploads, resume, cross-repo mounts.

An upload is a session the registry opens (``POST /v2/<name>/blobs/uploads/`` → 202 with a
``Location``) and the client fills: in one ``PUT <location>?digest=`` whose body streams the
whole blob (:func:`upload_monolithic`), or in ``PATCH`` requests of ``Content-Range``
windows, then an empty ``PUT`` (:func:`upload_chunked`). Each answer carries the next
``Location`` (registries sign their upload state into it) and the bytes received (``Range``).

Resume: when a ``PATCH`` (or the final ``PUT``) fails in transit, or the registry fails, the
client asks the session where it stands (``GET <location>`` → ``Range``) and goes on from
there; a session the registry dropped (``BLOB_UPLOAD_UNKNOWN`` / ``_INVALID``, as Distribution
answers after a torn ``PATCH``) starts over in a new one; a blob that turns out to exist (the
final ``PUT`` landed but its answer was lost) ends the upload.

The bytes come from a :data:`BlobSource`: a function giving the blob's bytes from an offset,
called again for every retry and resume. A source that ends early or runs long is a
``SizeInvalid``; its own exceptions (e.g. ``OSError`` reading a file) pass through.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial

import httpx
import trio

from core.client.auth import pull_scope, push_scope
from core.client.exchange import Body, Exchange
from core.client.failures import MAX_ERROR_BYTES
from core.digest import Digest, parse_digest
from core.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
    Unavailable,
)
from core.reference import RepositoryName

log = logging.getLogger("depot.client")

#: The blob's bytes from the given offset to its end.
BlobSource = Callable[[int], AsyncIterator[bytes]]

DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
DEFAULT_RESUME_ATTEMPTS = 3
#: Pause before the n-th resume: BACKOFF_SECONDS * 2**(n-1), at most MAX_BACKOFF_SECONDS.
BACKOFF_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 4.0
_OCTET_STREAM = "application/octet-stream"
_RANGE = re.compile(r"^\s*(?:bytes=)?0-(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class UploadSession:
    repository: RepositoryName
    location: str  # where the session's next request goes, as the registry wrote it
    offset: int  # bytes the registry has received
    min_chunk: int = 0  # OCI-Chunk-Min-Length: the smallest PATCH it takes (0: any)


async def start_upload(x: Exchange, repository: RepositoryName) -> UploadSession:
    response, body = await x.exchange(
        "POST",
        f"/v2/{repository}/blobs/uploads/",
        scope=push_scope(repository),
        limit=MAX_ERROR_BYTES,
    )
    if response.status_code != 202:
        raise x.error(response, body, BlobUploadUnknown)
    return _session(response, repository, 0)


async def mount(
    x: Exchange, repository: RepositoryName, digest: Digest, source: RepositoryName
) -> UploadSession | None:
    """None when the registry mounted ``digest`` from ``source`` (201); otherwise (202) the
    upload session it opened instead, to push the blob into."""
    response, body = await x.exchange(
        "POST",
        f"/v2/{repository}/blobs/uploads/",
        scope=f"{push_scope(repository)} {pull_scope(source)}",
        params={"mount": str(digest), "from": str(source)},
        limit=MAX_ERROR_BYTES,
    )
    if response.status_code == 201:
        _check_announced(response, digest)
        return None
    if response.status_code != 202:
        raise x.error(response, body, BlobUploadUnknown)
    return _session(response, repository, 0)


async def status(x: Exchange, session: UploadSession) -> UploadSession:
    """Where ``session`` stands now: the bytes the registry holds, its next ``Location``."""
    response, body = await x.exchange(
        "GET", session.location, scope=push_scope(session.repository), limit=MAX_ERROR_BYTES
    )
    if response.status_code not in (200, 204):
        raise x.error(response, body, BlobUploadUnknown)
    return _session(response, session.repository, session.offset, session)


async def cancel(x: Exchange, session: UploadSession) -> None:
    """End ``session`` without a blob (a session already gone is no error)."""
    response, body = await x.exchange(
        "DELETE", session.location, scope=push_scope(session.repository), limit=MAX_ERROR_BYTES
    )
    if response.status_code not in (200, 202, 204, 404):
        raise x.error(response, body, BlobUploadUnknown)


async def upload_monolithic(
    x: Exchange,
    repository: RepositoryName,
    digest: Digest,
    size: int,
    source: BlobSource,
    session: UploadSession | None = None,
) -> None:
    """The whole blob in one ``PUT`` (a new session unless ``session`` is given)."""
    if session is None:
        session = await start_upload(x, repository)
    await _finish(x, session, digest, size, source)


async def upload_chunked(
    x: Exchange,
    repository: RepositoryName,
    digest: Digest,
    size: int,
    source: BlobSource,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    resume_attempts: int = DEFAULT_RESUME_ATTEMPTS,
    session: UploadSession | None = None,
) -> None:
    """``PATCH`` windows of ``chunk_bytes`` (or the registry's minimum), then ``PUT``; after a
    failure in transit, resume where the registry says it stands (see the module doc)."""
    failures = 0
    resync = False
    while True:
        try:
            if session is None:
                session = await start_upload(x, repository)
            elif resync:
                session = await _resync(x, session, digest, size)
                if session is None:
                    return  # the blob is there: the last PUT landed
            resync = False
            while session.offset < size:
                session = await _patch(x, session, source, size, chunk_bytes)
            await _finish(x, session, digest, 0, None)
            return
        except (Unavailable, RangeInvalid) as exc:
            failures += 1
            if failures > resume_attempts:
                raise
            log.info(
                "upload of %s to %s/%s failed (%s); resuming (attempt %d of %d)",
                digest, x.host, repository, exc.message, failures, resume_attempts,
            )  # fmt: skip
            await trio.sleep(min(BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS))
            resync = True


async def _resync(
    x: Exchange, session: UploadSession, digest: Digest, size: int
) -> UploadSession | None:
    """The session's state after a failure: where to go on from, a new session when the
    registry dropped it, or None when the blob is complete at the registry."""
    try:
        return await status(x, session)
    except (BlobUploadUnknown, BlobUploadInvalid):
        pass
    if await blob_size(x, session.repository, digest) == size:
        return None
    log.info("the registry dropped the upload of %s; starting it over", digest)
    return await start_upload(x, session.repository)


async def blob_size(x: Exchange, repository: RepositoryName, digest: Digest) -> int | None:
    """HEAD: the blob's size in ``repository``, or None when it is not there."""
    response, body = await x.exchange(
        "HEAD", f"/v2/{repository}/blobs/{digest}", scope=pull_scope(repository), limit=0
    )
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise x.error(response, body, BlobUnknown)
    size = content_length(response)
    if size is None:
        raise Unavailable(f"{x.host} answered a blob HEAD without a valid Content-Length")
    return size


async def _patch(
    x: Exchange, session: UploadSession, source: BlobSource, size: int, chunk_bytes: int
) -> UploadSession:
    start = session.offset
    end = min(start + max(chunk_bytes, session.min_chunk, 1), size)
    response, body = await x.exchange(
        "PATCH",
        session.location,
        scope=push_scope(session.repository),
        headers={
            "Content-Type": _OCTET_STREAM,
            "Content-Range": f"{start}-{end - 1}",
            "Content-Length": str(end - start),
        },
        body=lambda: _window(source(start), end - start, start, strict=False),
        limit=MAX_ERROR_BYTES,
    )
    if response.status_code != 202:
        raise x.error(response, body, BlobUploadUnknown)
    following = _session(response, session.repository, end, session)
    if not start < following.offset <= size:
        raise Unavailable(
            f"{x.host} reports {following.offset} bytes received after bytes {start}-{end - 1}"
        )
    return following


async def _finish(
    x: Exchange,
    session: UploadSession,
    digest: Digest,
    size: int,
    source: BlobSource | None,
) -> None:
    """``PUT <location>?digest=``, with the whole blob as the body when ``source`` is given."""
    body: Body = b""
    if source is not None and size:
        body = partial(_whole, source, size)
    response, answer = await x.exchange(
        "PUT",
        session.location,
        scope=push_scope(session.repository),
        params=[("digest", str(digest))],
        headers={"Content-Type": _OCTET_STREAM, "Content-Length": str(size)},
        body=body,
        limit=MAX_ERROR_BYTES,
    )
    if response.status_code not in (201, 204):
        raise x.error(response, answer, BlobUploadUnknown)
    _check_announced(response, digest)


def _whole(source: BlobSource, size: int) -> AsyncIterator[bytes]:
    return _window(source(0), size, 0, strict=True)


async def _window(
    chunks: AsyncIterator[bytes], length: int, offset: int, *, strict: bool
) -> AsyncIterator[bytes]:
    """The first ``length`` bytes of ``chunks`` (a source opened at ``offset``); with
    ``strict``, a source with more bytes than that is refused too."""
    sent = 0
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            room = length - sent
            if room <= 0 or len(chunk) > room:
                if strict:
                    raise SizeInvalid(f"the blob source has more than {offset + length} bytes")
                if room > 0:
                    sent += room
                    yield chunk[:room]
                break
            sent += len(chunk)
            yield chunk
    finally:
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
    if sent < length:
        raise SizeInvalid(f"the blob source ended at byte {offset + sent} of {offset + length}")


def _session(
    response: httpx.Response,
    repository: RepositoryName,
    offset: int,
    previous: UploadSession | None = None,
) -> UploadSession:
    """The session an upload answer describes; ``offset`` when it reports no ``Range``."""
    location = response.headers.get("Location") or (previous.location if previous else "")
    if not location:
        raise Unavailable("the registry opened an upload without a Location")
    match = _RANGE.match(response.headers.get("Range", ""))
    if match is not None:
        last = int(match.group(1))
        # "0-0" means one byte, or none (registries write both so): one only when exactly
        # one byte is what we believe was sent.
        offset = last + 1 if last > 0 or offset == 1 else 0
    minimum = response.headers.get("OCI-Chunk-Min-Length", "")
    min_chunk = int(minimum) if minimum.isascii() and minimum.isdigit() else 0
    if previous is not None and not minimum:
        min_chunk = previous.min_chunk
    return UploadSession(repository, location, offset, min_chunk)


def _check_announced(response: httpx.Response, digest: Digest) -> None:
    announced = response.headers.get("Docker-Content-Digest")
    if not announced:
        return
    try:
        same = parse_digest(announced) == digest
    except DigestInvalid:
        same = False
    if not same:
        raise Unavailable(
            "the registry stored the blob under another digest",
            detail={"sent": str(digest), "stored": announced[:200]},
        )


def content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isascii() and value.isdigit() else None

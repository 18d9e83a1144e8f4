"""Blob responses (GET/HEAD, Range → 206, 416), written once for origin and edge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial

from core import mediatypes
from core.ranges import parse_range
from core.web.file_body import FileChunks as FileChunks  # re-exported: openers yield it
from core.web.readahead import ReadAheadBody
from core.web.response import RegistryResponse as Response


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: str
    size: int
    media_type: str = mediatypes.OCTET_STREAM


#: Opens the blob's bytes from ``offset`` for ``length`` bytes, as chunks. An opener that has
#: the bytes in a file yields ``FileChunks(fd, offset, length)`` and keeps ``fd`` open until
#: its context exits: the connection layer then sends them zero-copy (sendfile) where the
#: server offers it, and streams them otherwise (core/web/file_body.py).
BodyOpener = Callable[[int, int], AbstractAsyncContextManager[AsyncIterator[bytes]]]


def blob_headers(info: BlobInfo) -> dict[str, str]:
    return {
        "Content-Type": info.media_type,
        "Docker-Content-Digest": info.digest,
        "ETag": f'"{info.digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }


def blob_response(
    method: str, range_header: str | None, info: BlobInfo, open_body: BodyOpener
) -> Response:
    """Build the response; raises RangeInvalid (416, with ``Content-Range``) when needed."""
    headers = blob_headers(info)
    byte_range = parse_range(range_header, info.size)
    status, offset, length = 200, 0, info.size
    if byte_range is not None:
        status, offset, length = 206, byte_range.first, byte_range.length
        headers["Content-Range"] = byte_range.content_range(info.size)
    if method == "HEAD":
        response = Response(b"", status=status, headers=headers)
    else:
        body = ReadAheadBody(partial(open_body, offset, length))
        response = Response(body, status=status, headers=headers)
    response.timeout = None
    # Set after construction: Quart rewrites an explicit header on an empty body to 0.
    response.content_length = length
    return response

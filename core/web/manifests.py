"""Manifest responses (GET/HEAD), written once for origin and edge."""

from __future__ import annotations

from core.web.response import RegistryResponse as Response


def manifest_response(
    method: str, digest: str, media_type: str, payload: bytes, *, warning: str | None = None
) -> Response:
    """The exact stored bytes with their type and digest; HEAD sends the headers only.

    ``warning`` is a ``Warning`` header value (the edge's ``299`` when it serves a tag stale).
    """
    headers = {
        "Content-Type": media_type,
        "Docker-Content-Digest": digest,
        "ETag": f'"{digest}"',
    }
    if warning is not None:
        headers["Warning"] = warning
    response = Response(b"" if method == "HEAD" else payload, status=200, headers=headers)
    # Set after construction: Quart rewrites an explicit header on an empty body to 0.
    response.content_length = len(payload)
    return response

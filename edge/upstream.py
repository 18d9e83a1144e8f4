"""The origin as the edge's upstream: its ``/v2`` API, ``/token``, JWKS and project lookups,
over one pooled httpx client that authenticates as the edge (Basic ``x-token:dpe_...``).

Repository names here are INTERNAL (``<org>/<path>``): on origin's own host a path-style name
is the internal name. This module is the httpx boundary: every failure leaves it as a
:mod:`core.errors` value — 404 → the matching ``*Unknown``; the edge credential refused
(401/403) → ``Unavailable`` (logged: an operator must fix it); 429, 5xx, transport errors and
timeouts → ``Unavailable`` carrying origin's ``Retry-After``. Manifest bytes are checked
against their digest here: wrong bytes are never returned.

Each method takes ``deadline_seconds``, a backstop for one exchange (for ``open_blob``: until
the response headers arrive); callers own the total time with ``trio.fail_after``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import trio

from core import errors, mediatypes
from core.client.http import open_http_client, send_with_retry, x_token_auth
from core.digest import Digest, parse_digest, sha256_of
from core.errors import DigestInvalid, NameInvalid, RegistryError, Unauthorized, Unavailable
from core.reference import RepositoryName, Tag, parse_repository_name
from core.tenancy import is_org_slug
from edge.upstream_types import UpstreamBlob, UpstreamManifest

log = logging.getLogger("depot.edge.upstream")

DEADLINE_SECONDS = 30.0
#: Token, key and project lookups: small answers, so a shorter backstop.
LOOKUP_DEADLINE_SECONDS = 10.0
#: OCI and Docker image manifests and indexes.
MANIFEST_ACCEPT = ", ".join(sorted(mediatypes.MANIFESTS))
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
#: A project that does not exist may be created later; one that does never changes org.
PROJECT_MISS_SECONDS = 30.0
PROJECT_CACHE_SIZE = 10_000

# Client errors origin may answer with, by OCI code; anything else is Unavailable.
_CLIENT_ERRORS: dict[str, type[RegistryError]] = {
    cls.code: cls
    for cls in (
        errors.BlobUnknown,
        errors.ManifestUnknown,
        errors.NameUnknown,
        errors.NameInvalid,
        errors.DigestInvalid,
        errors.ManifestInvalid,
        errors.RangeInvalid,
        errors.Unsupported,
    )
}
_NOT_FOUND_CODES = frozenset({"BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN"})


class OriginUpstream:
    """:class:`edge.upstream_types.Upstream` against the origin, plus what the edge's gate
    needs from it (:meth:`jwks`, :meth:`project_org`, :meth:`token`)."""

    def __init__(
        self, client: httpx.AsyncClient, *, max_manifest_bytes: int = MAX_MANIFEST_BYTES
    ) -> None:
        """``client`` carries origin's base URL and the edge credential (see :meth:`open`)."""
        self._client = client
        self._max_manifest_bytes = max_manifest_bytes
        # project id → (org slug or None, monotonic expiry)
        self._projects: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, origin_url: str, edge_token: str, *, max_connections: int = 16
    ) -> AsyncIterator[OriginUpstream]:
        """An upstream with its own connection pool, closed on exit."""
        client = open_http_client(
            origin_url, auth_header=x_token_auth(edge_token), max_connections=max_connections
        )
        async with client:
            yield cls(client)

    # -- blobs -----------------------------------------------------------------------------

    @asynccontextmanager
    async def open_blob(
        self,
        repository: RepositoryName,
        digest: Digest,
        *,
        deadline_seconds: float = DEADLINE_SECONDS,
    ) -> AsyncIterator[UpstreamBlob]:
        path = f"/v2/{repository}/blobs/{digest}"
        with _boundary("GET"), trio.fail_after(deadline_seconds):
            response = await self._send("GET", path, stream=True)
        chunks = _raw_chunks(response)
        try:
            if response.status_code != 200:
                raise await _failure(response, errors.BlobUnknown)
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding != "identity":
                raise Unavailable("origin sent an encoded blob", detail={"encoding": encoding})
            size = _content_length(response)
            if size is None:
                raise Unavailable("origin sent a blob without a valid Content-Length")
            yield UpstreamBlob(size=size, chunks=chunks)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await chunks.aclose()
                await response.aclose()

    async def blob_size(
        self,
        repository: RepositoryName,
        digest: Digest,
        *,
        deadline_seconds: float = DEADLINE_SECONDS,
    ) -> int | None:
        path = f"/v2/{repository}/blobs/{digest}"
        response, body = await self._exchange("HEAD", path, deadline_seconds, limit=0)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise await _failure(response, errors.BlobUnknown, body)
        size = _content_length(response)
        if size is None:
            raise Unavailable("origin answered a blob HEAD without a valid Content-Length")
        return size

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(
        self,
        repository: RepositoryName,
        reference: Tag | Digest,
        *,
        deadline_seconds: float = DEADLINE_SECONDS,
    ) -> UpstreamManifest:
        wanted = reference
        path = f"/v2/{repository}/manifests/{wanted}"
        headers = {"Accept": MANIFEST_ACCEPT}
        response, payload = await self._exchange(
            "GET", path, deadline_seconds, limit=self._max_manifest_bytes, headers=headers
        )
        if response.status_code != 200:
            raise await _failure(response, errors.ManifestUnknown, payload)
        digest = _verified_digest(
            payload,
            wanted if isinstance(wanted, Digest) else None,
            response.headers.get("Docker-Content-Digest"),
            where=f"{repository}@{reference}",
        )
        media_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
        if not media_type:
            raise Unavailable("origin sent a manifest without a media type")
        return UpstreamManifest(digest=digest, media_type=media_type, payload=payload)

    async def head_manifest(
        self,
        repository: RepositoryName,
        reference: Tag | Digest,
        *,
        deadline_seconds: float = DEADLINE_SECONDS,
    ) -> Digest | None:
        wanted = reference
        path = f"/v2/{repository}/manifests/{wanted}"
        headers = {"Accept": MANIFEST_ACCEPT}
        response, body = await self._exchange(
            "HEAD", path, deadline_seconds, limit=0, headers=headers
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise await _failure(response, errors.ManifestUnknown, body)
        header = response.headers.get("Docker-Content-Digest", "")
        try:
            found = parse_digest(header)
        except DigestInvalid as exc:
            raise Unavailable("origin answered a manifest HEAD without a digest") from exc
        if isinstance(wanted, Digest) and found != wanted:
            log.error("origin answered HEAD %s@%s with digest %s", repository, wanted, found)
            raise Unavailable("origin answered with a different manifest digest")
        return found

    # -- what the edge's gate needs ----------------------------------------------------------

    async def jwks(self, *, deadline_seconds: float = LOOKUP_DEADLINE_SECONDS) -> dict[str, Any]:
        """Origin's published token-verification keys (a JWKS document)."""
        document = await self._json("/.well-known/jwks.json", deadline_seconds)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise Unavailable("origin's JWKS is not a key set")
        return document

    async def project_org(
        self, project_id: str, *, deadline_seconds: float = LOOKUP_DEADLINE_SECONDS
    ) -> str | None:
        """The org slug of legacy project ``project_id``; None when origin knows no such
        project. A found org is cached for good (a project never changes org), a miss
        for :data:`PROJECT_MISS_SECONDS`."""
        if not _is_project_id(project_id):
            return None
        now = trio.current_time()
        cached = self._projects.get(project_id)
        if cached is not None and cached[1] > now:
            self._projects.move_to_end(project_id)
            return cached[0]
        document = await self._json(
            f"/api/v1/projects/{quote(project_id, safe='')}", deadline_seconds, missing_ok=True
        )
        org: str | None = None
        expiry = now + PROJECT_MISS_SECONDS
        if document is not None:
            slug = document.get("org_slug") if isinstance(document, dict) else None
            if not isinstance(slug, str) or not is_org_slug(slug):
                raise Unavailable("origin's project answer has no valid org_slug")
            org, expiry = slug, math.inf
        self._projects[project_id] = (org, expiry)
        self._projects.move_to_end(project_id)
        while len(self._projects) > PROJECT_CACHE_SIZE:
            self._projects.popitem(last=False)
        return org

    async def token(
        self,
        *,
        host: str,
        secret: str | None,
        service: str,
        scopes: Sequence[str],
        deadline_seconds: float = LOOKUP_DEADLINE_SECONDS,
    ) -> str:
        """Exchange a client's registry token (None: anonymous) at origin's ``/token`` as if
        the client had asked on ``host`` (so names resolve as the client meant them); the JWT.

        Never sends the edge's own credential. Unauthorized (with a Basic challenge) when
        origin refuses the secret; TooManyRequests when it rate-limits; else Unavailable.
        """
        params: dict[str, str | list[str]] = {"service": service, "scope": list(scopes)}
        request = self._client.build_request("GET", "/token", params=params, headers={"Host": host})
        if secret is None:
            request.headers.pop("Authorization", None)
        else:
            request.headers["Authorization"] = x_token_auth(secret)
        with _boundary("GET"), trio.fail_after(deadline_seconds):
            response = await send_with_retry(self._client, request, stream=True)
            try:
                body = await _read(response, MAX_JSON_BYTES)
            finally:
                await response.aclose()
        if response.status_code == 401:
            raise Unauthorized(
                "invalid credentials", headers={"WWW-Authenticate": 'Basic realm="depot-registry"'}
            )
        if response.status_code == 429:
            raise errors.TooManyRequests(
                "too many failed token requests", headers=_retry_after(response)
            )
        if response.status_code != 200:
            raise Unavailable("origin's token service failed", detail=_status(response))
        try:
            token = json.loads(body)["token"]
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unavailable("origin's token answer has no token")
        return token

    # -- plumbing ----------------------------------------------------------------------------

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        stream = kwargs.pop("stream", False)
        request = self._client.build_request(method, path, **kwargs)
        return await send_with_retry(self._client, request, stream=stream)

    async def _exchange(
        self, method: str, path: str, deadline_seconds: float, *, limit: int, **kwargs: Any
    ) -> tuple[httpx.Response, bytes]:
        """Send, read the body (at most ``limit`` bytes; error bodies up to 64 KiB), close."""
        with _boundary(method), trio.fail_after(deadline_seconds):
            response = await self._send(method, path, stream=True, **kwargs)
            try:
                ok = 200 <= response.status_code < 300
                return response, await _read(response, limit if ok else MAX_ERROR_BYTES)
            finally:
                await response.aclose()

    async def _json(self, path: str, deadline_seconds: float, *, missing_ok: bool = False) -> Any:
        response, body = await self._exchange("GET", path, deadline_seconds, limit=MAX_JSON_BYTES)
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code != 200:
            raise await _failure(response, Unavailable, body)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise Unavailable("origin sent malformed JSON", detail={"path": path}) from exc


@contextmanager
def _boundary(what: str) -> Iterator[None]:
    """httpx failures and our own deadline, as Unavailable (never an httpx exception)."""
    try:
        yield
    except trio.TooSlowError as exc:
        raise Unavailable("origin did not answer in time", detail={"during": what}) from exc
    except (httpx.HTTPError, httpx.StreamError) as exc:
        detail = {"during": what, "error": type(exc).__name__}
        raise Unavailable("origin unreachable", detail=detail) from exc


async def _raw_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    with _boundary("reading a blob"):
        async with aclosing(_generator(response.aiter_raw())) as chunks:
            async for chunk in chunks:
                yield chunk


def _generator(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """httpx's body iterators are async generators (typed as iterators): close them
    explicitly, or an early exit leaves them unfinalised (ResourceWarning)."""
    assert isinstance(chunks, AsyncGenerator)
    return chunks


async def _read(response: httpx.Response, limit: int) -> bytes:
    """The (decoded) body; Unavailable past ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    async with aclosing(_generator(response.aiter_bytes())) as chunks:
        async for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise Unavailable("origin's answer is too large", detail={"limit": limit})
            parts.append(chunk)
    return b"".join(parts)


async def _failure(
    response: httpx.Response, not_found: type[RegistryError], body: bytes | None = None
) -> RegistryError:
    """The error a non-success answer means for the edge's caller."""
    status = response.status_code
    if status in (401, 403):
        log.error(
            "origin refused the edge credential: %s %s -> %d",
            response.request.method,
            response.request.url.path,
            status,
        )
        return Unavailable("edge credential rejected by origin")
    if status == 429 or status >= 500:
        message = "origin is rate limiting" if status == 429 else "origin failed"
        return Unavailable(message, detail=_status(response), headers=_retry_after(response))
    if body is None:
        with _boundary("reading an error"):
            body = await _read(response, MAX_ERROR_BYTES)
    code, text, detail = _oci_error(body)
    if status == 404:
        cls = _CLIENT_ERRORS[code] if code in _NOT_FOUND_CODES else not_found
        return cls(text, detail=detail)
    cls_for_code = _CLIENT_ERRORS.get(code or "")
    if cls_for_code is not None and cls_for_code.status == status:
        return cls_for_code(text, detail=detail)
    return Unavailable("unexpected answer from origin", detail=_status(response))


def _oci_error(body: bytes) -> tuple[str | None, str | None, Any]:
    try:
        entry = json.loads(body)["errors"][0]
        code, message = entry.get("code"), entry.get("message")
        return (
            code if isinstance(code, str) else None,
            message if isinstance(message, str) and message else None,
            entry.get("detail"),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None, None


def _verified_digest(
    payload: bytes, wanted: Digest | None, header: str | None, where: str
) -> Digest:
    """The digest of ``payload``, checked against the digest asked for and the one origin
    announced; Unavailable on any mismatch (the bytes are not what was asked for)."""
    announced: Digest | None = None
    if header:
        try:
            announced = parse_digest(header)
        except DigestInvalid as exc:
            raise Unavailable("origin sent an invalid Docker-Content-Digest") from exc
    if wanted is not None and announced is not None and announced != wanted:
        log.error("origin answered %s with a manifest of digest %s", where, announced)
        raise Unavailable("origin's manifest does not match the requested digest")
    claimed = wanted or announced or sha256_of(payload)
    hasher = claimed.hasher()
    hasher.update(payload)
    if hasher.hexdigest() != claimed.encoded:
        log.error("origin's manifest bytes for %s do not match %s", where, claimed)
        raise Unavailable("origin's manifest does not match its digest")
    return claimed


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isascii() and value.isdigit() else None


def _retry_after(response: httpx.Response) -> dict[str, str]:
    value = response.headers.get("Retry-After", "").strip()
    return {"Retry-After": value} if value.isascii() and value.isdigit() else {}


def _status(response: httpx.Response) -> dict[str, int]:
    return {"status": response.status_code}


def _is_project_id(text: str) -> bool:
    try:
        return "/" not in parse_repository_name(text).value
    except NameInvalid:
        return False

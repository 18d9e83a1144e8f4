"""The OCI registry client: one registry, typed values in and out, :mod:`core.errors` out.

Every ``/v2`` hop of the project speaks through :class:`RegistryClient`: the edge to origin,
the ``depot`` CLI, the tests, and next the push relay and the registry mirror. It runs on
one pooled httpx client (:func:`core.client.http.open_http_client`: no proxy from the
environment, HTTP/1.1, ``Accept-Encoding: identity``, 1 MiB socket reads), authenticates as
:mod:`core.client.auth` says, and maps every failure into :mod:`core.errors` at this boundary
(:mod:`core.client.failures`): no httpx exception leaves it.

Callers own time: nothing here takes a timeout; wrap calls in ``trio.fail_after``. (httpx's
per-read timeouts of :mod:`core.client.http` still end a dead connection.)

What it checks for the caller: manifest bytes against the digest asked for and the one the
registry announced (wrong bytes are never returned); blob answers for their length and
encoding. Blob bytes are the caller's to hash: they stream through.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass

import httpx

from core import mediatypes
from core.client import listings, uploads
from core.client.auth import Authenticator, pull_scope, push_scope
from core.client.credentials import ANONYMOUS, CredentialsProvider
from core.client.exchange import Exchange
from core.client.failures import MAX_ERROR_BYTES, transport_boundary
from core.client.http import DEFAULT_MAX_CONNECTIONS, closing_generator, open_http_client
from core.client.listings import Referrers
from core.client.socket_body import SocketBody, take_socket_body
from core.client.uploads import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_RESUME_ATTEMPTS,
    BlobSource,
    UploadSession,
    content_length,
)
from core.digest import Digest, parse_digest, sha256_of
from core.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameUnknown,
    NotFound,
    RangeInvalid,
    Unavailable,
)
from core.reference import RepositoryName, Tag

log = logging.getLogger("depot.client")

#: OCI and Docker image manifests and indexes, in every manifest request.
MANIFEST_ACCEPT = ", ".join(sorted(mediatypes.MANIFESTS))
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    digest: Digest  # of the payload: verified, never taken from a header on trust
    media_type: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class BlobStream:
    offset: int  # where ``chunks`` start in the blob
    length: int  # bytes ``chunks`` yield
    size: int | None  # the whole blob (None when a 206 did not say)
    chunks: AsyncIterator[bytes]
    #: The same body as a socket to read instead of ``chunks`` (never both), where it is
    #: plain-TCP HTTP/1.1 with a Content-Length: core/client/socket_body.py.
    socket_body: SocketBody | None = None


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: Digest
    #: ``OCI-Subject``: the registry processed the manifest's subject (it has the referrers
    #: API); None when the manifest has none or the registry ignores it.
    subject: Digest | None


class RegistryClient:
    """One registry (``http``'s base URL) as seen with ``credentials``.

    ``preemptive_basic``: send Basic credentials with the first request instead of waiting
    for a challenge (origin takes ``x-token`` Basic on ``/v2``: no token round trip).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        credentials: CredentialsProvider = ANONYMOUS,
        *,
        preemptive_basic: bool = False,
        max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    ) -> None:
        host = http.base_url.netloc.decode("ascii")
        auth = Authenticator(http, credentials, host, preemptive_basic=preemptive_basic)
        self._x = Exchange(http, auth, host)
        self._max_manifest_bytes = max_manifest_bytes

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        base_url: str,
        credentials: CredentialsProvider = ANONYMOUS,
        *,
        preemptive_basic: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> AsyncIterator[RegistryClient]:
        """A client with its own connection pool, closed on exit (``verify``: see
        :func:`core.client.http.open_http_client`)."""
        http = open_http_client(
            base_url,
            auth_header=None,
            max_connections=max_connections,
            transport=transport,
            verify=verify,
        )
        async with http:
            yield cls(http, credentials, preemptive_basic=preemptive_basic)

    @property
    def host(self) -> str:
        """``host[:port]`` of the registry."""
        return self._x.host

    async def ping(self) -> None:
        """``GET /v2/``: returns when the registry answers 200 to these credentials."""
        response, body = await self._x.exchange("GET", "/v2/", scope=None, limit=MAX_ERROR_BYTES)
        if response.status_code != 200:
            raise self._x.error(response, body, NotFound)

    # -- manifests -----------------------------------------------------------------------------

    async def get_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> FetchedManifest:
        response, payload = await self._x.exchange(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scope=pull_scope(repository),
            headers={"Accept": MANIFEST_ACCEPT},
            limit=self._max_manifest_bytes,
        )
        if response.status_code != 200:
            raise self._x.error(response, payload, ManifestUnknown)
        digest = verified_digest(
            payload,
            reference if isinstance(reference, Digest) else None,
            response.headers.get("Docker-Content-Digest"),
            where=f"{self.host}/{repository}@{reference}",
        )
        media_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
        if not media_type:
            raise Unavailable(f"{self.host} sent a manifest without a media type")
        return FetchedManifest(digest, media_type, payload)

    async def head_manifest(
        self, repository: RepositoryName, reference: Tag | Digest
    ) -> Digest | None:
        """The digest ``reference`` resolves to now; None when the registry has no such
        manifest."""
        response, body = await self._x.exchange(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scope=pull_scope(repository),
            headers={"Accept": MANIFEST_ACCEPT},
            limit=0,
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._x.error(response, body, ManifestUnknown)
        header = response.headers.get("Docker-Content-Digest", "")
        if not header and isinstance(reference, Digest):
            return reference
        try:
            found = parse_digest(header)
        except DigestInvalid as exc:
            raise Unavailable(f"{self.host} answered a manifest HEAD without a digest") from exc
        if isinstance(reference, Digest) and found != reference:
            log.error(
                "%s answered HEAD %s@%s with digest %s", self.host, repository, reference, found
            )
            raise Unavailable(f"{self.host} answered with a different manifest digest")
        return found

    async def put_manifest(
        self,
        repository: RepositoryName,
        reference: Tag | Digest,
        payload: bytes,
        media_type: str,
    ) -> PushedManifest:
        """Push ``payload`` as is under a tag, or under its digest."""
        digest = reference if isinstance(reference, Digest) else sha256_of(payload)
        hasher = digest.hasher()
        hasher.update(payload)
        if hasher.hexdigest() != digest.encoded:
            raise DigestInvalid(f"the manifest's bytes are not {digest}")
        response, body = await self._x.exchange(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=push_scope(repository),
            headers={"Content-Type": media_type},
            body=payload,
            limit=MAX_ERROR_BYTES,
        )
        if not 200 <= response.status_code < 300:
            raise self._x.error(response, body, NameUnknown)
        announced = response.headers.get("Docker-Content-Digest")
        if announced and announced != str(digest):
            raise Unavailable(
                f"{self.host} stored the manifest under another digest",
                detail={"sent": str(digest), "stored": announced[:200]},
            )
        subject: Digest | None = None
        if header := response.headers.get("OCI-Subject"):
            try:
                subject = parse_digest(header)
            except DigestInvalid:
                log.warning("%s sent an invalid OCI-Subject for %s", self.host, digest)
        return PushedManifest(digest, subject)

    # -- blobs ---------------------------------------------------------------------------------

    def open_blob(
        self, repository: RepositoryName, digest: Digest, *, offset: int = 0
    ) -> AbstractAsyncContextManager[BlobStream]:
        """Stream a blob (from ``offset``: a ``Range`` request, for resuming), raw bytes as
        they arrive. A registry that ignores ``Range`` is read past ``offset`` here."""
        return self._open_blob(repository, digest, offset)

    @asynccontextmanager
    async def _open_blob(
        self, repository: RepositoryName, digest: Digest, offset: int
    ) -> AsyncIterator[BlobStream]:
        headers = {"Range": f"bytes={offset}-"} if offset else None
        response = await self._x.send(
            "GET", f"/v2/{repository}/blobs/{digest}", scope=pull_scope(repository), headers=headers
        )
        chunks: AsyncIterator[bytes] | None = None
        try:
            if response.status_code not in (200, 206):
                raise await self._x.error_of_stream(response, BlobUnknown)
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding != "identity":
                raise Unavailable(
                    f"{self.host} sent an encoded blob", detail={"encoding": encoding}
                )
            length = content_length(response)
            if length is None:
                raise Unavailable(f"{self.host} sent a blob without a valid Content-Length")
            size: int | None = length
            skip = 0
            if response.status_code == 206:
                size = self._check_partial(response, offset, length)
            elif offset:
                if offset > length:
                    raise RangeInvalid(f"{digest} has {length} bytes, fewer than {offset}")
                skip, length = offset, length - offset
            chunks = _raw_chunks(response, self.host, skip)
            socket_body = None if skip else take_socket_body(response, length)
            yield BlobStream(offset, length, size, chunks, socket_body)
        finally:
            if chunks is not None:
                await closing_generator(chunks).aclose()
            await response.aclose()

    def _check_partial(self, response: httpx.Response, offset: int, length: int) -> int | None:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            raise Unavailable(f"{self.host} answered a range request with another range")
        if int(match.group(2)) - offset + 1 != length:
            raise Unavailable(f"{self.host} sent a Content-Range that disagrees with its length")
        return None if match.group(3) == "*" else int(match.group(3))

    async def blob_size(self, repository: RepositoryName, digest: Digest) -> int | None:
        """HEAD: the blob's size when ``repository`` has it, None when it does not."""
        return await uploads.blob_size(self._x, repository, digest)

    # -- pushing blobs (see core.client.uploads) ------------------------------------------------

    async def start_upload(self, repository: RepositoryName) -> UploadSession:
        return await uploads.start_upload(self._x, repository)

    async def mount_blob(
        self, repository: RepositoryName, digest: Digest, source: RepositoryName
    ) -> UploadSession | None:
        """Cross-repository mount: None when mounted; otherwise the session the registry
        opened instead (push the blob into it with ``session=``)."""
        return await uploads.mount(self._x, repository, digest, source)

    async def upload_blob(
        self,
        repository: RepositoryName,
        digest: Digest,
        size: int,
        source: BlobSource,
        *,
        session: UploadSession | None = None,
    ) -> None:
        """Monolithic: the whole blob streamed in one ``PUT``."""
        await uploads.upload_monolithic(self._x, repository, digest, size, source, session)

    async def upload_blob_chunked(
        self,
        repository: RepositoryName,
        digest: Digest,
        size: int,
        source: BlobSource,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        resume_attempts: int = DEFAULT_RESUME_ATTEMPTS,
        session: UploadSession | None = None,
    ) -> None:
        """``PATCH`` by ``chunk_bytes``, resuming from the registry's ``Range`` after a
        failure in transit, then ``PUT``."""
        await uploads.upload_chunked(
            self._x,
            repository,
            digest,
            size,
            source,
            chunk_bytes=chunk_bytes,
            resume_attempts=resume_attempts,
            session=session,
        )

    async def upload_status(self, session: UploadSession) -> UploadSession:
        return await uploads.status(self._x, session)

    async def cancel_upload(self, session: UploadSession) -> None:
        await uploads.cancel(self._x, session)

    # -- listings (see core.client.listings) ---------------------------------------------------

    async def list_tags(
        self, repository: RepositoryName, *, page_size: int | None = None
    ) -> list[Tag]:
        """Every tag, following ``Link`` pages of ``page_size`` (the registry's own default
        when None)."""
        return await listings.tags(self._x, repository, page_size)

    async def catalog(self, *, page_size: int | None = None) -> list[RepositoryName]:
        """Every repository the credentials may see, following ``Link`` pages."""
        return await listings.catalog(self._x, page_size)

    async def referrers(
        self,
        repository: RepositoryName,
        subject: Digest,
        *,
        artifact_type: str | None = None,
    ) -> Referrers | None:
        """The manifests whose ``subject`` is ``subject``, filtered by ``artifact_type`` when
        given; None when the registry has no referrers API (clients then use the
        ``sha256-<hex>`` tag schema)."""
        return await listings.referrers(self._x, repository, subject, artifact_type)


def verified_digest(
    payload: bytes, wanted: Digest | None, header: str | None, where: str
) -> Digest:
    """The digest of ``payload``, checked against the digest asked for and the one the
    registry announced; Unavailable on any mismatch (the bytes are not what was asked for)."""
    announced: Digest | None = None
    if header:
        try:
            announced = parse_digest(header)
        except DigestInvalid as exc:
            raise Unavailable(f"{where}: an invalid Docker-Content-Digest") from exc
    if wanted is not None and announced is not None and announced != wanted:
        log.error("%s: answered with a manifest of digest %s", where, announced)
        raise Unavailable("the manifest does not match the requested digest")
    claimed = wanted or announced or sha256_of(payload)
    hasher = claimed.hasher()
    hasher.update(payload)
    if hasher.hexdigest() != claimed.encoded:
        log.error("%s: the manifest bytes do not match %s", where, claimed)
        raise Unavailable("the manifest does not match its digest")
    return claimed


async def _raw_chunks(response: httpx.Response, host: str, skip: int) -> AsyncIterator[bytes]:
    """The body as it arrives (no decoding), less its first ``skip`` bytes."""
    with transport_boundary(host, "reading a blob"):
        async with aclosing(closing_generator(response.aiter_raw())) as chunks:
            async for chunk in chunks:
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                yield chunk

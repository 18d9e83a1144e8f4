"""The ``/v2/`` API: thin handlers that call one domain method and build the response.

Parsing, the method table and authorisation are :mod:`core.web.v2`'s; each handler gets the
typed endpoint (``endpoint.name`` is the name as the client wrote it, for ``Location`` and
JSON bodies) and ``call.repository``, the internal name it means.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial

from quart import Quart, request

from core import mediatypes
from core.digest import Digest, parse_digest
from core.endpoints import (
    BaseEndpoint,
    BlobEndpoint,
    CatalogEndpoint,
    ManifestEndpoint,
    ReferrersEndpoint,
    TagsEndpoint,
    UploadEndpoint,
    UploadsEndpoint,
)
from core.errors import DigestInvalid, TooLarge
from core.pagination import next_link, parse_page
from core.ranges import ByteRange, parse_content_range
from core.reference import RepositoryName, parse_repository_name
from core.tenancy import org_from_host
from core.web.blobs import blob_response
from core.web.manifests import manifest_response
from core.web.response import RegistryResponse as Response
from core.web.v2 import Call, V2Gate, V2Routes, install_v2, version_check
from origin.metadata.records import UploadRecord
from origin.registry.registry import Registry
from origin.registry.uploads import UploadOutOfOrder


def install_v2_routes(
    app: Quart,
    registry: Registry,
    gate: V2Gate,
    *,
    max_manifest_bytes: int,
    chunk_min_length: int,
    base_domain: str,
    storage_redirect_seconds: int = 0,
) -> None:
    """``storage_redirect_seconds`` (> 0): a blob GET allowed by the gate is answered with a
    307 to a URL of the storage itself valid that long (S3 presigned), when the driver has one."""
    handlers = _Handlers(registry, max_manifest_bytes, chunk_min_length, base_domain)
    handlers.storage_redirect_seconds = storage_redirect_seconds
    install_v2(app, handlers.routes(gate))


def _body() -> AsyncIterator[bytes]:
    return request.body


def _content_range() -> ByteRange | None:
    header = request.headers.get("Content-Range")
    return parse_content_range(header) if header else None


def range_header(size: int) -> str:
    """The ``Range`` an upload reports: received bytes, inclusive ("0-0" when empty)."""
    return f"0-{max(size - 1, 0)}"


def _session_headers(record: UploadRecord, external: RepositoryName) -> dict[str, str]:
    return {
        "Location": f"/v2/{external}/blobs/uploads/{record.id}",
        "Range": range_header(record.size),
        "Docker-Upload-UUID": record.id,
    }


@contextmanager
def _located(external: RepositoryName) -> Iterator[None]:
    """An out-of-order chunk's 416 says where the session is, under the client's name."""
    try:
        yield
    except UploadOutOfOrder as exc:
        exc.headers.update(_session_headers(exc.session, external))
        raise


def _digest_arg(value: str | None) -> Digest:
    if not value:
        raise DigestInvalid("digest parameter missing")
    return parse_digest(value)


class _Handlers:
    def __init__(
        self,
        registry: Registry,
        max_manifest_bytes: int,
        chunk_min_length: int,
        base_domain: str,
    ):
        self.registry = registry
        self.max_manifest_bytes = max_manifest_bytes
        self.chunk_min_length = chunk_min_length
        self.base_domain = base_domain or None
        self.storage_redirect_seconds = 0

    def routes(self, gate: V2Gate) -> V2Routes:
        routes = V2Routes(gate)
        routes.on(BaseEndpoint, ("GET", "HEAD"), version_check)
        routes.on(CatalogEndpoint, ("GET",), self.catalog)
        routes.on(BlobEndpoint, ("GET", "HEAD"), self.get_blob)
        routes.on(BlobEndpoint, ("DELETE",), self.delete_blob)
        routes.on(UploadsEndpoint, ("POST",), self.start_upload)
        routes.on(UploadEndpoint, ("GET",), self.upload_status)
        routes.on(UploadEndpoint, ("PATCH",), self.append_upload)
        routes.on(UploadEndpoint, ("PUT",), self.finish_upload)
        routes.on(UploadEndpoint, ("DELETE",), self.cancel_upload)
        routes.on(ManifestEndpoint, ("GET", "HEAD"), self.get_manifest)
        routes.on(ManifestEndpoint, ("PUT",), self.put_manifest)
        routes.on(ManifestEndpoint, ("DELETE",), self.delete_manifest)
        routes.on(TagsEndpoint, ("GET",), self.tags)
        routes.on(ReferrersEndpoint, ("GET",), self.referrers)
        return routes

    def _upload_headers(self, record: UploadRecord, external: RepositoryName) -> dict[str, str]:
        headers = _session_headers(record, external)
        if self.chunk_min_length:
            headers["OCI-Chunk-Min-Length"] = str(self.chunk_min_length)
        return headers

    # -- blobs -----------------------------------------------------------------------------

    async def get_blob(self, call: Call[BlobEndpoint]) -> Response:
        digest = call.endpoint.digest
        info = await self.registry.blobs.stat(call.repository, digest)
        if self.storage_redirect_seconds and request.method == "GET":
            url = self.registry.blobs.redirect_url(digest, self.storage_redirect_seconds)
            if url is not None:
                # The bytes come from the store; a client follows without our Authorization
                # (the URL carries its own signature, and S3 refuses two).
                return Response(
                    b"",
                    status=307,
                    headers={"Location": url, "Docker-Content-Digest": str(digest)},
                )
        return blob_response(
            request.method,
            request.headers.get("Range"),
            info,
            partial(self.registry.blobs.open, digest),
        )

    async def delete_blob(self, call: Call[BlobEndpoint]) -> Response:
        await self.registry.blobs.delete(call.repository, call.endpoint.digest)
        return Response(b"", status=202)

    # -- uploads ---------------------------------------------------------------------------

    async def start_upload(self, call: Call[UploadsEndpoint]) -> Response:
        name, ext = call.repository, call.endpoint.name
        args = request.args
        mount, source = args.get("mount"), args.get("from")
        if mount:
            mounted = parse_digest(mount)
            # A source the caller may not read is no error: the upload goes on as a plain
            # one, and a blob of another tenant is never linked by knowing its digest.
            if source:
                parse_repository_name(source)  # a malformed name is a 400, not a fallback
            source_name = call.authorization.names.get(source or "")
            if (
                source_name is not None
                and call.authorization.mount_allowed
                and await self.registry.blobs.mount(name, source_name, mounted)
            ):
                return _blob_created(ext, mounted)
        single = _digest_arg(args.get("digest")) if "digest" in args else None
        record = await self.registry.uploads.start(name)
        if single is not None:  # single-request monolithic upload
            await self.registry.uploads.finish(
                name, record.id, single, _body(), None, request.content_length
            )
            return _blob_created(ext, single)
        return Response(b"", 202, self._upload_headers(record, ext))

    async def upload_status(self, call: Call[UploadEndpoint]) -> Response:
        record = await self.registry.uploads.status(call.repository, call.endpoint.upload_id)
        return Response(b"", 204, self._upload_headers(record, call.endpoint.name))

    async def append_upload(self, call: Call[UploadEndpoint]) -> Response:
        with _located(call.endpoint.name):
            record = await self.registry.uploads.append(
                call.repository,
                call.endpoint.upload_id,
                _body(),
                _content_range(),
                request.content_length,
            )
        return Response(b"", 202, self._upload_headers(record, call.endpoint.name))

    async def finish_upload(self, call: Call[UploadEndpoint]) -> Response:
        digest = _digest_arg(request.args.get("digest"))
        with _located(call.endpoint.name):
            await self.registry.uploads.finish(
                call.repository,
                call.endpoint.upload_id,
                digest,
                _body(),
                _content_range(),
                request.content_length,
            )
        return _blob_created(call.endpoint.name, digest)

    async def cancel_upload(self, call: Call[UploadEndpoint]) -> Response:
        await self.registry.uploads.cancel(call.repository, call.endpoint.upload_id)
        return Response(b"", status=204)

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, call: Call[ManifestEndpoint]) -> Response:
        record = await self.registry.manifests.get(call.repository, call.endpoint.reference)
        return manifest_response(request.method, record.digest, record.media_type, record.payload)

    async def put_manifest(self, call: Call[ManifestEndpoint]) -> Response:
        limit = self.max_manifest_bytes
        if (request.content_length or 0) > limit:
            raise TooLarge(f"manifest exceeds {limit} bytes")
        payload = bytearray()
        async for chunk in _body():
            payload += chunk
            if len(payload) > limit:
                raise TooLarge(f"manifest exceeds {limit} bytes")
        pushed = await self.registry.manifests.put(
            call.repository,
            call.endpoint.reference,
            bytes(payload),
            request.headers.get("Content-Type"),
        )
        headers = {
            "Location": f"/v2/{call.endpoint.name}/manifests/{pushed.digest}",
            "Docker-Content-Digest": pushed.digest,
        }
        if pushed.subject:
            headers["OCI-Subject"] = pushed.subject
        return Response(b"", status=201, headers=headers)

    async def delete_manifest(self, call: Call[ManifestEndpoint]) -> Response:
        await self.registry.manifests.delete(call.repository, call.endpoint.reference)
        return Response(b"", status=202)

    # -- listings --------------------------------------------------------------------------

    async def tags(self, call: Call[TagsEndpoint]) -> Response:
        page = parse_page(request.args)
        tags = await self.registry.manifests.tags(call.repository, page.n + 1, page.last)
        response = _json({"name": call.endpoint.name.value, "tags": tags[: page.n]})
        link = next_link(request.path, page, tags)
        if link:
            response.headers["Link"] = link
        return response

    async def catalog(self, call: Call[CatalogEndpoint]) -> Response:
        """Only the caller's orgs (a caller bound to a project: only the project's
        repository); on an org's subdomain, only that org, names as seen there."""
        caller = call.authorization.caller
        page = parse_page(request.args, default=1000)
        host_org = org_from_host(request.host, self.base_domain)
        orgs: frozenset[str] | None = None if caller.everything else caller.orgs
        prefix = ""
        if host_org is not None and not caller.everything:
            orgs, prefix = orgs & {host_org} if orgs else frozenset(), f"{host_org}/"
        only = None
        if caller.project is not None and orgs is not None:
            only = frozenset(f"{org}/{caller.project}" for org in orgs)
        last = prefix + page.last if page.last else None
        internal = await self.registry.catalog(page.n + 1, last, orgs, names=only)
        names = [n.removeprefix(prefix) for n in internal]
        response = _json({"repositories": names[: page.n]})
        link = next_link(request.path, page, names)
        if link:
            response.headers["Link"] = link
        return response

    async def referrers(self, call: Call[ReferrersEndpoint]) -> Response:
        artifact_type = request.args.get("artifactType") or None
        records = await self.registry.manifests.referrers(
            call.repository, call.endpoint.subject, artifact_type
        )
        manifests = []
        for record in records:
            descriptor: dict[str, object] = {
                "mediaType": record.media_type,
                "digest": record.digest,
                "size": record.size,
            }
            if record.artifact_type:
                descriptor["artifactType"] = record.artifact_type
            if record.annotations:
                descriptor["annotations"] = json.loads(record.annotations)
            manifests.append(descriptor)
        index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": manifests}
        response = _json(index, content_type=mediatypes.OCI_INDEX)
        if artifact_type:
            response.headers["OCI-Filters-Applied"] = "artifactType"
        return response


def _blob_created(ext: RepositoryName, digest: Digest) -> Response:
    headers = {"Location": f"/v2/{ext}/blobs/{digest}", "Docker-Content-Digest": str(digest)}
    return Response(b"", status=201, headers=headers)


def _json(document: object, content_type: str = mediatypes.JSON) -> Response:
    return Response(json.dumps(document).encode(), content_type=content_type)

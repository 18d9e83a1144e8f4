"""The ``/v2/`` API: thin handlers that parse, call one domain method, build the response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial

from quart import Quart, request

from core import mediatypes
from core.auth.request import Authorization, Caller, RequestView
from core.digest import Digest, parse_digest
from core.endpoints import Endpoint, Kind, parse_endpoint
from core.errors import DigestInvalid, NameUnknown, TooLarge, Unsupported
from core.pagination import next_link, parse_page
from core.ranges import ByteRange, parse_content_range
from core.reference import RepositoryName, parse_manifest_reference, parse_repository_name
from core.tenancy import org_from_host
from core.web.blobs import blob_response
from core.web.response import RegistryResponse as Response
from origin.auth.gate import Gate
from origin.metadata.records import UploadRecord
from origin.registry.registry import Registry
from origin.registry.uploads import range_header

_ALLOWED = {
    Kind.BASE: {"GET", "HEAD"},
    Kind.CATALOG: {"GET"},
    Kind.BLOB: {"GET", "HEAD", "DELETE"},
    Kind.UPLOADS: {"POST"},
    Kind.UPLOAD: {"GET", "PATCH", "PUT", "DELETE"},
    Kind.MANIFEST: {"GET", "HEAD", "PUT", "DELETE"},
    Kind.TAGS: {"GET"},
    Kind.REFERRERS: {"GET"},
}
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def install_v2_routes(
    app: Quart,
    registry: Registry,
    gate: Gate,
    *,
    max_manifest_bytes: int,
    chunk_min_length: int,
    base_domain: str,
) -> None:
    handlers = _Handlers(registry, max_manifest_bytes, chunk_min_length, base_domain)

    @app.route("/v2", methods=_METHODS)
    @app.route("/v2/", methods=_METHODS)
    @app.route("/v2/<path:rest>", methods=_METHODS)
    async def v2(rest: str = "") -> Response:
        endpoint = parse_endpoint(request.path)
        if request.method not in _ALLOWED[endpoint.kind]:
            raise Unsupported(headers={"Allow": ", ".join(sorted(_ALLOWED[endpoint.kind]))})
        authorization = await gate.authorize(
            RequestView(
                method=request.method,
                host=request.host,
                scheme=request.scheme,
                authorization=request.headers.get("Authorization"),
                endpoint=endpoint,
                query=request.args,
            )
        )
        return await handlers.dispatch(endpoint, authorization)


def _body() -> AsyncIterator[bytes]:
    return request.body


def _content_range() -> ByteRange | None:
    header = request.headers.get("Content-Range")
    return parse_content_range(header) if header else None


def _upload_headers(
    record: UploadRecord, external: RepositoryName, chunk_min_length: int
) -> dict[str, str]:
    headers = {
        "Location": f"/v2/{external}/blobs/uploads/{record.id}",
        "Range": range_header(record.size),
        "Docker-Upload-UUID": record.id,
    }
    if chunk_min_length:
        headers["OCI-Chunk-Min-Length"] = str(chunk_min_length)
    return headers


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

    async def dispatch(self, endpoint: Endpoint, authorization: Authorization) -> Response:
        """``ext`` is the name as the client wrote it (for Location and JSON bodies);
        ``name`` is the repository it means."""
        method = request.method
        if endpoint.kind is Kind.BASE:
            return Response(b"{}", content_type=mediatypes.JSON)
        if endpoint.kind is Kind.CATALOG:
            return await self.catalog(authorization.caller)
        assert endpoint.name is not None
        ext, arg = endpoint.name, endpoint.argument or ""
        name = authorization.names.get(ext.value)
        if name is None:
            raise NameUnknown(detail={"name": ext.value})
        match endpoint.kind, method:
            case Kind.BLOB, "GET" | "HEAD":
                return await self.get_blob(name, parse_digest(arg))
            case Kind.BLOB, "DELETE":
                await self.registry.blobs.delete(name, parse_digest(arg))
                return Response(b"", status=202)
            case Kind.UPLOADS, _:
                return await self.start_upload(name, ext, authorization)
            case Kind.UPLOAD, "GET":
                record = await self.registry.uploads.status(name, arg)
                return Response(b"", 204, _upload_headers(record, ext, self.chunk_min_length))
            case Kind.UPLOAD, "PATCH":
                record = await self.registry.uploads.append(
                    name, arg, _body(), _content_range(), request.content_length
                )
                return Response(b"", 202, _upload_headers(record, ext, self.chunk_min_length))
            case Kind.UPLOAD, "PUT":
                digest = _digest_arg(request.args.get("digest"))
                await self.registry.uploads.finish(
                    name, arg, digest, _body(), _content_range(), request.content_length
                )
                return self._blob_created(ext, digest)
            case Kind.UPLOAD, "DELETE":
                await self.registry.uploads.cancel(name, arg)
                return Response(b"", status=204)
            case Kind.MANIFEST, "GET" | "HEAD":
                return await self.get_manifest(name, arg)
            case Kind.MANIFEST, "PUT":
                return await self.put_manifest(name, ext, arg)
            case Kind.MANIFEST, "DELETE":
                await self.registry.manifests.delete(name, parse_manifest_reference(arg))
                return Response(b"", status=202)
            case Kind.TAGS, _:
                return await self.tags(name, ext)
            case Kind.REFERRERS, _:
                return await self.referrers(name, parse_digest(arg))
        raise Unsupported()

    async def get_blob(self, name: RepositoryName, digest: Digest) -> Response:
        info = await self.registry.blobs.stat(name, digest)

        return blob_response(
            request.method,
            request.headers.get("Range"),
            info,
            partial(self.registry.blobs.open, digest),
        )

    async def start_upload(
        self, name: RepositoryName, ext: RepositoryName, authorization: Authorization
    ) -> Response:
        args = request.args
        mount, source = args.get("mount"), args.get("from")
        if mount:
            mounted = parse_digest(mount)
            # A source the caller may not read is no error: the upload goes on as a plain
            # one, and a blob of another tenant is never linked by knowing its digest.
            if source:
                parse_repository_name(source)  # a malformed name is a 400, not a fallback
            source_name = authorization.names.get(source or "")
            if (
                source_name is not None
                and authorization.mount_allowed
                and await self.registry.blobs.mount(name, source_name, mounted)
            ):
                return self._blob_created(ext, mounted)
        single = _digest_arg(args.get("digest")) if "digest" in args else None
        record = await self.registry.uploads.start(name)
        if single is not None:  # single-request monolithic upload
            await self.registry.uploads.finish(
                name, record.id, single, _body(), None, request.content_length
            )
            return self._blob_created(ext, single)
        return Response(b"", 202, _upload_headers(record, ext, self.chunk_min_length))

    @staticmethod
    def _blob_created(ext: RepositoryName, digest: Digest) -> Response:
        headers = {"Location": f"/v2/{ext}/blobs/{digest}", "Docker-Content-Digest": str(digest)}
        return Response(b"", status=201, headers=headers)

    async def get_manifest(self, name: RepositoryName, arg: str) -> Response:
        record = await self.registry.manifests.get(name, parse_manifest_reference(arg))
        headers = {
            "Content-Type": record.media_type,
            "Docker-Content-Digest": record.digest,
            "ETag": f'"{record.digest}"',
        }
        body = b"" if request.method == "HEAD" else record.payload
        response = Response(body, status=200, headers=headers)
        response.content_length = record.size
        return response

    async def put_manifest(self, name: RepositoryName, ext: RepositoryName, arg: str) -> Response:
        reference = parse_manifest_reference(arg)
        limit = self.max_manifest_bytes
        if (request.content_length or 0) > limit:
            raise TooLarge(f"manifest exceeds {limit} bytes")
        payload = bytearray()
        async for chunk in _body():
            payload += chunk
            if len(payload) > limit:
                raise TooLarge(f"manifest exceeds {limit} bytes")
        pushed = await self.registry.manifests.put(
            name, reference, bytes(payload), request.headers.get("Content-Type")
        )
        headers = {
            "Location": f"/v2/{ext}/manifests/{pushed.digest}",
            "Docker-Content-Digest": pushed.digest,
        }
        if pushed.subject:
            headers["OCI-Subject"] = pushed.subject
        return Response(b"", status=201, headers=headers)

    async def tags(self, name: RepositoryName, ext: RepositoryName) -> Response:
        page = parse_page(request.args)
        tags = await self.registry.manifests.tags(name, page.n + 1, page.last)
        response = _json({"name": ext.value, "tags": tags[: page.n]})
        link = next_link(request.path, page, tags)
        if link:
            response.headers["Link"] = link
        return response

    async def catalog(self, caller: Caller) -> Response:
        """Only the caller's orgs; on an org's subdomain, only that org, names as seen there."""
        page = parse_page(request.args, default=1000)
        host_org = org_from_host(request.host, self.base_domain)
        orgs: frozenset[str] | None = None if caller.everything else caller.orgs
        prefix = ""
        if host_org is not None and not caller.everything:
            orgs, prefix = orgs & {host_org} if orgs else frozenset(), f"{host_org}/"
        last = prefix + page.last if page.last else None
        internal = await self.registry.catalog(page.n + 1, last, orgs)
        names = [n.removeprefix(prefix) for n in internal]
        response = _json({"repositories": names[: page.n]})
        link = next_link(request.path, page, names)
        if link:
            response.headers["Link"] = link
        return response

    async def referrers(self, name: RepositoryName, subject: Digest) -> Response:
        artifact_type = request.args.get("artifactType") or None
        records = await self.registry.manifests.referrers(name, subject, artifact_type)
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


def _json(document: object, content_type: str = mediatypes.JSON) -> Response:
    return Response(json.dumps(document).encode(), content_type=content_type)

"""The blocking half of the S3 driver: boto3 is called from here only, in worker threads.

Every call is one ``trio.to_thread.run_sync`` hop through the client's CapacityLimiter, never
abandoned on cancellation (a request always finishes, so a cancelled caller cannot leave an
upload half-known; botocore's socket timeouts bound how long that takes). Response bodies are
read 4 MiB per hop (PITFALLS.md: smaller hops cost throughput).

Why boto3 in threads and not botocore's signer on httpx: measured with
``bench/s3_client_bench.py`` (256 MiB against moto on this machine), boto3 streamed a GET
faster and with less CPU of ours than httpx (urllib3 reads straight into 4 MiB buffers; httpx
goes through h11 and trio 1 MiB at a time), and a multipart PUT was bounded by the server for
both with the client's CPU alike. boto3 also brings what a hand-written REST client would have
to grow: XML bodies, S3's 200-with-an-error answers, retries with backoff on 500/503/SlowDown,
addressing styles, presigning and the AWS credential chain.

Configuration, explicit so that the environment does not change it behind our back: the
region and endpoint of the storage URL (``configured endpoint URLs`` from ``AWS_ENDPOINT_URL*``
ignored), path-style addressing with an explicit endpoint, no proxy from the environment, 5 s
to connect and 30 s per socket read, botocore's "standard" retries (3 attempts), and payloads
not SHA-256-signed even over plain http (the default over https): integrity comes from the
CRC32 checksum botocore sends with every upload, which the server verifies, and the registry
checks digests itself. Credentials given explicitly win; without them botocore's default chain
(its own environment variables, config files, instance or container credentials) applies.

Errors: a missing object is :class:`PathNotFound`, a failed ``If-Match``/``If-None-Match`` is
:class:`ConditionFailed`; everything else botocore raises (an error answer, a connection
failure, a timeout, a short body) is a :class:`StorageError` naming the key, never the
credentials.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions
import trio
from botocore.config import Config

from core.errors import PathNotFound, StorageError
from core.storage.location import S3Credentials, S3Location

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3.client import S3Client as Boto3S3Client

T = TypeVar("T")

DEFAULT_MAX_THREADS = 16
#: Streaming readers each hold a pooled connection between reads, not a thread.
DEFAULT_MAX_CONNECTIONS = 64
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 30
#: DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000

_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_CONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


class ConditionFailed(StorageError):
    """A conditional write or read lost: the object changed (or appeared) since it was read."""


class RangeNotSatisfiable(StorageError):
    """A ranged GET starting at or past the end of the object (or any range of an empty one)."""


class UploadGone(StorageError):
    """The multipart upload was completed or aborted (by another process, or the sweep)."""


@dataclass(frozen=True, slots=True)
class ObjectHead:
    size: int
    etag: str
    modified: float  # POSIX timestamp
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ListedObject:
    key: str
    size: int
    modified: float


@dataclass(frozen=True, slots=True)
class Listing:
    objects: list[ListedObject]
    #: With a delimiter: the "directories" (each ends with the delimiter).
    prefixes: list[str]


@dataclass(frozen=True, slots=True)
class PendingUpload:
    key: str
    upload_id: str
    initiated: float


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING_CODES:
            raise PathNotFound(f"no such object: {what}") from exc
        if code in _CONDITION_CODES or status == 412:
            raise ConditionFailed(f"{what}: changed meanwhile") from exc
        if code == "InvalidRange" or status == 416:
            raise RangeNotSatisfiable(f"{what}: range not satisfiable") from exc
        if code == "NoSuchUpload":
            raise UploadGone(f"{what}: multipart upload gone") from exc
        raise StorageError(f"{what}: S3 answered {status} {code}".rstrip()) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _timestamp(value: datetime) -> float:
    return value.timestamp()  # botocore parses dates into timezone-aware datetimes


def _client(
    location: S3Location, credentials: S3Credentials | None, max_connections: int
) -> Boto3S3Client:
    config = Config(
        region_name=location.region,
        signature_version="s3v4",
        s3={
            # On AWS, virtual-hosted unless the bucket name cannot be a host name (dots).
            "addressing_style": "path" if location.path_style else "auto",
            "payload_signing_enabled": False,
        },
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        max_pool_connections=max_connections,
        proxies={},
        user_agent_extra="depot-registry",
        # In botocore since 1.31, not yet in botocore-stubs.
        ignore_configured_endpoint_urls=True,  # type: ignore[call-arg]
    )
    session = boto3.session.Session(
        aws_access_key_id=credentials.access_key_id if credentials else None,
        aws_secret_access_key=credentials.secret_access_key if credentials else None,
        aws_session_token=credentials.session_token if credentials else None,
        region_name=location.region,
    )
    return session.client("s3", endpoint_url=location.endpoint, config=config, verify=True)


def _read_fully(body: StreamingBody, count: int) -> bytes:
    pieces: list[bytes] = []
    while count > 0:
        piece = body.read(count)
        if not piece:
            break
        pieces.append(piece)
        count -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class ObjectStream:
    """An open GET's body, read in thread hops. Close it (``aclose``) to free the connection."""

    def __init__(self, body: StreamingBody, key: str, limiter: trio.CapacityLimiter) -> None:
        self._body = body
        self._key = key
        self._limiter = limiter

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``: fewer only at the end of the body; ``b""`` after it."""
        with _translated(self._key):
            return await trio.to_thread.run_sync(
                _read_fully, self._body, max_bytes, limiter=self._limiter
            )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), _translated(self._key):
            await trio.to_thread.run_sync(self._body.close, limiter=self._limiter)


class S3Client:
    """The S3 calls the driver makes, on one bucket, as async methods."""

    def __init__(
        self,
        location: S3Location,
        credentials: S3Credentials | None,
        *,
        max_threads: int = DEFAULT_MAX_THREADS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.bucket = location.bucket
        self._client = _client(location, credentials, max_connections)
        self._limiter = trio.CapacityLimiter(max_threads)

    async def _call(self, what: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        with _translated(what):
            return await trio.to_thread.run_sync(partial(fn, **kwargs), limiter=self._limiter)

    async def check_bucket(self) -> None:
        """Fail (StorageError) unless the bucket exists and answers us."""
        try:
            await self._call(self.bucket, self._client.head_bucket, Bucket=self.bucket)
        except PathNotFound as exc:
            raise StorageError(f"bucket {self.bucket!r} does not exist") from exc

    async def head(self, key: str) -> ObjectHead:
        answer = await self._call(key, self._client.head_object, Bucket=self.bucket, Key=key)
        return ObjectHead(
            size=answer["ContentLength"],
            etag=answer["ETag"],
            modified=_timestamp(answer["LastModified"]),
            metadata=answer.get("Metadata", {}),
        )

    async def exists(self, key: str) -> bool:
        try:
            await self.head(key)
        except PathNotFound:
            return False
        return True

    async def open_stream(
        self, key: str, offset: int = 0, length: int | None = None, *, if_match: str | None = None
    ) -> tuple[ObjectStream, ObjectHead]:
        """GET from ``offset`` (``length`` bytes, or to the end). The head's ``size`` is the
        whole object's. An offset at or past the end answers 416: StorageError."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        answer = await self._call(key, self._client.get_object, **kwargs)
        size = answer["ContentLength"]
        content_range = answer.get("ContentRange")
        if content_range:  # "bytes 10-99/100"
            size = int(content_range.rpartition("/")[2])
        head = ObjectHead(
            size=size,
            etag=answer["ETag"],
            modified=_timestamp(answer["LastModified"]),
            metadata=answer.get("Metadata", {}),
        )
        return ObjectStream(answer["Body"], key, self._limiter), head

    async def get(self, key: str, *, if_match: str | None = None) -> tuple[bytes, ObjectHead]:
        """A whole (small) object: manifests, and what ``StorageDriver.get`` is used for."""
        stream, head = await self.open_stream(key, if_match=if_match)
        try:
            data = await stream.read(head.size) if head.size else b""
        finally:
            await stream.aclose()
        return data, head

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """PutObject; returns the new ETag. ``if_none_match`` creates only if absent."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data}
        if metadata:
            kwargs["Metadata"] = dict(metadata)
        if content_type:
            kwargs["ContentType"] = content_type
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        answer = await self._call(key, self._client.put_object, **kwargs)
        return answer["ETag"]

    async def delete(self, key: str) -> None:
        await self._call(key, self._client.delete_object, Bucket=self.bucket, Key=key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            answer = await self._call(
                batch[0],
                self._client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"{first.get('Key')}: delete failed ({first.get('Code')}), "
                    f"{len(errors)} keys left"
                )

    async def copy(self, source: str, key: str, *, if_match: str | None = None) -> None:
        """CopyObject (server-side, up to 5 GiB): ``key`` appears whole or not at all."""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "CopySource": {"Bucket": self.bucket, "Key": source},
        }
        if if_match is not None:
            kwargs["CopySourceIfMatch"] = if_match
        await self._call(f"{source} -> {key}", self._client.copy_object, **kwargs)

    async def create_multipart(self, key: str) -> str:
        answer = await self._call(
            key, self._client.create_multipart_upload, Bucket=self.bucket, Key=key
        )
        return answer["UploadId"]

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        answer = await self._call(
            f"{key} part {number}",
            self._client.upload_part,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return answer["ETag"]

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        number: int,
        source: str,
        first: int,
        last: int,
        *,
        if_match: str | None = None,
    ) -> str:
        """UploadPartCopy of ``source`` bytes ``first..last`` (inclusive), server-side."""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "CopySource": {"Bucket": self.bucket, "Key": source},
            "CopySourceRange": f"bytes={first}-{last}",
        }
        if if_match is not None:
            kwargs["CopySourceIfMatch"] = if_match
        answer = await self._call(
            f"{source} -> {key} part {number}", self._client.upload_part_copy, **kwargs
        )
        return answer["CopyPartResult"]["ETag"]

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        """Publish the upload under ``key``, atomically (nothing is visible before)."""
        await self._call(
            key,
            self._client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._call(
                key,
                self._client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except UploadGone:
            pass  # already aborted or completed

    async def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        """Multipart uploads started and neither completed nor aborted, under ``prefix``."""
        found: list[PendingUpload] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            answer = await self._call(prefix or "/", self._client.list_multipart_uploads, **kwargs)
            for item in answer.get("Uploads", []):
                found.append(
                    PendingUpload(item["Key"], item["UploadId"], _timestamp(item["Initiated"]))
                )
            if not answer.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = answer.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = answer.get("NextUploadIdMarker", "")

    def presign_get(self, key: str, expires_seconds: int) -> str:
        """A URL that GETs ``key`` without credentials until it expires (signing only, no
        request: nothing blocks)."""
        with _translated(key):
            return self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=expires_seconds,
            )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._client.close, limiter=self._limiter)

    # Last: inside the class body, the name ``list`` means this method from here on.
    async def list(
        self, prefix: str, *, delimiter: str | None = None, max_keys: int | None = None
    ) -> Listing:
        """Every object (and with ``delimiter``, every common prefix) under ``prefix``,
        following continuation tokens; only the first ``max_keys`` when given."""
        objects: list[ListedObject] = []
        prefixes: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter is not None:
            kwargs["Delimiter"] = delimiter
        if max_keys is not None:
            kwargs["MaxKeys"] = max_keys
        while True:
            answer = await self._call(prefix or "/", self._client.list_objects_v2, **kwargs)
            for item in answer.get("Contents", []):
                objects.append(
                    ListedObject(item["Key"], item["Size"], _timestamp(item["LastModified"]))
                )
            prefixes.extend(p["Prefix"] for p in answer.get("CommonPrefixes", []))
            token = answer.get("NextContinuationToken")
            if max_keys is not None or not answer.get("IsTruncated") or not token:
                return Listing(objects, prefixes)
            kwargs["ContinuationToken"] = token

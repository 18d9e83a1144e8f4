"""Every exception the project raises on purpose, under one root: :class:`DepotError`.

::

    DepotError                            root; never raised itself
    ├── RegistryError                     an answer for a client: OCI code + HTTP status
    │   ├── BlobUnknown                   404 BLOB_UNKNOWN
    │   ├── BlobUploadInvalid             400 BLOB_UPLOAD_INVALID
    │   ├── BlobUploadUnknown             404 BLOB_UPLOAD_UNKNOWN
    │   ├── DigestInvalid                 400 DIGEST_INVALID
    │   ├── ManifestBlobUnknown           400 MANIFEST_BLOB_UNKNOWN
    │   ├── ManifestInvalid               400 MANIFEST_INVALID
    │   ├── ManifestUnknown               404 MANIFEST_UNKNOWN
    │   ├── NameInvalid                   400 NAME_INVALID
    │   ├── NameUnknown                   404 NAME_UNKNOWN
    │   ├── SizeInvalid                   400 SIZE_INVALID
    │   ├── TooLarge                      413 SIZE_INVALID    (over a size limit)
    │   ├── RangeInvalid                  416 RANGE_INVALID
    │   ├── Unauthorized                  401 UNAUTHORIZED
    │   ├── Denied                        403 DENIED
    │   ├── Unsupported                   405 UNSUPPORTED
    │   ├── NotFound                      404 NOT_FOUND       (no such endpoint or object)
    │   ├── Conflict                      409 CONFLICT        (management API: name taken)
    │   ├── Gone                          410 GONE            (an event feed position pruned)
    │   ├── RequestTimeout                408 REQUEST_TIMEOUT (no request body byte in time)
    │   ├── TooManyRequests               429 TOOMANYREQUESTS
    │   ├── Unavailable                   503 UNAVAILABLE     (a dependency failed: retry later)
    │   ├── PaginationNumberInvalid       400 PAGINATION_NUMBER_INVALID
    │   └── BadRequest                    400 INVALID_REQUEST (management API: bad JSON input)
    ├── InputError                        a value from outside (API body, CLI flag, setting,
    │   │                                 file) is unacceptable: the caller's mistake
    │   ├── ConfigError                   settings: unknown key, bad value, unreadable file
    │   ├── AlreadyExists                 the name is taken (org slug, user name)
    │   └── UnknownObject                 names an org, project, user or token that is absent
    └── BackendError                      a dependency failed; retrying later may work
        ├── StorageError                  the blob storage driver
        │   └── PathNotFound              (absence, as the driver reports it)
        ├── DatabaseError                 the metadata database (locked, lost, disk full)
        ├── CacheError                    the edge's disk cache
        └── BodyAborted                   a response body's source failed after it started

Programming errors are not in the tree: a ``ValueError``, ``TypeError`` or ``AssertionError``
is a bug and renders as a logged 500, never as a 4xx.

Each layer translates what it receives at its boundary with ``raise ... from exc``:
storage, SQL, httpx, diskcache and Redis exceptions never leave their adapter module. The web
layer (:mod:`core.web.errors`) renders a ``RegistryError`` as the OCI envelope, an
``InputError`` as 400 (``UnknownObject`` 404, ``AlreadyExists`` 409) and a ``BackendError``
as 503 ``UNAVAILABLE`` with ``Retry-After`` (logged; its text never reaches the client).
"""

from __future__ import annotations

from typing import Any, ClassVar


class DepotError(Exception):
    """The root of every exception this project raises on purpose."""


class RegistryError(DepotError):
    code: ClassVar[str] = "UNKNOWN"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "unknown error"

    def __init__(
        self,
        message: str | None = None,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def envelope(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        entry["detail"] = self.detail if self.detail is not None else {}
        return {"errors": [entry]}


class BlobUnknown(RegistryError):
    code, status, default_message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code, status, default_message = "BLOB_UPLOAD_INVALID", 400, "blob upload invalid"


class BlobUploadUnknown(RegistryError):
    code, status, default_message = "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"


class DigestInvalid(RegistryError):
    code, status = "DIGEST_INVALID", 400
    default_message = "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    code, status = "MANIFEST_BLOB_UNKNOWN", 400
    default_message = "manifest references a manifest or blob unknown to registry"


class ManifestInvalid(RegistryError):
    code, status, default_message = "MANIFEST_INVALID", 400, "manifest invalid"


class ManifestUnknown(RegistryError):
    code, status, default_message = "MANIFEST_UNKNOWN", 404, "manifest unknown to registry"


class NameInvalid(RegistryError):
    code, status, default_message = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(RegistryError):
    code, status, default_message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class SizeInvalid(RegistryError):
    code, status = "SIZE_INVALID", 400
    default_message = "provided length did not match content length"


class TooLarge(RegistryError):
    code, status, default_message = "SIZE_INVALID", 413, "content exceeds the size limit"


class RangeInvalid(RegistryError):
    code, status, default_message = "RANGE_INVALID", 416, "invalid content range"


class Unauthorized(RegistryError):
    code, status, default_message = "UNAUTHORIZED", 401, "authentication required"


class Denied(RegistryError):
    code, status, default_message = "DENIED", 403, "requested access to the resource is denied"


class Unsupported(RegistryError):
    code, status, default_message = "UNSUPPORTED", 405, "the operation is unsupported"


class NotFound(RegistryError):
    code, status, default_message = "NOT_FOUND", 404, "no such endpoint"


class Conflict(RegistryError):
    code, status, default_message = "CONFLICT", 409, "the name is already taken"


class Gone(RegistryError):
    """What was asked for existed once and no longer does: an event feed position older
    than the log keeps (the follower must revalidate everything it holds)."""

    code, status, default_message = "GONE", 410, "the requested position is no longer kept"


class RequestTimeout(RegistryError):
    code, status, default_message = "REQUEST_TIMEOUT", 408, "the request body stopped arriving"


class TooManyRequests(RegistryError):
    code, status, default_message = "TOOMANYREQUESTS", 429, "too many requests"


class Unavailable(RegistryError):
    code, status, default_message = "UNAVAILABLE", 503, "service unavailable"


class PaginationNumberInvalid(RegistryError):
    code, status, default_message = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results"


class BadRequest(RegistryError):
    code, status, default_message = "INVALID_REQUEST", 400, "invalid request"


# -- not answers: failures and refusals that a boundary translates --------------------------


class InputError(DepotError):
    """A value that came from outside (an API body, a CLI flag, a setting, a file) is not
    acceptable. The message is written for the person who supplied it."""


class ConfigError(InputError):
    """Settings that cannot be used: an unknown key, a bad value, an unreadable file."""


class AlreadyExists(InputError):
    """The name is taken: an org slug or a user name that already exists."""


class UnknownObject(InputError):
    """The operation names an org, project, user or token that does not exist."""


class BackendError(DepotError):
    """A dependency (storage, database, cache, coordination) failed or refused. Its message
    is for the operator's log; a client sees 503 ``UNAVAILABLE``."""


class StorageError(BackendError):
    """A storage driver failure (I/O error, corruption)."""


class PathNotFound(StorageError):
    """The storage path does not exist (the driver's way of reporting absence)."""


class DatabaseError(BackendError):
    """The metadata database failed: unreachable, locked past the busy timeout, out of space,
    or closed."""


class CacheError(BackendError):
    """The edge's disk cache failed."""


class BodyAborted(BackendError):
    """A response body's source failed after the response started: the connection must be
    cut (a short body under a Content-Length is how HTTP/1.1 says "this is incomplete")."""

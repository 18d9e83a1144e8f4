"""Registry errors: one hierarchy, one OCI error code per class.

::

    RegistryError                     (500, base; never raised for client input)
    ├── BlobUnknown                   404 BLOB_UNKNOWN
    ├── BlobUploadInvalid             400 BLOB_UPLOAD_INVALID
    ├── BlobUploadUnknown             404 BLOB_UPLOAD_UNKNOWN
    ├── DigestInvalid                 400 DIGEST_INVALID
    ├── ManifestBlobUnknown           400 MANIFEST_BLOB_UNKNOWN
    ├── ManifestInvalid               400 MANIFEST_INVALID
    ├── ManifestUnknown               404 MANIFEST_UNKNOWN
    ├── NameInvalid                   400 NAME_INVALID
    ├── NameUnknown                   404 NAME_UNKNOWN
    ├── SizeInvalid                   400 SIZE_INVALID
    ├── TooLarge                      413 SIZE_INVALID   (manifest over the size limit)
    ├── RangeInvalid                  416 RANGE_INVALID
    ├── Unauthorized                  401 UNAUTHORIZED
    ├── Denied                        403 DENIED
    ├── Unsupported                   405 UNSUPPORTED
    ├── NotFound                      404 NOT_FOUND       (no such endpoint)
    ├── TooManyRequests               429 TOOMANYREQUESTS
    ├── Unavailable                   503 UNAVAILABLE
    ├── PaginationNumberInvalid       400 PAGINATION_NUMBER_INVALID
    └── BadRequest                    400 INVALID_REQUEST  (management API: bad JSON input)

Lower layers (storage, SQL, httpx) translate their own exceptions into these at their
boundary with ``raise ... from exc``; the web layer renders them with
:func:`core.web.errors.render`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RegistryError(Exception):
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


class TooManyRequests(RegistryError):
    code, status, default_message = "TOOMANYREQUESTS", 429, "too many requests"


class Unavailable(RegistryError):
    code, status, default_message = "UNAVAILABLE", 503, "service unavailable"


class PaginationNumberInvalid(RegistryError):
    code, status, default_message = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results"


class BadRequest(RegistryError):
    code, status, default_message = "INVALID_REQUEST", 400, "invalid request"

"""What a registry's error answer, or a failed exchange, means as a :mod:`core.errors` value.

This is where the client's httpx boundary is drawn: :func:`transport_boundary` turns every
httpx exception into ``Unavailable`` (``raise ... from``), and :func:`answer_error` maps an
answer's status and OCI error envelope:

- 401 → ``Unauthorized``, or ``Denied`` when the registry refused valid credentials for
  lack of scope (``error="insufficient_scope"`` after a token was fetched with them);
- 403 → ``Denied``; 429 → ``TooManyRequests``; 5xx → ``Unavailable`` (both carry the
  registry's ``Retry-After``);
- 404 → the ``*Unknown`` its OCI code names, else the one the operation implies;
- any other status with a known OCI code → that code's class; 405, 413 and 416 without one →
  ``Unsupported``, ``TooLarge``, ``RangeInvalid``; anything else → ``Unavailable``.

The registry's own message and detail are kept verbatim: a user must see what the target
said (``denied: requested access to the resource is denied``), not a generic failure.
"""

from __future__ import annotations

import datetime
import email.utils
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from core import errors
from core.errors import RegistryError, Unavailable

#: Error answers are read up to this size; the rest is ignored.
MAX_ERROR_BYTES = 64 * 1024

# Every OCI code we have a class for. Status-driven classes (401, 403, 429, 5xx) are decided
# by the status alone; 413 is SIZE_INVALID's status for an over-limit body (TooLarge).
_BY_CODE: dict[str, type[RegistryError]] = {
    cls.code: cls
    for cls in (
        errors.BlobUnknown,
        errors.BlobUploadInvalid,
        errors.BlobUploadUnknown,
        errors.DigestInvalid,
        errors.ManifestBlobUnknown,
        errors.ManifestInvalid,
        errors.ManifestUnknown,
        errors.NameInvalid,
        errors.NameUnknown,
        errors.SizeInvalid,
        errors.RangeInvalid,
        errors.Unsupported,
        errors.PaginationNumberInvalid,
    )
}
# Answers without a code we know: the class their status implies, where one does.
_BY_STATUS: dict[int, type[RegistryError]] = {
    405: errors.Unsupported,
    416: errors.RangeInvalid,
}
_NOT_FOUND_CODES = frozenset(
    {"BLOB_UNKNOWN", "BLOB_UPLOAD_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN"}
)


def answer_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    not_found: type[RegistryError],
    host: str,
    insufficient_scope: bool = False,
) -> RegistryError:
    """The error that a non-success answer of ``host`` means.

    ``not_found`` is what a 404 without a known code means for the operation asked;
    ``insufficient_scope``: the 401 came although credentials were used (see module doc).
    """
    code, message, detail = oci_error(body)
    retry = retry_after(headers)
    if status == 401:
        cls: type[RegistryError] = errors.Denied if insufficient_scope else errors.Unauthorized
        return cls(message, detail=detail)
    if status == 403:
        return errors.Denied(message, detail=detail)
    if status == 429:
        return errors.TooManyRequests(message, detail=detail, headers=retry)
    if status >= 500:
        text = message or f"{host} answered HTTP {status}"
        return Unavailable(text, detail=detail or {"status": status}, headers=retry)
    if status == 404:
        found = _BY_CODE[code] if code in _NOT_FOUND_CODES else not_found
        return found(message, detail=detail)
    if status == 413:
        return errors.TooLarge(message, detail=detail)
    known = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if known is not None:
        return known(message, detail=detail)
    text = f"unexpected answer from {host}: HTTP {status}" + (f": {message}" if message else "")
    return Unavailable(text, detail={"status": status})


def oci_error(body: bytes) -> tuple[str | None, str | None, Any]:
    """(code, message, detail) of the first entry of an OCI error envelope; a token service's
    ``details`` / ``error_description`` / ``message`` as the message otherwise."""
    try:
        document = json.loads(body)
    except ValueError:
        return None, None, None
    if not isinstance(document, dict):
        return None, None, None
    entries = document.get("errors")
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        entry = entries[0]
        code, message = entry.get("code"), entry.get("message")
        return (
            code if isinstance(code, str) else None,
            message if isinstance(message, str) and message else None,
            entry.get("detail"),
        )
    for key in ("details", "error_description", "message", "error"):
        value = document.get(key)
        if isinstance(value, str) and value:
            return None, value, None
    return None, None, None


def retry_after(headers: Mapping[str, str]) -> dict[str, str]:
    """``{"Retry-After": seconds}`` when the answer has a usable one (delay seconds or an
    HTTP date, which becomes seconds from now), else ``{}``."""
    value = headers.get("Retry-After", "").strip()
    if value.isascii() and value.isdigit():
        return {"Retry-After": value}
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return {}
    if when.tzinfo is None:
        return {}
    seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    return {"Retry-After": str(max(0, int(seconds)))}


@contextmanager
def transport_boundary(host: str, during: str) -> Iterator[None]:
    """httpx failures (connection refused or reset, a read or write timeout, a malformed
    answer or URL) as ``Unavailable``: no httpx exception leaves the client. httpx's
    ``StreamError`` family (a body read twice...) is a bug here and is left alone."""
    try:
        yield
    except httpx.TimeoutException as exc:
        detail = {"during": during, "error": type(exc).__name__}
        raise Unavailable(f"{host} did not answer in time", detail=detail) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        detail = {"during": during, "error": type(exc).__name__}
        raise Unavailable(f"{host} unreachable", detail=detail) from exc

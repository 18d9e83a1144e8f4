"""Reading a small JSON request body, and typed reads of its fields, failing as
``BadRequest`` (400 INVALID_REQUEST) with the OCI error envelope.

Only ``application/json`` (or ``+json``) is read: a cross-site form post cannot send that
type without a CORS preflight. Bodies are capped (413 beyond); NaN and Infinity, which
Python's json module would accept, are refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from quart import request

from core.errors import BadRequest, TooLarge

MAX_BODY_BYTES = 64 * 1024
MAX_TEXT_LENGTH = 200


async def read_json_object(limit: int = MAX_BODY_BYTES) -> JsonObject:
    """The request body as a JSON object, at most ``limit`` bytes."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise BadRequest("the body must be JSON, sent as Content-Type: application/json")
    length = request.content_length
    if length is not None and length > limit:
        raise TooLarge(detail={"limit": limit})
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > limit:
            raise TooLarge(detail={"limit": limit})
    try:
        document = json.loads(bytes(data), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("the body is not valid JSON") from exc
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return JsonObject(document)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class JsonObject:
    """Typed reads of a JSON object's fields; :meth:`done` refuses any field not read (a
    misspelt optional field is an error, not silently ignored)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document
        self._read: set[str] = set()

    def _get(self, field: str) -> Any:
        self._read.add(field)
        return self._document.get(field)

    def done(self) -> None:
        unknown = sorted(set(self._document) - self._read)
        if unknown:
            raise BadRequest("unknown fields", detail={"fields": [f[:100] for f in unknown[:20]]})

    def optional_text(self, field: str, *, limit: int = MAX_TEXT_LENGTH) -> str | None:
        """A string of printable characters, at most ``limit``; None when absent or null."""
        value = self._get(field)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > limit or not value.isprintable():
            raise BadRequest(f"{field} must be a string of at most {limit} printable characters")
        return value

    def text(self, field: str, *, limit: int = MAX_TEXT_LENGTH) -> str:
        """A required, non-blank string."""
        value = self.optional_text(field, limit=limit)
        if not value or not value.strip():
            raise BadRequest(f"{field} is required")
        return value

    def boolean(self, field: str) -> bool:
        value = self._get(field)
        if not isinstance(value, bool):
            raise BadRequest(f"{field} must be true or false")
        return value

    def optional_positive(self, field: str, *, maximum: float) -> float | None:
        """A finite number in (0, ``maximum``]; None when absent or null."""
        value = self._get(field)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 < value <= maximum
        ):
            raise BadRequest(f"{field} must be a number above 0 and at most {maximum:g}")
        return float(value)

    def string_map(self, field: str, *, max_entries: int, max_value: int) -> dict[str, str]:
        """A flat object of 1 to ``max_entries`` non-empty names to non-empty strings."""
        value = self._get(field)
        if (
            not isinstance(value, dict)
            or not 0 < len(value) <= max_entries
            or not all(
                0 < len(key) <= MAX_TEXT_LENGTH
                and isinstance(item, str)
                and 0 < len(item) <= max_value
                for key, item in value.items()
            )
        ):
            raise BadRequest(
                f"{field} must be an object of 1 to {max_entries} names, each to a string"
            )
        return dict(value)

    def choices(self, field: str, allowed: Iterable[str]) -> frozenset[str]:
        """A non-empty list of strings, each one of ``allowed``."""
        options = frozenset(allowed)
        value = self._get(field)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, str) and item in options for item in value)
        ):
            raise BadRequest(f"{field} must be a list of some of {', '.join(sorted(options))}")
        return frozenset(value)

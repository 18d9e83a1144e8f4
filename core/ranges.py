"""HTTP byte ranges: the ``Range`` request header on blob GETs and the ``Content-Range``
header on chunked upload PATCHes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import RangeInvalid

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_CONTENT_RANGE = re.compile(r"^\s*(?:bytes[ =])?\s*(\d+)\s*-\s*(\d+)\s*(?:/\s*(\d+|\*))?\s*$")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Inclusive byte positions, as HTTP writes them."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Resolve a ``Range`` header against an object of ``size`` bytes.

    Returns None when the whole object should be served: no header, a header we do not
    understand (RFC 9110 says ignore it), or several ranges (we may answer those with
    the full body). Raises :class:`RangeInvalid` (416) when the range is well formed but
    unsatisfiable.
    """
    if header is None or "," in header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    start_text, end_text = match.groups()
    if not start_text and not end_text:
        return None
    unsatisfiable = RangeInvalid(
        "requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
    )
    if not start_text:  # suffix: the last N bytes
        suffix = int(end_text)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    first = int(start_text)
    last = int(end_text) if end_text else size - 1
    if end_text and last < first:
        return None  # syntactically invalid: ignore
    if first >= size:
        raise unsatisfiable
    return ByteRange(first, min(last, size - 1))


def parse_content_range(header: str) -> ByteRange:
    """Parse a chunk's ``Content-Range`` (``<start>-<end>``, as the OCI spec writes it)."""
    match = _CONTENT_RANGE.match(header)
    if match is None:
        raise RangeInvalid("malformed Content-Range", detail={"Content-Range": header[:100]})
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        raise RangeInvalid("malformed Content-Range", detail={"Content-Range": header[:100]})
    return ByteRange(first, last)

"""HTTP byte ranges: the ``Range`` request header on blob GETs and the ``Content-Range``
header on chunked upload PATCHes.

Positions are ASCII digits only (``\\d`` would also take Arabic-Indic and other Unicode
digits) and never converted with more digits than any object size needs: ``int()`` of a
4,301-digit string raises (Python's int-string limit), and a client must not reach that.
The headers are split, not matched with a regular expression: optional whitespace on both
sides of a number made one backtrack quadratically (a 16 KiB header took 0.7 s).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import RangeInvalid

_OWS = " \t"  # HTTP's optional whitespace
#: More significant digits than this is a position past any object (sizes are < 2**63).
MAX_POSITION_DIGITS = 19
BEYOND_ANY_SIZE: int = 10**MAX_POSITION_DIGITS


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


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _position(digits: str) -> int:
    """ASCII digits as a number; :data:`BEYOND_ANY_SIZE` for one past any object."""
    significant = digits.lstrip("0")
    if len(significant) > MAX_POSITION_DIGITS:
        return BEYOND_ANY_SIZE
    return int(significant or "0")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Resolve a ``Range`` header against an object of ``size`` bytes.

    Returns None when the whole object should be served: no header, a header we do not
    understand (RFC 9110 says ignore it), or several ranges (we may answer those with
    the full body). Raises :class:`RangeInvalid` (416) when the range is well formed but
    unsatisfiable.
    """
    if header is None or "," in header:
        return None
    unit, equals, spec = header.partition("=")
    start_text, dash, end_text = spec.partition("-")
    start_text, end_text = start_text.strip(_OWS), end_text.strip(_OWS)
    if unit.strip(_OWS) != "bytes" or not equals or not dash:
        return None
    if not (start_text or end_text) or not all(
        _is_digits(text) for text in (start_text, end_text) if text
    ):
        return None
    unsatisfiable = RangeInvalid(
        "requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
    )
    if not start_text:  # suffix: the last N bytes
        suffix = _position(end_text)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    first = _position(start_text)
    last = _position(end_text) if end_text else size - 1
    if end_text and last < first:
        return None  # syntactically invalid: ignore
    if first >= size:
        raise unsatisfiable
    return ByteRange(first, min(last, size - 1))


def parse_content_range(header: str) -> ByteRange:
    """Parse a chunk's ``Content-Range`` (``<start>-<end>``, as the OCI spec writes it)."""
    malformed = RangeInvalid("malformed Content-Range", detail={"Content-Range": header[:100]})
    text = header.strip(_OWS)
    if text.startswith(("bytes ", "bytes=")):
        text = text[len("bytes ") :].lstrip(_OWS)
    span, slash, total = text.partition("/")
    first_text, dash, last_text = span.partition("-")
    first_text, last_text, total = (t.strip(_OWS) for t in (first_text, last_text, total))
    if not (dash and _is_digits(first_text) and _is_digits(last_text)):
        raise malformed
    if slash and total != "*" and not _is_digits(total):
        raise malformed
    first, last = _position(first_text), _position(last_text)
    if last < first:
        raise malformed
    # A position past any size is kept as BEYOND_ANY_SIZE: the upload then refuses the
    # chunk for what it is (out of order, or a length its body does not have).
    return ByteRange(first, last)

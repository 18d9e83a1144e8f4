"""``n``/``last`` pagination of tag lists and the catalog, with RFC 5988 ``Link`` headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from core.errors import PaginationNumberInvalid

MAX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Page:
    n: int  # entries to return; one more is fetched to learn whether a next page exists
    last: str | None
    explicit: bool  # the client asked for n


def parse_page(args: Mapping[str, str], default: int = MAX_PAGE) -> Page:
    raw_n, last = args.get("n"), args.get("last") or None
    if raw_n is None or raw_n == "":
        return Page(default, last, False)
    if not (raw_n.isascii() and raw_n.isdigit()):  # isdigit alone admits non-ASCII digits
        raise PaginationNumberInvalid(detail={"n": raw_n[:50]})
    # Past MAX_PAGE the value is capped anyway: never int() thousands of digits (that raises).
    significant = raw_n.lstrip("0")
    n = MAX_PAGE if len(significant) > len(str(MAX_PAGE)) else int(significant or "0")
    return Page(min(n, MAX_PAGE), last, True)


def next_link(path: str, page: Page, entries: list[str]) -> str | None:
    """The Link header when ``entries`` (fetched with n+1) has more than a page."""
    if len(entries) <= page.n or page.n == 0:
        return None
    query = urlencode({"n": page.n, "last": entries[page.n - 1]})
    return f'<{path}?{query}>; rel="next"'

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import PaginationNumberInvalid, RangeInvalid
from core.pagination import Page, next_link, parse_page
from core.ranges import ByteRange, parse_content_range, parse_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", ByteRange(0, 9)),
        ("bytes=5-", ByteRange(5, 99)),
        ("bytes=-10", ByteRange(90, 99)),
        ("bytes=-1000", ByteRange(0, 99)),
        ("bytes=90-1000", ByteRange(90, 99)),
        ("bytes=0-0", ByteRange(0, 0)),
        ("bytes=0-1,5-6", None),  # several ranges: serve it whole
        ("items=0-1", None),  # unknown unit: ignored
        ("bytes=9-3", None),  # invalid: ignored
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_range_carries_content_range(header: str) -> None:
    with pytest.raises(RangeInvalid) as info:
        parse_range(header, 100)
    assert info.value.status == 416
    assert info.value.headers["Content-Range"] == "bytes */100"


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 10_000))
def test_satisfiable_ranges_stay_inside_the_object(first: int, last: int, size: int) -> None:
    try:
        result = parse_range(f"bytes={first}-{last}", size)
    except RangeInvalid:
        assert first >= size
        return
    if result is not None:
        assert 0 <= result.first <= result.last < size
        assert result.content_range(size).endswith(f"/{size}")


def test_content_range() -> None:
    assert parse_content_range("0-1023") == ByteRange(0, 1023)
    assert parse_content_range("bytes 10-19/*") == ByteRange(10, 19)
    for bad in ["", "a-b", "5-1", "-5"]:
        with pytest.raises(RangeInvalid):
            parse_content_range(bad)


def test_pagination() -> None:
    assert parse_page({}).explicit is False
    page = parse_page({"n": "2", "last": "b"})
    assert page == Page(2, "b", True)
    with pytest.raises(PaginationNumberInvalid):
        parse_page({"n": "-1"})
    with pytest.raises(PaginationNumberInvalid):
        parse_page({"n": "x"})
    assert next_link("/v2/a/tags/list", Page(2, None, True), ["a", "b"]) is None
    link = next_link("/v2/a/tags/list", Page(2, None, True), ["a", "b", "c"])
    assert link == '</v2/a/tags/list?n=2&last=b>; rel="next"'

"""What a shield reads of the feed polls it passes through (edge/passthrough.py): how long
one may wait, and the position its answer brings the edge below to."""

from __future__ import annotations

import pytest

from edge.passthrough import FEED_MAX_WAIT_SECONDS, feed_last, feed_wait


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("8", 8.0),
        ("1.5", 1.5),
        (None, 0.0),
        ("", 0.0),
        ("-3", 0.0),
        ("nan", 0.0),
        ("inf", FEED_MAX_WAIT_SECONDS),
        ("1e9", FEED_MAX_WAIT_SECONDS),
        ("soon", 0.0),
    ],
)
def test_feed_wait_is_bounded(value: str | None, seconds: float) -> None:
    assert feed_wait(value) == seconds


@pytest.mark.parametrize(
    ("body", "last"),
    [
        (b'{"events": [], "last": 7}', 7),
        (b'{"events": [{"seq": 3}], "last": 3}', 3),
        (b'{"events": [], "last": true}', None),
        (b'{"events": [], "last": "7"}', None),
        (b'{"events": []}', None),
        (b"[1, 2]", None),
        (b"not json", None),
        (b"\xff\xfe", None),
    ],
)
def test_feed_last_reads_only_an_integer_position(body: bytes, last: int | None) -> None:
    assert feed_last(body) == last

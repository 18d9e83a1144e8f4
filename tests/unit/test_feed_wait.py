"""How long a shield lets a feed poll it passes through wait (edge/passthrough.py)."""

from __future__ import annotations

import pytest

from edge.passthrough import FEED_MAX_WAIT_SECONDS, feed_wait


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

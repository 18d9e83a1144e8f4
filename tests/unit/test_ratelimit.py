from origin.auth.ratelimit import FailureLimiter


def test_failures_are_limited_per_client_within_the_window() -> None:
    limiter = FailureLimiter(allowed=3, window_seconds=60)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("a", t) is None
        limiter.record_failure("a", t)
    assert limiter.retry_after("a", 3.0) == 57.0  # until the first failure leaves the window
    assert limiter.retry_after("b", 3.0) is None  # another client is unaffected
    assert limiter.retry_after("a", 60.5) is None  # the first failure has expired


def test_retry_after_is_at_least_one_second() -> None:
    limiter = FailureLimiter(allowed=1, window_seconds=10)
    limiter.record_failure("a", 0.0)
    assert limiter.retry_after("a", 9.99) == 1.0

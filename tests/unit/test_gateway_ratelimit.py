"""Gateway rate limits: a token bucket per API key, with Retry-After in whole seconds."""

from __future__ import annotations

from gateway_service.ratelimit import RateLimiter, TokenBucket


def test_a_full_bucket_allows_the_burst_then_refuses() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.check("k", 100.0) for _ in range(4)] == [0, 0, 0, 1]


def test_tokens_come_back_at_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        limiter.check("k", 0.0)
    assert limiter.check("k", 0.25) == 1  # half a token so far
    assert limiter.check("k", 0.5) == 0  # one token after 0.5 s at 2/s
    assert limiter.check("k", 0.5) == 1


def test_an_idle_key_never_saves_up_more_than_the_burst() -> None:
    limiter = RateLimiter(rate=10.0, burst=2)
    limiter.check("k", 0.0)
    assert [limiter.check("k", 3600.0) for _ in range(3)] == [0, 0, 1]


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    limiter = RateLimiter(rate=0.1, burst=1)
    assert limiter.check("k", 0.0) == 0
    assert limiter.check("k", 0.0) == 10
    assert limiter.check("k", 5.5) == 5  # 4.5 s to go, said as 5


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.check("a", 0.0) == 0
    assert limiter.check("a", 0.0) == 1
    assert limiter.check("b", 0.0) == 0


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, tokens=0.0, updated=10.0)
    assert bucket.take(5.0) == 1.0
    assert bucket.take(11.0) == 0.0

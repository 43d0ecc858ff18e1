"""Token-bucket rate limits per API key. Pure: the caller passes the (monotonic) time in."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """Holds up to `burst` tokens, refilled at `rate` per second; a request takes one."""

    rate: float
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take a token: 0 if one was there, otherwise the seconds until one will be."""
        elapsed = max(0.0, now - self.updated)  # a clock step backwards refills nothing
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per API key, in the memory of this gateway process.

    Limits are per process, not global: a connection stays with one process, but across
    connections a key may make up to the configured rate times the processes of all replicas
    (CRM_GATEWAY_API_PROCESSES each). Buckets are forgotten on restart (every key starts with a
    full burst).
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key_id: str, now: float) -> int:
        """0 when the request may go ahead, else the whole seconds to send in Retry-After."""
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = TokenBucket(
                self.rate, self.burst, float(self.burst), now
            )
        wait = bucket.take(now)
        return max(1, math.ceil(wait)) if wait > 0 else 0

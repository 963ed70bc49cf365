"""Rate limits in bytes per second: async waits around the pure token buckets.

One `RateLimiter` holds a process-wide bucket and one bucket per connection, each for egress and
ingress; `await limiter.take(conn_key, n)` returns when n bytes may be sent on that connection
without exceeding either rate. Time and sleeping come from a `Clock` (the loop's by default; a
`FakeClock` in tests, so rates can be checked exactly on a busy machine).
"""

from __future__ import annotations

from typing import Hashable

from meshcache.core.tokenbucket import TokenBucket
from meshcache.mesh.clock import Clock, LoopClock

CHUNK = 256 * 1024  # payloads are limited in chunks of this size


class RateLimiter:
    """Global and per-connection token buckets for one direction of traffic."""

    def __init__(self, rate: float = 0, per_connection: float = 0,
                 clock: Clock | None = None) -> None:
        self.rate = rate
        self.per_connection = per_connection
        self.clock: Clock = clock or LoopClock()
        self._global = TokenBucket(rate, burst_of(rate)) if rate else None
        self._conns: dict[Hashable, TokenBucket] = {}
        self.waits = 0  # times a transfer had to wait, and the seconds waited (metrics)
        self.waited = 0.0
        self.taken = 0  # bytes charged to the buckets (every limited byte passes here)

    @property
    def unlimited(self) -> bool:
        return self._global is None and not self.per_connection

    def forget(self, conn: Hashable) -> None:
        """Drop a closed connection's bucket."""
        self._conns.pop(conn, None)

    async def take(self, conn: Hashable, n: int) -> None:
        """Wait until `n` bytes fit both the global and this connection's rate."""
        if self.unlimited or n <= 0:
            return
        now = self.clock.now()
        self.taken += n
        delay = 0.0
        if self._global is not None:
            delay = max(delay, self._global.take(n, now))
        if self.per_connection:
            bucket = self._conns.get(conn)
            if bucket is None:
                bucket = self._conns[conn] = TokenBucket(self.per_connection,
                                                         burst_of(self.per_connection))
            delay = max(delay, bucket.take(n, now))
        if delay > 0:
            self.waits += 1
            self.waited += delay
            await self.clock.sleep(delay)


def burst_of(rate: float) -> float:
    """A burst of 50 ms of the rate (at least one chunk): smooth, yet few timer wake-ups."""
    return max(float(CHUNK), rate * 0.05)

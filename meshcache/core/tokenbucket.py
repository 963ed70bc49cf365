"""Token buckets for rate limits in bytes per second: pure, time passed in, delays handed out.

Debt model: `take(n, now)` always succeeds and returns how long the caller must wait before
sending. The level may go negative (debt), so one request larger than the burst still goes
through, and later takes pay for it. Over any long run the bytes allowed are at most
``burst + rate * elapsed``.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` bytes per second with up to `burst` bytes saved up; rate 0 or None is unlimited."""

    __slots__ = ("rate", "burst", "_level", "_last")

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        if rate is not None and (not math.isfinite(rate) or rate < 0):
            raise ValueError(f"rate must be a finite number >= 0, got {rate!r}")
        self.rate = float(rate or 0.0)
        if burst is None:
            burst = self.rate  # one second's worth
        if not math.isfinite(burst) or burst < 0 or (self.rate and burst <= 0):
            raise ValueError(f"burst must be a finite number > 0, got {burst!r}")
        self.burst = float(burst)
        self._level = self.burst  # starts full
        self._last: float | None = None

    @property
    def unlimited(self) -> bool:
        """True when the bucket never makes anyone wait."""
        return self.rate == 0.0

    def _refill(self, now: float) -> None:
        if self._last is None or now > self._last:
            if self._last is not None:
                self._level = min(self.burst, self._level + (now - self._last) * self.rate)
            self._last = now
        # a clock that goes backwards refills nothing

    def available(self, now: float) -> float:
        """Bytes that could be sent at `now` without waiting (negative while in debt)."""
        if self.unlimited:
            return math.inf
        self._refill(now)
        return self._level

    def take(self, n: float, now: float) -> float:
        """Charge `n` bytes at `now`; return the seconds to wait before sending them (>= 0)."""
        if n < 0:
            raise ValueError(f"cannot take {n} bytes")
        if self.unlimited:
            return 0.0
        self._refill(now)
        self._level -= n
        if self._level >= 0:
            return 0.0
        return -self._level / self.rate

    def set_rate(self, rate: float | None, now: float, burst: float | None = None) -> None:
        """Change the rate (and burst) from `now` on, keeping what was saved or owed."""
        self._refill(now)
        new = TokenBucket(rate, burst)
        self.rate, self.burst = new.rate, new.burst
        self._level = min(self._level, self.burst)

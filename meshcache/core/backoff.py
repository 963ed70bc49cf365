"""Retry delays that grow, pure: after each failed attempt the wait doubles from `first` up to
`cap`; a success starts over. Time is an argument, so a shell asks "when next?" and sleeps.

A node that starts before the node it joins through should find it within about a second of it
coming up, without knocking every second for ever: 1, 2, 4, ... s, then every `cap` seconds.
`jitter` spreads the waits of many nodes started at once (the caller passes a uniform draw).
"""

from __future__ import annotations

import math

__all__ = ["Backoff"]


class Backoff:
    """When to try again after `failures` failed attempts in a row."""

    __slots__ = ("first", "cap", "factor", "jitter", "failures", "next_at")

    def __init__(self, first: float = 1.0, cap: float = 30.0, factor: float = 2.0,
                 jitter: float = 0.0) -> None:
        if not (math.isfinite(first) and math.isfinite(cap)) or first <= 0 or cap < first:
            raise ValueError(f"need 0 < first <= cap, got first={first!r} cap={cap!r}")
        if not math.isfinite(factor) or factor < 1 or not 0 <= jitter < 1:
            raise ValueError(f"need factor >= 1 and 0 <= jitter < 1, got {factor!r}, {jitter!r}")
        self.first, self.cap, self.factor, self.jitter = first, cap, factor, jitter
        self.failures = 0
        self.next_at = -math.inf  # the first attempt is due at once

    def delay(self, draw: float = 0.0) -> float:
        """The wait after the failures so far (`draw` in [0, 1) takes off up to `jitter` of it)."""
        if self.failures == 0:
            return 0.0
        # min() on the exponent first: factor ** failures overflows after ~1000 failures
        steps = math.log(self.cap / self.first, self.factor) if self.factor > 1 else 0.0
        base = min(self.cap, self.first * self.factor ** min(self.failures - 1, steps + 1))
        return base * (1.0 - self.jitter * min(max(draw, 0.0), 1.0))

    def failed(self, now: float, draw: float = 0.0) -> float:
        """An attempt at `now` failed: returns when the next one is due."""
        self.failures += 1
        self.next_at = now + self.delay(draw)
        return self.next_at

    def succeeded(self, now: float) -> None:
        """An attempt succeeded: the next failure waits `first` again."""
        self.failures = 0
        self.next_at = now

    def due(self, now: float) -> bool:
        """True once the next attempt may run."""
        return now >= self.next_at

"""The mesh's clock: the loop's monotonic time for real nodes, a hand-driven one for tests.

The mesh shell reads time, sleeps between rounds and arms the membership timer only through a
`Clock`, so a test or a simulation can run many rounds of a zone (on the in-memory transport)
without waiting on the wall clock: `FakeClock.advance(seconds)` runs every timer and wakes
every sleeper that falls due, in time order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Callable, Protocol

__all__ = ["Clock", "Timer", "LoopClock", "FakeClock", "settle"]


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic seconds, sleeping, and a one-shot timer."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """time.monotonic and the running asyncio loop."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


class _FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time that moves only when `advance` is awaited (on the loop that runs the mesh)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _FakeTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _FakeTimer()
        heapq.heappush(self._heap, (self._now + max(0.0, delay), next(self._seq), timer,
                                    callback))
        return timer

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.call_later(seconds, lambda: fut.done() or fut.set_result(None))
        await fut

    def stall(self, seconds: float) -> None:
        """Move time forward without running anything: the host froze (its timers run late)."""
        self._now += seconds

    async def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move time forward by `seconds` in steps of at most `step`, running what falls due
        and letting the loop run the tasks it woke (in-memory messages) after each step."""
        end = self._now + seconds
        while True:
            target = min(end, self._now + step)
            while self._heap and self._heap[0][0] <= target:
                when, _, timer, callback = heapq.heappop(self._heap)
                self._now = max(self._now, when)
                if not timer.cancelled:
                    callback()
                await settle()
            self._now = target
            await settle()
            if self._now >= end:
                return


async def settle(rounds: int = 20) -> None:
    """Let the loop run what is ready (in-memory message exchanges take a few iterations)."""
    for _ in range(rounds):
        await asyncio.sleep(0)

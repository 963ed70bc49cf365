"""A concurrency gate whose limit may change while in use (an asyncio.Semaphore's cannot).

A zone of n nodes should keep about `origin_concurrency` origin reads in flight in all, as one
node alone would: on a shared, capped origin link, more concurrent reads only split its bandwidth
so that every block finishes late and at once, while fewer let blocks finish in order and spread
to peers while the next ones are read. Each node's gate allows origin_concurrency / n.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class Gate:
    """`async with gate:` admits at most `limit()` at a time, first come first served."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit
        self.inside = 0
        self._waiters: list[asyncio.Future[None]] = []

    def _cap(self) -> int:
        return max(1, self.limit())

    async def __aenter__(self) -> "Gate":
        if not self._waiters and self.inside < self._cap():
            self.inside += 1
            return self
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wake()  # the limit may have grown since the last release
        try:
            await fut  # admitted: `inside` was counted for us by _wake
        except BaseException:
            if fut in self._waiters:
                self._waiters.remove(fut)
            elif fut.done() and not fut.cancelled():
                self._release()  # admitted just as we were cancelled: hand the place on
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._release()

    def _release(self) -> None:
        self.inside -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.inside < self._cap():
            fut = self._waiters.pop(0)
            if not fut.done():
                self.inside += 1
                fut.set_result(None)

"""Singleflight: concurrent callers for one key share one in-flight call (groupcache's idea)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs `fn()` once per key while it is in flight; every caller awaits the same result.
    A caller that is cancelled does not cancel the shared call for the others."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Task[T]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._calls

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(fn())
            self._calls[key] = task
            task.add_done_callback(lambda t, k=key: self._forget(k, t))
        return await asyncio.shield(task)

    def _forget(self, key: Hashable, task: "asyncio.Task[T]") -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: a failure nobody awaited is not "never retrieved"

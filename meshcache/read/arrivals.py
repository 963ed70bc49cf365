"""Arrivals: requests waiting for a block to be admitted into this node's store (a peer in another
zone asked with a wait, read/node.py `fetch_or_wait`). Node.admit tells it each block it stores;
no polling. Bounded: at most `limit` waiters at once, beyond which `expect` hands out nothing."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Hashable, Iterator


class Arrivals:
    """Futures keyed by block name (version key, index), resolved with the block's digest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[Hashable, list[asyncio.Future[bytes]]] = {}
        self._count = 0
        self.refused = 0  # waits refused at the limit

    def __len__(self) -> int:
        return self._count

    @contextlib.contextmanager
    def expect(self, key: Hashable) -> Iterator["asyncio.Future[bytes] | None"]:
        """A future resolved when block `key` is admitted, registered for the block of the
        context; None when `limit` requests wait already."""
        if self._count >= self.limit:
            self.refused += 1
            yield None
            return
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(fut)
        self._count += 1
        try:
            yield fut
        finally:
            self._count -= 1
            futs = self._waiting.get(key)
            if futs is not None:
                futs.remove(fut)
                if not futs:
                    del self._waiting[key]
            if not fut.done():
                fut.cancel()

    def arrived(self, key: Hashable, digest: bytes) -> None:
        """Block `key` is in the store now, as `digest`: wake whoever waits for it."""
        for fut in self._waiting.get(key, ()):
            if not fut.done():
                fut.set_result(digest)

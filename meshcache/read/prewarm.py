"""Prewarm: bring every block of some object versions into the store, many at once.

The fetches ride the ladder like any read, so in a zone the owners of the blocks fetch them in
parallel (each from the origin once) and this node takes them from its peers.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Iterable

from meshcache.core.blocks import block_count, block_span
from meshcache.core.version import ObjectVersion


async def prewarm(versions: Iterable[ObjectVersion], block_size: int,
                  fetch: Callable[[ObjectVersion, int], Awaitable[Any]], workers: int,
                  progress: Callable[[int], Any] | None = None) -> None:
    """`fetch(version, i)` every block, `workers` at a time; `progress(bytes)` as each lands."""
    queue: asyncio.Queue[tuple[ObjectVersion, int]] = asyncio.Queue()
    for v in versions:
        for i in range(block_count(v.size, block_size)):
            queue.put_nowait((v, i))

    async def worker() -> None:
        while True:
            try:
                v, i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await fetch(v, i)
            if progress is not None:
                start, end = block_span(i, v.size, block_size)
                progress(end - start)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(queue.qsize(), workers))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()

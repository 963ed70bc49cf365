"""Rung 5: the origin, a ranged read pinned to the version, through the zone's origin gate, with
retries. Its bytes are the truth: a digest that disagrees with them was a bad hint, unless the
object changed."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from meshcache.core.rungs import Rank
from meshcache.read.catalog import Catalog
from meshcache.read.gate import Gate
from meshcache.read.ladder import BlockRequest, Stored
from meshcache.read.origin import ObjectChanged, ObjectNotFound, Origin, OriginError
from meshcache.read.streamfill import StreamFill

log = logging.getLogger("meshcache.read.rungs.origin")


class OriginSource:
    name = counter = "origin"
    rank = Rank.ORIGIN
    authoritative = True

    def __init__(self, origin: Origin, gate: Gate, catalog: Catalog, retries: int,
                 count: Callable[..., None], failed: Callable[[str, str], None],
                 streamfill: StreamFill | None = None) -> None:
        self.origin = origin
        self.streamfill = streamfill  # origins that ignore Range (read/streamfill.py)
        self.gate = gate
        self.catalog = catalog
        self.retries = retries
        self.count = count
        self.failed = failed  # (url, error): the origin did not answer properly

    async def fetch(self, request: BlockRequest) -> bytes | Stored:
        start, end = request.span
        version, options = request.version, dict(request.options)
        attempts = self.retries + 1
        for attempt in range(attempts):
            async with self.gate:
                try:
                    if self.streamfill is not None:
                        return await self.streamfill.read(self.origin, request, self)
                    self.count(origin_requests=1)
                    return await self.origin.read(version, start, end, options)
                except (ObjectChanged, ObjectNotFound):
                    self.count(origin_errors=1)
                    self.catalog.drop_version(version.url)
                    raise
                except OriginError as e:
                    self.count(origin_errors=1)
                    if attempt + 1 == attempts:
                        self.failed(version.url, str(e))
                        raise
                    log.info("%s (attempt %d of %d)", e, attempt + 1, attempts)
            await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

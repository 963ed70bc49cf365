"""Origins that ignore Range (e.g. `python -m http.server`): one streaming GET fills a version.

Such an origin answers a ranged GET with 200 and the whole object. The first read of a version
from an HTTP host whose Range support is not yet known goes alone (the other block reads of the
version wait); if the answer is a whole body, every block is cut from the stream as it arrives,
verified (against the manifest's digest when one is known) and stored, so a version costs one
GET. Blocks the waiting reads wanted are then in the store. Hosts seen answering 206 are read
with parallel ranged GETs as before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Mapping, Protocol
from urllib.parse import urlsplit

from meshcache.core.version import ObjectVersion
from meshcache.read.ladder import BlockRequest, FetchResult, Source, Stored
from meshcache.read.origin import ObjectChanged, Origin, WholeBody

log = logging.getLogger("meshcache.read.streamfill")


class Admitting(Protocol):
    """What the fill needs of the node: its block size, store lookup, requests and admit path."""

    block_size: int

    def has_block(self, version: ObjectVersion, index: int) -> bytes | None: ...

    def request(self, version: ObjectVersion, index: int,
                options: Mapping[str, Any] | None = None) -> BlockRequest: ...

    async def admit(self, request: BlockRequest, rung: Source,
                    data: bytes) -> FetchResult | None: ...

    def count(self, **deltas: int) -> None: ...


class StreamFill:
    """Reads a block's range through an Origin for the origin rung, turning a range-less
    origin's whole body into every block of the version."""

    def __init__(self, node: Admitting) -> None:
        self.node = node
        self.ranges_ok: dict[str, bool] = {}  # scheme://host -> answered a ranged GET with 206
        self._locks: dict[Any, asyncio.Lock] = {}

    async def read(self, origin: Origin, request: BlockRequest, rung: Source) -> bytes | Stored:
        """The bytes of the requested block (or Stored when a fill already stored it)."""
        version = request.version
        start, end = request.span
        options = dict(request.options)
        parts = urlsplit(version.url)
        if parts.scheme not in ("http", "https"):
            self.node.count(origin_requests=1)
            return await origin.read(version, start, end, options)
        host = f"{parts.scheme}://{parts.netloc}"
        whole = self._whole(request, rung, host)
        known = self.ranges_ok.get(host)
        if known:
            self.node.count(origin_requests=1)
            return await origin.read(version, start, end, options, whole)
        # Unknown host: one read at a time per host until it answers; range-less: one per
        # version (the first fills the rest, the others then find their block stored).
        lock = self._locks.setdefault(host if known is None else version.key, asyncio.Lock())
        async with lock:
            d = self.node.has_block(version, request.index)
            if d is not None:
                return Stored(d)
            if not self.ranges_ok.get(host):  # still unknown, or range-less: read alone
                self.node.count(origin_requests=1)
                data = await origin.read(version, start, end, options, whole)
                if host not in self.ranges_ok and not (start == 0 and end == version.size):
                    self.ranges_ok[host] = True
                return data
        # The host answered 206 while this read waited: ranged reads go in parallel.
        self.node.count(origin_requests=1)
        return await origin.read(version, start, end, options, whole)

    def _whole(self, request: BlockRequest, rung: Source, host: str) -> WholeBody:
        async def take(chunks: AsyncIterator[bytes]) -> bytes:
            if self.ranges_ok.get(host) is not False:
                log.info("%s ignores Range; filling each version with one streaming GET", host)
            self.ranges_ok[host] = False
            return await self.fill(request, rung, chunks)
        return take

    async def fill(self, request: BlockRequest, rung: Source,
                   chunks: AsyncIterator[bytes]) -> bytes:
        """Cut a whole-object body into blocks and admit each as it completes (verified, stored,
        counted by the node); returns the requested block's bytes, which the caller admits.
        Holds at most one block plus one chunk in memory."""
        version, want = request.version, request.index
        bs, size = self.node.block_size, version.size
        buf = bytearray()
        got = index = 0
        wanted: bytes | None = None
        async for chunk in chunks:
            got += len(chunk)
            if got > size:
                raise ObjectChanged(f"{version.url}: the origin sent more than the {size} bytes "
                                    "its stat reported; the object changed")
            buf += chunk
            while len(buf) >= bs or (got == size and buf):
                n = min(bs, len(buf))
                block = bytes(buf[:n])
                del buf[:n]
                if index == want:
                    wanted = block
                elif self.node.has_block(version, index) is None:
                    await self.node.admit(self.node.request(version, index, request.options),
                                          rung, block)
                index += 1
        if got != size or wanted is None:
            raise ObjectChanged(f"{version.url}: the origin sent {got} of the {size} bytes its "
                                "stat reported; the object changed")
        return wanted

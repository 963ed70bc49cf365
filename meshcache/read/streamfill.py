"""Origins that ignore Range (e.g. `python -m http.server`): one streaming GET fills a version.

Such an origin answers a ranged GET with 200 and the whole object. The first read from an HTTP
host whose Range support is not yet known teaches it: the other reads wait for its status line (a
round trip, not a block). If the answer is a whole body, every block is cut from the stream as
it arrives,
verified (against the manifest's digest when one is known) and stored, so a version costs one
GET. Blocks the waiting reads wanted are then in the store. Hosts seen answering 206 are read
with parallel ranged GETs as before.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
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
        # per range-less version being read: its lock and how many hold or wait for it (the
        # entry goes with the last, so versions read once do not pile up)
        self._locks: dict[bytes, tuple[asyncio.Lock, list[int]]] = {}
        self._learning: dict[str, asyncio.Event] = {}  # host -> its first read's status line

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
        if host not in self.ranges_ok:
            teaching = self._learning.get(host)
            if teaching is None:
                return await self._teach(origin, request, host, whole)
            await teaching.wait()  # a round trip: until the teaching read's status line
        if self.ranges_ok.get(host):
            self.node.count(origin_requests=1)
            return await origin.read(version, start, end, options, whole)
        # Range-less (or still unknown): one read at a time per version; a whole body fills
        # every block, and the others then find theirs stored.
        async with self._version_lock(version.key):
            d = self.node.has_block(version, request.index)
            if d is not None:
                return Stored(d)
            self.node.count(origin_requests=1)
            return await origin.read(version, start, end, options, whole)

    @property
    def versions_locked(self) -> int:
        """Versions whose one-read-at-a-time lock is held or awaited now."""
        return len(self._locks)

    @asynccontextmanager
    async def _version_lock(self, key: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]

    async def _teach(self, origin: Origin, request: BlockRequest, host: str,
                     whole: WholeBody) -> bytes:
        """The first read from a host: the others wait for its status line (206: ranges work;
        a 200 with the whole object for a range: they do not), not for its body."""
        version = request.version
        start, end = request.span
        learned = self._learning[host] = asyncio.Event()

        def on_status(status: int) -> None:
            # A 206 teaches "ranges work"; a range-less answer is recorded (and logged) by
            # `whole`, which the read calls for it; the waiters then queue on this version's lock.
            if status == 206:
                self.ranges_ok[host] = True
            learned.set()

        try:
            # Held for the whole read: if the host ignores Range, the waiters of this version
            # find their blocks stored by this read's fill instead of sending GETs of their own.
            async with self._version_lock(version.key):
                self.node.count(origin_requests=1)
                return await origin.read(version, start, end, dict(request.options), whole,
                                         on_status)
        finally:
            learned.set()
            self._learning.pop(host, None)

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

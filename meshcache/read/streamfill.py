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
from meshcache.read.origin import ObjectChanged, Origin
from meshcache.read.store import BlockStore, StoreError

log = logging.getLogger("meshcache.read.streamfill")


class Admitting(Protocol):
    """What the fill needs of the node: its block size, its store lookup and its admit path."""

    block_size: int
    store: BlockStore

    def has_block(self, version: ObjectVersion, index: int) -> bytes | None: ...

    async def admit(self, version: ObjectVersion, index: int, data: bytes) -> bytes: ...

    def count(self, **deltas: int) -> None: ...


class StreamFill:
    """Reads ranges through an Origin, turning a range-less origin's whole body into blocks."""

    def __init__(self, node: Admitting) -> None:
        self.node = node
        self.ranges_ok: dict[str, bool] = {}  # scheme://host -> answered a ranged GET with 206
        self._locks: dict[Any, asyncio.Lock] = {}

    async def read(self, origin: Origin, version: ObjectVersion, start: int, end: int,
                   options: Mapping[str, Any]) -> bytes:
        """Bytes [start, end) (one block) of `version`, as Origin.read."""
        parts = urlsplit(version.url)
        if parts.scheme not in ("http", "https"):
            return await origin.read(version, start, end, options)
        host = f"{parts.scheme}://{parts.netloc}"
        known = self.ranges_ok.get(host)
        if known:
            return await origin.read(version, start, end, options, self._whole(version, start,
                                                                                end, host))
        # Unknown host: one read at a time per host until it answers; range-less: one per
        # version (the first fills the rest, the others then find their block stored).
        key = host if known is None else version.key
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            stored = self._stored(version, start, end)
            if stored is not None:
                # A fill stored (and counted) it: the caller counts what we return as one more
                # origin request and its bytes, so take those back.
                self.node.count(bytes_from_origin=-len(stored), origin_requests=-1)
                return stored
            data = await origin.read(version, start, end, options,
                                     self._whole(version, start, end, host))
            if host not in self.ranges_ok and not (start == 0 and end == version.size):
                self.ranges_ok[host] = True
            return data

    def _stored(self, version: ObjectVersion, start: int, end: int) -> bytes | None:
        index = start // self.node.block_size
        d = self.node.has_block(version, index)
        if d is None:
            return None
        try:
            data = self.node.store.read_block(d)
        except (OSError, ValueError):
            return None
        return data if len(data) == end - start else None

    def _whole(self, version: ObjectVersion, start: int, end: int, host: str) -> Any:
        async def take(chunks: AsyncIterator[bytes]) -> bytes:
            if self.ranges_ok.get(host) is not False:
                log.info("%s ignores Range; filling each version with one streaming GET", host)
            self.ranges_ok[host] = False
            return await self.fill(version, chunks, start // self.node.block_size)
        return take

    async def fill(self, version: ObjectVersion, chunks: AsyncIterator[bytes],
                   want: int) -> bytes:
        """Cut a whole-object body into blocks, admit each as it completes; the bytes of block
        `want`. Holds at most one block plus one chunk in memory."""
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
                await self._admit(version, index, block)
                if index == want:
                    wanted = block
                else:
                    self.node.count(bytes_from_origin=n)
                index += 1
        if got != size or wanted is None:
            raise ObjectChanged(f"{version.url}: the origin sent {got} of the {size} bytes its "
                                "stat reported; the object changed")
        return wanted

    async def _admit(self, version: ObjectVersion, index: int, block: bytes) -> None:
        try:
            await self.node.admit(version, index, block)
        except StoreError as e:
            log.warning("%s; block %d of %s not kept", e, index, version.url)
            self.node.count(store_errors=1)

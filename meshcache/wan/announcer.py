"""Who announces what: the member that brought a block into its zone (the block's zone owner,
which read it from the origin or another zone) announces it for the whole zone, in batches, and
re-announces what it still holds before the records expire. Other members never announce it, so
a zone costs the DHT one record per block, not one per holder."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from meshcache.core.rendezvous import owner
from meshcache.wan.dht import Dht
from meshcache.wan.records import block_key, manifest_key

log = logging.getLogger("meshcache.wan.announcer")

MAX_PENDING = 1 << 20


def zone_owned(keys: Iterable[bytes], self_id: bytes, members: Iterable[bytes],
               region_bits: int = 0) -> list[bytes]:
    """The keys whose zone owner (rendezvous over `members` and this node) is this node; with
    `region_bits`, owners are chosen per keyspace region (the keys' first bits), so each
    member's announcements fall in few regions (for blocks every member holds)."""
    everyone = set(members) | {self_id}

    def name(k: bytes) -> bytes:
        if not region_bits:
            return k
        return (int.from_bytes(k[:4], "big") >> (32 - region_bits)).to_bytes(4, "big")

    return [k for k in keys if owner(name(k), everyone) == self_id]


class Announcer:
    """Batches this node's announcements and republishes them every `republish` seconds."""

    def __init__(self, dht: Dht, held: Callable[[bytes], bool], *, republish: float,
                 flush: float = 2.0) -> None:
        self.dht = dht
        self.held = held
        self.republish = republish
        self.flush = flush
        self._mine: set[bytes] = set()        # DHT keys this node announces
        self._pending: set[bytes] = set()     # not announced yet
        self._digest_of: dict[bytes, bytes] = {}  # block key -> digest (to check it is held)
        self._task: asyncio.Task[None] | None = None

    def note_block(self, digest: bytes) -> None:
        """A block this node brought into its zone (from the origin or another zone)."""
        key = block_key(digest)
        self._digest_of[key] = digest
        self._add(key)

    def note_manifest(self, version_key: bytes) -> None:
        """A version whose manifest this node keeps (it owns the version in its zone)."""
        self._add(manifest_key(version_key))

    def _add(self, key: bytes) -> None:
        if key not in self._mine and len(self._mine) < MAX_PENDING:
            self._mine.add(key)
            self._pending.add(key)

    async def announce_pending(self) -> int:
        keys, self._pending = self._pending, set()
        return await self.dht.announce(keys) if keys else 0

    async def announce_all(self) -> int:
        """Re-announce every key still held (blocks evicted since are dropped)."""
        gone = {k for k, d in self._digest_of.items() if not self.held(d)}
        for k in gone:
            del self._digest_of[k]
            self._mine.discard(k)
        self._pending -= gone
        self._pending.clear()
        return await self.dht.announce(self._mine) if self._mine else 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_all = loop.time() + self.republish
        while True:
            await asyncio.sleep(self.flush)
            try:
                if loop.time() >= next_all:
                    next_all = loop.time() + self.republish
                    await self.announce_all()
                else:
                    await self.announce_pending()
            except Exception as e:  # the DHT is best effort; the origin still serves
                log.warning("announcing to the DHT failed: %s", e)

"""WAN caps and accounting: per remote zone, egress and ingress byte rates (mesh/ratelimit.py's
token buckets, one bucket per zone) and the bytes sent to and received from each zone; and the
order of block sends to a remote zone (one at a time, first asked first sent)."""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from typing import AsyncContextManager, Awaitable, Callable

# Blocks this node sends to one remote zone at once. Sent side by side, the blocks on a WAN link
# share it and all arrive late together; one at a time, each arrives as soon as it can, so a zone
# that forwards it (striping, docs/wan.md) starts while the link carries the next.
SENDS_PER_ZONE = 1
MAX_ZONES = 256

from meshcache.mesh.ratelimit import RateLimiter


class ZoneCaps:
    """`egress_rate`/`ingress_rate` bytes/s to/from each remote zone (0: unlimited)."""

    def __init__(self, egress_rate: float = 0, ingress_rate: float = 0) -> None:
        self._egress = RateLimiter(0, egress_rate)
        self._ingress = RateLimiter(0, ingress_rate)
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self._slots: OrderedDict[str, asyncio.Semaphore] = OrderedDict()

    async def ingress(self, zone: str, n: int) -> None:
        """Wait until `n` more bytes may come from `zone`, then count them."""
        await self._ingress.take(zone, n)
        self.received[zone] += n

    async def egress(self, zone: str, n: int) -> None:
        """Wait until `n` more bytes may go to `zone`, then count them."""
        await self._egress.take(zone, n)
        self.sent[zone] += n

    def egress_hook(self, zone_of: Callable[[bytes], str | None],
                    own_zone: str) -> Callable[[bytes | None, int], Awaitable[None]]:
        """For the peer service: `await hook(peer_node_id, n)` before sending n bytes to a peer;
        capped and counted when the peer is known to be in another zone."""

        async def hook(peer: bytes | None, n: int) -> None:
            zone = zone_of(peer) if peer is not None else None
            if zone is not None and zone != own_zone:
                await self.egress(zone, n)

        return hook

    def send_slot(self, zone: str) -> AsyncContextManager[object]:
        """Held while one block is sent to `zone` (SENDS_PER_ZONE at once, FIFO)."""
        slot = self._slots.get(zone)
        if slot is None:
            slot = self._slots[zone] = asyncio.Semaphore(SENDS_PER_ZONE)
            while len(self._slots) > MAX_ZONES:  # zones are few; forget the oldest idle one
                old, sem = next(iter(self._slots.items()))
                if sem.locked() or old == zone:
                    break
                del self._slots[old]
        return slot

    def send_slot_hook(self, zone_of: Callable[[bytes], str | None], own_zone: str
                       ) -> Callable[[bytes | None], AsyncContextManager[object] | None]:
        """For the peer service: `async with hook(peer_node_id):` around sending one block, a
        slot of the peer's zone; None when the peer is not known to be in another zone."""

        def hook(peer: bytes | None) -> AsyncContextManager[object] | None:
            zone = zone_of(peer) if peer is not None else None
            if zone is None or zone == own_zone:
                return None
            return self.send_slot(zone)

        return hook

    def stats(self) -> dict[str, int]:
        out = {f"bytes_from_zone:{z}": n for z, n in self.received.items()}
        out.update({f"bytes_to_zone:{z}": n for z, n in self.sent.items()})
        return out

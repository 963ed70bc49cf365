"""WAN caps and accounting: per remote zone, egress and ingress byte rates (mesh/ratelimit.py's
token buckets, one bucket per zone) and the bytes sent to and received from each zone."""

from __future__ import annotations

from collections import Counter
from typing import Awaitable, Callable

from meshcache.mesh.ratelimit import RateLimiter


class ZoneCaps:
    """`egress_rate`/`ingress_rate` bytes/s to/from each remote zone (0: unlimited)."""

    def __init__(self, egress_rate: float = 0, ingress_rate: float = 0) -> None:
        self._egress = RateLimiter(0, egress_rate)
        self._ingress = RateLimiter(0, ingress_rate)
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()

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

    def stats(self) -> dict[str, int]:
        out = {f"bytes_from_zone:{z}": n for z, n in self.received.items()}
        out.update({f"bytes_to_zone:{z}": n for z, n in self.sent.items()})
        return out

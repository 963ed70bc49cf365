"""The remote-zone rung: providers of a block in other zones, found in the DHT.

Only the zone owner of a block reaches it (a request forwarded to a holder never allows this
rank). It finds the digest (or, when unknown, the version's manifest from a provider that
announced it), looks the digest up, tries providers cheapest zone first (`zone_costs` from the
config, else the round trip the DHT measured to that zone, else unknown zones last), asks each
over the existing peer QUIC path for its store only, and returns bytes the peer service has verified
against the digest, or None so the ladder goes on to the origin. Bytes per zone are capped and
counted (caps.py).
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
from typing import Any, Protocol

from meshcache.core.manifest import Manifest
from meshcache.core.rungs import BlockRequest, Rank, may_use
from meshcache.core.version import ObjectVersion
from meshcache.wan.caps import ZoneCaps
from meshcache.wan.records import ProviderRecord, block_key, manifest_key

log = logging.getLogger("meshcache.wan.rung")

UNKNOWN_COST = 1e6
MAX_TRIED = 4
_zone: contextvars.ContextVar[str] = contextvars.ContextVar("remote_zone", default="")

Address = tuple[str, int]


class ProviderLookup(Protocol):
    """The DHT (dht.Dht)."""

    node_id: bytes

    async def find(self, key: bytes) -> list[ProviderRecord]: ...

    def zone_rtt(self, zone: str) -> float | None: ...


class PeerClient(Protocol):
    """Requests to peers (mesh/peers.py's PeerService)."""

    def penalized(self, peer: Address) -> bool: ...

    def failed(self, peer: Address, exc: BaseException) -> None: ...

    async def get_block(self, peer: Address, request: BlockRequest,
                        max_rank: int) -> tuple[bytes, bytes] | None: ...

    async def get_manifest(self, peer: Address, version: ObjectVersion,
                           block_size: int) -> Manifest | None: ...


def parse_zone_costs(entries: list[str]) -> dict[str, float]:
    """["b=10", "c=40"] -> {"b": 10.0, "c": 40.0} (validated by the config)."""
    out = {}
    for e in entries:
        zone, _, cost = e.partition("=")
        out[zone.strip()] = float(cost)
    return out


class RemoteZoneSource:
    name = "remote_zone"
    rank = Rank.REMOTE_ZONE
    authoritative = False

    def __init__(self, dht: ProviderLookup, peers: PeerClient, config: Any,
                 caps: ZoneCaps | None = None) -> None:
        self.dht = dht
        self.peers = peers
        self.zone = config.zone
        self.costs = parse_zone_costs(getattr(config, "zone_costs", []))
        self.caps = caps or ZoneCaps(getattr(config, "zone_egress_rate", 0),
                                     getattr(config, "zone_ingress_rate", 0))

    @property
    def counter(self) -> str:
        """`zone:<name>` of the zone the last block fetched in this task came from."""
        zone = _zone.get()
        return f"zone:{zone}" if zone else "remote_zone"

    def stats(self) -> dict[str, int]:
        """bytes_from_zone:<zone> and bytes_to_zone:<zone>."""
        return self.caps.stats()

    def cost(self, zone: str) -> float:
        if zone in self.costs:
            return self.costs[zone]
        rtt = self.dht.zone_rtt(zone)  # measured on the DHT's requests to that zone
        return rtt * 1000 if rtt is not None else UNKNOWN_COST

    def order(self, records: list[ProviderRecord]) -> list[ProviderRecord]:
        """Providers in other zones, cheapest zone first, longest-lived record first."""
        others = [r for r in records if r.zone != self.zone and r.node_id != self.dht.node_id]
        return sorted(others, key=lambda r: (self.cost(r.zone), -r.expires))

    async def fetch(self, request: BlockRequest) -> bytes | None:
        if not may_use(request.max_rank, self.rank):
            return None
        digest = request.digest or await self._digest(request)
        if digest is None:
            return None
        tried = 0
        for rec in self.order(await self.dht.find(block_key(digest))):
            if tried >= MAX_TRIED:
                break
            if self.peers.penalized(rec.address):
                continue
            tried += 1
            try:
                got = await self.peers.get_block(
                    rec.address, dataclasses.replace(request, digest=digest), self.rank)
            except Exception as e:  # unreachable, stalled or lying: the next provider
                self.peers.failed(rec.address, e)
                log.info("block %s from %s in zone %s: %s", digest.hex()[:16], rec.address,
                         rec.zone, e)
                continue
            if got is not None:
                data = got[1]  # verified against `digest`, of the asked length (peers.py)
                await self.caps.ingress(rec.zone, len(data))  # counted; waits off any excess
                _zone.set(rec.zone)
                return data
        return None

    async def _digest(self, request: BlockRequest) -> bytes | None:
        """The block's digest from a manifest a provider in another zone announced."""
        version = request.version
        for rec in self.order(await self.dht.find(manifest_key(version.key)))[:MAX_TRIED]:
            if self.peers.penalized(rec.address):
                continue
            try:
                m = await self.peers.get_manifest(rec.address, version, request.block_size)
            except Exception as e:
                self.peers.failed(rec.address, e)
                continue
            if m is not None and m.digests[request.index] is not None:
                return m.digests[request.index]
        return None

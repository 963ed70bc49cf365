"""The remote-zone rung: providers of a block in other zones, found in the DHT.

Only the zone owner of a block reaches it (a request forwarded to a holder never allows this
rank). It finds the digest (or, when unknown, the version's manifest from a provider that
announced it), looks the digest up, tries providers cheapest zone first (`zone_costs` from the
config, else the round trip the DHT measured to that zone, else unknown zones last), asks each
over the existing peer QUIC path for its store only, and returns bytes the peer service has verified
against the digest, or None so the ladder goes on to the origin. Bytes per zone are capped and
counted (caps.py).

Cooperative striping (core/stripe.py): while it pulls a version, the node announces itself
under the version's pull key (short TTL, republished while pulling). Zones pulling the version at
once split its blocks by rendezvous; for a block whose puller zone is another, the node asks that
zone's pulling node for it with a bounded wait (GET_BLOCK's wait_ms: answered when that node's
store admits the block), and asks the providers itself on a miss, an error or the deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter, OrderedDict
from typing import Any, Callable, Iterable, Protocol

from meshcache.core.manifest import Manifest
from meshcache.core.rungs import BlockRequest, Rank, Verified, may_use
from meshcache.core.stripe import puller_node, puller_zone
from meshcache.core.version import ObjectVersion
from meshcache.wan.caps import ZoneCaps
from meshcache.wan.records import ProviderRecord, block_key, manifest_key, pull_key

log = logging.getLogger("meshcache.wan.rung")

UNKNOWN_COST = 1e6
MAX_TRIED = 4
PULLERS_FRESH = 1.0   # seconds a lookup of who pulls a version is reused
MAX_VERSIONS = 256    # versions whose pullers and publishing this node remembers
FIRST_ANNOUNCE = 2.0  # seconds the first block of a version waits for this node's pull record
MAX_MANIFESTS = 16    # other zones' manifests kept (digest hints for the blocks of a pull)
MAX_MANIFESTS_ASKED = 8  # providers of a version's manifest asked for one block's digest
NO_HOLDER_FOR = 2.0   # seconds a version no other zone holds is not looked up again
FIRST_LOOKUP = 2.0    # seconds the first block of a version waits to learn who else pulls

Address = tuple[str, int]


class ProviderLookup(Protocol):
    """The DHT (dht.Dht)."""

    node_id: bytes
    clock: Callable[[], float]

    async def find(self, key: bytes, fresh: bool = False) -> list[ProviderRecord]: ...

    async def announce(self, keys: Iterable[bytes], ttl: float | None = None) -> int: ...

    def zone_rtt(self, zone: str) -> float | None: ...


class PeerClient(Protocol):
    """Requests to peers (mesh/peers.py's PeerService)."""

    def penalized(self, peer: Address) -> bool: ...

    def failed(self, peer: Address, exc: BaseException) -> None: ...

    async def get_block(self, peer: Address, request: BlockRequest, max_rank: int,
                        wait: float = 0.0) -> tuple[bytes, bytes] | None: ...

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
    counter = "remote_zone"  # per zone: bytes_from_zone:<zone> (caps.py)
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
        self.stripe = getattr(config, "stripe", True)
        self.stripe_wait = getattr(config, "stripe_wait", 30.0)
        self.pull_ttl = getattr(config, "stripe_record_ttl", 30.0)
        self.counts: Counter[str] = Counter()
        self._pullers: OrderedDict[bytes, tuple[float, list[ProviderRecord]]] = OrderedDict()
        self._looking: dict[bytes, asyncio.Task[list[ProviderRecord]]] = {}
        self._published: OrderedDict[bytes, tuple[float, asyncio.Task[Any]]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        # digests from other zones' manifests (hints: the bytes are verified against them)
        self._manifests: OrderedDict[bytes, list[bytes | None]] = OrderedDict()
        self._no_holder: OrderedDict[bytes, float] = OrderedDict()  # version -> until
        self._digesting: dict[bytes, asyncio.Task[None]] = {}  # version -> manifest lookup

    def stats(self) -> dict[str, int]:
        """bytes_from_zone:<zone>, bytes_to_zone:<zone> and the striping counters."""
        return {**self.caps.stats(), **self.counts}

    async def close(self) -> None:
        """Stop publishing and looking up (records lapse after their TTL)."""
        tasks = list(self._tasks) + list(self._looking.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cost(self, zone: str) -> float:
        if zone in self.costs:
            return self.costs[zone]
        rtt = self.dht.zone_rtt(zone)  # measured on the DHT's requests to that zone
        return rtt * 1000 if rtt is not None else UNKNOWN_COST

    def order(self, records: list[ProviderRecord]) -> list[ProviderRecord]:
        """Providers in other zones, cheapest zone first, longest-lived record first."""
        others = [r for r in records if r.zone != self.zone and r.node_id != self.dht.node_id]
        return sorted(others, key=lambda r: (self.cost(r.zone), -r.expires))

    async def fetch(self, request: BlockRequest) -> Verified | None:
        if not may_use(request.max_rank, self.rank):
            return None
        digest = request.digest or await self._digest(request)
        if digest is None:
            return None
        request = dataclasses.replace(request, digest=digest)
        if self.stripe:
            await self._pulling(request.version.key)
            got = await self._from_puller(request)
            if got is not None:
                return got
        return await self._from_providers(request)

    # ---- striping --------------------------------------------------------------------------

    async def _pulling(self, version_key: bytes) -> None:
        """Announce that this node pulls the version, at most every third of the record's TTL
        (the record lapses soon after the last block). The first announcement of a version is
        awaited (a bounded while): zones that start together then see each other at once."""
        loop = asyncio.get_running_loop()
        last = self._published.get(version_key)
        if last is None or loop.time() - last[0] >= self.pull_ttl / 3:
            task = self._spawn(self.dht.announce([pull_key(version_key)], ttl=self.pull_ttl))
            first = last is None
            last = self._published[version_key] = (loop.time(), task)
            self._published.move_to_end(version_key)
            while len(self._published) > MAX_VERSIONS:
                self._published.popitem(last=False)
            if first:
                self._pullers.pop(version_key, None)  # look again once announced
        if not last[1].done() and version_key not in self._pullers:
            await asyncio.wait({last[1]}, timeout=FIRST_ANNOUNCE)

    def _spawn(self, coro: Any) -> "asyncio.Task[Any]":
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # best effort: providers
            log.info("announcing or looking up a pull failed: %s", task.exception())

    async def pullers(self, version_key: bytes) -> list[ProviderRecord]:
        """Other nodes pulling the version now (their pull records). Looked up again in the
        background once PULLERS_FRESH seconds old (a lookup waits out any silent node: blocks
        must not wait on it); only a version's first lookup is awaited, FIRST_LOOKUP at most."""
        loop = asyncio.get_running_loop()
        cached = self._pullers.get(version_key)
        if cached is not None and loop.time() - cached[0] < PULLERS_FRESH:
            return cached[1]
        task = self._looking.get(version_key)
        if task is None:
            task = self._looking[version_key] = loop.create_task(self._lookup(version_key))
            task.add_done_callback(self._done)
        if cached is not None:
            return cached[1]
        await asyncio.wait({task}, timeout=FIRST_LOOKUP)
        cached = self._pullers.get(version_key)
        return cached[1] if cached is not None else []

    async def _lookup(self, version_key: bytes) -> list[ProviderRecord]:
        """Records found now merged with those found before and still live (a lookup may miss
        a record that reached only some nodes)."""
        try:
            found = await self.dht.find(pull_key(version_key), fresh=True)
        finally:
            del self._looking[version_key]
        old = self._pullers.get(version_key)
        merged = {r.node_id: r for r in (old[1] if old is not None else [])}
        for r in found:
            if r.node_id != self.dht.node_id:
                merged[r.node_id] = r
        now = self.dht.clock()
        recs = [r for r in merged.values() if r.live(now)]
        self._pullers[version_key] = (asyncio.get_running_loop().time(), recs)
        self._pullers.move_to_end(version_key)
        while len(self._pullers) > MAX_VERSIONS:
            self._pullers.popitem(last=False)
        return recs

    async def _from_puller(self, request: BlockRequest) -> Verified | None:
        """The block from the pulling node of its puller zone, when that is another zone:
        asked with a bounded wait; None (fetch it from the providers) on a miss or failure."""
        recs = await self.pullers(request.version.key)
        zone = puller_zone(request.version.key, request.index, {r.zone for r in recs}, self.zone)
        if zone == self.zone:
            return None  # this zone brings it across
        by_id = {r.node_id: r for r in recs if r.zone == zone}
        rec = by_id[puller_node(request.key, by_id)]  # type: ignore[index]
        if self.peers.penalized(rec.address):
            return None
        self.counts["stripe_asked"] += 1
        try:
            got = await self.peers.get_block(rec.address, request, self.rank,
                                             wait=self.stripe_wait)
        except Exception as e:
            self.peers.failed(rec.address, e)
            self.counts["stripe_failed"] += 1
            log.info("block %d from puller %s in zone %s: %s", request.index, rec.address,
                     zone, e)
            return None
        if got is None:
            self.counts["stripe_missed"] += 1
            return None
        await self.caps.ingress(zone, len(got[1]))
        return Verified(*got)

    # ---- providers --------------------------------------------------------------------------

    async def _from_providers(self, request: BlockRequest) -> Verified | None:
        """The block from its providers in other zones, cheapest zone first."""
        digest = request.digest
        assert digest is not None
        tried = 0
        for rec in self.order(await self.dht.find(block_key(digest))):
            if tried >= MAX_TRIED:
                break
            if self.peers.penalized(rec.address):
                continue
            tried += 1
            try:
                got = await self.peers.get_block(rec.address, request, self.rank)
            except Exception as e:  # unreachable, stalled or lying: the next provider
                self.peers.failed(rec.address, e)
                log.info("block %s from %s in zone %s: %s", digest.hex()[:16], rec.address,
                         rec.zone, e)
                continue
            if got is not None:  # verified against `digest`, of the asked length (peers.py)
                await self.caps.ingress(rec.zone, len(got[1]))  # counted; waits off any excess
                return Verified(*got)
        return None

    async def _digest(self, request: BlockRequest) -> bytes | None:
        """The block's digest from the manifests providers in other zones announced. A zone
        owner's manifest may name only the blocks it brought in (a zone warmed by one reader
        spreads a version over its owners), so one lookup per version (shared by the blocks that
        need it at once) asks providers until their merged digests name every block, and the
        merge is kept for the last few versions: the other blocks of the version need no lookup
        (each would be another chance for a busy DHT to fail and send the block to the origin).
        Holders found first are asked first; then every holder's record (a lookup that stops
        at the first records may see only zones still pulling); a version no other zone holds
        is not looked up again for NO_HOLDER_FOR seconds (its blocks go on to the origin)."""
        version, index = request.version, request.index
        kept = self._manifests.get(version.key)
        if kept is not None and kept[index] is not None:
            return kept[index]
        loop = asyncio.get_running_loop()
        if self._no_holder.get(version.key, 0.0) > loop.time():
            return None
        task = self._digesting.get(version.key)
        if task is None:
            task = self._digesting[version.key] = self._spawn(
                self._merge_manifests(version, request.block_size))
            task.add_done_callback(lambda _: self._digesting.pop(version.key, None))
        await asyncio.wait({task})  # (a cancelled reader leaves the shared lookup running)
        kept = self._manifests.get(version.key)
        if kept is not None and index < len(kept) and kept[index] is not None:
            return kept[index]
        self._no_holder[version.key] = loop.time() + NO_HOLDER_FOR
        self._no_holder.move_to_end(version.key)
        while len(self._no_holder) > MAX_VERSIONS:
            self._no_holder.popitem(last=False)
        return None

    async def _merge_manifests(self, version: ObjectVersion, block_size: int) -> None:
        """Ask the version's manifest providers (at most MAX_MANIFESTS_ASKED) one at a time
        until the merged digests name every block."""
        self.counts["manifest_lookups"] += 1
        asked: set[bytes] = set()
        for fresh in (False, True):
            for rec in self.order(await self.dht.find(manifest_key(version.key), fresh=fresh)):
                if len(asked) >= MAX_MANIFESTS_ASKED:
                    return
                if rec.node_id in asked or self.peers.penalized(rec.address):
                    continue
                asked.add(rec.node_id)
                await self._ask_manifest(rec, version, block_size)
                kept = self._manifests.get(version.key)
                if kept is not None and all(d is not None for d in kept):
                    return

    async def _ask_manifest(self, rec: ProviderRecord, version: ObjectVersion,
                            block_size: int) -> None:
        """`rec`'s manifest of the version, merged into the digests kept."""
        try:
            m = await self.peers.get_manifest(rec.address, version, block_size)
        except Exception as e:
            self.peers.failed(rec.address, e)
            return
        if m is None:
            return
        self.counts["manifests_asked"] += 1
        kept = self._manifests.get(version.key) or [None] * len(m.digests)
        if len(kept) == len(m.digests):  # (a manifest that does not fit is not merged)
            self._manifests[version.key] = [k if k is not None else d
                                            for k, d in zip(kept, m.digests)]
            self._manifests.move_to_end(version.key)
            while len(self._manifests) > MAX_MANIFESTS:
                self._manifests.popitem(last=False)

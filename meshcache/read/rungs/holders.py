"""Rung 2: zone peers whose Bloom summary (or whose manifest told us the digest) say they hold
the block. A false positive costs one MISS. The block's digest, when unknown, is first asked of
the manifest's owner, once per version per `ping_interval`."""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from typing import Callable

from meshcache.core.rungs import Rank
from meshcache.core.version import ObjectVersion
from meshcache.read.catalog import Catalog
from meshcache.read.ladder import BlockRequest, Verified
from meshcache.read.rungs.mesh_view import Member, PeerClient, ZoneView
from meshcache.read.singleflight import SingleFlight

log = logging.getLogger("meshcache.read.rungs.holders")

MAX_TRIED = 3          # holders asked per block before the next rung
MAX_REMEMBERED = 4096  # versions whose manifest answer is remembered


class HoldersSource:
    name = "holders"
    counter = "peers"
    rank = Rank.HOLDERS
    authoritative = False

    def __init__(self, mesh: ZoneView, peers: PeerClient, catalog: Catalog,
                 ask_interval: float, clock: Callable[[], float]) -> None:
        self.mesh = mesh
        self.peers = peers
        self.catalog = catalog
        self.ask_interval = ask_interval
        self.clock = clock
        self._asked: OrderedDict[bytes, tuple[float, Member | None]] = OrderedDict()
        self._flights: SingleFlight[Member | None] = SingleFlight()

    async def fetch(self, request: BlockRequest) -> Verified | None:
        version, index = request.version, request.index
        known = request.digest
        if known is None:
            await self._flights.do(version.key, lambda: self._ask_manifest(version))
            known = self.catalog.digest(version, index)
        if known is None:
            return None
        # The member whose manifest told us the digests likely holds the blocks, even before
        # its summary reaches us.
        answered = self._asked.get(version.key, (0.0, None))[1]
        candidates = self.mesh.holders(known)
        if answered is not None and answered.node_id in self.mesh.members \
                and answered not in candidates:
            candidates.append(answered)
        candidates = [c for c in candidates if not self.peers.penalized(c.address)]
        for member in candidates[:MAX_TRIED]:
            try:
                got = await self.peers.get_block(
                    member.address, dataclasses.replace(request, digest=known), Rank.HOLDERS)
            except Exception as e:  # unreachable, stalled or lying: try the next holder
                self.peers.failed(member.address, e)
                log.info("block %d of %s from %s: %s", index, version.url, member.address, e)
                continue
            if got is not None:  # hashed to `known` and of the asked length by the peers
                return Verified(*got)
        return None

    def remembered(self) -> int:
        return len(self._asked)

    async def _ask_manifest(self, version: ObjectVersion) -> Member | None:
        """Ask the manifest's owner (then one other member) for its digests; returns the member
        that answered, or None."""
        now = self.clock()
        last = self._asked.get(version.key)
        if last is not None and now - last[0] < self.ask_interval:
            return last[1]
        self._remember(version.key, now, None)
        owner = self.mesh.owner(version.key)
        asked = [owner] if owner is not None else []
        asked += [x for x in self.mesh.live() if x is not owner][:1]
        for member in asked:
            try:
                remote = await self.peers.get_manifest(member.address, version,
                                                       self.catalog.block_size)
            except Exception as e:
                log.info("manifest of %s from %s: %s", version.url, member.address, e)
                continue
            if remote is not None:
                self.catalog.merge(version, remote)
                self._remember(version.key, now, member)
                return member
        return None

    def _remember(self, key: bytes, now: float, member: Member | None) -> None:
        self._asked[key] = (now, member)
        self._asked.move_to_end(key)
        while len(self._asked) > MAX_REMEMBERED:
            self._asked.popitem(last=False)

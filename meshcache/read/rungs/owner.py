"""Rung 3: the zone owner of the block (rendezvous over the live members), which fetches it once
for the whole zone. A busy owner (still connected) is asked once more before the next rung: a
second origin read for the zone costs more than waiting."""

from __future__ import annotations

import logging
from typing import Callable

from meshcache.core.rungs import Rank
from meshcache.mesh.peers import PeerMisbehaved, PeerRefused
from meshcache.read.ladder import BlockRequest, Verified
from meshcache.read.rungs.mesh_view import PeerClient, ZoneView

log = logging.getLogger("meshcache.read.rungs.owner")


class OwnerSource:
    name = "owner"
    counter = "peers"
    rank = Rank.OWNER
    authoritative = False

    def __init__(self, mesh: ZoneView, peers: PeerClient,
                 count: Callable[..., None]) -> None:
        self.mesh = mesh
        self.peers = peers
        self.count = count

    async def fetch(self, request: BlockRequest) -> Verified | None:
        owner = self.mesh.owner(request.key)
        if owner is None or self.peers.penalized(owner.address):
            return None  # no other member, or this node is the owner
        for attempt in (1, 2):
            try:
                got = await self.peers.get_block(owner.address, request, Rank.OWNER)
                break
            except Exception as e:
                self.peers.failed(owner.address, e)
                self.count(owner_failures=1)
                again = attempt == 1 and self.peers.reachable(owner.address) \
                    and not isinstance(e, (PeerMisbehaved, PeerRefused))  # a refusal stands
                log.info("owner %s of block %d of %s failed: %s; %s", owner.address,
                         request.index, request.version.url, e,
                         "asking again" if again else "trying the next rung")
                if not again:
                    return None
        return None if got is None else Verified(*got)

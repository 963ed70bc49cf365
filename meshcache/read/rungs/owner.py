"""Rung 3: the zone owner of the block (rendezvous over the live members), which fetches it once
for the whole zone. A busy owner (still connected) is asked once more before the next rung: a
second origin read for the zone costs more than waiting. An owner that failed because it went
silent or away is replaced by the block's new owner, asked once, for the same reason."""

from __future__ import annotations

import logging
from typing import Callable

from meshcache.core.rungs import Rank
from meshcache.mesh.peers import PeerMisbehaved, PeerRefused
from meshcache.read.ladder import BlockRequest, Verified
from meshcache.read.rungs.mesh_view import Member, PeerClient, ZoneView

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
        if owner is None:
            return None  # no other member, or this node is the owner
        if self.peers.penalized(owner.address):
            log.info("owner %s of block %d of %s is avoided after a failure; trying the next "
                     "rung", owner.address, request.index, request.version.url)
            return None
        for attempt in (1, 2):
            try:
                got = await self.peers.get_block(owner.address, request, Rank.OWNER)
                break
            except Exception as e:
                self.peers.failed(owner.address, e)
                self.count(owner_failures=1)
                again = self._next_owner(request, owner, e) if attempt == 1 else None
                log.info("owner %s of block %d of %s failed: %s; %s", owner.address,
                         request.index, request.version.url, e,
                         "trying the next rung" if again is None else
                         "asking again" if again is owner else f"asking {again.address}")
                if again is None:
                    return None
                owner = again
        return None if got is None else Verified(*got)

    def _next_owner(self, request: BlockRequest, failed: Member,
                    error: Exception) -> Member | None:
        """Whom to ask after `failed` did not answer: the block's new owner when the owner
        changed meanwhile (the failed one is no longer used: it went silent or away), so the
        zone still reads the origin once; the same busy owner once more while it is connected
        (a refusal or a lie stands); else None (the next rung)."""
        current = self.mesh.owner(request.key)
        if current is None or self.peers.penalized(current.address):
            return None
        if current.address != failed.address:
            return current
        if self.peers.reachable(failed.address) and \
                not isinstance(error, (PeerMisbehaved, PeerRefused)):
            return failed
        return None

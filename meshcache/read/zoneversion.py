"""Asking the zone for a URL's last known version while its origin fails and this node knows none
(it never stat-ed the URL, or restarted since). Up to 1 + `ASK_OTHERS` live members are asked, the
URL's owner (rendezvous over the live members) first, within `ASK_BUDGET` seconds in all;
the first member that knows one answers with the version its origin last confirmed and how long
ago. Its manifest is asked of that member too (a hint, as any manifest: blocks are verified).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from meshcache.core.manifest import Manifest
from meshcache.core.version import ObjectVersion, url_key
from meshcache.read.rungs.mesh_view import Address, Member

log = logging.getLogger("meshcache.read.zoneversion")

ASK_OTHERS = 2  # live members asked after the URL's owner misses or fails
ASK_BUDGET = 3.0  # seconds all the asks may take together (an uncached read fails after that)


class Members(Protocol):
    """The live members of this node's zone and who owns a key (mesh/mesh.py's Mesh)."""

    def owner(self, key: bytes) -> Member | None: ...

    def live(self) -> list[Member]: ...


class VersionPeers(Protocol):
    """Requests to peers (mesh/peers.py's PeerService), with its memory of who failed."""

    def penalized(self, peer: Address) -> bool: ...

    def failed(self, peer: Address, exc: BaseException) -> None: ...

    async def get_version(self, peer: Address, url: str,
                          timeout: float | None = None) -> tuple[ObjectVersion, float] | None: ...

    async def get_manifest(self, peer: Address, version: ObjectVersion,
                           block_size: int) -> Manifest | None: ...


@dataclass(frozen=True)
class ZoneVersion:
    """A member's answer: the version, when (this node's monotonic clock, taken before asking,
    so never later than the truth) its origin confirmed it, and the member's manifest."""

    version: ObjectVersion
    confirmed_at: float
    member: Member
    manifest: Manifest | None


def to_ask(mesh: Members, url: str, others: int = ASK_OTHERS) -> list[Member]:
    """At most 1 + `others` live members: the URL's owner first (unless it is this node, which
    knows nothing), then others."""
    owner = mesh.owner(url_key(url))
    first = [owner] if owner is not None else []
    return (first + [m for m in mesh.live() if m is not owner])[:1 + others]


async def ask_zone(mesh: Members, peers: VersionPeers, url: str, block_size: int,
                   budget: float = ASK_BUDGET, clock: Callable[[], float] = time.monotonic
                   ) -> tuple[ZoneVersion | None, int]:
    """(the first answer, or None; how many members were asked). `clock` is the one the answer's
    `confirmed_at` is on (the node's outage policy's)."""
    asked = 0
    deadline = clock() + budget
    for member in to_ask(mesh, url):
        left = deadline - clock()
        if left <= 0:
            break
        if peers.penalized(member.address):
            continue
        asked += 1
        t0 = clock()
        try:
            got = await peers.get_version(member.address, url, timeout=left)
        except Exception as e:  # unreachable, timed out, refused or malformed: ask the next
            peers.failed(member.address, e)
            log.info("last version of %s from %s: %s", url, member.address, e)
            continue
        if got is None:
            continue
        version, age = got
        manifest = None
        try:
            async with asyncio.timeout(max(0.1, deadline - clock())):
                manifest = await peers.get_manifest(member.address, version, block_size)
        except Exception as e:  # the holders rung asks again
            log.info("manifest of %s from %s: %s", url, member.address, e)
        return ZoneVersion(version, t0 - age, member, manifest), asked
    return None, asked

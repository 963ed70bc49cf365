"""Cooperative striping across zones: which pulling zone brings a block across the WAN, and which
of that zone's pulling nodes to ask for it. Pure.

Zones that pull the same version at once split its blocks: the block's *puller zone* fetches it
from the providers, every other pulling zone asks the puller zone for it. Blocks go in pairs
(2k, 2k+1): rendezvous over the zones' names, keyed by the version and the pair, ranks the zones;
the first block of the pair goes to the zone ranked first, the second to the zone ranked last.
Two pulling zones thus split every pair exactly (a random split would leave one zone's link with
a run of blocks while the other's idles); with more zones each gets its share on average.

Every zone decides from its own view of who pulls, always counting itself. For each block the
order is one total order over all zone names (the pair's rendezvous ranking, or its reverse),
whatever the views, and a zone defers only to a zone above it in that order: two zones can never
wait on each other, so waits form chains, never cycles.
"""

from __future__ import annotations

from typing import Iterable

from meshcache.core.rendezvous import owner, rank

__all__ = ["puller_zone", "puller_node", "zone_order"]

_LABEL = b"meshcache puller zone\0"


def zone_order(version_key: bytes, index: int, zones: Iterable[str]) -> list[str]:
    """The distinct zones, best first, for block `index` of a version: its puller zone among
    them is the first (the pair's rendezvous ranking for the pair's first block, its reverse
    for the second)."""
    pair = _LABEL + version_key + (index // 2).to_bytes(8, "big")
    ranked = [z.decode() for z in rank(pair, {z.encode() for z in zones})]
    return ranked if index % 2 == 0 else ranked[::-1]


def puller_zone(version_key: bytes, index: int, zones: Iterable[str], mine: str) -> str:
    """The zone that brings block `index` of a version across the WAN, among the pulling
    `zones` and this node's zone `mine` (always a candidate)."""
    return zone_order(version_key, index, set(zones) | {mine})[0]


def puller_node(block: bytes, node_ids: Iterable[bytes]) -> bytes | None:
    """Which of a zone's pulling nodes to ask for `block`: rendezvous over their node ids with
    the block's name, the same choice the zone makes for the block's zone owner (read/rungs/
    owner.py) when its pulling nodes are its live members, so the asked node is the one that
    fetches the block for its zone."""
    return owner(block, node_ids)

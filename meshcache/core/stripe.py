"""Cooperative striping across zones: which pulling zone brings a block across the WAN, and which
of that zone's pulling nodes to ask for it. Pure.

Zones that pull the same version at once split its blocks by rendezvous over the zones' names:
the block's *puller zone* fetches it from the providers, every other pulling zone asks the puller
zone for it. Every zone decides from its own view of who pulls, always counting itself; two views
never make two zones wait on each other (a zone defers only to a zone that outranks it for that
block, and rendezvous ranks are one total order per block), so waits form chains, never cycles.
"""

from __future__ import annotations

from typing import Iterable

from meshcache.core.rendezvous import owner, rank

__all__ = ["puller_zone", "puller_node", "zone_order"]

_LABEL = b"meshcache puller zone\0"


def _zone_key(block: bytes) -> bytes:
    return _LABEL + block


def zone_order(block: bytes, zones: Iterable[str]) -> list[str]:
    """The distinct zones ranked best first for `block` (its puller zone first)."""
    return [z.decode() for z in rank(_zone_key(block), (z.encode() for z in zones))]


def puller_zone(block: bytes, zones: Iterable[str], mine: str) -> str:
    """The zone that brings `block` (its name: version key + index) across the WAN, among the
    pulling `zones` and this node's zone `mine` (always a candidate)."""
    best = owner(_zone_key(block), {z.encode() for z in zones} | {mine.encode()})
    assert best is not None  # `mine` is always a candidate
    return best.decode()


def puller_node(block: bytes, node_ids: Iterable[bytes]) -> bytes | None:
    """Which of a zone's pulling nodes to ask for `block`: rendezvous over their node ids with
    the block's name, the same choice the zone makes for the block's zone owner (read/rungs/
    owner.py) when its pulling nodes are its live members, so the asked node is the one that
    fetches the block for its zone."""
    return owner(block, node_ids)

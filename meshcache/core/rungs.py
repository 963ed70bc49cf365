"""Rungs of the read path and their ranks: what a request sent to another node may use there.

`BlockRequest` (one block asked for, with the highest rank it may use) and `Verified` (bytes a
rung has hashed already) live here, below the read path, the mesh and the WAN rung.

A rung's *rank* is not its place in the try order. A rung that asks another node sends its own
rank as the request's `max_rank`; the asked node uses only rungs ranked below it. Ranks strictly
fall along any chain of requests, so requests never loop, however the nodes' views disagree:
a holder is asked for its store only; a zone owner may use its store, holders, other zones and
the origin, but never asks another owner; a remote zone's provider is asked for its store only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Mapping

from meshcache.core.blocks import block_span
from meshcache.core.version import ObjectVersion


class Rank(IntEnum):
    LOCAL = 0        # this node's store
    HOLDERS = 1      # zone peers whose summary or manifest say they hold the digest
    REMOTE_ZONE = 2  # providers in other zones, found in the DHT (only the zone owner asks)
    ORIGIN = 3       # the origin, through the zone's origin gate
    OWNER = 4        # the zone owner of the block, which may use every rung below
    ANY = 5          # a local caller: every rung


def may_use(max_rank: int, rung: int) -> bool:
    """Whether a request that carries `max_rank` may be served through `rung` here."""
    return rung < max_rank


@dataclass(frozen=True)
class BlockRequest:
    """Block `index` of `version`: its digest when known, the caller's origin options, and the
    highest rank of rung this request may use here (Rank.ANY for a local caller)."""

    version: ObjectVersion
    index: int
    block_size: int
    digest: bytes | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    max_rank: int = Rank.ANY

    @property
    def span(self) -> tuple[int, int]:
        return block_span(self.index, self.version.size, self.block_size)

    @property
    def length(self) -> int:
        start, end = self.span
        return end - start

    @property
    def key(self) -> bytes:
        """The block's name before its digest is known: version key + index."""
        return self.version.key + self.index.to_bytes(8, "big")


@dataclass(frozen=True)
class Verified:
    """Bytes a rung has already hashed to `digest` (the peer service hashes a block while it
    arrives): the admit path checks the digest against the known one and does not hash again."""

    digest: bytes
    data: bytes

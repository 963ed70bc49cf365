"""The read path as a ladder of sources, tried in order; the first that returns bytes wins.

Each rung is one small object with a `name` (its stats key is `bytes_from_<counter>`), a `rank`
(core/rungs.py: what a request forwarded from it may use on the asked node) and
`async fetch(request) -> bytes | Stored | None`, None meaning "try the next rung". The node admits what a
rung returns through one path: verify, store, record the digest, count, tell the summaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meshcache.core.rungs import BlockRequest, Rank, Verified

__all__ = ["BlockRequest", "Rank", "Source", "Verified"]


class Source(Protocol):
    """One rung of the ladder."""

    name: str     # e.g. "local", "holders", "owner", "remote_zone", "origin"
    counter: str  # bytes it returns are counted as bytes_from_<counter>
    rank: int     # core.rungs.Rank: used only if request.max_rank allows it
    authoritative: bool  # its bytes are the truth even against a known digest (the origin)

    async def fetch(self, request: BlockRequest) -> "bytes | Verified | Stored | None": ...


@dataclass(frozen=True)
class Stored:
    """A rung's answer that the block is already in this node's store (no bytes to admit)."""

    digest: bytes


@dataclass
class FetchResult:
    """Where block i now is: its digest in the store, or (store unusable) its bytes in memory.
    `source` is the counter of the rung that supplied it ("local", "peers", "origin", ...)."""

    digest: bytes
    source: str
    data: bytes | None = None

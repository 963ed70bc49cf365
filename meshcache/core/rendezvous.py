"""Rendezvous (highest random weight) hashing: who owns a key among the live zone members.

Each (key, member) pair scores the first 8 bytes of BLAKE3(key || member); the member with the
highest score owns the key (ties, which need equal hashes, go to the greater member id). When a
member leaves, only the keys it owned move, each to the member that ranked second; when one joins,
it takes about 1/N of the keys from the others. No ring, no virtual nodes, no state.
"""

from __future__ import annotations

from typing import Iterable

import blake3

__all__ = ["score", "rank", "owner", "owners"]


def score(key: bytes, member: bytes) -> int:
    """The 64-bit weight of `member` for `key` (uniform, independent per pair)."""
    h = blake3.blake3(key)
    h.update(member)
    return int.from_bytes(h.digest(length=8), "big")


def rank(key: bytes, members: Iterable[bytes]) -> list[bytes]:
    """The distinct members ordered best first for `key`: the owner, then its successors."""
    h0 = blake3.blake3(key)
    scored = []
    for m in set(members):
        h = h0.copy()
        h.update(m)
        scored.append((h.digest(length=8), m))
    scored.sort(reverse=True)
    return [m for _, m in scored]


def owners(key: bytes, members: Iterable[bytes], n: int) -> list[bytes]:
    """The best `n` members for `key` (fewer when there are fewer members)."""
    return rank(key, members)[:n]


def owner(key: bytes, members: Iterable[bytes]) -> bytes | None:
    """The member that owns `key`, or None when there are no members."""
    h0 = blake3.blake3(key)
    best: tuple[bytes, bytes] | None = None
    for m in members:
        h = h0.copy()
        h.update(m)
        cand = (h.digest(length=8), m)
        if best is None or cand > best:
            best = cand
    return None if best is None else best[1]

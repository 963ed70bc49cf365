"""Cache summaries: what this node tells its peers it holds, and what it knows peers hold.

Pure (time passed in). `LocalSummary` keeps a Bloom filter of this node's block digests and says
when a new generation is due (>= `delta_fraction` of its entries changed, or `max_interval`
elapsed with any change: Summary Cache's 1-10% rule), and what to send each peer: a delta from the
generation that peer holds, or the full filter. Evictions cannot be removed from a Bloom filter,
so the filter is rebuilt from the store's digest set when removals pile up (a rebuild is just a
new generation: deltas carry flipped bits both ways). `RemoteSummaries` holds one filter per
peer and answers "who may hold this digest?".
"""

from __future__ import annotations

from typing import Iterable

from meshcache.core.bloom import BloomError, BloomFilter

DEFAULT_FPR = 0.01


class LocalSummary:
    """This node's summary and its generations."""

    def __init__(self, capacity: int, *, fpr: float = DEFAULT_FPR, delta_fraction: float = 0.01,
                 max_interval: float = 10.0) -> None:
        self.capacity = max(1024, capacity)
        self.fpr = fpr
        self.delta_fraction = delta_fraction
        self.max_interval = max_interval
        self.filter = BloomFilter.for_capacity(self.capacity, fpr)
        self.entries = 0
        self.generation = 0
        self._sent: BloomFilter | None = None  # the filter as of `generation`
        self._sent_at = float("-inf")
        self._changes = 0
        self._removed = 0

    def add(self, digest: bytes) -> None:
        """A block was stored."""
        if digest not in self.filter:
            self.filter.add(digest)
            self.entries += 1
            self._changes += 1

    def removed(self, count: int = 1) -> None:
        """Blocks were evicted; they stay in the filter (false positives) until a rebuild."""
        self._removed += count
        self._changes += count

    def needs_rebuild(self) -> bool:
        return self._removed > self.delta_fraction * max(self.entries, 1) * 10

    def rebuild(self, digests: Iterable[bytes]) -> None:
        """Start again from the store's exact digest set (drops evicted blocks)."""
        fresh = BloomFilter(self.filter.m, self.filter.k)
        items = list(digests)
        fresh.add_many(items)
        self.filter = fresh
        self.entries = len(items)
        self._removed = 0
        self._changes += 1

    def due(self, now: float) -> bool:
        """True when a new generation should go out."""
        if self._changes == 0:
            return self._sent is None
        if self._changes >= self.delta_fraction * max(self.entries, 1):
            return True
        return now - self._sent_at >= self.max_interval

    def publish(self, now: float) -> tuple[int, bytes | None, bytes]:
        """Close a generation: (generation, delta from the previous one or None, full filter)."""
        delta = self.filter.diff(self._sent) if self._sent is not None else None
        self.generation += 1
        self._sent = self.filter.copy()
        self._sent_at = now
        self._changes = 0
        return self.generation, delta, self._sent.encode()

    def get_timer(self) -> float:
        """When `due` may next turn true without a change (the periodic resend)."""
        return self._sent_at + self.max_interval


class RemoteSummaries:
    """One Bloom filter per peer, at the generation that peer last sent."""

    def __init__(self, max_bytes: int = 16 << 20) -> None:
        self.max_bytes = max_bytes
        self._filters: dict[bytes, tuple[int, BloomFilter]] = {}

    def generation(self, node_id: bytes) -> int | None:
        entry = self._filters.get(node_id)
        return entry[0] if entry else None

    def apply_full(self, node_id: bytes, generation: int, data: bytes) -> None:
        """Replace a peer's summary (BloomError when `data` is not a valid filter)."""
        self._filters[node_id] = (generation, BloomFilter.decode(data, self.max_bytes))

    def apply_delta(self, node_id: bytes, from_generation: int, to_generation: int,
                    delta: bytes) -> bool:
        """Advance a peer's summary; False when we do not hold `from_generation` (ask for full)."""
        entry = self._filters.get(node_id)
        if entry is None or entry[0] != from_generation:
            return False
        f = entry[1].copy()
        try:
            f.apply_delta(delta, self.max_bytes)
        except BloomError:
            return False
        self._filters[node_id] = (to_generation, f)
        return True

    def holders(self, digest: bytes, among: Iterable[bytes] | None = None) -> list[bytes]:
        """Peers whose summary may hold `digest` (a false positive costs one MISS)."""
        ids = self._filters if among is None else [i for i in among if i in self._filters]
        return [i for i in ids if digest in self._filters[i][1]]

    def size(self, node_id: bytes) -> int:
        entry = self._filters.get(node_id)
        return entry[1].nbytes if entry else 0

    def forget(self, node_id: bytes) -> None:
        self._filters.pop(node_id, None)

    def count(self) -> int:
        """Peers whose summary is held (one per member: forgotten when it goes)."""
        return len(self._filters)

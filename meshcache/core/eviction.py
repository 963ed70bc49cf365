"""S3-FIFO eviction (Yang et al., SOSP'23), byte-weighted, with entries that must not be evicted.

A small FIFO (10% of capacity) filters one-hit wonders; entries read again while in it move to the
main FIFO, which evicts with a 2-bit CLOCK-like frequency. A ghost FIFO remembers keys recently
evicted from the small queue so a quick return goes straight to main. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import filterfalse
from typing import Callable, Container, Hashable, Iterable, Sequence

Key = Hashable


class S3FIFO:
    """Decides which keys to drop so the bytes held stay within `capacity`.

    Each queue maps key -> size << 2 | frequency (one int per entry, no side tables): a store
    of a million blocks keeps its index small."""

    SMALL_RATIO = 0.10
    MAX_FREQ = 3

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.small_capacity = max(1, int(capacity * self.SMALL_RATIO))
        self._small: OrderedDict[Key, int] = OrderedDict()  # key -> size<<2|freq; newest last
        self._main: OrderedDict[Key, int] = OrderedDict()
        self._ghost: OrderedDict[Key, None] = OrderedDict()
        self.small_bytes = 0
        self.main_bytes = 0

    # ---- queries -----------------------------------------------------------------------------

    @property
    def used(self) -> int:
        return self.small_bytes + self.main_bytes

    def __contains__(self, key: Key) -> bool:
        return key in self._main or key in self._small

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def keys(self) -> list[Key]:
        return list(self._small) + list(self._main)

    def ghosts(self) -> int:
        """Keys remembered after eviction (bounded by the entries held, at least 16)."""
        return len(self._ghost)

    def in_main(self, key: Key) -> bool:
        """Whether `key` is held in the main queue (seen again, or back from the ghosts)."""
        return key in self._main

    def size(self, key: Key) -> int | None:
        """The bytes of an entry, or None when it is not held."""
        v = self._main.get(key)
        if v is None:
            v = self._small.get(key)
        return None if v is None else v >> 2

    # ---- inputs ------------------------------------------------------------------------------

    def insert(self, key: Key, size: int, *, main: bool = False) -> None:
        """Admit a new entry (to main if it was a recent ghost or `main` is set)."""
        if key in self:
            self.access(key)
            return
        if main or key in self._ghost:
            self._ghost.pop(key, None)
            self._main[key] = size << 2
            self.main_bytes += size
        else:
            self._small[key] = size << 2
            self.small_bytes += size

    def load(self, keys: Sequence[Key], sizes: Sequence[int]) -> None:
        """Admit many entries to main at once, in order (oldest first): the index rebuilt at
        start. Keys already held keep their place; equal sizes share one int object."""
        if len(keys) != len(sizes):
            raise ValueError("one size per key")
        vals = [s << 2 for s in sizes]
        shared: dict[int, int] = {}
        if self._small or self._main:
            fresh = [i for i, k in enumerate(keys) if k not in self]
            keys, vals = [keys[i] for i in fresh], [vals[i] for i in fresh]
        main, before = self._main, len(self._main)
        main.update(zip(keys, map(shared.setdefault, vals, vals)))
        if len(main) - before != len(keys):  # a key twice: undo, then one by one, first wins
            for k in keys:
                main.pop(k, None)
            for k, v in zip(keys, vals):
                main.setdefault(k, shared.setdefault(v, v))
            vals = [main[k] for k in dict.fromkeys(keys)]
        self.main_bytes += sum(vals) >> 2

    def missing(self, keys: Iterable[Key]) -> list[Key]:
        """The keys not held, in order (one pass at C speed for keys mostly held)."""
        small = self._small
        return [k for k in filterfalse(self._main.__contains__, keys) if k not in small]

    def missing_from(self, present: Container[Key]) -> list[Key]:
        """The keys held that `present` lacks (what the disk lost since a snapshot)."""
        return [k for k in self.keys() if k not in present]

    def entries(self) -> tuple[list[Key], list[int]]:
        """Every key held and its size, oldest first (main, then small): what `load` takes."""
        return (list(self._main) + list(self._small),
                [v >> 2 for v in self._main.values()] + [v >> 2 for v in self._small.values()])

    def access(self, key: Key) -> None:
        """Note a read; cheap enough for every hot read (no reordering)."""
        for q in (self._main, self._small):
            v = q.get(key)
            if v is not None:
                if v & 3 < self.MAX_FREQ:
                    q[key] = v + 1  # an existing key keeps its place
                return

    def remove(self, key: Key) -> bool:
        """Forget an entry the store deleted for another reason; True if it was present."""
        v = self._small.pop(key, None)
        if v is not None:
            self.small_bytes -= v >> 2
            return True
        v = self._main.pop(key, None)
        if v is not None:
            self.main_bytes -= v >> 2
            return True
        return False

    def evict(self, can_evict: Callable[[Key], bool] = lambda k: True,
              target: int | None = None) -> list[Key]:
        """Choose victims until used <= target (default capacity); entries that `can_evict`
        refuses (pinned, being read) are kept and passed over. Returns the victims, oldest first."""
        goal = self.capacity if target is None else target
        victims: list[Key] = []
        # Each pass over an entry either evicts it, promotes it, or lowers its frequency, so the
        # loop ends; the budget also stops it when everything left is protected.
        budget = 4 * (len(self._small) + len(self._main)) + 8
        stalled = 0  # main entries in a row passed over because they are protected
        while self.used > goal and budget > 0:
            budget -= 1
            if self._small and (self.small_bytes >= self.small_capacity or not self._main
                                or stalled >= len(self._main)):
                self._evict_small(victims, can_evict)
                stalled = 0
            elif self._main:
                stalled = 0 if self._evict_main(victims, can_evict) else stalled + 1
            else:
                break
        return victims

    # ---- internals ---------------------------------------------------------------------------

    def _evict_small(self, victims: list[Key], can_evict: Callable[[Key], bool]) -> None:
        key, v = self._small.popitem(last=False)
        size = v >> 2
        self.small_bytes -= size
        if v & 3 or not can_evict(key):
            self._main[key] = size << 2
            self.main_bytes += size
            return
        victims.append(key)
        self._ghost[key] = None
        while len(self._ghost) > max(16, len(self)):
            self._ghost.popitem(last=False)

    def _evict_main(self, victims: list[Key], can_evict: Callable[[Key], bool]) -> bool:
        """Evict or age the oldest main entry; False when it was protected and already cold."""
        key, v = self._main.popitem(last=False)
        f = v & 3
        if f > 0 or not can_evict(key):
            self._main[key] = v - 1 if f else v
            return f > 0
        self.main_bytes -= v >> 2
        victims.append(key)
        return True

"""A small TTL cache: values trusted for `ttl` seconds, then asked for again (listings, stats).

Pure: callers pass `now`. Bounded: past `max_entries` the oldest entries are dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 4096) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        """The value if it was put less than `ttl` seconds before `now`, else None."""
        item = self._items.get(key)
        if item is None:
            return None
        if now - item[0] >= self.ttl:
            del self._items[key]
            return None
        return item[1]

    def put(self, key: K, value: V, now: float) -> None:
        self._items.pop(key, None)
        self._items[key] = (now, value)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def drop(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

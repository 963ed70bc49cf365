"""Stat cache: origin stats trusted for `metadata_ttl`, and the newest version seen per URL.

Bounded: a long-running daemon reads an unbounded number of URLs, so past `max_urls` the URL
stated least recently is forgotten (a reader of it then no longer learns of newer versions from
this cache; its next stat asks the origin).
"""

from __future__ import annotations

from collections import OrderedDict

from meshcache.core.version import ObjectVersion

MAX_URLS = 65536  # as many as the outage policy remembers confirmations of (core/staleness.py)


class StatCache:
    """Pure: callers pass `now`. Remembers the newest version of each URL even after expiry."""

    def __init__(self, ttl: float, max_urls: int = MAX_URLS) -> None:
        self.ttl = ttl
        self.max_urls = max_urls
        # url -> (newest version seen, when it was stated; None once dropped), oldest stat first
        self._entries: OrderedDict[str, tuple[ObjectVersion, float | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, url: str, now: float) -> ObjectVersion | None:
        """The cached version if younger than the TTL, else None."""
        entry = self._entries.get(url)
        if entry is None or entry[1] is None or now - entry[1] >= self.ttl:
            return None
        return entry[0]

    def put(self, version: ObjectVersion, now: float) -> bool:
        """Record a stat result; True when it replaces another version of the URL."""
        old = self._entries.pop(version.url, None)
        self._entries[version.url] = (version, now)
        if len(self._entries) > self.max_urls:
            self._entries.popitem(last=False)
        return old is not None and old[0] != version

    def latest(self, url: str) -> ObjectVersion | None:
        """The newest version seen for `url` (readers of older versions must stop)."""
        entry = self._entries.get(url)
        return entry[0] if entry is not None else None

    def drop(self, url: str) -> None:
        """Forget the cached stat (the next read asks the origin); `latest` is kept."""
        entry = self._entries.get(url)
        if entry is not None:
            self._entries[url] = (entry[0], None)

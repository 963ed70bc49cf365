"""Stat cache: origin stats trusted for `metadata_ttl`, and the newest version seen per URL."""

from __future__ import annotations

from meshcache.core.version import ObjectVersion


class StatCache:
    """Pure: callers pass `now`. Remembers the newest version of each URL even after expiry."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._fresh: dict[str, tuple[ObjectVersion, float]] = {}
        self._latest: dict[str, ObjectVersion] = {}

    def get(self, url: str, now: float) -> ObjectVersion | None:
        """The cached version if younger than the TTL, else None."""
        entry = self._fresh.get(url)
        if entry is None or now - entry[1] >= self.ttl:
            return None
        return entry[0]

    def put(self, version: ObjectVersion, now: float) -> bool:
        """Record a stat result; True when it replaces another version of the URL."""
        self._fresh[version.url] = (version, now)
        old = self._latest.get(version.url)
        self._latest[version.url] = version
        return old is not None and old != version

    def latest(self, url: str) -> ObjectVersion | None:
        """The newest version seen for `url` (readers of older versions must stop)."""
        return self._latest.get(url)

    def drop(self, url: str) -> None:
        """Forget the cached stat (the next read asks the origin); `latest` is kept."""
        self._fresh.pop(url, None)

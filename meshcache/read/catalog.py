"""The catalog: what a node knows of object versions (stat results for `metadata_ttl`) and of their
blocks' digests (manifests), kept in memory, bounded, and written to the store when they grow.

Thread-safe: readers ask it from their own threads, the loop from its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable

from meshcache.core.manifest import Manifest
from meshcache.core.statcache import StatCache
from meshcache.core.version import ObjectVersion
from meshcache.read.store import BlockStore, StoreError

log = logging.getLogger("meshcache.read.catalog")

MAX_MANIFESTS = 4096  # manifests held in memory; older clean ones are reloaded from the store


class Catalog:
    """Stat cache + manifest cache with dirty tracking; `flush()` writes what grew."""

    def __init__(self, store: BlockStore, block_size: int, metadata_ttl: float,
                 clock: Callable[[], float] = time.monotonic,
                 max_manifests: int = MAX_MANIFESTS) -> None:
        self.store = store
        self.block_size = block_size
        self.clock = clock
        self.max_manifests = max_manifests
        self._lock = threading.Lock()
        self._stats = StatCache(metadata_ttl)
        self._manifests: OrderedDict[bytes, Manifest] = OrderedDict()
        self._dirty: set[bytes] = set()
        self.store_errors = 0

    def after_fork(self) -> None:
        """The parent's lock may have been held by another thread at fork."""
        self._lock = threading.Lock()

    # ---- versions ----------------------------------------------------------------------------

    def fresh(self, url: str) -> ObjectVersion | None:
        """The version of `url` if its stat is younger than metadata_ttl."""
        with self._lock:
            return self._stats.get(url, self.clock())

    def put_version(self, version: ObjectVersion) -> bool:
        """Record a stat result; True when it replaces another version (its manifests go)."""
        with self._lock:
            changed = self._stats.put(version, self.clock())
            if changed:
                for key, m in list(self._manifests.items()):
                    if m.version.url == version.url and m.version != version:
                        del self._manifests[key]
                        self._dirty.discard(key)
        return changed

    def latest(self, url: str) -> ObjectVersion | None:
        """The newest version of `url` seen (readers of an older one must stop)."""
        return self._stats.latest(url)

    def drop_version(self, url: str) -> None:
        """Forget the stat of `url`: the next read asks the origin."""
        with self._lock:
            self._stats.drop(url)

    # ---- manifests ---------------------------------------------------------------------------

    def manifest(self, version: ObjectVersion) -> Manifest:
        """The manifest of a version: in memory, else from the store, else a new empty one."""
        m = self.known_manifest(version)
        if m is None or m.block_size != self.block_size or m.version != version:
            m = Manifest(version, self.block_size)
        return self._hold(version.key, m)

    def known_manifest(self, version: ObjectVersion) -> Manifest | None:
        """The manifest of a version if this node has one (memory or store); never creates."""
        with self._lock:
            m = self._manifests.get(version.key)
            if m is not None:
                self._manifests.move_to_end(version.key)
                return m
        m = self.store.load_manifest(version.key)
        if m is None or m.block_size != self.block_size:
            return m  # another block size: not ours to extend
        return self._hold(version.key, m)

    def _hold(self, key: bytes, m: Manifest) -> Manifest:
        with self._lock:
            held = self._manifests.setdefault(key, m)
            self._manifests.move_to_end(key)
            if len(self._manifests) > self.max_manifests:
                for old in list(self._manifests)[:len(self._manifests) - self.max_manifests]:
                    if old not in self._dirty:  # dirty ones wait for the next flush
                        del self._manifests[old]
            return held

    def __len__(self) -> int:
        return len(self._manifests)

    def digest(self, version: ObjectVersion, index: int) -> bytes | None:
        return self.manifest(version).digests[index]

    def record(self, version: ObjectVersion, index: int, d: bytes | None) -> None:
        """Block `index` of `version` has digest `d` (None: forget a wrong one)."""
        m = self.manifest(version)
        with self._lock:
            if m.digests[index] != d:
                m.digests[index] = d
                if d is not None:
                    self._dirty.add(version.key)

    def merge(self, version: ObjectVersion, other: Manifest) -> bool:
        """Take the digests `other` knows and this one does not; True if any were new."""
        m = self.manifest(version)
        with self._lock:
            grew = m.merge(other)
            if grew:
                self._dirty.add(version.key)
        return grew

    def reload(self, version: ObjectVersion) -> None:
        """Merge what another process sharing the cache directory wrote for this version."""
        on_disk = self.store.load_manifest(version.key)
        if on_disk is not None and on_disk.version == version \
                and on_disk.block_size == self.block_size:
            m = self.manifest(version)
            with self._lock:
                m.merge(on_disk)

    def forget(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            for key in keys:
                self._manifests.pop(key, None)
                self._dirty.discard(key)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def flush(self) -> int:
        """Write every manifest that gained digests since the last flush; returns how many."""
        with self._lock:
            dirty = [self._manifests[k] for k in self._dirty if k in self._manifests]
            self._dirty.clear()
        for m in dirty:
            try:
                self.store.save_manifest(m)
            except StoreError as e:
                log.warning("%s", e)
                self.store_errors += 1
        return len(dirty)

"""The Node: one cache. Ties the block store, the origins and the loop thread into the read path.

Read path for block i of an object version (DESIGN.md): 1. the local store; 2-4. peers (later
layers plug in here); 5. the origin, with a ranged read pinned to the version, verified and stored
before it is handed out. Concurrent requests for one block share one fetch (singleflight).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from meshcache.core.blocks import block_count, block_span
from meshcache.config import Config
from meshcache.core.digest import digest as compute_digest
from meshcache.read.gate import Gate
from meshcache.read.loop import LoopThread
from meshcache.core.manifest import Manifest
from meshcache.read.origin import ObjectChanged, ObjectNotFound, Origin, OriginError, normalize_url
from meshcache.read.singleflight import SingleFlight
from meshcache.core.staleness import OutagePolicy
from meshcache.core.statcache import StatCache
from meshcache.read.store import BlockCorrupt, BlockStore, StoreError
from meshcache.core.version import ObjectVersion

log = logging.getLogger("meshcache.read.node")

STAT_KEYS = ("bytes_from_local", "bytes_from_peers", "bytes_from_origin", "origin_requests",
             "block_hits", "block_misses", "origin_errors", "store_errors", "corrupt_blocks",
             "evicted_blocks", "version_changes", "bad_hints", "owner_failures", "stale_stats")
ORIGIN_RETRY_AFTER = 5.0  # seconds a failed origin is not asked again (reads fail or go stale)


@dataclass
class FetchResult:
    """Where block i now is: its digest in the store, or (store unusable) its bytes in memory."""

    digest: bytes
    source: str  # "local", "origin" or "peer"
    data: bytes | None = None


class Node:
    """One cache on this host: thread-safe; its async work runs on a private loop thread."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = (config if config is not None else Config.from_env()).validated()
        self.store = BlockStore(self.config.cache_dir, self.config.capacity,
                                fsync=self.config.fsync)
        self.block_size = self.config.block_size
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._statcache = StatCache(self.config.metadata_ttl)
        self._outages = OutagePolicy(self.config.stale_if_error, ORIGIN_RETRY_AFTER)
        self._manifests: dict[bytes, Manifest] = {}
        self._dirty: set[bytes] = set()
        self._loop = LoopThread()
        self._loop.on_fork(self._after_fork)
        self._reset_async_state()
        self._closed = False
        self.peers: Any = None  # PeerService once started (peers.py)
        self.mesh: Any = None  # Mesh once started (mesh.py)
        self._manifest_asked: dict[bytes, tuple[float, Any]] = {}  # key -> (when, who answered)
        if self.config.peers or self.config.mdns or self.config.preset in ("lan", "wan"):
            self.start_peers()

    # ---- lifecycle ---------------------------------------------------------------------------

    def _reset_async_state(self) -> None:
        self._origin: Origin | None = None
        self._flights: SingleFlight[FetchResult] = SingleFlight()
        self._origin_sem: Gate | None = None
        self._flusher: asyncio.Task[None] | None = None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.store._lock = threading.Lock()
        self._reset_async_state()
        self.peers = None  # its sockets belong to the parent; a child reads without peers
        self.mesh = None

    def start_peers(self) -> tuple[str, int]:
        """Listen for peers on `config.listen` and ask `config.peers` before the origin."""
        if self.peers is None:
            from meshcache.mesh.mesh import Mesh
            from meshcache.mesh.peers import PeerService

            async def start() -> Any:
                service = PeerService(self)
                await service.start()
                self.peers = service
                self.mesh = Mesh(self, service)
                await self.mesh.start()
                return service

            self._loop.run(start())
        return self.peers.address

    def _origin_limit(self) -> int:
        """Origin reads this node may have in flight: its share of the zone's."""
        n = 1 + (len(self.mesh.live()) if self.mesh is not None else 0)
        return -(-self.config.origin_concurrency // n)

    def _async_state(self) -> tuple[Origin, Gate]:
        """Loop-bound objects, made on first use on the loop (and again after fork)."""
        if self._origin is None or self._origin_sem is None:
            loop = asyncio.get_running_loop()
            self._origin = Origin(loop, self.config.origin_timeout)
            self._origin_sem = Gate(self._origin_limit)
            self._flusher = loop.create_task(self._flush_manifests_periodically())
        return self._origin, self._origin_sem

    def close(self) -> None:
        """Write pending manifests, close origin sessions and stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        if self._origin is not None or self.peers is not None:
            try:
                self._loop.run(self._shutdown(), timeout=10)
            except Exception:
                pass
        self._loop.stop()
        _forget_shared(self)

    async def _shutdown(self) -> None:
        if self.mesh is not None:
            await self.mesh.close()
        if self.peers is not None:
            await self.peers.close()
        if self._flusher is not None:
            self._flusher.cancel()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._origin is not None:
            await self._origin.close()

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- stats -------------------------------------------------------------------------------

    def count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._stats[k] += v

    def stats(self) -> dict[str, int]:
        """Counters since start: where bytes came from, origin requests, hits, errors, store use."""
        with self._lock:
            out = dict(self._stats)
        if self.peers is not None:
            out.update(self.peers.stats)
        if self.mesh is not None:
            out.update(self.mesh.stats)
            out["members"] = len(self.mesh.members)
        out["corrupt_blocks"] = self.store.corrupt_blocks
        out["evicted_blocks"] = self.store.evicted_blocks
        out["store_bytes"] = self.store.used
        out["store_blocks"] = len(self.store.digests())
        out["capacity"] = self.store.capacity
        return out

    # ---- versions and manifests --------------------------------------------------------------

    def version(self, url: str, options: Mapping[str, Any] | None = None, *,
                refresh: bool = False) -> ObjectVersion:
        """The current version of `url` (cached for metadata_ttl seconds)."""
        url = normalize_url(url)
        now = time.monotonic()
        if not refresh:
            with self._lock:
                v = self._statcache.get(url, now)
            if v is not None:
                return v
        v = self._loop.run(self._stat(url, dict(options or {})))
        return v

    async def _stat(self, url: str, options: dict[str, Any]) -> ObjectVersion:
        v, fresh = await self._stat_or_stale(url, options)
        if not fresh:
            return v
        with self._lock:
            changed = self._statcache.put(v, time.monotonic())
            if changed:
                self._stats["version_changes"] += 1
                for key, m in list(self._manifests.items()):
                    if m.version.url == url and m.version != v:
                        del self._manifests[key]
        if changed:
            log.info("%s changed at the origin; new version %s", url, v.token)
        return v

    # ---- origin outage: stale_if_error (policy in core/staleness.py) -----------------------------

    async def _stat_or_stale(self, url: str, options: dict[str, Any]) -> tuple[ObjectVersion, bool]:
        """(version, fresh): the origin's answer; or, while the origin fails, the version it last
        confirmed (within stale_if_error), else an OriginError naming the origin, at once."""
        now = time.monotonic()
        outage = self._outages.down(url, now)
        asked = outage is None
        if asked:
            origin, _ = self._async_state()
            try:
                v = await origin.stat(url, options)
            except ObjectNotFound:
                self._outages.forget(url)
                raise
            except OriginError as e:
                now = time.monotonic()
                self._outages.failed(url, str(e), now)
                outage = self._outages.down(url, now)
                if outage is None:  # retry_after 0: no memory of the outage
                    raise
            else:
                self._outages.confirmed(v, time.monotonic())
                return v, True
        stale = self._outages.stale(url, now)
        if stale is None:
            raise OriginError(self._outages.outage_message(url, outage, now))
        self.count(stale_stats=1)
        log.log(logging.WARNING if asked else logging.DEBUG,  # once per retry_after
                "%s: origin %s failing (%s); serving the last known version %s",
                url, outage.origin, outage.error, stale.token)
        return stale, False

    def latest(self, url: str) -> ObjectVersion | None:
        """The newest version of `url` this node has seen (no origin request)."""
        return self._statcache.latest(url)

    def manifest(self, version: ObjectVersion) -> Manifest:
        """The manifest of a version: in memory, else from the store, else a new empty one."""
        key = version.key
        with self._lock:
            m = self._manifests.get(key)
        if m is not None:
            return m
        m = self.store.load_manifest(key)
        if m is None or m.block_size != self.block_size:
            m = Manifest(version, self.block_size)
        with self._lock:
            return self._manifests.setdefault(key, m)

    def known_manifest(self, version: ObjectVersion) -> Manifest | None:
        """The manifest of a version if this node has one (memory or store); never creates."""
        with self._lock:
            m = self._manifests.get(version.key)
        if m is None:
            m = self.store.load_manifest(version.key)
        return m

    def _record_digest(self, version: ObjectVersion, index: int, d: bytes) -> None:
        m = self.manifest(version)
        with self._lock:
            if m.digests[index] != d:
                m.digests[index] = d
                self._dirty.add(version.key)

    def flush(self) -> None:
        """Write every manifest that gained digests since the last flush."""
        with self._lock:
            dirty = [self._manifests[k] for k in self._dirty if k in self._manifests]
            self._dirty.clear()
        for m in dirty:
            try:
                self.store.save_manifest(m)
            except StoreError as e:
                log.warning("%s", e)
                self.count(store_errors=1)

    async def _flush_manifests_periodically(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._dirty:
                await asyncio.to_thread(self.flush)

    # ---- fetching blocks ---------------------------------------------------------------------

    def has_block(self, version: ObjectVersion, index: int) -> bytes | None:
        """The digest of block `index` when it is in the local store, else None."""
        d = self.manifest(version).digests[index]
        return d if d is not None and d in self.store else None

    def submit_fetch(self, version: ObjectVersion, index: int,
                     options: Mapping[str, Any] | None = None) -> "concurrent.futures.Future[FetchResult]":
        """Start bringing block `index` into the store; returns a concurrent Future."""
        return self._loop.submit(self.fetch(version, index, dict(options or {})))

    def fetch_sync(self, version: ObjectVersion, index: int,
                   options: Mapping[str, Any] | None = None) -> FetchResult:
        return self._loop.run(self.fetch(version, index, dict(options or {})))

    async def fetch(self, version: ObjectVersion, index: int, options: dict[str, Any],
                    forward: bool = True) -> FetchResult:
        """Block `index` of `version` into the store, one fetch however many ask at once.
        `forward=False` (a peer asked us as the owner) never asks another owner."""
        return await self._flights.do((version.key, index),
                                      lambda: self._fetch_once(version, index, options, forward))

    async def _fetch_once(self, version: ObjectVersion, index: int,
                          options: dict[str, Any], forward: bool = True) -> FetchResult:
        m = self.manifest(version)
        known = m.digests[index]
        if known is None:
            # Another process sharing the cache directory may have fetched it already.
            on_disk = await asyncio.to_thread(self.store.load_manifest, version.key)
            if on_disk is not None and on_disk.version == version \
                    and on_disk.block_size == m.block_size:
                with self._lock:
                    m.merge(on_disk)
                known = m.digests[index]
        if known is not None and known in self.store:
            return FetchResult(known, "local")
        self.count(block_misses=1)
        start, end = block_span(index, version.size, m.block_size)
        if self.mesh is not None:
            got = await self._fetch_from_mesh(version, m, index, end - start, forward)
            if got is not None:
                return got
            known = m.digests[index]
        data = await self._read_origin(version, start, end, options)
        try:
            try:
                d = await asyncio.to_thread(self.store.put, data, known)
            except BlockCorrupt:
                # The manifest knew another digest. The origin is the truth: if the object still
                # has this version, the digest was a bad hint (e.g. from a peer); else it changed.
                origin, _ = self._async_state()
                if await origin.stat(version.url, options) != version:
                    with self._lock:
                        self._statcache.drop(version.url)
                    raise ObjectChanged(f"{version.url}: block {index} no longer matches the "
                                        "version first read; the object changed at the origin") \
                        from None
                log.warning("%s: block %d: the manifest's digest was wrong; using the origin's",
                            version.url, index)
                self.count(bad_hints=1)
                with self._lock:
                    m.digests[index] = None
                known = None
                d = await asyncio.to_thread(self.store.put, data, None)
        except StoreError as e:
            log.warning("%s; serving block %d of %s from memory", e, index, version.url)
            self.count(store_errors=1)
            d = compute_digest(data)
            if known is not None and d != known:
                raise ObjectChanged(f"{version.url}: block {index} changed at the origin") \
                    from None
            self._record_digest(version, index, d)
            return FetchResult(d, "origin", data)
        self._record_digest(version, index, d)
        if self.mesh is not None:
            self.mesh.on_stored(d)
        return FetchResult(d, "origin")

    async def _fetch_from_mesh(self, version: ObjectVersion, m: Manifest, index: int,
                               length: int, forward: bool) -> FetchResult | None:
        """Steps 2-3 of the read path: peers whose summary (or manifest) says they hold the
        block, then the block's owner. None when the origin must be read here."""
        mesh, peers = self.mesh, self.peers
        known = m.digests[index]
        if known is None:
            await self._flights.do(("manifest", version.key),  # type: ignore[arg-type]
                                   lambda: self._ask_manifest(version, m))
            known = m.digests[index]
        # The member whose manifest told us the digests likely holds the blocks, even before
        # its summary reaches us.
        source = self._manifest_asked.get(version.key, (0.0, None))[1]
        if source is not None and source.node_id not in mesh.members:
            source = None
        if known is not None:
            candidates = mesh.holders(known)
            if source is not None and source not in candidates:
                candidates.append(source)
            candidates = [c for c in candidates if not peers.penalized(c.address)]
            for member in candidates[:3]:
                try:
                    data = await peers.get_block(member.address, known, self.block_size)
                except Exception as e:  # unreachable, stalled or lying: try the next source
                    peers.failed(member.address, e)
                    log.info("block %d of %s from %s: %s", index, version.url,
                             member.address, e)
                    continue
                if data is not None and len(data) == length:
                    return await self._keep(version, index, known, data, "peer")
        owner = mesh.owner(version.key + index.to_bytes(8, "big")) if forward else None
        if owner is None or peers.penalized(owner.address):
            return None
        from meshcache.mesh.peers import PeerMisbehaved

        for attempt in (1, 2):
            try:
                d, data = await peers.get_block_by_hint(owner.address, version, index, known,
                                                        self.block_size)
                break
            except Exception as e:
                peers.failed(owner.address, e)
                self.count(owner_failures=1)
                # An owner that is still connected is busy, not gone: ask it once more (a
                # retry joins its fetch) before reading the origin a second time for the zone.
                again = attempt == 1 and peers.reachable(owner.address) \
                    and not isinstance(e, PeerMisbehaved)
                log.info("owner %s of block %d of %s failed: %s; %s", owner.address, index,
                         version.url, e, "asking again" if again else "reading the origin")
                if not again:
                    return None
        if len(data) != length:
            return None
        return await self._keep(version, index, d, data, "peer")

    async def _ask_manifest(self, version: ObjectVersion, m: Manifest) -> Any:
        """Ask the manifest's owner (then one other member) once per version for its digests;
        returns the member that answered, or None."""
        now = time.monotonic()
        last = self._manifest_asked.get(version.key)
        if last is not None and now - last[0] < self.config.ping_interval:
            return last[1]
        self._manifest_asked[version.key] = (now, None)
        mesh = self.mesh
        owner = mesh.owner(version.key)
        asked = [owner] if owner is not None else []
        asked += [x for x in mesh.live() if x is not owner][:1]
        for member in asked:
            try:
                remote = await self.peers.get_manifest(member.address, version, m.block_size)
            except Exception as e:
                log.info("manifest of %s from %s: %s", version.url, member.address, e)
                continue
            if remote is not None:
                with self._lock:
                    if m.merge(remote):
                        self._dirty.add(version.key)
                self._manifest_asked[version.key] = (now, member)
                return member
        return None

    async def _keep(self, version: ObjectVersion, index: int, d: bytes, data: bytes,
                    source: str) -> FetchResult:
        """Store verified peer bytes and record their digest."""
        self.count(bytes_from_peers=len(data))
        try:
            await asyncio.to_thread(self.store.put, data, d)
        except StoreError as e:
            log.warning("%s; serving block %d of %s from memory", e, index, version.url)
            self.count(store_errors=1)
            self._record_digest(version, index, d)
            return FetchResult(d, source, data)
        self._record_digest(version, index, d)
        if self.mesh is not None:
            self.mesh.on_stored(d)
        return FetchResult(d, source)

    async def _read_origin(self, version: ObjectVersion, start: int, end: int,
                           options: dict[str, Any]) -> bytes:
        origin, sem = self._async_state()
        attempts = self.config.origin_retries + 1
        for attempt in range(attempts):
            async with sem:
                self.count(origin_requests=1)
                try:
                    data = await origin.read(version, start, end, options)
                except (ObjectChanged, ObjectNotFound):
                    self.count(origin_errors=1)
                    with self._lock:
                        self._statcache.drop(version.url)
                    raise
                except OriginError as e:
                    self.count(origin_errors=1)
                    if attempt + 1 == attempts:
                        self._outages.failed(version.url, str(e), time.monotonic())
                        raise
                    log.info("%s (attempt %d of %d)", e, attempt + 1, attempts)
                else:
                    self.count(bytes_from_origin=len(data))
                    return data
            await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def read_origin_sync(self, version: ObjectVersion, index: int,
                         options: Mapping[str, Any] | None = None) -> bytes:
        """Block bytes straight from the origin (a last resort when the store keeps losing it)."""
        start, end = block_span(index, version.size, self.block_size)
        return self._loop.run(self._read_origin(version, start, end, dict(options or {})))

    # ---- whole objects -----------------------------------------------------------------------

    def prewarm(self, urls: str | Iterable[str], progress: Callable[[int], Any] | None = None,
                options: Mapping[str, Any] | None = None,
                on_total: Callable[[int], Any] | None = None) -> dict[str, int]:
        """Fetch every block of each URL into the store; returns {url: size}. `progress(n)` is
        called with the bytes of each block as it lands (after `on_total(total_bytes)`)."""
        if isinstance(urls, str):
            urls = [urls]
        opts = dict(options or {})
        versions = [self.version(u, opts) for u in urls]
        if on_total is not None:
            on_total(sum(v.size for v in versions))
        self._loop.run(self._prewarm(versions, opts, progress))
        self.flush()
        return {v.url: v.size for v in versions}

    async def _prewarm(self, versions: list[ObjectVersion], options: dict[str, Any],
                       progress: Callable[[int], Any] | None) -> None:
        work = [(v, i) for v in versions
                for i in range(block_count(v.size, self.block_size))]
        queue: asyncio.Queue[tuple[ObjectVersion, int]] = asyncio.Queue()
        for item in work:
            queue.put_nowait(item)

        async def worker() -> None:
            while True:
                try:
                    v, i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self.fetch(v, i, options)
                if progress is not None:
                    start, end = block_span(i, v.size, self.block_size)
                    progress(end - start)

        workers = [asyncio.ensure_future(worker())
                   for _ in range(min(len(work), 2 * self.config.origin_concurrency))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    def cat(self, url: str, start: int | None = None, end: int | None = None,
            options: Mapping[str, Any] | None = None) -> bytes:
        """Bytes [start, end) of the object (negative offsets count from the end)."""
        from meshcache.read.reader import Reader

        with Reader(self, url, options) as f:
            size = f.size
            s = 0 if start is None else (start + size if start < 0 else start)
            e = size if end is None else (end + size if end < 0 else end)
            s, e = max(0, min(s, size)), max(0, min(e, size))
            if e <= s:
                return b""
            f.limit_readahead(e)
            f.seek(s)
            return f.read(e - s)

    def open(self, url: str, mode: str = "rb", **options: Any) -> Any:
        """A read-only file object over `url` (binary, or text for mode 'r')."""
        from meshcache.read.reader import Reader, open_reader

        return open_reader(self, url, mode, options)

    def refresh(self, url: str, options: Mapping[str, Any] | None = None) -> ObjectVersion:
        """Drop the cached stat of `url` and ask the origin again."""
        url = normalize_url(url)
        with self._lock:
            self._statcache.drop(url)
        return self.version(url, options, refresh=True)

    def stat(self, url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What the cache knows of `url`: size, version token, blocks cached, pinned."""
        v = self.version(url, options)
        m = self.manifest(v)
        cached = sum(1 for d in m.digests if d is not None and d in self.store)
        return {"url": v.url, "size": v.size, "version": v.token, "block_size": m.block_size,
                "blocks": m.blocks, "cached_blocks": cached,
                "pinned": self.store.pinned(v.key)}

    # ---- cache management --------------------------------------------------------------------

    def cached_objects(self) -> list[dict[str, Any]]:
        """Every object version with a manifest in the store, with how much of it is cached."""
        self.flush()
        out = []
        for m in self.store.manifests():
            cached = [d for d in m.digests if d is not None and d in self.store]
            cached_bytes = sum(
                block_span(i, m.version.size, m.block_size)[1]
                - block_span(i, m.version.size, m.block_size)[0]
                for i, d in enumerate(m.digests) if d is not None and d in self.store)
            out.append({"url": m.version.url, "version": m.version.token, "size": m.version.size,
                        "blocks": m.blocks, "cached_blocks": len(cached),
                        "cached_bytes": cached_bytes, "pinned": self.store.pinned(m.version.key)})
        return sorted(out, key=lambda o: o["url"])

    def pin(self, url: str, options: Mapping[str, Any] | None = None,
            progress: Callable[[int], Any] | None = None,
            on_total: Callable[[int], Any] | None = None) -> ObjectVersion:
        """Fetch every block of `url` and keep them out of eviction."""
        v = self.version(url, options)
        self.store.pin(self.manifest(v))
        self.prewarm([v.url], progress, options, on_total)
        self.store.pin(self.manifest(v))
        return v

    def unpin(self, url: str) -> int:
        """Let eviction take `url`'s blocks again; returns how many versions were unpinned."""
        url = normalize_url(url)
        n = 0
        for m in list(self.store.manifests()):
            if m.version.url == url and self.store.pinned(m.version.key):
                self.store.unpin(m.version.key)
                n += 1
        return n

    def evict(self, url: str | None = None) -> int:
        """Remove `url`'s blocks (or every unpinned block); returns bytes freed."""
        if url is None:
            return self.store.evict(0)
        url = normalize_url(url)
        freed = 0
        self.flush()
        for m in list(self.store.manifests()):
            if m.version.url != url:
                continue
            if self.store.pinned(m.version.key):
                raise StoreError(0, f"{url} is pinned; unpin it first")
            for d in m.digests:
                if d is not None and d in self.store:
                    freed += os.stat(self.store.block_path(d)).st_size
                    self.store.remove(d)
            self.store.delete_manifest(m.version.key)
            with self._lock:
                self._manifests.pop(m.version.key, None)
        return freed


# ---- nodes shared by cache directory (one per directory per process) ------------------------

_shared: dict[str, Node] = {}
_shared_lock = threading.Lock()


def shared_node(config: Config | None = None) -> Node:
    """The process's node for this config's cache directory, made on first use."""
    cfg = config if config is not None else Config.from_env()
    key = os.path.realpath(os.path.expanduser(cfg.cache_dir))
    with _shared_lock:
        node = _shared.get(key)
        if node is None or node._closed:
            node = Node(cfg)
            _shared[key] = node
        return node


def _forget_shared(node: Node) -> None:
    with _shared_lock:
        for k, v in list(_shared.items()):
            if v is node:
                del _shared[k]


@atexit.register
def _flush_shared() -> None:
    """Write pending manifests of every shared node when the interpreter exits."""
    for node in list(_shared.values()):
        try:
            node.flush()
        except Exception:
            pass


def _reset_shared_lock() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_shared_lock)

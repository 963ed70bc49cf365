"""The Node: one cache. Ties the block store, the catalog, the ladder of sources and the loop
thread together, and admits what any rung returns through one path (verify, store, record, count,
tell the summaries).

Read path for block i of an object version: the ladder (read/ladder.py, read/rungs/): local store,
zone holders, zone owner, origin; concurrent requests for one block share one climb.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from meshcache.config import Config
from meshcache.core.blocks import block_span
from meshcache.core.digest import digest as compute_digest
from meshcache.core.manifest import Manifest
from meshcache.core.rungs import Rank, may_use
from meshcache.core.staleness import OutagePolicy
from meshcache.core.version import ObjectVersion
from meshcache.read import prewarm as _prewarm
from meshcache.read.catalog import Catalog
from meshcache.read.flock import BlockLocks, Held
from meshcache.read.gate import Gate
from meshcache.core.rungs import BlockRequest
from meshcache.read.ladder import FetchResult, Source, Stored, Verified
from meshcache.read.loop import LoopThread
from meshcache.read.origin import ObjectChanged, ObjectNotFound, Origin, OriginError, normalize_url
from meshcache.read.rungs.local import LocalSource
from meshcache.read.rungs.origin import OriginSource
from meshcache.read.singleflight import SingleFlight
from meshcache.read.streamfill import StreamFill
from meshcache.read.zoneversion import ZoneVersion, ask_zone
from meshcache.read.store import BlockCorrupt, BlockStore, StoreError, raise_fd_limit

if TYPE_CHECKING:
    from meshcache.mesh.mesh import Mesh
    from meshcache.mesh.peers import PeerService
    from meshcache.wan.zone import WanSide

log = logging.getLogger("meshcache.read.node")

STAT_KEYS = ("bytes_from_local", "bytes_from_peers", "bytes_from_origin", "origin_requests",
             "block_hits", "block_misses", "origin_errors", "store_errors", "corrupt_blocks",
             "evicted_blocks", "version_changes", "bad_hints", "owner_failures", "stale_stats",
             "zone_versions")
ORIGIN_RETRY_AFTER = 5.0  # seconds a failed origin is not asked again (reads fail or go stale)

__all__ = ["Node", "FetchResult", "BlockRequest"]


class Node:
    """One cache on this host: thread-safe; its async work runs on a private loop thread."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = (config if config is not None else Config.from_env()).validated()
        raise_fd_limit()
        self.store = BlockStore(self.config.cache_dir, self.config.capacity,
                                fsync=self.config.fsync)
        self.block_size = self.config.block_size
        self.catalog = Catalog(self.store, self.block_size, self.config.metadata_ttl)
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._outages = OutagePolicy(self.config.stale_if_error, ORIGIN_RETRY_AFTER)
        self._loop = LoopThread()
        self._loop.on_fork(self._after_fork)
        self._reset_async_state()
        self.closed = False
        self._added: list[tuple[str, Source]] = []
        self.block_locks = BlockLocks(self.store.root / "locks")
        self.peers: PeerService | None = None  # once started (mesh/peers.py)
        self.mesh: Mesh | None = None  # once started (mesh/mesh.py)
        self.wan: WanSide | None = None  # once started with a DHT (wan/zone.py)
        if self.config.peers or self.config.mdns or self.config.preset in ("lan", "wan"):
            self.start_peers()

    # ---- lifecycle ---------------------------------------------------------------------------

    def _reset_async_state(self) -> None:
        self._origin: Origin | None = None
        self._flights: SingleFlight[FetchResult | None] = SingleFlight()
        self._zone_asks: SingleFlight[tuple[ZoneVersion | None, int]] = SingleFlight()
        self._gate: Gate | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._sources: list[Source] | None = None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.store.after_fork()
        self.catalog.after_fork()
        self._reset_async_state()
        self.peers = None  # its sockets belong to the parent; a child reads without peers
        self.mesh = None
        self.wan = None

    def start_peers(self) -> tuple[str, int]:
        """Listen for peers on `config.listen` and ask them before the origin."""
        if self.peers is None:
            from meshcache.mesh import factory
            from meshcache.mesh.auth import check_credential, make_authenticator
            from meshcache.mesh.mesh import Mesh
            from meshcache.mesh.peers import PeerService
            from meshcache.transport.base import parse_address

            async def start() -> Any:
                cfg = self.config
                if not cfg.credential():
                    raise ValueError("peers need the cluster credential (cluster_secret or "
                                     "cluster_secret_file): only nodes that hold it may connect")
                check_credential(cfg.credential())  # a weak one is refused before any socket
                identity = factory.load_identity(cfg)
                node_id = bytes.fromhex(identity[2])
                transport = factory.build_quic_transport(
                    cfg, identity, make_authenticator(cfg.credential(), node_id))
                service = PeerService(cfg, transport, self, node_id, clock=time.monotonic,
                                      datagram_size=factory.datagram_size(cfg),
                                      listen=parse_address(cfg.listen))
                await service.start()
                self.peers = service
                self.mesh = Mesh(cfg, service, self.store)
                await self.mesh.start()
                if cfg.dht_listen:
                    from meshcache.wan.zone import WanSide

                    self.wan = WanSide(cfg, node_id, service.address, service,
                                       self.store.__contains__)
                    await self.wan.start()
                    service.wan_egress = self.wan.caps.egress_hook(self.wan.dht.zone_of,
                                                                   cfg.zone)
                    self.mesh.remote_zones = self.wan.dht.zones_seen
                self._sources = None  # rebuilt with the zone rungs
                return service

            self._loop.run(start())
        return self.peers.address

    def _origin_limit(self) -> int:
        """Origin reads this node may have in flight: its share of the zone's."""
        n = 1 + (len(self.mesh.live()) if self.mesh is not None else 0)
        return -(-self.config.origin_concurrency // n)

    def _origin_parts(self) -> tuple[Origin, Gate]:
        """Loop-bound objects, made on first use on the loop (and again after fork)."""
        if self._origin is None or self._gate is None:
            loop = asyncio.get_running_loop()
            self._origin = Origin(loop, self.config.origin_timeout)
            self._gate = Gate(self._origin_limit)
            self._flusher = loop.create_task(self._flush_periodically())
        return self._origin, self._gate

    def sources(self) -> list[Source]:
        """The ladder, in the order its rungs are tried (built on the loop, after fork again)."""
        if self._sources is None:
            origin, gate = self._origin_parts()
            ladder: list[Source] = [LocalSource(self.store, self.catalog)]
            if self.mesh is not None and self.peers is not None:
                from meshcache.read.rungs.holders import HoldersSource
                from meshcache.read.rungs.owner import OwnerSource

                ladder.append(HoldersSource(self.mesh, self.peers, self.catalog,
                                            self.config.ping_interval, self._loop_time))
                ladder.append(OwnerSource(self.mesh, self.peers, self.count))
            if self.wan is not None:
                ladder.append(self.wan.rung)
            ladder.append(OriginSource(origin, gate, self.catalog, self.config.origin_retries,
                                       self.count, self._origin_failed, StreamFill(self)))
            for before, rung in self._added:
                at = next((k for k, r in enumerate(ladder) if r.name == before), len(ladder))
                ladder.insert(at, rung)
            self._sources = ladder
        return self._sources

    def add_source(self, rung: Source, before: str = "origin") -> None:
        """Insert a rung into the ladder just before the rung named `before` (the end if none
        has that name). Its bytes enter the store through `admit` like every other rung's."""
        self._added.append((before, rung))
        self._sources = None

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the node's loop from another thread and return its result."""
        return self._loop.run(coro, timeout=timeout)

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def close(self) -> None:
        """Write pending manifests, close origin sessions and stop the loop thread."""
        if self.closed:
            return
        self.closed = True
        self.flush()
        if self._origin is not None or self.peers is not None:
            try:
                self._loop.run(self._shutdown(), timeout=10)
            except Exception:
                pass
        self._loop.stop()
        self.store.close()

    async def _shutdown(self) -> None:
        if self.wan is not None:
            await self.wan.close()
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
                self._stats[k] = self._stats.get(k, 0) + v

    def stats(self) -> dict[str, int]:
        """Counters since start: where bytes came from, origin requests, hits, errors, store use."""
        with self._lock:
            out = dict(self._stats)
        out["store_errors"] += self.catalog.store_errors
        if self.peers is not None:
            out.update(self.peers.stats)
        if self.mesh is not None:
            out.update(self.mesh.stats)
            out["members"] = len(self.mesh.members)
        if self.wan is not None:
            out.update(self.wan.stats())
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
        if not refresh:
            v = self.catalog.fresh(url)
            if v is not None:
                return v
        return self._loop.run(self._stat(url, dict(options or {})))

    async def _stat(self, url: str, options: dict[str, Any]) -> ObjectVersion:
        v, fresh = await self._stat_or_stale(url, options)
        if fresh and self.catalog.put_version(v):
            self.count(version_changes=1)
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
            origin, _ = self._origin_parts()
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
        asked_zone = 0
        if stale is None:
            stale, asked_zone = await self._zone_version(url)
            now = time.monotonic()
        if stale is None:
            raise OriginError(self._outages.outage_message(url, outage, now, asked_zone))
        self.count(stale_stats=1)
        log.log(logging.WARNING if asked else logging.DEBUG,  # once per retry_after
                "%s: origin %s failing (%s); serving the last known version %s",
                url, outage.origin, outage.error, stale.token)
        return stale, False

    async def _zone_version(self, url: str) -> tuple[ObjectVersion | None, int]:
        """(the version a zone member's origin last confirmed, kept under this node's
        stale_if_error, or None; how many members were asked). Concurrent reads share one ask."""
        if self.mesh is None or self.peers is None or self.config.stale_if_error <= 0:
            return None, 0
        mesh, peers = self.mesh, self.peers
        answer, asked = await self._zone_asks.do(
            url, lambda: ask_zone(mesh, peers, url, self.block_size, clock=time.monotonic))
        if answer is None:
            return None, asked
        self._outages.heard(answer.version, answer.confirmed_at)
        v = self._outages.stale(url, time.monotonic())
        if v is None:  # confirmed too long ago for this node's window
            return None, asked
        if answer.manifest is not None and answer.manifest.version == v:
            self.catalog.merge(v, answer.manifest)
        self.count(zone_versions=1)
        log.warning("%s: origin failing and no version known here; zone member %s says the "
                    "origin confirmed %s %.0f s ago", url, answer.member.address, v.token,
                    time.monotonic() - answer.confirmed_at)
        return v, asked

    def _origin_failed(self, url: str, error: str) -> None:
        self._outages.failed(url, error, time.monotonic())

    def latest(self, url: str) -> ObjectVersion | None:
        """The newest version of `url` this node has seen (no origin request)."""
        return self.catalog.latest(url)

    def manifest(self, version: ObjectVersion) -> Manifest:
        """The manifest of a version: in memory, else from the store, else a new empty one."""
        return self.catalog.manifest(version)

    def known_manifest(self, version: ObjectVersion) -> Manifest | None:
        """The manifest of a version if this node has one (memory or store); never creates."""
        return self.catalog.known_manifest(version)

    def confirmed_version(self, url: str) -> tuple[ObjectVersion, float] | None:
        """(version, seconds since the origin confirmed it) of `url` while it may be served
        stale: what a zone member asking for the URL's last known version is told."""
        return self._outages.last_confirmed(url, time.monotonic())

    def flush(self) -> None:
        """Write every manifest that gained digests since the last flush."""
        self.catalog.flush()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.catalog.dirty:
                await asyncio.to_thread(self.catalog.flush)

    # ---- fetching blocks ---------------------------------------------------------------------

    def has_block(self, version: ObjectVersion, index: int) -> bytes | None:
        """The digest of block `index` when it is in the local store, else None."""
        d = self.catalog.digest(version, index)
        return d if d is not None and d in self.store else None

    def request(self, version: ObjectVersion, index: int,
                options: Mapping[str, Any] | None = None,
                max_rank: int = Rank.ANY) -> BlockRequest:
        return BlockRequest(version, index, self.block_size,
                            self.catalog.digest(version, index), dict(options or {}), max_rank)

    def submit_fetch(self, version: ObjectVersion, index: int,
                     options: Mapping[str, Any] | None = None) -> "concurrent.futures.Future[FetchResult]":
        """Start bringing block `index` into the store; returns a concurrent Future."""
        return self._loop.submit(self.fetch(version, index, dict(options or {})))

    def fetch_sync(self, version: ObjectVersion, index: int,
                   options: Mapping[str, Any] | None = None) -> FetchResult:
        return self._loop.run(self.fetch(version, index, dict(options or {})))

    async def fetch(self, version: ObjectVersion, index: int,
                    options: Mapping[str, Any] | None = None) -> FetchResult:
        """Block `index` of `version` into the store, through every rung if need be."""
        res = await self.fetch_request(self.request(version, index, options))
        assert res is not None  # the origin rung answers or raises
        return res

    async def fetch_request(self, request: BlockRequest) -> FetchResult | None:
        """Climb the rungs `request.max_rank` allows; None when none of them has the block.
        One climb per block however many ask at once."""
        return await self._flights.do((request.version.key, request.index),
                                      lambda: self._climb(request))

    async def _climb(self, request: BlockRequest) -> FetchResult | None:
        async with contextlib.AsyncExitStack() as stack:
            locked = False
            held: Held | None = None
            for rung in self.sources():
                if not may_use(request.max_rank, rung.rank):
                    continue
                if rung.rank != Rank.LOCAL and not locked:
                    # Past the store: one process per cache directory climbs on (read/flock.py);
                    # None when locks cannot be used here (read-only directory).
                    locked = True
                    held = await stack.enter_async_context(
                        self.block_locks.hold(request.version.key, request.index))
                    if held is not None and held.digest is not None and held.digest in self.store:
                        self.catalog.record(request.version, request.index, held.digest)
                        return FetchResult(held.digest, "local")
                res = await self._try(rung, request)
                if res is not None:
                    if held is not None and res.data is None:
                        held.done(res.digest)
                    return res
        return None

    async def _try(self, rung: Source, request: BlockRequest) -> FetchResult | None:
        """One rung: its answer admitted, or None to go on."""
        if request.digest is None:
            known = self.catalog.digest(request.version, request.index)
            if known is not None:
                request = dataclasses.replace(request, digest=known)
        got = await rung.fetch(request)
        if got is None:
            if rung.rank == Rank.LOCAL:
                self.count(block_misses=1)
            return None
        if isinstance(got, Stored):
            return FetchResult(got.digest, rung.counter)
        return await self.admit(request, rung, got)

    async def admit(self, request: BlockRequest, rung: Source,
                    got: bytes | Verified) -> FetchResult | None:
        """The one way bytes from any rung enter: verify against the known digest, store, record
        the digest, count, tell the summaries. None when a non-authoritative rung's bytes do not
        match (the climb goes on). Serves from memory when the store cannot take the block."""
        version, index, known = request.version, request.index, request.digest
        hashed = isinstance(got, Verified)
        data = got.data if isinstance(got, Verified) else got
        self.count(**{f"bytes_from_{rung.counter}": len(data)})
        if isinstance(got, Verified):
            if known is not None and got.digest != known:
                log.warning("%s: block %d from %s is another block", version.url, index,
                            rung.name)
                return None
            known = got.digest
        try:
            try:
                d = await asyncio.to_thread(self.store.put, data, known, hashed=hashed)
            except BlockCorrupt:
                if not rung.authoritative:
                    log.warning("%s: block %d from %s does not match its digest", version.url,
                                index, rung.name)
                    return None
                await self._confirm_version(request)
                log.warning("%s: block %d: the manifest's digest was wrong; using the %s's",
                            version.url, index, rung.name)
                self.count(bad_hints=1)
                self.catalog.record(version, index, None)
                known = None
                d = await asyncio.to_thread(self.store.put, data, None)
        except StoreError as e:
            log.warning("%s; serving block %d of %s from memory", e, index, version.url)
            self.count(store_errors=1)
            d = compute_digest(data)
            if known is not None and d != known:
                if not rung.authoritative:
                    return None
                raise ObjectChanged(f"{version.url}: block {index} changed at the origin") \
                    from None
            self.catalog.record(version, index, d)
            return FetchResult(d, rung.counter, data)
        self.catalog.record(version, index, d)
        if self.mesh is not None:
            self.mesh.on_stored(d)
        if self.wan is not None and rung.rank in (Rank.ORIGIN, Rank.REMOTE_ZONE):
            self.wan.brought_in(d, version.key)
        return FetchResult(d, rung.counter)

    async def _confirm_version(self, request: BlockRequest) -> None:
        """Raise ObjectChanged unless the origin still has the request's version."""
        origin, _ = self._origin_parts()
        version = request.version
        if await origin.stat(version.url, dict(request.options)) != version:
            self.catalog.drop_version(version.url)
            raise ObjectChanged(f"{version.url}: block {request.index} no longer matches the "
                                "version first read; the object changed at the origin")

    def read_origin_sync(self, version: ObjectVersion, index: int,
                         options: Mapping[str, Any] | None = None) -> bytes:
        """Block bytes straight from the origin (a last resort when the store keeps losing it)."""
        async def read() -> bytes:
            rung = next(s for s in self.sources() if s.rank == Rank.ORIGIN)
            data = await rung.fetch(self.request(version, index, options))
            if isinstance(data, Stored):  # a range-less origin's fill stored it meanwhile
                data = await asyncio.to_thread(self.store.read_block, data.digest)
            assert isinstance(data, bytes)
            self.count(bytes_from_origin=len(data))
            known = self.catalog.digest(version, index)
            if known is not None and compute_digest(data) != known:
                raise ObjectChanged(f"{version.url}: block {index} no longer matches the "
                                    "version first read; the object changed at the origin")
            return data

        return self._loop.run(read())

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
        self._loop.run(_prewarm.prewarm(versions, self.block_size,
                                        lambda v, i: self.fetch(v, i, opts),
                                        2 * self.config.origin_concurrency, progress))
        self.flush()
        return {v.url: v.size for v in versions}

    def cat(self, url: str, start: int | None = None, end: int | None = None,
            options: Mapping[str, Any] | None = None) -> bytes:
        """Bytes [start, end) of the object (negative offsets count from the end)."""
        from meshcache.read.reader import read_range

        return read_range(self, url, start, end, options)

    def open(self, url: str, mode: str = "rb", **options: Any) -> Any:
        """A read-only file object over `url` (binary, or text for mode 'r')."""
        from meshcache.read.reader import Reader, open_reader

        return open_reader(self, url, mode, options)

    def refresh(self, url: str, options: Mapping[str, Any] | None = None) -> ObjectVersion:
        """Drop the cached stat of `url` and ask the origin again."""
        url = normalize_url(url)
        self.catalog.drop_version(url)
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
            self.catalog.forget([m.version.key])
        return freed

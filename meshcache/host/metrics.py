"""Prometheus metrics and the HTML status page of a daemon, on one HTTP port (aiohttp).

    /metrics       Prometheus text format (prometheus-client), read from the node on each scrape
    /status.json   the status snapshot (meshcache.host.status)
    /              the status page: it polls /status.json and draws it
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any, Iterator, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from meshcache.read.loop import LoopThread

log = logging.getLogger("meshcache.host.metrics")

# node counter -> (metric name without _total, help)
_COUNTERS = {
    "origin_requests": ("meshcache_origin_requests", "Ranged reads sent to origins."),
    "origin_errors": ("meshcache_origin_errors", "Origin reads that failed."),
    "block_hits": ("meshcache_block_hits", "Blocks found in the local store."),
    "block_misses": ("meshcache_block_misses", "Blocks not in the local store when asked."),
    "corrupt_blocks": ("meshcache_corrupt_blocks", "Block files that failed verification."),
    "evicted_blocks": ("meshcache_evicted_blocks", "Blocks evicted from the store."),
    "bytes_to_peers": ("meshcache_bytes_to_peers", "Bytes served to zone peers."),
    "peer_errors": ("meshcache_peer_errors", "Failed requests to peers."),
    "bad_peers": ("meshcache_bad_peers", "Peers that sent bytes that did not verify."),
    "hellos_refused": ("meshcache_hellos_refused", "Peers refused (credential, block size)."),
    "local_requests": ("meshcache_local_requests", "Requests on the local API socket."),
    "local_errors": ("meshcache_local_errors", "Local API requests answered with an error."),
}
_GAUGES = {
    "store_bytes": ("meshcache_store_bytes", "Bytes of blocks in the store."),
    "store_blocks": ("meshcache_store_blocks", "Blocks in the store."),
    "capacity": ("meshcache_store_capacity_bytes", "The store's capacity."),
    "local_clients": ("meshcache_local_clients", "Local API connections open now."),
}


class StatusSource(Protocol):
    """What the HTTP endpoint serves: the local API server (meshcache.host.server.LocalApi)."""

    def status(self) -> dict[str, Any]: ...

    def rate_limit_waits(self) -> dict[str, tuple[int, float]]: ...


class NodeCollector:
    """A prometheus-client collector that reads the daemon's status on each scrape."""

    def __init__(self, source: StatusSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        st = self.source.status()
        stats = st["stats"]
        by_source = CounterMetricFamily("meshcache_bytes", "Bytes read, by where they came "
                                        "from.", labels=["source"])
        for src in ("local", "peers", "origin"):
            by_source.add_metric([src], stats.get(f"bytes_from_{src}", 0))
        yield by_source
        for key, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        for key, (name, doc) in _GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=stats.get(key, 0))
        members = GaugeMetricFamily("meshcache_members", "Zone members by state.",
                                    labels=["state"])
        states = {"alive": 0, "suspect": 0}
        for m in st["members"]:
            states[m.get("state", "alive")] = states.get(m.get("state", "alive"), 0) + 1
        for state, n in states.items():
            members.add_metric([state], n)
        yield members
        zones = GaugeMetricFamily("meshcache_zone_members", "Known members by zone.",
                                  labels=["zone"])
        for zone, n in st["zones"].items():
            zones.add_metric([zone], n)
        yield zones
        summary = GaugeMetricFamily("meshcache_summary_bytes", "Bloom summary sizes: this "
                                    "node's and the sum of its peers'.", labels=["whose"])
        summary.add_metric(["own"], st.get("summary_bytes", 0))
        summary.add_metric(["peers"], sum(m.get("summary_bytes", 0) for m in st["members"]))
        yield summary
        waits = CounterMetricFamily("meshcache_rate_limit_waits", "Transfers that waited for "
                                    "a rate limit.", labels=["direction"])
        waited = CounterMetricFamily("meshcache_rate_limit_wait_seconds", "Seconds transfers "
                                     "waited for rate limits.", labels=["direction"])
        for direction, (n, seconds) in self.source.rate_limit_waits().items():
            waits.add_metric([direction], n)
            waited.add_metric([direction], seconds)
        yield waits
        yield waited
        zones = CounterMetricFamily("meshcache_zone_bytes", "Block bytes across the WAN, by "
                                    "remote zone and direction.", labels=["zone", "direction"])
        for key, n in stats.items():
            for direction in ("from", "to"):
                prefix = f"bytes_{direction}_zone:"
                if key.startswith(prefix):
                    zones.add_metric([key[len(prefix):], direction], n)
        yield zones
        ratio = GaugeMetricFamily("meshcache_hit_ratio", "Block hits / (hits + misses).")
        ratio.add_metric([], st["hit_ratio"] if st["hit_ratio"] is not None else 0.0)
        yield ratio


class StatusServer:
    """The HTTP endpoint on its own loop thread: `start()` returns (host, port)."""

    def __init__(self, source: StatusSource, listen: str) -> None:
        self.source = source
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]") or "127.0.0.1", int(port)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(source))  # type: ignore[arg-type]
        self._page = resources.files("meshcache.host").joinpath("status.html").read_bytes()
        self._loop = LoopThread("meshcache-http")
        self._runner: web.AppRunner | None = None

    def start(self) -> tuple[str, int]:
        return self._loop.run(self._start())

    async def _start(self) -> tuple[str, int]:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status.json", self._status)
        app.router.add_get("/", self._index)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addr = self._runner.addresses[0]
        log.info("metrics and status page on http://%s:%d/", addr[0], addr[1])
        return addr[0], addr[1]

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.source.status),
                                 headers={"Cache-Control": "no-store"})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html",
                            headers={"Content-Security-Policy": "default-src 'self'; "
                                     "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    def close(self) -> None:
        if self._runner is not None:
            try:
                self._loop.run(self._runner.cleanup(), timeout=5)
            except Exception:
                pass
            self._runner = None
        self._loop.stop()

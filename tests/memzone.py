"""A zone of mesh hosts on the in-memory transport with a fake clock: the real PeerService,
Mesh, membership, summaries, authentication and block store, without sockets or wall time."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

from meshcache import Config
from meshcache.core.digest import digest as compute_digest
from meshcache.core.manifest import Manifest
from meshcache.core.rungs import BlockRequest
from meshcache.core.version import ObjectVersion
from meshcache.mesh.auth import make_authenticator
from meshcache.mesh.clock import FakeClock, settle
from meshcache.mesh.mesh import Mesh
from meshcache.mesh.peers import PeerService
from meshcache.read.store import BlockStore
from meshcache.transport import MemoryNetwork, MemoryTransport

from tests.conftest import CLUSTER_SECRET, SMALL_BLOCK

SECRET = CLUSTER_SECRET


@dataclass
class Fetched:
    digest: bytes
    data: bytes | None = None


@dataclass
class StoreServer:
    """The BlockServer a host's PeerService serves from: a real BlockStore, and for requests
    that may climb above the store, bytes from `origin` (a dict URL -> bytes) counted in
    `origin_reads` (the node's read path is tested with the real Node elsewhere)."""

    store: BlockStore
    origin: dict[str, bytes] = field(default_factory=dict)
    origin_reads: list[tuple[str, int]] = field(default_factory=list)
    manifests: dict[bytes, Manifest] = field(default_factory=dict)
    versions: dict[str, tuple[ObjectVersion, float]] = field(default_factory=dict)
    stall: asyncio.Event | None = None  # set: origin reads wait for it (a host gone silent)

    def known_manifest(self, version: ObjectVersion) -> Manifest | None:
        return self.manifests.get(version.key)

    def confirmed_version(self, url: str) -> tuple[ObjectVersion, float] | None:
        return self.versions.get(url)

    async def fetch_request(self, request: BlockRequest) -> Fetched:
        if self.stall is not None:
            await self.stall.wait()
        start, end = request.span
        self.origin_reads.append((request.version.url, request.index))
        data = self.origin[request.version.url][start:end]
        d = self.store.put(data, compute_digest(data))
        return Fetched(d)


class Host:
    """One node's mesh parts: its store, PeerService and Mesh on a shared memory network."""

    def __init__(self, net: MemoryNetwork, clock: FakeClock, cache_dir: str, address: Any,
                 peers: list[Any], secret: str = SECRET, **overrides: Any) -> None:
        cfg = dict(cache_dir=cache_dir, block_size=SMALL_BLOCK, fsync=False, cluster_secret=secret,
                   ping_interval=0.2, suspect_timeout=1.5, request_timeout=3.0,
                   peers=["%s:%d" % p for p in peers])
        cfg.update(overrides)
        self.config = Config.local(**cfg)
        self.clock = clock
        self.address = address
        self.node_id = os.urandom(32)
        self.server = StoreServer(BlockStore(cache_dir, self.config.capacity, fsync=False))
        transport = MemoryTransport(authenticate=make_authenticator(
            self.config.credential(), self.node_id), network=net)
        self.peers = PeerService(self.config, transport, self.server, self.node_id,
                                 clock=clock.now, listen=address)
        self.mesh: Mesh | None = None

    async def start(self) -> "Host":
        await self.peers.start()
        self.mesh = Mesh(self.config, self.peers, self.server.store, clock=self.clock)
        await self.mesh.start()
        return self

    async def close(self, leave: bool = True) -> None:
        if self.mesh is not None:
            await self.mesh.close(leave=leave)
        await self.peers.close()


class Zone:
    """Hosts at ("10.0.0.<i>", 7946) on one memory network, sharing one fake clock."""

    def __init__(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        self.net = MemoryNetwork()
        self.clock = FakeClock()
        self.hosts: list[Host] = []

    async def add(self, peers: list[Any] | None = None, **overrides: Any) -> Host:
        i = len(self.hosts)
        seeds = [h.address for h in self.hosts] if peers is None else peers
        host = Host(self.net, self.clock, str(self.tmp_path / f"n{i}"), (f"10.0.0.{i + 1}", 7946),
                    seeds, **overrides)
        self.hosts.append(host)
        return await host.start()

    async def until(self, cond: Any, within: float, step: float = 0.05) -> float:
        """Advance the fake clock until `cond()` holds; returns the fake seconds it took."""
        t0 = self.clock.now()
        while not cond():
            assert self.clock.now() - t0 < within, f"not within {within} s of fake time"
            await self.clock.advance(step)
        return self.clock.now() - t0

    async def close(self) -> None:
        for h in self.hosts:
            try:
                await h.close()
            except Exception:
                pass
        await settle()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))

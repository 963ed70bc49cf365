"""The remote-zone rung, in process: two zones on 127.0.0.1, real QUIC peer services and stores,
a DHT on real UDP sockets; and the per-zone WAN caps."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from meshcache.config import Config
from meshcache.core.digest import digest as blake
from meshcache.core.manifest import Manifest
from meshcache.core.rungs import Rank
from meshcache.core.version import ObjectVersion
from meshcache.mesh.peers import PeerService
from meshcache.read.ladder import BlockRequest
from meshcache.read.store import BlockStore
from meshcache.wan.caps import ZoneCaps
from meshcache.wan.dht import Dht
from meshcache.wan.records import block_key, manifest_key
from meshcache.wan.rung import RemoteZoneSource

from meshcache.mesh import factory
from meshcache.mesh.auth import make_authenticator
from meshcache.transport.base import parse_address
from tests.conftest import CLUSTER_SECRET, OTHER_SECRET

SECRET = CLUSTER_SECRET
B = 64 * 1024


class Host:
    """What a PeerService needs of its node: config, store, manifests (no zone mesh)."""

    def __init__(self, tmp: str, zone: str, secret: str = SECRET) -> None:
        self.config = Config.local(cache_dir=tmp, zone=zone, cluster_secret=secret,
                                   listen="127.0.0.1:0", block_size=B, fsync=False,
                                   request_timeout=5.0)
        self.store = BlockStore(tmp, 1 << 30, fsync=False)
        self.mesh = None
        self.manifests: dict[bytes, Manifest] = {}

    def known_manifest(self, version: ObjectVersion) -> Manifest | None:
        return self.manifests.get(version.key)

    def confirmed_version(self, url: str) -> tuple[ObjectVersion, float] | None:
        return None  # no origin behind this stand-in


async def _zone_node(tmp: str, zone: str, bootstrap: list | None = None,
                     secret: str = SECRET) -> tuple[Host, PeerService, Dht]:
    host = Host(tmp, zone, secret)
    cfg = host.config
    identity = factory.load_identity(cfg)
    node_id = bytes.fromhex(identity[2])
    transport = factory.build_quic_transport(cfg, identity,
                                             make_authenticator(cfg.credential(), node_id))
    peers = PeerService(cfg, transport, host, node_id, clock=time.monotonic,
                        datagram_size=factory.datagram_size(cfg),
                        listen=parse_address(cfg.listen))
    addr = await peers.start()
    dht = Dht(peers.node_id, zone, addr, secret.encode(), rpc_timeout=1.0)
    await dht.listen("127.0.0.1", 0)
    if bootstrap:
        await dht.bootstrap(bootstrap)
    return host, peers, dht


def test_remote_zone_rung_fetches_verified_blocks_from_another_zone(tmp_path) -> None:
    async def run() -> None:
        a_host, a_peers, a_dht = await _zone_node(str(tmp_path / "a"), "a")
        b_host, b_peers, b_dht = await _zone_node(str(tmp_path / "b"), "b", [a_dht.address])
        x_host, x_peers, x_dht = await _zone_node(str(tmp_path / "x"), "x", [a_dht.address],
                                                  secret=OTHER_SECRET)
        try:
            data = os.urandom(3 * B - 100)
            version = ObjectVersion("s3://bucket/model.bin", "etag:1", len(data))
            blocks = [data[i:i + B] for i in range(0, len(data), B)]
            digests = [a_host.store.put(b) for b in blocks]
            a_host.manifests[version.key] = Manifest(version, B, list(digests))
            assert await a_dht.announce([block_key(d) for d in digests]
                                        + [manifest_key(version.key)]) > 0

            a_caps = ZoneCaps()
            a_peers.wan_egress = a_caps.egress_hook(a_dht.zone_of, "a")
            rung = RemoteZoneSource(b_dht, b_peers, b_host.config)
            # digest unknown: found through the version's manifest in the DHT
            got = await rung.fetch(BlockRequest(version, 2, B))
            assert got == blocks[2] and rung.counter == "zone:a"
            got = await rung.fetch(BlockRequest(version, 0, B, digest=digests[0]))
            assert got == blocks[0]
            assert rung.stats()["bytes_from_zone:a"] == len(blocks[2]) + B
            assert a_caps.stats() == {"bytes_to_zone:b": len(blocks[2]) + B}
            # a request that may not use this rank gets nothing from it
            assert await rung.fetch(BlockRequest(version, 1, B, digest=digests[1],
                                                 max_rank=Rank.REMOTE_ZONE)) is None
            # a block nobody announced: None, so the ladder goes on to the origin
            assert await rung.fetch(BlockRequest(version, 1, B, digest=blake(b"x"))) is None
            # a node without the credential learns no record
            assert await x_dht.find(block_key(digests[0])) == []
            assert x_dht.contacts() == 0
            # its own zone's providers are not "remote"
            a_rung = RemoteZoneSource(a_dht, a_peers, a_host.config)
            assert await a_rung.fetch(BlockRequest(version, 0, B, digest=digests[0])) is None
        finally:
            for d in (a_dht, b_dht, x_dht):
                d.close()
            for p in (a_peers, b_peers, x_peers):
                await p.close()
    asyncio.run(run())


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_zone_caps_hold_within_5_percent(direction: str) -> None:
    rate = 4 << 20

    async def run() -> float:
        caps = ZoneCaps(egress_rate=rate, ingress_rate=rate)
        take = caps.ingress if direction == "ingress" else caps.egress
        await take("b", 256 << 10)  # spend the burst first
        await take("c", 1 << 20)    # another zone has its own bucket: does not slow "b"
        start = time.monotonic()
        for _ in range(48):
            await take("b", 128 << 10)
        return 48 * (128 << 10) / (time.monotonic() - start)

    got = asyncio.run(run())
    assert 0.7 * rate <= got <= 1.05 * rate


def test_providers_are_tried_cheapest_zone_first() -> None:
    """zone_costs first, then the round trip the DHT measured (a real DHT over a delayed
    in-memory network: zone "e" 2 ms away, zone "d" 100 ms)."""
    from meshcache.wan.memnet import MemoryNetwork
    from meshcache.wan.records import ProviderRecord

    async def run() -> list[tuple[str, bytes]]:
        net = MemoryNetwork()
        far = {"10.0.0.3": 0.05, "10.0.0.5": 0.001}  # one way
        net.delay = lambda src, dst: far.get(src[0], 0.0) + far.get(dst[0], 0.0)
        me = Dht(b"me", "b", ("10.0.0.1", 7946), SECRET.encode(), rpc_timeout=1.0)
        me.attach(net, ("10.0.0.1", 4000))
        others = []
        for i, zone in ((3, "d"), (5, "e")):
            d = Dht(b"n%d" % i, zone, (f"10.0.0.{i}", 7946), SECRET.encode())
            d.attach(net, (f"10.0.0.{i}", 4000))
            others.append(d)
        try:
            await me.bootstrap([d.address for d in others])
            for _ in range(3):
                await me.bootstrap([d.address for d in others])
            assert me.zone_rtt("d") > 0.09 and me.zone_rtt("e") < me.zone_rtt("d") - 0.05
            cfg = Config.local(zone="b", zone_costs=["c=30", "a=80"])  # milliseconds
            rung = RemoteZoneSource(me, None, cfg)  # type: ignore[arg-type]
            recs = [ProviderRecord(b"%d" % i, z, "10.0.0.%d" % i, 7946, 100.0 + i)
                    for i, z in enumerate(["a", "b", "c", "d", "c", "e", "x"])]
            return [(r.zone, r.node_id) for r in rung.order(recs)]
        finally:
            me.close()
            for d in others:
                d.close()

    assert asyncio.run(run()) == [("e", b"5"), ("c", b"4"), ("c", b"2"), ("a", b"0"),
                                  ("d", b"3"), ("x", b"6")]

"""Zones joined through the DHT, on 127.0.0.1 with real QUIC and DHT sockets: a block crosses
into a zone once, through its owner; a zone warmed by one reader (its blocks spread over its
owners) serves another zone every block; a zone without providers reads its own origin."""

from __future__ import annotations

import time

import pytest

from meshcache import Config, Node
from meshcache.lab.httporigin import OriginServer

from tests.conftest import CLUSTER_SECRET, SMALL_BLOCK, make_bytes, read_at_once


@pytest.fixture
def origin():
    with OriginServer() as srv:
        yield srv


def _node(tmp_path, name, zone, peers=(), bootstrap=()):
    cfg = Config.local(cache_dir=str(tmp_path / name), block_size=SMALL_BLOCK, fsync=False,
                       cluster_secret=CLUSTER_SECRET, listen="127.0.0.1:0", zone=zone,
                       ping_interval=0.2, suspect_timeout=2.0, request_timeout=3.0,
                       readahead=4, peers=list(peers), peer_origins=["http://127.0.0.1"],
                       dht_listen="127.0.0.1:0", dht_bootstrap=list(bootstrap),
                       dht_rpc_timeout=1.0)
    node = Node(cfg)
    node.start_peers()
    return node


def _wait(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_block_crosses_into_a_zone_once_through_its_owner(tmp_path, origin):
    data = make_bytes(12 * SMALL_BLOCK + 5, 91)
    origin.put("model.bin", data)
    url = origin.url_for("model.bin")
    a = _node(tmp_path, "a", "a")
    boot = ["%s:%d" % a.wan.dht.address]
    b1 = _node(tmp_path, "b1", "b", bootstrap=boot)
    b2 = _node(tmp_path, "b2", "b", peers=["%s:%d" % b1.peers.address], bootstrap=boot)
    nodes = [a, b1, b2]
    try:
        _wait(lambda: len(b1.mesh.members) == 1 and len(b2.mesh.members) == 1)
        assert a.cat(url) == data
        a.run(a.wan.announcer.announce_pending())  # what the announcer sends every 2 s
        before = len(origin.spans("model.bin"))
        out = read_at_once((b1, b2), url)
        assert out[b1] == data and out[b2] == data
        assert len(origin.spans("model.bin")) == before  # zone b never read the origin
        crossed = sum(n.stats().get("bytes_from_zone:a", 0) for n in (b1, b2))
        assert crossed == len(data)  # each block crossed into zone b once, by its owner
        assert a.stats().get("bytes_to_zone:b", 0) == len(data)
        assert "b" in a.wan.dht.zones_seen() and "a" in b1.wan.dht.zones_seen()
    finally:
        for n in nodes:
            n.close()


def test_a_zone_warmed_by_one_reader_serves_other_zones_every_block(tmp_path, origin):
    """Zone a's one reader gets most blocks from their zone owners, so each owner's manifest
    names only its share; zones b and c (two nodes each) join after the warm-up (their DHT tables hold none of
    zone a's records) and read at once: every block's digest and providers are found, none is
    read from the origin, and each reader looked the version's manifests up about once."""
    data = make_bytes(40 * SMALL_BLOCK + 3, 93)
    origin.put("model.bin", data)
    url = origin.url_for("model.bin")
    a1 = _node(tmp_path, "a1", "a")
    boot = ["%s:%d" % a1.wan.dht.address]
    first = ["%s:%d" % a1.peers.address]
    nodes = [a1] + [_node(tmp_path, n, "a", peers=first, bootstrap=boot) for n in ("a2", "a3")]
    try:
        _wait(lambda: all(len(n.mesh.members) == 2 for n in nodes))
        assert a1.cat(url) == data  # the one reader of zone a; the owners fetch the rest
        assert sum(1 for n in nodes if n.stats().get("bytes_from_origin", 0)) >= 2
        for n in nodes:
            n.run(n.wan.announcer.announce_pending())  # what the announcers send every 2 s
        readers = []
        for z in ("b", "c"):  # two nodes each: the zone owners fetch for their zone
            z1 = _node(tmp_path, z + "1", z, bootstrap=boot)
            z2 = _node(tmp_path, z + "2", z, peers=["%s:%d" % z1.peers.address], bootstrap=boot)
            readers += [z1, z2]
        nodes += readers
        _wait(lambda: all(len(n.mesh.members) == 1 for n in readers))
        before = len(origin.spans("model.bin"))
        out = read_at_once(readers, url)
        assert all(out[n] == data for n in readers)
        assert sum(n.stats().get("bytes_from_origin", 0) for n in readers) == 0
        assert len(origin.spans("model.bin")) == before
        for z in (readers[:2], readers[2:]):  # each zone took the object once, from a zone
            assert sum(v for n in z for k, v in n.stats().items()
                       if k.startswith("bytes_from_zone:")) == len(data)
        for n in readers:  # owners looked the version's manifests up about once, not per block
            assert n.stats().get("manifest_lookups", 0) <= 2
    finally:
        for n in nodes:
            n.close()


def test_a_zone_with_no_provider_reads_its_own_origin(tmp_path, origin):
    data = make_bytes(4 * SMALL_BLOCK, 92)
    origin.put("cold.bin", data)
    url = origin.url_for("cold.bin")
    a = _node(tmp_path, "a", "a")
    b = _node(tmp_path, "b", "b", bootstrap=["%s:%d" % a.wan.dht.address])
    try:
        t = time.monotonic()
        assert b.cat(url) == data
        assert time.monotonic() - t < 20
        assert b.stats()["bytes_from_origin"] == len(data)
    finally:
        a.close()
        b.close()

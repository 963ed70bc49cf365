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
    data = make_bytes(16 * SMALL_BLOCK + 3, 93)
    origin.put("model.bin", data)
    url = origin.url_for("model.bin")
    a1 = _node(tmp_path, "a1", "a")
    boot = ["%s:%d" % a1.wan.dht.address]
    first = ["%s:%d" % a1.peers.address]
    a2 = _node(tmp_path, "a2", "a", peers=first, bootstrap=boot)
    a3 = _node(tmp_path, "a3", "a", peers=first, bootstrap=boot)
    b = _node(tmp_path, "b", "b", bootstrap=boot)
    nodes = [a1, a2, a3, b]
    try:
        _wait(lambda: all(len(n.mesh.members) == 2 for n in (a1, a2, a3)))
        assert a1.cat(url) == data  # the one reader of zone a; the owners fetch the rest
        owners = [n for n in (a1, a2, a3) if n.stats().get("bytes_from_origin", 0)]
        assert len(owners) >= 2  # the blocks were spread over zone a's owners
        for n in (a1, a2, a3):
            n.run(n.wan.announcer.announce_pending())  # what the announcers send every 2 s
        before = len(origin.spans("model.bin"))
        assert b.cat(url) == data
        assert b.stats().get("bytes_from_origin", 0) == 0
        assert len(origin.spans("model.bin")) == before
        sb = b.stats()
        assert sb.get("bytes_from_zone:a", 0) == len(data)
        # the owners' manifests each name only their blocks: one lookup merged them all, and
        # no other block of the version needed one
        assert sb["manifest_lookups"] == 1
        assert 2 <= sb["manifests_asked"] <= 3
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

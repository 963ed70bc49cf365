"""Cooperative striping across zones, in process on 127.0.0.1 with real QUIC and DHT sockets: a
GET_BLOCK that asks to wait is answered when the asked node's store admits the block, MISSes at
its deadline, and the waits on one node are capped; zones pulling one version at once split it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from meshcache import Config, Node
from meshcache.core.digest import digest as blake
from meshcache.core.rungs import Rank
from meshcache.lab.httporigin import OriginServer
from meshcache.read.ladder import BlockRequest
from meshcache.wan.records import pull_key

from tests.conftest import CLUSTER_SECRET, SMALL_BLOCK, make_bytes, read_at_once


@pytest.fixture
def origin():
    with OriginServer() as srv:
        yield srv


def _node(tmp_path, name, zone, bootstrap=None, **over):
    cfg = Config.local(cache_dir=str(tmp_path / name), block_size=SMALL_BLOCK, fsync=False,
                       cluster_secret=CLUSTER_SECRET, listen="127.0.0.1:0", zone=zone,
                       ping_interval=0.2, suspect_timeout=2.0, request_timeout=3.0,
                       readahead=4, peer_origins=["http://127.0.0.1"],
                       dht_listen="127.0.0.1:0" if bootstrap is not None else "",
                       dht_bootstrap=list(bootstrap or ()), dht_rpc_timeout=1.0, **over)
    node = Node(cfg)
    node.start_peers()
    return node


def _ask(asker: Node, peer: Node, url: str, index: int, wait: float):
    """asker's peer service asks `peer` for block `index` as a remote-zone rung would (store and
    holders only), with a wait; returns (reply, seconds)."""
    version = asker.version(url)

    async def go():
        t = time.monotonic()
        got = await asker.peers.get_block(peer.peers.address,
                                          BlockRequest(version, index, SMALL_BLOCK),
                                          Rank.REMOTE_ZONE, wait=wait)
        return got, time.monotonic() - t

    return asker.run(go())


def test_a_wait_is_answered_when_the_store_admits_the_block(tmp_path, origin):
    data = make_bytes(6 * SMALL_BLOCK, 31)
    url = origin.url_for("m.bin")
    origin.put("m.bin", data)
    b = _node(tmp_path, "b", "b")
    c = _node(tmp_path, "c", "c")
    try:
        # c reads the object once b's request for block 3 (not in c's store yet) waits there
        def read_when_asked():
            deadline = time.monotonic() + 10
            while not len(c.arrivals) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)
            c.cat(url)

        reader = threading.Thread(target=read_when_asked)
        reader.start()
        (digest, block), took = _ask(b, c, url, 3, wait=20.0)
        reader.join()
        assert block == data[3 * SMALL_BLOCK:4 * SMALL_BLOCK] and digest == blake(block)
        assert 0.3 < took < 10  # answered on admit, not at the deadline
        assert c.stats()["stripe_waits_answered"] == 1
        assert len(c.arrivals) == 0
        # in the store now: answered at once, without waiting
        (_, again), took = _ask(b, c, url, 3, wait=20.0)
        assert again == block and took < 5
    finally:
        b.close()
        c.close()


def test_a_wait_ends_in_a_miss_at_the_deadline_capped_by_the_asked_node(tmp_path, origin):
    origin.put("m.bin", make_bytes(2 * SMALL_BLOCK, 32))
    url = origin.url_for("m.bin")
    b = _node(tmp_path, "b", "b")
    c = _node(tmp_path, "c", "c", stripe_wait=0.6)  # holds a request 0.6 s at most
    d = _node(tmp_path, "d", "d")                    # holds one up to 30 s
    try:
        got, took = _ask(b, c, url, 1, wait=0.3)
        assert got is None and 0.25 < took < 5
        got, took = _ask(b, c, url, 1, wait=60.0)  # asks for a minute, gets c's cap
        assert got is None and 0.5 < took < 6
        assert c.stats()["stripe_waits_expired"] == 2
        assert c.stats()["bytes_from_origin"] == 0  # a waiting request never reads the origin
        # d is not reading the object at all: after the grace it says so, not after 30 s
        got, took = _ask(b, d, url, 1, wait=30.0)
        assert got is None and 1.5 < took < 10
        assert d.stats()["stripe_waits_idle"] == 1
        assert len(origin.spans("m.bin")) == 0
    finally:
        for n in (b, c, d):
            n.close()


def test_requests_waiting_on_one_node_are_capped(tmp_path, origin):
    origin.put("m.bin", make_bytes(4 * SMALL_BLOCK, 33))
    url = origin.url_for("m.bin")
    b = _node(tmp_path, "b", "b")
    c = _node(tmp_path, "c", "c", stripe_max_waiting=2, stripe_wait=3.0)
    try:
        version = b.version(url)

        async def ask(i: int):
            t = time.monotonic()
            got = await b.peers.get_block(c.peers.address, BlockRequest(version, i, SMALL_BLOCK),
                                          Rank.REMOTE_ZONE, wait=3.0)
            return got, time.monotonic() - t

        async def three():
            first = [asyncio.ensure_future(ask(i)) for i in (0, 1)]
            while len(c.arrivals) < 2:  # both wait on c now
                await asyncio.sleep(0.01)
            third = await ask(2)
            return third, await asyncio.gather(*first)

        (got3, took3), firsts = b.run(three())
        assert got3 is None and took3 < 1.5  # over the cap: a MISS at once
        assert all(g is None and t > 1.5 for g, t in firsts)  # the two waited (c's grace)
        assert c.arrivals.refused == 1
    finally:
        b.close()
        c.close()


def test_zones_pulling_one_version_split_it(tmp_path, origin):
    """Zone a holds the object; zones b and c read it at once: each block leaves zone a about
    once in all (not once per zone), the rest crosses between b and c."""
    n = 24
    data = make_bytes(n * SMALL_BLOCK, 34)
    origin.put("m.bin", data)
    url = origin.url_for("m.bin")
    a = _node(tmp_path, "a", "a", bootstrap=[])
    boot = ["%s:%d" % a.wan.dht.address]
    b = _node(tmp_path, "b", "b", bootstrap=boot)
    c = _node(tmp_path, "c", "c", bootstrap=boot)
    try:
        assert a.cat(url) == data
        a.run(a.wan.announcer.announce_pending())
        before = len(origin.spans("m.bin"))
        version = a.version(url)
        # b and c each announce that they pull (what their first remote fetch does), so both
        # see each other from the first block on
        for z in (b, c):
            z.run(z.wan.dht.announce([pull_key(version.key)], ttl=30.0))
        out = read_at_once((b, c), url)
        assert out[b] == data and out[c] == data
        assert len(origin.spans("m.bin")) == before  # nobody read the origin
        sa = a.stats()
        from_a = sa.get("bytes_to_zone:b", 0) + sa.get("bytes_to_zone:c", 0)
        assert from_a <= 1.25 * len(data)  # about once in all, not 2x
        sb, sc = b.stats(), c.stats()
        assert sb.get("bytes_from_zone:c", 0) > 0 and sc.get("bytes_from_zone:b", 0) > 0
        for s in (sb, sc):  # each zone took the whole object once, from a or the other zone
            assert s.get("bytes_from_zone:a", 0) + s.get("bytes_from_zone:b", 0) \
                + s.get("bytes_from_zone:c", 0) == len(data)
    finally:
        for z in (a, b, c):
            z.close()


def test_a_fresh_lookup_merges_records_that_reached_only_some_nodes():
    """Pull records of two zones, each stored on only some of the k closest nodes (an announce
    that reached part of them): a plain lookup stops at the first holders, a fresh one asks every
    one of the k closest and merges."""
    from meshcache.wan.records import ProviderRecord
    from meshcache.wan.sim import DhtSim

    async def run():
        sim = DhtSim(12, ksize=8, zones=3)
        try:
            sim.wire_tables(near=11, far=0)
            key = pull_key(b"version")
            closest = sorted(sim.nodes, key=lambda d: d.node.long_id ^ int.from_bytes(key, "big"))
            now = time.time()
            b = ProviderRecord(b"b-node", "b", "10.0.0.2", 7946, now + 30)
            c = ProviderRecord(b"c-node", "c", "10.0.0.3", 7946, now + 30)
            for d in closest[:4]:
                d.table.add(key, b, now)
            for d in closest[4:8]:
                d.table.add(key, c, now)
            asker = closest[-1]
            plain = {r.zone for r in await asker.find(key)}
            fresh = {r.zone for r in await asker.find(key, fresh=True)}
            return plain, fresh
        finally:
            sim.close()

    plain, fresh = asyncio.run(run())
    assert fresh == {"b", "c"}
    assert plain < fresh  # the stock lookup stops at the first holders it meets

"""The DHT on the in-memory network: sealed datagrams, records, expiry, who may take part, and
lookups among 1,000 simulated nodes."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from hypothesis import given, settings, strategies as st

from meshcache.core.wire import WireError
from meshcache.wan.dht import Dht
from meshcache.wan.memnet import MemoryNetwork
from meshcache.wan.records import (ProviderRecord, ProviderTable, block_key, dht_id,
                                   manifest_key)
from meshcache.wan.seal import SealError, Sealer
from meshcache.wan.sim import DhtSim

from meshcache.wan.sim import SIM_CREDENTIAL
from tests.conftest import CLUSTER_SECRET, OTHER_SECRET

SECRET = CLUSTER_SECRET.encode()


# ---- sealing -----------------------------------------------------------------------------------

def test_seal_round_trip_and_refusals() -> None:
    a, b = Sealer(SECRET), Sealer(SECRET)
    d = a.seal(b"hello", 1000.0)
    assert b.open(d, 1000.5) == b"hello"
    with pytest.raises(SealError, match="replayed"):
        b.open(d, 1000.6)
    with pytest.raises(SealError, match="cluster key"):
        Sealer(OTHER_SECRET.encode()).open(a.seal(b"x", 1000.0), 1000.0)
    with pytest.raises(SealError, match="window"):
        Sealer(SECRET).open(a.seal(b"x", 1000.0), 1000.0 + 31)
    tampered = bytearray(a.seal(b"abc", 1000.0))
    tampered[-1] ^= 1
    with pytest.raises(SealError):
        b.open(bytes(tampered), 1000.0)
    with pytest.raises(SealError):
        b.open(b"\xd7" + bytes(9000), 1000.0)


def test_forgotten_nonces_leave_a_floor() -> None:
    a, b = Sealer(SECRET), Sealer(SECRET, max_nonces=4)
    sent = [a.seal(b"%d" % i, 1000.0 + i / 1000) for i in range(10)]
    for d in sent:
        b.open(d, 1000.0)
    for d in sent:  # every one is refused again: in the cache or at/below the floor
        with pytest.raises(SealError):
            b.open(d, 1000.0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_datagrams_only_raise_seal_error(data: bytes) -> None:
    with pytest.raises(SealError):
        Sealer(SECRET).open(b"\xd7" + data, time.time())


# ---- records -----------------------------------------------------------------------------------

def _rec(i: int, expires: float) -> ProviderRecord:
    return ProviderRecord(bytes([i]) * 16, "z", "10.0.0.1", 7946, expires)


def test_table_bounds_and_expiry() -> None:
    t = ProviderTable(max_keys=3, max_providers=2)
    k = block_key(os.urandom(32))
    assert t.add(k, _rec(1, 10.0), 0.0) and t.add(k, _rec(2, 20.0), 0.0)
    assert t.add(k, _rec(3, 30.0), 0.0)  # the one expiring soonest (1) makes room
    assert [r.node_id[0] for r in t.get(k, 0.0)] == [3, 2]
    assert [r.node_id[0] for r in t.get(k, 25.0)] == [3]
    assert t.get(k, 31.0) == [] and len(t) == 0
    assert not t.add(k, _rec(4, 5.0), 6.0)  # expired on arrival
    for i in range(5):
        t.add(bytes([i]) * 20, _rec(i, 100.0), 0.0)
    assert len(t) == 3


def test_record_wire_checks() -> None:
    r = _rec(1, 100.0)
    back = ProviderRecord.from_wire(r.to_wire(40.0), 1000.0)
    assert back.node_id == r.node_id and back.expires == pytest.approx(1060.0)
    for bad in ([], [b"", "z", "h", 1, 1], [b"x", "z", "h", 0, 1], [b"x", "z", "h", 1, -1],
                [b"x", 1, "h", 1, 1], "row"):
        with pytest.raises(WireError):
            ProviderRecord.from_wire(bad, 0.0)
    assert manifest_key(b"v" * 32) != block_key(b"v" * 32) and len(dht_id(b"n")) == 20


# ---- the DHT -----------------------------------------------------------------------------------

def _sim_run(coro_fn):  # type: ignore[no-untyped-def]
    return asyncio.run(coro_fn())


def test_lookups_among_1000_simulated_nodes() -> None:
    async def run() -> None:
        sim = DhtSim(1000, seed=7)
        try:
            sim.wire_tables()
            pubs = [sim.nodes[i] for i in (3, 999)]
            keys = {}
            for p in pubs:
                ks = [block_key(os.urandom(32)) for _ in range(12)]
                assert await p.announce(ks) > 0
                keys.update({k: p.node_id for k in ks})
            ok, rounds = await sim.lookups(keys, 150)
            assert ok == 1.0
            assert max(rounds) <= 6
            sim.kill(0.1)
            ok, _ = await sim.lookups(keys, 100)
            assert ok >= 0.99
        finally:
            sim.close()
    _sim_run(run)


def test_a_node_without_the_credential_cannot_join_publish_or_read() -> None:
    async def run() -> None:
        sim = DhtSim(30, seed=3, zones=2)
        intruder = Dht(b"intruder-node-id", "evil", ("10.9.9.9", 7946), OTHER_SECRET.encode(),
                       rpc_timeout=0.2)
        try:
            await sim.join()
            key = block_key(os.urandom(32))
            assert await sim.nodes[5].announce([key]) > 0
            intruder.attach(sim.net, ("10.9.9.9", 4000))
            assert await intruder.bootstrap([sim.nodes[0].address]) == 0
            # it cannot read: it has no contact, and asking one directly gets no answer
            assert await intruder.find(key) == []
            intruder.protocol.router.add_contact(sim.nodes[0].node)
            assert await intruder.find(key) == []
            # nor publish: nothing it announces is stored anywhere
            mine = block_key(os.urandom(32))
            for d in sim.nodes[:20]:
                intruder.protocol.router.add_contact(d.node)
            await intruder.announce([mine])
            assert all(d.table.get(mine, time.time()) == [] for d in sim.nodes)
            # nor join anyone's routing table
            bad = dht_id(b"intruder-node-id")
            assert all(d.protocol.router.is_new_node(intruder.node) for d in sim.nodes)
            assert all(bad not in {n.id for b in d.protocol.router.buckets for n in b.get_nodes()}
                       for d in sim.nodes)
            assert sum(d.stats["rejected"] for d in sim.nodes) > 0
            # a member still finds the record
            assert [r.node_id for r in await sim.nodes[20].find(key)] == [sim.nodes[5].node_id]
        finally:
            intruder.close()
            sim.close()
    _sim_run(run)


def test_records_of_a_gone_node_stop_being_used_after_their_ttl() -> None:
    async def run() -> None:
        sim = DhtSim(25, seed=5)
        try:
            await sim.join()
            pub = sim.nodes[4]
            key = block_key(os.urandom(32))
            assert await pub.announce([key], ttl=1.0) > 0
            asker = sim.nodes[17]
            assert [r.node_id for r in await asker.find(key)] == [pub.node_id]
            sim.net.kill(pub.address)  # gone without notice: no republish
            await asyncio.sleep(1.3)
            assert await asker.find(key) == []
            assert all(d.table.get(key, time.time()) == [] for d in sim.nodes)
        finally:
            sim.close()
    _sim_run(run)


def test_a_node_bootstrapped_in_another_zone_finds_providers() -> None:
    async def run() -> None:
        sim = DhtSim(30, seed=9, zones=3)  # zones z0, z1, z2
        newcomer = Dht(b"newcomer", "z3", ("10.8.0.1", 7946), SIM_CREDENTIAL, rpc_timeout=0.5)
        try:
            await sim.join()
            digest = os.urandom(32)
            provider = sim.nodes[4]  # zone z1
            await provider.announce([block_key(digest)])
            newcomer.attach(sim.net, ("10.8.0.1", 4000))
            assert await newcomer.bootstrap([sim.nodes[0].address]) > 0  # zone z0 only
            recs = await newcomer.find(block_key(digest))
            assert [(r.node_id, r.zone, r.address) for r in recs] == \
                [(provider.node_id, "z1", provider.peer_address)]
            assert {"z0", "z1", "z2"} <= set(newcomer.zones_seen())
        finally:
            newcomer.close()
            sim.close()
    _sim_run(run)


def test_malformed_sealed_requests_are_dropped() -> None:
    async def run() -> None:
        net = MemoryNetwork()
        a = Dht(b"a", "z", ("10.0.0.1", 7946), SECRET, rpc_timeout=0.2)
        a.attach(net, ("10.0.0.1", 4000))
        s = Sealer(SECRET)
        import cbor2
        for body in (b"\xff", cbor2.dumps([0, b"x" * 16, b"n", "z", ["announce", [1]]]),
                     cbor2.dumps([0, b"x" * 16, b"n", "z", ["find_node", [b"short"]]]),
                     cbor2.dumps({"a": 1})):
            net.deliver(("10.0.0.2", 4000), ("10.0.0.1", 4000), s.seal(body, time.time()))
        await asyncio.sleep(0.01)
        assert a.stats["malformed"] == 4
        a.close()
    _sim_run(run)


def test_announcer_batches_republishes_and_drops_evicted_blocks() -> None:
    from meshcache.wan.announcer import Announcer, zone_owned

    async def run() -> None:
        sim = DhtSim(20, seed=13)
        try:
            await sim.join()
            pub = sim.nodes[2]
            pub.record_ttl = 1.0
            held = {os.urandom(32) for _ in range(30)}
            ann = Announcer(pub, lambda d: d in held, republish=0.4, flush=0.1)
            for d in held:
                ann.note_block(d)
            ann.note_manifest(b"v" * 32)
            before = pub.stats["rpcs"]
            ann.start()
            await asyncio.sleep(0.3)
            assert pub.stats["rpcs"] - before < 31 + 20  # batched: not a lookup per key
            asker = sim.nodes[11]
            some = sorted(held)[0]
            assert [r.node_id for r in await asker.find(block_key(some))] == [pub.node_id]
            assert await asker.find(manifest_key(b"v" * 32))
            held.discard(some)  # evicted: no longer re-announced
            await asyncio.sleep(1.6)  # past the 1 s TTL: only republished records remain
            other = sorted(held)[0]
            assert [r.node_id for r in await asker.find(block_key(other))] == [pub.node_id]
            assert await asker.find(block_key(some)) == []
            await ann.close()
        finally:
            sim.close()
    _sim_run(run)
    ids = [bytes([i]) * 16 for i in range(4)]
    keys = [os.urandom(20) for _ in range(400)]
    split = [zone_owned(keys, i, ids) for i in ids]
    assert sorted(k for part in split for k in part) == sorted(keys)  # each key exactly once


def test_a_node_started_before_its_bootstrap_joins_within_seconds_of_it() -> None:
    """Maintenance at the real 30 s interval: the join retries back off from 1 s, so a node
    whose bootstrap comes up 3 s after it has joined a few seconds later (not at 30 s)."""
    async def run() -> None:
        net = MemoryNetwork()
        a = Dht(b"a", "za", ("10.0.0.1", 7946), SECRET, rpc_timeout=0.2)
        b = Dht(b"b", "zb", ("10.0.0.2", 7946), SECRET, rpc_timeout=0.2)
        b.attach(net, ("10.0.0.2", 4000))
        loop = asyncio.get_running_loop()
        task = loop.create_task(b.maintain([("10.0.0.1", 4000)], 30.0))
        try:
            await asyncio.sleep(3.0)
            assert b.contacts() == 0 and b.stats["rpc_ping"] >= 2  # kept trying meanwhile
            a.attach(net, ("10.0.0.1", 4000))
            up = loop.time()
            while not (b.contacts() and a.contacts()) and loop.time() - up < 10:
                await asyncio.sleep(0.05)
            joined = loop.time() - up
            print(f"joined {joined:.2f} s after the bootstrap node came up")
            assert b.contacts() == 1 and a.contacts() == 1
            assert joined < 6.0  # the next retry is due within 4 s of 3 s (1+2, then 4)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            a.close()
            b.close()
    _sim_run(run)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_value_on_random_bytes_only_raises_wire_error(data: bytes) -> None:
    from meshcache.core.wire import decode_value
    try:
        decode_value(data, max_size=256)
    except WireError:
        pass
    with pytest.raises(WireError):
        decode_value(b"\x9b" + b"\xff" * 8, max_size=256)  # an array claiming 2**64 items


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 9), st.floats(0, 50),
                          st.floats(0, 5)), max_size=80))
def test_provider_table_stays_bounded_and_never_returns_expired(ops) -> None:  # type: ignore
    t = ProviderTable(max_keys=4, max_providers=3)
    now = 0.0
    for key, node, ttl, step in ops:
        now += step
        t.add(bytes([key]) * 20, _rec(node, now + ttl), now)
        assert len(t) <= 4
        for k, recs in t.items(now):
            assert 0 < len(recs) <= 3 and all(r.expires > now for r in recs)
            assert len({r.node_id for r in recs}) == len(recs)

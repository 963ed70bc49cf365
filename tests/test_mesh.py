"""A zone: owners single-flight cold blocks for the whole zone and summaries find replicas (real
nodes on 127.0.0.1 over QUIC); membership on the in-memory transport with a fake clock (a node
with another block size is ignored, a leave is seen at once, a silent member is suspected then
dropped, a request in flight to a silent owner fails once it is suspect and the block's new
owner is asked, a stalled host keeps its zone, a seed is enough to learn the zone)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from meshcache import Config, Node
from meshcache.lab.httporigin import OriginServer
from meshcache.core.membership import State
from meshcache.core.rendezvous import rank
from meshcache.core.rungs import BlockRequest, Rank
from meshcache.core.version import ObjectVersion
from meshcache.read.rungs.owner import OwnerSource
from meshcache.transport import TransportError

from tests.conftest import CLUSTER_SECRET, SMALL_BLOCK, make_bytes
from tests.memzone import Zone, run

SECRET = CLUSTER_SECRET


def zone(tmp_path, n, **kw):
    """`n` real nodes on 127.0.0.1 (QUIC), each listing the ones before it as peers."""
    nodes: list[Node] = []
    for i in range(n):
        cfg = dict(cache_dir=str(tmp_path / f"n{i}"), block_size=SMALL_BLOCK, fsync=False,
                   cluster_secret=SECRET, listen="127.0.0.1:0", ping_interval=0.2,
                   suspect_timeout=1.5, request_timeout=3.0, readahead=4,
                   peers=["%s:%d" % x.peers.address for x in nodes],
                   peer_origins=["http://127.0.0.1"])  # the test origin is on loopback
        cfg.update(kw)
        node = Node(Config.local(**cfg))
        node.start_peers()
        nodes.append(node)
    deadline = time.monotonic() + 10
    while any(len(x.mesh.members) < n - 1 for x in nodes):
        assert time.monotonic() < deadline, [len(x.mesh.members) for x in nodes]
        time.sleep(0.05)
    return nodes


def read_all(nodes, url, data):
    ok = []

    def read(node):
        with node.open(url) as f:
            ok.append(f.read() == data)

    threads = [threading.Thread(target=read, args=(x,)) for x in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok


@pytest.fixture
def origin():
    with OriginServer() as srv:
        yield srv


def loopback_origin(origin):
    """The test origin listens on loopback, which a node fetches for peers only when listed."""
    return [origin.url_for("")]


def test_owners_make_one_origin_read_per_block(tmp_path, origin):
    nodes = zone(tmp_path, 3, peer_origins=loopback_origin(origin))
    try:
        data = make_bytes(24 * SMALL_BLOCK + 3, 71)
        origin.put("model.bin", data)
        url = origin.url_for("model.bin")
        assert read_all(nodes, url, data) == [True] * 3
        spans = origin.spans("model.bin")
        assert len(spans) == 25 and len(set(spans)) == 25  # every block once, for the zone
        from_peers = sum(x.stats()["bytes_from_peers"] for x in nodes)
        assert from_peers >= 2 * len(data) - 2 * SMALL_BLOCK  # the other copies came by peers
        fetched_by = [x.stats()["origin_requests"] for x in nodes]
        assert all(f > 0 for f in fetched_by)  # the origin reads are spread over the owners
        # summaries: a fourth node finds replicas without asking the origin
        late = zone(tmp_path / "late", 1, peers=["%s:%d" % nodes[0].peers.address],
                    peer_origins=loopback_origin(origin))[0]
        time.sleep(1.0)
        with late.open(url) as f:
            assert f.read() == data and f.stats["bytes_from_origin"] == 0
        late.close()
    finally:
        for x in nodes:
            x.close()


def test_a_member_that_goes_away_is_dropped_and_reads_complete(tmp_path, origin):
    nodes = zone(tmp_path, 3, peer_origins=loopback_origin(origin))
    try:
        data = make_bytes(30 * SMALL_BLOCK, 72)
        origin.put("m.bin", data)
        url = origin.url_for("m.bin")
        nodes[2].mesh.members.clear()  # so it sends no LEAVE: gone without a word
        nodes[2].close()
        assert read_all(nodes[:2], url, data) == [True, True]
        deadline = time.monotonic() + 5
        while any(len(x.mesh.members) != 1 for x in nodes[:2]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for x in nodes:
            x.close()


def test_an_owner_refuses_an_origin_it_does_not_serve_peers_and_reads_complete(tmp_path, origin):
    """With the default peer_origins an owner does not fetch a loopback origin for its peers:
    each such request is refused once (not asked again) and the asker reads the origin."""
    nodes = zone(tmp_path, 2, peer_origins=[])  # the default
    try:
        data = make_bytes(16 * SMALL_BLOCK, 73)
        origin.put("r.bin", data)
        url = origin.url_for("r.bin")
        a, b = nodes
        with a.open(url) as f:
            assert f.read() == data
        v = a.version(url)
        owned_by_b = sum(a.mesh.owner(v.key + i.to_bytes(8, "big")) is not None
                         for i in range(16))
        refused = b.stats()["peer_origin_refusals"]
        assert 0 < owned_by_b == refused == a.stats()["owner_failures"]  # each asked once
        assert a.stats()["bytes_from_origin"] == len(data)
    finally:
        for x in nodes:
            x.close()


# ---- membership on the in-memory transport, fake clock -------------------------------------------

def test_other_block_size_is_ignored(tmp_path):
    async def scenario():
        z = Zone(tmp_path)
        try:
            a = await z.add()
            b = await z.add(block_size=2 * SMALL_BLOCK)
            await z.clock.advance(1.0)
            assert b.mesh.members == {} and a.mesh.members == {}
            assert a.mesh.stats["hellos_refused"] + b.mesh.stats["hellos_refused"] >= 1
        finally:
            await z.close()
    run(scenario())


def test_graceful_leave_is_seen_at_once(tmp_path):
    async def scenario():
        z = Zone(tmp_path)
        try:
            for _ in range(3):
                await z.add(suspect_timeout=30.0)
            a, b, c = z.hosts
            await z.until(lambda: all(len(h.mesh.members) == 2 for h in z.hosts), 10)
            await b.close()
            took = await z.until(lambda: len(a.mesh.members) == 1 and len(c.mesh.members) == 1,
                                 30)
            assert took < 1.0  # far sooner than the 30 s suspicion timeout
            await z.clock.advance(0.5)  # the next round rewrites mesh.json, what `peers` reads
            status = json.loads((tmp_path / "n0" / "mesh.json").read_text())
            assert [m["node_id"] for m in status["members"]] == [c.node_id.hex()]
        finally:
            await z.close()
    run(scenario())


def test_silent_member_is_suspected_before_it_is_removed(tmp_path):
    async def scenario():
        z = Zone(tmp_path)
        try:
            a = await z.add(suspect_timeout=2.0)
            silent = await z.add(suspect_timeout=2.0)
            await z.until(lambda: len(a.mesh.members) == 1, 10)
            await silent.close(leave=False)  # gone without a word
            t = await z.until(lambda: any(m.suspect for m in a.mesh.members.values()), 2.0)
            assert a.mesh.live() == [] and a.mesh.owner(b"any key") is None  # no longer owner
            assert t + await z.until(lambda: not a.mesh.members, 4.0) <= 4.0
            assert a.mesh.stats["suspicions"] == 1 and a.mesh.stats["members_down"] == 1
        finally:
            await z.close()
    run(scenario())


def test_a_request_in_flight_to_a_silent_owner_fails_once_it_is_suspect(tmp_path):
    """An owner that goes silent while fetching a block for us: the request fails when the
    member stops being used (suspected for suspect_timeout/2), not seconds later when it is
    dropped, so the reader goes on to the origin."""
    async def scenario():
        z = Zone(tmp_path)
        try:
            a = await z.add(suspect_timeout=4.0)
            owner = await z.add(suspect_timeout=4.0)
            await z.until(lambda: len(a.mesh.members) == 1 and len(owner.mesh.members) == 1, 10)
            owner.server.stall = asyncio.Event()  # its origin read never ends
            version = ObjectVersion("http://origin.test/m.bin", "v1", SMALL_BLOCK)
            asked = asyncio.ensure_future(a.peers.get_block(
                owner.address, BlockRequest(version, 0, SMALL_BLOCK), Rank.OWNER))
            await z.clock.advance(0.5)
            assert not asked.done()
            await owner.mesh.close(leave=False)  # silent now; the request stays in flight
            t = await z.until(asked.done, 4.0)
            (m,) = a.mesh.members.values()
            assert m.suspect, "the member is still there (not dropped), only suspect"
            assert t <= 4.0 / 2 + 1.0
            with pytest.raises(TransportError):
                asked.result()
            owner.server.stall.set()
        finally:
            await z.close()
    run(scenario())


def test_a_silent_owners_block_is_asked_of_the_new_owner(tmp_path):
    """The owner rung, its owner gone silent mid-request: once that member is no longer used,
    the block's new owner is asked (it reads the origin for the zone), not the origin here."""
    async def scenario():
        z = Zone(tmp_path)
        try:
            a, b, c = [await z.add(suspect_timeout=4.0) for _ in range(3)]
            await z.until(lambda: all(len(h.mesh.members) == 2 for h in z.hosts), 10)
            data = make_bytes(128 * SMALL_BLOCK, 5)
            version = ObjectVersion("http://origin.test/m.bin", "v1", len(data))
            ids = [a.node_id, b.node_id, c.node_id]
            # A block b owns, then c once b is not used: one in six of them (the node ids are
            # random; that none of 128 is is a chance of 1 in 10^10).
            index = next(i for i in range(128)
                         if rank(BlockRequest(version, i, SMALL_BLOCK).key, ids)[:2]
                         == [b.node_id, c.node_id])
            request = BlockRequest(version, index, SMALL_BLOCK)
            b.server.stall = asyncio.Event()  # its origin read never ends
            c.server.origin[version.url] = data
            counted: Counter[str] = Counter()
            source = OwnerSource(a.mesh, a.peers, lambda **kw: counted.update(kw))
            got = asyncio.ensure_future(source.fetch(request))
            await z.clock.advance(0.5)
            assert not got.done()
            await b.mesh.close(leave=False)  # silent now, its read of the block in flight
            await z.until(got.done, 4.0)
            start, end = request.span
            assert got.result() is not None and got.result().data == data[start:end]
            assert c.server.origin_reads == [(version.url, index)]
            assert counted == {"owner_failures": 1}
            b.server.stall.set()
        finally:
            await z.close()
    run(scenario())


def test_a_stalled_host_does_not_drop_the_zone(tmp_path):
    """When every node froze at once for longer than suspect_timeout (a stalled host or VM),
    they keep each other: the silence was their own, not their members'."""
    async def scenario():
        z = Zone(tmp_path)
        try:
            for _ in range(3):
                await z.add(suspect_timeout=1.0)
            await z.until(lambda: all(len(h.mesh.members) == 2 for h in z.hosts), 10)
            before = [h.mesh.stats["members_down"] for h in z.hosts]
            z.clock.stall(2.5)  # every timer of every node runs 2.5 s late
            await z.clock.advance(3.0)  # then rounds that ping the members again
            assert [len(h.mesh.members) for h in z.hosts] == [2, 2, 2]
            assert [h.mesh.stats["members_down"] for h in z.hosts] == before
        finally:
            await z.close()
    run(scenario())


def test_meshcache_peers_lists_the_members(tmp_path):
    async def scenario():
        z = Zone(tmp_path)
        try:
            for _ in range(3):
                await z.add()
            await z.until(lambda: all(len(h.mesh.members) == 2 for h in z.hosts), 10)
            await z.clock.advance(0.5)  # a round writes mesh.json
        finally:
            await z.close()
        return [h.node_id.hex() for h in z.hosts]

    ids = run(scenario())
    env = dict(os.environ, MESHCACHE_CACHE_DIR=str(tmp_path / "n0"))
    out = subprocess.run([sys.executable, "-m", "meshcache.cli", "peers", "--json"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert {m["node_id"] for m in status["members"]} == set(ids[1:])
    assert all(m["zone"] == "default" and m["state"] == "alive" for m in status["members"])
    text = subprocess.run([sys.executable, "-m", "meshcache.cli", "peers"], env=env,
                          capture_output=True, text=True, timeout=30).stdout
    assert ids[1][:16] in text
    env = dict(os.environ, MESHCACHE_CACHE_DIR=str(tmp_path / "nothing-here"))
    gone = subprocess.run([sys.executable, "-m", "meshcache.cli", "peers"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 5 and "no running meshcached" in gone.stderr


def test_a_node_that_knows_one_seed_learns_the_zone_by_swim(tmp_path):
    """Each node is configured with only the first node as a peer: the others come from the
    SYNC on join and membership gossip (then HELLO admits them), and probes flow both ways."""
    async def scenario():
        z = Zone(tmp_path)
        try:
            seed = await z.add()
            for _ in range(3):
                await z.add(peers=[seed.address])
            await z.until(lambda: all(len(h.mesh.members) == 3 for h in z.hosts), 10)
            await z.clock.advance(1.0)
            for h in z.hosts:
                table = h.mesh.membership.live_members()
                assert {m.node_id for m in table} == set(h.mesh.members)
                assert all(m.state == State.ALIVE for m in table)
                assert h.mesh.membership.stats["probes"] > 0
                assert all(not m.suspect for m in h.mesh.members.values())
        finally:
            await z.close()
    run(scenario())


def test_tables_stay_bounded_over_many_peers(tmp_path):
    """A long life that meets many peers: refused, discovered and penalized ones are
    remembered only up to a bound, and nothing is left in flight."""
    from meshcache.core import wire
    from meshcache.mesh.mesh import MAX_REMEMBERED
    from meshcache.mesh.peers import MAX_PENALTIES
    from meshcache.transport import TransportError

    async def scenario():
        z = Zone(tmp_path)
        try:
            a = await z.add(ping_interval=100.0)
            for i in range(MAX_REMEMBERED + 300):
                other = wire.Hello(i.to_bytes(8, "big"), 2 * SMALL_BLOCK, a.mesh.tag, 1452, "z",
                                   7946)
                assert not a.mesh.accept_hello(other, f"10.1.{i // 250}.{i % 250}")
                a.mesh.add_discovered(b"d" + i.to_bytes(8, "big"), (f"10.2.{i // 250}.1", i))
            for i in range(MAX_PENALTIES + 1000):
                a.peers.failed((f"10.3.{i // 250}.{i % 250}", 7946), TransportError("gone"))
            await z.clock.advance(1.0)  # greetings to nobody fail
            sizes = a.mesh.remembered()
            assert sizes["refused"] <= MAX_REMEMBERED and sizes["discovered"] <= MAX_REMEMBERED
            assert a.peers.penalty_entries() <= 2 * MAX_PENALTIES
            await z.clock.advance(400.0, step=50.0)  # rounds: discovered addresses expire,
            # lapsed holds are pruned
            sizes = a.mesh.remembered()
            assert sizes["discovered"] == 0 and sizes["tasks"] <= 1 and sizes["pending"] == 0
            assert a.peers.penalty_entries() == 0
            assert a.peers.inflight(("10.3.0.1", 7946)) == 0
        finally:
            await z.close()
    run(scenario())

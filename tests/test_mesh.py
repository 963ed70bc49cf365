"""A zone of nodes on 127.0.0.1: owners single-flight cold blocks for the whole zone, summaries
find replicas, a node with another block size is ignored, a member that goes away is dropped."""

from __future__ import annotations

import threading
import time

import pytest

from meshcache import Config, Node
from meshcache.lab.httporigin import OriginServer
from meshcache.core.membership import State

from tests.conftest import CLUSTER_SECRET, SMALL_BLOCK, make_bytes

SECRET = CLUSTER_SECRET


def zone(tmp_path, n, **kw):
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


def test_owners_make_one_origin_read_per_block(tmp_path, origin):
    nodes = zone(tmp_path, 3)
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
        late = zone(tmp_path / "late", 1, peers=["%s:%d" % nodes[0].peers.address])[0]
        time.sleep(1.0)
        with late.open(url) as f:
            assert f.read() == data and f.stats["bytes_from_origin"] == 0
        late.close()
    finally:
        for x in nodes:
            x.close()


def test_other_block_size_is_ignored(tmp_path):
    a = zone(tmp_path / "a", 1)[0]
    try:
        b = Node(Config.local(cache_dir=str(tmp_path / "b"), block_size=2 * SMALL_BLOCK,
                              cluster_secret=SECRET, listen="127.0.0.1:0", ping_interval=0.2,
                              peers=["%s:%d" % a.peers.address]))
        time.sleep(0.5)
        assert b.mesh.members == {} and a.mesh.members == {}
        assert a.stats()["hellos_refused"] + b.stats()["hellos_refused"] >= 1
        b.close()
    finally:
        a.close()


def test_a_member_that_goes_away_is_dropped_and_reads_complete(tmp_path, origin):
    nodes = zone(tmp_path, 3)
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


def test_graceful_leave_is_seen_at_once(tmp_path):
    nodes = zone(tmp_path, 3, suspect_timeout=30.0)
    try:
        t = time.monotonic()
        nodes[1].close()
        while any(len(x.mesh.members) != 1 for x in (nodes[0], nodes[2])):
            assert time.monotonic() - t < 2.0  # far sooner than the 30 s suspicion timeout
            time.sleep(0.05)
        time.sleep(0.5)  # the next round rewrites mesh.json, what `meshcache peers` reads
        status = __import__("json").loads((tmp_path / "n0" / "mesh.json").read_text())
        assert [m["node_id"] for m in status["members"]] == [nodes[2].mesh.node_id.hex()]
    finally:
        for x in nodes:
            x.close()


def test_silent_member_is_suspected_before_it_is_removed(tmp_path):
    nodes = zone(tmp_path, 2, suspect_timeout=2.0)
    try:
        silent = nodes[1]
        silent.mesh.members.clear()  # no LEAVE
        silent.close()
        a = nodes[0].mesh
        t = time.monotonic()
        while not any(m.suspect for m in a.members.values()):
            assert time.monotonic() - t < 2.0
            time.sleep(0.05)
        assert a.live() == [] and a.owner(b"any key") is None  # no longer an owner
        while a.members:
            assert time.monotonic() - t < 4.0
            time.sleep(0.05)
    finally:
        for x in nodes:
            x.close()


def test_a_stalled_host_does_not_drop_the_zone(tmp_path):
    """When every node froze at once for longer than suspect_timeout (a stalled host or VM),
    they keep each other: the silence was their own, not their members'."""
    nodes = zone(tmp_path, 3, suspect_timeout=1.0)
    try:
        before = [x.mesh.stats["members_down"] for x in nodes]
        for x in nodes:
            x._loop.call_soon(time.sleep, 2.5)  # blocks each event loop, as a frozen host would
        time.sleep(3.5)  # the stall, then rounds that ping the members again
        assert [len(x.mesh.members) for x in nodes] == [2, 2, 2]
        assert [x.mesh.stats["members_down"] for x in nodes] == before
    finally:
        for x in nodes:
            x.close()


def test_meshcache_peers_lists_the_members(tmp_path):
    import json
    import os
    import subprocess
    import sys

    nodes = zone(tmp_path, 3)
    try:
        time.sleep(0.5)  # a round writes mesh.json
        env = dict(os.environ, MESHCACHE_CACHE_DIR=str(tmp_path / "n0"))
        out = subprocess.run([sys.executable, "-m", "meshcache.cli", "peers", "--json"],
                             env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert {m["node_id"] for m in status["members"]} == \
            {x.mesh.node_id.hex() for x in nodes[1:]}
        assert all(m["zone"] == "default" and m["state"] == "alive" for m in status["members"])
        text = subprocess.run([sys.executable, "-m", "meshcache.cli", "peers"], env=env,
                              capture_output=True, text=True, timeout=30).stdout
        assert nodes[1].mesh.node_id.hex()[:16] in text
    finally:
        for x in nodes:
            x.close()
    env = dict(os.environ, MESHCACHE_CACHE_DIR=str(tmp_path / "nothing-here"))
    gone = subprocess.run([sys.executable, "-m", "meshcache.cli", "peers"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 5 and "no running meshcached" in gone.stderr


def test_a_node_that_knows_one_seed_learns_the_zone_by_swim(tmp_path):
    """Each node is configured with only the first node as a peer: the others come from the
    SYNC on join and membership gossip (then HELLO admits them), and probes flow both ways."""
    seed = zone(tmp_path / "seed", 1)[0]
    addr = "%s:%d" % seed.peers.address
    others = [zone(tmp_path / f"o{i}", 1, peers=[addr])[0] for i in range(3)]
    nodes = [seed, *others]
    try:
        deadline = time.monotonic() + 10
        while any(len(x.mesh.members) != 3 for x in nodes):
            assert time.monotonic() < deadline, [len(x.mesh.members) for x in nodes]
            time.sleep(0.05)
        time.sleep(1.0)
        for x in nodes:
            table = x.mesh.membership.live_members()
            assert {m.node_id for m in table} == set(x.mesh.members)
            assert all(m.state == State.ALIVE for m in table)
            assert x.mesh.membership.stats["probes"] > 0
            assert all(not m.suspect for m in x.mesh.members.values())
    finally:
        for x in nodes:
            x.close()

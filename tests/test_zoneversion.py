"""A node that knows no version of a URL asks its zone while the origin is down: real nodes over
QUIC on 127.0.0.1 in front of a real HTTP origin that is stopped (the read is served from the
zone within stale_if_error, and fails fast naming the origin outside it or when nobody holds the
object); the asking and answering on the in-memory transport (owner first, then others; only
credential holders are answered)."""

from __future__ import annotations

import time

import pytest

from meshcache import OriginError
from meshcache.core.version import ObjectVersion, url_key
from meshcache.lab.httporigin import OriginServer
from meshcache.read.zoneversion import ask_zone, to_ask

from tests.conftest import OTHER_SECRET, SMALL_BLOCK, make_bytes
from tests.memzone import Zone, run
from tests.test_mesh import zone

FAIL_BOUND = 5.0  # seconds an unservable read may take to fail once the origin is down


@pytest.fixture
def origin():
    with OriginServer() as srv:
        yield srv


def closing(nodes):
    for x in nodes:
        x.close()


def test_a_node_that_never_stat_ed_an_object_reads_it_from_its_zone(tmp_path, origin):
    data = make_bytes(7 * SMALL_BLOCK + 11, 81)
    origin.put("held.bin", data)
    origin.put("nobody.bin", data[:100])
    url, nobody = origin.url_for("held.bin"), origin.url_for("nobody.bin")
    a, b = nodes = zone(tmp_path, 2, metadata_ttl=0.2, peer_origins=[origin.url_for("")])
    try:
        assert a.cat(url) == data  # b, owner of some blocks, fetched those for the zone
        assert b.latest(url) is None  # but never stat-ed the object: no version
        origin.close()
        before = b.stats()
        t = time.monotonic()
        with b.open(url) as f:  # the version comes from a
            assert f.read() == data
        assert time.monotonic() - t < FAIL_BOUND
        st = b.stats()
        assert st["zone_versions"] == 1 and st["bytes_from_origin"] == before["bytes_from_origin"]
        assert st["bytes_from_peers"] > 0  # a's blocks, verified, joined b's own
        assert b.cat(url, 5, 70_000) == data[5:70_000]  # now known here: no second ask
        assert b.stats()["zone_versions"] == 1 and b.version(url) == a.version(url)
        # what nobody holds fails at once, naming the origin and the members asked
        t = time.monotonic()
        with pytest.raises(OriginError, match=r"127\.0\.0\.1:%d.*1 zone member asked"
                           % origin.port):
            b.cat(nobody)
        assert time.monotonic() - t < FAIL_BOUND
    finally:
        closing(nodes)


@pytest.mark.parametrize("window_a, window_b", [(1.0, 600.0), (600.0, 0.7)],
                         ids=["answerer-window-over", "asker-window-over"])
def test_outside_the_stale_window_the_read_fails_fast_naming_the_origin(
        tmp_path, origin, window_a, window_b):
    """Both windows count from the origin's confirmation to a: the answering node's (it tells
    nothing older) and the asking node's (it serves nothing older)."""
    data = make_bytes(3 * SMALL_BLOCK, 82)
    origin.put("old.bin", data)
    url = origin.url_for("old.bin")
    a, = zone(tmp_path / "a", 1, metadata_ttl=0.2, stale_if_error=window_a)
    nodes = [a]
    try:
        b, = zone(tmp_path / "b", 1, peers=["%s:%d" % a.peers.address], metadata_ttl=0.2,
                  stale_if_error=window_b)
        nodes.append(b)
        deadline = time.monotonic() + 10
        while not (a.mesh.live() and b.mesh.live()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert a.cat(url) == data
        origin.close()
        time.sleep(1.3)  # past the smaller window
        t = time.monotonic()
        with pytest.raises(OriginError, match=r"origin http://127\.0\.0\.1:%d" % origin.port):
            b.cat(url)
        assert time.monotonic() - t < FAIL_BOUND
        assert b.stats()["zone_versions"] == 0 and b.stats()["bytes_from_peers"] == 0
    finally:
        closing(nodes)


# ---- the exchange on the in-memory transport ----------------------------------------------------

V = ObjectVersion("http://origin:80/x.bin", "etag:v1", 3 * SMALL_BLOCK)


def test_the_owner_is_asked_first_then_others_until_one_knows(tmp_path):
    async def scenario():
        z = Zone(tmp_path)
        try:
            for _ in range(4):
                await z.add()
            await z.until(lambda: all(len(h.mesh.members) == 3 for h in z.hosts), 10)
            asker = z.hosts[0]
            order = to_ask(asker.mesh, V.url)
            assert len(order) == 3  # the owner and two more, never itself
            by_id = {h.node_id: h for h in z.hosts}
            owner = asker.mesh.owner(url_key(V.url))
            if owner is not None:
                assert order[0] is owner
            # only the last one asked knows: it is found, after the two misses
            by_id[order[-1].node_id].server.versions[V.url] = (V, 12.5)
            answer, asked = await ask_zone(asker.mesh, asker.peers, V.url, SMALL_BLOCK)
            assert asked == 3 and answer is not None and answer.version == V
            assert answer.member.node_id == order[-1].node_id
            assert answer.confirmed_at <= time.monotonic() - 12.5  # never younger than told
            # nobody knows: None, after asking three (no more)
            del by_id[order[-1].node_id].server.versions[V.url]
            answer, asked = await ask_zone(asker.mesh, asker.peers, V.url, SMALL_BLOCK)
            assert answer is None and asked == 3
            # the first one asked is gone (its connections with it): the next one answers
            by_id[order[1].node_id].server.versions[V.url] = (V, 0.0)
            await by_id[order[0].node_id].close(leave=False)
            answer, asked = await ask_zone(asker.mesh, asker.peers, V.url, SMALL_BLOCK)
            assert answer is not None and answer.member.node_id == order[1].node_id
            assert asked == 2 and asker.peers.stats["peer_errors"] >= 1
        finally:
            await z.close()
    run(scenario())


def test_only_credential_holders_are_told_a_version(tmp_path):
    async def scenario():
        z = Zone(tmp_path)
        try:
            a = await z.add()
            a.server.versions[V.url] = (V, 1.0)
            outsider = await z.add(peers=[], secret=OTHER_SECRET)
            with pytest.raises(Exception) as e:
                await outsider.peers.get_version(a.address, V.url, timeout=2.0)
            assert "auth" in type(e.value).__name__.lower() + str(e.value).lower()
            member = await z.add(peers=[a.address])
            assert await member.peers.get_version(a.address, V.url, timeout=2.0) == (V, 1.0)
            assert await member.peers.get_version(a.address, V.url + "?", timeout=2.0) is None
        finally:
            await z.close()
    run(scenario())

"""Origin outage policy (pure, fake clock) and a node in front of an HTTP origin that stops."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, strategies as st

from meshcache import Config, Node, OriginError
from meshcache.core.staleness import OutagePolicy, may_serve_stale, origin_of
from meshcache.core.version import ObjectVersion
from meshcache.lab.httporigin import OriginServer

from tests.conftest import CLUSTER_SECRET, SMALL_BLOCK, make_bytes

times = st.floats(min_value=0, max_value=1e7, allow_nan=False)


@given(times, times, st.floats(min_value=0, max_value=1e6))
def test_stale_only_within_the_window_after_a_confirmation(confirmed, elapsed, window):
    now = confirmed + elapsed
    assert may_serve_stale(confirmed, now, window) == (window > 0 and now - confirmed <= window)
    assert not may_serve_stale(None, now, window)


@given(st.lists(st.tuples(st.sampled_from(["ok", "fail", "gone"]), st.floats(0, 100)),
                max_size=30),
       st.floats(0.1, 500), st.floats(0, 20))
def test_policy_serves_the_last_confirmed_version_or_nothing(events, window, retry):
    v = ObjectVersion("http://o:1/a", "etag:x", 10)
    p, now = OutagePolicy(window, retry), 0.0
    confirmed_at = None
    failed_at = None
    for kind, dt in events:
        now += dt
        if kind == "ok":
            p.confirmed(v, now)
            confirmed_at, failed_at = now, None
        elif kind == "fail":
            p.failed(v.url, "refused", now)
            failed_at = now
        else:
            p.forget(v.url)
            confirmed_at = None
        stale = p.stale(v.url, now)
        assert stale == (v if confirmed_at is not None and now - confirmed_at <= window else None)
        down = p.down(v.url, now)
        assert (down is not None) == (failed_at is not None and now - failed_at < retry)
        if down is not None:
            assert "http://o:1" in p.outage_message(v.url, down, now)


@given(st.floats(0, 1000), st.floats(0, 1000), st.floats(0.1, 500), st.floats(0, 1000))
def test_a_version_heard_from_the_zone_counts_from_its_confirmation(local_at, heard_at, window,
                                                                    later):
    """A zone member's report is kept as if the origin confirmed it then, unless this node knows
    a later confirmation; it is served and passed on (with its age) within the same window, and
    it ends no outage."""
    url = "http://o:1/a"
    mine, theirs = ObjectVersion(url, "etag:1", 10), ObjectVersion(url, "etag:2", 10)
    p = OutagePolicy(window, 5)
    p.confirmed(mine, local_at)
    p.failed(url, "refused", local_at)
    p.heard(theirs, heard_at)
    now = max(local_at, heard_at) + later
    kept, at = (theirs, heard_at) if heard_at > local_at else (mine, local_at)
    fresh_enough = now - at <= window
    assert p.stale(url, now) == (kept if fresh_enough else None)
    assert p.last_confirmed(url, now) == ((kept, now - at) if fresh_enough else None)
    assert p.down(url, local_at + 1) is not None  # still down: only the origin ends it


def test_outages_are_per_origin():
    p = OutagePolicy(60, 5)
    p.failed("http://a:1/x", "refused", 0)
    assert p.down("http://a:1/y", 1) and not p.down("http://b:1/x", 1)
    assert origin_of("s3://bucket/key") == "s3://bucket" and origin_of("file:///p") == "file://"


# ---- a real HTTP origin that is stopped --------------------------------------------------------

STOPPED_FAIL_BOUND = 5.0  # seconds an uncached read may take to fail once the origin is down


def outage_node(tmp_path, **kw):
    return Node(Config.local(cache_dir=str(tmp_path / "cache"), block_size=SMALL_BLOCK,
                             fsync=False, metadata_ttl=0.2, origin_timeout=5.0, **kw))


def test_origin_outage_serves_cached_objects_and_fails_fast_for_the_rest(tmp_path):
    data = make_bytes(5 * SMALL_BLOCK + 7, 3)
    origin = OriginServer()
    try:
        origin.put("cached.bin", data)
        origin.put("partial.bin", data)
        origin.put("never.bin", data)
        url = origin.url_for("cached.bin")
        with outage_node(tmp_path) as node:
            assert node.cat(url) == data
            assert node.cat(origin.url_for("partial.bin"), 0, 10) == data[:10]
            origin.close()
            time.sleep(0.3)  # the stat expires: every read now asks the (stopped) origin
            for _ in range(3):
                assert node.cat(url) == data  # served under the last known version
                with node.open(url) as f:
                    assert f.read() == data
            assert node.stat(url)["cached_blocks"] == 6
            assert node.stats()["stale_stats"] >= 3
            t = time.monotonic()
            with pytest.raises(OriginError, match=r"127\.0\.0\.1:%d" % origin.port):
                node.cat(origin.url_for("never.bin"))
            # a block nobody holds of a known version fails too, naming the URL
            with pytest.raises(OriginError, match="partial.bin"):
                node.cat(origin.url_for("partial.bin"))
            assert time.monotonic() - t < 2 * STOPPED_FAIL_BOUND
    finally:
        origin.close()


def test_stale_window_ends_and_zero_turns_it_off(tmp_path):
    data = make_bytes(SMALL_BLOCK, 4)
    origin = OriginServer()
    try:
        origin.put("a.bin", data)
        url = origin.url_for("a.bin")
        with outage_node(tmp_path, stale_if_error=0.0) as node:
            assert node.cat(url) == data
            origin.close()
            time.sleep(0.3)
            with pytest.raises(OriginError, match="origin"):
                node.cat(url)
    finally:
        origin.close()


def test_zone_peer_serves_what_this_node_lacks_while_the_origin_is_down(tmp_path):
    """This node knows the version (one stat) but holds no block; a zone peer holds them all."""
    from tests.test_peers import start_daemon, stop, warm

    data = make_bytes(6 * SMALL_BLOCK + 5, 6)
    origin = OriginServer()
    proc = None
    try:
        origin.put("z.bin", data)
        url = origin.url_for("z.bin")
        warm(tmp_path, url)
        proc, addr = start_daemon(tmp_path / "a")
        node = Node(Config.local(cache_dir=str(tmp_path / "b"), block_size=SMALL_BLOCK,
                                 fsync=False, metadata_ttl=0.2, peers=[addr],
                                 cluster_secret=CLUSTER_SECRET, listen="127.0.0.1:0",
                                 request_timeout=5.0))
        try:
            v = node.version(url)
            origin.close()
            time.sleep(0.3)
            assert node.cat(url) == data
            st = node.stats()
            assert st["bytes_from_peers"] == len(data) and st["bytes_from_origin"] == 0
            assert st["stale_stats"] >= 1 and node.version(url) == v
        finally:
            node.close()
    finally:
        if proc is not None:
            stop(proc)
        origin.close()

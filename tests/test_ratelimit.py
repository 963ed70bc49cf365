"""Rate limits measured on real QUIC transfers between processes: global and per connection,
egress and ingress, each within 5% of its limit."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from meshcache import Config, Node
from meshcache.lab.httporigin import OriginServer
from meshcache.mesh.ratelimit import RateLimiter

from tests.conftest import make_bytes
from tests.test_peers import SECRET, start_daemon, stop

MB = 1_000_000
BLOCK = 1 << 20


def test_limiter_pure_rate():
    async def run():
        lim = RateLimiter(rate=4 * MB)
        t = time.monotonic()
        for _ in range(40):
            await lim.take("c", 256 * 1024)
        return time.monotonic() - t
    elapsed = asyncio.run(run())
    assert abs(40 * 256 * 1024 / elapsed - 4 * MB) / (4 * MB) < 0.05


def _node(tmp_path, name, addr, **kw):
    return Node(Config.local(cache_dir=str(tmp_path / name), block_size=BLOCK, fsync=False,
                             peers=[addr], cluster_secret=SECRET, listen="127.0.0.1:0",
                             max_datagram_size=65000, readahead=8, **kw))


def _keep_apart(readers):
    """Two readers that joined through the same server learn of each other by SWIM and may then
    get blocks from each other, which would add to the server's egress being measured: here
    each reader ignores the other, so every byte comes from the server."""
    time.sleep(0.5)  # greetings in flight land first
    ids = [r.mesh.node_id for r in readers]

    async def apart(mesh):
        for other in ids:
            if other != mesh.node_id:
                mesh.ignore(other)

    for r in readers:
        r.run(apart(r.mesh))


def _timed_reads(nodes, url):
    times = {}

    def read(n):
        # Connect, authenticate and learn the manifest (fetching the last block) off the clock.
        v = n.version(url)
        n.fetch_sync(v, n.manifest(v).blocks - 1)
        start.wait()
        t = time.monotonic()
        with n.open(url) as f:
            f.read()
        times[id(n)] = time.monotonic() - t
        assert n.stats()["bytes_from_peers"] == v.size

    start = threading.Barrier(len(nodes))

    threads = [threading.Thread(target=read, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [times[id(n)] for n in nodes]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    data = make_bytes(40 * BLOCK, 61)
    with OriginServer() as srv:
        srv.put("big.bin", data)
        url = srv.url_for("big.bin")
        n = Node(Config.local(cache_dir=str(tmp / "a"), block_size=BLOCK, fsync=False))
        n.prewarm(url)
        n.close()
        yield tmp, url, len(data)


@pytest.mark.parametrize("case", ["egress_global", "egress_per_connection",
                                  "ingress_global", "ingress_per_connection"])
def test_measured_rate_is_within_5_percent(seeded, tmp_path, case):
    tmp, url, size = seeded
    timed = size - BLOCK
    env = {"MESHCACHE_BLOCK_SIZE": str(BLOCK), "MESHCACHE_MAX_DATAGRAM_SIZE": "65000"}
    if case == "egress_global":
        env["MESHCACHE_EGRESS_RATE"] = str(16 * MB)
    elif case == "egress_per_connection":
        env["MESHCACHE_PEER_EGRESS_RATE"] = str(8 * MB)
    proc, addr = start_daemon(tmp / "a", extra_env=env)
    try:
        if case.startswith("egress"):
            readers = [_node(tmp_path, "b", addr), _node(tmp_path, "c", addr)]
            _keep_apart(readers)
        elif case == "ingress_global":
            readers = [_node(tmp_path, "b", addr, ingress_rate=12 * MB)]
        else:
            readers = [_node(tmp_path, "b", addr, peer_ingress_rate=10 * MB)]
        times = _timed_reads(readers, url)
        for r in readers:
            r.close()
    finally:
        stop(proc)
    if case == "egress_global":  # two readers share the 16 MB/s of the server
        measured, limit = 2 * timed / max(times), 16 * MB
    elif case == "egress_per_connection":  # each connection gets its own 8 MB/s
        measured, limit = timed / max(times), 8 * MB
        assert abs(timed / min(times) - limit) / limit < 0.05
    elif case == "ingress_global":
        measured, limit = timed / times[0], 12 * MB
    else:
        measured, limit = timed / times[0], 10 * MB
    assert abs(measured - limit) / limit < 0.05, (case, measured / MB)

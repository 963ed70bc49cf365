"""Rate limits: the limiter holds each rate within 5% both ways on a fake clock (global and per
connection, many concurrent streams), and real QUIC transfers between processes, egress and
ingress, never exceed their limit by more than 5%, every limited byte charged."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from meshcache import Config, Node
from meshcache.lab.httporigin import OriginServer
from meshcache.mesh.clock import FakeClock
from meshcache.mesh.ratelimit import CHUNK, RateLimiter, burst_of

from tests.conftest import make_bytes
from tests.test_peers import SECRET, start_daemon, stop

MB = 1_000_000
BLOCK = 1 << 20


async def _pump(lim: RateLimiter, clock: FakeClock, conns: int, streams: int,
                blocks: int) -> list[float]:
    """`conns` connections, each with `streams` concurrent streams moving `blocks` blocks in
    CHUNK pieces through `lim` (as the peer service does with readahead); returns each
    connection's finish time on the fake clock, from 0."""
    start = clock.now()
    done: list[list[float]] = [[] for _ in range(conns)]
    queues = [list(range(blocks)) for _ in range(conns)]

    async def stream(c: int) -> None:
        while queues[c]:
            queues[c].pop()
            for _ in range(BLOCK // CHUNK):
                await lim.take(("conn", c), CHUNK)
        done[c].append(clock.now() - start)

    tasks = [asyncio.ensure_future(stream(c)) for c in range(conns) for _ in range(streams)]
    while not all(t.done() for t in tasks):
        await clock.advance(0.05, step=0.01)
    for t in tasks:
        t.result()
    return [max(d) for d in done]


@pytest.mark.parametrize("case", ["global", "per_connection", "both"])
def test_limiter_holds_the_rate_exactly_on_a_fake_clock(case):
    """The limiter alone, timed on a fake clock (a busy machine cannot skew it): two connections
    of 8 concurrent streams each move 39 blocks at the global rate (shared) and/or the
    per-connection rate (each its own), within 5% of the rate, and the token-bucket bound holds
    both ways: no more than burst + rate * t, no less than rate * t less one chunk per stream."""
    rate, per = {"global": (16 * MB, 0), "per_connection": (0, 8 * MB),
                 "both": (12 * MB, 8 * MB)}[case]

    async def run():
        clock = FakeClock()
        lim = RateLimiter(rate=rate, per_connection=per, clock=clock)
        return lim, await _pump(lim, clock, conns=2, streams=8, blocks=39)

    lim, finish = asyncio.run(run())
    each = 39 * BLOCK
    assert lim.taken == 2 * each  # every byte was charged
    if rate:  # both connections share the global bucket
        t = max(finish)
        assert rate * t - 16 * CHUNK <= 2 * each <= burst_of(rate) + rate * t
        assert abs(2 * each / t - rate) / rate < 0.05, 2 * each / t / MB
    if per and (not rate or per * 2 < rate):
        for t in finish:  # each connection its own
            assert per * t - 8 * CHUNK <= each <= burst_of(per) + per * t
            assert abs(each / t - per) / per < 0.05, each / t / MB


def test_limiter_on_the_loop_clock_waits_for_real():
    """The default clock is the loop's: 4 MB through a 16 MB/s limit takes about 0.25 s (only
    a lower bound on wall time: a busy machine can only make it slower)."""
    async def run():
        lim = RateLimiter(rate=16 * MB)
        t = time.monotonic()
        for _ in range(16):
            await lim.take("c", 256 * 1024)
        return time.monotonic() - t
    elapsed = asyncio.run(run())
    assert elapsed >= (16 * 256 * 1024 - burst_of(16 * MB)) / (16 * MB) * 0.99


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
def test_real_transfers_never_exceed_the_limit_and_every_byte_is_charged(seeded, tmp_path, case):
    """Real QUIC transfers between processes: the wall-clock rate never exceeds the limit by
    more than 5% (a busy machine can only slow a transfer, so this holds under load), and a
    limited reader charged every byte it received to its buckets. That the limiter lets the
    full rate through (the lower side of the 5%) is checked on the fake clock above, where
    a busy machine cannot make it look slow."""
    tmp, url, size = seeded
    timed = size - BLOCK
    env = {"MESHCACHE_BLOCK_SIZE": str(BLOCK), "MESHCACHE_MAX_DATAGRAM_SIZE": "65000"}
    if case == "egress_global":
        env["MESHCACHE_EGRESS_RATE"] = str(16 * MB)
    elif case == "egress_per_connection":
        env["MESHCACHE_PEER_EGRESS_RATE"] = str(8 * MB)
    proc, addr = start_daemon(tmp / "a", extra_env=env)
    charged = []
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
            charged.append((r.peers.ingress.taken, r.stats()["bytes_from_peers"]))
            r.close()
    finally:
        stop(proc)
    if case == "egress_global":  # two readers share the 16 MB/s of the server
        measured, limit = 2 * timed / max(times), 16 * MB
    elif case == "egress_per_connection":  # each connection gets its own 8 MB/s
        measured, limit = timed / min(times), 8 * MB
    elif case == "ingress_global":
        measured, limit = timed / times[0], 12 * MB
    else:
        measured, limit = timed / times[0], 10 * MB
    print(f"{case}: {measured / MB:.2f} MB/s, limit {limit / MB:.0f}")
    assert measured <= limit * 1.05, (case, measured / MB)
    if case.startswith("ingress"):
        assert charged == [(size, size)]  # every received byte went through the buckets
    else:
        assert all(taken == 0 and got == size for taken, got in charged)  # readers unlimited

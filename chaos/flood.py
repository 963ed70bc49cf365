"""Unauthenticated flood for 60 s: clients that complete QUIC/TLS but never authenticate, and
instead push data on many streams during the auth window (reconnecting when dropped), plus
spoofable fake QUIC Initial packets at 1,000 per second. Measured: the daemon's peak RSS, and a
legitimate credentialed peer reading from it throughout (reads served by the daemon, latency)."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time

from _common import MiB, emit, log, parse, peak_rss, rss, start_daemon, stop as stop_daemon

from meshcache import Config, Node
from meshcache.lab.httporigin import OriginServer
from meshcache.mesh.auth import new_secret
from meshcache.transport import TransportConfig
from meshcache.transport.quic import QuicTransport

BLOCK = 64 * 1024
CONNECTIONS = 4
STREAMS = 8
INITIALS_PER_S = 1000


def fake_initial(rng: random.Random) -> bytes:
    """A QUIC v1 Initial header with random connection ids and an undecryptable payload."""
    dcid, scid = rng.randbytes(8), rng.randbytes(8)
    body = rng.randbytes(1200 - 1 - 4 - 18 - 1 - 2)
    return (bytes([0xC3]) + struct.pack("!I", 1) + bytes([8]) + dcid + bytes([8]) + scid
            + b"\x00" + struct.pack("!H", 0x4000 | len(body)) + body)


async def stream_flooder(addr: tuple[str, int], stop: float, pushed: list[int]) -> None:
    """Connect (TLS only), then push bytes on STREAMS streams instead of authenticating."""
    cfg = TransportConfig(max_datagram_size=1452, recv_timeout=15, connect_timeout=5,
                          auth_timeout=15)

    async def push_instead_of_auth(conn) -> None:
        async def one() -> None:
            s = await conn.open_stream()
            chunk = os.urandom(64 * 1024)
            while time.monotonic() < stop:
                await s.send_payload(chunk)
                pushed[0] += len(chunk)
        await asyncio.gather(*(one() for _ in range(STREAMS)), return_exceptions=True)

    while time.monotonic() < stop:
        t = QuicTransport(cfg, authenticate=push_instead_of_auth)
        try:
            await asyncio.wait_for(t.open_stream(addr), max(0.1, stop - time.monotonic()))
        except BaseException:
            pass
        finally:
            try:
                await asyncio.wait_for(t.close(), 5)
            except BaseException:
                pass


async def initial_flooder(addr: tuple[str, int], stop: float, sent: list[int]) -> None:
    rng = random.Random(1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        while time.monotonic() < stop:
            t = time.monotonic()
            for _ in range(INITIALS_PER_S // 20):
                try:
                    s.sendto(fake_initial(rng), addr)
                    sent[0] += 1
                except OSError:
                    pass
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - t)))
    finally:
        s.close()


def main() -> None:
    args = parse(__doc__)
    seconds = 15 if args.quick else 60
    root = tempfile.mkdtemp(prefix="meshcache-chaos-flood-")
    secret = new_secret()
    origin = OriginServer()
    data = os.urandom(8 * BLOCK)
    origin.put("m.bin", data)
    url = origin.url_for("m.bin")
    with Node(Config.local(cache_dir=f"{root}/d", block_size=BLOCK, fsync=False)) as warm:
        warm.prewarm(url)
    env = dict(os.environ, MESHCACHE_CLUSTER_SECRET=secret, MESHCACHE_CACHE_DIR=f"{root}/d",
               MESHCACHE_BLOCK_SIZE=str(BLOCK), MESHCACHE_LISTEN="127.0.0.1:0",
               MESHCACHE_FSYNC="0", MESHCACHE_MDNS="0", MESHCACHE_LOG_LEVEL="ERROR")
    daemon = None
    reads = ok = from_peer = 0
    worst = 0.0
    samples: list[int] = []
    try:
        daemon, addr_s = start_daemon(env)
        host, port = addr_s.rsplit(":", 1)
        addr = (host, int(port))
        base_rss = rss(daemon.pid)
        stop = time.monotonic() + seconds
        done = threading.Event()

        def legit() -> None:
            nonlocal reads, ok, from_peer, worst
            cfg = Config.local(cache_dir=f"{root}/r", block_size=BLOCK, fsync=False,
                               cluster_secret=secret, listen="127.0.0.1:0", peers=[addr_s],
                               request_timeout=5.0)
            with Node(cfg) as node:
                while not done.is_set():
                    node.evict()
                    before = node.stats()["bytes_from_peers"]
                    t = time.monotonic()
                    try:
                        got = node.cat(url)
                    except Exception as e:
                        log(f"legit read failed: {e}")
                        got = b""
                    worst = max(worst, time.monotonic() - t)
                    reads += 1
                    ok += got == data
                    from_peer += node.stats()["bytes_from_peers"] - before == len(data)
                    samples.append(rss(daemon.pid))
                    time.sleep(0.5)

        th = threading.Thread(target=legit)
        th.start()
        pushed, sent = [0], [0]

        async def attack() -> None:
            await asyncio.gather(initial_flooder(addr, stop, sent),
                                 *(stream_flooder(addr, stop, pushed) for _ in range(CONNECTIONS)))

        async def bounded() -> None:
            try:
                await asyncio.wait_for(attack(), seconds + 30)
            except asyncio.TimeoutError:
                log("the attack did not stop in time")

        asyncio.run(bounded())
        done.set()
        th.join()
        hwm = peak_rss(daemon.pid)
        emit({"seconds": seconds, "initials_sent": sent[0], "unauth_bytes_pushed": pushed[0],
              "daemon_rss_before_mb": base_rss / MiB, "daemon_peak_rss_mb": hwm / MiB,
              "daemon_rss_end_mb": rss(daemon.pid) / MiB, "legit_reads": reads,
              "legit_reads_ok": ok, "legit_reads_from_daemon": from_peer,
              "legit_worst_latency_s": worst})
        if ok != reads:
            sys.exit(1)
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        origin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

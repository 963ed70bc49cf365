"""Unauthenticated flood for 60 s: clients that complete QUIC/TLS but never authenticate, and
instead push data on many streams during the auth window (reconnecting when dropped), plus
spoofable fake QUIC Initial packets at 1,000 per second. Measured: the daemon's peak RSS, and a
legitimate credentialed peer reading from it throughout (reads served by the daemon, latency).

The attack runs in two processes of its own (`--attack initials|streams HOST:PORT SECONDS`),
so the legitimate reader does not share an interpreter (and its GIL) with the attackers, and the
Initials keep their rate while the stream pushers take a core: what the reader sees is the
daemon's doing. The scenario fails (exit 1) when it measured nothing: no flood connection got
through its handshake or no byte was pushed (the attack did not happen), or fewer than
MIN_SERVED of the legitimate reads were served by the daemon, or a read returned wrong bytes.
FLOOD_DEBUG=1 logs each read and the node's debug log to stderr."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
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
MIN_SERVED = 0.9  # fraction of the legitimate reads the flooded daemon must serve


def fake_initial(rng: random.Random) -> bytes:
    """A QUIC v1 Initial header with random connection ids and an undecryptable payload."""
    dcid, scid = rng.randbytes(8), rng.randbytes(8)
    body = rng.randbytes(1200 - 1 - 4 - 18 - 1 - 2)
    return (bytes([0xC3]) + struct.pack("!I", 1) + bytes([8]) + dcid + bytes([8]) + scid
            + b"\x00" + struct.pack("!H", 0x4000 | len(body)) + body)


async def stream_flooder(addr: tuple[str, int], stop: float, counts: dict[str, int]) -> None:
    """Connect (TLS only), then push bytes on STREAMS streams instead of authenticating."""
    cfg = TransportConfig(max_datagram_size=1452, recv_timeout=15, connect_timeout=5,
                          auth_timeout=15)

    async def push_instead_of_auth(conn) -> None:
        counts["handshakes"] += 1

        async def one() -> None:
            s = await conn.open_stream()
            chunk = os.urandom(64 * 1024)
            while time.monotonic() < stop:
                await s.send_payload(chunk)
                counts["bytes_pushed"] += len(chunk)
        await asyncio.gather(*(one() for _ in range(STREAMS)), return_exceptions=True)

    while time.monotonic() < stop:
        t = QuicTransport(cfg, authenticate=push_instead_of_auth)
        counts["attempts"] += 1
        try:
            await asyncio.wait_for(t.open_stream(addr), max(0.1, stop - time.monotonic()))
        except BaseException as e:
            key = f"ended_{type(e).__name__}"
            counts[key] = counts.get(key, 0) + 1
        finally:
            try:
                await asyncio.wait_for(t.close(), 5)
            except BaseException:
                pass


async def initial_flooder(addr: tuple[str, int], stop: float, counts: dict[str, int]) -> None:
    rng = random.Random(1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        while time.monotonic() < stop:
            t = time.monotonic()
            for _ in range(INITIALS_PER_S // 20):
                try:
                    s.sendto(fake_initial(rng), addr)
                    counts["initials_sent"] += 1
                except OSError:
                    pass
            while True:  # the daemon's answers (Retries): how much of the flood it keeps up with
                try:
                    s.recv(2048)
                except OSError:
                    break
                counts["retries_received"] += 1
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - t)))
    finally:
        s.close()


def attack(kind: str, addr_s: str, seconds: float) -> None:
    """An attacker process ("initials" or "streams"): flood for `seconds`, then print its
    counts as one JSON line."""
    host, port = addr_s.rsplit(":", 1)
    addr = (host, int(port))
    counts = {"initials_sent": 0, "retries_received": 0, "attempts": 0, "handshakes": 0,
              "bytes_pushed": 0}
    stop = time.monotonic() + seconds
    if kind == "initials":
        jobs = [initial_flooder(addr, stop, counts)]
    else:
        jobs = [stream_flooder(addr, stop, counts) for _ in range(CONNECTIONS)]

    async def run() -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*jobs), seconds + 30)
        except asyncio.TimeoutError:
            log("the attack did not stop in time")

    asyncio.run(run())
    print(json.dumps(counts), flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    debug = bool(os.environ.get("FLOOD_DEBUG"))
    if debug:
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    if len(sys.argv) == 5 and sys.argv[1] == "--attack":
        attack(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    args = parse(__doc__)
    seconds = 15 if args.quick else 60
    load_before = os.getloadavg()[0]
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
    attackers: list[subprocess.Popen[str]] = []
    reads = ok = from_daemon = not_member = 0
    latencies: list[float] = []
    try:
        daemon, addr_s = start_daemon(env)
        base_rss = rss(daemon.pid)
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        attackers = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--attack",
                                       kind, addr_s, str(seconds)], stdout=subprocess.PIPE,
                                      text=True) for kind in ("initials", "streams")]
        cfg = Config.local(cache_dir=f"{root}/r", block_size=BLOCK, fsync=False,
                           cluster_secret=secret, listen="127.0.0.1:0", peers=[addr_s],
                           request_timeout=5.0)
        t_join = time.monotonic()
        with Node(cfg) as node:
            join_s = time.monotonic() - t_join
            while any(a.poll() is None for a in attackers):
                node.evict()
                before = node.stats()["bytes_from_peers"]
                t = time.monotonic()
                try:
                    got = node.cat(url)
                except Exception as e:
                    log(f"legit read failed: {e}")
                    got = b""
                latencies.append(time.monotonic() - t)
                not_member += not node.stats().get("members")
                log(f"read {reads}: {latencies[-1]:.2f} s, members {node.stats().get('members')}, "
                    f"from daemon {node.stats()['bytes_from_peers'] - before}") if debug else None
                reads += 1
                ok += got == data
                from_daemon += node.stats()["bytes_from_peers"] - before == len(data)
                time.sleep(0.5)
        counts: dict[str, int] = {}
        for a in attackers:
            lines = a.communicate(timeout=60)[0].strip().splitlines()
            for k, v in (json.loads(lines[-1]) if lines else {}).items():
                counts[k] = counts.get(k, 0) + v
        hwm = peak_rss(daemon.pid)
        daemon_cpu = (cpu_seconds(daemon.pid) - cpu0) / (time.monotonic() - t0)
        served = from_daemon / reads if reads else 0.0
        result = {"seconds": seconds, "load_before": load_before,
                  "load_after": os.getloadavg()[0],
                  "initials_sent": counts.get("initials_sent", 0),
                  "initials_answered_fraction":
                      counts.get("retries_received", 0) / max(1, counts.get("initials_sent", 0)),
                  "flood_handshakes": counts.get("handshakes", 0),
                  "unauth_bytes_pushed": counts.get("bytes_pushed", 0),
                  "daemon_rss_before_mb": base_rss / MiB, "daemon_peak_rss_mb": hwm / MiB,
                  "daemon_rss_end_mb": rss(daemon.pid) / MiB,
                  "daemon_cpu_cores": daemon_cpu, "legit_reads": reads,
                  "legit_join_s": join_s, "legit_reads_ok": ok,
                  "legit_reads_from_daemon": from_daemon,
                  "legit_served_fraction": served,
                  "legit_reads_daemon_not_member": not_member,
                  "legit_latency_p50_s": percentile(latencies, 0.5),
                  "legit_latency_p99_s": percentile(latencies, 0.99),
                  "legit_latency_max_s": max(latencies, default=0.0)}
        failures = []
        if not counts.get("handshakes") or not counts.get("bytes_pushed"):
            failures.append("the flood did not happen (no flood handshake or no byte pushed)")
        if not counts.get("initials_sent"):
            failures.append("no fake Initial was sent")
        if served < MIN_SERVED:
            failures.append(f"the daemon served {from_daemon} of {reads} legitimate reads "
                            f"(< {MIN_SERVED:.0%})")
        if ok != reads:
            failures.append(f"{reads - ok} legitimate reads returned wrong bytes or failed")
        if failures:
            result["failures"] = "; ".join(failures)
        emit(result)
        if failures:
            sys.exit(1)
    finally:
        for a in attackers:
            if a.poll() is None:
                a.kill()
                a.wait()
        if daemon is not None:
            stop_daemon(daemon)
        origin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

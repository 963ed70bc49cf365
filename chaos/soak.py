"""Soak: a daemon (meshcached) under mixed load for 10 minutes: reader nodes that come and go
read new and old objects through it (blocks it serves from its store, blocks it fetches from the
origin as their owner, manifests, misses), objects change at the origin, its store evicts, and
garbage datagrams arrive. Its RSS growth after warm-up (target <= 5%) and its open descriptors
(flat) are sampled every few seconds.

While tracing a cause: --seconds shortens it, --trace-dir takes memory reports of the
daemon (SIGUSR1; MESHCACHE_TRACE_FRAMES, default 25 here, 0: no tracing) at the end of warm-up,
at mid-run and at the end (or every --report-every seconds), kept in that directory; each report
also trims the heap, so RSS figures of such a run are not comparable with a plain one; --series
prints every sample to stderr.
The daemon inherits the environment, so allocator experiments (MALLOC_ARENA_MAX=2,
GLIBC_TUNABLES=...) go in front of the command."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from _common import MiB, emit, log, open_fds, parse, rss, start_daemon, stop

from meshcache import Config, Node
from meshcache.lab.httporigin import OriginServer
from meshcache.mesh.auth import new_secret

BLOCK = 64 * 1024


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=int, help="length of the run (default 600; --quick: 60)")
    p.add_argument("--trace-dir", help="trace allocations in the daemon; memory reports here")
    p.add_argument("--report-every", type=float,
                   help="with --trace-dir: a report every this many seconds from the end of "
                        "warm-up, instead of at its end, mid-run and the end")
    p.add_argument("--series", action="store_true", help="print each sample to stderr")


def report(daemon: subprocess.Popen, cache_dir: str, into: str) -> None:
    """Ask the daemon for a memory report (SIGUSR1) and move it into `into`."""
    before = set(os.listdir(cache_dir))
    daemon.send_signal(signal.SIGUSR1)
    for _ in range(600):
        new = [f for f in set(os.listdir(cache_dir)) - before if f.startswith("memdebug-")]
        if new:
            time.sleep(0.5)  # written in one go, but let it finish
            shutil.move(os.path.join(cache_dir, new[0]), os.path.join(into, new[0]))
            log(f"memory report: {os.path.join(into, new[0])}")
            return
        time.sleep(0.1)
    log("no memory report from the daemon")


def main() -> None:
    args = parse(__doc__, options)
    seconds = args.seconds or (60 if args.quick else 600)
    warmup = seconds * 0.2
    root = tempfile.mkdtemp(prefix="meshcache-chaos-soak-")
    secret = new_secret()
    origin = OriginServer()
    rng = random.Random(9)
    env = dict(os.environ, MESHCACHE_CLUSTER_SECRET=secret, MESHCACHE_CACHE_DIR=f"{root}/d",
               MESHCACHE_BLOCK_SIZE=str(BLOCK), MESHCACHE_LISTEN="127.0.0.1:0",
               MESHCACHE_CAPACITY=str(8 << 20), MESHCACHE_FSYNC="0", MESHCACHE_MDNS="0",
               MESHCACHE_LOG_LEVEL="ERROR")
    if args.trace_dir:
        os.makedirs(args.trace_dir, exist_ok=True)
        env.setdefault("MESHCACHE_TRACE_FRAMES", "25")  # 0: object counts only
    daemon = None
    samples: list[tuple[float, int, int]] = []
    reads = wrong = 0
    try:
        daemon, addr_s = start_daemon(env)
        addr = addr_s
        host, port = addr.rsplit(":", 1)
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        objects: dict[str, bytes] = {}
        t0 = time.monotonic()
        last_sample = 0.0
        report_at = [warmup, (warmup + seconds) / 2] if args.trace_dir else []
        if args.trace_dir and args.report_every:
            report_at = [warmup + k * args.report_every
                         for k in range(int((seconds - warmup) / args.report_every) + 1)
                         if warmup + k * args.report_every < seconds - 1]
        i = 0
        while time.monotonic() - t0 < seconds:
            i += 1
            name = f"o{rng.randrange(40)}.bin"
            if name not in objects or rng.random() < 0.1:  # new object or a new version
                objects[name] = rng.randbytes(rng.randint(1, 8) * BLOCK + rng.randint(0, 99))
                origin.put(name, objects[name])
            cfg = Config.local(cache_dir=f"{root}/r{i % 3}", block_size=BLOCK, fsync=False,
                               cluster_secret=secret, listen="127.0.0.1:0", peers=[addr],
                               request_timeout=2.0, capacity=4 << 20, metadata_ttl=0.5)
            with Node(cfg) as node:
                for _ in range(5):
                    name = rng.choice(list(objects))
                    reads += 1
                    wrong += node.cat(origin.url_for(name)) != objects[name]
            for _ in range(20):
                junk.sendto(rng.randbytes(rng.randint(1, 1500)), (host, int(port)))
            now = time.monotonic() - t0
            if now - last_sample >= 3:
                last_sample = now
                samples.append((now, rss(daemon.pid), open_fds(daemon.pid)))
                if args.series:
                    log(f"t={now:.0f}s rss={samples[-1][1] / MiB:.1f}MB "
                        f"anon={rss(daemon.pid, 'RssAnon') / MiB:.1f}MB "
                        f"file={rss(daemon.pid, 'RssFile') / MiB:.1f}MB fds={samples[-1][2]} "
                        f"reads={reads}")
            if report_at and now >= report_at[0]:
                report_at.pop(0)
                report(daemon, f"{root}/d", args.trace_dir)
        junk.close()
        if args.trace_dir:
            report(daemon, f"{root}/d", args.trace_dir)
        warm = [s for s in samples if s[0] >= warmup]
        base_rss = warm[0][1]
        end_rss = max(s[1] for s in warm[-3:])
        fds = [s[2] for s in warm]
        emit({"seconds": seconds, "reads": reads, "wrong_reads": wrong,
              "rss_after_warmup_mb": base_rss / MiB, "rss_end_mb": end_rss / MiB,
              "rss_growth_pct": 100.0 * (end_rss - base_rss) / base_rss,
              "rss_peak_mb": max(s[1] for s in samples) / MiB,
              "fds_min": min(fds), "fds_max": max(fds), "fds_end": fds[-1],
              "target_growth_pct": 5})
        if wrong:
            sys.exit(1)
    finally:
        if daemon is not None:
            stop(daemon)
        origin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""One cache per host: 8 processes (4 forked, 4 spawned) read the same cold object at once from
an origin capped at 20 MB/s per connection, first through the host's meshcached, then through
embedded nodes sharing the cache directory (cross-process single flight); then hot.

Last line: {"origin_bytes_ratio_daemon", "origin_bytes_ratio_embedded" (origin bytes / object
size; target <= 1.02), "daemon_vs_single_process" (8 processes' completion / one process reading
alone through the daemon; target <= 1.2), "hot_ratio_via_daemon" (hot read through the daemon's
short-circuit / plain reads of the block files; target >= 0.95), ...}.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _common import GiB, MiB, Timer, emit, log, make_file, parse  # noqa: E402

from meshcache.lab.httporigin import OriginServer  # noqa: E402
from tests.host_fixtures import running_daemon  # noqa: E402

PROCS = 8
RATE = 20e6


def reader(url: str, env: dict[str, str]) -> str:
    """Read `url` whole through meshcache.open in this process; its sha256."""
    os.environ.update(env)
    import meshcache

    h = hashlib.sha256()
    buf = bytearray(4 * MiB)
    with meshcache.open(url) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def read_all(url: str, env: dict[str, str], n: int) -> tuple[float, list[str]]:
    """n readers at once (half forked, half spawned, pools started first); (seconds, digests)."""
    ctxs = ["fork", "spawn"] if n > 1 else ["fork"]
    pools = [multiprocessing.get_context(c).Pool(max(1, n // len(ctxs))) for c in ctxs]
    try:
        for p in pools:  # workers up (spawn imports) before the clock starts
            p.map(abs, range(len(ctxs)))
        t0 = time.perf_counter()
        results = [p.apply_async(reader, (url, env)) for p in pools
                   for _ in range(max(1, n // len(ctxs)))]
        digests = [r.get(600) for r in results]
        return time.perf_counter() - t0, digests
    finally:
        for p in pools:
            p.terminate()
            p.join()


def env_for(cache_dir: str, daemon: str) -> dict[str, str]:
    return {"MESHCACHE_CACHE_DIR": cache_dir, "MESHCACHE_FSYNC": "false",
            "MESHCACHE_DAEMON": daemon}


def hot_ratio(cache_dir: str, url: str, socket: str, rounds: int) -> tuple[float, float, float]:
    """(ratio, daemon MB/s, raw MB/s): one process, alternating runs, page cache warm."""
    os.environ.update(env_for(cache_dir, socket))
    import meshcache

    node = meshcache.default_node()
    assert isinstance(node, meshcache.DaemonNode)
    paths = [str(node.store.block_path(d)) for d in node.manifest(node.version(url)).digests]
    buf = bytearray(4 * MiB)
    ours, raw = [], []
    size = 0
    for _ in range(rounds):
        with Timer() as t:
            size = 0
            with node.open(url) as f:
                while n := f.readinto(buf):
                    size += n
        ours.append(size / t.seconds / 1e6)
        with Timer() as t:
            total = 0
            for p in paths:
                with open(p, "rb", buffering=0) as f:
                    while n := f.readinto(buf):
                        total += n
        raw.append(total / t.seconds / 1e6)
    node.close()
    a, b = statistics.median(ours), statistics.median(raw)
    return a / b, a, b


def main() -> None:
    args = parse(__doc__.splitlines()[0], size=(str, "", "object size (default 1GiB, quick "
                                                        "128MiB)"))
    size = int(float(args.size.rstrip("MiB")) * MiB) if args.size else \
        (128 * MiB if args.quick else 1 * GiB)
    root = tempfile.mkdtemp(prefix="mc-bench-host-")
    os.chmod(root, 0o755)
    result: dict[str, object] = {"size_bytes": size, "processes": PROCS,
                                 "origin_rate_per_conn": RATE}
    try:
        origin_dir = os.path.join(root, "origin")
        os.mkdir(origin_dir)
        make_file(os.path.join(origin_dir, "obj.bin"), size, seed=7)
        with open(os.path.join(origin_dir, "obj.bin"), "rb") as f:
            want = hashlib.file_digest(f, "sha256").hexdigest()
        with OriginServer(directory=origin_dir, rate_per_conn=RATE) as srv:
            url = srv.url_for("obj.bin")

            # 1. one process alone through the daemon (baseline), cold
            cache = os.path.join(root, "c1")
            with running_daemon(cache, block_size="4194304", metrics_listen="") as ready:
                srv.reset_stats()
                alone, digests = read_all(url, env_for(cache, str(ready["socket"])), 1)
            assert digests == [want]
            log(f"one process via the daemon: {alone:.2f} s")
            shutil.rmtree(cache)

            # 2. eight processes through the daemon, cold; then hot through it
            cache = os.path.join(root, "c8")
            with running_daemon(cache, block_size="4194304", metrics_listen="") as ready:
                srv.reset_stats()
                eight, digests = read_all(url, env_for(cache, str(ready["socket"])), PROCS)
                assert digests == [want] * PROCS
                daemon_bytes = srv.bytes_sent
                log(f"8 processes via the daemon: {eight:.2f} s, origin sent {daemon_bytes}")
                ctx = multiprocessing.get_context("spawn")
                with ctx.Pool(1) as pool:
                    ratio, ours, raw = pool.apply(hot_ratio, (cache, url, str(ready["socket"]),
                                                              3 if args.quick else 5))
                log(f"hot via the daemon {ours:.0f} MB/s, raw block files {raw:.0f} MB/s")
            shutil.rmtree(cache)

            # 3. eight embedded processes sharing a cache directory, cold
            cache = os.path.join(root, "ce")
            srv.reset_stats()
            embedded, digests = read_all(url, env_for(cache, "off"), PROCS)
            assert digests == [want] * PROCS
            embedded_bytes = srv.bytes_sent
            log(f"8 embedded processes: {embedded:.2f} s, origin sent {embedded_bytes}")
        result.update({
            "origin_bytes_ratio_daemon": daemon_bytes / size,
            "origin_bytes_ratio_embedded": embedded_bytes / size,
            "daemon_vs_single_process": eight / alone,
            "embedded_vs_single_process": embedded / alone,
            "hot_ratio_via_daemon": ratio,
            "single_process_s": alone, "daemon_8_s": eight, "embedded_8_s": embedded,
            "hot_daemon_MBps": ours, "hot_raw_MBps": raw,
        })
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()

"""`make demo`: a local HTTP origin serving a generated file, read cold and then hot through
meshcache, with where the bytes came from and how fast.

    python examples/demo.py [--size 256MiB] [--rate-per-conn 20e6] [--keep]

The origin runs in its own process and caps each connection (as a busy object store or a far
datacenter would); meshcache reads the cold object with parallel ranged reads (readahead) and
the hot one straight from its block files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import meshcache
from meshcache.config import parse_size
from meshcache.lab.httporigin import make_file


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


def timed_read(node: meshcache.Node, url: str) -> tuple[float, dict]:
    buf = bytearray(4 << 20)
    t = time.perf_counter()
    with node.open(url) as f:
        while f.readinto(buf):
            pass
        stats = f.stats
    return time.perf_counter() - t, stats


def report(label: str, size: int, seconds: float, stats: dict) -> None:
    print(f"  {label:<5} {human(size)} in {seconds:6.2f} s = {size / seconds / 1e6:8.1f} MB/s   "
          f"local {human(stats['bytes_from_local']):>10}  peers {human(stats['bytes_from_peers']):>8}"
          f"  origin {human(stats['bytes_from_origin']):>10} ({stats['origin_requests']} requests)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256MiB", help="size of the generated object")
    p.add_argument("--rate-per-conn", type=float, default=20e6,
                   help="origin cap per connection, bytes/s")
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    a = p.parse_args()
    size = parse_size(a.size, "--size")
    tmp = tempfile.mkdtemp(prefix="meshcache-demo-")
    try:
        print(f"generating a {human(size)} object in {tmp} ...")
        make_file(os.path.join(tmp, "model.bin"), size, seed=1)
        origin = subprocess.Popen(
            [sys.executable, "-m", "meshcache.lab.httporigin", "--dir", tmp,
             "--rate-per-conn", str(a.rate_per_conn)], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        try:
            assert origin.stdout is not None
            url = origin.stdout.readline().strip() + "/model.bin"
            print(f"origin: {url} (each connection capped at {a.rate_per_conn / 1e6:.0f} MB/s)")
            node = meshcache.Node(meshcache.Config.local(cache_dir=os.path.join(tmp, "cache")))
            cfg = node.config
            print(f"meshcache: block size {human(cfg.block_size)}, readahead {cfg.readahead} "
                  f"blocks, cache {node.store.root}\n")
            cold_s, cold = timed_read(node, url)
            report("cold", size, cold_s, cold)
            hot_s, hot = timed_read(node, url)
            report("hot", size, hot_s, hot)
            st = node.stats()
            print(f"\nnode: {st['origin_requests']} origin requests for "
                  f"{-(-size // cfg.block_size)} blocks, {human(st['store_bytes'])} stored; "
                  f"hot read {cold_s / hot_s:.0f}x faster than cold")
            print(f"a single-connection download would take ~{size / a.rate_per_conn:.0f} s "
                  f"at the origin's per-connection cap")
            node.close()
        finally:
            origin.terminate()
            origin.wait(10)
    finally:
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

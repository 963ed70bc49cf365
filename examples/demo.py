"""`make demo`: a local HTTP origin serving a generated file, read cold and then hot through
meshcache, with where the bytes came from and how fast; then a mesh of nodes on this machine
reading one new object at once: one origin read per block, the rest from peers.

    python examples/demo.py [--size 256MiB] [--rate-per-conn 20e6] [--nodes 4] [--keep]

The origin runs in its own process and caps each connection (as a busy object store or a far
datacenter would); meshcache reads the cold object with parallel ranged reads (readahead) and
the hot one straight from its block files.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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


def free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for sk in socks:
        sk.bind(("127.0.0.1", 0))
    ports = [sk.getsockname()[1] for sk in socks]
    for sk in socks:
        sk.close()
    return ports


def mesh_demo(tmp: str, base: str, n: int, size: int) -> None:
    """n meshcache processes on this machine read one new object at once."""
    make_file(os.path.join(tmp, "shard.bin"), size, seed=2)
    url = f"{base}/shard.bin"
    ports = free_ports(n)
    go = os.path.join(tmp, "go")
    print(f"\nthe mesh: {n} nodes (separate processes, QUIC on 127.0.0.1) read a new "
          f"{human(size)} object at once")
    procs = []
    for i, port in enumerate(ports):
        args = [sys.executable, "-m", "meshcache.lab.meshnode", "--cache-dir",
                os.path.join(tmp, f"node{i}"), "--listen", f"127.0.0.1:{port}", "--secret",
                "demo-cluster-secret", "--url", url, "--go", go, "--members", str(n - 1),
                "--max-datagram-size", "65000", "--peer-origin", f"{base}/"]
        for other in ports:
            if other != port:
                args += ["--peer", f"127.0.0.1:{other}"]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            json.loads(p.stdout.readline())  # ready
        time.sleep(1.0)
        open(go, "w").close()
        results = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    for i, r in enumerate(results):
        if "error" in r:
            print(f"  node{i}: {r['error']}")
            continue
        print(f"  node{i}: {r['seconds']:6.2f} s   origin {human(r['bytes_from_origin']):>10} "
              f"({r['origin_requests']} requests)   peers {human(r['bytes_from_peers']):>10}")
    origin_total = sum(r.get("bytes_from_origin", 0) for r in results)
    print(f"  the zone read {human(origin_total)} from the origin for {n} copies of "
          f"{human(size)} ({origin_total / size:.2f}x the object); the rest came from peers")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256MiB", help="size of the generated object")
    p.add_argument("--rate-per-conn", type=float, default=20e6,
                   help="origin cap per connection, bytes/s")
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    p.add_argument("--nodes", type=int, default=4, help="nodes in the mesh part (1: skip it)")
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
            if a.nodes > 1:
                mesh_demo(tmp, url.rsplit("/", 1)[0], a.nodes, size)
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

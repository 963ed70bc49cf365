"""`make demo`: a local HTTP origin serving a generated file, read cold and then hot through
meshcache, with where the bytes came from and how fast; then a mesh of nodes on this machine
reading one new object at once, first each on its own and then as one zone, side by side: as a
zone each block leaves the capped origin once and the rest moves between peers.

    python examples/demo.py [--size 256MiB] [--rate-per-conn 20e6] [--origin-rate 50e6]
                            [--nodes 4] [--mesh-size 128MiB] [--keep]

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
from meshcache.mesh.auth import new_secret


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


def run_nodes(tmp: str, label: str, url: str, n: int, mesh: bool) -> list[dict]:
    """n meshcache processes read `url` at once: as one zone (peers) or each on its own."""
    ports = free_ports(n)
    go = os.path.join(tmp, f"go-{label}")
    procs = []
    secret = new_secret()  # one credential for the whole zone
    for i, port in enumerate(ports):
        args = [sys.executable, "-m", "meshcache.lab.meshnode", "--cache-dir",
                os.path.join(tmp, f"{label}{i}"), "--listen", f"127.0.0.1:{port}", "--secret",
                secret, "--url", url, "--go", go, "--members", str(n - 1 if mesh else 0),
                "--max-datagram-size", "65000", "--peer-origin", url.rsplit("/", 1)[0] + "/"]
        for other in ports if mesh else []:
            if other != port:
                args += ["--peer", f"127.0.0.1:{other}"]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            json.loads(p.stdout.readline())  # ready
        time.sleep(1.0 if mesh else 0.0)
        open(go, "w").close()
        return [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def mesh_demo(tmp: str, base: str, n: int, size: int, origin_rate: float) -> None:
    """n nodes read one new object at once: each on its own, then as one zone."""
    make_file(os.path.join(tmp, "shard.bin"), size, seed=2)
    url = f"{base}/shard.bin"
    print(f"\n{n} nodes (separate processes on this machine) read a new {human(size)} object "
          f"at once; the origin's link is capped at {origin_rate / 1e6:.0f} MB/s in all")
    runs = [("alone", run_nodes(tmp, "alone", url, n, mesh=False)),
            ("zone", run_nodes(tmp, "zone", url, n, mesh=True))]
    print(f"  {'':6}{'each node on its own':>36}   {'one zone (QUIC peers, owners)':>36}")
    for i in range(n):
        cells = []
        for _, results in runs:
            r = results[i]
            cells.append(r["error"][:36] if "error" in r else
                         f"{r['seconds']:6.1f} s  origin {human(r['bytes_from_origin']):>9}  "
                         f"peers {human(r['bytes_from_peers']):>9}")
        print(f"  node{i} {cells[0]:>36}   {cells[1]:>36}")
    totals = []
    for label, results in runs:
        origin_total = sum(r.get("bytes_from_origin", 0) for r in results)
        slowest = max((r.get("seconds", 0.0) for r in results), default=0.0)
        totals.append((origin_total, slowest))
    (alone_bytes, alone_s), (zone_bytes, zone_s) = totals
    print(f"  {'origin sent':<14}{human(alone_bytes):>24} ({alone_bytes / size:.2f}x){'':4}"
          f"{human(zone_bytes):>22} ({zone_bytes / size:.2f}x)")
    print(f"  {'slowest node':<14}{alone_s:>23.1f} s{'':12}{zone_s:>22.1f} s")
    print(f"  alone, every node pulls the whole object through the one capped origin link; as a "
          f"zone each block\n  leaves the origin once (read by its owner) and the nodes copy it "
          f"from each other: {alone_s / max(zone_s, 1e-9):.1f}x sooner, "
          f"{alone_bytes / max(zone_bytes, 1):.1f}x fewer origin bytes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256MiB", help="size of the generated object")
    p.add_argument("--rate-per-conn", type=float, default=20e6,
                   help="origin cap per connection, bytes/s")
    p.add_argument("--origin-rate", type=float, default=50e6,
                   help="origin cap for all connections together, bytes/s")
    p.add_argument("--mesh-size", default="128MiB", help="size of the object the nodes read")
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
             "--rate-per-conn", str(a.rate_per_conn), "--global-rate", str(a.origin_rate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        try:
            assert origin.stdout is not None
            url = origin.stdout.readline().strip() + "/model.bin"
            print(f"origin: {url} (capped at {a.origin_rate / 1e6:.0f} MB/s in all and "
                  f"{a.rate_per_conn / 1e6:.0f} MB/s per connection, as a busy object store)")
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
                mesh_demo(tmp, url.rsplit("/", 1)[0], a.nodes,
                          parse_size(a.mesh_size, "--mesh-size"), a.origin_rate)
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

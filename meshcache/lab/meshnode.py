"""A lab host's meshcache process: start a node, wait for the zone, read one object, report.

    python -m meshcache.lab.meshnode --cache-dir D --listen ADDR:PORT --peer A:P ... \\
        --secret S --url URL [--go FILE] [--members N] [--block-size B] \\
        [--zone Z --preset wan --set dht_bootstrap='["ADDR:PORT"]']

Prints one JSON line when its node is up ({"ready": ...}), waits until it sees `--members` live
members (none of them suspected) and the `--go` file exists (so every host starts reading at
once), reads the object, and prints one JSON line with its timings, counters and the BLAKE3 of
what it read. It then keeps serving its peers until SIGTERM, as a meshcached would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

import blake3

from meshcache import Config, Node


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--secret", required=True)
    p.add_argument("--url")
    p.add_argument("--go", help="wait for this file before reading")
    p.add_argument("--members", type=int, default=0,
                   help="wait for this many live members (none suspected)")
    p.add_argument("--block-size", type=int, default=4 << 20)
    p.add_argument("--mdns", action="store_true")
    p.add_argument("--interface", action="append", default=[])
    p.add_argument("--max-datagram-size", type=int, default=0)
    p.add_argument("--readahead", type=int, default=8)
    p.add_argument("--report-members", action="store_true",
                   help="print how many members it saw and how long that took")
    p.add_argument("--peer-origin", action="append", default=[],
                   help="URL prefix peers may make this node fetch (peer_origins; loopback "
                        "origins must be listed)")
    p.add_argument("--log", help="append INFO logs (with times) to this file")
    p.add_argument("--zone", default="default", help="this node's zone")
    p.add_argument("--preset", choices=("lan", "wan"), default="lan")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="any other Config key, its value as JSON (e.g. dht_bootstrap=[\"a:p\"])")
    a = p.parse_args(argv)
    if a.log:
        logging.basicConfig(filename=a.log, level=logging.INFO,
                            format="%(relativeCreated)8.0f %(name)s: %(message)s")
    extra = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    preset = Config.wan if a.preset == "wan" else Config.lan
    cfg = preset(cache_dir=a.cache_dir, listen=a.listen, peers=a.peer, cluster_secret=a.secret,
                 block_size=a.block_size, mdns=a.mdns, interfaces=a.interface, zone=a.zone,
                 max_datagram_size=a.max_datagram_size, readahead=a.readahead,
                 peer_origins=a.peer_origin, ping_interval=0.5, suspect_timeout=5.0,
                 request_timeout=10.0, fsync=False, **extra)
    node = Node(cfg)
    print(json.dumps({"ready": node.mesh.node_id.hex(), "address": a.listen}), flush=True)

    def on_term(*_: object) -> None:
        raise SystemExit(0)  # also interrupts a read in progress

    signal.signal(signal.SIGTERM, on_term)
    try:
        return _run(a, node)
    except SystemExit:
        return 0
    finally:
        node.close()


def _run(a: argparse.Namespace, node: Node) -> int:
    t0 = time.monotonic()
    deadline = t0 + 60
    def live() -> int:
        return sum(not m.suspect for m in list(node.mesh.members.values()))

    while live() < a.members and time.monotonic() < deadline:
        time.sleep(0.05)
    if a.report_members:
        print(json.dumps({"members": len(node.mesh.members),
                          "waited": time.monotonic() - t0}), flush=True)
    go_deadline = time.monotonic() + 3600     # the harness may warm another zone first
    while a.go and not os.path.exists(a.go) and time.monotonic() < go_deadline:
        time.sleep(0.01)
    if a.url:
        t0 = time.monotonic()
        try:
            # Streamed, as a consumer would: 8 lab hosts each holding a whole 1 GiB object on one
            # machine drove it into direct reclaim (the suspect for node processes frozen ~10 s).
            h, size, buf = blake3.blake3(), 0, bytearray(a.block_size)
            with node.open(a.url) as f:
                while n := f.readinto(buf):
                    h.update(memoryview(buf)[:n])
                    size += n
            st = node.stats()
            out = {"seconds": time.monotonic() - t0, "digest": h.hexdigest(),
                   "size": size, "members": len(node.mesh.members),
                   **{k: v for k, v in st.items() if k.startswith(("bytes_", "stripe_"))},
                   **{k: st[k] for k in ("origin_requests", "peer_errors", "bad_peers",
                                         "owner_failures", "origin_errors")},
                   "members_down": node.mesh.stats["members_down"]}
        except Exception as e:  # report, do not hide: the test asserts on it
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    threading.Event().wait()  # serve peers until SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Store scale: the index of a store of 1,000,000 blocks (a synthetic store of 1-byte block files):
RSS the index takes (target <= 200 MB) and the time to rebuild it at start (target <= 10 s), on
each path a start can take: a clean restart (the snapshot written at close, checked against a
listing of blocks/), a restart after a crash (the snapshot stale: 1% of the blocks written and
0.5% removed since), and no snapshot at all (a stat of every block file)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _common import MiB, emit, log

CHILD = """
import gc, json, sys, time
from meshcache.read.store import BlockStore
sys.path.insert(0, sys.argv[2])
from _common import rss
gc.collect()
base = rss()
t, c = time.perf_counter(), time.process_time()
s = BlockStore(sys.argv[1], 1 << 50, fsync=False)
took, cpu = time.perf_counter() - t, time.process_time() - c
gc.collect()
index = rss() - base
t = time.perf_counter()
s.close()  # writes the snapshot when the index changed
print(json.dumps({"blocks": len(s.digests()), "seconds": took, "cpu_s": cpu, "index_bytes": index,
                  "source": s.index_source, "stats": s.index_stats,
                  "close_s": time.perf_counter() - t}))
"""


def name(i: int) -> str:
    return (i * 0x9E3779B97F4A7C15 % (1 << 64)).to_bytes(8, "big").hex() * 4


def populate(root: str, first: int, n: int) -> None:
    """Block files `first`..`first+n` named by distinct fake digests, under blocks/xx/ as the
    store lays them."""
    blocks = os.path.join(root, "blocks")
    for i in range(256):
        os.makedirs(os.path.join(blocks, f"{i:02x}"), exist_ok=True)
    for i in range(first, first + n):
        h = name(i)
        with open(f"{blocks}/{h[:2]}/{h}", "wb") as f:
            f.write(b"x")


def start(root: str) -> dict:
    """Open the store in a fresh process, close it; what the start cost."""
    out = subprocess.run([sys.executable, "-c", CHILD, root, os.path.dirname(__file__)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="100,000 blocks")
    p.add_argument("--blocks", type=int, help="this many blocks (default 1,000,000)")
    args = p.parse_args()
    n = args.blocks or (100_000 if args.quick else 1_000_000)
    root = tempfile.mkdtemp(prefix="meshcache-chaos-scale-")
    try:
        t = time.perf_counter()
        populate(root, 0, n)
        log(f"{n} block files in {time.perf_counter() - t:.0f} s")
        scan = start(root)  # no snapshot yet: a stat of every file; its close writes one
        assert scan["blocks"] == n and scan["source"] == "scan", scan
        clean = start(root)
        assert clean["blocks"] == n and clean["source"] == "snapshot" and clean["stats"] == 0, clean
        # A crash: blocks written and removed after the snapshot, no close.
        added, removed = n // 100, n // 200
        populate(root, n, added)
        for i in range(removed):
            h = name(i)
            os.unlink(f"{root}/blocks/{h[:2]}/{h}")
        crash = start(root)
        assert crash["blocks"] == n + added - removed and crash["source"] == "snapshot", crash
        assert crash["stats"] == added, crash
        out = {"blocks": n, "load_1min": round(os.getloadavg()[0], 1)}
        for label, r in (("clean", clean), ("crash", crash), ("scan", scan)):
            out[f"{label}_rebuild_s"] = r["seconds"]
            out[f"{label}_rebuild_cpu_s"] = r["cpu_s"]
            out[f"{label}_index_rss_mb"] = r["index_bytes"] / MiB
        out["crash_files_stated"] = crash["stats"]
        out["snapshot_write_s"] = scan["close_s"]
        out["index_bytes_per_block"] = clean["index_bytes"] / n
        out["rebuild_s"] = clean["seconds"]
        out["index_rss_mb"] = clean["index_bytes"] / MiB
        out["target_rss_mb"], out["target_rebuild_s"] = 200, 10
        emit(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

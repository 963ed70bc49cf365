"""Store scale: the index of a store of 1,000,000 blocks (a synthetic store of 1-byte block files):
RSS the index takes (target <= 200 MB) and the time to rebuild it at start (target <= 10 s)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _common import MiB, emit, log, parse

CHILD = """
import gc, json, sys, time
from meshcache.read.store import BlockStore
sys.path.insert(0, sys.argv[2])
from _common import rss
gc.collect()
base = rss()
t = time.perf_counter()
s = BlockStore(sys.argv[1], 1 << 50, fsync=False)
took = time.perf_counter() - t
gc.collect()
print(json.dumps({"blocks": len(s.digests()), "seconds": took, "index_bytes": rss() - base}))
"""


def populate(root: str, n: int) -> None:
    """n block files named by distinct fake digests, under blocks/xx/ as the store lays them."""
    blocks = os.path.join(root, "blocks")
    for i in range(256):
        os.makedirs(os.path.join(blocks, f"{i:02x}"), exist_ok=True)
    for i in range(n):
        h = (i * 0x9E3779B97F4A7C15 % (1 << 64)).to_bytes(8, "big").hex() * 4
        with open(f"{blocks}/{h[:2]}/{h}", "wb") as f:
            f.write(b"x")


def main() -> None:
    args = parse(__doc__)
    n = 100_000 if args.quick else 1_000_000
    root = tempfile.mkdtemp(prefix="meshcache-chaos-scale-")
    try:
        t = time.perf_counter()
        populate(root, n)
        log(f"{n} block files in {time.perf_counter() - t:.0f} s")
        out = subprocess.run([sys.executable, "-c", CHILD, root, os.path.dirname(__file__)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        assert r["blocks"] == n, r
        per_block = r["index_bytes"] / n
        emit({"blocks": n, "rebuild_s": r["seconds"], "index_rss_mb": r["index_bytes"] / MiB,
              "index_bytes_per_block": per_block,
              "index_rss_mb_at_1M": per_block * 1_000_000 / MiB,
              "rebuild_s_at_1M": r["seconds"] * 1_000_000 / n,
              "target_rss_mb": 200, "target_rebuild_s": 10})
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""SIGKILL of a node filling its store, again and again, with a restart each time: block files
whose bytes do not hash to their name (partial or mismatched: must be 0), temp files left after
the restart (must be 0), restarts whose index (rebuilt from the snapshot the filler writes now
and then, stale by the kill, and a listing) differs from the block files on disk (must be 0),
blocks kept across all kills."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from _common import emit, log, parse

FILLER = """
import os, sys
from meshcache.read.store import BlockStore
s = BlockStore(sys.argv[1], 1 << 40, fsync=True)
print("ready", flush=True)
i = 0
while True:
    s.put(os.urandom(64 * 1024 + i % 4096))
    i += 1
    if i % 50 == 0:
        s.save_index()  # as the node does every index_snapshot_interval
"""


def check(root: str) -> tuple[int, int, int, bool]:
    """(blocks, bad block files, temp files, index differs from the disk) after a restart."""
    from meshcache.core.digest import digest
    from meshcache.read.store import BlockStore

    s = BlockStore(root, 1 << 40, fsync=False)
    bad = 0
    for d in s.digests():
        if digest(s.block_path(d).read_bytes()) != d:
            bad += 1
    temps = sum(len(files) for _, _, files in os.walk(os.path.join(root, "tmp")))
    on_disk = {f: os.path.getsize(os.path.join(top, f))
               for top, _, files in os.walk(os.path.join(root, "blocks")) for f in files}
    wrong = {d.hex() for d in s.digests()} != set(on_disk) or s.used != sum(on_disk.values())
    return len(s.digests()), bad, temps, wrong


def main() -> None:
    args = parse(__doc__)
    kills = 20 if args.quick else 100
    root = tempfile.mkdtemp(prefix="meshcache-chaos-kill-")
    rng = random.Random(7)
    bad_total = temps_total = wrong_total = 0
    blocks = 0
    try:
        for k in range(kills):
            p = subprocess.Popen([sys.executable, "-c", FILLER, root], stdout=subprocess.PIPE,
                                 text=True)
            try:
                assert p.stdout.readline().strip() == "ready"
                time.sleep(rng.uniform(0.05, 0.5))
            finally:
                p.send_signal(signal.SIGKILL)
                p.wait()
            blocks, bad, temps, wrong = check(root)
            bad_total += bad
            temps_total += temps
            wrong_total += wrong
            if k % 10 == 0:
                log(f"kill {k + 1}/{kills}: {blocks} blocks, {bad} bad, {temps} temp files")
        emit({"kills": kills, "blocks_at_end": blocks, "bad_block_files": bad_total,
              "temp_files_after_restart": temps_total, "index_mismatches": wrong_total,
              "target_bad": 0, "target_temps": 0, "target_index_mismatches": 0})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if bad_total or temps_total or wrong_total:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""A full disk: a node's cache directory on a small tmpfs that fills up while it reads. Reads
keep returning the right bytes (from memory when the store refuses), store errors stop once
space is freed, and no block file is partial or wrong afterwards. Needs root (mount)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile

from _common import MiB, emit, log, parse

from meshcache import Config, Node
from meshcache.core.digest import digest
from meshcache.read.store import BlockStore

BLOCK = 64 * 1024


def main() -> None:
    args = parse(__doc__)
    rounds = 3 if args.quick else 20
    if os.geteuid() != 0:
        emit({"skipped": "needs root to mount a tmpfs"})
        return
    mnt = tempfile.mkdtemp(prefix="meshcache-chaos-disk-")
    src = tempfile.mkdtemp(prefix="meshcache-chaos-disk-src-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt], check=True)
    rng = random.Random(3)
    wrong = reads = errors_full = errors_after = 0
    try:
        cache = os.path.join(mnt, "cache")
        for r in range(rounds):
            objects = {}
            for i in range(6):
                data = rng.randbytes(rng.randint(4, 12) * BLOCK + rng.randint(0, 999))
                path = os.path.join(src, f"r{r}o{i}.bin")
                with open(path, "wb") as f:
                    f.write(data)
                objects[path] = data
            filler = os.path.join(mnt, "filler")
            with open(filler, "wb") as f:  # fill the disk to the last bytes
                try:
                    while True:
                        f.write(b"\0" * (256 * 1024))
                        f.flush()
                except OSError:
                    pass
            node = Node(Config.local(cache_dir=cache, block_size=BLOCK, fsync=True,
                                     capacity=1 << 30))
            try:
                for path, data in list(objects.items())[:3]:
                    reads += 1
                    wrong += node.cat(path) != data
                errors_full += node.stats()["store_errors"]
                os.unlink(filler)
                before = node.stats()["store_errors"]
                node.evict()  # room for this round's blocks
                for path, data in list(objects.items())[3:]:
                    reads += 1
                    wrong += node.cat(path) != data
                errors_after += node.stats()["store_errors"] - before
            finally:
                node.close()
            log(f"round {r + 1}/{rounds}: errors while full {errors_full}, after {errors_after}")
        store = BlockStore(cache, 1 << 30, fsync=False)  # a restart: check every block file
        bad = sum(digest(store.block_path(d).read_bytes()) != d for d in store.digests())
        temps = sum(len(files) for _, _, files in os.walk(os.path.join(cache, "tmp")))
        emit({"rounds": rounds, "reads": reads, "wrong_reads": wrong,
              "store_errors_while_full": errors_full, "store_errors_after_space_freed":
              errors_after, "bad_block_files": bad, "temp_files_left": temps,
              "blocks_kept": len(store.digests()), "tmpfs_mb": 8 * MiB // MiB})
        if wrong or bad or temps or errors_after or not errors_full:
            sys.exit(1)
    finally:
        subprocess.run(["umount", "-l", mnt])
        shutil.rmtree(mnt, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()

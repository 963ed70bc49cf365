"""Read dataset shards through the `meshcache::` fsspec protocol from worker processes.

Each worker (forked or spawned, as a PyTorch DataLoader would make them) opens its shards
through the same cache directory: the first epoch reads the origin, later epochs read local
blocks. Uses torch's DataLoader when torch is installed, else a multiprocessing pool.

    python examples/dataloader_workers.py [--origin DIR] [--cache-dir DIR] [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time

import fsspec

import meshcache


def make_shards(directory: str, count: int = 8, size: int = 16 << 20) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(count):
        p = os.path.join(directory, f"shard-{i:04d}.bin")
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(random.Random(i).randbytes(size))
        paths.append(p)
    return paths


def read_shard(args: tuple[str, dict]) -> tuple[int, dict]:
    path, config = args
    with fsspec.open(f"meshcache::{path}", meshcache={"config": config}) as f:
        n = len(f.read())
        return n, f.stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--origin", default=None, help="directory of shards (generated if empty)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="meshcache-example-")
    try:
        shards = make_shards(a.origin or os.path.join(tmp, "origin"))
        config = {"cache_dir": a.cache_dir or os.path.join(tmp, "cache"), "block_size": 4 << 20}
        try:
            import torch.utils.data as tud

            class Shards(tud.Dataset):
                def __len__(self) -> int:
                    return len(shards)

                def __getitem__(self, i: int) -> tuple[int, dict]:
                    return read_shard((shards[i], config))

            def epoch() -> list:
                loader = tud.DataLoader(Shards(), batch_size=None, num_workers=a.workers)
                return list(loader)
            engine = "torch DataLoader"
        except ImportError:
            import multiprocessing as mp

            def epoch() -> list:
                with mp.get_context("spawn").Pool(a.workers) as pool:
                    return pool.map(read_shard, [(s, config) for s in shards])
            engine = "multiprocessing (spawn)"
        for e in range(a.epochs):
            t = time.perf_counter()
            results = epoch()
            secs = time.perf_counter() - t
            total = sum(n for n, _ in results)
            origin = sum(s["bytes_from_origin"] for _, s in results)
            local = sum(s["bytes_from_local"] for _, s in results)
            print(f"epoch {e} [{engine}, {a.workers} workers]: {total >> 20} MiB in {secs:.2f} s; "
                  f"origin {origin >> 20} MiB, local {local >> 20} MiB")
        stored = meshcache.Node(meshcache.Config.from_dict(config)).stats()["store_bytes"]
        print("cache:", stored >> 20, "MiB stored in", config["cache_dir"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # what this run made (not --origin/--cache-dir)

if __name__ == "__main__":
    main()

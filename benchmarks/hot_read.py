"""Hot read: a cached object read sequentially through meshcache.open() against plain open()
reads of the same block files, page cache warm, alternating runs in one process.

Last line: {"meshcache_MBps", "raw_MBps", "ratio", ...}. Target: ratio >= 0.95.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from _common import GiB, MiB, Timer, emit, log, make_file, parse, read_files  # noqa: E402

import meshcache  # noqa: E402


def read_meshcache(node: meshcache.Node, url: str, buf: bytearray) -> int:
    total = 0
    with node.open(url) as f:
        while n := f.readinto(buf):
            total += n
    return total


def read_meshcache_bytes(node: meshcache.Node, url: str, chunk: int) -> int:
    total = 0
    with node.open(url) as f:
        while data := f.read(chunk):
            total += len(data)
    return total


def read_raw_bytes(paths: list[str], chunk: int) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while data := f.read(chunk):
                total += len(data)
    return total


def main() -> None:
    args = parse(__doc__.splitlines()[0],
                 size=(int, 0, "object size in bytes (default 1 GiB, quick 256 MiB)"),
                 rounds=(int, 0, "alternating rounds (default 7, quick 5)"),
                 buffer=(int, 4 * MiB, "readinto buffer size"),
                 block_size=(int, 0, "block size (default: the Config default)"))
    size = args.size or (256 * MiB if args.quick else GiB)
    rounds = args.rounds or (5 if args.quick else 7)
    with tempfile.TemporaryDirectory(prefix="meshcache-hot-") as tmp:
        origin = os.path.join(tmp, "object.bin")
        make_file(origin, size, seed=1)
        node = meshcache.Node(meshcache.Config.local(cache_dir=os.path.join(tmp, "cache"),
                                                     capacity=4 * size, fsync=False,
                                                     block_size=args.block_size
                                                     or meshcache.Config().block_size))
        url = "file://" + origin
        node.prewarm(url)
        os.unlink(origin)  # from here on every byte must come from the cache
        m = node.manifest(node.version(url))
        paths = [str(node.store.block_path(d)) for d in m.digests]
        buf = bytearray(args.buffer)
        assert read_meshcache(node, url, buf) == size == read_files(paths, buf)  # warm both
        mc, raw, mcb, rawb = [], [], [], []
        reps = max(1, 2 * GiB // size)  # each sample reads >= 2 GiB so timer noise is small
        vol = reps * size / 1e6
        for r in range(rounds):
            with Timer() as t:
                for _ in range(reps):
                    read_files(paths, buf)
            raw.append(vol / t.seconds)
            with Timer() as t:
                for _ in range(reps):
                    read_meshcache(node, url, buf)
            mc.append(vol / t.seconds)
            with Timer() as t:
                for _ in range(reps):
                    read_raw_bytes(paths, MiB)
            rawb.append(vol / t.seconds)
            with Timer() as t:
                for _ in range(reps):
                    read_meshcache_bytes(node, url, MiB)
            mcb.append(vol / t.seconds)
            log(f"round {r}: readinto meshcache {mc[-1]:.0f} MB/s raw {raw[-1]:.0f} MB/s; "
                f"read(1MiB) meshcache {mcb[-1]:.0f} raw {rawb[-1]:.0f}")
        st = node.stats()
        node.close()
    med = statistics.median
    emit({"benchmark": "hot_read", "size_bytes": size, "block_size": node.block_size,
          "rounds": rounds, "meshcache_MBps": med(mc), "raw_MBps": med(raw),
          "ratio": med(mc) / med(raw),
          "read_1MiB_meshcache_MBps": med(mcb), "read_1MiB_raw_MBps": med(rawb),
          "read_1MiB_ratio": med(mcb) / med(rawb),
          "bytes_from_origin_during_timing": st["bytes_from_origin"] - size})


if __name__ == "__main__":
    main()

"""A PyTorch DataLoader over WebDataset-style tar shards read through meshcache.

Each shard is a tar of samples (`000017.cls` label + `000017.bin` payload), as WebDataset writes
them. Worker processes split the shards and stream each through `fsspec.open("meshcache::URL")`:
the first epoch reads the origin, the next ones read cached blocks. It prints, per epoch, where
the bytes came from (origin, local store, peers).

Where a `meshcached` serves the cache directory, every worker reads through it (one fetch per
block for the host, hot blocks read straight from the block files); else each worker embeds a
node on the shared directory. `--daemon` starts a meshcached for the run and prints its counters.

    python examples/dataloader_tar.py [--origin DIR_OR_URL] [--shards 4] [--samples 64] [--daemon]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile

import fsspec
import torch
import torch.utils.data as tud


def make_shards(directory: str, shards: int, samples: int, size: int) -> list[str]:
    """Write WebDataset-style shards: shard-000000.tar with <key>.cls and <key>.bin members."""
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(0)
    paths = []
    for s in range(shards):
        path = os.path.join(directory, f"shard-{s:06d}.tar")
        with tarfile.open(path, "w") as tar:
            for i in range(samples):
                key = f"{s * samples + i:06d}"
                for ext, data in (("cls", str(rng.randrange(10)).encode()),
                                  ("bin", rng.randbytes(size))):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append("file://" + path)
    return paths


class TarShards(tud.IterableDataset):
    """Yields (label, payload tensor) per sample, then one ("stats", {...}) row per shard."""

    def __init__(self, urls: list[str], config: dict) -> None:
        self.urls = urls
        self.config = config

    def __iter__(self):
        info = tud.get_worker_info()
        mine = self.urls[info.id::info.num_workers] if info is not None else self.urls
        for url in mine:
            with fsspec.open(f"meshcache::{url}", meshcache={"config": self.config}) as f:
                with tarfile.open(fileobj=f, mode="r|") as tar:  # streaming, in order
                    label = None
                    for member in tar:
                        data = tar.extractfile(member).read()
                        if member.name.endswith(".cls"):
                            label = int(data)
                        else:
                            yield label, torch.frombuffer(bytearray(data), dtype=torch.uint8)
                yield "stats", f.stats


def run(urls: list[str], config: dict, workers: int, epochs: int) -> list[dict]:
    loader = tud.DataLoader(TarShards(urls, config), batch_size=None, num_workers=workers)
    report = []
    for epoch in range(1, epochs + 1):
        samples = payload = 0
        sources = {"bytes_from_origin": 0, "bytes_from_local": 0, "bytes_from_peers": 0}
        for label, item in loader:
            if label == "stats":
                for k in sources:
                    sources[k] += int(item.get(k, 0))
                continue
            samples += 1
            payload += item.numel()
        print(f"epoch {epoch}: {samples} samples, {payload} payload bytes; bytes came from "
              f"origin {sources['bytes_from_origin']}, local store "
              f"{sources['bytes_from_local']}, peers {sources['bytes_from_peers']}", flush=True)
        report.append({"samples": samples, **sources})
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--origin", help="directory or URL prefix of shards (generated if absent)")
    p.add_argument("--cache-dir")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--samples", type=int, default=64, help="samples per shard")
    p.add_argument("--sample-size", type=int, default=64 << 10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--daemon", action="store_true",
                   help="start a meshcached for the cache directory and read through it")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshcache-dataloader-") as tmp:
        _main(a, tmp)


def _main(a: argparse.Namespace, tmp: str) -> None:
    if a.origin and "://" in a.origin:
        fs, root = fsspec.core.url_to_fs(a.origin)
        urls = sorted(f"{a.origin.rstrip('/')}/{os.path.basename(p)}"
                      for p in fs.glob(root.rstrip("/") + "/*.tar"))
    else:
        urls = make_shards(a.origin or os.path.join(tmp, "origin"), a.shards, a.samples,
                           a.sample_size)
    config = {"cache_dir": a.cache_dir or os.path.join(tmp, "cache"), "block_size": 1 << 20,
              "fsync": False}
    daemon = start_daemon(config) if a.daemon else None
    try:
        run(urls, config, a.workers, a.epochs)
        if daemon is not None:
            from meshcache import Config
            from meshcache.host.client import daemon_node

            dn = daemon_node(Config.from_dict(config))
            st = dn.stats()
            dn.close()
            print(f"meshcached: {st['origin_requests']} origin requests, bytes from origin "
                  f"{st['bytes_from_origin']}", flush=True)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)


def start_daemon(config: dict) -> subprocess.Popen:
    """A meshcached serving this cache directory (its local API socket lives there)."""
    env = dict(os.environ, MESHCACHE_CACHE_DIR=config["cache_dir"], MESHCACHE_METRICS_LISTEN="",
               MESHCACHE_BLOCK_SIZE=str(config["block_size"]), MESHCACHE_FSYNC="0")
    proc = subprocess.Popen([sys.executable, "-c", "from meshcache.daemon import main; main()"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready = proc.stdout.readline() if proc.stdout is not None else ""
    if not ready:
        raise SystemExit("meshcached did not start")
    print(f"meshcached serving {json.loads(ready)['socket']}", flush=True)
    return proc


if __name__ == "__main__":
    main()

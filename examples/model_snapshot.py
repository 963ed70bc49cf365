"""Pull a model snapshot (Hugging Face hub layout) with meshcache.prewarm and a progress bar,
then load it from a read-only FUSE mount of the same origin prefix.

The snapshot is `models--ORG--NAME/snapshots/REVISION/{config.json, model.safetensors,
tokenizer.json, ...}` as `huggingface_hub` lays it out. Prewarm brings every block of every file
into the cache in parallel; the mount then serves those files from the store to anything that
reads paths (here: json and a safetensors header parse, as a model server would). It prints where
the bytes came from in each step.

    python examples/model_snapshot.py [--origin DIR_OR_URL_PREFIX] [--mb 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import tempfile
import threading
import time

import meshcache
from meshcache import Config, Node

REPO = "models--example-org--tiny-llm"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def make_snapshot(root: str, megabytes: int) -> str:
    """Write a small HF-layout snapshot under root; returns its directory."""
    snap = os.path.join(root, REPO, "snapshots", REVISION)
    os.makedirs(snap, exist_ok=True)
    rng = random.Random(1)
    n = megabytes * (1 << 20) // 4
    header = json.dumps({"model.embed.weight": {"dtype": "F32", "shape": [n // 256, 256],
                                                "data_offsets": [0, n * 4]}}).encode()
    with open(os.path.join(snap, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + rng.randbytes(n * 4))
    with open(os.path.join(snap, "config.json"), "w") as f:
        json.dump({"model_type": "tiny", "hidden_size": 256, "num_hidden_layers": 2}, f)
    with open(os.path.join(snap, "tokenizer.json"), "w") as f:
        json.dump({"vocab": {f"tok{i}": i for i in range(2000)}}, f)
    os.makedirs(os.path.join(root, REPO, "refs"), exist_ok=True)
    with open(os.path.join(root, REPO, "refs", "main"), "w") as f:
        f.write(REVISION)
    return snap


def load_from(path: str) -> dict:
    """What a loader does with the snapshot: read config, tokenizer and the tensor header+data."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(path, "tokenizer.json")) as f:
        vocab = len(json.load(f)["vocab"])
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
        tensor = header["model.embed.weight"]
        start, end = tensor["data_offsets"]
        f.seek(8 + hlen + start)
        weights = 0
        while chunk := f.read(min(1 << 20, end - start - weights)):
            weights += len(chunk)
    return {"model_type": config["model_type"], "vocab": vocab, "weight_bytes": weights}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--origin", help="origin prefix holding models--*/ (generated if absent)")
    p.add_argument("--mb", type=int, default=8, help="size of the generated weights file")
    p.add_argument("--cache-dir")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshcache-snapshot-") as tmp:
        origin = a.origin or os.path.join(tmp, "hub")
        if not a.origin:
            make_snapshot(origin, a.mb)
        prefix = origin if "://" in origin else "file://" + os.path.abspath(origin)
        prefix = prefix.rstrip("/") + "/"
        cfg = Config.local(cache_dir=a.cache_dir or os.path.join(tmp, "cache"),
                           block_size=1 << 20, fsync=False)
        node = Node(cfg)
        mnt = os.path.join(tmp, "mnt")
        os.makedirs(mnt)
        try:
            run(node, prefix, mnt)
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-uz", mnt], check=False)
            node.close()


def run(node: Node, prefix: str, mnt: str) -> None:
    from meshcache.surfaces.fuse import mount
    from meshcache.surfaces.listing import Listing

    snap = f"{REPO}/snapshots/{REVISION}"
    files = [it.path for it in Listing(prefix, {}, 60).list(snap) if not it.is_dir]
    sizes = meshcache.prewarm([prefix + f for f in files], progress=True, node=node)
    st = node.stats()
    print(f"prewarm: {len(sizes)} files, {sum(sizes.values())} bytes; bytes came from origin "
          f"{st['bytes_from_origin']}, local store {st['bytes_from_local']}", flush=True)

    # The mount serves the same prefix from this node (in-process here; `meshcache mount
    # PREFIX MOUNTPOINT` does the same from a shell).
    thread = threading.Thread(target=mount, args=(node, prefix, mnt), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("the FUSE mount did not come up (needs /dev/fuse and fuse3)")
        time.sleep(0.05)
    before = node.stats()
    try:
        loaded = load_from(os.path.join(mnt, snap))
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=False)
        thread.join(20)
    after = node.stats()  # after unmounting: every file the mount opened is released
    print(f"loaded from the mount: {loaded}; bytes came from origin "
          f"{after['bytes_from_origin'] - before['bytes_from_origin']}, local store "
          f"{after['bytes_from_local'] - before['bytes_from_local']}", flush=True)


if __name__ == "__main__":
    main()

"""A hostile peer: a credentialed node that answers block requests with corrupted, truncated,
substituted (another block's valid bytes), stalled and oversized blocks, in turn.

Part 1 sends >= 10,000 such answers into a reader's peer service (GET_BLOCK, 32 at once): bad
bytes accepted must be 0. Part 2 has fresh reader nodes read whole objects with the liar as their
only peer: bad bytes returned must be 0, every read completes (from the origin), and the requests
each reader wasted on the liar are counted."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

from _common import emit, log, parse

from meshcache import Config, Node
from meshcache.core.digest import digest
from meshcache.lab.httporigin import OriginServer
from meshcache.mesh.auth import new_secret
from meshcache.mesh.peers import PeerService
from meshcache.read.loop import new_event_loop

BLOCK = 64 * 1024
MODES = ["corrupt", "truncate", "substitute", "stall", "oversize"]

LIAR = textwrap.dedent("""
    import asyncio, itertools, json, threading
    from meshcache import Config, Node
    from meshcache.core import wire
    from meshcache.mesh import peers
    MODES = %r
    turn = itertools.count()
    class Liar(peers.PeerService):
        async def _serve_block(self, stream, conn, msg):
            mode = MODES[next(turn) %% len(MODES)]
            digests = self.node.store.digests()
            if msg.digest not in digests:
                await stream.send_frame(wire.encode(wire.Miss(msg.request_id, msg.digest)))
                return
            data = self.node.store.read_block(msg.digest)
            size = len(data) if mode != "oversize" else 1 << 30
            await stream.send_frame(wire.encode(wire.Block(msg.request_id, msg.digest, size)))
            if mode == "corrupt":
                await stream.send_payload(bytes([data[0] ^ 1]) + data[1:])
            elif mode == "truncate":
                await stream.send_payload(data[: len(data) // 2])
            elif mode == "substitute":
                other = next(d for d in digests if d != msg.digest)
                await stream.send_payload(self.node.store.read_block(other)[: len(data)].ljust(len(data), b"x"))
            elif mode == "stall":
                await stream.send_payload(data[: len(data) // 2])
                await asyncio.sleep(60)
            else:
                await stream.send_payload(data + b"x" * 4096)
    peers.PeerService = Liar
    node = Node(Config.from_env())
    addr = node.start_peers()
    print(json.dumps({"address": "%%s:%%d" %% addr}), flush=True)
    threading.Event().wait()
""" % (MODES,))


def start_liar(cache: str, secret: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, MESHCACHE_CLUSTER_SECRET=secret, MESHCACHE_CACHE_DIR=cache,
               MESHCACHE_BLOCK_SIZE=str(BLOCK), MESHCACHE_LISTEN="127.0.0.1:0",
               MESHCACHE_REQUEST_TIMEOUT="1", MESHCACHE_LOG_LEVEL="ERROR")
    p = subprocess.Popen([sys.executable, "-c", LIAR], env=env, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        raise RuntimeError("the liar did not start")
    return p, json.loads(line)["address"]


async def flood_reader(node: Node, addr: str, digests: list[bytes], n: int) -> dict:
    """n GET_BLOCKs to the liar through a reader's peer service; what came back."""
    svc = PeerService(node)
    await svc.start()
    accepted_bad = accepted_good = refused = 0
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        nonlocal accepted_bad, accepted_good, refused
        d = digests[i % len(digests)]
        async with sem:
            try:
                data = await asyncio.wait_for(svc.get_block(addr, d, BLOCK), 10)
            except Exception:
                refused += 1
                return
        if data is not None and digest(data) == d:
            accepted_good += 1
        elif data is not None:
            accepted_bad += 1
    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await svc.close()
    return {"answers": n, "refused": refused, "accepted_bad": accepted_bad,
            "accepted_good": accepted_good}


def main() -> None:
    args = parse(__doc__)
    n = 1_000 if args.quick else 10_000
    readers = 3 if args.quick else 20
    root = tempfile.mkdtemp(prefix="meshcache-chaos-liar-")
    secret = new_secret()
    origin = OriginServer()
    liar = None
    try:
        data = os.urandom(16 * BLOCK + 123)
        origin.put("m.bin", data)
        url = origin.url_for("m.bin")
        with Node(Config.local(cache_dir=f"{root}/liar", block_size=BLOCK, fsync=False)) as warm:
            warm.prewarm(url)
            digests = warm.store.digests()
        liar, addr = start_liar(f"{root}/liar", secret)
        t = time.monotonic()
        cfg = Config.local(cache_dir=f"{root}/flood", block_size=BLOCK, fsync=False,
                           cluster_secret=secret, listen="127.0.0.1:0", request_timeout=1.0)
        with Node(cfg) as reader:
            loop = new_event_loop()
            try:
                part1 = loop.run_until_complete(flood_reader(reader, addr, digests, n))
            finally:
                loop.close()
        log(f"part 1: {part1} in {time.monotonic() - t:.0f} s")
        bad_bytes = completed = wasted = 0
        for r in range(readers):
            cfg = Config.local(cache_dir=f"{root}/r{r}", block_size=BLOCK, fsync=False,
                               cluster_secret=secret, listen="127.0.0.1:0", peers=[addr],
                               request_timeout=1.0, readahead=4)
            with Node(cfg) as node:
                got = node.cat(url)
                bad_bytes += sum(a != b for a, b in zip(got, data)) + abs(len(got) - len(data))
                completed += got == data
                st = node.stats()
                wasted += st.get("peer_errors", 0)
        emit({"liar_answers": part1["answers"], "bad_answers_accepted": part1["accepted_bad"],
              "answers_refused": part1["refused"], "reader_nodes": readers,
              "reads_completed": completed, "bad_bytes_returned": bad_bytes,
              "requests_wasted_per_liar_per_reader": wasted / readers,
              "object_blocks": len(digests)})
        if part1["accepted_bad"] or bad_bytes or completed != readers:
            sys.exit(1)
    finally:
        if liar is not None:
            liar.kill()
            liar.wait()
        origin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

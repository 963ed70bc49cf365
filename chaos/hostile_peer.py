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
from meshcache.core.rungs import BlockRequest, Rank
from meshcache.core.version import ObjectVersion
from meshcache.transport.base import parse_address

BLOCK = 64 * 1024
MODES = ["corrupt", "truncate", "substitute", "stall", "oversize"]

LIAR = textwrap.dedent("""
    import asyncio, itertools, json, os, threading
    from meshcache import Config, Node
    from meshcache.core import wire
    from meshcache.mesh import peers
    MODES = %r
    turn = itertools.count()
    served = {m: 0 for m in MODES}
    def tally(mode):
        served[mode] += 1
        if sum(served.values()) %% 50 == 0 or mode == "stall":
            with open(os.environ["LIAR_TALLY"], "w") as f:
                json.dump(served, f)
    class Liar(peers.PeerService):
        async def _serve_block(self, stream, conn, msg):
            mode = MODES[next(turn) %% len(MODES)]
            digests = self.server.store.digests()
            if msg.digest not in digests:
                await stream.send_frame(wire.encode(wire.Miss(msg.request_id, msg.digest)))
                return
            data = self.server.store.read_block(msg.digest)
            tally(mode)
            size = len(data) if mode != "oversize" else 1 << 30
            await stream.send_frame(wire.encode(wire.Block(msg.request_id, msg.digest, size)))
            if mode == "corrupt":
                await stream.send_payload(bytes([data[0] ^ 1]) + data[1:])
            elif mode == "truncate":
                await stream.send_payload(data[: len(data) // 2])
            elif mode == "substitute":
                other = next(d for d in digests if d != msg.digest)
                await stream.send_payload(self.server.store.read_block(other)[: len(data)].ljust(len(data), b"x"))
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


def start_liar(cache: str, secret: str, tally: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, MESHCACHE_CLUSTER_SECRET=secret, LIAR_TALLY=tally, MESHCACHE_CACHE_DIR=cache,
               MESHCACHE_BLOCK_SIZE=str(BLOCK), MESHCACHE_LISTEN="127.0.0.1:0",
               MESHCACHE_REQUEST_TIMEOUT="1", MESHCACHE_LOG_LEVEL="ERROR")
    p = subprocess.Popen([sys.executable, "-c", LIAR], env=env, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        raise RuntimeError("the liar did not start")
    return p, json.loads(line)["address"]


async def flood_reader(node: Node, addr: str, version: ObjectVersion, digests: list[bytes],
                       n: int) -> dict:
    """n GET_BLOCKs to the liar through a reader's peer service; what came back."""
    svc = node.peers
    peer = parse_address(addr)
    accepted_bad = accepted_good = refused = 0
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        nonlocal accepted_bad, accepted_good, refused
        index = i % len(digests)
        d = digests[index]
        request = BlockRequest(version, index, BLOCK, d)
        async with sem:
            try:
                got = await asyncio.wait_for(svc.get_block(peer, request, Rank.HOLDERS), 10)
            except Exception:
                refused += 1
                return
        data = None if got is None else got[1]
        if data is not None and digest(data) == d:
            accepted_good += 1
        elif data is not None:
            accepted_bad += 1
    await asyncio.gather(*(one(i) for i in range(n)))
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
            version = warm.version(url)
            digests = list(warm.manifest(version).digests)
        tally = f"{root}/tally.json"
        liar, addr = start_liar(f"{root}/liar", secret, tally)
        t = time.monotonic()
        # Expulsion off for part 1 (every lie reaches the verifier); part 2 keeps the defaults.
        cfg = Config.local(cache_dir=f"{root}/flood", block_size=BLOCK, fsync=False,
                           cluster_secret=secret, listen="127.0.0.1:0", request_timeout=1.0,
                           liar_expel_after=1 << 30)
        with Node(cfg) as reader:
            reader.start_peers()
            part1 = reader.run(flood_reader(reader, addr, version, digests, n))
        with open(tally) as f:
            lies = json.load(f)
        log(f"part 1: {part1} in {time.monotonic() - t:.0f} s; the liar sent {lies}")
        lies_before = sum(lies.values())
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
        with open(tally) as f:
            lies_part2 = sum(json.load(f).values()) - lies_before
        emit({"requests": part1["answers"], "lies_sent": lies_before, **lies,
              "bad_answers_accepted": part1["accepted_bad"],
              "answers_refused": part1["refused"], "reader_nodes": readers,
              "lies_into_reader_nodes": lies_part2,
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

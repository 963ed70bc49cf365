"""A simulated DHT of N nodes in one process on the in-memory network (tests, benchmarks).

`DhtSim` runs this project's Dht; `StockSim` runs stock kademlia 2.2.3 (`Server`) or the fixed
one (kad.FixedServer) on the same network, so the two can be measured side by side.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from kademlia.network import Server
from kademlia.node import Node
from kademlia.utils import digest as sha1_digest

from meshcache.wan.dht import Dht
from meshcache.wan.kad import CountingValueCrawl, FixedServer
from meshcache.wan.memnet import MemoryNetwork

Address = tuple[str, int]


def sim_address(i: int) -> Address:
    return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 4000)


async def _join_all(nodes: list[Any], join: Any, rng: random.Random, batch: int) -> None:
    """Node 0 starts alone; the others join through a random earlier node, `batch` at a time."""
    for start in range(1, len(nodes), batch):
        group = range(start, min(start + batch, len(nodes)))
        await asyncio.gather(*(join(nodes[i], rng.randrange(i)) for i in group))


SIM_CREDENTIAL = b"simulation-Qm9zSW1DcmVkZW50aWFsMTIzNDU2Nzg5"  # a simulation's own strong credential


class DhtSim:
    """N `Dht` nodes (zones z0..z{zones-1}) on one MemoryNetwork."""

    def __init__(self, n: int, *, credential: bytes = SIM_CREDENTIAL, zones: int = 1,
                 ksize: int = 20, alpha: int = 3, rpc_timeout: float = 1.0,
                 seed: int = 1) -> None:
        self.net = MemoryNetwork()
        self.rng = random.Random(seed)
        self.nodes: list[Dht] = []
        for i in range(n):
            addr = sim_address(i)
            d = Dht(self.rng.randbytes(16), f"z{i % zones}", (addr[0], 7946), credential,
                    ksize=ksize, alpha=alpha, rpc_timeout=rpc_timeout)
            d.attach(self.net, addr)
            self.nodes.append(d)
        self.dead: set[int] = set()

    async def join(self, batch: int = 25) -> None:
        async def one(node: Dht, via: int) -> None:
            await node.bootstrap([self.nodes[via].address])
        await _join_all(self.nodes, one, self.rng, batch)

    def wire_tables(self, near: int = 20, far: int = 40) -> None:
        """A quick stand-in for `join` (no RPCs): each node learns the `near` nodes closest to
        its id and `far` random ones, about what a join teaches it. Call on a running loop."""
        ids = sorted(range(len(self.nodes)), key=lambda i: self.nodes[i].node.long_id)
        where = {i: p for p, i in enumerate(ids)}
        for i, d in enumerate(self.nodes):
            p = where[i]
            around = ids[max(0, p - near // 2):p + near // 2 + 1]
            for j in around + self.rng.sample(range(len(self.nodes)), far):
                if j != i:
                    other = self.nodes[j]
                    d.protocol.router.add_contact(Node(other.node.id, *other.address))

    def kill(self, fraction: float) -> list[int]:
        """Kill a random `fraction` of the nodes without notice; returns their indexes."""
        alive = [i for i in range(len(self.nodes)) if i not in self.dead]
        gone = self.rng.sample(alive, int(len(self.nodes) * fraction))
        for i in gone:
            self.net.kill(self.nodes[i].address)
            self.dead.add(i)
        return gone

    def alive(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.dead]

    def close(self) -> None:
        for d in self.nodes:
            d.close()

    async def lookups(self, keys: dict[bytes, bytes], count: int,
                      concurrency: int = 50) -> tuple[float, list[int]]:
        """`count` lookups of random keys from random live nodes: (fraction that found the
        expected provider, rounds of each lookup). `keys`: key -> provider node id."""
        items = list(keys.items())
        alive = self.alive()
        jobs = [(self.rng.choice(items), self.nodes[self.rng.choice(alive)])
                for _ in range(count)]
        ok = 0
        rounds: list[int] = []
        sem = asyncio.Semaphore(concurrency)

        async def one(job: tuple[tuple[bytes, bytes], Dht]) -> None:
            nonlocal ok
            (key, provider), asker = job
            async with sem:
                before = len(asker.lookup_rounds)
                recs = await asker.find(key)
                rounds.extend(asker.lookup_rounds[before:])
            ok += any(r.node_id == provider for r in recs)

        await asyncio.gather(*(one(j) for j in jobs))
        return ok / max(1, count), rounds


class StockSim:
    """N stock (or fixed) kademlia Servers on one MemoryNetwork, values stored with `set`."""

    def __init__(self, n: int, *, fixed: bool = False, ksize: int = 20, alpha: int = 3,
                 rpc_timeout: float = 1.0, seed: int = 1) -> None:
        self.net = MemoryNetwork()
        self.rng = random.Random(seed)
        cls = FixedServer if fixed else Server
        self.servers: list[Server] = []
        for i in range(n):
            s = cls(ksize=ksize, alpha=alpha, node_id=self.rng.randbytes(20))
            s.protocol = s._create_protocol()
            s.protocol._wait_timeout = rpc_timeout
            self.net.attach(s.protocol, sim_address(i))
            self.servers.append(s)
        self.dead: set[int] = set()

    async def join(self, batch: int = 25) -> None:
        async def one(s: Server, via: int) -> None:
            await s.bootstrap([sim_address(via)])
        await _join_all(self.servers, one, self.rng, batch)

    def kill(self, fraction: float) -> None:
        alive = [i for i in range(len(self.servers)) if i not in self.dead]
        for i in self.rng.sample(alive, int(len(self.servers) * fraction)):
            self.net.kill(sim_address(i))
            self.dead.add(i)

    def alive(self) -> list[int]:
        return [i for i in range(len(self.servers)) if i not in self.dead]

    async def store(self, count: int) -> dict[bytes, bytes]:
        """`count` random keys set from random nodes; key -> value."""
        keys = {os.urandom(16): os.urandom(8) for _ in range(count)}
        alive = self.alive()
        sem = asyncio.Semaphore(20)
        self.store_errors = 0

        async def one(s: Server, k: bytes, v: bytes) -> None:
            async with sem:
                try:
                    await s.set(k, v)
                except ValueError:  # stock: max([]) when every contacted peer timed out
                    self.store_errors += 1

        await asyncio.gather(*(one(self.servers[self.rng.choice(alive)], k, v)
                               for k, v in keys.items()))
        return keys

    async def lookups(self, keys: dict[bytes, bytes], count: int,
                      concurrency: int = 50) -> tuple[float, list[int]]:
        items = list(keys.items())
        alive = self.alive()
        ok = 0
        rounds: list[int] = []
        sem = asyncio.Semaphore(concurrency)

        async def one(key: bytes, value: bytes, s: Server) -> None:
            nonlocal ok
            async with sem:
                dkey = sha1_digest(key)
                if s.storage.get(dkey) is not None:
                    rounds.append(0)
                    ok += s.storage.get(dkey) == value
                    return
                node = Node(dkey)
                nearest = s.protocol.router.find_neighbors(node)
                if not nearest:
                    return
                crawl = CountingValueCrawl(s.protocol, node, nearest, s.ksize, s.alpha)
                got = await crawl.find()
                rounds.append(crawl.rounds)
                ok += got == value

        jobs = []
        for _ in range(count):
            k, v = self.rng.choice(items)
            jobs.append(one(k, v, self.servers[self.rng.choice(alive)]))
        await asyncio.gather(*jobs)
        return ok / max(1, count), rounds

    def close(self) -> None:
        for i in range(len(self.servers)):
            self.net.detach(sim_address(i))

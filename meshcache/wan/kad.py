"""Fixes to the stock `kademlia` package (2.2.3), as subclasses, for the bugs this project hits.

1. `TableTraverser` stops as soon as the buckets on its right run out, though buckets on the left
   remain, so `find_neighbors` returns fewer than k contacts and lookups end at the wrong nodes.
   `FixedTableTraverser` visits every bucket; `FixedRoutingTable.find_neighbors` returns the k
   contacts truly closest to the target, scanning the buckets (at most 160*k contacts).
2. `Server.set_digest` calls `max([])` when every contacted peer is dead (ValueError), and
3. reports a store as done when every STORE timed out (`any()` of `(False, None)` tuples, which
   are truthy). `FixedServer.set_digest` returns False in both cases.
4. `KademliaProtocol.welcome_if_new` re-hashes the stored keys (they are digests already), so it
   hands values to the wrong new nodes. `FixedKademliaProtocol` uses the key as it is.
`HopCounting` counts the rounds of a lookup (one round: up to alpha parallel RPCs).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Any

from kademlia.crawling import NodeSpiderCrawl, ValueSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node, NodeHeap
from kademlia.protocol import KademliaProtocol
from kademlia.routing import RoutingTable, TableTraverser

log = logging.getLogger("meshcache.wan.kad")


class FixedTableTraverser(TableTraverser):
    """Alternates left and right of the start bucket and, when one side runs out, drains the
    other (the stock one stops when the right side runs out)."""

    def __next__(self) -> Any:
        while not self.current_nodes:
            go_left = bool(self.left_buckets) and (self.left or not self.right_buckets)
            if go_left:
                self.current_nodes = self.left_buckets.pop().get_nodes()
                self.left = False
            elif self.right_buckets:
                self.current_nodes = self.right_buckets.pop(0).get_nodes()
                self.left = True
            else:
                raise StopIteration
        return self.current_nodes.pop()


class FixedRoutingTable(RoutingTable):
    """A routing table whose `find_neighbors` returns the k closest contacts it holds."""

    def __init__(self, protocol: Any, ksize: int, node: Node) -> None:
        super().__init__(protocol, ksize, node)
        self._pinged: dict[bytes, float] = {}

    def find_neighbors(self, node: Node, k: int | None = None,
                       exclude: Node | None = None) -> list[Node]:
        k = k or self.ksize
        target = node.long_id
        near = (n for b in self.buckets for n in b.nodes.values()
                if n.id != node.id and (exclude is None or not n.same_home_as(exclude)))
        return heapq.nsmallest(k, near, key=lambda n: n.long_id ^ target)

    def add_contact(self, node: Node) -> None:
        """As stock, but a full bucket's head is pinged at most once a minute (stock pings it
        for every new contact that does not fit: thousands of pings in a busy lookup)."""
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
            return
        head = bucket.head()
        now = time.monotonic()
        pinged = self._pinged
        if now - pinged.get(head.id, -1e9) >= 60.0:
            if len(pinged) > 4096:
                pinged.clear()
            pinged[head.id] = now
            asyncio.ensure_future(self.protocol.call_ping(head))

    def contacts(self) -> int:
        """How many contacts the table holds."""
        return sum(len(b) for b in self.buckets)


class FixedKademliaProtocol(KademliaProtocol):
    """Stock protocol with the fixed routing table and the welcome hand-over keyed correctly."""

    def __init__(self, source_node: Node, storage: Any, ksize: int) -> None:
        super().__init__(source_node, storage, ksize)
        self.router = FixedRoutingTable(self, ksize, source_node)

    def welcome_if_new(self, node: Node) -> None:
        if not self.router.is_new_node(node):
            return
        for key, value in self.handover(node):
            asyncio.ensure_future(self.call_store(node, key, value))
        self.router.add_contact(node)

    def handover(self, node: Node) -> list[tuple[bytes, Any]]:
        """The stored (key, value) pairs a newly seen `node` should hold too (paper, 2.5):
        it is closer to the key than the farthest of our k neighbours, and we are the closest."""
        out = []
        for key, value in self.storage:
            keynode = Node(key)  # the stored key IS the id (the stock code hashes it again)
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(keynode)
                this_closest = (self.source_node.distance_to(keynode)
                                < neighbors[0].distance_to(keynode))
            if not neighbors or (new_node_close and this_closest):
                out.append((key, value))
        return out


class FastNodeHeap(NodeHeap):
    """NodeHeap with a set of the ids it holds (stock tests membership by scanning the heap,
    quadratic in a lookup's contacts)."""

    def __init__(self, node: Node, maxsize: int) -> None:
        super().__init__(node, maxsize)
        self._ids: set[bytes] = set()

    def push(self, nodes: Any) -> None:
        for n in nodes if isinstance(nodes, list) else [nodes]:
            if n.id not in self._ids:
                self._ids.add(n.id)
                heapq.heappush(self.heap, (self.node.distance_to(n), n))

    def remove(self, peers: Any) -> None:
        super().remove(peers)
        self._ids = {n.id for _, n in self.heap}

    def __contains__(self, node: Any) -> bool:
        return node.id in self._ids


class HopCounting:
    """Mixin for a SpiderCrawl: `rounds` counts the lookup's rounds."""

    rounds = 0

    async def _find(self, rpcmethod: Any) -> Any:
        self.rounds += 1
        return await super()._find(rpcmethod)  # type: ignore[misc]


class CountingNodeCrawl(HopCounting, NodeSpiderCrawl):
    """NodeSpiderCrawl that counts its rounds, on a FastNodeHeap."""

    def __init__(self, protocol: Any, node: Node, peers: list[Node], ksize: int,
                 alpha: int) -> None:
        super().__init__(protocol, node, [], ksize, alpha)
        self.nearest = FastNodeHeap(node, ksize)
        self.nearest.push(list(peers))


class CountingValueCrawl(HopCounting, ValueSpiderCrawl):
    """ValueSpiderCrawl that counts its rounds (stock behaviour otherwise)."""


class FixedServer(Server):
    """Stock Server on the fixed protocol, whose store reports failure honestly."""

    protocol_class = FixedKademliaProtocol

    async def set_digest(self, dkey: bytes, value: Any) -> bool:
        node = Node(dkey)
        nearest = self.protocol.router.find_neighbors(node)
        if not nearest:
            log.warning("no known neighbours to store %s", dkey.hex())
            return False
        spider = NodeSpiderCrawl(self.protocol, node, nearest, self.ksize, self.alpha)
        nodes = await spider.find()
        if not nodes:  # every contacted peer was dead (stock: max([]) raises)
            return False
        biggest = max(n.distance_to(node) for n in nodes)
        if self.node.distance_to(node) < biggest:
            self.storage[dkey] = value
        results = await asyncio.gather(*(self.protocol.call_store(n, dkey, value)
                                         for n in nodes))
        # stock: any() of (ok, reply) tuples, true even when every STORE timed out
        return any(ok and reply for ok, reply in results)

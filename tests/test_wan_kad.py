"""The four stock kademlia 2.2.3 bugs: each test shows the stock class broken and ours fixed."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import umsgpack
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import KBucket, RoutingTable, TableTraverser
from kademlia.storage import ForgetfulStorage

from meshcache.wan.kad import (FixedKademliaProtocol, FixedRoutingTable, FixedServer,
                               FixedTableTraverser)
from meshcache.wan.memnet import MemoryNetwork


def _id(n: int) -> bytes:
    return n.to_bytes(20, "big")


def _three_bucket_table(cls: type) -> tuple[RoutingTable, list[Node]]:
    """A table of three buckets; the start node's bucket is the rightmost one."""
    table = cls(None, 20, Node(_id(1)))
    third = 2**160 // 3
    table.buckets = [KBucket(0, third, 20), KBucket(third + 1, 2 * third, 20),
                     KBucket(2 * third + 1, 2**160, 20)]
    nodes = []
    for i, bucket in enumerate(table.buckets):
        for j in range(5):
            n = Node(_id(bucket.range[0] + 7 + j), "10.0.0.1", 1000 + 10 * i + j)
            bucket.add_node(n)
            nodes.append(n)
    return table, nodes


def test_table_traverser_stops_early_in_stock_and_not_in_ours() -> None:
    table, nodes = _three_bucket_table(RoutingTable)
    start = Node(_id(2**160 - 5))  # in the last bucket: nothing on the right
    assert len(list(TableTraverser(table, start))) == 10  # stock misses the leftmost bucket
    assert {n.id for n in FixedTableTraverser(table, start)} == {n.id for n in nodes}
    # so stock find_neighbors returns fewer than asked though the table holds 15
    assert len(table.find_neighbors(start, k=15)) == 10
    fixed, _ = _three_bucket_table(FixedRoutingTable)
    got = fixed.find_neighbors(start, k=15)
    assert len(got) == 15
    assert [n.id for n in got] == [n.id for n in sorted(nodes, key=start.distance_to)]


def _server(cls: type, net: MemoryNetwork, i: int, timeout: float = 0.2) -> Server:
    s = cls(ksize=20, alpha=3, node_id=hashlib.sha1(b"node%d" % i).digest())
    s.protocol = s._create_protocol()
    s.protocol._wait_timeout = timeout
    net.attach(s.protocol, (f"10.0.0.{i}", 4000))
    return s


@pytest.mark.parametrize("cls", [Server, FixedServer])
def test_store_when_every_peer_is_dead(cls: type) -> None:
    async def run() -> None:
        net = MemoryNetwork()
        s = _server(cls, net, 1)
        dead = Node(hashlib.sha1(b"dead").digest(), "10.0.0.9", 4000)
        s.protocol.router.add_contact(dead)  # known, but nothing answers there
        if cls is Server:
            with pytest.raises(ValueError, match="empty"):  # stock: max([])
                await s.set("key", "value")
        else:
            assert await s.set("key", "value") is False
    asyncio.run(run())


@pytest.mark.parametrize("cls", [Server, FixedServer])
def test_store_reported_done_when_every_store_timed_out(cls: type) -> None:
    async def run() -> None:
        net = MemoryNetwork()
        a, b = _server(cls, net, 1), _server(cls, net, 2)
        await b.bootstrap([("10.0.0.1", 4000)])

        def is_store(src: object, dst: object, data: bytes) -> bool:
            return data[:1] == b"\x00" and umsgpack.unpackb(data[21:])[0] == "store"

        net.drop = is_store  # FIND_NODE works, every STORE is lost
        done = await b.set("key", "value")
        assert done is (cls is Server)  # stock says True although no node stored anything
        assert a.storage.get(hashlib.sha1(b"key").digest()) is None
    asyncio.run(run())


class _Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.methods: list[str] = []

    def datagram_received(self, data: bytes, addr: object) -> None:
        if data[:1] == b"\x00":
            self.methods.append(umsgpack.unpackb(data[21:])[0])


@pytest.mark.parametrize("cls", [KademliaProtocol, FixedKademliaProtocol])
def test_welcome_hands_values_to_the_right_new_node(cls: type) -> None:
    key = hashlib.sha1(b"a stored key").digest()  # storage keys are digests already
    hashed_again = hashlib.sha1(key).digest()
    k = int.from_bytes(key, "big")
    h = int.from_bytes(hashed_again, "big")

    async def run() -> list[str]:
        net = MemoryNetwork()
        storage = ForgetfulStorage()
        storage[key] = b"value"
        proto = cls(Node(_id(k ^ 2)), storage, 20)  # this node is very close to the key
        net.attach(proto, ("10.0.0.1", 4000))
        for i in range(3):  # neighbours far from the key, near its re-hash
            proto.router.add_contact(Node(_id(h ^ (1 << (40 + i))), "10.0.1.%d" % i, 4000))
        newcomer = _Recorder()
        net.attach(newcomer, ("10.0.0.2", 4000))
        proto.welcome_if_new(Node(_id(k ^ 1), "10.0.0.2", 4000))  # the closest node there is
        await asyncio.sleep(0.05)
        return newcomer.methods

    methods = asyncio.run(run())
    if cls is KademliaProtocol:
        assert methods == []  # stock judged closeness to sha1(key): the value is not handed over
    else:
        assert methods == ["store"]

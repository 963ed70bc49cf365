"""The DHT: Kademlia (the `kademlia` package with kad.py's fixes) carrying provider records, each
RPC one sealed datagram (seal.py) holding bounded CBOR (core/wire.py's decoder).

A message is ``[kind, msg_id, sender node id, sender zone, payload]``; the sender's Kademlia id
is derived from its node id (records.dht_id), so what a node says it is and where it sits in the
keyspace are bound together and to the credential that sealed the datagram. RPCs:
``ping``, ``find_node(key)``, ``find_value(key)`` (records, or the k closest nodes) and
``announce(ttl_ms, host, port, keys)``: one datagram announces up to 256 keys for its sender,
whose node id and zone the stored records name. `Dht.announce` groups keys by keyspace region: one
lookup per region, then one ANNOUNCE per storing node (IPFS found one-by-one announcing does not
scale past ~10k keys a cycle).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter, OrderedDict
from typing import Any, Callable, Iterable, Sequence

import cbor2
from kademlia.crawling import SpiderCrawl
from kademlia.node import Node
from rpcudp.protocol import RPCProtocol

from meshcache.core.backoff import Backoff
from meshcache.core.wire import MAX_ADDR, MAX_ID, MAX_ZONE, WireError, decode_value
from meshcache.wan.kad import (CountingNodeCrawl, FastNodeHeap, FixedKademliaProtocol,
                               HopCounting)
from meshcache.wan.records import (KEY_SIZE, MAX_TTL, ProviderRecord, ProviderTable,
                                   check_provider, dht_id)
from meshcache.wan.seal import MAX_DATAGRAM, SealError, Sealer

log = logging.getLogger("meshcache.wan.dht")

REQ, RESP = 0, 1
MSG_ID = 16
MAX_KEYS_PER_ANNOUNCE = 256
MAX_RECORDS_REPLY = 8
MAX_SEEN = 4096
MAX_ZONES = 256  # zones whose round trip is remembered
Address = tuple[str, int]


def _key(v: object) -> bytes:
    if type(v) is not bytes or len(v) != KEY_SIZE:
        raise WireError("expected a 20-byte key")
    return v


def _node_rows(v: object, limit: int) -> list[tuple[bytes, str, int]]:
    """Contacts from a reply: each one bytes string ``id (20) | port (2) | host (UTF-8)``
    (one CBOR item per contact, not four: decoding lists of contacts is the DHT's hot path)."""
    if not isinstance(v, list) or len(v) > limit:
        raise WireError("expected a bounded list of nodes")
    out = []
    for row in v:
        if type(row) is not bytes or not KEY_SIZE + 3 <= len(row) <= KEY_SIZE + 2 + MAX_ADDR:
            raise WireError("a node is id | port | host")
        port = int.from_bytes(row[KEY_SIZE:KEY_SIZE + 2], "big")
        try:
            host = row[KEY_SIZE + 2:].decode()
        except UnicodeDecodeError:
            raise WireError("node host is not UTF-8") from None
        if not port:
            raise WireError("node port")
        out.append((row[:KEY_SIZE], host, port))
    return out


def _node_row(n: Node) -> bytes:
    return n.id + n.port.to_bytes(2, "big") + n.ip.encode()


def shared_bits(a: bytes, b: bytes) -> int:
    """Leading bits `a` and `b` have in common."""
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return len(a) * 8 - x.bit_length()


class DhtProtocol(FixedKademliaProtocol):
    """One node's Kademlia protocol over sealed CBOR datagrams, storing provider records."""

    def __init__(self, node_id: bytes, zone: str, sealer: Sealer, table: ProviderTable,
                 ksize: int, rpc_timeout: float, clock: Callable[[], float],
                 max_ttl: float = MAX_TTL) -> None:
        super().__init__(Node(dht_id(node_id)), table, ksize)
        RPCProtocol.__init__(self, wait_timeout=rpc_timeout)
        self.node_id = node_id
        self.zone = zone
        self.sealer = sealer
        self.table = table
        self.clock = clock
        self.max_ttl = max_ttl
        self.stats: Counter[str] = Counter()
        self.seen: OrderedDict[bytes, tuple[str, Address, float]] = OrderedDict()
        self._outstanding: dict[bytes, tuple[asyncio.Future[Any], asyncio.TimerHandle,
                                             float]] = {}
        self.zone_rtt: dict[str, float] = {}  # zone -> smoothed RPC round trip, seconds

    # ---- datagrams -----------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        now = self.clock()
        try:
            msg = decode_value(self.sealer.open(bytes(data), now), max_size=MAX_DATAGRAM)
            if not isinstance(msg, list) or len(msg) != 5:
                raise WireError("a DHT message is [kind, id, node, zone, payload]")
            kind, msg_id, node_id, zone, payload = msg
            if kind not in (REQ, RESP) or type(msg_id) is not bytes or len(msg_id) != MSG_ID:
                raise WireError("bad kind or message id")
            if type(node_id) is not bytes or not 1 <= len(node_id) <= MAX_ID:
                raise WireError("bad node id")
            if type(zone) is not str or len(zone) > MAX_ZONE:
                raise WireError("bad zone")
        except SealError:
            self.stats["rejected"] += 1  # not a credential holder, stale, or replayed
            return
        except WireError as e:
            self.stats["malformed"] += 1
            log.info("malformed DHT datagram from %s: %s", addr, e)
            return
        addr = (addr[0], addr[1])
        self._saw(node_id, zone, addr, now)
        if kind == RESP:
            entry = self._outstanding.pop(msg_id, None)
            if entry is not None:
                fut, timer, sent = entry
                timer.cancel()
                self._rtt(zone, asyncio.get_running_loop().time() - sent)
                if not fut.done():
                    fut.set_result((True, (node_id, payload)))
            return
        sender = Node(dht_id(node_id), addr[0], addr[1])
        try:
            reply = self._handle(payload, sender, node_id, zone, now)
        except WireError as e:
            self.stats["malformed"] += 1
            log.info("bad DHT request from %s: %s", addr, e)
            return
        self.welcome_if_new(sender)
        self._send(addr, RESP, msg_id, reply)

    def _rtt(self, zone: str, seconds: float) -> None:
        old = self.zone_rtt.get(zone)
        if old is None and len(self.zone_rtt) >= MAX_ZONES:
            return
        self.zone_rtt[zone] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def _saw(self, node_id: bytes, zone: str, addr: Address, now: float) -> None:
        self.seen[node_id] = (zone, addr, now)
        self.seen.move_to_end(node_id)
        while len(self.seen) > MAX_SEEN:
            self.seen.popitem(last=False)

    def _send(self, addr: Address, kind: int, msg_id: bytes, payload: Any) -> None:
        body = cbor2.dumps([kind, msg_id, self.node_id, self.zone, payload])
        if self.transport is not None:
            self.transport.sendto(self.sealer.seal(body, self.clock()), addr)

    def call(self, addr: Address, method: str, *args: Any) -> "asyncio.Future[Any]":
        """Send one request; the future gives (True, (answering node id, reply)) or
        (False, None) after the RPC timeout."""
        msg_id = os.urandom(MSG_ID)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        timer = loop.call_later(self._wait_timeout, self._timed_out, msg_id)
        self._outstanding[msg_id] = (fut, timer, loop.time())
        self.stats["rpcs"] += 1
        self.stats[f"rpc_{method}"] += 1
        self._send(addr, REQ, msg_id, [method, list(args)])
        return fut

    def _timed_out(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            self.stats["timeouts"] += 1
            entry[0].set_result((False, None))

    def close(self) -> None:
        for fut, timer, _ in self._outstanding.values():
            timer.cancel()
            if not fut.done():
                fut.set_result((False, None))
        self._outstanding.clear()
        if self.transport is not None:
            self.transport.close()

    # ---- serving ------------------------------------------------------------------------------

    def _handle(self, payload: object, sender: Node, node_id: bytes, zone: str,
                now: float) -> Any:
        if not isinstance(payload, list) or len(payload) != 2 or type(payload[0]) is not str \
                or not isinstance(payload[1], list):
            raise WireError("a request is [method, args]")
        method, args = payload
        if method == "ping" and not args:
            return True
        if method == "find_node" and len(args) == 1:
            return self._neighbors(_key(args[0]), sender)
        if method == "find_value" and len(args) == 1:
            recs = self.table.get(_key(args[0]), now)
            if recs:
                return [1, [r.to_wire(now) for r in recs[:MAX_RECORDS_REPLY]]]
            return [0, self._neighbors(args[0], sender)]
        if method == "announce" and len(args) == 4:
            ttl, host, port, keys = args
            if type(ttl) is not int or ttl < 0 or not isinstance(keys, list) \
                    or len(keys) > MAX_KEYS_PER_ANNOUNCE:
                raise WireError("announce: [ttl, host, port, keys]")
            if host in ("", "0.0.0.0", "::"):
                host = sender.ip  # the publisher listens on every interface: its source address
            check_provider(node_id, zone, host, port)
            rec = ProviderRecord(node_id, zone, host, port, now + min(ttl / 1000, self.max_ttl))
            return sum(self.table.add(_key(k), rec, now) for k in keys)
        raise WireError(f"unknown request {method!r}/{len(args)}")

    def _neighbors(self, key: bytes, sender: Node) -> list[bytes]:
        return [_node_row(n) for n in self.router.find_neighbors(Node(key), exclude=sender)]

    def handover(self, node: Node) -> list[tuple[bytes, Any]]:
        """Nothing: publishers re-announce every half TTL, so no record is ever forwarded by
        anyone but the node it names."""
        return []

    # ---- asking (the call_* names the kademlia crawlers and routing table use) ------------------

    async def _ask(self, node: Node, method: str, *args: Any) -> tuple[bool, Any]:
        ok, reply = await self.call((node.ip, node.port), method, *args)
        if ok and dht_id(reply[0]) != node.id and node.id is not None:
            ok, reply = False, None  # someone else answers at that address now
        return self.handle_call_response((ok, reply), node)

    async def call_ping(self, node: Node) -> tuple[bool, Any]:
        return await self._ask(node, "ping")

    async def call_find_node(self, node: Node, target: Node) -> tuple[bool, Any]:
        ok, reply = await self._ask(node, "find_node", target.id)
        if ok:
            try:
                return True, _node_rows(reply[1], 2 * self.router.ksize)
            except WireError:
                self.stats["malformed"] += 1
        return False, None

    async def call_find_value(self, node: Node, target: Node) -> tuple[bool, Any]:
        ok, reply = await self._ask(node, "find_value", target.id)
        if ok:
            try:
                body = reply[1]
                if not isinstance(body, list) or len(body) != 2 or body[0] not in (0, 1):
                    raise WireError("find_value reply is [0|1, rows]")
                if body[0] == 1:
                    rows = body[1]
                    if not isinstance(rows, list) or len(rows) > MAX_RECORDS_REPLY:
                        raise WireError("too many records")
                    now = self.clock()
                    return True, (1, [ProviderRecord.from_wire(r, now, self.max_ttl)
                                      for r in rows])
                return True, (0, _node_rows(body[1], 2 * self.router.ksize))
            except WireError:
                self.stats["malformed"] += 1
        return False, None

    async def call_announce(self, node: Node, ttl_ms: int, host: str, port: int,
                            keys: list[bytes]) -> bool:
        ok, reply = await self._ask(node, "announce", ttl_ms, host, port, keys)
        return bool(ok and type(reply[1]) is int and reply[1] > 0)

    def welcome_if_new(self, node: Node) -> None:
        if node.ip is not None:
            super().welcome_if_new(node)


class ProviderCrawl(HopCounting, SpiderCrawl):
    """A lookup that stops at the first nodes that hold records for the key and merges them."""

    def __init__(self, protocol: DhtProtocol, node: Node, peers: list[Node], ksize: int,
                 alpha: int) -> None:
        super().__init__(protocol, node, [], ksize, alpha)
        self.nearest = FastNodeHeap(node, ksize)
        self.nearest.push(list(peers))
        self.found: dict[bytes, ProviderRecord] = {}

    async def find(self) -> list[ProviderRecord]:
        return await self._find(self.protocol.call_find_value)

    async def _nodes_found(self, responses: dict[bytes, Any]) -> list[ProviderRecord]:
        gone = []
        for peer_id, (ok, reply) in responses.items():
            if not ok:
                gone.append(peer_id)
            elif reply[0] == 1:
                for rec in reply[1]:
                    old = self.found.get(rec.node_id)
                    if old is None or rec.expires > old.expires:
                        self.found[rec.node_id] = rec
            else:
                self.nearest.push([Node(*row) for row in reply[1]])
        self.nearest.remove(gone)
        if self.found or self.nearest.have_contacted_all():
            return list(self.found.values())
        return await self.find()


class Dht:
    """This node in the DHT: join, announce (batched) and look up provider records."""

    def __init__(self, node_id: bytes, zone: str, peer_address: Address, credential: bytes, *,
                 ksize: int = 20, alpha: int = 3, rpc_timeout: float = 5.0,
                 record_ttl: float = 3600.0, clock: Callable[[], float] = time.time,
                 table: ProviderTable | None = None) -> None:
        self.node_id = node_id
        self.zone = zone
        self.peer_address = peer_address
        self.ksize, self.alpha = ksize, alpha
        self.record_ttl = record_ttl
        self.clock = clock
        self.table = table or ProviderTable()
        self.protocol = DhtProtocol(node_id, zone, Sealer(credential), self.table, ksize,
                                    rpc_timeout, clock)
        self.address: Address | None = None
        self.lookup_rounds: list[int] = []

    @classmethod
    def from_config(cls, config: Any, node_id: bytes, peer_address: Address) -> "Dht":
        """The DHT of a node: its zone, credential and the config's DHT timings."""
        return cls(node_id, config.zone, peer_address, config.credential(),
                   rpc_timeout=config.dht_rpc_timeout, record_ttl=config.dht_record_ttl)

    @property
    def node(self) -> Node:
        return self.protocol.source_node

    @property
    def stats(self) -> Counter[str]:
        return self.protocol.stats

    async def listen(self, host: str, port: int) -> Address:
        """Receive datagrams on a UDP socket."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self.protocol,
                                                           local_addr=(host, port))
        sock = transport.get_extra_info("sockname")
        self.address = (sock[0], sock[1])
        return self.address

    def attach(self, network: Any, address: Address) -> Address:
        """Receive datagrams on an in-memory network (memnet.MemoryNetwork)."""
        self.address = network.attach(self.protocol, address)
        return self.address

    def close(self) -> None:
        self.protocol.close()

    def contacts(self) -> int:
        return self.protocol.router.contacts()

    def zone_of(self, node_id: bytes) -> str | None:
        """The zone a DHT node said it is in (None: never heard from it)."""
        seen = self.protocol.seen.get(node_id)
        return seen[0] if seen is not None else None

    def zone_rtt(self, zone: str) -> float | None:
        """The smoothed round trip of DHT requests answered from `zone` (None: none yet)."""
        return self.protocol.zone_rtt.get(zone)

    def zones_seen(self, within: float = 3600.0) -> dict[str, int]:
        """Zones of the DHT nodes heard from within `within` seconds: zone -> nodes."""
        now = self.clock()
        out: Counter[str] = Counter()
        for zone, _, when in self.protocol.seen.values():
            if now - when <= within:
                out[zone] += 1
        return dict(out)

    async def bootstrap(self, addresses: Iterable[Address]) -> int:
        """Join through any node's DHT address (any zone); returns the contacts known."""
        addresses = [(a[0], int(a[1])) for a in addresses]
        answers = await asyncio.gather(*(self.protocol.call(a, "ping") for a in addresses))
        for (ok, reply), addr in zip(answers, addresses):
            if ok:
                self.protocol.welcome_if_new(Node(dht_id(reply[0]), addr[0], addr[1]))
        await self._closest(self.node.id)
        return self.contacts()

    async def _closest(self, key: bytes, width: int | None = None) -> list[Node]:
        width = width or self.ksize
        target = Node(key)
        seeds = self.protocol.router.find_neighbors(target, width)
        if not seeds:
            return []
        crawl = CountingNodeCrawl(self.protocol, target, seeds, width, self.alpha)
        return list(await crawl.find())

    async def find(self, key: bytes) -> list[ProviderRecord]:
        """Live provider records for a 20-byte key (this node's own table first)."""
        now = self.clock()
        local = self.table.get(key, now)
        if local:
            self.lookup_rounds.append(0)
            return local
        target = Node(key)
        seeds = self.protocol.router.find_neighbors(target)
        if not seeds:
            return []
        crawl = ProviderCrawl(self.protocol, target, seeds, self.ksize, self.alpha)
        found = await crawl.find()
        self.lookup_rounds.append(crawl.rounds)
        now = self.clock()
        return sorted((r for r in found if r.live(now)), key=lambda r: -r.expires)

    def _own_record(self, ttl: float) -> ProviderRecord:
        return ProviderRecord(self.node_id, self.zone, self.peer_address[0],
                              self.peer_address[1], self.clock() + ttl)

    async def _store(self, plan: dict[bytes, list[bytes]], by_id: dict[bytes, Node],
                     ttl: float) -> int:
        """Send each node its keys (chunks of MAX_KEYS_PER_ANNOUNCE); keys planned for this node
        go to its own table. Returns the keys some node accepted."""
        now = self.clock()
        host, port = self.peer_address
        calls = []
        stored = 0
        for nid, keys in plan.items():
            if nid == self.node.id:
                rec = self._own_record(ttl)
                stored += sum(self.table.add(k, rec, now) for k in keys)
                continue
            for i in range(0, len(keys), MAX_KEYS_PER_ANNOUNCE):
                chunk = keys[i:i + MAX_KEYS_PER_ANNOUNCE]
                calls.append(self.protocol.call_announce(by_id[nid], int(ttl * 1000), host, port,
                                                          chunk))
        results = await asyncio.gather(*calls)
        return stored + sum(bool(r) for r in results)

    async def announce(self, keys: Iterable[bytes], ttl: float | None = None) -> int:
        """Announce this node as a provider of `keys`, grouped by keyspace region: one lookup per
        region, one ANNOUNCE per storing node. Returns how many stores succeeded."""
        ttl = ttl or self.record_ttl
        remaining = sorted(set(keys))
        ok = 0
        while remaining:
            target = remaining[0]
            nodes = await self._closest(target, 2 * self.ksize)
            if len(nodes) < self.ksize:
                region = remaining  # a small network: every node stores every key anyway
            else:
                bits = min(KEY_SIZE * 8, shared_bits(target, nodes[self.ksize - 1].id) + 1)
                end = 1
                while end < len(remaining) and shared_bits(remaining[end], target) >= bits:
                    end += 1
                region = remaining[:end]
            remaining = remaining[len(region):]
            candidates = nodes + [self.node]
            by_id = {n.id: n for n in candidates}
            plan: dict[bytes, list[bytes]] = {}
            for key in region:
                k = Node(key)
                for n in sorted(candidates, key=k.distance_to)[:self.ksize]:
                    plan.setdefault(n.id, []).append(key)
            ok += await self._store(plan, by_id, ttl)
        return ok

    async def announce_each(self, keys: Sequence[bytes], ttl: float | None = None) -> int:
        """One lookup and k STOREs per key, as stock kademlia stores (the baseline)."""
        ttl = ttl or self.record_ttl
        ok = 0
        for key in keys:
            nodes = await self._closest(key)
            k = Node(key)
            chosen = sorted(nodes + [self.node], key=k.distance_to)[:self.ksize]
            ok += await self._store({n.id: [key] for n in chosen}, {n.id: n for n in chosen},
                                    ttl)
        return ok

    async def maintain(self, bootstrap: Sequence[Address], interval: float,
                       retry: Backoff | None = None) -> None:
        """Run until cancelled: while no contact is known (a node may start before the node it
        joins through), join through `bootstrap`, retrying after 1, 2, 4 ... s up to `interval`;
        once joined, refresh stale buckets and drop expired records every `interval` s."""
        retry = retry or Backoff(first=min(1.0, interval), cap=interval, jitter=0.25)
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not self.contacts() and bootstrap:
                    await self.bootstrap(bootstrap)
                else:
                    await self.refresh()
            except Exception as e:  # best effort: the next round tries again
                log.warning("DHT maintenance: %s", e)
            await asyncio.sleep(self._next_round(retry, interval, loop.time()))

    def _next_round(self, retry: Backoff, interval: float, now: float) -> float:
        """Seconds to the next maintenance round: `interval` once joined, else the backoff's."""
        if self.contacts():
            retry.succeeded(now)
            return interval
        return retry.failed(now, random.random()) - now

    async def refresh(self) -> None:
        """Look up a random id in each bucket not touched for an hour; drop expired records."""
        await asyncio.gather(*(self._closest(i) for i in self.protocol.get_refresh_ids()))
        self.table.cull(self.clock())

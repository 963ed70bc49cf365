"""The zone mesh: who is alive, who may hold a digest, and who owns a cold block.

Runs on the node's loop beside the PeerService (peers.py), which carries its messages:
- HELLO: a member's node id, zone, listen port, block size and cluster tag; a node with another
  block size or cluster tag is ignored (with a log line). Static peers are greeted every round
  until they answer; mDNS (discovery.py) adds the others.
- PING/ACK: each round every member is pinged; one that stays silent for `suspect_timeout` is
  suspected and removed (its blocks are no longer asked of it, its ownerships move).
- SUMMARY / SUMMARY_DELTA: this node's Bloom summary (summaries.py), the full filter to a member
  that has no base, a delta when >= 1% of entries changed or every few seconds.
- Owners: rendezvous hashing (rendezvous.py) over the live zone members and this node ranks who
  fetches a block nobody has from the origin, once, for the whole zone.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from . import wire
from .rendezvous import rank
from .summaries import LocalSummary, RemoteSummaries
from .transport import TransportError
from .transport.base import parse_address

log = logging.getLogger("meshcache.mesh")

STATUS_FILE = "mesh.json"


def cluster_tag(credential: bytes) -> bytes:
    """8 bytes naming the cluster in HELLO and mDNS ads; reveals nothing of the credential."""
    return hmac.new(credential, b"meshcache cluster tag", hashlib.sha256).digest()[:8]


@dataclass
class Member:
    """A live peer of this zone (or another zone, for WAN later)."""

    node_id: bytes
    address: tuple[str, int]
    zone: str
    last_seen: float
    summary_generation: int = 0  # the generation of ours it holds (0: none: send full)
    suspect: bool = False  # silent for half the suspect timeout: not asked, not an owner
    info: dict[str, Any] = field(default_factory=dict)


class Mesh:
    """Membership, summaries and ownership for one node (shell around the pure parts)."""

    def __init__(self, node: Any, peers: Any) -> None:
        cfg = node.config
        self.node = node
        self.peers = peers
        self.node_id: bytes = peers.node_id
        self.zone = cfg.zone
        self.tag = cluster_tag(cfg.credential())
        self.members: dict[bytes, Member] = {}
        self.static = [parse_address(p) for p in cfg.peers]
        self.summary = LocalSummary(max(1024, cfg.capacity // cfg.block_size))
        self.summary.rebuild(node.store.digests())
        self.remote = RemoteSummaries()
        self._seq = 0
        self._last_round: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._ignored: set[bytes] = set()
        self._pinging: dict[Any, asyncio.Task[Any]] = {}  # background pings and summary sends
        self.discovery: Any = None
        self._evicted_seen = node.store.evicted_blocks + node.store.corrupt_blocks
        self.stats = {"members_up": 0, "members_down": 0, "summaries_sent": 0,
                      "summary_bytes_sent": 0, "hellos_refused": 0}

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Greet the static peers once (so a read right after start can use them), then run
        a round every ping_interval."""
        if self.node.config.mdns:
            await self._start_discovery()
        try:
            await self.round()
        except Exception:
            log.exception("first mesh round failed")
        self._task = asyncio.ensure_future(self._run())

    async def _start_discovery(self) -> None:
        from .discovery import Discovery

        cfg = self.node.config
        host, port = self.peers.address
        advertise = [host] if host not in ("0.0.0.0", "::", "") else None
        self.discovery = Discovery(
            self.node_id, port, self.zone, self.node.block_size, self.tag, list(cfg.interfaces),
            lambda ad: self.add_discovered(ad.node_id, (ad.addresses[0], ad.port)),
            advertise=advertise)
        try:
            await self.discovery.start()
        except OSError as e:  # no multicast here: static peers still work
            log.warning("mDNS discovery is off: %s", e)
            self.discovery = None

    async def close(self) -> None:
        """Leave gracefully: tell every member (briefly), then stop the rounds."""
        for task in list(self._pinging.values()):
            task.cancel()
        if self.members:
            await asyncio.gather(*(self.peers.request(m.address, wire.Leave(self.node_id),
                                                      timeout=0.5)
                                   for m in list(self.members.values())),
                                 return_exceptions=True)
        if self.discovery is not None:
            try:
                await self.discovery.stop()
            except Exception as e:
                log.debug("mDNS stop: %s", e)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        interval = self.node.config.ping_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad round must not stop the mesh
                log.exception("mesh round failed")

    async def round(self) -> None:
        """Greet static peers, ping members, expire the silent, send summaries when due."""
        now = time.monotonic()
        self._forgive_own_stall(now)
        known = {m.address for m in self.members.values()}
        greet = [a for a in self.static if a not in known and a != self.peers.address]
        # Greetings are awaited (a first round must know the static peers); pings run in the
        # background so a dead member's timeout never delays the others' liveness.
        await asyncio.gather(*(self._hello(a) for a in greet), return_exceptions=True)
        for m in list(self.members.values()):
            if m.node_id not in self._pinging:
                self._spawn(self._ping(m), ("ping", m.node_id))
        limit = self.node.config.suspect_timeout
        for m in list(self.members.values()):
            silent = now - m.last_seen
            if silent > limit:
                self._down(m, f"silent for {silent:.1f} s")
            elif silent > limit / 2 and not m.suspect:
                # Suspected: no longer an owner or a source, but kept (and pinged) a while in
                # case it was only slow; an ACK clears it (Lifeguard's suspicion, simplified).
                m.suspect = True
                log.info("member suspect: %s (silent for %.1f s)", m.node_id.hex()[:12], silent)
        evicted = self.node.store.evicted_blocks + self.node.store.corrupt_blocks
        if evicted > self._evicted_seen:
            self.summary.removed(evicted - self._evicted_seen)
            self._evicted_seen = evicted
        if self.summary.needs_rebuild():
            self.summary.rebuild(self.node.store.digests())
        self._write_status()
        if self.members and self.summary.due(now) and "summaries" not in self._pinging:
            self._spawn(self._send_summaries(now), "summaries")

    def _forgive_own_stall(self, now: float) -> None:
        """When this round runs late, this process (or its whole host) was stalled, not the
        members: nothing they sent could be read meanwhile. Their silence clocks skip the stall,
        as Lifeguard's local health does, or one frozen second would drop the whole zone."""
        interval = self.node.config.ping_interval
        if self._last_round is not None:
            stall = now - self._last_round - 2 * interval
            if stall > 0:
                log.info("mesh round %.1f s late: not counted as members' silence", stall)
                for m in self.members.values():
                    m.last_seen = min(now, m.last_seen + stall)
        self._last_round = now

    def _spawn(self, coro: Any, key: Any) -> None:
        """Run `coro` in the background, at most one per key at a time."""
        task = asyncio.ensure_future(coro)
        self._pinging[key if not isinstance(key, tuple) else key[1]] = task
        task.add_done_callback(lambda t, k=key: self._done(k, t))

    def _done(self, key: Any, task: "asyncio.Task[Any]") -> None:
        k = key if not isinstance(key, tuple) else key[1]
        if self._pinging.get(k) is task:
            del self._pinging[k]
        if not task.cancelled() and task.exception() is not None:
            log.debug("mesh task %s failed: %s", key, task.exception())

    # ---- members -------------------------------------------------------------------------------

    def hello_message(self) -> Any:
        port = self.peers.address[1] if self.peers.address else 0
        return wire.Hello(self.node_id, self.node.block_size, self.tag,
                          self.peers.datagram_size, self.zone, port)

    def accept_hello(self, msg: Any, host: str) -> bool:
        """Admit a member from its HELLO; False (and one log line) when it does not fit."""
        if msg.block_size != self.node.block_size or msg.cluster_tag != self.tag:
            if msg.node_id not in self._ignored:
                self._ignored.add(msg.node_id)
                log.warning("ignoring node %s at %s: block size %d / cluster tag %s differ "
                            "from ours (%d / %s)", msg.node_id.hex()[:12], host, msg.block_size,
                            msg.cluster_tag.hex(), self.node.block_size, self.tag.hex())
            self.stats["hellos_refused"] += 1
            return False
        if msg.node_id == self.node_id:
            return False
        if msg.max_datagram_size != self.peers.datagram_size and msg.node_id not in self.members:
            log.warning("node %s at %s uses %d-byte QUIC datagrams, this node %d: set "
                        "max_datagram_size alike on both (no path-MTU discovery)",
                        msg.node_id.hex()[:12], host, msg.max_datagram_size,
                        self.peers.datagram_size)
        now = time.monotonic()
        m = self.members.get(msg.node_id)
        if m is None:
            self.members[msg.node_id] = Member(msg.node_id, (host, msg.port), msg.zone, now)
            self.stats["members_up"] += 1
            log.info("member up: %s at %s:%d zone %s", msg.node_id.hex()[:12], host, msg.port,
                     msg.zone)
        else:
            m.last_seen = now
            m.address = (host, msg.port)
        return True

    def touch(self, node_id: bytes | None = None, address: Any = None) -> None:
        """Any exchange with a member proves it alive, not only an ACK to a PING: a member busy
        serving blocks on a loaded host must not be suspected for answering pings late."""
        m = self.members.get(node_id) if node_id is not None else None
        if m is None and address is not None:
            m = next((x for x in self.members.values() if x.address == address), None)
        if m is not None:
            m.last_seen = time.monotonic()
            m.suspect = False

    def add_discovered(self, node_id: bytes, address: tuple[str, int]) -> None:
        """mDNS saw a peer: greet it now (it becomes a member when it answers HELLO)."""
        if node_id != self.node_id and node_id not in self.members and address not in self.static:
            self.static.append(address)
            self._spawn(self._hello(address), ("hello", address))

    def _down(self, m: Member, why: str) -> None:
        if self.members.pop(m.node_id, None) is not None:
            self.remote.forget(m.node_id)
            self.stats["members_down"] += 1
            log.info("member down: %s (%s)", m.node_id.hex()[:12], why)

    def leave(self, node_id: bytes) -> None:
        m = self.members.get(node_id)
        if m is not None:
            self._down(m, "left")

    def live(self, zone: str | None = None) -> list[Member]:
        z = self.zone if zone is None else zone
        return [m for m in self.members.values() if m.zone == z and not m.suspect]

    async def _hello(self, address: tuple[str, int]) -> None:
        try:
            reply = await self.peers.request(address, self.hello_message())
        except (TransportError, OSError, asyncio.TimeoutError, Exception) as e:
            self.peers.stats["peer_errors"] += 1
            log.info("HELLO to %s:%d failed: %s", address[0], address[1], e)
            return
        if isinstance(reply, wire.Hello):
            self.accept_hello(reply, address[0])

    async def _ping(self, m: Member) -> None:
        self._seq += 1
        timeout = max(self.node.config.ping_interval, self.node.config.suspect_timeout / 3)
        try:
            reply = await self.peers.request(m.address, wire.Ping(self._seq), timeout=timeout)
        except (TransportError, OSError, asyncio.TimeoutError):
            return
        if isinstance(reply, wire.Ack):
            m.last_seen = time.monotonic()
            m.suspect = False

    # ---- summaries -----------------------------------------------------------------------------

    def on_stored(self, digest: bytes) -> None:
        self.summary.add(digest)

    def on_evicted(self, count: int) -> None:
        self.summary.removed(count)

    async def _send_summaries(self, now: float) -> None:
        generation, delta, full = self.summary.publish(now)

        async def send(m: Member) -> None:
            if delta is not None and m.summary_generation == generation - 1:
                msg: Any = wire.SummaryDelta(self.node_id, generation - 1, generation, delta)
                size = len(delta)
            else:
                msg, size = wire.Summary(self.node_id, generation, full), len(full)
            try:
                reply = await self.peers.request(m.address, msg, max_reply=wire.MAX_FRAME)
            except (TransportError, OSError, asyncio.TimeoutError):
                m.summary_generation = 0
                return
            if isinstance(reply, wire.Ack) and reply.seq == generation:
                m.summary_generation = generation
                self.stats["summaries_sent"] += 1
                self.stats["summary_bytes_sent"] += size
            else:
                m.summary_generation = 0  # it lacked the base: the full filter next time

        await asyncio.gather(*(send(m) for m in list(self.members.values())))

    def accept_summary(self, msg: Any) -> Any:
        """Apply a SUMMARY or SUMMARY_DELTA; the reply (ACK of the generation, or ERROR)."""
        if msg.node_id not in self.members:
            return wire.Error(wire.ERR_NOT_FOUND, "send HELLO first")
        try:
            if isinstance(msg, wire.Summary):
                self.remote.apply_full(msg.node_id, msg.generation, msg.bloom)
                return wire.Ack(msg.generation)
            if self.remote.apply_delta(msg.node_id, msg.from_generation, msg.to_generation,
                                       msg.delta):
                return wire.Ack(msg.to_generation)
            return wire.Error(wire.ERR_NOT_FOUND, "no base for this delta: send the full filter")
        except wire.WireError as e:
            return wire.Error(wire.ERR_BAD_REQUEST, str(e))

    # ---- the read path's questions -------------------------------------------------------------

    def holders(self, digest: bytes) -> list[Member]:
        """Live members whose summary may hold `digest`, least busy first."""
        ids = self.remote.holders(digest, [i for i, m in self.members.items() if not m.suspect])
        load = self.peers.inflight
        return sorted((self.members[i] for i in ids), key=lambda m: load(m.address))

    def owner(self, key: bytes) -> Member | None:
        """The zone member that owns `key`; None when it is this node."""
        ranked = rank(key, [self.node_id] + [m.node_id for m in self.live()])
        if not ranked or ranked[0] == self.node_id:
            return None
        return self.members.get(ranked[0])

    def _write_status(self) -> None:
        """mesh.json in the cache directory: what `meshcache peers` shows (atomic replace)."""
        status = {"node_id": self.node_id.hex(), "zone": self.zone, "pid": os.getpid(),
                  "address": "%s:%d" % self.peers.address if self.peers.address else None,
                  "time": time.time(), "ping_interval": self.node.config.ping_interval,
                  "summary_generation": self.summary.generation,
                  "summary_bytes": self.summary.filter.nbytes, "members": self.describe()}
        path = os.path.join(self.node.config.cache_dir, STATUS_FILE)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(status, f)
            os.replace(tmp, path)
        except OSError as e:
            log.debug("cannot write %s: %s", path, e)

    def describe(self) -> list[dict[str, Any]]:
        """Live members with zone, address and summary size (for `meshcache peers`)."""
        now = time.monotonic()
        return [{"node_id": m.node_id.hex(), "address": f"{m.address[0]}:{m.address[1]}",
                 "zone": m.zone, "state": "suspect" if m.suspect else "alive",
                 "summary_bytes": self.remote.size(m.node_id),
                 "summary_generation": self.remote.generation(m.node_id),
                 "last_seen_s": round(now - m.last_seen, 2)}
                for m in sorted(self.members.values(), key=lambda m: m.node_id)]

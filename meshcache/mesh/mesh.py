"""The zone mesh: who is alive, who may hold a digest, and who owns a cold block.

Runs on the node's loop beside the PeerService (peers.py), which carries its messages:
- HELLO: admission. A member's node id, zone, listen port, block size and cluster tag; a node
  with another block size or cluster tag is ignored (with a log line). Static peers are greeted
  every round until they answer; mDNS (discovery.py) adds others, and so does membership gossip
  (a node learned from a SYNC or a rumor is greeted before it is used).
- Liveness is SWIM with parts of Lifeguard, in the pure `membership.Membership` this shell drives
  (timer, messages, events): one member probed per `ping_interval`, PING_REQ through
  `indirect_checks` others when it does not answer in half an interval, suspicion gossiped and
  refuted by the member with a higher incarnation (the suspect is told directly: Lifeguard's
  buddy system), removal after `suspect_timeout` unrefuted, GOSSIP pushes of failure news,
  push-pull SYNC on join and for anti-entropy, LEAVE on shutdown. Any other successful exchange
  with a member (`touch`) counts as an ACK: a busy member that answers pings late is not
  suspected. A member silent for suspect_timeout/2 is not asked for blocks and is no owner
  (a live one refutes long before); a dead or left one is dropped. A membership timer that runs
  late (this host froze) does not blame the members. Left out: Lifeguard's dynamic suspicion
  timeout and local health multiplier. docs/architecture.md has the details. The rules in time
  (when a suspect stops being asked, the grace of a restarted member) are pure: core/liveness.py.
- Expulsion: a node the peer service caught lying `liar_expel_after` times is dropped from this
  node's view and not admitted again while it is expelled, whatever gossip says.
- SUMMARY / SUMMARY_DELTA: this node's Bloom summary (summaries.py), the full filter to a member
  that has no base, a delta when >= 1% of entries changed or every few seconds.
- Owners: rendezvous hashing (rendezvous.py) over the live zone members and this node ranks who
  fetches a block nobody has from the origin, once, for the whole zone.

The shell is given its parts: the config, the peer service it sends through (`PeerLink`), the
store it summarizes (`StoreView`) and a clock (mesh/clock.py), so tests run a zone on the
in-memory transport with a fake clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Hashable

from meshcache.config import Config
from meshcache.core import membership as ms
from meshcache.core import wire
from meshcache.core.liveness import grace_expired, stop_using
from meshcache.mesh import auth
from meshcache.core.rendezvous import rank
from meshcache.mesh.clock import Clock, LoopClock, Timer
from meshcache.mesh.seams import Address, PeerLink, StoreView
from meshcache.mesh.summaries import LocalSummary, RemoteSummaries
from meshcache.transport.base import AuthenticationError, parse_address

if TYPE_CHECKING:
    from meshcache.mesh.discovery import Discovery

log = logging.getLogger("meshcache.mesh.mesh")

STATUS_FILE = "mesh.json"
MAX_REMEMBERED = 1024  # nodes remembered for a log line, addresses found by mDNS
DISCOVERED_TTL = 300.0  # seconds an address found by mDNS is greeted until it answers


def cluster_tag(credential: bytes) -> bytes:
    """8 bytes naming the cluster in HELLO and mDNS ads; reveals nothing of the credential
    (auth.cluster_tag: derived from the scrypt key, after refusing a weak credential)."""
    return auth.cluster_tag(credential)


@dataclass
class Member:
    """An admitted peer (it passed HELLO) that membership holds alive or suspect."""

    node_id: bytes
    address: Address
    zone: str
    last_seen: float
    summary_generation: int = 0  # the generation of ours it holds (0: none: send full)
    suspect: bool = False  # silent for suspect_timeout/2: not asked, not an owner
    suspect_since: float | None = None  # when membership began to suspect it (None: it does not)


def _addr(address: Address) -> str:
    """(host, port) as the "host:port" string membership and the wire use (an in-memory
    transport's name as it is)."""
    if not isinstance(address, tuple):
        return str(address)
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse(addr: str) -> Address:
    """The transport address of a membership "host:port" (or an in-memory name)."""
    try:
        return parse_address(addr)
    except ValueError:
        return addr


class _Bounded(OrderedDict[Hashable, float]):
    """Keys with the time they were added, the oldest dropped beyond `limit`."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def add(self, key: Hashable, now: float) -> None:
        self[key] = now
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)

    def expire(self, older_than: float) -> None:
        for k in [k for k, t in self.items() if t < older_than]:
            del self[k]


class Mesh:
    """Membership, summaries and ownership for one node (shell around the pure parts)."""

    def __init__(self, config: Config, peers: PeerLink, store: StoreView, *,
                 clock: Clock | None = None) -> None:
        cfg = self.config = config
        self.peers = peers
        self.store = store
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.node_id: bytes = peers.node_id
        self.block_size = cfg.block_size
        self.zone = cfg.zone
        # () -> {zone: DHT nodes heard from}, shown by `meshcache peers` (set when the DHT runs)
        self.remote_zones: Callable[[], dict[str, int]] | None = None
        self.tag = cluster_tag(cfg.credential())
        self.members: dict[bytes, Member] = {}
        self.static: list[Address] = [parse_address(p) for p in cfg.peers]
        self.summary = LocalSummary(max(1024, cfg.capacity // cfg.block_size))
        self.summary.rebuild(store.digests())
        self.remote = RemoteSummaries()
        interval = max(cfg.ping_interval, 0.01)
        # The incarnation starts at the wall clock: a restarted node outranks its old rumors.
        self.membership = ms.Membership(
            self.node_id, "", self.zone, ping_interval=interval,
            suspect_timeout=cfg.suspect_timeout, indirect_checks=cfg.indirect_checks,
            sync_interval=cfg.sync_interval, incarnation=int(time.time()))
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._timer: Timer | None = None  # membership's next handle_timer
        self._timer_at: float | None = None
        self._refused = _Bounded(MAX_REMEMBERED)  # nodes refused at HELLO (logged once)
        self._discovered = _Bounded(MAX_REMEMBERED)  # mDNS addresses greeted until they answer
        self._refused_by = _Bounded(MAX_REMEMBERED)  # addresses whose auth refused us (logged once)
        self._pending: dict[bytes, Member] = {}  # answered HELLO, but membership holds it gone
        self._pinging: dict[Hashable, asyncio.Task[Any]] = {}  # greetings and summary sends
        self._sending: set[asyncio.Task[Any]] = set()  # membership messages in flight
        self._closing = False
        self.discovery: Discovery | None = None
        self._evicted_seen = store.evicted_blocks + store.corrupt_blocks
        self.stats = {"members_up": 0, "members_down": 0, "summaries_sent": 0,
                      "summary_bytes_sent": 0, "hellos_refused": 0, "suspicions": 0,
                      "refutations": 0, "indirect_probes": 0, "members_expelled": 0}
        peers.attach(self)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Greet the static peers once (so a read right after start can use them), then run
        a round every ping_interval and the membership timer."""
        self._running = True
        self.membership.self_addr = _addr(self._advertised_address())
        if self.config.mdns:
            await self._start_discovery()
        try:
            await self.round()
        except Exception:
            log.exception("first mesh round failed")
        self._task = asyncio.ensure_future(self._run())
        self._arm()

    def _advertised_address(self) -> Address:
        """Where the others reach this node: the listen address, or with a wildcard host the
        local address of the route to the first static peer (no packet is sent)."""
        if not isinstance(self.peers.address, tuple):
            return self.peers.address  # an in-memory transport's name
        host, port = self.peers.address
        if host not in ("0.0.0.0", "::", ""):
            return host, port
        for peer in self.static:
            try:
                family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.connect(peer)
                    return s.getsockname()[0], port
            except OSError:
                continue
        try:
            return socket.gethostbyname(socket.gethostname()), port
        except OSError:
            return "127.0.0.1", port

    async def _start_discovery(self) -> None:
        from meshcache.mesh.discovery import Discovery

        cfg = self.config
        host, port = self.peers.address
        advertise = [host] if host not in ("0.0.0.0", "::", "") else None
        self.discovery = Discovery(
            self.node_id, port, self.zone, self.block_size, self.tag, list(cfg.interfaces),
            lambda ad: self.add_discovered(ad.node_id, (ad.addresses[0], ad.port)),
            advertise=advertise)
        try:
            await self.discovery.start()
        except OSError as e:  # no multicast here: static peers still work
            log.warning("mDNS discovery is off: %s", e)
            self.discovery = None

    async def close(self, leave: bool = True) -> None:
        """Leave gracefully: LEAVE to every member (briefly), then stop the rounds. With
        `leave=False` the members are not told (as when the host dies)."""
        self._closing = True
        for task in [*self._pinging.values(), *self._sending]:
            task.cancel()
        if self._task is not None:
            self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.membership.leave(self.clock.now())
        self.membership.messages_to_send()  # its LEAVEs: sent below, to admitted members only
        if self.members and leave:
            bye = wire.Leave(self.node_id, self.membership.incarnation)
            await asyncio.gather(*(self.peers.request(m.address, bye, timeout=0.5)
                                   for m in list(self.members.values())),
                                 return_exceptions=True)
        if self.discovery is not None:
            try:
                await self.discovery.stop()
            except Exception as e:
                log.debug("mDNS stop: %s", e)
        if self._task is not None:
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        interval = self.config.ping_interval
        while True:
            await self.clock.sleep(interval)
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad round must not stop the mesh
                log.exception("mesh round failed")

    async def round(self) -> None:
        """Greet static peers not yet members, write the status, send summaries when due."""
        now = self.clock.now()
        known = {m.address for m in self.members.values()}
        self._discovered.expire(now - DISCOVERED_TTL)
        for a in [a for a in self._discovered if a in known]:
            del self._discovered[a]  # it answered: mDNS tells again if it comes back
        greet = [a for a in [*self.static, *self._discovered]
                 if a not in known and a != self.peers.address]
        # Greetings are awaited (a first round must know the static peers).
        await asyncio.gather(*(self._hello(a) for a in greet), return_exceptions=True)
        self._reconcile(self.clock.now())
        self.peers.prune()
        evicted = self.store.evicted_blocks + self.store.corrupt_blocks
        if evicted > self._evicted_seen:
            self.summary.removed(evicted - self._evicted_seen)
            self._evicted_seen = evicted
        if self.summary.needs_rebuild():
            self.summary.rebuild(self.store.digests())
        self._write_status()
        if self.members and self.summary.due(now) and "summaries" not in self._pinging:
            self._spawn(self._send_summaries(now), "summaries")

    def _reconcile(self, now: float) -> None:
        """Keep `members` within what membership holds live. A member admitted by HELLO while
        membership held it dead gets suspect_timeout to refute that before it is dropped."""
        timeout = self.config.suspect_timeout
        for m in list(self.members.values()):
            state = self.membership.member(m.node_id)
            if state is None or state.state in (ms.State.DEAD, ms.State.LEFT):
                if grace_expired(m.last_seen, now, timeout):
                    self._down(m, "not alive in membership")
            else:
                self._update_suspect(m, state.state == ms.State.SUSPECT, now)
        for p in [p for p in self._pending.values() if grace_expired(p.last_seen, now, timeout)]:
            del self._pending[p.node_id]  # it never refuted its death

    def _update_suspect(self, m: Member, suspected: bool, now: float) -> None:
        """Stop using a member once it has been silent for half the suspect timeout
        (core/liveness.py: a brief suspicion must not move ownerships; a long one should not make
        a read wait)."""
        if not suspected:
            if m.suspect:
                log.info("member alive again: %s", m.node_id.hex()[:12])
            m.suspect, m.suspect_since = False, None
            return
        if m.suspect_since is None:
            m.suspect_since = now
        if not m.suspect and stop_using(m.suspect_since, now, self.config.suspect_timeout,
                                        self.membership.ping_interval):
            m.suspect = True
            self.stats["suspicions"] += 1
            log.info("member suspect: %s (for %.1f s)", m.node_id.hex()[:12],
                     now - m.suspect_since)
            if m.last_seen < m.suspect_since:
                # Silent since (any traffic from it counts): requests in flight to it, a reader
                # waiting on its owner, fail now rather than when it is dropped, and the ladder
                # goes on to the next rung. A member that refutes is connected to again.
                self.peers.disconnect(m.address, f"suspected for {now - m.suspect_since:.1f} s")

    def _spawn(self, coro: Coroutine[Any, Any, None], key: Hashable) -> None:
        """Run `coro` in the background, at most one per key at a time."""
        task = asyncio.ensure_future(coro)
        self._pinging[key] = task
        task.add_done_callback(lambda t, k=key: self._done(k, t))

    def _done(self, key: Hashable, task: "asyncio.Task[Any]") -> None:
        if self._pinging.get(key) is task:
            del self._pinging[key]
        if not task.cancelled() and task.exception() is not None:
            log.debug("mesh task %s failed: %s", key, task.exception())

    # ---- membership: driving the pure SWIM core ------------------------------------------------

    def _arm(self) -> None:
        """Schedule `handle_timer` for when membership wants it (a loop timer, as aioquic's
        shells do; no task to cancel)."""
        t = None if self._closing or not self._running else self.membership.get_timer()
        if t == self._timer_at and (t is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = t
        if t is not None:
            self._timer = self.clock.call_later(t - self.clock.now(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        try:
            self.membership.handle_timer(self.clock.now())
        except Exception:  # never let one bad input stop failure detection
            log.exception("membership timer failed")
        self._flush()

    def _flush(self) -> None:
        """After any input to membership: apply its events, send its messages, rearm."""
        m = self.membership
        while (event := m.next_event()) is not None:
            self._on_event(event)
        if not self._closing:
            for addr, msg in m.messages_to_send():
                task = asyncio.ensure_future(self._send(addr, msg))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        for key in ("refutations", "indirect_probes"):
            self.stats[key] = m.stats[key]
        self._arm()

    async def _send(self, addr: str, msg: ms.Message) -> None:
        """One membership message as a request; an ACK to a PING and the answer to a SYNC go
        back into membership, other answers are a plain ACK."""
        cfg = self.config
        try:
            peer = _parse(addr)
            if isinstance(msg, ms.Sync):
                reply, peer_id = await self.peers.exchange(peer, msg, max_reply=wire.MAX_FRAME,
                                                           timeout=cfg.request_timeout)
            else:
                reply, peer_id = await self.peers.exchange(
                    peer, msg, timeout=max(2 * cfg.ping_interval, 1.0))
        except Exception as e:  # unreachable, timed out, or misbehaved (counted where detected):
            # for membership a lost message, which is what the protocol is built to survive
            log.debug("membership %s to %s failed: %s", type(msg).__name__, addr, e)
            return
        if peer_id is None or self._closing or self.peers.expelled(peer_id):
            return
        now = self.clock.now()
        if not isinstance(reply, wire.Error):
            self.touch(peer_id)  # an answer is an exchange like any other (and `last_seen`)
        if isinstance(msg, ms.Ping) and isinstance(reply, wire.Ack):
            self.membership.receive(peer_id, reply, now)
        elif isinstance(msg, ms.Sync) and isinstance(reply, wire.Sync):
            self.membership.on_sync(peer_id, reply.members, False, now)
        else:
            return
        self._flush()

    def on_membership(self, msg: wire.Message, peer_id: bytes | None) -> wire.Message:
        """A membership message from the authenticated node `peer_id`: the reply to send."""
        if peer_id is None:
            return wire.Error(wire.ERR_AUTH, "unauthenticated")
        if self.peers.expelled(peer_id):
            return wire.Error(wire.ERR_AUTH, "expelled")
        m, now = self.membership, self.clock.now()
        reply: wire.Message = wire.Ack(0)
        if isinstance(msg, wire.Ping):
            ack = m.on_ping(peer_id, msg.seq, now, msg.updates)
            reply = wire.Ack(msg.seq, ack.updates) if ack is not None else \
                wire.Error(wire.ERR_NOT_FOUND, "leaving")
        elif isinstance(msg, wire.Sync):
            answer = m.on_sync(peer_id, msg.members, msg.reply, now)
            if answer is not None:
                reply = wire.Sync(answer.members, False)
        elif isinstance(msg, wire.Leave):
            if msg.node_id != peer_id:
                return wire.Error(wire.ERR_AUTH, "LEAVE of another node")
            m.receive(peer_id, msg, now)
            self.leave(msg.node_id)  # at once, even for a member membership never heard of
        elif isinstance(msg, wire.PingReq):
            m.on_ping_req(peer_id, msg.seq, msg.target_id, msg.target_addr, now, msg.updates)
        elif isinstance(msg, wire.Gossip):
            m.apply_updates(msg.updates, now)
        elif isinstance(msg, wire.Ack):  # an ACK forwarded for our PING_REQ
            m.on_ack(peer_id, msg.seq, now, msg.updates)
        self._flush()
        return reply

    def _on_event(self, event: ms.Event) -> None:
        """Membership changed its mind about a node: admit, suspect or drop it here."""
        m = self.members.get(event.node_id)
        if isinstance(event, ms.MemberUp):
            if self.peers.expelled(event.node_id):
                return
            if m is not None:
                self._update_suspect(m, False, self.clock.now())
            elif event.node_id in self._pending:  # it answered HELLO and now refuted its death
                self._admit(self._pending.pop(event.node_id))
            elif event.node_id not in self._refused and not self._closing and event.addr:
                address = _parse(event.addr)
                if ("hello", address) not in self._pinging:  # learned by gossip: greet it
                    self._spawn(self._hello(address), ("hello", address))
        elif isinstance(event, ms.MemberSuspect):
            if m is not None:
                log.debug("membership suspects %s", event.node_id.hex()[:12])
                self._update_suspect(m, True, self.clock.now())
        elif m is None:
            self._pending.pop(event.node_id, None)
        else:
            self._down(m, "left" if isinstance(event, ms.MemberLeft) else
                       f"suspected for {self.config.suspect_timeout:.1f} s, not refuted")

    # ---- members -------------------------------------------------------------------------------

    def hello_message(self) -> wire.Hello:
        address = self.peers.address
        port = address[1] if isinstance(address, tuple) else 0
        return wire.Hello(self.node_id, self.block_size, self.tag,
                          self.peers.datagram_size, self.zone, port)

    def accept_hello(self, msg: wire.Hello, host: str) -> bool:
        """Admit a member from its HELLO; False (and one log line) when it does not fit."""
        if msg.block_size != self.block_size or msg.cluster_tag != self.tag:
            if msg.node_id not in self._refused:
                log.warning("ignoring node %s at %s: block size %d / cluster tag %s differ "
                            "from ours (%d / %s)", msg.node_id.hex()[:12], host, msg.block_size,
                            msg.cluster_tag.hex(), self.block_size, self.tag.hex())
            self._refused.add(msg.node_id, self.clock.now())
            self.stats["hellos_refused"] += 1
            return False
        if msg.node_id == self.node_id or self.peers.expelled(msg.node_id):
            return False
        if msg.max_datagram_size != self.peers.datagram_size and msg.node_id not in self.members:
            log.warning("node %s at %s uses %d-byte QUIC datagrams, this node %d: set "
                        "max_datagram_size alike on both (no path-MTU discovery)",
                        msg.node_id.hex()[:12], host, msg.max_datagram_size,
                        self.peers.datagram_size)
        now = self.clock.now()
        address: Address = (host, msg.port) if msg.port else host
        self.membership.add_member(msg.node_id, _addr(address), msg.zone, now)
        state = self.membership.member(msg.node_id)
        m = self.members.get(msg.node_id) or self._pending.get(msg.node_id)
        if m is None:
            m = Member(msg.node_id, address, msg.zone, now)
        else:
            m.last_seen = now
            m.address = address
        if state is not None and state.state in (ms.State.DEAD, ms.State.LEFT):
            # Membership holds it dead or left: admitted once it refutes that (a restarted node
            # does so at the SYNC add_member just sent it); a node that is leaving never will.
            self._pending[msg.node_id] = m
        elif msg.node_id not in self.members:
            self._admit(m)
        self._flush()
        return True

    def _admit(self, m: Member) -> None:
        self.members[m.node_id] = m
        self.stats["members_up"] += 1
        log.info("member up: %s at %s:%d zone %s", m.node_id.hex()[:12], m.address[0],
                 m.address[1], m.zone)

    def touch(self, node_id: bytes | None = None, address: Address = None) -> None:
        """Any exchange with a member proves it alive, not only an ACK to a PING: it is fed to
        membership as an ACK, so a member busy serving blocks on a loaded host is not suspected
        for answering pings late."""
        m = self.members.get(node_id) if node_id is not None else None
        if m is None and address is not None:
            key = _parse(address) if not isinstance(address, tuple) else address
            m = next((x for x in self.members.values() if x.address == key), None)
        if m is not None:
            m.last_seen = self.clock.now()
            self.membership.heard_from(m.node_id, m.last_seen)
            self._flush()

    def add_discovered(self, node_id: bytes, address: Address) -> None:
        """mDNS saw a peer: greet it now and each round until it answers (it becomes a member
        when it does), for DISCOVERED_TTL at most; at most MAX_REMEMBERED such addresses."""
        if node_id != self.node_id and node_id not in self.members and \
                address not in self.static and not self.peers.expelled(node_id):
            self._discovered.add(address, self.clock.now())
            if ("hello", address) not in self._pinging:
                self._spawn(self._hello(address), ("hello", address))

    def _down(self, m: Member, why: str) -> None:
        if self.members.pop(m.node_id, None) is not None:
            self.remote.forget(m.node_id)
            self.stats["members_down"] += 1
            log.info("member down: %s (%s)", m.node_id.hex()[:12], why)
            # Requests in flight to it (a reader waiting on its owner) fail now, not after the
            # transport's own timeouts: the ladder goes on to the next rung.
            self.peers.disconnect(m.address, why)

    def leave(self, node_id: bytes) -> None:
        """`node_id` said LEAVE: drop it now."""
        m = self.members.get(node_id)
        if m is not None:
            self._down(m, "left")

    def expel(self, node_id: bytes) -> None:
        """The peer service caught `node_id` lying once too often: drop it from this node's
        view (it is not admitted again while the peer service holds it expelled)."""
        self._pending.pop(node_id, None)
        m = self.members.get(node_id)
        if m is not None:
            self.stats["members_expelled"] += 1
            self._down(m, "expelled: it sent bytes that do not match their digest")

    def ignore(self, node_id: bytes) -> None:
        """Drop `node_id` and do not greet it when gossip names it (it may still greet us)."""
        self._refused.add(node_id, self.clock.now())
        m = self.members.get(node_id)
        if m is not None:
            self._down(m, "ignored")

    def remembered(self) -> dict[str, int]:
        """How many peers each of this shell's tables holds (all bounded or pruned)."""
        return {"members": len(self.members), "pending": len(self._pending),
                "refused": len(self._refused), "discovered": len(self._discovered),
                "tasks": len(self._pinging) + len(self._sending),
                "summaries": self.remote.count()}

    def live(self, zone: str | None = None) -> list[Member]:
        z = self.zone if zone is None else zone
        return [m for m in self.members.values() if m.zone == z and not m.suspect]

    async def _hello(self, address: Address) -> None:
        try:
            reply = await self.peers.request(address, self.hello_message())
        except Exception as e:  # unreachable, timed out or misbehaved: greeted again later
            self.peers.count_error()
            if isinstance(e, AuthenticationError) and address not in self._refused_by:
                self._refused_by.add(address, self.clock.now())  # it is retried every round
                log.warning("peer %s refused this node: %s (is the cluster credential the "
                            "same on both?)", _addr(address), e)
            else:
                log.info("HELLO to %s failed: %s", _addr(address), e)
            return
        if isinstance(reply, wire.Hello):
            self.accept_hello(reply, address[0] if isinstance(address, tuple) else address)

    # ---- summaries -----------------------------------------------------------------------------

    def on_stored(self, digest: bytes) -> None:
        self.summary.add(digest)

    async def _send_summaries(self, now: float) -> None:
        generation, delta, full = self.summary.publish(now)

        async def send(m: Member) -> None:
            msg: wire.Summary | wire.SummaryDelta
            if delta is not None and m.summary_generation == generation - 1:
                msg = wire.SummaryDelta(self.node_id, generation - 1, generation, delta)
                size = len(delta)
            else:
                msg, size = wire.Summary(self.node_id, generation, full), len(full)
            try:
                reply = await self.peers.request(m.address, msg, max_reply=wire.MAX_FRAME)
            except Exception:  # unreachable or timed out: the full filter next time
                m.summary_generation = 0
                return
            if isinstance(reply, wire.Ack) and reply.seq == generation:
                m.summary_generation = generation
                self.stats["summaries_sent"] += 1
                self.stats["summary_bytes_sent"] += size
            else:
                m.summary_generation = 0  # it lacked the base: the full filter next time

        await asyncio.gather(*(send(m) for m in list(self.members.values())))

    def accept_summary(self, msg: wire.Summary | wire.SummaryDelta) -> wire.Message:
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
        address = self.peers.address
        status = {"node_id": self.node_id.hex(), "zone": self.zone, "pid": os.getpid(),
                  "address": _addr(address) if address is not None else None,
                  "time": time.time(), "ping_interval": self.config.ping_interval,
                  "summary_generation": self.summary.generation,
                  "summary_bytes": self.summary.filter.nbytes, "members": self.describe()}
        if self.remote_zones is not None:  # the DHT's zones heard from (wan/dht.py)
            status["remote_zones"] = self.remote_zones()
        path = os.path.join(self.config.cache_dir, STATUS_FILE)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(status, f)
            os.replace(tmp, path)
        except OSError as e:
            log.debug("cannot write %s: %s", path, e)

    def describe(self) -> list[dict[str, Any]]:
        """Live members with zone, address and summary size (for `meshcache peers`)."""
        now = self.clock.now()
        return [{"node_id": m.node_id.hex(), "address": _addr(m.address),
                 "zone": m.zone, "state": "suspect" if m.suspect else "alive",
                 "summary_bytes": self.remote.size(m.node_id),
                 "summary_generation": self.remote.generation(m.node_id),
                 "last_seen_s": round(now - m.last_seen, 2)}
                for m in sorted(self.members.values(), key=lambda m: m.node_id)]

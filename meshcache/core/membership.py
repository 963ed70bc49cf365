"""SWIM membership with parts of Lifeguard, as a pure sans-I/O object: who is alive, and since when.

Shaped like aioquic's QuicConnection: inputs take the current time (`add_member`, `receive` or
the `on_*` methods, `handle_timer(now)`), outputs are drained by the shell (`messages_to_send()`,
`get_timer()`, `next_event()`). No sockets, no clock, no asyncio: a simulation of a thousand
nodes drives the same objects with a fake clock (tests/test_membership.py).

The protocol (SWIM, Das et al. 2002, with parts of Lifeguard, Dadgar et al. 2018, and the
choices of hashicorp/memberlist):

- Every `ping_interval` one member is probed, round-robin over a shuffled list (new members are
  inserted at a random place), so each member is probed by this node within 2 intervals.
- Probe: PING(seq); no ACK within `ping_timeout` -> PING_REQ(seq, target) to `indirect_checks`
  random members, who ping the target and forward its ACK. No ACK by the end of the interval ->
  the target is *suspected* (local state and a gossiped rumor).
- A suspect that is not refuted within `suspect_timeout` is declared *dead* (gossiped).
- A member that hears it is suspected (or declared dead, or left) refutes by bumping its
  incarnation number and gossiping ALIVE(incarnation). Rumors about a member are ordered by
  incarnation: ALIVE(i) beats SUSPECT(j) iff i > j; SUSPECT and DEAD/LEFT beat ALIVE of the same i.
- Lifeguard's buddy system: a message to a member that we hold suspect (or dead) carries that
  rumor first, so the member refutes at its next exchange rather than when gossip reaches it.
- Gossip rides on PING, ACK and PING_REQ: up to `max_piggyback` updates each, the least sent
  first (newest first among equals), each sent `retransmit_mult * ceil(log10(n + 2))` times
  (memberlist's queue). Our own ALIVE fills any room left.
- News of failure or refutation (SUSPECT, DEAD, LEFT, a higher incarnation) is also pushed at
  once in a GOSSIP message to `indirect_checks` random members, who push it on when it is news
  to them: a suspicion and its refutation cross the mesh in a few round trips, not in probe
  rounds (memberlist's separate gossip timer, spent only when there is news).
- Join and anti-entropy: on `add_member` of a new member (at most once per `ping_interval`) a
  push-pull SYNC of the full table (memberlist's push/pull); the answer holds only the rows the
  asker lacks. Periodic syncs with a random member run every `min_sync_interval` while they
  bring news (a mesh forming or healing) and back off, doubling, to `sync_interval` when they
  do not. Rows that are merely new members learned by SYNC are not re-gossiped (they travel by
  sync; gossip stays free for failures), which is what lets 1000 nodes joining at once converge
  in seconds.
- Graceful leave: `leave(now)` sends LEAVE to every member and gossips LEFT.
- Outside evidence: `heard_from(node, now)` (the shell saw another exchange with it succeed)
  counts as an ACK to a probe of it, and tells it at once if we hold it suspect.
- Own stalls: a `handle_timer` more than 2 intervals late does not fail the probe in progress
  and moves suspicion deadlines by the stall (this node was frozen, not the members).

Left out: Lifeguard's dynamic suspicion timeout (confirmations shorten it) and its local health
multiplier (a slow node probes less eagerly); memberlist's gossip-to-the-dead; any encryption
or authentication (the shell's transport does that).

Messages are small frozen dataclasses (`Ping`, `Ack`, `PingReq`, `Leave`, `Sync`, `Gossip`,
each field an int, bytes, str or a tuple of `Update`, a NamedTuple) so the shell can map them
one to one onto CBOR arrays in wire.py. The shell must know who sent each message (the
authenticated connection's node id) and pass it as `from_id`. Events: `MemberUp` (new, or back from suspect/dead), `MemberSuspect`,
`MemberDown` (dead), `MemberLeft`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from itertools import islice
from typing import Iterable, NamedTuple, Union

__all__ = [
    "State", "Member", "Update", "Ping", "Ack", "PingReq", "Leave", "Sync", "Gossip", "Message",
    "MemberUp", "MemberSuspect", "MemberDown", "MemberLeft", "Event", "Membership",
]


class State(IntEnum):
    """A member's state; the int is what goes on the wire."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass
class Member:
    """One node as this node sees it."""

    node_id: bytes
    addr: str
    zone: str
    state: State = State.ALIVE
    incarnation: int = 0
    since: float = 0.0  # when `state` was entered (this node's clock)
    suspect_deadline: float = 0.0  # SUSPECT: when it is declared dead unless refuted
    knows_us: bool = False  # it has sent us a PING/PING_REQ/SYNC: our own ALIVE is not needed
    told_at: float = -math.inf  # when `heard_from` last told it of its suspicion


def _copy(m: Member) -> Member:
    """A shallow copy of a member (dataclasses.replace is several times slower)."""
    c = Member.__new__(Member)
    c.__dict__.update(m.__dict__)
    return c


# ---- messages --------------------------------------------------------------------------------------

class Update(NamedTuple):
    """A gossiped rumor: node `node_id` is in `state` at `incarnation` (addr/zone set for ALIVE).

    A NamedTuple rather than a dataclass: full tables of them are built and merged on every
    push-pull, and tuples are several times cheaper to make.
    """

    node_id: bytes
    incarnation: int
    state: State
    addr: str = ""
    zone: str = ""


@dataclass(frozen=True)
class Ping:
    """PING: probe; the receiver answers ACK(seq) to the sender. Carries gossip."""

    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class Ack:
    """ACK: the answer to PING(seq) (or one forwarded for a PING_REQ). Carries gossip."""

    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class PingReq:
    """PING_REQ: please ping `target_id` at `target_addr` and send me ACK(seq) if it answers."""

    seq: int
    target_id: bytes
    target_addr: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class Leave:
    """LEAVE: the sender is shutting down at `incarnation`; drop it now (graceful leave)."""

    node_id: bytes
    incarnation: int = 0


@dataclass(frozen=True)
class Sync:
    """SYNC: the sender's whole table (push-pull); `reply` asks the receiver to send its own."""

    members: tuple[Update, ...]
    reply: bool = False


@dataclass(frozen=True)
class Gossip:
    """GOSSIP: rumors pushed at once, not waiting for a probe to carry them; no answer."""

    updates: tuple[Update, ...]


Message = Union[Ping, Ack, PingReq, Leave, Sync, Gossip]


# ---- events ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemberUp:
    """A member is alive: new, or back after suspicion/death (its incarnation refuted it)."""

    node_id: bytes
    addr: str
    zone: str
    incarnation: int


@dataclass(frozen=True)
class MemberSuspect:
    """A member failed a probe somewhere; declared down after suspect_timeout unless refuted."""

    node_id: bytes
    addr: str
    zone: str
    incarnation: int


@dataclass(frozen=True)
class MemberDown:
    """A member was suspected for suspect_timeout without refuting: treat it as gone."""

    node_id: bytes
    addr: str
    zone: str
    incarnation: int


@dataclass(frozen=True)
class MemberLeft:
    """A member left gracefully."""

    node_id: bytes
    addr: str
    zone: str
    incarnation: int


Event = Union[MemberUp, MemberSuspect, MemberDown, MemberLeft]
_EVENT = {State.ALIVE: MemberUp, State.SUSPECT: MemberSuspect, State.DEAD: MemberDown,
          State.LEFT: MemberLeft}


@dataclass
class _Probe:
    seq: int
    target: bytes
    indirect_at: float
    indirect_sent: bool = False
    acked: bool = False


@dataclass
class _Relay:
    requester: bytes
    seq: int
    expires: float


class _Broadcasts:
    """memberlist's TransmitLimitedQueue: one pending rumor per node, least-sent first."""

    def __init__(self) -> None:
        self.buckets: list[dict[bytes, Update]] = [{}]  # index = times sent
        self.where: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.where)

    def add(self, u: Update) -> None:
        old = self.where.pop(u.node_id, None)
        if old is not None:
            del self.buckets[old][u.node_id]
        self.buckets[0][u.node_id] = u
        self.where[u.node_id] = 0

    def take(self, limit: int, max_sends: int) -> list[Update]:
        """Up to `limit` rumors, least-sent first (newest first among equals, as memberlist),
        each at most once; a rumor sent `max_sends` times is dropped."""
        picked: list[tuple[int, bytes]] = []
        for sent, bucket in enumerate(self.buckets):
            if len(picked) >= limit:
                break
            if not bucket:
                continue
            if sent >= max_sends:  # over the limit (n shrank): drop
                for nid in bucket:
                    del self.where[nid]
                bucket.clear()
                continue
            picked.extend((sent, nid) for nid in islice(reversed(bucket), limit - len(picked)))
        # Move the picked rumors up a bucket only now, so one message never carries one twice.
        out: list[Update] = []
        for sent, nid in picked:
            u = self.buckets[sent].pop(nid)
            out.append(u)
            if sent + 1 >= max_sends:
                del self.where[nid]
            else:
                if sent + 1 == len(self.buckets):
                    self.buckets.append({})
                self.buckets[sent + 1][nid] = u
                self.where[nid] = sent + 1
        return out


class Membership:
    """The membership table and failure detector of one node (pure: no I/O, no clock)."""

    def __init__(self, self_id: bytes, self_addr: str, zone: str, *, ping_interval: float = 1.0,
                 ping_timeout: float | None = None, suspect_timeout: float = 5.0,
                 indirect_checks: int = 3, seed: int | None = None, incarnation: int = 0,
                 max_piggyback: int = 16, retransmit_mult: int = 4,
                 sync_interval: float | None = None, min_sync_interval: float | None = None,
                 dead_retention: float | None = None) -> None:
        if ping_interval <= 0 or suspect_timeout < 0:
            raise ValueError("ping_interval must be > 0 and suspect_timeout >= 0")
        self.self_id, self.self_addr, self.zone = self_id, self_addr, zone
        self.ping_interval = ping_interval
        self.ping_timeout = ping_interval / 2 if ping_timeout is None else ping_timeout
        if not 0 < self.ping_timeout <= ping_interval:
            raise ValueError("ping_timeout must be in (0, ping_interval]")
        self.suspect_timeout = suspect_timeout
        self.indirect_checks = indirect_checks
        # Pass e.g. wall-clock seconds, so that a restart outranks rumors of the old life.
        self.incarnation = incarnation
        self.max_piggyback = max_piggyback
        self.retransmit_mult = retransmit_mult
        self.sync_interval = 30 * ping_interval if sync_interval is None else sync_interval
        self.dead_retention = (max(30.0, 6 * suspect_timeout) if dead_retention is None
                               else dead_retention)
        self.rng = random.Random(seed)
        self.members: dict[bytes, Member] = {}
        self._changes = 0  # rows changed so far (news counter for push-pull pacing)
        self._rows: dict[bytes, Update] = {}  # each member's row of the SYNC table, kept current
        self._urgent: dict[bytes, Update] = {}  # news to push at the next messages_to_send()
        self.left = False
        self._out: list[tuple[str, Message]] = []
        self._events: deque[Event] = deque()
        self._gossip = _Broadcasts()
        self._seq = 0
        self._order: list[bytes] = []  # round-robin probe order (shuffled)
        self._probe: _Probe | None = None
        self._next_probe: float | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspects: list[tuple[float, bytes]] = []  # heap of (deadline, node id)
        self._next_sync: float | None = None
        self._last_join_sync = -math.inf
        # Push-pull period: back to `min_sync_interval` while syncs bring news (a mesh forming
        # or healing), doubling up to `sync_interval` while they bring none.
        self.min_sync_interval = (2 * ping_interval if min_sync_interval is None
                                  else min_sync_interval)
        self._sync_gap = self.sync_interval
        self._tombstones: deque[tuple[float, bytes]] = deque()
        self._max_sends = retransmit_mult  # sends per rumor: mult * ceil(log10(n + 2))
        self.stats = {"probes": 0, "probes_failed": 0, "indirect_probes": 0, "refutations": 0,
                      "stalls_forgiven": 0}
        self._last_tick: float | None = None  # the last handle_timer (stall detection)

    # ---- inputs ----------------------------------------------------------------------------------

    def add_member(self, node_id: bytes, addr: str, zone: str, now: float) -> None:
        """A peer found by discovery or configured as static: probe it, and push-pull to join."""
        if node_id == self.self_id or self.left:
            return
        m = self.members.get(node_id)
        if m is not None and m.state in (State.ALIVE, State.SUSPECT):
            if (m.addr, m.zone) != (addr, zone):
                m.addr, m.zone = addr, zone
                self._record(m, gossip=False)
            return
        if m is None:
            # Its real incarnation comes with its own rumors; 0 loses to any of them.
            m = Member(node_id, addr, zone, State.ALIVE, 0, now)
            self.members[node_id] = m
            self._insert_order(node_id)
            self._emit(m)
            self._record(m, gossip=False)  # a guess at incarnation 0: its own rumors say better
        else:  # we hold it dead/left: ask it (a SYNC makes it refute with a higher incarnation)
            m.addr, m.zone = addr, zone
        if self._next_probe is None:
            self._next_probe = now
        if self._next_sync is None:
            self._next_sync = now + self._sync_gap
        # Join by push-pull, but one full table per interval: a discovery burst of many peers
        # is not a burst of tables (periodic syncs and gossip cover the rest).
        if now - self._last_join_sync >= self.ping_interval:
            self._last_join_sync = now
            self._send(addr, Sync(self._table(), reply=True))

    def receive(self, from_id: bytes, msg: Message, now: float) -> None:
        """Any message from member `from_id`; answers are queued for `messages_to_send()`."""
        if isinstance(msg, Ping):
            ack = self.on_ping(from_id, msg.seq, now, msg.updates)
            addr = self._addr(from_id)
            if ack is not None and addr is not None:
                self._out.append((addr, ack))
        elif isinstance(msg, Ack):
            self.on_ack(from_id, msg.seq, now, msg.updates)
        elif isinstance(msg, PingReq):
            self.on_ping_req(from_id, msg.seq, msg.target_id, msg.target_addr, now, msg.updates)
        elif isinstance(msg, Leave):
            if msg.node_id == from_id:
                self.on_leave(msg.node_id, now, msg.incarnation)
        elif isinstance(msg, Sync):
            answer = self.on_sync(from_id, msg.members, msg.reply, now)
            addr = self._addr(from_id)
            if answer is not None and addr is not None:
                self._send(addr, answer)
        elif isinstance(msg, Gossip):
            self.apply_updates(msg.updates, now)
        else:
            raise TypeError(f"not a membership message: {type(msg).__name__}")

    def on_ping(self, from_id: bytes, seq: int, now: float,
                updates: Iterable[Update] = ()) -> Ack | None:
        """A PING: apply its gossip and return the ACK to send back (None once we left)."""
        self.apply_updates(updates, now)
        m = self.members.get(from_id)
        if m is not None:
            m.knows_us = True
        if self.left:
            return None
        return Ack(seq, self._piggyback(from_id))

    def on_ack(self, from_id: bytes, seq: int, now: float, updates: Iterable[Update] = ()) -> None:
        """An ACK: our probe `seq` succeeded, or one we relay for a PING_REQ is forwarded."""
        self.apply_updates(updates, now)
        p = self._probe
        if p is not None and p.seq == seq:
            p.acked = True
            return
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.expires > now:
            addr = self._addr(relay.requester)
            if addr is not None:
                self._send(addr, Ack(relay.seq, self._piggyback(relay.requester)))

    def on_ping_req(self, from_id: bytes, seq: int, target_id: bytes, target_addr: str,
                    now: float, updates: Iterable[Update] = ()) -> None:
        """A PING_REQ: ping the target for the requester; its ACK is forwarded in `on_ack`."""
        self.apply_updates(updates, now)
        m = self.members.get(from_id)
        if m is not None:
            m.knows_us = True
        if self.left or target_id == self.self_id:
            return
        mine = self._next_seq()
        self._relays[mine] = _Relay(from_id, seq, now + self.ping_interval)
        self._send(target_addr, Ping(mine, self._piggyback(target_id)))

    def on_leave(self, node_id: bytes, now: float, incarnation: int | None = None) -> None:
        """A member said LEAVE: it is gone now (and everyone is told by gossip)."""
        m = self.members.get(node_id)
        if m is None or node_id == self.self_id:
            return
        inc = m.incarnation if incarnation is None else incarnation
        self.apply_updates([Update(node_id, inc, State.LEFT)], now)

    def on_sync(self, from_id: bytes, table: Iterable[Update], reply: bool,
                now: float) -> Sync | None:
        """A push-pull SYNC: merge the sender's table; return our answer when asked (None when
        not asked, the sender is unknown, or we left)."""
        table = tuple(table)
        # memberlist's rule: a "dead" from a full-state sync is only a suspicion here.
        news = self.apply_updates(table, now, from_sync=from_id)
        if news and not self.left:
            # Our pull brought news: the mesh is forming or healing; sync again soon.
            self._sync_gap = self.min_sync_interval
            soon = now + self.rng.uniform(0.5, 1.0) * self._sync_gap
            if self._next_sync is None or soon < self._next_sync:
                self._next_sync = soon
        m = self.members.get(from_id)
        if m is not None:
            m.knows_us = True
            if reply and not self.left:
                # The pull half: only the rows the sender does not already have as we do.
                theirs = {u[0]: u for u in table}
                delta = [r for r in self._rows.values() if theirs.get(r[0]) != r]
                return Sync((self._self_update(), *delta), reply=False)
        return None

    def heard_from(self, node_id: bytes, now: float) -> None:
        """Some other exchange with `node_id` succeeded (a block served, a request answered):
        it counts as an ACK to a probe of it in progress, so a member too busy to answer PINGs
        on time is not suspected. If we hold it suspect, tell it now (Lifeguard's buddy
        system, at most once an interval) so that it refutes."""
        p = self._probe
        if p is not None and p.target == node_id:
            p.acked = True
        m = self.members.get(node_id)
        if m is not None and m.state == State.SUSPECT and now - m.told_at >= self.ping_interval \
                and not self.left:
            m.told_at = now
            self._send(m.addr, Gossip((Update(node_id, m.incarnation, State.SUSPECT),)))

    def on_alive(self, node_id: bytes, incarnation: int, addr: str, zone: str, now: float) -> None:
        """Gossip: `node_id` is alive at `incarnation`."""
        self.apply_updates([Update(node_id, incarnation, State.ALIVE, addr, zone)], now)

    def on_suspect(self, node_id: bytes, incarnation: int, now: float) -> None:
        """Gossip: someone suspects `node_id` at `incarnation` (ourselves: we refute)."""
        self.apply_updates([Update(node_id, incarnation, State.SUSPECT)], now)

    def on_dead(self, node_id: bytes, incarnation: int, now: float) -> None:
        """Gossip: `node_id` was declared dead at `incarnation` (ourselves: we refute)."""
        self.apply_updates([Update(node_id, incarnation, State.DEAD)], now)

    def apply_updates(self, updates: Iterable[Update], now: float, *,
                      from_sync: bytes | None = None) -> int:
        """Merge gossiped rumors by SWIM's incarnation order; changes are gossiped on.

        From a SYNC (`from_sync` = its sender), members that are merely new to us are not
        re-gossiped: every node syncs, so those rows travel by sync; the sender's own row and
        changes of state (suspicion, death, refutation) still are, but a DEAD row of a table
        is taken as SUSPECT (memberlist's rule: let the member refute it first). Returns how
        many rows changed this node's table.
        """
        rows = self._rows
        before = self._changes
        rows_get = rows.get
        for u in updates:
            if rows_get(u[0]) == u:
                continue  # the common case in a full table: nothing new
            if from_sync is not None and u.state == State.DEAD:
                u = u._replace(state=State.SUSPECT)
            m = self.members.get(u.node_id)
            if u.node_id == self.self_id:
                self._about_me(u)
                continue
            if u.state == State.ALIVE:
                if m is None:
                    if not u.addr:
                        continue  # an ALIVE row must say where the member is
                    m = Member(u.node_id, u.addr, u.zone, State.ALIVE, u.incarnation, now)
                    self.members[u.node_id] = m
                    self._insert_order(u.node_id)
                    if self._next_probe is None:
                        self._next_probe = now
                    if self._next_sync is None:
                        self._next_sync = now + self.rng.uniform(0, self._sync_gap)
                    self._emit(m)
                    self._record(m, gossip=from_sync is None or from_sync == u.node_id,
                                 urgent=False)
                    continue
                if u.incarnation <= m.incarnation:
                    continue
                was, where = m.state, (m.addr, m.zone)
                m.incarnation = u.incarnation
                m.addr, m.zone = u.addr or m.addr, u.zone or m.zone
                if was != State.ALIVE:
                    m.state, m.since = State.ALIVE, now
                    if was in (State.DEAD, State.LEFT):
                        self._insert_order(u.node_id)
                    self._emit(m)
                elif (m.addr, m.zone) != where:
                    self._emit(m)
                # else: a refutation we had not doubted: pass it on, no event.
                self._record(m)
            elif m is None or u.incarnation < m.incarnation:
                continue
            elif u.state == State.SUSPECT:
                if m.state == State.ALIVE or (m.state == State.SUSPECT
                                              and u.incarnation > m.incarnation):
                    self._set_suspect(m, u.incarnation, now)
            elif m.state not in (State.DEAD, State.LEFT):  # DEAD or LEFT
                self._set_gone(m, u.state, u.incarnation, now)
        return self._changes - before

    def leave(self, now: float) -> None:
        """Leave gracefully: LEAVE to every member, LEFT gossiped; no more probes or answers."""
        if self.left:
            return
        self.left = True
        for m in self.members.values():
            if m.state in (State.ALIVE, State.SUSPECT):
                self._send(m.addr, Leave(self.self_id, self.incarnation))
        self._probe = None
        self._next_probe = self._next_sync = None

    def handle_timer(self, now: float) -> None:
        """Run everything due by `now`: indirect probes, probe rounds, suspicion expiry, syncs."""
        if self.left:
            return
        if self._last_tick is not None and self._probe is not None:
            stall = now - self._last_tick - 2 * self.ping_interval
            if stall > 0:
                self._forgive_stall(stall)
        self._last_tick = now
        p = self._probe
        if p is not None and not p.acked and not p.indirect_sent and now >= p.indirect_at:
            self._indirect(p, now)
        while self._suspects and self._suspects[0][0] <= now:
            deadline, nid = heapq.heappop(self._suspects)
            m = self.members.get(nid)
            if m is not None and m.state == State.SUSPECT and m.suspect_deadline == deadline:
                self._set_gone(m, State.DEAD, m.incarnation, now)
        if self._next_probe is not None and now >= self._next_probe:
            self._probe_round(now)
            nxt = self._next_probe + self.ping_interval
            self._next_probe = nxt if nxt > now else now + self.ping_interval
        if self._next_sync is not None and now >= self._next_sync and self.sync_interval > 0:
            self._next_sync = now + self._sync_gap
            self._sync_gap = min(2 * self._sync_gap, self.sync_interval)
            for m in self._random_alive(1):
                self._send(m.addr, Sync(self._table(), reply=True))

    # ---- outputs ---------------------------------------------------------------------------------

    def messages_to_send(self) -> list[tuple[str, Message]]:
        """Drain the messages to send, each as (address, message)."""
        if self._urgent:
            self._push_urgent()
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When `handle_timer` must next run (None: nothing scheduled)."""
        if self.left:
            return None
        times = [t for t in (self._next_probe, self._next_sync) if t is not None]
        p = self._probe
        if p is not None and not p.acked and not p.indirect_sent:
            times.append(p.indirect_at)
        if self._suspects:
            times.append(self._suspects[0][0])
        return min(times) if times else None

    def next_event(self) -> Event | None:
        """The next membership event for the shell, or None."""
        return self._events.popleft() if self._events else None

    def live_members(self, zone: str | None = None, include_suspect: bool = True) -> list[Member]:
        """Members not known to be down (copies; this node excluded), optionally of one zone."""
        ok = (State.ALIVE, State.SUSPECT) if include_suspect else (State.ALIVE,)
        return [_copy(m) for m in self.members.values()
                if m.state in ok and (zone is None or m.zone == zone)]

    def member(self, node_id: bytes) -> Member | None:
        """A copy of what this node knows of `node_id` (any state), or None."""
        m = self.members.get(node_id)
        return _copy(m) if m is not None else None

    # ---- probing ---------------------------------------------------------------------------------

    def _probe_round(self, now: float) -> None:
        p = self._probe
        if p is not None and not p.acked:
            self.stats["probes_failed"] += 1
            m = self.members.get(p.target)
            if m is not None and m.state == State.ALIVE:
                self._set_suspect(m, m.incarnation, now)
        self._probe = None
        n = len(self.members)  # memberlist's estimate too: dead members count until reaped
        self._max_sends = self.retransmit_mult * max(1, math.ceil(math.log10(n + 2)))
        for seq in [s for s, r in self._relays.items() if r.expires <= now]:
            del self._relays[seq]
        while self._tombstones and self._tombstones[0][0] <= now:
            _, nid = self._tombstones.popleft()
            m = self.members.get(nid)
            if m is not None and m.state in (State.DEAD, State.LEFT) and \
                    m.since + self.dead_retention <= now:
                del self.members[nid]
                self._rows.pop(nid, None)
        target = self._next_target()
        if target is None:
            return
        self.stats["probes"] += 1
        seq = self._next_seq()
        self._probe = _Probe(seq, target.node_id, now + self.ping_timeout)
        self._send(target.addr, Ping(seq, self._piggyback(target.node_id)))

    def _next_target(self) -> Member | None:
        for _ in range(2):
            while self._order:
                m = self.members.get(self._order.pop())
                if m is not None and m.state in (State.ALIVE, State.SUSPECT):
                    return m
            self._order = [nid for nid, m in self.members.items()
                           if m.state in (State.ALIVE, State.SUSPECT)]
            self.rng.shuffle(self._order)
        return None

    def _forgive_stall(self, stall: float) -> None:
        """The timer ran `stall` s later than it can (this process or its host was frozen): the
        silence was ours, not the members'. The probe in progress does not count as failed and
        suspicions get the stall added to their time to be refuted (in the spirit of Lifeguard's
        local health: a node that cannot keep time does not accuse others)."""
        self.stats["stalls_forgiven"] += 1
        p = self._probe
        if p is not None and not p.acked:
            p.acked = True  # not a failure: nobody could have been heard meanwhile
        if self._suspects:
            self._suspects = [(d + stall, nid) for d, nid in self._suspects]
            heapq.heapify(self._suspects)
            for m in self.members.values():
                if m.state == State.SUSPECT:
                    m.suspect_deadline += stall

    def _insert_order(self, node_id: bytes) -> None:
        """Put a new member at a random place of the probe order (swap in: O(1))."""
        order = self._order
        order.append(node_id)
        j = int(self.rng.random() * len(order))
        order[-1], order[j] = order[j], order[-1]

    def _indirect(self, p: _Probe, now: float) -> None:
        p.indirect_sent = True
        target = self.members.get(p.target)
        if target is None:
            return
        helpers = [m for m in self.members.values()
                   if m.state == State.ALIVE and m.node_id != p.target]
        k = min(self.indirect_checks, len(helpers))
        if k:
            self.stats["indirect_probes"] += 1
        for h in self.rng.sample(helpers, k):
            self._send(h.addr, PingReq(p.seq, p.target, target.addr, self._piggyback(h.node_id)))

    # ---- state changes ---------------------------------------------------------------------------

    def _set_suspect(self, m: Member, incarnation: int, now: float) -> None:
        m.state, m.incarnation, m.since = State.SUSPECT, incarnation, now
        m.suspect_deadline = now + self.suspect_timeout
        heapq.heappush(self._suspects, (m.suspect_deadline, m.node_id))
        self._emit(m)
        self._record(m)

    def _set_gone(self, m: Member, state: State, incarnation: int, now: float) -> None:
        m.state, m.incarnation, m.since = state, incarnation, now
        self._tombstones.append((now + self.dead_retention, m.node_id))
        self._emit(m)
        self._record(m)

    def _push_urgent(self) -> None:
        """Push news of failure or refutation at once to `indirect_checks` random members, who
        push it on when it is news to them too: a suspicion, death or refutation crosses the
        mesh in a few network round trips instead of waiting for probes to carry it (the
        piggybacked copies still cover what a push misses)."""
        urgent, self._urgent = self._urgent, {}
        if self.left:
            return
        rows = tuple(islice(urgent.values(), self.max_piggyback))
        for m in self._random_alive(self.indirect_checks, {u.node_id for u in rows}):
            self._send(m.addr, Gossip(rows))

    def _random_alive(self, k: int, exclude: Iterable[bytes] = ()) -> list[Member]:
        """Up to `k` distinct random ALIVE members not in `exclude` (by rejection sampling, so
        a large table is not scanned; a scan only when most members are not alive)."""
        ids = list(self.members)
        skip = set(exclude)
        out: list[Member] = []
        for _ in range(4 * k + 8):
            if len(out) >= k or not ids:
                return out
            m = self.members[ids[int(self.rng.random() * len(ids))]]
            if m.state == State.ALIVE and m.node_id not in skip:
                skip.add(m.node_id)
                out.append(m)
        rest = [m for m in self.members.values()
                if m.state == State.ALIVE and m.node_id not in skip]
        return out + self.rng.sample(rest, min(k - len(out), len(rest)))

    def _about_me(self, u: Update) -> None:
        """Rumors about this node: anything but ALIVE is refuted with a higher incarnation."""
        if self.left:
            return
        if u.state != State.ALIVE and u.incarnation >= self.incarnation:
            self.incarnation = u.incarnation + 1
            self.stats["refutations"] += 1
            me = self._self_update()
            self._gossip.add(me)
            self._urgent[self.self_id] = me
        elif u.state == State.ALIVE and u.incarnation > self.incarnation:
            # An older life of ours was louder (a restart without a higher incarnation).
            self.incarnation = u.incarnation + 1
            self._gossip.add(self._self_update())

    def _record(self, m: Member, gossip: bool = True, urgent: bool = True) -> None:
        """`m` changed: refresh its row of the SYNC table and (usually) gossip it; `urgent`
        news (all but a new member) is also pushed at once (`_push_urgent`)."""
        alive = m.state == State.ALIVE
        row = Update(m.node_id, m.incarnation, m.state, m.addr if alive else "",
                     m.zone if alive else "")
        self._rows[m.node_id] = row
        self._changes += 1
        if gossip:
            self._gossip.add(row)
            if urgent:
                self._urgent[m.node_id] = row

    def _emit(self, m: Member) -> None:
        self._events.append(_EVENT[m.state](m.node_id, m.addr, m.zone, m.incarnation))

    # ---- helpers ---------------------------------------------------------------------------------

    def _self_update(self) -> Update:
        return Update(self.self_id, self.incarnation, State.ALIVE, self.self_addr, self.zone)

    def _piggyback(self, to: bytes) -> tuple[Update, ...]:
        """Gossip for a message to `to`: what we think of it if not alive (Lifeguard's buddy
        system), our own ALIVE if it may not know us, then the least-sent rumors, and our own
        ALIVE anyway if there is room (`knows_us` is a guess: a relayed PING_REQ makes a
        member ping us without holding us in its table)."""
        out: list[Update] = []
        m = self.members.get(to)
        if m is not None and m.state != State.ALIVE:
            out.append(Update(to, m.incarnation, m.state))
        me = self._self_update()
        if m is None or not m.knows_us:
            out.append(me)
        room = self.max_piggyback - len(out)
        if room > 0 and len(self._gossip):
            out.extend(self._gossip.take(room, self._max_sends))
        if len(out) < self.max_piggyback and me not in out:
            out.append(me)
        return tuple(out)

    def _table(self) -> tuple[Update, ...]:
        return (self._self_update(), *self._rows.values())

    def _addr(self, node_id: bytes) -> str | None:
        m = self.members.get(node_id)
        return m.addr if m is not None else None

    def _send(self, addr: str, msg: Message) -> None:
        self._out.append((addr, msg))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

"""Penalties for peers, pure: how long one is avoided, and when a liar is expelled.

Two kinds of bad news about a peer: it *failed* (unreachable, stalled), and it is avoided for a
fixed time that does not grow; or it *lied* (bytes that do not hash to the digest it was asked
for, a reply that is not one the protocol allows, an oversized announcement), and each lie
doubles the time it is avoided, from `base` up to `cap`. After `expel_after` lies, counted
while the record lasts, the peer is *expelled*: this node drops it from its view and closes its
connections for `expel_for`. A record is forgotten `forget_after` seconds after its last lie,
and the box never holds more than `max_entries` keys (the soonest to lapse go first), so a
long life with many peers keeps it bounded. Time is an argument; keys are addresses or node ids.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

__all__ = ["Record", "PenaltyBox"]


@dataclass
class Record:
    until: float = 0.0  # avoided until then
    lies: int = 0  # proven lies while the record lasts
    last_lie: float = float("-inf")
    expelled_until: float = 0.0


class PenaltyBox:
    """Avoid-until times and lie counts per key, bounded and pruned."""

    def __init__(self, *, base: float = 30.0, cap: float = 3600.0, expel_after: int = 3,
                 expel_for: float = 3600.0, forget_after: float = 86400.0,
                 max_entries: int = 4096) -> None:
        if base <= 0 or cap < base or expel_after < 1 or max_entries < 1:
            raise ValueError("base > 0, cap >= base, expel_after >= 1, max_entries >= 1")
        self.base, self.cap = base, cap
        self.expel_after, self.expel_for = expel_after, expel_for
        self.forget_after = forget_after
        self.max_entries = max_entries
        self._records: dict[object, Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    def failed(self, key: object, now: float, hold: float) -> None:
        """`key` failed (not a lie): avoid it for `hold` seconds (never shortening a penalty)."""
        r = self._record(key, now)
        r.until = max(r.until, now + hold)

    def lied(self, key: object, now: float) -> Record:
        """`key` was caught in a lie: the avoid time doubles with each one; expelled after
        `expel_after`. Returns the record (a copy) after this lie."""
        r = self._record(key, now)
        r.lies += 1
        r.last_lie = now
        r.until = max(r.until, now + self.penalty(r.lies))
        if r.lies >= self.expel_after:
            r.expelled_until = max(r.expelled_until, now + self.expel_for)
        return Record(r.until, r.lies, r.last_lie, r.expelled_until)

    def penalty(self, lies: int) -> float:
        """Seconds avoided after the `lies`-th lie: base, 2*base, 4*base, ... up to cap."""
        return min(self.cap, self.base * 2.0 ** min(max(lies, 1) - 1, 64))

    def penalized(self, key: object, now: float) -> bool:
        r = self._records.get(key)
        return r is not None and (r.until > now or r.expelled_until > now)

    def expelled(self, key: object, now: float) -> bool:
        r = self._records.get(key)
        return r is not None and r.expelled_until > now

    def until(self, key: object) -> float:
        """When `key` may be asked again (0.0 when it has no record)."""
        r = self._records.get(key)
        return 0.0 if r is None else max(r.until, r.expelled_until)

    def lies(self, key: object) -> int:
        r = self._records.get(key)
        return 0 if r is None else r.lies

    def prune(self, now: float) -> None:
        """Forget records that no longer change anything: lapsed, and no lie within
        forget_after."""
        dead = [k for k, r in self._records.items() if self._lapsed(r, now)]
        for k in dead:
            del self._records[k]

    def _lapsed(self, r: Record, now: float) -> bool:
        return r.until <= now and r.expelled_until <= now and \
            now - r.last_lie >= self.forget_after

    def _record(self, key: object, now: float) -> Record:
        r = self._records.get(key)
        if r is not None:
            return r
        if len(self._records) >= self.max_entries:
            self.prune(now)
            if len(self._records) >= self.max_entries:  # drop the soonest to lapse, an eighth
                n = len(self._records) - self.max_entries + 1 + self.max_entries // 8
                for k in heapq.nsmallest(n, self._records,
                                         key=lambda k: self._lapse_time(self._records[k])):
                    del self._records[k]
        r = self._records[key] = Record()
        return r

    def _lapse_time(self, r: Record) -> float:
        return max(r.until, r.expelled_until, r.last_lie + self.forget_after)

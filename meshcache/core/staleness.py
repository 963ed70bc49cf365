"""Origin outage policy: serve the last known version for a while, fail fast on the rest.

When a stat fails because the origin is unreachable or erring (not when it answers "no such
object"), a node may keep serving the last version it confirmed, for `stale_if_error` seconds
after that confirmation (as HTTP's stale-if-error, RFC 5861). After one failure an origin is
treated as down for `retry_after` seconds: stats are not sent (no pile of timeouts); reads of
what the node knows are served stale, the rest fail at once with the origin's last error.
A node that knows no version of a URL asks its zone (read/zoneversion.py): a member answers with
the version its origin last confirmed and how long ago (`last_confirmed`), and the asker keeps it
as if confirmed then (`heard`), so it is served under the same window and passed on unaged.
Pure: callers pass `now` (monotonic seconds).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from meshcache.core.version import ObjectVersion


MAX_REMEMBERED = 65536  # URLs (and origins) whose last confirmation or failure is kept

def origin_of(url: str) -> str:
    """The origin a URL lives at, as outages are tracked: scheme://host[:port] (file:// is one)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}://"


def may_serve_stale(confirmed_at: float | None, now: float, stale_if_error: float) -> bool:
    """Whether a version the origin confirmed at `confirmed_at` may still be served while the
    origin fails: within `stale_if_error` seconds of that confirmation (0 turns this off)."""
    return confirmed_at is not None and stale_if_error > 0 and \
        0 <= now - confirmed_at <= stale_if_error


@dataclass(frozen=True)
class Outage:
    """An origin seen failing: when it last failed, and how."""

    origin: str
    since: float
    last_failure: float
    error: str


class OutagePolicy:
    """Tracks which origins are down and what each URL's last confirmed version is."""

    def __init__(self, stale_if_error: float, retry_after: float) -> None:
        self.stale_if_error = stale_if_error
        self.retry_after = retry_after
        self._confirmed: OrderedDict[str, tuple[ObjectVersion, float]] = OrderedDict()
        self._outages: OrderedDict[str, Outage] = OrderedDict()

    def confirmed(self, version: ObjectVersion, now: float) -> None:
        """The origin answered a stat with `version`: it is up and this is the URL's version."""
        self._keep(version, now)
        self._outages.pop(origin_of(version.url), None)

    def _keep(self, version: ObjectVersion, confirmed_at: float) -> None:
        self._confirmed[version.url] = (version, confirmed_at)
        self._confirmed.move_to_end(version.url)
        if len(self._confirmed) > MAX_REMEMBERED:  # the least recently confirmed go first
            self._confirmed.popitem(last=False)

    def heard(self, version: ObjectVersion, confirmed_at: float) -> None:
        """A zone member reports the origin confirmed `version` at `confirmed_at` (its age taken
        from now): kept unless this node knows a later confirmation. Ends no outage."""
        old = self._confirmed.get(version.url)
        if old is None or old[1] < confirmed_at:
            self._keep(version, confirmed_at)

    def last_confirmed(self, url: str, now: float) -> tuple[ObjectVersion, float] | None:
        """(version, seconds since the origin confirmed it) while it may still be served stale;
        what this node tells a zone member that asks (None: nothing to tell)."""
        entry = self._confirmed.get(url)
        if entry is None or not may_serve_stale(entry[1], now, self.stale_if_error):
            return None
        return entry[0], now - entry[1]

    def forget(self, url: str) -> None:
        """The origin said the object is gone: nothing of it may be served stale."""
        self._confirmed.pop(url, None)

    def failed(self, url: str, error: str, now: float) -> None:
        """A stat or read of `url` failed because the origin did not answer properly."""
        origin = origin_of(url)
        old = self._outages.get(origin)
        self._outages[origin] = Outage(origin, old.since if old else now, now, error)
        self._outages.move_to_end(origin)
        if len(self._outages) > MAX_REMEMBERED:
            self._outages.popitem(last=False)

    def down(self, url: str, now: float) -> Outage | None:
        """The outage of the URL's origin when it failed less than `retry_after` ago: do not
        ask it again yet."""
        o = self._outages.get(origin_of(url))
        return o if o is not None and now - o.last_failure < self.retry_after else None

    def stale(self, url: str, now: float) -> ObjectVersion | None:
        """The version to serve while the URL's origin fails, or None (then the read fails)."""
        known = self.last_confirmed(url, now)
        return None if known is None else known[0]

    def outage_message(self, url: str, outage: Outage, now: float, asked: int = 0) -> str:
        """The error of a read that cannot be served: names the origin and how long it is down
        (and how many zone members were asked for a version in vain)."""
        where = f" here or by the {asked} zone member{'s' * (asked != 1)} asked" if asked else ""
        return (f"{url}: the origin {outage.origin} is unreachable (failing for "
                f"{now - outage.since:.0f} s: {outage.error}) and no copy of this object is known"
                f"{where} to be current (stale_if_error = {self.stale_if_error:g} s)")

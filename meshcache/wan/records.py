"""Provider records: DHT key -> a bounded set of (node id, zone, address, expiry). Pure: time is
an argument.

Keys are 160-bit Kademlia ids: a block's key is the first 20 bytes of its BLAKE3 digest (already
uniform; the fetched bytes are verified against the whole digest anyway), a version's manifest
key is a hash of the version key under its own label (as is the key of the nodes pulling a
version right now), and a node's DHT id is a hash of its
meshcache node id (so a node cannot pick its place in the keyspace apart from its identity).
A record names the node that published it (the authenticated sender) and carries a TTL in
milliseconds on the wire, never a clock reading: each receiver sets its own expiry.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import blake3

from meshcache.core.wire import MAX_ADDR, MAX_ID, MAX_ZONE, WireError

KEY_SIZE = 20
MAX_PROVIDERS = 16       # records kept per key (those that expire last)
MAX_KEYS = 200_000       # keys one node stores for others
MAX_TTL = 24 * 3600.0    # a record asks to live at most this long


def block_key(digest: bytes) -> bytes:
    """The DHT key of a block."""
    return digest[:KEY_SIZE]


def manifest_key(version_key: bytes) -> bytes:
    """The DHT key under which holders of a version's manifest are announced."""
    return blake3.blake3(b"meshcache manifest\0" + version_key).digest(length=KEY_SIZE)


def pull_key(version_key: bytes) -> bytes:
    """The DHT key under which the nodes pulling a version across the WAN right now announce
    themselves (short-lived records: cooperative striping, core/stripe.py)."""
    return blake3.blake3(b"meshcache pull\0" + version_key).digest(length=KEY_SIZE)


def dht_id(node_id: bytes) -> bytes:
    """A node's Kademlia id, bound to its meshcache node id."""
    return blake3.blake3(b"meshcache dht id\0" + node_id).digest(length=KEY_SIZE)


@dataclass(frozen=True)
class ProviderRecord:
    """`node_id` (in `zone`, serving blocks over QUIC at host:port) holds the key's block or
    manifest until `expires` (this node's clock)."""

    node_id: bytes
    zone: str
    host: str
    port: int
    expires: float

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def live(self, now: float) -> bool:
        return self.expires > now

    def to_wire(self, now: float) -> list[object]:
        return [self.node_id, self.zone, self.host, self.port,
                max(0, int((self.expires - now) * 1000))]

    @classmethod
    def from_wire(cls, row: object, now: float, max_ttl: float = MAX_TTL) -> "ProviderRecord":
        """A record from a peer's reply, every field checked (raises WireError)."""
        if not isinstance(row, list) or len(row) != 5:
            raise WireError("a provider record is [node_id, zone, host, port, ttl_ms]")
        node_id, zone, host, port, ttl = row
        check_provider(node_id, zone, host, port)
        if type(ttl) is not int or ttl < 0:
            raise WireError("provider ttl: expected an int >= 0")
        return cls(node_id, zone, host, port, now + min(ttl / 1000, max_ttl))


def check_provider(node_id: object, zone: object, host: object, port: object) -> None:
    """Raise WireError unless these are a plausible node id, zone, host and port."""
    if type(node_id) is not bytes or not 1 <= len(node_id) <= MAX_ID:
        raise WireError("provider node id: expected 1..64 bytes")
    if type(zone) is not str or len(zone) > MAX_ZONE:
        raise WireError("provider zone: expected a short string")
    if type(host) is not str or not 0 < len(host) <= MAX_ADDR:
        raise WireError("provider host: expected a short string")
    if type(port) is not int or not 0 < port < 65536:
        raise WireError("provider port: expected 1..65535")


class ProviderTable:
    """The records this node stores for the DHT, bounded in keys and in providers per key."""

    def __init__(self, max_keys: int = MAX_KEYS, max_providers: int = MAX_PROVIDERS) -> None:
        self.max_keys = max_keys
        self.max_providers = max_providers
        self._keys: OrderedDict[bytes, dict[bytes, ProviderRecord]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: bytes, record: ProviderRecord, now: float) -> bool:
        """Store or renew `record` under `key`; False when it is expired or loses its place."""
        if not record.live(now):
            return False
        recs = self._keys.get(key)
        if recs is None:
            recs = self._keys[key] = {}
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)  # least recently announced key goes
        self._keys.move_to_end(key)
        recs[record.node_id] = record
        if len(recs) > self.max_providers:
            for rec in [r for r in recs.values() if not r.live(now)]:
                del recs[rec.node_id]
            if len(recs) > self.max_providers:
                soonest = min(recs.values(), key=lambda r: (r.expires, r.node_id))
                del recs[soonest.node_id]
                return soonest is not record
        return True

    def get(self, key: bytes, now: float) -> list[ProviderRecord]:
        """The live records of `key`, latest expiry first; expired ones are dropped."""
        recs = self._keys.get(key)
        if not recs:
            return []
        live = [r for r in recs.values() if r.live(now)]
        if len(live) != len(recs):
            if live:
                self._keys[key] = {r.node_id: r for r in live}
            else:
                del self._keys[key]
        return sorted(live, key=lambda r: -r.expires)

    def cull(self, now: float) -> int:
        """Drop every expired record; returns how many keys went."""
        gone = [k for k in self._keys if not self.get(k, now)]
        return len(gone)

    def items(self, now: float) -> Iterator[tuple[bytes, list[ProviderRecord]]]:
        for key in list(self._keys):
            recs = self.get(key, now)
            if recs:
                yield key, recs

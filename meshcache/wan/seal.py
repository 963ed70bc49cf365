"""DHT datagrams sealed with a key derived from the cluster credential: pure, time passed in.

A datagram is ``MAGIC | timestamp (8 bytes, ms) | nonce (12) | ChaCha20-Poly1305(body)``; the
first 21 bytes are authenticated as associated data. The key is derived from the credential per
day (so one key seals a bounded number of datagrams with random nonces). `open` checks, cheapest
first: size, timestamp within `window` of now, the AEAD tag, then replay (a nonce seen within
the window, or a timestamp at or below the floor left by nonces the bounded cache forgot).
Without the credential one can neither read a datagram nor make one a node accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshcache.mesh.auth import derive_key

MAGIC = b"\xd7"
HEADER = 1 + 8 + 12
TAG = 16
MAX_DATAGRAM = 8192
WINDOW = 30.0  # seconds a datagram's timestamp may differ from the receiver's clock
MAX_NONCES = 1 << 17
_DAY_MS = 86_400_000
_LABEL = b"meshcache dht datagram key v1"


class SealError(Exception):
    """A datagram that is not from a credential holder, too old or new, or replayed."""


class Sealer:
    """Seals and opens this node's DHT datagrams; remembers recent nonces against replay."""

    def __init__(self, credential: bytes, window: float = WINDOW,
                 max_nonces: int = MAX_NONCES) -> None:
        self._root = derive_key(credential)
        self.window = window
        self.max_nonces = max_nonces
        self._keys: dict[int, ChaCha20Poly1305] = {}
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._floor = -1  # timestamps at or below this are refused (their nonces were forgotten)

    def _aead(self, day: int) -> ChaCha20Poly1305:
        aead = self._keys.get(day)
        if aead is None:
            if len(self._keys) > 4:
                self._keys.clear()
            key = hmac.new(self._root, _LABEL + day.to_bytes(8, "big"), hashlib.sha256).digest()
            aead = self._keys[day] = ChaCha20Poly1305(key)
        return aead

    def seal(self, body: bytes, now: float, nonce: bytes | None = None) -> bytes:
        ts = int(now * 1000)
        header = MAGIC + ts.to_bytes(8, "big") + (nonce or os.urandom(12))
        if len(header) + len(body) + TAG > MAX_DATAGRAM:
            raise ValueError(f"a DHT message of {len(body)} bytes does not fit one datagram")
        return header + self._aead(ts // _DAY_MS).encrypt(header[9:], body, header)

    def open(self, datagram: bytes, now: float) -> bytes:
        n = len(datagram)
        if n > MAX_DATAGRAM or n < HEADER + TAG or datagram[:1] != MAGIC:
            raise SealError("not a sealed DHT datagram")
        ts = int.from_bytes(datagram[1:9], "big")
        now_ms = int(now * 1000)
        if abs(now_ms - ts) > self.window * 1000:
            raise SealError("timestamp outside the window")
        header, nonce = datagram[:HEADER], datagram[9:HEADER]
        try:
            body = self._aead(ts // _DAY_MS).decrypt(nonce, datagram[HEADER:], header)
        except InvalidTag:
            raise SealError("not sealed with the cluster key") from None
        if ts <= self._floor or nonce in self._seen:
            raise SealError("replayed")
        self._remember(nonce, ts, now_ms)
        return body

    def _remember(self, nonce: bytes, ts: int, now_ms: int) -> None:
        seen = self._seen
        seen[nonce] = ts
        horizon = now_ms - int(self.window * 1000)
        while seen:  # drop what the window refuses anyway (oldest inserted first)
            first = next(iter(seen))
            if seen[first] >= horizon and len(seen) <= self.max_nonces:
                break
            old = seen.pop(first)
            if old >= horizon:  # forgotten while still inside the window: refuse older ones
                self._floor = max(self._floor, old)

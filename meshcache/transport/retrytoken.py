"""QUIC Retry tokens that cost microseconds, for the qh3 engine.

qh3's own handler RSA-encrypts every token (~0.4 ms of CPU each): under a flood of spoofed
Initials, where every one is answered with a Retry, that alone took most of a core and left a
credentialed peer's packets queued behind the flood for seconds. These tokens are authenticated,
not encrypted (what they carry, the client's address and two connection ids, is on the wire
anyway): the address, both connection ids and the issue time, then an HMAC-SHA256 tag (16 bytes)
under a random per-process key; a token is accepted for `lifetime` seconds after it was issued
(clients echo it at once: RFC 9000 section 8.1.4). Same interface as qh3.quic.retry.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
import time
from typing import Any

TAG = 16
LIFETIME = 30.0


def _address(addr: Any) -> bytes:
    return ipaddress.ip_address(addr[0]).packed + struct.pack("!H", addr[1])


class HmacRetryTokenHandler:
    """create_token / validate_token as qh3's QuicServer calls them."""

    def __init__(self, lifetime: float = LIFETIME, clock: Any = time.monotonic) -> None:
        self._key = os.urandom(32)
        self._lifetime = lifetime
        self._clock = clock

    def _tag(self, addr: Any, body: bytes) -> bytes:
        return hmac.new(self._key, _address(addr) + body, hashlib.sha256).digest()[:TAG]

    def create_token(self, addr: Any, original_destination_connection_id: bytes,
                     retry_source_connection_id: bytes) -> bytes:
        odcid, rscid = original_destination_connection_id, retry_source_connection_id
        body = (bytes([len(odcid)]) + odcid + bytes([len(rscid)]) + rscid
                + struct.pack("!Q", int(self._clock() * 1000)))
        return body + self._tag(addr, body)

    def validate_token(self, addr: Any, token: bytes) -> tuple[bytes, bytes]:
        """(original destination cid, retry source cid); ValueError for a token we did not
        issue to this address, or issued more than `lifetime` seconds ago."""
        body, tag = token[:-TAG], token[-TAG:]
        if len(token) <= TAG or not hmac.compare_digest(tag, self._tag(addr, body)):
            raise ValueError("invalid retry token")
        n = body[0]
        odcid = body[1:1 + n]
        m = body[1 + n]
        rscid = body[2 + n:2 + n + m]
        (issued,) = struct.unpack("!Q", body[2 + n + m:])
        if self._clock() * 1000 - issued > self._lifetime * 1000:
            raise ValueError("expired retry token")
        return odcid, rscid

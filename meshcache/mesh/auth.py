"""Cluster authentication: an HMAC challenge-response bound to the connection.

Both ends prove they hold the cluster credential without sending it: each sends a fresh nonce,
each answers with HMAC(K, role | channel binding | both nonces | both node ids), where K is
derived from the credential and the channel binding is the TLS exporter value of this very
connection (so a proof cannot be replayed on, or relayed to, another connection). Nothing else
is accepted on a connection until this succeeds.

The handshake objects are pure (bytes in, bytes out); `authenticate` is the thin shell that runs
them over the transport's first stream.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import cbor2

from meshcache.core.wire import WireError, decode_items
AUTH_VERSION = 1
NONCE_SIZE = 32
MAX_AUTH_FRAME = 512
_KEY_LABEL = b"meshcache cluster key v1"


class AuthFailed(Exception):
    """The peer did not prove it holds the cluster credential (or spoke out of turn)."""


def derive_key(credential: bytes) -> bytes:
    """The 32-byte MAC key of a cluster credential (the credential itself never leaves)."""
    if not credential:
        raise ValueError("an empty cluster credential cannot authenticate anyone")
    return hmac.new(credential, _KEY_LABEL, hashlib.sha256).digest()


def _proof(key: bytes, role: bytes, binding: bytes, nonce_c: bytes, nonce_s: bytes,
           id_c: bytes, id_s: bytes) -> bytes:
    msg = b"|".join([role, binding, nonce_c, nonce_s, id_c, id_s])
    return hmac.new(key, msg, hashlib.sha256).digest()


def _decode(frame: bytes, kind: str, n: int) -> list[Any]:
    """One handshake frame through wire's bounded decoder: [AUTH_VERSION, kind, bytes...]."""
    try:
        obj = decode_items(frame, max_size=MAX_AUTH_FRAME)
    except WireError as e:
        raise AuthFailed(f"{kind}: {e}") from None
    if not (len(obj) == n and obj[0] == AUTH_VERSION and obj[1] == kind):
        raise AuthFailed(f"expected {kind} (auth version {AUTH_VERSION})")
    for item in obj[2:]:
        if not isinstance(item, bytes) or len(item) > 64:
            raise AuthFailed(f"{kind}: malformed field")
    return obj


class ClientHandshake:
    """The connecting side: hello -> (challenge) -> proof -> (ok)."""

    def __init__(self, key: bytes, node_id: bytes, binding: bytes,
                 nonce: bytes | None = None) -> None:
        self.key, self.node_id, self.binding = key, node_id, binding
        self.nonce = nonce or os.urandom(NONCE_SIZE)
        self.peer_node_id: bytes | None = None
        self._state = "start"

    def hello(self) -> bytes:
        assert self._state == "start"
        self._state = "sent_hello"
        return cbor2.dumps([AUTH_VERSION, "hello", self.node_id, self.nonce])

    def on_challenge(self, frame: bytes) -> bytes:
        """Check the server's proof; returns our proof."""
        if self._state != "sent_hello":
            raise AuthFailed("challenge out of turn")
        _, _, server_id, nonce_s, server_proof = _decode(frame, "challenge", 5)
        if len(nonce_s) != NONCE_SIZE:
            raise AuthFailed("challenge: bad nonce")
        want = _proof(self.key, b"server", self.binding, self.nonce, nonce_s, self.node_id,
                      server_id)
        if not hmac.compare_digest(want, server_proof):
            raise AuthFailed("the server does not hold the cluster credential")
        self.peer_node_id = server_id
        self._state = "sent_proof"
        mine = _proof(self.key, b"client", self.binding, self.nonce, nonce_s, self.node_id,
                      server_id)
        return cbor2.dumps([AUTH_VERSION, "proof", mine])

    def on_ok(self, frame: bytes) -> None:
        if self._state != "sent_proof":
            raise AuthFailed("ok out of turn")
        _decode(frame, "ok", 2)
        self._state = "done"


class ServerHandshake:
    """The accepting side: (hello) -> challenge -> (proof) -> ok."""

    def __init__(self, key: bytes, node_id: bytes, binding: bytes,
                 nonce: bytes | None = None) -> None:
        self.key, self.node_id, self.binding = key, node_id, binding
        self.nonce = nonce or os.urandom(NONCE_SIZE)
        self.peer_node_id: bytes | None = None
        self._client_nonce = b""
        self._state = "start"

    def on_hello(self, frame: bytes) -> bytes:
        if self._state != "start":
            raise AuthFailed("hello out of turn")
        _, _, client_id, nonce_c = _decode(frame, "hello", 4)
        if len(nonce_c) != NONCE_SIZE:
            raise AuthFailed("hello: bad nonce")
        self.peer_node_id, self._client_nonce = client_id, nonce_c
        self._state = "sent_challenge"
        proof = _proof(self.key, b"server", self.binding, nonce_c, self.nonce, client_id,
                       self.node_id)
        return cbor2.dumps([AUTH_VERSION, "challenge", self.node_id, self.nonce, proof])

    def on_proof(self, frame: bytes) -> bytes:
        if self._state != "sent_challenge":
            raise AuthFailed("proof out of turn")
        _, _, client_proof = _decode(frame, "proof", 3)
        assert self.peer_node_id is not None
        want = _proof(self.key, b"client", self.binding, self._client_nonce, self.nonce,
                      self.peer_node_id, self.node_id)
        if not hmac.compare_digest(want, client_proof):
            raise AuthFailed("the client does not hold the cluster credential")
        self._state = "done"
        return cbor2.dumps([AUTH_VERSION, "ok"])


def make_authenticator(credential: bytes, node_id: bytes) -> Any:
    """The transport's `authenticate(conn)` hook for this credential and node id."""
    key = derive_key(credential)

    async def authenticate(conn: Any) -> None:
        binding = conn.channel_binding()
        try:
            if conn.is_client:
                hs = ClientHandshake(key, node_id, binding)
                stream = await conn.open_stream()
                await stream.send_frame(hs.hello())
                await stream.send_frame(hs.on_challenge(await stream.recv_frame(MAX_AUTH_FRAME)))
                hs.on_ok(await stream.recv_frame(MAX_AUTH_FRAME))
                peer = hs.peer_node_id
            else:
                server = ServerHandshake(key, node_id, binding)
                stream = await conn.accept_stream()
                await stream.send_frame(server.on_hello(await stream.recv_frame(MAX_AUTH_FRAME)))
                await stream.send_frame(server.on_proof(await stream.recv_frame(MAX_AUTH_FRAME)))
                peer = server.peer_node_id
            await stream.finish()
        except AuthFailed:
            raise
        except Exception as e:  # the peer broke the exchange: not authenticated
            raise AuthFailed(f"authentication exchange failed: {e}") from None
        conn.peer_node_id = peer

    return authenticate

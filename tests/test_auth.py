"""Cluster authentication: the pure handshake, and over real QUIC connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, strategies as st

from meshcache.mesh.auth import AuthFailed, ClientHandshake, ServerHandshake, derive_key, \
    make_authenticator
from meshcache.read.loop import new_event_loop
from meshcache.transport import AuthenticationError, TransportConfig


def handshake(k_client, k_server, b_client, b_server):
    c = ClientHandshake(k_client, b"client-id", b_client)
    s = ServerHandshake(k_server, b"server-id", b_server)
    proof = c.on_challenge(s.on_hello(c.hello()))
    c.on_ok(s.on_proof(proof))
    return c, s


def test_same_credential_and_binding_succeeds():
    k = derive_key(b"secret")
    c, s = handshake(k, k, b"B" * 32, b"B" * 32)
    assert c.peer_node_id == b"server-id" and s.peer_node_id == b"client-id"


def test_wrong_credential_fails_on_both_sides():
    with pytest.raises(AuthFailed, match="server does not hold"):
        handshake(derive_key(b"a"), derive_key(b"b"), b"B" * 32, b"B" * 32)
    # a server that lies in its challenge cannot learn a valid client proof either
    c = ClientHandshake(derive_key(b"a"), b"c", b"B" * 32)
    s = ServerHandshake(derive_key(b"a"), b"s", b"B" * 32)
    challenge = s.on_hello(c.hello())
    s2 = ServerHandshake(derive_key(b"b"), b"s", b"B" * 32)
    with pytest.raises(AuthFailed):
        s2._state, s2._client_nonce, s2.peer_node_id = "sent_challenge", c.nonce, b"c"
        s2.on_proof(c.on_challenge(challenge))


def test_proof_from_another_connection_is_refused():
    k = derive_key(b"secret")
    with pytest.raises(AuthFailed):
        handshake(k, k, b"A" * 32, b"B" * 32)  # a relay sees two different channel bindings


@given(st.binary(max_size=600))
def test_garbage_frames_only_raise_auth_failed(frame):
    k = derive_key(b"s")
    for step in (lambda: ServerHandshake(k, b"s", b"b").on_hello(frame),
                 lambda: _client_after_hello(k).on_challenge(frame)):
        try:
            step()
        except AuthFailed:
            pass


def _client_after_hello(k):
    c = ClientHandshake(k, b"c", b"b")
    c.hello()
    return c


def test_empty_credential_is_refused():
    with pytest.raises(ValueError):
        derive_key(b"")


def _run(coro):
    loop = new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 30))
    finally:
        loop.close()


async def _quic_pair(server_secret: bytes, client_secret: bytes, served: list):
    from meshcache.transport.quic import QuicTransport

    cfg = TransportConfig(max_datagram_size=1452, recv_timeout=3, connect_timeout=3,
                          auth_timeout=3)

    async def handler(stream):
        served.append(await stream.recv_frame())
        await stream.send_frame(b"block bytes")
        await stream.finish()

    server = QuicTransport(cfg, authenticate=make_authenticator(server_secret, b"srv"))
    client = QuicTransport(cfg, authenticate=make_authenticator(client_secret, b"cli"))
    addr = await server.listen(("127.0.0.1", 0), handler)
    try:
        stream = await client.open_stream(addr)
        await stream.send_frame(b"GET_BLOCK")
        answer = await stream.recv_frame()
        conn = stream.connection
        return answer, served, conn.peer_node_id
    finally:
        await client.close()
        await server.close()


def test_quic_peers_with_the_credential_talk():
    answer, served, peer = _run(_quic_pair(b"cluster-secret", b"cluster-secret", []))
    assert answer == b"block bytes" and served == [b"GET_BLOCK"] and peer == b"srv"


def test_quic_peer_without_the_credential_gets_nothing():
    served: list = []

    async def attempt():
        try:
            await _quic_pair(b"cluster-secret", b"wrong-secret", served)
        except AuthenticationError as e:
            return e
        return None
    err = _run(attempt())
    assert isinstance(err, AuthenticationError)
    assert served == []  # the server's handler never saw the unauthenticated peer's request

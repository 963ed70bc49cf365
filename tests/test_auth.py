"""Cluster authentication: the pure handshake, and over real QUIC connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, strategies as st

from meshcache.mesh.auth import AuthFailed, ClientHandshake, ServerHandshake, WeakCredential, \
    check_credential, cluster_tag, credential_strength, derive_key, make_authenticator, new_secret
from meshcache.read.loop import new_event_loop
from meshcache.transport import AuthenticationError, TransportConfig

from tests.conftest import CLUSTER_SECRET, OTHER_SECRET

A, B = CLUSTER_SECRET.encode(), OTHER_SECRET.encode()


def handshake(k_client, k_server, b_client, b_server):
    c = ClientHandshake(k_client, b"client-id", b_client)
    s = ServerHandshake(k_server, b"server-id", b_server)
    proof = c.on_challenge(s.on_hello(c.hello()))
    c.on_ok(s.on_proof(proof))
    return c, s


def test_same_credential_and_binding_succeeds():
    k = derive_key(CLUSTER_SECRET.encode())
    c, s = handshake(k, k, b"B" * 32, b"B" * 32)
    assert c.peer_node_id == b"server-id" and s.peer_node_id == b"client-id"


def test_wrong_credential_fails_on_both_sides():
    with pytest.raises(AuthFailed, match="server does not hold"):
        handshake(derive_key(A), derive_key(B), b"B" * 32, b"B" * 32)
    # a server that lies in its challenge cannot learn a valid client proof either
    c = ClientHandshake(derive_key(A), b"c", b"B" * 32)
    s = ServerHandshake(derive_key(A), b"s", b"B" * 32)
    challenge = s.on_hello(c.hello())
    s2 = ServerHandshake(derive_key(B), b"s", b"B" * 32)
    with pytest.raises(AuthFailed):
        s2._state, s2._client_nonce, s2.peer_node_id = "sent_challenge", c.nonce, b"c"
        s2.on_proof(c.on_challenge(challenge))


def test_proof_from_another_connection_is_refused():
    k = derive_key(CLUSTER_SECRET.encode())
    with pytest.raises(AuthFailed):
        handshake(k, k, b"A" * 32, b"B" * 32)  # a relay sees two different channel bindings


@given(st.binary(max_size=600))
def test_garbage_frames_only_raise_auth_failed(frame):
    k = derive_key(A)
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
    answer, served, peer = _run(_quic_pair(A, A, []))
    assert answer == b"block bytes" and served == [b"GET_BLOCK"] and peer == b"srv"


def test_quic_peer_without_the_credential_gets_nothing():
    served: list = []

    async def attempt():
        try:
            await _quic_pair(A, B, served)
        except AuthenticationError as e:
            return e
        return None
    err = _run(attempt())
    assert isinstance(err, AuthenticationError)
    assert served == []  # the server's handler never saw the unauthenticated peer's request


# ---- the credential: nothing an offline guesser can use ------------------------------------

WEAK = ["test-cluster-secret", "s", "correcthorsebatterystaple1234", "Summer2026!Summer2026!xx",
        "correct horse battery staple zebra", "MyCompanyMeshcacheClusterSecretKey2026!",
        "0123456789abcdef0123456789abcdef", "a" * 64, "qwertyuiopasdfghjklzxcvbnm1234567890",
        "dragon2026dragon2026dragon2026dragon2026xx", "deadbeef" * 4]


@pytest.mark.parametrize("weak", WEAK)
def test_weak_credentials_are_refused_with_a_clear_error(weak):
    for use in (derive_key, check_credential, cluster_tag,
                lambda c: make_authenticator(c, b"id")):
        with pytest.raises(WeakCredential, match="cluster_secret: .*meshcache secret"):
            use(weak.encode())


def test_new_secret_and_random_strings_are_accepted():
    made = {new_secret() for _ in range(200)}
    assert len(made) == 200 and all(len(s) == 43 for s in made)
    for s in made:
        check_credential(s.encode())
        assert credential_strength(s.encode())[0] >= 200  # 43 base64url chars: ~258 bits
    # 16 random bytes as hex, or 22 base64url characters, are the shortest accepted
    check_credential(bytes.fromhex("9f3ac0e57b2d4416e8a1c03f5b7d9e26").hex().encode())
    check_credential(b"Qx7_kP2mZr9LwT4vNc8aYe")
    with pytest.raises(WeakCredential, match="too short"):
        check_credential(b"Qx7_kP2mZr9LwT4vNc8aY")  # 21 characters: 126 bits


def test_the_key_and_tag_come_from_a_slow_kdf_not_a_plain_hmac():
    c = CLUSTER_SECRET.encode()
    assert derive_key(c) != hmac.new(c, b"meshcache cluster key v1", hashlib.sha256).digest()
    assert cluster_tag(c) != hmac.new(c, b"meshcache cluster tag", hashlib.sha256).digest()[:8]
    assert len(cluster_tag(c)) == 8 and cluster_tag(c) != cluster_tag(OTHER_SECRET.encode())
    t = time.perf_counter()
    hashlib.scrypt(b"guess", salt=b"meshcache cluster key v2", n=2**15, r=8, p=1,
                   maxmem=64 << 20, dklen=32)  # what one offline guess costs
    assert derive_key.__wrapped__(c) == hashlib.scrypt(c, salt=b"meshcache cluster key v2",
                                                       n=2**15, r=8, p=1, maxmem=64 << 20,
                                                       dklen=32)
    assert time.perf_counter() - t > 0.01


def test_a_node_with_a_weak_credential_refuses_to_start(tmp_path):
    from meshcache import Config, Node

    with pytest.raises(WeakCredential, match="too weak|too short|made by a person"):
        Node(Config.lan(cache_dir=str(tmp_path), cluster_secret="zone-secret",
                        listen="127.0.0.1:0", mdns=False))


def test_meshcache_secret_command(tmp_path):
    env = dict(os.environ, MESHCACHE_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "meshcache.cli", "secret"], env=env,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    check_credential(r.stdout.strip())
    out = tmp_path / "secret"
    r = subprocess.run([sys.executable, "-m", "meshcache.cli", "secret", "-o", str(out)],
                       env=env, capture_output=True, timeout=60)
    assert r.returncode == 0 and (out.stat().st_mode & 0o777) == 0o600
    check_credential(out.read_bytes().strip())
    (tmp_path / "obj").write_bytes(b"x")
    r = subprocess.run([sys.executable, "-m", "meshcache.cli", "cat", str(tmp_path / "obj")],
                       capture_output=True,
                       env=dict(env, MESHCACHE_CONFIG="", MESHCACHE_PEERS="127.0.0.1:9",
                                MESHCACHE_CLUSTER_SECRET="zone-secret", MESHCACHE_LISTEN="127.0.0.1:0"),
                       timeout=60)
    assert r.returncode == 6 and b"meshcache secret" in r.stderr, r.stderr

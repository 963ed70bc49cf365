"""Two nodes in separate processes exchange blocks over QUIC on 127.0.0.1: only with the
credential, never unverified bytes, and a bad or stalled peer never stops a read."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from meshcache import Config, Node
from meshcache.lab.httporigin import OriginServer

from tests.conftest import CLUSTER_SECRET, OTHER_SECRET, SMALL_BLOCK, make_bytes

SECRET = CLUSTER_SECRET


def start_daemon(cache_dir, secret=SECRET, extra_env=None, code=None):
    """A meshcached (or a test server given as `code`) in its own process; returns (proc, addr)."""
    env = dict(os.environ, MESHCACHE_CLUSTER_SECRET=secret, MESHCACHE_CACHE_DIR=str(cache_dir),
               MESHCACHE_BLOCK_SIZE=str(SMALL_BLOCK), MESHCACHE_LISTEN="127.0.0.1:0",
               MESHCACHE_REQUEST_TIMEOUT="2")
    env.update(extra_env or {})
    argv = [sys.executable, "-m", "meshcache.daemon"] if code is None else \
        [sys.executable, "-c", code]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise RuntimeError(f"daemon exited with {proc.returncode}")
    info = json.loads(line)
    return proc, info["address"]


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def origin():
    with OriginServer() as srv:
        yield srv


def reader_node(tmp_path, peers, secret=SECRET, name="b"):
    return Node(Config.local(cache_dir=str(tmp_path / name), block_size=SMALL_BLOCK, fsync=False,
                             peers=peers, cluster_secret=secret, listen="127.0.0.1:0",
                             request_timeout=2.0, readahead=4))


def warm(tmp_path, url, name="a"):
    n = Node(Config.local(cache_dir=str(tmp_path / name), block_size=SMALL_BLOCK, fsync=False))
    n.prewarm(url)
    n.close()


def warmed_object(tmp_path, origin, size, seed, name="m.bin"):
    """`size` bytes at the origin, already in the store of node "a"; returns (data, url)."""
    data = make_bytes(size, seed)
    origin.put(name, data)
    url = origin.url_for(name)
    warm(tmp_path, url)
    return data, url


def test_two_nodes_exchange_blocks(tmp_path, origin):
    data, url = warmed_object(tmp_path, origin, 12 * SMALL_BLOCK + 5, 51, name="model.bin")
    origin.reset_stats()
    proc, addr = start_daemon(tmp_path / "a")
    try:
        node = reader_node(tmp_path, [addr])
        with node.open(url) as f:
            assert f.read() == data
            assert f.stats["bytes_from_peers"] == len(data)
        st = node.stats()
        assert st["bytes_from_peers"] == len(data) and st["bytes_from_origin"] == 0
        assert origin.requests == 0  # only the stat (HEAD) went to the origin
        node.close()
    finally:
        stop(proc)


def test_peer_without_the_credential_gets_nothing(tmp_path, origin):
    data, url = warmed_object(tmp_path, origin, 4 * SMALL_BLOCK, 52)
    proc, addr = start_daemon(tmp_path / "a")
    try:
        node = reader_node(tmp_path, [addr], secret=OTHER_SECRET)
        with node.open(url) as f:
            assert f.read() == data  # from the origin: the peer refused us
        st = node.stats()
        assert st["bytes_from_peers"] == 0 and st["bytes_from_origin"] == len(data)
        assert st["peer_errors"] > 0
        node.close()
    finally:
        stop(proc)


LIAR = textwrap.dedent("""
    import os, signal, sys, json, threading
    from meshcache import Config, Node
    from meshcache.mesh import peers
    mode = os.environ["LIAR_MODE"]
    class Liar(peers.PeerService):
        async def _serve_block(self, stream, conn, msg):
            from meshcache.core import wire
            import asyncio
            data = self.server.store.read_block(msg.digest)
            await stream.send_frame(wire.encode(wire.Block(msg.request_id, msg.digest, len(data))))
            if mode == "corrupt":
                data = bytes([data[0] ^ 1]) + data[1:]
                await stream.send_payload(data)
            else:  # stall after half the block
                await stream.send_payload(data[: len(data) // 2])
                await asyncio.sleep(30)
    peers.PeerService = Liar
    node = Node(Config.from_env())
    addr = node.start_peers()
    print(json.dumps({"address": "%s:%d" % addr}), flush=True)
    threading.Event().wait()
""")


@pytest.mark.parametrize("mode", ["corrupt", "stall"])
def test_bad_peer_is_dropped_and_the_read_completes(tmp_path, origin, mode):
    data, url = warmed_object(tmp_path, origin, 3 * SMALL_BLOCK, 53)
    proc, addr = start_daemon(tmp_path / "a", code=LIAR, extra_env={"LIAR_MODE": mode})
    try:
        node = reader_node(tmp_path, [addr])
        t = time.monotonic()
        with node.open(url) as f:
            assert f.read() == data
        st = node.stats()
        assert st["bytes_from_origin"] == len(data) and st["bytes_from_peers"] == 0
        assert st["peer_errors"] >= 1
        if mode == "corrupt":
            assert st["bad_peers"] >= 1
        assert time.monotonic() - t < 20
        for d in node.store.digests():  # nothing unverified was stored
            from meshcache.core.digest import digest
            assert digest(node.store.block_path(d).read_bytes()) == d
        node.close()
    finally:
        stop(proc)


def test_garbage_datagrams_leave_the_server_serving(tmp_path, origin):
    data, url = warmed_object(tmp_path, origin, 4 * SMALL_BLOCK, 54)
    proc, addr = start_daemon(tmp_path / "a")
    try:
        host, port = addr.rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rng = __import__("random").Random(5)
        for i in range(300):
            n = rng.choice([1, 20, 1200, 1500, 9000])
            payload = bytes(rng.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1)
            if i % 3 == 0:  # look like a QUIC long-header Initial
                payload = b"\xc0\x00\x00\x00\x01" + payload
            s.sendto(payload[:n], (host, int(port)))
        s.close()
        node = reader_node(tmp_path, [addr])
        with node.open(url) as f:
            assert f.read() == data
        assert node.stats()["bytes_from_peers"] == len(data)
        assert proc.poll() is None
        node.close()
    finally:
        stop(proc)


def test_malformed_messages_get_an_error_and_the_server_keeps_serving(tmp_path, origin):
    from meshcache.core import wire

    data, url = warmed_object(tmp_path, origin, 4 * SMALL_BLOCK, 55)
    proc, addr = start_daemon(tmp_path / "a")
    try:
        node = reader_node(tmp_path, [addr])
        host, port = addr.rsplit(":", 1)

        async def garbage(frame):
            stream = await node.peers.transport.open_stream((host, int(port)))
            async with stream:
                await stream.send_frame(frame)
                return wire.decode(await stream.recv_frame())

        for frame in (b"\xff" * 40, wire.encode(wire.Ping(1))[:-1], b"\x9f" + b"\x00" * 30,
                      bytes([0x83, 0x01, 0x03, 0x5b]) + b"\xff" * 8):  # a string of 2**64 bytes
            reply = node._loop.run(garbage(frame))
            assert isinstance(reply, wire.Error) and reply.code == wire.ERR_BAD_REQUEST
        with node.open(url) as f:
            assert f.read() == data and f.stats["bytes_from_peers"] == len(data)
        assert proc.poll() is None
        node.close()
    finally:
        stop(proc)

"""Two nodes in separate processes exchange blocks over QUIC on 127.0.0.1: only with the
credential, never unverified bytes, and a bad or stalled peer never stops a read."""

from __future__ import annotations

import asyncio
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
               MESHCACHE_REQUEST_TIMEOUT="2", MESHCACHE_METRICS_LISTEN="127.0.0.1:0")
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


async def exchange_as_member(tmp_path, addr, frames):
    """Each frame on its own stream from an authenticated member (a QUIC client holding the
    credential); returns the decoded replies and the payload bytes after a BLOCK."""
    from meshcache.core import wire
    from meshcache.mesh import factory
    from meshcache.mesh.auth import make_authenticator
    from meshcache.transport.base import parse_address

    cfg = Config.local(cache_dir=str(tmp_path / "member"), block_size=SMALL_BLOCK,
                       cluster_secret=SECRET, listen="127.0.0.1:0")
    identity = factory.load_identity(cfg)
    transport = factory.build_quic_transport(
        cfg, identity, make_authenticator(cfg.credential(), bytes.fromhex(identity[2])))
    out = []
    try:
        for frame in frames:
            stream = await transport.open_stream(parse_address(addr))
            async with stream:
                await stream.send_frame(frame)
                reply = wire.decode(await stream.recv_frame())
                payload = b""
                if isinstance(reply, wire.Block):
                    payload = b"".join([c async for c in stream.recv_payload(reply.size)])
                out.append((reply, payload))
    finally:
        await transport.close()
    return out


def test_malformed_messages_get_an_error_and_the_server_keeps_serving(tmp_path, origin):
    from meshcache.core import wire

    data, url = warmed_object(tmp_path, origin, 4 * SMALL_BLOCK, 55)
    proc, addr = start_daemon(tmp_path / "a")
    try:
        frames = (b"\xff" * 40, wire.encode(wire.Ping(1))[:-1], b"\x9f" + b"\x00" * 30,
                  bytes([0x83, 0x01, 0x03, 0x5b]) + b"\xff" * 8)  # a string of 2**64 bytes
        for reply, _ in asyncio.run(exchange_as_member(tmp_path, addr, frames)):
            assert isinstance(reply, wire.Error) and reply.code == wire.ERR_BAD_REQUEST
        node = reader_node(tmp_path, [addr])
        with node.open(url) as f:
            assert f.read() == data and f.stats["bytes_from_peers"] == len(data)
        assert proc.poll() is None
        node.close()
    finally:
        stop(proc)


def test_a_peer_cannot_make_a_node_read_files_loopback_or_metadata(tmp_path, origin):
    """GET_BLOCK to a block's owner names the URL to fetch: the owner fetches only what its
    peer_origins allow, refuses the rest with ERROR (counted), and reads nothing for it."""
    from meshcache.core import wire
    from meshcache.core.digest import digest
    from meshcache.core.rungs import Rank

    data = make_bytes(2 * SMALL_BLOCK, 56)
    origin.put("m.bin", data)
    url = origin.url_for("m.bin")
    (tmp_path / "secret.txt").write_bytes(b"s" * SMALL_BLOCK)

    def ask(u, size=SMALL_BLOCK, token="t"):
        return wire.encode(wire.GetBlock(1, wire.NO_DIGEST, int(Rank.OWNER), u, 0, token, size))

    def serving(**kw):
        return Node(Config.local(cache_dir=str(tmp_path / "srv"), block_size=SMALL_BLOCK,
                                 fsync=False, cluster_secret=SECRET, listen="127.0.0.1:0", **kw))

    srv = serving()
    try:
        v = srv.version(url)
        origin.reset_stats()
        addr = "%s:%d" % srv.start_peers()
        asks = [ask("file://" + str(tmp_path / "secret.txt")),
                ask("http://169.254.169.254/latest/meta-data/"),
                ask(url, v.size, v.token), ask("http://localhost:%d/m.bin" % origin.port)]
        replies = asyncio.run(exchange_as_member(tmp_path, addr, asks))
        for reply, _ in replies:
            assert isinstance(reply, wire.Error) and reply.code == wire.ERR_REFUSED
            assert "peer_origins" in reply.text
        assert srv.stats()["peer_origin_refusals"] == 4
        assert origin.requests == 0 and srv.store.digests() == []
    finally:
        srv.close()
    srv = serving(peer_origins=[origin.url_for("")])  # listed: served
    try:
        addr = "%s:%d" % srv.start_peers()
        [(reply, payload)] = asyncio.run(exchange_as_member(
            tmp_path, addr, [ask(url, v.size, v.token)]))
        assert isinstance(reply, wire.Block) and payload == data[:SMALL_BLOCK]
        assert reply.digest == digest(payload) and srv.stats()["peer_origin_refusals"] == 0
    finally:
        srv.close()


class LyingStore:
    """A store that hands out every block with one bit flipped."""

    def __init__(self, store):
        self.store = store
        self.evicted_blocks = self.corrupt_blocks = 0

    def __contains__(self, d):
        return d in self.store

    def digests(self):
        return self.store.digests()

    def read_block(self, d):
        data = self.store.read_block(d)
        return bytes([data[0] ^ 1]) + data[1:]


def test_a_liar_is_avoided_longer_each_time_then_expelled(tmp_path):
    """On the in-memory transport with a fake clock: each proven lie doubles the time the liar
    is avoided (30 s, 60 s); the third expels it from this node's view, closes its connection
    and refuses what it sends, whatever gossip says."""
    from meshcache.core import wire
    from meshcache.core.digest import digest
    from meshcache.core.rungs import BlockRequest, Rank
    from meshcache.core.version import ObjectVersion
    from meshcache.mesh.peers import PeerMisbehaved

    from meshcache.mesh.clock import settle
    from tests.memzone import Zone, run

    async def scenario():
        z = Zone(tmp_path)
        try:
            reader = await z.add(liar_expel_after=3, ping_interval=1.0, suspect_timeout=5.0)
            liar = await z.add(ping_interval=1.0, suspect_timeout=5.0)
            await z.until(lambda: len(reader.mesh.members) == 1, 10)
            data = make_bytes(SMALL_BLOCK, 57)
            d = liar.server.store.put(data, digest(data))
            liar.server.store = LyingStore(liar.server.store)
            req = BlockRequest(ObjectVersion("s3://b/k", "t", SMALL_BLOCK), 0, SMALL_BLOCK, d)
            peers, clock = reader.peers, z.clock

            async def lie():
                with pytest.raises(PeerMisbehaved):
                    await peers.get_block(liar.address, req, Rank.HOLDERS)

            await lie()
            assert peers.penalized(liar.address)
            await clock.advance(29.0, step=0.5)
            assert peers.penalized(liar.address)
            await clock.advance(1.5)
            assert not peers.penalized(liar.address)
            await lie()
            await clock.advance(59.0, step=0.5)
            assert peers.penalized(liar.address) and liar.node_id in reader.mesh.members
            await clock.advance(1.5)
            await lie()  # the third: expelled
            await settle()
            assert not peers.reachable(liar.address)  # every connection with it closed
            assert peers.expelled(liar.node_id) and liar.node_id not in reader.mesh.members
            st = peers.stats
            assert st["bad_peers"] == 3 and st["peers_expelled"] == 1
            assert reader.mesh.stats["members_expelled"] == 1
            # it keeps talking: refused, its connections closed, never admitted again
            for _ in range(3):
                with pytest.raises(Exception):
                    await liar.peers.request(reader.address, wire.Ping(1), timeout=1.0)
            await clock.advance(20.0, step=0.5)
            assert liar.node_id not in reader.mesh.members
            assert not peers.reachable(liar.address)
        finally:
            await z.close()
    run(scenario())

"""Bounded memory before authentication: stream and byte limits until a peer is admitted, small
QUIC receive windows until then (aioquic), QUIC Retry when handshakes pile up, and a cap on
pending connections. Real QUIC sockets on 127.0.0.1; the RSS test runs the server in its own
process so the client's send buffers do not count."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from meshcache.transport import (
    MemoryNetwork,
    MemoryTransport,
    TransportConfig,
    TransportError,
)
from meshcache.transport import engine as quic_engine
from tests.test_transport import KINDS, QUIC_KINDS, Pair, echo, run

MiB = 1 << 20


def _hang_auth_server_side() -> Any:
    """An authenticator that admits clients at once but never finishes for the server side
    (the attacker never completes authentication)."""
    async def authenticate(conn: Any) -> None:
        if conn.is_client:
            return
        await asyncio.sleep(3600)
    return authenticate


def _config(**kw: Any) -> TransportConfig:
    base: dict[str, Any] = dict(max_datagram_size=1452, recv_timeout=3, send_timeout=3,
                                connect_timeout=5, auth_timeout=20)
    base.update(kw)
    return TransportConfig(**base)


async def _push(conn: Any, streams: int, per_stream: int, deadline: float) -> int:
    """Open `streams` streams and push `per_stream` bytes on each, then keep the connection
    open until it is closed or the deadline passes; bytes queued for sending."""
    sent = 0
    chunk = os.urandom(64 * 1024)

    async def one() -> None:
        nonlocal sent
        s = await conn.open_stream()
        for _ in range(per_stream // len(chunk)):
            await s.send_payload(chunk)
            sent += len(chunk)

    try:
        async with asyncio.timeout(deadline):
            await asyncio.gather(*(one() for _ in range(streams)))
            while not conn.is_closed:  # queued is not sent: let it flow until the deadline
                await asyncio.sleep(0.05)
    except (TransportError, TimeoutError):
        pass
    return sent


@pytest.mark.parametrize("kind", KINDS)
def test_unauthenticated_bytes_close_the_connection(kind: str) -> None:
    """A peer that pushes more than preauth_max_bytes before it is admitted is closed and
    what it sent is not buffered for it."""
    cfg = _config(preauth_max_bytes=128 * 1024)
    handled: list[Any] = []

    async def serve(stream: Any) -> None:
        handled.append(stream)

    async def main() -> None:
        async with Pair(kind, serve, config=cfg, authenticate=_hang_auth_server_side()) as p:
            conn = await p.client.connect(p.addr)
            await _push(conn, streams=3, per_stream=4 * MiB, deadline=8)
            for _ in range(100):  # the server closed it: the client learns soon
                if conn.is_closed:
                    break
                await asyncio.sleep(0.05)
            assert conn.is_closed
            assert not p.server.connections
            assert handled == []

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_unauthenticated_extra_streams_are_bounded(kind: str) -> None:
    cfg = _config(preauth_max_streams=2)

    async def main() -> None:
        async with Pair(kind, echo, config=cfg, authenticate=_hang_auth_server_side()) as p:
            conn = await p.client.connect(p.addr)
            for _ in range(6):
                try:
                    s = await conn.open_stream()
                    await s.send_frame(b"x" * 100)
                except TransportError:
                    break
            await asyncio.sleep(0.5)
            # either QUIC's own stream limit held the peer back (aioquic: MAX_STREAMS stays at
            # the pre-authentication count) or the connection was closed when it went past it
            for c in p.server._connections:
                assert c.is_closed or c._preauth_streams <= 2

    run(main())


@pytest.mark.parametrize("kind", QUIC_KINDS)
def test_admitted_peer_uploads_past_the_preauth_window(kind: str) -> None:
    """After authentication a 4 MiB upload to the server runs through although the
    pre-authentication window is 1 MiB (aioquic: the held window is raised; qh3: the server's
    window is re-granted as the data is delivered)."""
    from meshcache.transport import admission

    data = os.urandom(4 * MiB)
    got: list[int] = []

    async def serve(stream: Any) -> None:
        n = len(await stream.recv_exactly(len(data)))
        got.append(n)
        await stream.send_frame(b"ok")

    async def authenticate(conn: Any) -> None:  # the server speaks last, as mesh/auth.py
        if conn.is_client:
            s = await conn.open_stream()
            await s.send_frame(b"hello")
            assert await s.recv_frame() == b"ok"
        else:
            s = await conn.accept_stream()
            assert await s.recv_frame() == b"hello"
            await s.send_frame(b"ok")
        await s.aclose()

    async def main() -> None:
        # generous deadlines: the reply waits behind the whole upload on a loaded machine
        cfg = _config(recv_timeout=30, send_timeout=30)
        async with Pair(kind, serve, config=cfg, authenticate=authenticate) as p:
            conn = await p.client.connect(p.addr)
            s = await conn.open_stream()
            await s.send_payload(data)
            assert await s.recv_frame() == b"ok"
            assert got == [len(data)]
            server_conn = p.server.connections[0]
            assert not admission.is_held(server_conn._quic)
            if p.server.engine.admission_windows:
                assert server_conn._quic._local_max_data.value >= _config().max_data

    run(main())


# ---- the RSS of a real server process ----------------------------------------------------------------

SERVER = textwrap.dedent("""
    import asyncio, sys
    from meshcache.transport import TransportConfig
    from meshcache.transport.quic import QuicTransport

    async def authenticate(conn):
        await asyncio.sleep(3600)          # never admits anyone

    async def handler(stream):
        pass

    async def main():
        cfg = TransportConfig(max_datagram_size=1452, auth_timeout=60, recv_timeout=60)
        t = QuicTransport(cfg, authenticate=authenticate, engine=sys.argv[1])
        addr = await t.listen(("127.0.0.1", 0), handler)
        print(addr[1], flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
""")


def _rss(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of `pid` now (VmRSS) or at its peak so far (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


@pytest.mark.parametrize("engine", quic_engine.available())
def test_unauthenticated_flood_does_not_grow_server_rss(engine: str) -> None:
    """Four unauthenticated connections each try to push 32 MiB on 8 streams: the server's peak
    RSS grows by far less than what was pushed (the bound in docs/security.md)."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, engine], stdout=subprocess.PIPE,
                            text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        time.sleep(0.3)
        before = _rss(proc.pid, "VmHWM")

        async def main() -> int:
            from meshcache.transport.quic import QuicTransport

            total = 0
            clients = [QuicTransport(_config(), engine=engine) for _ in range(4)]
            try:
                conns = [await c.connect(("127.0.0.1", port)) for c in clients]
                pushed = await asyncio.gather(*(_push(c, 8, 4 * MiB, 10) for c in conns))
                total = sum(pushed)
            finally:
                for c in clients:
                    await c.close()
            return total

        run(main(), timeout=60)
        time.sleep(0.3)
        grown = _rss(proc.pid, "VmHWM") - before  # the peak, while the pushers were on
        print(f"server RSS grew by {grown / MiB:.1f} MiB")
        # 4 connections x (1 MiB window + 256 KiB delivered) plus allocator slack
        assert grown < 24 * MiB, f"server RSS grew by {grown / MiB:.1f} MiB"
        assert proc.poll() is None  # still serving
    finally:
        proc.kill()
        proc.wait()


# ---- handshake floods ------------------------------------------------------------------------------


def _fake_initial(rng: random.Random) -> bytes:
    """A QUIC v1 Initial packet header (no token) with random protected bytes: what a spoofed
    flood looks like to a server before it decrypts anything."""
    dcid, scid = rng.randbytes(8), rng.randbytes(8)
    head = bytes([0xC3]) + (1).to_bytes(4, "big") + bytes([8]) + dcid + bytes([8]) + scid
    head += b"\x00"  # token length 0
    body = rng.randbytes(1200 - len(head) - 2)
    return head + (0x4000 | len(body)).to_bytes(2, "big") + body


@pytest.mark.parametrize("kind", QUIC_KINDS)
def test_initial_flood_answered_with_retry_and_capped(kind: str) -> None:
    """Past retry_threshold pending handshakes, new Initials get a Retry (no state kept);
    past max_unauthenticated none are taken; a real client still connects (through Retry)."""
    cfg = _config(retry_threshold=4, max_unauthenticated=16, connect_timeout=5)

    async def main() -> None:
        async with Pair(kind, echo, config=cfg) as p:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            retries = 0
            try:
                rng = random.Random(7)
                for _ in range(300):
                    sock.sendto(_fake_initial(rng), p.addr)
                    await asyncio.sleep(0)
                quiet = 0
                while quiet < 10:  # until nothing came for 0.2 s
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        quiet += 1
                        await asyncio.sleep(0.02)
                        continue
                    quiet = 0
                    if data[0] & 0xF0 == 0xF0:  # long header, type Retry
                        retries += 1
            finally:
                sock.close()
            assert p.server.unadmitted <= cfg.max_unauthenticated
            assert p.server.retries_sent >= 250 and retries >= 100
            # a legitimate peer is served throughout
            s = await p.client.open_stream(p.addr)
            await s.send_frame(b"still serving")
            assert await s.recv_frame() == b"still serving"

    run(main())


@pytest.mark.parametrize("kind", QUIC_KINDS)
def test_pending_connections_capped(kind: str) -> None:
    cfg = _config(retry_threshold=10_000, max_unauthenticated=8, connect_timeout=2)

    async def main() -> None:
        async with Pair(kind, echo, config=cfg) as p:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rng = random.Random(8)
                for _ in range(200):
                    sock.sendto(_fake_initial(rng), p.addr)
                    await asyncio.sleep(0)
            finally:
                sock.close()
            await asyncio.sleep(0.2)
            assert p.server.unadmitted <= 8
            assert p.server.handshakes_refused >= 150
            # once the half-open handshakes expire, new peers are taken again
            for _ in range(80):
                if p.server.unadmitted == 0:
                    break
                await asyncio.sleep(0.1)
            assert p.server.unadmitted == 0
            s = await p.client.open_stream(p.addr)
            await s.send_frame(b"hi")
            assert await s.recv_frame() == b"hi"

    run(main())


def test_memory_transport_bounds_before_admission() -> None:
    """The byte bound is the transport contract's, not QUIC's: the memory transport keeps it."""
    cfg = _config(preauth_max_bytes=1000)

    async def main() -> None:
        net = MemoryNetwork()
        server = MemoryTransport(cfg, network=net, authenticate=_hang_auth_server_side())
        client = MemoryTransport(cfg, network=net)
        try:
            addr = await server.listen("s", echo)
            conn = await client.connect(addr)
            s = await conn.open_stream()
            await s.send_payload(b"x" * 999)
            await asyncio.sleep(0.05)
            assert not server.connections[0].is_closed
            await s.send_payload(b"x" * 2)
            await asyncio.sleep(0.05)
            assert all(c.is_closed for c in server._connections)
        finally:
            await client.close()
            await server.close()

    run(main())


def test_aioquic_window_is_held_before_admission() -> None:
    """Upstream aioquic doubles a connection's receive window whenever half of it has been
    received; before admission it stays at preauth_max_data, so a stranger whose bytes are under
    the byte bound still cannot get more than that into the node."""
    if "aioquic" not in quic_engine.available():
        pytest.skip("aioquic not installed")
    from meshcache.transport import admission

    cfg = _config(preauth_max_bytes=64 * MiB, preauth_max_data=512 * 1024, send_timeout=1)

    async def main() -> None:
        async with Pair("quic-aioquic", echo, config=cfg,
                        authenticate=_hang_auth_server_side()) as p:
            conn = await p.client.connect(p.addr)
            await _push(conn, streams=2, per_stream=2 * MiB, deadline=4)
            server = p.server.connections[0]
            assert admission.is_held(server._quic)
            assert server._quic._local_max_data.value == 512 * 1024
            assert server._quic._local_max_data.used <= 512 * 1024
            assert not server.is_closed  # held by flow control, under the byte bound

    run(main())


def _secret_auth(secret: bytes) -> Any:
    """Client sends `secret` on the first stream; the server admits it when it matches."""
    async def authenticate(conn: Any) -> None:
        if conn.is_client:
            s = await conn.open_stream()
            await s.send_frame(secret)
            return
        s = await conn.accept_stream()
        if await s.recv_frame() != secret:
            raise PermissionError("wrong secret")
    return authenticate


@pytest.mark.parametrize("kind", QUIC_KINDS)
def test_pending_slots_held_by_outsiders_do_not_keep_a_credentialed_peer_out(kind: str) -> None:
    """Outsiders complete TLS and then sit in authentication (auth_timeout 30 s) on every pending
    slot; a credentialed peer still connects and is served at once (the oldest pending
    connection makes room), and the pending count stays within the cap."""
    from meshcache.transport.quic import QuicTransport

    cap = 4
    cfg = _config(max_unauthenticated=cap, retry_threshold=2, auth_timeout=30, recv_timeout=30)

    async def hang(conn: Any) -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        engine = kind.split("-", 1)[1]
        async with Pair(kind, echo, config=cfg, authenticate=_secret_auth(b"credential")) as p:
            outsiders = [QuicTransport(cfg, authenticate=hang, engine=engine)
                         for _ in range(cap)]
            tasks = [asyncio.ensure_future(o.connect(p.addr)) for o in outsiders]
            try:
                for _ in range(100):  # every slot held by a connection in authentication
                    if p.server.unadmitted >= cap and len(p.server.connections) >= cap:
                        break
                    await asyncio.sleep(0.05)
                assert p.server.unadmitted == cap
                t = time.monotonic()
                async with asyncio.timeout(10):  # without eviction: refused for 30 s
                    s = await p.client.open_stream(p.addr)
                    await s.send_frame(b"served")
                    assert await s.recv_frame() == b"served"
                assert time.monotonic() - t < 10
                assert p.server.unadmitted <= cap
                assert p.server.handshakes_refused >= 1
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for o in outsiders:
                    await o.close()

    run(main(), timeout=60)

"""Batched UDP I/O (meshcache/transport/batching.py): the GSO path and the one-sendto-per-
datagram fallback both deliver every datagram, and both carry real QUIC transfers."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from meshcache.transport import TransportConfig, batching, engine
from tests.test_transport import Pair, run

MiB = 1 << 20


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)


def _udp_pair() -> tuple[socket.socket, socket.socket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
    return a, b


@pytest.mark.parametrize("batched", [True, False])
def test_send_delivers_every_datagram(batched: bool) -> None:
    """60 datagrams of 1452 bytes (and a short last one) to one address: with GSO one call per
    run, without it one sendto each; the receiver gets them all, in order."""
    factory = batching.endpoint_factory()
    if batched and factory is None:
        pytest.skip("no batching transport installed (qh3)")
    datagrams = [os.urandom(1452) for _ in range(59)] + [os.urandom(300)]

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        a, b = _udp_pair()
        dest = b.getsockname()
        if batched:
            assert batching.gso_supported(a), "this kernel has UDP_SEGMENT (Linux >= 4.18)"
            tx, _ = await factory(loop, asyncio.DatagramProtocol, sock=a, gro_segment_size=1452)
            sendmany = batching.sender_of(tx)
            assert sendmany is not None
        else:
            tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=a)
            sendmany = batching.sender_of(tx)
            assert sendmany is None  # the plain endpoint: one sendto per datagram
        rx, sink = await loop.create_datagram_endpoint(_Sink, sock=b)
        try:
            batching.send(tx, sendmany, [(d, dest) for d in datagrams])
            for _ in range(100):
                if len(sink.got) >= len(datagrams):
                    break
                await asyncio.sleep(0.01)
            return sink.got
        finally:
            tx.close()
            rx.close()

    assert run(main()) == datagrams


@pytest.mark.parametrize("name", engine.available())
@pytest.mark.parametrize("batched", [True, False])
def test_quic_transfer_with_and_without_batching(name: str, batched: bool) -> None:
    """8 MiB at 1452-byte datagrams on each engine, GSO path and fallback."""
    if batched and batching.endpoint_factory() is None:
        pytest.skip("no batching transport installed (qh3)")
    block = os.urandom(8 * MiB)

    async def serve(stream: Any) -> None:
        await stream.recv_frame()
        await stream.send_payload(block, end=True)

    cfg = TransportConfig(max_datagram_size=1452, udp_batching=batched, recv_timeout=10,
                          send_timeout=10, connect_timeout=5)

    async def main() -> None:
        async with Pair(f"quic-{name}", serve, config=cfg) as p:
            s = await p.client.open_stream(p.addr)
            await s.send_frame(b"go")
            assert await s.recv_exactly(len(block)) == block
            proto = s.connection._protocol
            assert (proto._sendmany is not None) == batched

    run(main(), timeout=90)

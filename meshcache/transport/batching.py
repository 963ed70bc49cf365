"""Batched UDP I/O for the QUIC transport: one syscall for many datagrams.

Per-datagram cost is what bounds QUIC in Python at WAN packet sizes (1452 bytes: ~700
datagrams per MB). Linux can send a run of equal-sized datagrams in one `sendmsg` with
`UDP_SEGMENT` (GSO) and hand a receiver a run of them in one buffer with `UDP_GRO`. qh3 ships a
datagram transport that does both (and recvmmsg-style batching) through quinn-udp; we use it
for either engine when qh3 is installed. Where the kernel lacks GSO that transport falls back
to one `sendmsg` per datagram; with `udp_batching = false` (or without qh3) the plain asyncio
endpoint sends each datagram with `sendto`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

# Datagrams larger than this are sent one by one: a GSO send carries at most 64 KiB, so large
# datagrams gain nothing from it and pay its cost (measured on loopback, docs/transport.md).
MAX_BATCHED_DATAGRAM = 16384


def endpoint_factory() -> Callable[..., Any] | None:
    """`async (loop, protocol_factory, sock=, gro_segment_size=) -> (transport, protocol)`
    with batched I/O, or None when no batching transport is installed."""
    try:
        from qh3.asyncio._transport import create_optimized_datagram_transport
    except ImportError:
        return None
    return create_optimized_datagram_transport


def gso_supported(sock: socket.socket) -> bool:
    """Whether this kernel takes UDP_SEGMENT on `sock` (GSO)."""
    try:
        from qh3.asyncio._transport import has_gso
    except ImportError:
        return False
    return bool(has_gso(sock))


def sender_of(transport: Any, enabled: bool = True) -> Callable[[list[bytes], Any], None] | None:
    """The transport's batch send (`sendto_many`), when it has one and batching is on."""
    return getattr(transport, "sendto_many", None) if enabled else None


def send(transport: Any, sendmany: Callable[[list[bytes], Any], None] | None,
         datagrams: list[tuple[bytes, Any]]) -> None:
    """Send `(data, addr)` pairs: runs to one address in one batch call where possible."""
    if sendmany is None or len(datagrams) == 1:
        sendto = transport.sendto
        for data, addr in datagrams:
            sendto(data, addr)
        return
    run: list[bytes] = []
    run_addr: Any = None
    for data, addr in datagrams:
        if run and addr != run_addr:
            sendmany(run, run_addr)
            run = []
        run.append(data)
        run_addr = addr
    if run:
        sendmany(run, run_addr)

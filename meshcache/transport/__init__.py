"""Peer transport: connections, streams, frames and payload bytes (see base.py).

`MemoryTransport` (memory.py) for tests and simulations, `QuicTransport` (quic.py, imported
lazily because it patches aioquic on import) for real peers.
"""

from __future__ import annotations

from typing import Any

from meshcache.transport.base import (
    ALPN,
    AuthenticationError,
    Authenticator,
    Connection,
    ConnectionClosed,
    FrameTooLarge,
    IncompleteRead,
    PeerInfo,
    Stream,
    StreamHandler,
    StreamReset,
    Transport,
    TransportConfig,
    TransportError,
    TransportTimeout,
)
from meshcache.transport.memory import MemoryNetwork, MemoryTransport

__all__ = [
    "ALPN", "AuthenticationError", "Authenticator", "Connection", "ConnectionClosed",
    "FrameTooLarge", "IncompleteRead", "MemoryNetwork", "MemoryTransport", "PeerInfo",
    "QuicTransport", "Stream", "StreamHandler", "StreamReset", "Transport", "TransportConfig",
    "TransportError", "TransportTimeout",
]


def __getattr__(name: str) -> Any:
    if name == "QuicTransport":
        from meshcache.transport.quic import QuicTransport

        return QuicTransport
    raise AttributeError(name)

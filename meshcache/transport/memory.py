"""In-memory transport: the same interface as QUIC, over asyncio objects, for tests and simulations.

Transports meet on a `MemoryNetwork` (a dict from address to listener; one default network per
process). A connection is two linked `MemoryConnection` ends; a stream is two linked
`MemoryStream` ends, each feeding the other's receive buffer. Deadlines, frame limits, resets,
authentication hooks and the connection pool behave as in QUIC (they live in base.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

from meshcache.transport.base import (
    ConnectionClosed,
    Connection,
    PeerInfo,
    Stream,
    StreamHandler,
    StreamReset,
    Transport,
    TransportConfig,
    TransportError,
    ERR_NONE,
    stored,
)

_ids = itertools.count(1)


class MemoryNetwork:
    """Where memory transports find each other by address."""

    def __init__(self) -> None:
        self.listeners: dict[Any, "MemoryTransport"] = {}


DEFAULT_NETWORK = MemoryNetwork()


class MemoryStream(Stream):
    def __init__(self, connection: "MemoryConnection", stream_id: int,
                 config: TransportConfig) -> None:
        super().__init__(connection, stream_id, config)
        self.other: MemoryStream | None = None
        self._unannounced = False  # opened here, not yet shown to the peer (as in QUIC)

    def _announce(self) -> None:
        if self._unannounced:
            self._unannounced = False
            other = self.other
            assert other is not None
            if not other.connection.is_closed:
                other.connection._new_incoming(other)

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_error is not None:
            raise stored(self._send_error)
        other = self.other
        assert other is not None
        if self.connection.is_closed:
            raise ConnectionClosed("connection closed")
        data = bytes(data)
        self._announce()
        self.bytes_sent += len(data)
        other._feed(data)
        other.connection._heard(asyncio.get_running_loop().time())
        # let the reader run; with a large backlog, wait until it took some
        while other._buffered > self.config.stream_send_buffer and not other._closed \
                and other._error is None and self._send_error is None:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)

    async def _write_eof(self) -> None:
        self._announce()
        if self.other is not None:
            self.other._feed_eof()

    def _reset_local(self, code: int) -> None:
        other = self.other
        if other is not None and not self._unannounced:
            other._feed_error(StreamReset(f"stream {self.stream_id} reset by peer", code))

    def _stop_receiving(self, code: int) -> None:
        other = self.other
        if other is not None and other._send_error is None:
            other._send_error = StreamReset(
                f"peer stopped reading stream {self.stream_id}", code)

    def _release(self) -> None:
        self.connection._streams.pop(self.stream_id, None)


class MemoryConnection(Connection):
    def __init__(self, *, is_client: bool, peer: PeerInfo, config: TransportConfig,
                 binding: bytes) -> None:
        super().__init__(is_client=is_client, peer=peer, config=config)
        self.other: MemoryConnection | None = None
        self._binding = binding
        self._next_id = 0 if is_client else 1

    async def open_stream(self) -> Stream:
        if self._closed_exc is not None:
            raise stored(self._closed_exc)
        other = self.other
        assert other is not None
        sid = self._next_id
        self._next_id += 4
        mine = MemoryStream(self, sid, self.config)
        theirs = MemoryStream(other, sid, other.config)
        mine.other, theirs.other = theirs, mine
        mine._unannounced = True  # the peer sees it with the first bytes (as in QUIC)
        self._streams[sid] = mine
        other._streams[sid] = theirs
        return mine

    def channel_binding(self) -> bytes:
        return self._binding

    async def close(self, code: int = ERR_NONE, reason: str = "") -> None:
        self._abort(code, reason)

    def _abort(self, code: int, reason: str) -> None:
        if self._closed_exc is not None:
            return
        self._mark_closed(ConnectionClosed(f"connection closed locally ({code:#x} {reason})"))
        if self.other is not None:
            self.other._mark_closed(
                ConnectionClosed(f"connection closed by peer ({code:#x} {reason})"))


class MemoryTransport(Transport):
    """A node's endpoint on a MemoryNetwork."""

    def __init__(self, config: TransportConfig | None = None, *, authenticate: Any = None,
                 network: MemoryNetwork | None = None, name: Any = None) -> None:
        super().__init__(config, authenticate=authenticate)
        self.network = network or DEFAULT_NETWORK
        self.name = name if name is not None else f"mem-{os.getpid()}-{next(_ids)}"
        self.address: Any = None

    async def listen(self, addr: Any, handler: StreamHandler) -> Any:
        if addr is None:
            addr = self.name
        if addr in self.network.listeners:
            raise TransportError(f"address {addr!r} already in use")
        self.network.listeners[addr] = self
        self.address = addr
        self._handler = handler
        return addr

    async def _open_connection(self, addr: Any) -> Connection:
        server = self.network.listeners.get(addr)
        if server is None or server._closing:
            raise ConnectionClosed(f"nothing listens at {addr!r}")
        binding = os.urandom(32)
        me = self.address if self.address is not None else self.name
        client = MemoryConnection(is_client=True, peer=PeerInfo(addr), config=self.config,
                                  binding=binding)
        accepted = MemoryConnection(is_client=False, peer=PeerInfo(me), config=server.config,
                                    binding=binding)
        client.other, accepted.other = accepted, client
        server._accepted(accepted)
        await asyncio.sleep(0)
        return client

    async def _close_endpoint(self) -> None:
        if self.address is not None and self.network.listeners.get(self.address) is self:
            del self.network.listeners[self.address]

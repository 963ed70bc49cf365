"""The peer transport interface: connections to peers, one stream per request, bytes only.

The core never sees sockets: it gets a `Stream` per request and speaks two things over it,
length-prefixed frames (`send_frame` / `recv_frame`, a 4-byte big-endian length then the bytes,
bounded by `max_frame_size` and checked before anything is buffered) and raw payload bytes of a
known length (`send_payload` / `recv_exactly` / `recv_payload`) for blocks. What the frames mean
(meshcache/wire.py) is not this layer's concern.

Shape
-----
* A `Transport` is one node's endpoint. `await t.listen(addr, handler)` accepts connections and
  calls `await handler(stream)` for each stream a peer opens (on any connection, either direction).
  `await t.connect(addr)` returns the one `Connection` to that peer, opened on first use and then
  reused (concurrent callers share one attempt); `await conn.open_stream()` opens a stream, and
  many streams run at once on one connection.
* Authentication: the transport takes an `authenticate(conn)` coroutine. It runs on both ends of
  every new connection, after the (TLS) handshake and before any stream reaches the handler or
  `connect` returns. The initiating side (`conn.is_client`) opens the first stream with
  `conn.open_stream()` and speaks first (a peer learns of a stream from its first bytes, as in
  QUIC), the accepting side takes it with `conn.accept_stream()`; incoming streams
  wait in a queue until the authenticator returns. If it raises (or exceeds `auth_timeout`) the
  connection is closed and `connect` raises `AuthenticationError`. What it may bind to is
  `conn.channel_binding()`: 32 bytes both ends compute alike and no other connection shares (for
  QUIC, a TLS 1.3 exporter value, RFC 8446 section 7.5, see quic.py). It may store what it learnt
  in `conn.peer_node_id`.
* Deadlines: every wait for peer bytes is bounded by `recv_timeout` (seconds without progress;
  a stalled peer raises `TransportTimeout`, which is both a `TransportError` and a
  `TimeoutError`). A whole request's deadline is the caller's (`asyncio.timeout`).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import copy
import dataclasses
import logging
import math
import time
from functools import partial
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger("meshcache.transport")

KiB = 1024
MiB = 1024 * KiB

FRAME_HEADER = 4  # bytes of the big-endian frame length
ALPN = "meshcache/1"
HEARD_INTERVAL = 0.25  # seconds between two Connection.on_heard calls

# Application error codes carried by stream resets and connection closes.
ERR_NONE = 0
ERR_CANCELLED = 0x10  # the local side gave up on the stream (closed before finishing)
ERR_FRAME_TOO_LARGE = 0x11
ERR_TIMEOUT = 0x12
ERR_HANDLER = 0x13  # the handler raised
ERR_AUTH = 0x20  # authentication failed: connection closed
ERR_SHUTDOWN = 0x21


# ---- errors ----------------------------------------------------------------------------------------


class TransportError(Exception):
    """Anything the transport could not do: the peer went away, reset, stalled, misbehaved."""


class TransportTimeout(TransportError, TimeoutError):
    """A peer sent nothing for longer than the deadline (or a connect did not finish in time)."""


class FrameTooLarge(TransportError):
    """A frame header announced more than the allowed size; nothing of the body was buffered."""


def stored(exc: BaseException) -> BaseException:
    """What to raise for an error a stream or connection keeps (raised again to every later
    caller): a copy. Raised itself, the kept error would take a traceback whose frames hold that
    stream or connection: a cycle that only a full garbage collection frees, minutes later,
    with all the connection holds."""
    try:
        return copy.copy(exc)
    except Exception:  # an error type that cannot be made again from its args
        return exc.with_traceback(None)


class StreamReset(TransportError):
    """The peer reset the stream (or asked us to stop sending) with an error code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class IncompleteRead(TransportError):
    """The peer finished the stream before sending the bytes we expected."""

    def __init__(self, partial: bytes, expected: int) -> None:
        super().__init__(f"stream ended after {len(partial)} of {expected} bytes")
        self.partial = partial
        self.expected = expected


class ConnectionClosed(TransportError):
    """The connection is closed (locally, by the peer, by idle timeout or by a failed auth)."""


class AuthenticationError(ConnectionClosed):
    """The authenticate hook rejected the connection (or did not finish in time)."""


# ---- configuration ---------------------------------------------------------------------------------


@dataclasses.dataclass
class TransportConfig:
    """Knobs of the peer transport. `from_config` maps meshcache's Config onto it."""

    # Largest frame `recv_frame` accepts by default (payloads are not frames: no limit there).
    max_frame_size: int = 1 * MiB
    # Seconds a recv may wait without receiving any byte before TransportTimeout.
    recv_timeout: float = 10.0
    # Seconds a send may wait for the peer to take data (flow control) before TransportTimeout.
    send_timeout: float = 10.0
    # Seconds for the handshake of a new connection.
    connect_timeout: float = 10.0
    # Seconds the authenticate hook may take.
    auth_timeout: float = 10.0
    # Seconds without any packet before a QUIC connection is dropped.
    idle_timeout: float = 60.0
    # QUIC payload bytes per UDP datagram. aioquic has no PMTU discovery: both ends must agree.
    # 1452 fits a 1500-MTU Ethernet path (IPv6 + UDP); 8952 a 9000-MTU LAN; 65000 loopback.
    max_datagram_size: int = 1452
    # SO_RCVBUF / SO_SNDBUF of the UDP sockets (capped by net.core.[rw]mem_max).
    socket_buffer: int = 4 * MiB
    # QUIC flow control windows (aioquic doubles them as they fill).
    max_data: int = 64 * MiB
    max_stream_data: int = 16 * MiB
    # "reno" measured faster than "cubic" in aioquic (less Python per ACK).
    congestion_control: str = "reno"
    # Most bytes in flight (0: no cap). Near the peer's UDP receive buffer: more only overflows
    # it (see quic.congestion_control_name); raise it for WAN paths with a larger BDP.
    max_congestion_window: int = 4 * MiB
    # Send the QUIC datagrams once per event-loop iteration instead of after every event.
    coalesce_transmit: bool = True
    # Bytes a stream may hold unacknowledged before send_payload waits.
    stream_send_buffer: int = 8 * MiB
    # Most streams one peer may have open towards us at once (QUIC MAX_STREAMS).
    max_streams: int = 128
    # QUIC engine: "auto" (qh3 when installed, else aioquic), "qh3" or "aioquic" (engine.py).
    quic_engine: str = "auto"
    # Batched UDP I/O: GSO sends and GRO / recvmmsg receives where the kernel has them
    # (batching.py); off: one sendto per datagram.
    udp_batching: bool = True
    # ---- before authentication (bounded memory; see docs/security.md) ----
    # Streams a peer may open before it is admitted (the authenticator needs one).
    preauth_max_streams: int = 4
    # Bytes a peer may send on all its streams before it is admitted; more closes it.
    preauth_max_bytes: int = 256 * KiB
    # QUIC connection receive window until admission: what the engine itself may hold for the
    # peer, out-of-order data included (aioquic: the normal windows after admission; qh3: a
    # server's windows stay at this size and are returned as the data is delivered).
    preauth_max_data: int = 1 * MiB
    # Connections handshaking or authenticating at once; past it a new (Retry-validated) one
    # takes the place of the oldest pending one.
    max_unauthenticated: int = 64
    # Pending connections past which a new client must first prove its address (QUIC Retry);
    # 0: always.
    retry_threshold: int = 8

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "TransportConfig":
        """Take what applies from a meshcache.config.Config (duck-typed), then `overrides`."""
        values: dict[str, Any] = {}
        if getattr(config, "max_datagram_size", None):
            values["max_datagram_size"] = int(config.max_datagram_size)
        for key in ("quic_engine", "udp_batching", "preauth_max_bytes", "max_unauthenticated",
                    "retry_threshold"):
            if getattr(config, key, None) is not None:
                values[key] = getattr(config, key)
        if getattr(config, "request_timeout", None):
            t = float(config.request_timeout)
            values.update(recv_timeout=t, send_timeout=t, connect_timeout=t, auth_timeout=t)
        values.update(overrides)
        return cls(**values)


# ---- peers -----------------------------------------------------------------------------------------


Address = Any  # ("host", port) for QUIC; any hashable name for the memory transport


def parse_address(addr: Any) -> tuple[str, int]:
    """'host:port', '[v6]:port' or (host, port) -> (host, port)."""
    if isinstance(addr, tuple):
        return str(addr[0]), int(addr[1])
    s = str(addr)
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
    else:
        host, _, port = s.rpartition(":")
    if not host or not port:
        raise ValueError(f"address {addr!r}: expected host:port")
    return host, int(port)


@dataclasses.dataclass(frozen=True)
class PeerInfo:
    """Who is at the other end, as far as the transport knows."""

    address: Any
    # SHA-256 of the peer's certificate (DER) when the transport saw one, else None.
    cert_fingerprint: bytes | None = None
    # Node id derived from the peer's certificate key, when seen (see identity.py).
    cert_node_id: str | None = None


# ---- streams ---------------------------------------------------------------------------------------


class Stream(abc.ABC):
    """One bidirectional byte stream: one request and its reply.

    Receiving is implemented here on top of `_feed*` calls from the transport; sending is
    `_write` / `_write_eof` / `_reset_local`, implemented by each transport.
    """

    def __init__(self, connection: "Connection", stream_id: int, config: TransportConfig) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.config = config
        self._loop = asyncio.get_running_loop()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None  # receive-side failure (reset, closed)
        self._send_error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._fin_sent = False
        self._closed = False
        self.bytes_received = 0
        self.bytes_sent = 0

    # ---- identity --------------------------------------------------------------------------------

    @property
    def peer(self) -> PeerInfo:
        return self.connection.peer

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stream_id} peer={self.peer.address!r}>"

    # ---- fed by the transport ---------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._eof or self._error is not None or not data:
            return
        conn = self.connection
        if not conn.authenticated and not conn._preauth_take(len(data)):
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self.bytes_received += len(data)
        self._wake()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _feed_error(self, exc: BaseException) -> None:
        if self._error is None and not self._eof:
            self._error = exc
        if self._send_error is None:
            self._send_error = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        """Wait for more bytes, EOF or an error, at most `timeout` seconds."""
        if self._error is not None:
            raise stored(self._error)
        fut = self._loop.create_future()
        self._waiter = fut
        handle = None
        if timeout is not None:
            handle = self._loop.call_later(timeout, _expire, fut)
        try:
            await fut
        except TransportTimeout:
            self._waiter = None
            raise TransportTimeout(
                f"peer {self.peer.address!r} sent nothing on stream {self.stream_id} "
                f"for {timeout:.3g} s") from None
        finally:
            if handle is not None:
                handle.cancel()
        if self._error is not None and not self._buffered:
            raise stored(self._error)

    def _timeout(self, timeout: float | None) -> float | None:
        return self.config.recv_timeout if timeout is None else (timeout if timeout > 0 else None)

    # ---- receiving -------------------------------------------------------------------------------

    async def recv_exactly(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly `n` bytes; IncompleteRead if the peer finishes first.

        `timeout`: seconds without progress (default config.recv_timeout; 0 = no deadline)."""
        t = self._timeout(timeout)
        while self._buffered < n:
            if self._error is not None:
                raise stored(self._error)
            if self._eof:
                raise IncompleteRead(self._take(self._buffered), n)
            await self._wait(t)
        return self._take(n)

    async def recv_some(self, max_bytes: int = 1 * MiB, timeout: float | None = None) -> bytes:
        """Up to `max_bytes` of what has arrived (waits for at least one byte); b'' at EOF."""
        t = self._timeout(timeout)
        while not self._buffered:
            if self._error is not None:
                raise stored(self._error)
            if self._eof:
                return b""
            await self._wait(t)
        if len(self._chunks[0]) <= max_bytes:
            data = self._chunks.popleft()
            self._buffered -= len(data)
            return data
        return self._take(max_bytes)

    async def recv_payload(self, n: int, timeout: float | None = None) -> AsyncIterator[bytes]:
        """Yield the next `n` bytes as they arrive, in chunks (no copy into one buffer)."""
        left = n
        while left:
            chunk = await self.recv_some(left, timeout)
            if not chunk:
                raise IncompleteRead(b"", left)
            left -= len(chunk)
            yield chunk

    async def recv_frame(self, max_size: int | None = None, timeout: float | None = None) -> bytes:
        """One length-prefixed frame. The length is checked against `max_size` (default
        config.max_frame_size) before any of the body is waited for; too long -> FrameTooLarge
        and the stream is reset."""
        header = await self.recv_exactly(FRAME_HEADER, timeout)
        length = int.from_bytes(header, "big")
        limit = self.config.max_frame_size if max_size is None else max_size
        if length > limit:
            self.reset(ERR_FRAME_TOO_LARGE)
            raise FrameTooLarge(f"frame of {length} bytes from {self.peer.address!r} "
                                f"exceeds the limit of {limit}")
        return await self.recv_exactly(length, timeout)

    async def recv_eof(self, timeout: float | None = None) -> None:
        """Wait until the peer finished its side; data left unread is an error."""
        t = self._timeout(timeout)
        while not self._eof:
            if self._buffered:
                raise TransportError(f"unexpected {self._buffered} bytes before end of stream")
            if self._error is not None:
                raise stored(self._error)
            await self._wait(t)
        if self._buffered:
            raise TransportError(f"unexpected {self._buffered} bytes before end of stream")

    @property
    def at_eof(self) -> bool:
        """The peer finished its side and everything was read."""
        return self._eof and not self._buffered

    def _take(self, n: int) -> bytes:
        """Remove and return the first n buffered bytes (n <= buffered)."""
        chunks = self._chunks
        if n == 0:
            return b""
        first = chunks[0]
        if len(first) == n:
            chunks.popleft()
            self._buffered -= n
            return first
        if len(first) > n:
            chunks[0] = first[n:]
            self._buffered -= n
            return first[:n]
        parts = []
        left = n
        while left:
            c = chunks.popleft()
            if len(c) > left:
                parts.append(c[:left])
                chunks.appendleft(c[left:])
                left = 0
            else:
                parts.append(c)
                left -= len(c)
        self._buffered -= n
        return b"".join(parts)

    # ---- sending ---------------------------------------------------------------------------------

    def _check_send(self) -> None:
        if self._send_error is not None:
            raise stored(self._send_error)
        if self._fin_sent:
            raise TransportError("stream already finished")

    async def send_frame(self, data: bytes | bytearray | memoryview) -> None:
        """One length-prefixed frame (the receiver bounds its size)."""
        self._check_send()
        n = len(data)
        if n <= 64 * KiB:
            await self._write(n.to_bytes(FRAME_HEADER, "big") + bytes(data))
        else:
            await self._write(n.to_bytes(FRAME_HEADER, "big"))
            await self._write(data)

    async def send_payload(
        self,
        data: bytes | bytearray | memoryview | Iterable[bytes] | AsyncIterable[bytes],
        *,
        end: bool = False,
    ) -> None:
        """Raw bytes (a block): one bytes-like object, or an (async) iterable of chunks.
        With `end=True` the stream is finished afterwards."""
        self._check_send()
        if isinstance(data, (bytes, bytearray, memoryview)):
            await self._write(data)
        elif hasattr(data, "__aiter__"):
            async for chunk in data:  # type: ignore[union-attr]
                await self._write(chunk)
        else:
            for chunk in data:  # type: ignore[union-attr]
                await self._write(chunk)
        if end:
            await self.finish()

    async def flushed(self, low: int = 0) -> None:
        """Wait until at most `low` of the bytes sent on this stream are not yet acknowledged
        by the peer (sends return once bytes are queued). A transport that delivers at once
        returns at once."""

    async def finish(self) -> None:
        """Finish our side of the stream (the peer reads EOF); receiving goes on."""
        if self._fin_sent or self._send_error is not None:
            return
        self._fin_sent = True
        await self._write_eof()

    def reset(self, code: int = ERR_CANCELLED) -> None:
        """Abort both directions at once: the peer's reads and writes fail with StreamReset."""
        if self._closed:
            return
        self._closed = True
        if self._error is None and not self._eof:
            self._error = StreamReset(f"stream {self.stream_id} reset locally", code)
        if self._send_error is None:
            self._send_error = StreamReset(f"stream {self.stream_id} reset locally", code)
        self._wake()
        self._reset_local(code)
        self._release()

    async def aclose(self) -> None:
        """Done with the stream: finish our side if still open and stop receiving.
        A stream whose peer has not finished is reset (its unread data discarded)."""
        if self._closed:
            return
        if not self._fin_sent and self._send_error is None:
            with contextlib.suppress(TransportError):
                await self.finish()
        if not self._eof and self._error is None:
            self._stop_receiving(ERR_CANCELLED)
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        self._release()

    async def __aenter__(self) -> "Stream":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and not self._closed:
            self.reset(ERR_CANCELLED)
        else:
            await self.aclose()

    # ---- implemented by transports ----------------------------------------------------------------

    @abc.abstractmethod
    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes for the peer; wait while too much is unacknowledged."""

    @abc.abstractmethod
    async def _write_eof(self) -> None:
        """Signal the end of our side."""

    @abc.abstractmethod
    def _reset_local(self, code: int) -> None:
        """Abort sending and ask the peer to stop sending."""

    @abc.abstractmethod
    def _stop_receiving(self, code: int) -> None:
        """Ask the peer to stop sending (we will not read more)."""

    def _release(self) -> None:
        """The stream is done locally: forget it (hook)."""


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TransportTimeout())


# ---- connections -----------------------------------------------------------------------------------


class Connection(abc.ABC):
    """One connection to one peer, carrying many concurrent streams."""

    def __init__(self, *, is_client: bool, peer: PeerInfo, config: TransportConfig) -> None:
        self.is_client = is_client
        self.peer = peer
        self.config = config
        # Set by the authenticate hook when it knows who the peer is (e.g. a node id).
        self.peer_node_id: str | None = None
        self.authenticated = False
        self._incoming: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._closed_exc: ConnectionClosed | None = None
        self._closed_event = asyncio.Event()
        self._streams: dict[int, Stream] = {}
        # Called (with this connection) when packets from the peer arrive, at most every
        # HEARD_INTERVAL seconds: liveness can count any traffic, not only replies to pings.
        self.on_heard: Callable[["Connection"], None] | None = None
        self._heard_at = -math.inf
        self._preauth_bytes = 0
        self._preauth_streams = 0

    # ---- before authentication: bounded ------------------------------------------------------

    def _preauth_take(self, n: int) -> bool:
        """Count `n` bytes received before admission; False (and the connection refused) past
        config.preauth_max_bytes."""
        self._preauth_bytes += n
        if self._preauth_bytes > self.config.preauth_max_bytes:
            self._refuse(f"sent more than {self.config.preauth_max_bytes} bytes "
                         "before authentication")
            return False
        return True

    def _refuse(self, reason: str) -> None:
        """Close a connection that broke a pre-authentication bound."""
        if self._closed_exc is None:
            log.info("closing connection from %r: %s", self.peer.address, reason)
            self._abort(ERR_AUTH, reason[:100])

    def _abort(self, code: int, reason: str) -> None:
        """Close now, from synchronous code (transports override)."""
        self._mark_closed(ConnectionClosed(f"connection closed locally ({code:#x} {reason})"))

    def _admitted(self) -> None:
        """The authenticator accepted the peer (transports raise their limits here)."""

    def _heard(self, now: float) -> None:
        """The transport received a packet from the peer at `now` (cheap: hot path)."""
        if now - self._heard_at >= HEARD_INTERVAL:
            self._heard_at = now
            if self.on_heard is not None:
                self.on_heard(self)

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        return f"<{type(self).__name__} {side} peer={self.peer.address!r}>"

    @property
    def is_closed(self) -> bool:
        return self._closed_exc is not None

    @abc.abstractmethod
    async def open_stream(self) -> Stream:
        """A new stream to the peer. The peer learns of it with the first bytes (or finish)
        sent on it, as in QUIC: the opener speaks first."""

    async def accept_stream(self, timeout: float | None = None) -> Stream:
        """The next stream the peer opened. For authenticators; after authentication the
        transport hands incoming streams to the handler instead."""
        if self._closed_exc is not None and self._incoming.empty():
            raise stored(self._closed_exc)
        t = self.config.recv_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(t if t and t > 0 else None):
                s = await self._incoming.get()
        except TimeoutError:
            raise TransportTimeout(f"peer {self.peer.address!r} opened no stream "
                                   f"within {t:.3g} s") from None
        if s is None:
            self._incoming.put_nowait(None)  # keep the end marker for other takers
            assert self._closed_exc is not None
            raise stored(self._closed_exc)
        return s

    @abc.abstractmethod
    def channel_binding(self) -> bytes:
        """32 bytes unique to this connection that both ends compute alike (see module doc)."""

    @abc.abstractmethod
    async def close(self, code: int = ERR_NONE, reason: str = "") -> None:
        """Close the connection (all its streams fail with ConnectionClosed)."""

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    def _new_incoming(self, stream: Stream) -> None:
        if not self.authenticated:
            self._preauth_streams += 1
            if self._preauth_streams > self.config.preauth_max_streams:
                self._refuse(f"opened more than {self.config.preauth_max_streams} streams "
                             "before authentication")
                stream._feed_error(ConnectionClosed("connection refused"))
                return
        self._streams[stream.stream_id] = stream
        self._incoming.put_nowait(stream)

    def _mark_closed(self, exc: ConnectionClosed) -> None:
        """Fail every stream and wake every waiter (called once by the transport)."""
        if self._closed_exc is not None:
            return
        self._closed_exc = exc
        for s in list(self._streams.values()):
            s._feed_error(exc)
        self._streams.clear()
        self._incoming.put_nowait(None)
        self._closed_event.set()


StreamHandler = Callable[[Stream], Awaitable[None]]
Authenticator = Callable[[Connection], Awaitable[None]]


# ---- transports ------------------------------------------------------------------------------------


class Transport(abc.ABC):
    """One node's endpoint: accepts connections (listen) and opens them (connect), one per peer."""

    def __init__(self, config: TransportConfig | None = None, *,
                 authenticate: Authenticator | None = None) -> None:
        self.config = config or TransportConfig()
        self.authenticate = authenticate
        self._rejected_logged: dict[Any, float] = {}  # host -> when its rejection was logged
        self._handler: StreamHandler | None = None
        self._pool: dict[Any, Connection] = {}
        self._connecting: dict[Any, asyncio.Future[Connection]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connections: set[Connection] = set()
        self._closing = False

    # ---- public ----------------------------------------------------------------------------------

    @abc.abstractmethod
    async def listen(self, addr: Any, handler: StreamHandler) -> Any:
        """Accept connections at `addr`; returns the bound address."""

    async def connect(self, addr: Any) -> Connection:
        """The connection to the peer at `addr`: reused while open, opened and authenticated
        on first use; concurrent callers share one attempt."""
        key = self._pool_key(addr)
        conn = self._pool.get(key)
        if conn is not None and not conn.is_closed:
            return conn
        fut = self._connecting.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._connect_new(addr))
            self._connecting[key] = fut
            fut.add_done_callback(partial(self._connect_done, key))
        conn = await asyncio.shield(fut)
        return conn

    def _connect_done(self, key: Any, fut: "asyncio.Future[Connection]") -> None:
        self._connecting.pop(key, None)
        if not fut.cancelled():
            fut.exception()  # retrieved: a caller that gave up must not leave it unlogged

    async def open_stream(self, addr: Any) -> Stream:
        """Shortcut: a new stream on the connection to `addr`."""
        conn = await self.connect(addr)
        return await conn.open_stream()

    async def close(self) -> None:
        """Close every connection and stop listening."""
        self._closing = True
        for fut in list(self._connecting.values()):
            fut.cancel()
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                await conn.close(ERR_SHUTDOWN, "shutdown")
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.clear()
        await self._close_endpoint()

    @property
    def connections(self) -> list[Connection]:
        return [c for c in self._connections if not c.is_closed]

    @property
    def pooled(self) -> int:
        """Connections kept for reuse (one per peer address this node opened one to)."""
        return len(self._pool)

    # ---- for implementations ----------------------------------------------------------------------

    def _pool_key(self, addr: Any) -> Any:
        return addr

    @abc.abstractmethod
    async def _open_connection(self, addr: Any) -> Connection:
        """Handshake a new client connection (not yet authenticated)."""

    async def _close_endpoint(self) -> None:
        """Release sockets etc."""

    async def _connect_new(self, addr: Any) -> Connection:
        if self._closing:
            raise ConnectionClosed("transport is closed")
        conn = await self._open_connection(addr)
        self._connections.add(conn)
        try:
            await self._authenticate(conn)
        except BaseException:
            self._connections.discard(conn)
            raise
        key = self._pool_key(addr)
        self._pool[key] = conn
        self._spawn(self._serve_pooled(key, conn))
        return conn

    async def _serve_pooled(self, key: Any, conn: Connection) -> None:
        """Serve a connection we opened; once it closes, drop it from the pool (peers come and
        go on new addresses: a closed connection kept there would be kept forever)."""
        try:
            await self._serve_streams(conn)
        finally:
            if self._pool.get(key) is conn:
                del self._pool[key]

    def _accepted(self, conn: Connection) -> None:
        """A peer connected to us (handshake done): authenticate, then serve its streams."""
        self._connections.add(conn)
        if self.authenticate is None:  # admitted before any of its bytes are counted
            conn.authenticated = True
            conn._admitted()
        self._spawn(self._serve_accepted(conn))

    async def _serve_accepted(self, conn: Connection) -> None:
        try:
            await self._authenticate(conn)
        except TransportError as e:
            # A rejected peer is what an operator must see (a wrong credential): WARNING, once
            # a minute per host so a peer retrying every round does not flood the log.
            host, now = conn.peer.address[0], time.monotonic()
            if now - self._rejected_logged.get(host, -60.0) >= 60.0:
                if len(self._rejected_logged) >= 1024:  # many hosts: forget the old entries
                    self._rejected_logged = {h: t for h, t in self._rejected_logged.items()
                                             if now - t < 60.0}
                self._rejected_logged[host] = now
                log.warning("connection from %r rejected: %s", conn.peer.address, e)
            else:
                log.debug("connection from %r rejected: %s", conn.peer.address, e)
            self._connections.discard(conn)
            return
        await self._serve_streams(conn)

    async def _authenticate(self, conn: Connection) -> None:
        if self.authenticate is None:
            if not conn.authenticated:
                conn.authenticated = True
                conn._admitted()
            return
        try:
            async with asyncio.timeout(self.config.auth_timeout):
                await self.authenticate(conn)
        except Exception as e:
            reason = "timeout" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            with contextlib.suppress(Exception):
                await conn.close(ERR_AUTH, "authentication failed")
            raise AuthenticationError(
                f"authentication with {conn.peer.address!r} failed ({reason})") from e
        if conn.is_closed:
            raise AuthenticationError(f"connection to {conn.peer.address!r} closed during auth")
        conn.authenticated = True
        conn._admitted()

    async def _serve_streams(self, conn: Connection) -> None:
        """Hand each incoming stream of an authenticated connection to the handler."""
        try:
            while True:
                try:
                    stream = await conn.accept_stream(timeout=0)
                except ConnectionClosed:
                    break
                handler = self._handler
                if handler is None:
                    stream.reset(ERR_CANCELLED)
                    continue
                self._spawn(self._run_handler(handler, stream))
        finally:
            self._connections.discard(conn)

    async def _run_handler(self, handler: StreamHandler, stream: Stream) -> None:
        try:
            await handler(stream)
        except TransportError as e:
            log.debug("stream %r: %s", stream, e)
            stream.reset(ERR_HANDLER)
        except asyncio.CancelledError:
            stream.reset(ERR_SHUTDOWN)
            raise
        except Exception:
            log.exception("stream handler failed on %r", stream)
            stream.reset(ERR_HANDLER)
        else:
            with contextlib.suppress(TransportError):
                await stream.aclose()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

"""QUIC peer transport on qh3 or aioquic (engine.py; `quic_engine`, qh3 by default).

One UDP socket accepts connections (`listen`); each outgoing connection has its own UDP socket
(`connect`, one connection per peer, reused). TLS 1.3 with each node's self-signed certificate
(identity.py), ALPN "meshcache/1", no CA verification: the cluster credential is checked by the
`authenticate` hook over `conn.channel_binding()`.

Channel binding: `Connection.channel_binding()` is the TLS 1.3 exporter (RFC 8446 section 7.5)
`TLS-Exporter("EXPORTER-meshcache-channel-binding", "", 32)`. It is derived from the handshake's
secrets and its transcript (ClientHello .. server Finished, so it covers both key shares, the
server's certificate and both random values): both ends compute the same bytes, no other
connection has them, and a man in the middle (who must run two handshakes) sees two different
values. Neither engine has an exporter; aioquic_fix.py and qh3_fix.py add it. `PeerInfo.
cert_fingerprint` and `cert_node_id` name the peer's certificate: the server's on the client
side and, where the engine lets a server ask for one (aioquic), the client's on the server side.

Before a peer is admitted (docs/transport.md): Retry once `retry_threshold` handshakes are
pending; past `max_unauthenticated`, a new (address-validated) connection takes the place of the
oldest pending one; small receive windows (admission.py).

Throughput tunings (see docs/transport.md and benchmarks/transfer.py for the measurements):
* `max_datagram_size` from config; both ends use it (no PMTU probing).
* Transmits coalesced: every event (datagram, timer, write) only schedules one flush per loop
  iteration (`loop.call_soon`), and the flush hands the datagrams over as one batch (GSO,
  batching.py) instead of one sendto each.
* aioquic: Reno, a capped congestion window; large flow-control windows; 4 MiB socket buffers.
* Many concurrent streams per connection; senders wait (backpressure) while a stream holds more
  than `stream_send_buffer` bytes not yet sent (qh3) or not yet acknowledged (aioquic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from functools import partial
from typing import Any, cast

from meshcache.transport import admission, batching
from meshcache.transport import engine as _engine
from meshcache.transport.base import (
    ALPN,
    ERR_AUTH,
    ERR_NONE,
    Connection,
    ConnectionClosed,
    PeerInfo,
    Stream,
    StreamHandler,
    StreamReset,
    Transport,
    TransportConfig,
    TransportError,
    TransportTimeout,
    parse_address,
    stored,
)
from meshcache.transport.identity import create_identity, load_or_create_identity, node_id_of_certificate

log = logging.getLogger("meshcache.transport.quic")

# An engine that raises while building packets (qh3's "packet builder capacity exhausted", at its
# anti-amplification limit during a handshake) is asked again this soon (s): it may have no timer
# due for long. An open connection whose engine keeps failing for ENGINE_FAILURE_GRACE (s) ends.
ENGINE_RETRY_DELAY = 0.005
ENGINE_FAILURE_GRACE = 1.0

EXPORTER_LABEL = b"EXPORTER-meshcache-channel-binding"
SERVER_NAME = "meshcache"


_FORCE = {socket.SO_RCVBUF: getattr(socket, "SO_RCVBUFFORCE", None),
          socket.SO_SNDBUF: getattr(socket, "SO_SNDBUFFORCE", None)}


def congestion_control_name(algorithm: str, max_window: int) -> str:
    """The name of `algorithm` ("reno", "cubic") with its window capped at `max_window` bytes
    (0: uncapped), registered with aioquic on first use.

    Why a cap: aioquic raises flow-control windows as data arrives, not as it is consumed, so
    only loss stops the window from growing; a CPU-bound receiver then overflows its UDP
    receive buffer, and every drop costs a retransmission, out-of-order reassembly and a
    halved window. Capping the bytes in flight near the peer's socket buffer avoids that on a
    LAN; on a long fat WAN path raise it to the bandwidth-delay product."""
    from aioquic.quic.congestion import base as _cc_base

    if not max_window:
        return algorithm
    name = f"{algorithm}-max{max_window}"
    if name in _cc_base._factories:
        return name
    base = _cc_base._factories[algorithm]

    def factory(*, max_datagram_size: int) -> Any:
        cc = base(max_datagram_size=max_datagram_size)
        cap = max(max_window, 4 * max_datagram_size)
        acked = cc.on_packet_acked

        def on_packet_acked(*, now: float, packet: Any) -> None:
            acked(now=now, packet=packet)
            if cc.congestion_window > cap:
                cc.congestion_window = cap

        cc.on_packet_acked = on_packet_acked
        return cc

    _cc_base.register_congestion_control(name, factory)
    return name


def _set_buffers(sock: socket.socket, size: int) -> None:
    """SO_RCVBUF / SO_SNDBUF of `size`: beyond net.core.[rw]mem_max where allowed
    (CAP_NET_ADMIN: the *FORCE options), else as much as the sysctl cap lets through."""
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        force = _FORCE[opt]
        if force is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
                continue
            except OSError:
                pass
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, size)


# ---- streams ---------------------------------------------------------------------------------------


class QuicStream(Stream):
    connection: "QuicPeerConnection"

    def _unacked(self) -> int:
        conn = self.connection
        return conn._engine.unsent(conn._quic, self.stream_id)

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_error is not None:
            raise stored(self._send_error)
        conn = self.connection
        if conn._closed_exc is not None:
            raise stored(conn._closed_exc)
        try:
            conn._quic.send_stream_data(self.stream_id, data)
        except Exception as e:  # e.g. qh3's QuicConnectionError once the connection closed
            raise TransportError(f"cannot send on stream {self.stream_id}: {e}") from None
        self.bytes_sent += len(data)
        conn._protocol.transmit()
        if self._unacked() > self.config.stream_send_buffer:
            await self._drain()

    async def flushed(self, low: int = 0) -> None:
        if self._unacked() > low:
            await self._drain(low)

    async def _drain(self, low: int | None = None) -> None:
        """Wait until at most `low` bytes (default: half the send buffer) are unacknowledged;
        time out when the peer takes nothing for send_timeout seconds."""
        if low is None:
            low = self.config.stream_send_buffer // 2
        proto = self.connection._protocol
        timeout = self.config.send_timeout
        while True:
            n = self._unacked()
            if n <= low:
                return
            if self._send_error is not None:
                raise stored(self._send_error)
            fut = self._loop.create_future()
            proto._drain_waiters[self] = (fut, n)
            handle = self._loop.call_later(timeout, _expire_send, fut) if timeout else None
            try:
                await fut
            except TransportTimeout:
                raise TransportTimeout(
                    f"peer {self.peer.address!r} took no data on stream {self.stream_id} "
                    f"for {timeout:.3g} s") from None
            finally:
                proto._drain_waiters.pop(self, None)
                if handle is not None:
                    handle.cancel()

    async def _write_eof(self) -> None:
        conn = self.connection
        if conn._closed_exc is not None:
            raise stored(conn._closed_exc)
        try:
            conn._quic.send_stream_data(self.stream_id, b"", end_stream=True)
        except Exception as e:  # e.g. qh3's QuicConnectionError once the connection closed
            raise TransportError(f"cannot finish stream {self.stream_id}: {e}") from None
        conn._protocol.transmit()

    def _reset_local(self, code: int) -> None:
        conn = self.connection
        if conn._closed_exc is None:
            quic = conn._quic
            with contextlib.suppress(Exception):
                quic.reset_stream(self.stream_id, code)
            if not self._eof:
                with contextlib.suppress(Exception):
                    quic.stop_stream(self.stream_id, code)
            conn._protocol.transmit()

    def _stop_receiving(self, code: int) -> None:
        conn = self.connection
        if conn._closed_exc is None:
            with contextlib.suppress(Exception):
                conn._quic.stop_stream(self.stream_id, code)
            conn._protocol.transmit()

    def _release(self) -> None:
        self.connection._streams.pop(self.stream_id, None)
        self.connection._protocol._drain_waiters.pop(self, None)


def _ignore(*_args: Any) -> None:
    pass


def _expire_send(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TransportTimeout())


# ---- connections -----------------------------------------------------------------------------------


class QuicPeerConnection(Connection):
    _streams: dict[int, QuicStream]  # type: ignore[assignment]

    def __init__(self, protocol: "_ProtocolMixin", *, is_client: bool, peer: PeerInfo,
                 config: TransportConfig) -> None:
        super().__init__(is_client=is_client, peer=peer, config=config)
        self._protocol = protocol
        self._quic = protocol._quic
        # peer-initiated bidirectional stream ids: next new one, and skipped ones still unseen
        self._next_peer_id = 1 if is_client else 0
        self._unseen_peer_ids: set[int] = set()
        self._binding: bytes | None = None
        self._engine: _engine.Engine = protocol.owner.engine

    async def open_stream(self) -> Stream:
        if self._closed_exc is not None:
            raise stored(self._closed_exc)
        sid = self._quic.get_next_available_stream_id()
        # the engine allocates the id when the stream is first used; reserve it now
        self._engine.reserve_stream(self._quic, sid)
        stream = QuicStream(self, sid, self.config)
        self._streams[sid] = stream
        return stream

    def channel_binding(self) -> bytes:
        if self._binding is None:
            try:
                self._binding = self._engine.export_keying_material(
                    self._quic, EXPORTER_LABEL, b"", 32)
            except Exception as e:
                raise TransportError(f"no channel binding available: {e}") from None
        return self._binding

    async def close(self, code: int = ERR_NONE, reason: str = "") -> None:
        self._abort(code, reason)

    def _abort(self, code: int, reason: str) -> None:
        if self._closed_exc is not None:
            return
        self._quic.close(error_code=code, reason_phrase=reason)
        self._protocol._flush_now()
        self._mark_closed(ConnectionClosed(f"connection closed locally ({code:#x} {reason})"))
        self._protocol._on_closed_locally()

    def _admitted(self) -> None:
        self._protocol._admitted()

    def _mark_closed(self, exc: ConnectionClosed) -> None:
        super()._mark_closed(exc)
        # The protocol lives on for the engine's closing exchange; without its link back, this
        # connection (with its engine, TLS and packet state) is freed by reference counting as
        # soon as nobody holds it, not by a full garbage collection minutes later.
        if self._protocol.conn is self:
            self._protocol.conn = None

    # ---- events ----------------------------------------------------------------------------------

    def _stream_for_event(self, sid: int) -> QuicStream | None:
        s = self._streams.get(sid)
        if s is not None:
            return s
        if sid & 2:  # unidirectional: not used by meshcache
            return None
        if (sid & 1) != (1 if self.is_client else 0):
            return None  # ours, already released: late data
        if sid >= self._next_peer_id:
            for skipped in range(self._next_peer_id, sid, 4):
                self._unseen_peer_ids.add(skipped)
            self._next_peer_id = sid + 4
        elif sid in self._unseen_peer_ids:
            self._unseen_peer_ids.discard(sid)
        else:
            return None  # released earlier: late data
        s = QuicStream(self, sid, self.config)
        self._new_incoming(s)
        return s

    def _on_data(self, ev: Any) -> None:
        s = self._stream_for_event(ev.stream_id)
        if s is None:
            return
        if ev.data:
            s._feed(ev.data)
        if ev.end_stream:
            s._feed_eof()

    def _on_reset(self, ev: Any) -> None:
        s = self._stream_for_event(ev.stream_id)
        if s is not None:
            s._feed_error(StreamReset(f"stream {ev.stream_id} reset by peer", ev.error_code))

    def _on_stop_sending(self, ev: Any) -> None:
        s = self._streams.get(ev.stream_id)
        with contextlib.suppress(Exception):
            self._quic.reset_stream(ev.stream_id, ev.error_code)
        if s is not None and s._send_error is None:
            s._send_error = StreamReset(f"peer stopped reading stream {ev.stream_id}",
                                        ev.error_code)
            self._protocol._wake_drain(s)


# ---- protocol --------------------------------------------------------------------------------------


class _ProtocolMixin:
    """The engine's asyncio protocol with coalesced, batched transmits and meshcache streams.
    Combined with an engine's QuicConnectionProtocol by `_classes`."""

    _quic: Any
    _loop: asyncio.AbstractEventLoop
    _transport: Any
    _timer: asyncio.TimerHandle | None
    _timer_at: float | None
    _closed: asyncio.Event
    _connection_terminated_handler: Any

    def __init__(self, quic: Any, stream_handler: Any = None, *,
                 owner: "QuicTransport", is_client: bool, address: Any = None) -> None:
        super().__init__(quic)  # type: ignore[call-arg]
        self.owner = owner
        self.is_client = is_client
        self.address = address
        self.conn: QuicPeerConnection | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._coalesce = owner.config.coalesce_transmit
        self._drain_waiters: dict[QuicStream, tuple[asyncio.Future[None], int]] = {}
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._udp_owned = False  # client: the UDP transport is ours to close
        self._sendmany: Any = None
        self._pending = False  # counted in owner's unadmitted connections
        self._engine_failing_since: float | None = None
        if not is_client and owner.engine.client_certificates:
            # ask the client for its certificate (mutual TLS, not CA-verified): instance-level
            # hook on aioquic's lazily created TLS context
            init = quic._initialize

            def _initialize(peer_cid: bytes) -> None:
                init(peer_cid)
                quic.tls._request_client_certificate = True

            quic._initialize = _initialize
        if owner.engine.admission_windows:
            admission.hold(quic, owner.config)

    # ---- transmit coalescing and batching ----------------------------------------------------

    def transmit(self) -> None:
        if not self._coalesce:
            self._flush_now()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._transport is None or self._transport.is_closing():
            return
        self._send_datagrams()
        if self._drain_waiters:
            self._check_drain()

    def _send_datagrams(self) -> None:
        """Send what the engine has to send (batched with GSO where the socket has it), then
        re-arm the engine's timer."""
        loop = self._loop
        now = loop.time()
        try:
            datagrams = self._quic.datagrams_to_send(now=now)
        except Exception as e:
            self._engine_failed(e, now)
            return
        self._engine_failing_since = None
        if datagrams:
            batching.send(self._transport, self._sendmany, datagrams)
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = loop.call_at(timer_at, self._handle_timer)  # type: ignore[attr-defined]
        self._timer_at = timer_at

    def _engine_failed(self, error: Exception, now: float) -> None:
        """The engine raised while building packets: ask it again shortly, never letting the
        error escape into the event loop. An open connection whose engine keeps failing for
        ENGINE_FAILURE_GRACE ends (its streams fail at once) rather than hang; a handshake
        keeps trying until its own deadline (connect_timeout): qh3 at its anti-amplification
        limit fails until the client's next packet, which may be a probe a PTO later."""
        if self.conn is None or self._engine_failing_since is None:
            self._engine_failing_since = now  # (a handshake has its own deadline)
        if now - self._engine_failing_since >= ENGINE_FAILURE_GRACE:
            log.warning("QUIC engine on the connection to %r failed for %.3g s (%s); closing it",
                        self.address, ENGINE_FAILURE_GRACE, error)
            self._ended(f"QUIC engine failed: {error}")
            self._drop()
            return
        log.debug("QUIC engine could not build packets (%s); retrying", error)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_later(ENGINE_RETRY_DELAY, self._flush_now)

    def _check_drain(self) -> None:
        for stream, (fut, before) in list(self._drain_waiters.items()):
            if fut.done():
                continue
            if stream._send_error is not None or stream._unacked() < before:
                fut.set_result(None)

    def _wake_drain(self, stream: QuicStream) -> None:
        entry = self._drain_waiters.get(stream)
        if entry is not None and not entry[0].done():
            entry[0].set_result(None)

    # ---- asyncio ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._sendmany = batching.sender_of(transport, self.owner.batching)
        if not self.is_client:
            # a connection that does not complete its handshake in time is forgotten
            # (garbage Initial packets must not pin state until the idle timeout)
            self._handshake_timer = self._loop.call_later(
                self.owner.config.connect_timeout, self._handshake_expired)
            self._pending = True
            self.owner._pending_added(self)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        try:
            now = self._loop.time()
            if self.address is None:
                self.address = addr
            self._quic.receive_datagram(cast(bytes, data), addr, now=now)
            if self.conn is not None:
                self.conn._heard(now)
            self._process_events()  # type: ignore[attr-defined]
        except Exception:  # the engine should not raise here; never let one peer stop the loop
            log.exception("error handling a datagram from %r", addr)
        self.transmit()

    def datagrams_received(self, data: list[bytes], addr: Any) -> None:
        """A batch from one sender (recvmmsg / GRO through batching.py)."""
        try:
            now = self._loop.time()
            receive_many = getattr(self._quic, "receive_many_datagrams", None)
            if receive_many is not None:
                receive_many(data, addr, now=now)
            else:
                for d in data:
                    self._quic.receive_datagram(d, addr, now=now)
            if self.conn is not None:
                self.conn._heard(now)
            self._process_events()  # type: ignore[attr-defined]
        except Exception:
            log.exception("error handling datagrams from %r", addr)
        self.transmit()

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self.conn is None:
            log.debug("handshake from %r did not complete; dropping it", self.address)
            self._drop()

    def _drop(self) -> None:
        """Forget this connection without a close exchange."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._not_pending()
        self._connection_terminated_handler()
        self._unhook()
        self._closed.set()

    def _not_pending(self) -> None:
        if self._pending:
            self._pending = False
            self.owner._unadmitted.pop(self, None)

    def _evict(self) -> None:
        """Close this unadmitted connection to make room for a newer one."""
        if self.conn is not None:
            self.conn._abort(ERR_AUTH, "too many unauthenticated connections")
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        with contextlib.suppress(Exception):
            self._quic.close(error_code=ERR_AUTH, reason_phrase="too many handshakes")
            self._flush_now()
        self._drop()

    def _admitted(self) -> None:
        """The peer passed authentication: normal receive windows, no longer pending."""
        self._not_pending()
        if self.owner.engine.admission_windows:
            admission.release(self._quic, self.owner.config)
            self.transmit()

    def _on_closed_locally(self) -> None:
        self._not_pending()
        # The CONNECTION_CLOSE went out in _flush_now; skip the engine's draining period (it
        # would keep the client's socket and timers alive for 3 PTOs).
        if self._udp_owned:
            self._drop()
            if self._transport is not None:
                self._transport.close()

    # ---- QUIC events -----------------------------------------------------------------------------

    def quic_event_received(self, event: Any) -> None:
        t = type(event)
        ev = self.owner.engine.events
        conn = self.conn
        if t is ev.StreamDataReceived:
            if conn is not None:
                conn._on_data(event)
        elif t is ev.StreamReset:
            if conn is not None:
                conn._on_reset(event)
        elif t is ev.StopSendingReceived:
            if conn is not None:
                conn._on_stop_sending(event)
        elif t is ev.HandshakeCompleted:
            self._handshake_done(event)
        elif t is ev.ConnectionTerminated:
            self._terminated(event)

    def _handshake_done(self, event: Any) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if event.alpn_protocol != ALPN:
            self._quic.close(error_code=0x0178, reason_phrase="ALPN mismatch")  # no_application_protocol
            self.transmit()
            return
        der = self.owner.engine.peer_certificate_der(self._quic)
        fp = node_id = None
        if der is not None:
            fp = _engine.fingerprint(der)
            node_id = node_id_of_certificate(der)
        address = self.address
        if isinstance(address, tuple) and len(address) > 2:
            address = address[:2]
            if isinstance(address[0], str) and address[0].startswith("::ffff:"):
                address = (address[0][7:], address[1])
        self.conn = QuicPeerConnection(
            self, is_client=self.is_client,  # type: ignore[arg-type]
            peer=PeerInfo(address, cert_fingerprint=fp, cert_node_id=node_id),
            config=self.owner.config)
        if not self.is_client:
            self.owner._accepted(self.conn)

    def _terminated(self, event: Any) -> None:
        self._ended(f"{event.error_code:#x} {event.reason_phrase}")
        self._unhook()  # the engine told the server (its handler ran before this event)

    def _unhook(self) -> None:
        """After the server has forgotten this connection: drop the callbacks it gave us, each
        bound to this protocol (a cycle that only a full garbage collection would free)."""
        self._connection_id_issued_handler = _ignore
        self._connection_id_retired_handler = _ignore
        self._connection_terminated_handler = _ignore

    def _ended(self, why: str) -> None:
        """The connection is over: fail its waiters and streams, close a socket of our own."""
        self._not_pending()
        for fut, _ in list(self._drain_waiters.values()):
            if not fut.done():
                fut.set_exception(ConnectionClosed("connection closed"))
        self._drain_waiters.clear()
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self.conn is not None:
            self.conn._mark_closed(ConnectionClosed(
                f"connection to {self.conn.peer.address!r} closed ({why})"))
        if self._udp_owned and self._transport is not None:
            self._transport.close()


class _ServerMixin:
    """The engine's server (connection-id routing, version negotiation) that never lets one
    bad datagram escape into the event loop, and that bounds handshakes before authentication:
    past `retry_threshold` pending connections a new client must first prove its address
    (QUIC Retry), and past `max_unauthenticated` new connections are not accepted at all."""

    _protocols: dict[bytes, Any]
    _retry: Any
    _transport: Any

    def __init__(self, *, owner: "QuicTransport", **kwargs: Any) -> None:
        super().__init__(retry=False, **kwargs)  # type: ignore[call-arg]
        self.owner = owner
        self._retry_handler: Any = None  # made on first need (it generates an RSA key)
        self.refused = 0
        self.retries = 0

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        try:
            if self._admit_datagram(cast(bytes, data), addr):
                super().datagram_received(data, addr)  # type: ignore[misc]
        except Exception:
            log.exception("error handling a datagram from %r", addr)

    def _admit_datagram(self, data: bytes, addr: Any) -> bool:
        """False for a datagram that would start a connection we will not take now."""
        if not data or not data[0] & 0x80 or len(data) < 1200:
            return True  # short header (an existing connection) or too small to start one
        dcid_len = data[5] if len(data) > 5 else 0
        if bytes(data[6:6 + dcid_len]) in self._protocols:
            return True
        cfg = self.owner.config
        pending = len(self.owner._unadmitted)
        # Retry while handshakes pile up, always at the cap (a validated address then takes the
        # place of the oldest pending connection); a token already given is always checked
        has_token = _initial_has_token(data, dcid_len)
        full = pending >= cfg.max_unauthenticated
        if full and not has_token:
            self.refused += 1
        want_retry = has_token or full or pending >= cfg.retry_threshold
        if want_retry and self._retry_handler is None:
            if has_token:
                return False  # a token we never issued (we made no key yet)
            self._retry_handler = self.owner.engine.RetryTokenHandler()
        self._retry = self._retry_handler if want_retry else None
        if want_retry and not has_token:
            self.retries += 1
        return True

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


def _initial_has_token(data: bytes, dcid_len: int) -> bool:
    """Whether a long-header Initial packet carries a (Retry) token."""
    try:
        if (data[0] & 0x30) != 0:  # not Initial (v1 packet type 0)
            return False
        pos = 6 + dcid_len
        pos += 1 + data[pos]  # source cid
        first = data[pos]
        size = 1 << (first >> 6)
        token_len = first & 0x3F
        for b in data[pos + 1:pos + size]:
            token_len = (token_len << 8) | b
        return token_len > 0
    except IndexError:
        return False


_CLASSES: dict[str, tuple[type, type]] = {}


def _classes(engine: _engine.Engine) -> tuple[type, type]:
    """(protocol class, server class) for `engine`."""
    pair = _CLASSES.get(engine.name)
    if pair is None:
        proto = type(f"_Protocol_{engine.name}", (_ProtocolMixin, engine.QuicConnectionProtocol), {})
        server = type(f"_Server_{engine.name}", (_ServerMixin, engine.QuicServer), {})
        pair = _CLASSES[engine.name] = (proto, server)
    return pair


# ---- transport -------------------------------------------------------------------------------------


class QuicTransport(Transport):
    """QUIC endpoint of one node.

    identity: (cert_pem, key_pem, node_id) from `load_or_create_identity`; or state_dir to load
    or create it there; with neither, a throwaway identity is made (tests).
    engine: 'auto' (default: config.quic_engine), 'qh3' or 'aioquic' (engine.py)."""

    def __init__(self, config: TransportConfig | None = None, *,
                 identity: tuple[bytes, bytes, str] | None = None,
                 state_dir: str | None = None, authenticate: Any = None,
                 engine: str | None = None) -> None:
        super().__init__(config, authenticate=authenticate)
        self.engine = _engine.load(engine or self.config.quic_engine)
        if identity is None:
            identity = load_or_create_identity(state_dir) if state_dir else create_identity()
        cert_pem, key_pem, self.node_id = identity
        self._certificate = self.engine.load_certificate(cert_pem)
        self._private_key = self.engine.load_private_key(key_pem)
        self._server: Any = None
        self._server_udp: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] | None = None
        # server connections not yet admitted (handshaking or authenticating), oldest first
        self._unadmitted: dict[Any, None] = {}

    @property
    def datagram_size(self) -> int:
        """The datagram size in use: the configured one, within what the engine encodes right."""
        return min(self.config.max_datagram_size, self.engine.max_datagram_size)

    @property
    def batching(self) -> bool:
        """GSO/GRO batches only where they pay: many small datagrams. A datagram over
        batching.MAX_BATCHED_DATAGRAM fills a 64 KiB GSO send alone, and batching it only costs
        (loopback, 65000-byte datagrams, qh3: 1.17 of TLS without, 0.74 with)."""
        return self.config.udp_batching and self.datagram_size <= batching.MAX_BATCHED_DATAGRAM

    @property
    def unadmitted(self) -> int:
        """Connections to this endpoint that have not passed authentication yet."""
        return len(self._unadmitted)

    def _pending_added(self, protocol: Any) -> None:
        """A new server connection awaits admission; past `max_unauthenticated` the oldest
        pending one is closed: unauthenticated connections, which must hold their place for a
        handshake and auth_timeout, cannot keep a credentialed peer (admitted in milliseconds)
        out. Only an address-validated client gets here at the cap (Retry, _ServerMixin)."""
        self._unadmitted[protocol] = None
        while len(self._unadmitted) > self.config.max_unauthenticated:
            oldest = next(iter(self._unadmitted))
            self._unadmitted.pop(oldest, None)
            if self._server is not None:
                self._server.refused += 1
            oldest._evict()

    @property
    def handshakes_refused(self) -> int:
        """New connections not taken because `max_unauthenticated` were pending (Initials
        answered only with a Retry), and pending ones closed to make room for a newer one."""
        return self._server.refused if self._server is not None else 0

    @property
    def retries_sent(self) -> int:
        """QUIC Retry packets sent (address validation while handshakes piled up)."""
        return self._server.retries if self._server is not None else 0

    def _configuration(self, is_client: bool) -> Any:
        c = self.config
        kwargs: dict[str, Any] = dict(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=c.idle_timeout,
            max_data=c.max_data,
            max_stream_data=c.max_stream_data,
            max_datagram_size=self.datagram_size,
            server_name=SERVER_NAME if is_client else None,
            verify_mode=ssl.CERT_NONE,
        )
        if self.engine.congestion_control:
            kwargs["congestion_control_algorithm"] = congestion_control_name(
                c.congestion_control, c.max_congestion_window)
        else:
            # both ends agree on the datagram size (no path MTU probing beyond it)
            kwargs["probe_datagram_size"] = False
            if not is_client:
                # qh3 cannot raise windows after admission: a server's receive windows stay at
                # the pre-authentication size (a server receives requests; blocks flow to the
                # client, whose windows are the normal ones)
                kwargs["max_data"] = c.preauth_max_data
                kwargs["max_stream_data"] = min(c.max_stream_data, c.preauth_max_data)
        qc = self.engine.QuicConfiguration(**kwargs)
        qc.certificate = self._certificate
        qc.private_key = self._private_key
        return qc

    def _pool_key(self, addr: Any) -> Any:
        return parse_address(addr)

    async def _endpoint(self, factory: Any, sock: socket.socket) -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        batched = self.engine.create_batched_endpoint if self.batching else None
        if batched is not None:
            return cast(tuple[Any, Any], await batched(loop, factory, sock=sock,
                                                       gro_segment_size=self.datagram_size))
        return await loop.create_datagram_endpoint(factory, sock=sock)

    async def listen(self, addr: Any, handler: StreamHandler) -> tuple[str, int]:
        """Serve at 'host:port' or (host, port) (port 0: any); returns the bound address."""
        if self._server is not None:
            raise TransportError("already listening")
        sock, _ = await self._udp_socket(*parse_address(addr), listen=True)
        self._handler = handler
        configuration = self._configuration(is_client=False)
        proto_cls, server_cls = _classes(self.engine)
        udp, server = await self._endpoint(
            lambda: server_cls(owner=self, configuration=configuration,
                               create_protocol=partial(proto_cls, owner=self, is_client=False)),
            sock)
        self._server = server
        self._server_udp = cast(asyncio.DatagramTransport, udp)
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])
        return self.address

    async def _udp_socket(self, host: str, port: int, *,
                          listen: bool) -> tuple[socket.socket, Any]:
        """A UDP socket with the configured buffers, and the resolved address of (host, port):
        bound to that address to listen (an IPv6 one taking IPv4 too), else to any port."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _set_buffers(sock, self.config.socket_buffer)
            if not listen:
                sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
            else:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock, sockaddr

    async def _open_connection(self, addr: Any) -> Connection:
        host, port = parse_address(addr)
        sock, sockaddr = await self._udp_socket(host, port, listen=False)
        quic = self.engine.QuicConnection(configuration=self._configuration(is_client=True))
        proto_cls, _ = _classes(self.engine)
        udp, proto = await self._endpoint(
            lambda: proto_cls(quic, owner=self, is_client=True, address=(host, port)), sock)
        protocol = cast(Any, proto)
        protocol._udp_owned = True
        try:
            protocol.connect(sockaddr)
            async with asyncio.timeout(self.config.connect_timeout):
                await protocol.wait_connected()
        except TimeoutError:
            udp.close()
            raise TransportTimeout(f"QUIC handshake with {host}:{port} did not complete "
                                   f"within {self.config.connect_timeout:.3g} s") from None
        except ConnectionError as e:
            udp.close()
            raise ConnectionClosed(f"QUIC handshake with {host}:{port} failed: {e}") from None
        except BaseException:
            udp.close()
            raise
        if protocol.conn is None:
            udp.close()
            raise ConnectionClosed(f"QUIC handshake with {host}:{port} failed")
        return cast(Connection, protocol.conn)

    async def _close_endpoint(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.close()
            self._server = None
        await asyncio.sleep(0)


"""QUIC peer transport on aioquic.

One UDP socket accepts connections (`listen`); each outgoing connection has its own UDP socket
(`connect`, one connection per peer, reused). TLS 1.3 with each node's self-signed certificate
(identity.py), ALPN "meshcache/1", no CA verification: the cluster credential is checked by the
`authenticate` hook over `conn.channel_binding()`.

Channel binding: `Connection.channel_binding()` is the TLS 1.3 exporter (RFC 8446 section 7.5)
`TLS-Exporter("EXPORTER-meshcache-channel-binding", "", 32)`. It is derived from the handshake's
secrets and its transcript (ClientHello .. server Finished, so it covers both key shares, the
server's certificate and both random values): both ends compute the same bytes, no other
connection has them, and a man in the middle (who must run two handshakes) sees two different
values. aioquic has no exporter; aioquic_fix.py adds it. `PeerInfo.cert_fingerprint` and
`cert_node_id` name the peer's certificate: the server's on the client side and, because the
server asks each client for its certificate, the client's on the server side.

Throughput tunings (see DESIGN.md and benchmarks/transfer.py for the measurements):
* STREAM frames over 16383 bytes fixed (aioquic_fix.py), so `max_datagram_size` can be large.
* `max_datagram_size` from config; both ends must use the same value (no PMTU discovery).
* Reno congestion control; large flow-control windows (`max_data`, `max_stream_data`).
* 4 MiB SO_RCVBUF / SO_SNDBUF on every UDP socket.
* Transmits coalesced: every event (datagram, timer, write) only schedules one flush per loop
  iteration (`loop.call_soon`) instead of running aioquic's packet builder each time.
* Many concurrent streams per connection; senders wait (backpressure) while a stream holds more
  than `stream_send_buffer` unacknowledged bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import ssl
from functools import partial
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.congestion import base as _cc_base
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import load_pem_private_key, load_pem_x509_certificates
from cryptography.hazmat.primitives import serialization

from meshcache.transport import aioquic_fix
from meshcache.transport.base import (
    ALPN,
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
)
from meshcache.transport.identity import create_identity, load_or_create_identity, node_id_of_certificate

# MESHCACHE_AIOQUIC_SEND_BUFFER=0 keeps aioquic's own send buffer (to measure the patch)
aioquic_fix.apply(send_buffer=os.environ.get("MESHCACHE_AIOQUIC_SEND_BUFFER", "1") != "0")

log = logging.getLogger("meshcache.transport.quic")

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
        s = self.connection._quic._streams.get(self.stream_id)
        if s is None:
            return 0
        sender = s.sender
        return sender._buffer_stop - sender._buffer_start

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_error is not None:
            raise self._send_error
        conn = self.connection
        if conn._closed_exc is not None:
            raise conn._closed_exc
        try:
            conn._quic.send_stream_data(self.stream_id, data)
        except (ValueError, RuntimeError, AssertionError) as e:
            raise TransportError(f"cannot send on stream {self.stream_id}: {e}") from None
        self.bytes_sent += len(data)
        conn._protocol.transmit()
        if self._unacked() > self.config.stream_send_buffer:
            await self._drain()

    async def _drain(self) -> None:
        """Wait until at most half the send buffer is unacknowledged; time out when the peer
        takes nothing for send_timeout seconds."""
        low = self.config.stream_send_buffer // 2
        proto = self.connection._protocol
        timeout = self.config.send_timeout
        while True:
            n = self._unacked()
            if n <= low:
                return
            if self._send_error is not None:
                raise self._send_error
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
            raise conn._closed_exc
        try:
            conn._quic.send_stream_data(self.stream_id, b"", end_stream=True)
        except (ValueError, RuntimeError, AssertionError) as e:
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


def _expire_send(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TransportTimeout())


# ---- connections -----------------------------------------------------------------------------------


class QuicPeerConnection(Connection):
    _streams: dict[int, QuicStream]  # type: ignore[assignment]

    def __init__(self, protocol: "_Protocol", *, is_client: bool, peer: PeerInfo,
                 config: TransportConfig) -> None:
        super().__init__(is_client=is_client, peer=peer, config=config)
        self._protocol = protocol
        self._quic = protocol._quic
        # peer-initiated bidirectional stream ids: next new one, and skipped ones still unseen
        self._next_peer_id = 1 if is_client else 0
        self._unseen_peer_ids: set[int] = set()
        self._binding: bytes | None = None

    async def open_stream(self) -> Stream:
        if self._closed_exc is not None:
            raise self._closed_exc
        sid = self._quic.get_next_available_stream_id()
        # aioquic allocates the id when the stream is first used; reserve it now
        self._quic._get_or_create_stream_for_send(sid)
        stream = QuicStream(self, sid, self.config)
        self._streams[sid] = stream
        return stream

    def channel_binding(self) -> bytes:
        if self._binding is None:
            try:
                self._binding = aioquic_fix.export_keying_material(
                    self._quic.tls, EXPORTER_LABEL, b"", 32)
            except Exception as e:
                raise TransportError(f"no channel binding available: {e}") from None
        return self._binding

    async def close(self, code: int = ERR_NONE, reason: str = "") -> None:
        if self._closed_exc is not None:
            return
        self._quic.close(error_code=code, reason_phrase=reason)
        self._protocol._flush_now()
        self._mark_closed(ConnectionClosed(f"connection closed locally ({code:#x} {reason})"))
        self._protocol._on_closed_locally()

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

    def _on_data(self, ev: events.StreamDataReceived) -> None:
        s = self._stream_for_event(ev.stream_id)
        if s is None:
            return
        if ev.data:
            s._feed(ev.data)
        if ev.end_stream:
            s._feed_eof()

    def _on_reset(self, ev: events.StreamReset) -> None:
        s = self._stream_for_event(ev.stream_id)
        if s is not None:
            s._feed_error(StreamReset(f"stream {ev.stream_id} reset by peer", ev.error_code))

    def _on_stop_sending(self, ev: events.StopSendingReceived) -> None:
        s = self._streams.get(ev.stream_id)
        with contextlib.suppress(Exception):
            self._quic.reset_stream(ev.stream_id, ev.error_code)
        if s is not None and s._send_error is None:
            s._send_error = StreamReset(f"peer stopped reading stream {ev.stream_id}",
                                        ev.error_code)
            self._protocol._wake_drain(s)


# ---- protocol --------------------------------------------------------------------------------------


class _Protocol(QuicConnectionProtocol):
    """aioquic's asyncio protocol with coalesced transmits and meshcache streams."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *,
                 owner: "QuicTransport", is_client: bool, address: Any = None) -> None:
        super().__init__(quic)
        self.owner = owner
        self.is_client = is_client
        self.address = address
        self.conn: QuicPeerConnection | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._coalesce = owner.config.coalesce_transmit
        self._drain_waiters: dict[QuicStream, tuple[asyncio.Future[None], int]] = {}
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._udp_owned = False  # client: the UDP transport is ours to close
        if not is_client:
            # ask the client for its certificate (mutual TLS, not CA-verified): instance-level
            # hook on aioquic's lazily created TLS context
            init = quic._initialize

            def _initialize(peer_cid: bytes) -> None:
                init(peer_cid)
                quic.tls._request_client_certificate = True

            quic._initialize = _initialize  # type: ignore[method-assign]

    # ---- transmit coalescing -------------------------------------------------------------------

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
        QuicConnectionProtocol.transmit(self)
        if self._drain_waiters:
            self._check_drain()

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
        super().connection_made(transport)
        if not self.is_client:
            # a connection that does not complete its handshake in time is forgotten
            # (garbage Initial packets must not pin state until the idle timeout)
            self._handshake_timer = self._loop.call_later(
                self.owner.config.connect_timeout, self._handshake_expired)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        try:
            now = self._loop.time()
            self._quic.receive_datagram(cast(bytes, data), addr, now=now)
            if self.conn is not None:
                self.conn._heard(now)
            self._process_events()
        except Exception:  # aioquic should not raise here; never let one peer stop the loop
            log.exception("error handling a datagram from %r", addr)
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
        self._connection_terminated_handler()
        self._closed.set()

    def _on_closed_locally(self) -> None:
        # The CONNECTION_CLOSE went out in _flush_now; skip aioquic's draining period (it would
        # keep the client's socket and timers alive for 3 PTOs).
        if self._udp_owned:
            self._drop()
            if self._transport is not None:
                self._transport.close()

    # ---- QUIC events -----------------------------------------------------------------------------

    def quic_event_received(self, event: events.QuicEvent) -> None:
        t = type(event)
        conn = self.conn
        if t is events.StreamDataReceived:
            if conn is not None:
                conn._on_data(cast(events.StreamDataReceived, event))
        elif t is events.StreamReset:
            if conn is not None:
                conn._on_reset(cast(events.StreamReset, event))
        elif t is events.StopSendingReceived:
            if conn is not None:
                conn._on_stop_sending(cast(events.StopSendingReceived, event))
        elif t is events.HandshakeCompleted:
            self._handshake_done(cast(events.HandshakeCompleted, event))
        elif t is events.ConnectionTerminated:
            self._terminated(cast(events.ConnectionTerminated, event))

    def _handshake_done(self, event: events.HandshakeCompleted) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if event.alpn_protocol != ALPN:
            self._quic.close(error_code=0x0178, reason_phrase="ALPN mismatch")  # no_application_protocol
            self.transmit()
            return
        peer_cert = getattr(self._quic.tls, "_peer_certificate", None)
        fp = node_id = None
        if peer_cert is not None:
            der = peer_cert.public_bytes(serialization.Encoding.DER)
            fp = hashlib.sha256(der).digest()
            node_id = node_id_of_certificate(peer_cert)
        address = self.address if self.is_client else self._quic.get_peer_address()
        if isinstance(address, tuple) and len(address) > 2:
            address = address[:2]
        self.conn = QuicPeerConnection(
            self, is_client=self.is_client,
            peer=PeerInfo(address, cert_fingerprint=fp, cert_node_id=node_id),
            config=self.owner.config)
        if not self.is_client:
            self.owner._accepted(self.conn)

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        for fut, _ in list(self._drain_waiters.values()):
            if not fut.done():
                fut.set_exception(ConnectionClosed("connection closed"))
        self._drain_waiters.clear()
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self.conn is not None:
            self.conn._mark_closed(ConnectionClosed(
                f"connection to {self.conn.peer.address!r} closed "
                f"({event.error_code:#x} {event.reason_phrase})"))
        if self._udp_owned and self._transport is not None:
            self._transport.close()


class _Server(QuicServer):
    """aioquic's server (connection-id routing, version negotiation) that never lets one bad
    datagram escape into the event loop."""

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        try:
            super().datagram_received(data, addr)
        except Exception:
            log.exception("error handling a datagram from %r", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


# ---- transport -------------------------------------------------------------------------------------


class QuicTransport(Transport):
    """QUIC endpoint of one node.

    identity: (cert_pem, key_pem, node_id) from `load_or_create_identity`; or state_dir to load
    or create it there; with neither, a throwaway identity is made (tests)."""

    def __init__(self, config: TransportConfig | None = None, *,
                 identity: tuple[bytes, bytes, str] | None = None,
                 state_dir: str | None = None, authenticate: Any = None) -> None:
        super().__init__(config, authenticate=authenticate)
        if identity is None:
            identity = load_or_create_identity(state_dir) if state_dir else create_identity()
        cert_pem, key_pem, self.node_id = identity
        self._certificate = load_pem_x509_certificates(cert_pem)[0]
        self._private_key = load_pem_private_key(key_pem)
        self._server: _Server | None = None
        self._server_udp: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] | None = None

    def _configuration(self, is_client: bool) -> QuicConfiguration:
        c = self.config
        qc = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            congestion_control_algorithm=congestion_control_name(
                c.congestion_control, c.max_congestion_window),
            idle_timeout=c.idle_timeout,
            max_data=c.max_data,
            max_stream_data=c.max_stream_data,
            max_datagram_size=c.max_datagram_size,
            server_name=SERVER_NAME if is_client else None,
            verify_mode=ssl.CERT_NONE,
        )
        qc.certificate = self._certificate
        qc.private_key = self._private_key
        return qc

    def _pool_key(self, addr: Any) -> Any:
        return parse_address(addr)

    async def listen(self, addr: Any, handler: StreamHandler) -> tuple[str, int]:
        """Serve at 'host:port' or (host, port) (port 0: any); returns the bound address."""
        if self._server is not None:
            raise TransportError("already listening")
        host, port = parse_address(addr)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _set_buffers(sock, self.config.socket_buffer)
            sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
        self._handler = handler
        configuration = self._configuration(is_client=False)
        udp, server = await loop.create_datagram_endpoint(
            lambda: _Server(configuration=configuration,
                            create_protocol=partial(_Protocol, owner=self, is_client=False)),
            sock=sock)
        self._server = cast(_Server, server)
        self._server_udp = cast(asyncio.DatagramTransport, udp)
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])
        return self.address

    async def _open_connection(self, addr: Any) -> Connection:
        host, port = parse_address(addr)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _set_buffers(sock, self.config.socket_buffer)
            sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        except BaseException:
            sock.close()
            raise
        quic = QuicConnection(configuration=self._configuration(is_client=True))
        udp, proto = await loop.create_datagram_endpoint(
            lambda: _Protocol(quic, owner=self, is_client=True, address=(host, port)), sock=sock)
        protocol = cast(_Protocol, proto)
        protocol._udp_owned = True
        try:
            protocol.connect(sockaddr, transmit=True)
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
        return protocol.conn

    async def _close_endpoint(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.close()
            self._server = None
        await asyncio.sleep(0)

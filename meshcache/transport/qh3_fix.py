"""What qh3 needs from meshcache, each small, tested (tests/test_qh3_fix.py) and easy to drop.

1. STREAM frame length (a bug in qh3 1.8, gone in 2.x): 1.8's Rust packet builder
   (`push_stream_frame_body`) wrote a STREAM frame's Length as a 2-byte varint
   (`len as u16 | 0x4000`), which holds at most 16383, so datagrams over ~16 KB corrupted
   frames. qh3 2.x rewrote the connection core; `stream_frame_length_is_fixed()` drives two real
   qh3 connections with 65000-byte datagrams and the test suite checks it on the installed
   qh3. An older qh3 is capped at `MAX_SAFE_DATAGRAM` (`safe_datagram_size`).

2. TLS exporter (a missing feature, as in aioquic): qh3's TLS has no RFC 8446 section 7.5
   exporter, which authentication needs for channel binding. Its TLS layer is still Python
   (qh3/tls.py), so the same wrap as aioquic_fix.py works: derive `exporter_master_secret` when
   the "s ap traffic" secret is derived (both ends hold exactly CH..server Finished then).

3. Datagram size a client accepts (a limitation, qh3 2.1): a qh3 client advertises the
   transport parameter `max_udp_payload_size` as 1472 whatever its `max_datagram_size`, so a
   server never sends it larger datagrams: on loopback or a jumbo-frame LAN every block moves in
   1.4 KB packets (~45x the per-packet work of 65000-byte ones). The wrap below advertises the
   configured `max_datagram_size` instead. To drop: once `advertised_udp_payload_size()` on an
   unpatched qh3 follows the configuration (the test checks it).

4. Log noise: qh3 2.1 logs every peer's ordinary CONNECTION_CLOSE as a WARNING
   ("Native peer close"); a filter on its logger turns those into nothing (the transport reports
   closes itself).

Not fixed, said instead: qh3's server cannot ask a client for its certificate, so with qh3
`PeerInfo.cert_node_id` is known on the client side only (authentication does not need it).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any, cast

from meshcache.transport import exporter

_PATCHED = "_meshcache_patched"
MAX_SAFE_DATAGRAM = 16383  # qh3 < 2: STREAM frame lengths above 16383 bytes are corrupted
MAX_DATAGRAM = 65527


def largest_datagram(version: str) -> int:
    """The largest `max_datagram_size` qh3 `version` encodes correctly."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    return MAX_DATAGRAM if major >= 2 else MAX_SAFE_DATAGRAM


def stream_frame_length_is_fixed(datagram_size: int = 30000, payload: int = 200_000) -> bool:
    """Whether an unpatched qh3 pair, with datagrams of `datagram_size` bytes, moves `payload`
    bytes on one stream intact: two real qh3 connections exchange datagrams in memory."""
    import ssl

    from qh3 import tls
    from qh3.quic import events
    from qh3.quic.configuration import QuicConfiguration
    from qh3.quic.connection import QuicConnection

    from meshcache.transport.identity import create_identity

    cert_pem, key_pem, _ = create_identity()

    def configuration(is_client: bool) -> Any:
        c = QuicConfiguration(is_client=is_client, alpn_protocols=["test"],
                              max_datagram_size=datagram_size, verify_mode=ssl.CERT_NONE,
                              probe_datagram_size=False)
        c.certificate = tls.load_pem_x509_certificates(cert_pem)[0]
        c.private_key = tls.load_pem_private_key(key_pem)
        return c

    client = QuicConnection(configuration=configuration(True))
    server: Any = None
    now = 0.0
    client.connect(("127.0.0.1", 2), now)
    data = bytes(range(256)) * (payload // 256)
    received = bytearray()
    sent = False
    for _ in range(2000):
        moved = False
        for d, _addr in client.datagrams_to_send(now):
            if server is None:
                server = QuicConnection(
                    configuration=configuration(False),
                    original_destination_connection_id=client.original_destination_connection_id)
            server.receive_datagram(d, ("127.0.0.1", 1), now)
            moved = True
        if server is not None:
            for d, _addr in server.datagrams_to_send(now):
                client.receive_datagram(d, ("127.0.0.1", 2), now)
                moved = True
            while (ev := server.next_event()) is not None:
                if isinstance(ev, events.StreamDataReceived):
                    received += ev.data
                elif isinstance(ev, events.ConnectionTerminated):
                    return False
        while (ev := client.next_event()) is not None:
            if isinstance(ev, events.HandshakeCompleted) and not sent:
                client.send_stream_data(client.get_next_available_stream_id(), data, True)
                client._open_stream()
                sent = True
            elif isinstance(ev, events.ConnectionTerminated):
                return False
        if len(received) >= len(data):
            break
        now += 0.002
        if not moved:
            t = client.get_timer()
            if t is not None and t <= now:
                client.handle_timer(now)
            if server is not None:
                t = server.get_timer()
                if t is not None and t <= now:
                    server.handle_timer(now)
    return bytes(received) == data


# ---- TLS exporter --------------------------------------------------------------------------------------


def _patch_exporter() -> None:
    from qh3 import tls

    exporter.patch(tls.Context)


def export_keying_material(context: Any, label: bytes, context_value: bytes = b"",
                           length: int = 32) -> bytes:
    """RFC 8446 section 7.5 TLS-Exporter for a qh3 `tls.Context` past its handshake."""
    from qh3 import tls

    return exporter.export(context, label, context_value, length,
                           hkdf_expand_label=tls.hkdf_expand_label,
                           digest=lambda algorithm, data: hashlib.new(f"sha{algorithm}",
                                                                       data).digest())


# ---- datagram size a client accepts -----------------------------------------------------------------

_local = threading.local()


def _patch_udp_payload() -> None:
    from qh3.quic import tls_bridge

    bridge = tls_bridge.QuicTlsBridge
    original = bridge.serialize_transport_parameters
    if getattr(original, _PATCHED, False):
        return
    push = tls_bridge.push_quic_transport_parameters

    def push_quic_transport_parameters(buf: Any, parameters: Any) -> None:
        size = getattr(_local, "size", None)
        advertised = parameters.max_udp_payload_size
        if size is not None and advertised is not None and advertised < size:
            parameters.max_udp_payload_size = size
        push(buf, parameters)

    def serialize_transport_parameters(self: Any) -> bytes:
        _local.size = self.configuration.max_datagram_size
        try:
            return cast(bytes, original(self))
        finally:
            _local.size = None

    setattr(serialize_transport_parameters, _PATCHED, True)
    tls_bridge.push_quic_transport_parameters = push_quic_transport_parameters
    bridge.serialize_transport_parameters = serialize_transport_parameters


def advertised_udp_payload_size(max_datagram_size: int = 65000,
                                bridge_class: Any = None) -> int | None:
    """The `max_udp_payload_size` a qh3 client configured with `max_datagram_size` advertises
    (None: the parameter is left out, meaning 65527); `bridge_class`: another QuicTlsBridge."""
    from qh3.quic.configuration import QuicConfiguration
    from qh3.quic.connection import QuicConnection
    from qh3.quic.packet import pull_quic_transport_parameters
    from qh3.quic.tls_bridge import QuicTlsBridge
    from qh3._hazmat import Buffer

    quic = QuicConnection(configuration=QuicConfiguration(
        is_client=True, alpn_protocols=["test"], max_datagram_size=max_datagram_size))
    bridge = (bridge_class or QuicTlsBridge)(
        quic.configuration, version=quic.configuration.supported_versions[0],
        local_initial_source_connection_id=quic.host_cid,
        remote_initial_source_connection_id=None,
        original_destination_connection_id=quic.original_destination_connection_id,
        retry_source_connection_id=None)
    params = pull_quic_transport_parameters(Buffer(data=bridge.serialize_transport_parameters()))
    return cast("int | None", params.max_udp_payload_size)


class _QuietPeerClose(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Native peer close")


def _quiet_logs() -> None:
    from qh3.quic import connection

    logger = connection.logger
    if not any(isinstance(f, _QuietPeerClose) for f in logger.filters):
        logger.addFilter(_QuietPeerClose())


def apply() -> None:
    """Apply the patches (idempotent)."""
    _patch_exporter()
    _patch_udp_payload()
    _quiet_logs()

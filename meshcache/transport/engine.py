"""QUIC engines behind QuicTransport: `aioquic` (pure Python) or `qh3` (an aioquic fork whose
connection core, packet protection and UDP batching are in Rust, with the same asyncio API).

An `Engine` names the engine's classes and the few operations where the two differ (how to
read a peer certificate, how many bytes a stream still holds to send, what the engine can do),
so quic.py is written once. `load("auto")` picks qh3 when it is installed (measured ~4-7x
faster at 1452-byte datagrams, see docs/transport.md), else aioquic. Each engine's in-project
fixes (aioquic_fix.py, qh3_fix.py) are applied when it is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from collections.abc import Callable
from types import ModuleType
from typing import Any

ENGINES = ("qh3", "aioquic")
AUTO = "auto"


class EngineUnavailable(ImportError):
    """The named QUIC engine is not installed (or unknown)."""


@dataclasses.dataclass(frozen=True)
class Engine:
    """One QUIC engine: its classes and the operations quic.py needs from it."""

    name: str
    version: str
    QuicConfiguration: type
    QuicConnection: type
    QuicConnectionProtocol: type
    QuicServer: type
    # makes and checks Retry tokens (generates a key: made on first need)
    RetryTokenHandler: type
    events: ModuleType
    load_certificate: Callable[[bytes], Any]
    load_private_key: Callable[[bytes], Any]
    # TLS exporter of a connection's handshake: (quic, label, context, length) -> bytes
    export_keying_material: Callable[[Any, bytes, bytes, int], bytes]
    # DER of the peer's certificate (None when the peer sent none)
    peer_certificate_der: Callable[[Any], bytes | None]
    # bytes a stream still holds to send (aioquic: unacknowledged; qh3: not yet sent)
    unsent: Callable[[Any, int], int]
    # reserve the id of a new locally opened stream
    reserve_stream: Callable[[Any, int], None]
    # largest datagram whose frames the engine encodes correctly
    max_datagram_size: int
    # the server can ask clients for their certificate (mutual TLS)
    client_certificates: bool
    # congestion control can be chosen (and capped, see quic.congestion_control_name)
    congestion_control: bool
    # receive windows can be held small until a peer is admitted, then raised
    admission_windows: bool
    # batched UDP I/O (GSO/GRO, recvmmsg) is available: (loop, factory, sock, segment) -> endpoint
    create_batched_endpoint: Callable[..., Any] | None


def available() -> list[str]:
    """The engines installed here, fastest first."""
    return [name for name in ENGINES if importlib.util.find_spec(name) is not None]


def resolve(name: str) -> str:
    """'auto' -> the fastest installed engine; a named engine must be installed."""
    installed = available()
    if name == AUTO:
        if not installed:
            raise EngineUnavailable("no QUIC engine installed (pip install qh3 or aioquic)")
        return installed[0]
    if name not in ENGINES:
        raise EngineUnavailable(f"unknown QUIC engine {name!r} (choose from auto, "
                                f"{', '.join(ENGINES)})")
    if name not in installed:
        raise EngineUnavailable(f"QUIC engine {name!r} is not installed")
    return name


_LOADED: dict[str, Engine] = {}


def load(name: str = AUTO) -> Engine:
    """The engine called `name` ('auto', 'qh3' or 'aioquic'), its fixes applied."""
    name = resolve(name)
    engine = _LOADED.get(name)
    if engine is None:
        engine = _LOADED[name] = _load_qh3() if name == "qh3" else _load_aioquic()
    return engine


# ---- aioquic -----------------------------------------------------------------------------------------


def _load_aioquic() -> Engine:
    import os

    import aioquic
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import QuicServer
    from aioquic.quic import events
    from aioquic.quic.retry import QuicRetryTokenHandler
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.tls import load_pem_private_key, load_pem_x509_certificates
    from cryptography.hazmat.primitives import serialization

    from meshcache.transport import aioquic_fix

    # MESHCACHE_AIOQUIC_SEND_BUFFER=0 keeps aioquic's own send buffer (to measure the patch)
    aioquic_fix.apply(send_buffer=os.environ.get("MESHCACHE_AIOQUIC_SEND_BUFFER", "1") != "0")

    def peer_der(quic: Any) -> bytes | None:
        cert = getattr(quic.tls, "_peer_certificate", None)
        return None if cert is None else cert.public_bytes(serialization.Encoding.DER)

    def unsent(quic: Any, sid: int) -> int:
        s = quic._streams.get(sid)
        if s is None:
            return 0
        return int(s.sender._buffer_stop - s.sender._buffer_start)

    def reserve(quic: Any, sid: int) -> None:
        quic._get_or_create_stream_for_send(sid)

    batched = None
    try:
        from meshcache.transport import batching
        batched = batching.endpoint_factory()
    except ImportError:
        pass

    return Engine(
        name="aioquic", version=aioquic.__version__,
        QuicConfiguration=QuicConfiguration, QuicConnection=QuicConnection,
        QuicConnectionProtocol=QuicConnectionProtocol, QuicServer=QuicServer,
        RetryTokenHandler=QuicRetryTokenHandler, events=events,
        load_certificate=lambda pem: load_pem_x509_certificates(pem)[0],
        load_private_key=load_pem_private_key,
        export_keying_material=lambda quic, label, ctx, n: aioquic_fix.export_keying_material(
            quic.tls, label, ctx, n),
        peer_certificate_der=peer_der, unsent=unsent, reserve_stream=reserve,
        max_datagram_size=65527, client_certificates=True, congestion_control=True,
        admission_windows=True, create_batched_endpoint=batched)


# ---- qh3 ---------------------------------------------------------------------------------------------


def _load_qh3() -> Engine:
    import qh3
    from qh3.asyncio.protocol import QuicConnectionProtocol
    from qh3.asyncio.server import QuicServer
    from qh3.quic import events
    from qh3.quic.configuration import QuicConfiguration
    from qh3.quic.connection import QuicConnection
    from qh3.tls import load_pem_private_key, load_pem_x509_certificates

    from meshcache.transport import batching, qh3_fix
    from meshcache.transport.retrytoken import HmacRetryTokenHandler

    qh3_fix.apply()

    def peer_der(quic: Any) -> bytes | None:
        cert = quic.get_peercert()
        return None if cert is None else bytes(cert.public_bytes())

    def unsent(quic: Any, sid: int) -> int:
        return int(quic.get_send_buffer_size(sid))

    def reserve(quic: Any, sid: int) -> None:
        opened = quic._open_stream()
        if opened != sid:  # pragma: no cover - qh3 allocates ids in order
            raise RuntimeError(f"qh3 opened stream {opened}, expected {sid}")

    return Engine(
        name="qh3", version=getattr(qh3, "__version__", "?"),
        QuicConfiguration=QuicConfiguration, QuicConnection=QuicConnection,
        QuicConnectionProtocol=QuicConnectionProtocol, QuicServer=QuicServer,
        RetryTokenHandler=HmacRetryTokenHandler, events=events,
        load_certificate=lambda pem: load_pem_x509_certificates(pem)[0],
        load_private_key=load_pem_private_key,
        export_keying_material=lambda quic, label, ctx, n: qh3_fix.export_keying_material(
            quic.tls, label, ctx, n),
        peer_certificate_der=peer_der, unsent=unsent, reserve_stream=reserve,
        max_datagram_size=qh3_fix.largest_datagram(getattr(qh3, "__version__", "0")),
        client_certificates=False,
        congestion_control=False, admission_windows=False,
        create_batched_endpoint=batching.endpoint_factory())


def fingerprint(der: bytes) -> bytes:
    """SHA-256 of a certificate's DER (PeerInfo.cert_fingerprint)."""
    return hashlib.sha256(der).digest()

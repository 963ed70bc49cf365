"""qh3 engine fixes (meshcache/transport/qh3_fix.py): each test shows the upstream behaviour the
fix works around, so a fix can be dropped once upstream changes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("qh3")

from meshcache.transport import TransportConfig, engine, qh3_fix  # noqa: E402
from tests.test_transport import echo, run  # noqa: E402


def test_stream_frames_over_16383_bytes_intact() -> None:
    """qh3 1.8 wrote STREAM lengths as 2-byte varints (corrupt above 16383 bytes); the installed
    qh3 moves 64979-byte datagrams intact, so meshcache lets it use them. If this fails, an
    older qh3 is installed and `largest_datagram` must cap it (it does for 1.x)."""
    assert qh3_fix.stream_frame_length_is_fixed(65000, 300_000)
    e = engine.load("qh3")
    assert e.max_datagram_size == qh3_fix.largest_datagram(e.version) == 65527
    assert qh3_fix.largest_datagram("1.8.1") == qh3_fix.MAX_SAFE_DATAGRAM == 16383


def test_upstream_has_no_tls_exporter() -> None:
    """Upstream: qh3's TLS context offers no RFC 8446 exporter (the fix adds one)."""
    from qh3 import tls

    ctx = tls.Context(is_client=True)
    assert not any("export" in name for name in dir(ctx) if not name.startswith("_meshcache"))
    with pytest.raises(RuntimeError):
        qh3_fix.export_keying_material(ctx, b"label")


@pytest.mark.parametrize("client,server", [("qh3", "aioquic"), ("aioquic", "qh3")])
def test_exporter_agrees_across_engines(client: str, server: str) -> None:
    """The channel binding is the RFC exporter: an aioquic end and a qh3 end compute the same
    32 bytes (two independent key schedules agree), and the engines interoperate. A qh3 server
    raises "packet builder capacity exhausted" at its anti-amplification limit in this
    handshake: the send is retried and nothing escapes into the event loop."""
    if "aioquic" not in engine.available():
        pytest.skip("aioquic not installed")
    from meshcache.transport.quic import QuicTransport

    bindings: dict[str, bytes] = {}

    async def authenticate(conn: Any) -> None:
        bindings["client" if conn.is_client else "server"] = conn.channel_binding()

    escaped: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: escaped.append(ctx))
        cfg = TransportConfig(max_datagram_size=1452, recv_timeout=5, connect_timeout=5)
        srv = QuicTransport(cfg, engine=server, authenticate=authenticate)
        cli = QuicTransport(cfg, engine=client, authenticate=authenticate)
        try:
            addr = await srv.listen(("127.0.0.1", 0), echo)
            s = await cli.open_stream(addr)
            await s.send_frame(b"x" * 100_000)
            assert await s.recv_frame() == b"x" * 100_000
            for _ in range(50):
                if "server" in bindings:
                    break
                await asyncio.sleep(0.02)
        finally:
            await cli.close()
            await srv.close()

    run(main())
    assert escaped == []
    assert len(bindings["client"]) == 32
    assert bindings["client"] == bindings["server"]


def test_upstream_server_cannot_ask_for_client_certificates() -> None:
    """Upstream: qh3's TLS server has no state that expects a client Certificate, so with qh3 a
    server does not learn the client's certificate (PeerInfo.cert_node_id is None there;
    authentication binds to the exporter instead and does not need it)."""
    from qh3 import tls

    states = {s.name for s in tls.State}
    assert "SERVER_EXPECT_FINISHED" in states
    assert not any(s.startswith("SERVER_EXPECT_CERTIFICATE") for s in states)
    assert engine.load("qh3").client_certificates is False


def test_client_advertises_its_datagram_size() -> None:
    """Upstream: a qh3 client advertises max_udp_payload_size 1472 whatever it is configured
    with, so a server sends it only small datagrams; patched, it advertises its own size (and a
    transfer then moves in 64 KB datagrams on loopback)."""
    import importlib.util
    import sys

    engine.load("qh3")  # patches applied
    spec = importlib.util.find_spec("qh3.quic.tls_bridge")
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("qh3.quic.tls_bridge")
    try:
        spec.loader.exec_module(fresh)  # an unpatched copy
    finally:
        if saved is not None:
            sys.modules["qh3.quic.tls_bridge"] = saved
    assert qh3_fix.advertised_udp_payload_size(65000, fresh.QuicTlsBridge) == 1472
    assert qh3_fix.advertised_udp_payload_size(65000) == 65000
    assert qh3_fix.advertised_udp_payload_size(1200) == 1472  # never lowered

    sizes: list[int] = []

    async def serve(stream: Any) -> None:
        await stream.recv_frame()
        await stream.send_payload(b"y" * 2_000_000, end=True)

    async def main() -> None:
        from tests.test_transport import Pair

        cfg = TransportConfig(max_datagram_size=65000, recv_timeout=5, connect_timeout=5)
        async with Pair("quic-qh3", serve, config=cfg) as p:
            s = await p.client.open_stream(p.addr)
            await s.send_frame(b"go")
            proto = s.connection._protocol
            original = proto.datagram_received

            def counting(data: bytes, addr: Any) -> None:
                sizes.append(len(data))
                original(data, addr)

            def counting_many(data: list[bytes], addr: Any) -> None:
                sizes.extend(len(d) for d in data)
                for d in data:
                    original(d, addr)

            proto.datagram_received = counting
            proto.datagrams_received = counting_many
            assert await s.recv_exactly(2_000_000) == b"y" * 2_000_000

    run(main())
    assert max(sizes) > 16_000

"""QUIC engine selection (meshcache/transport/engine.py) and its config key."""

from __future__ import annotations

import pytest

from meshcache.config import Config, ConfigError
from meshcache.transport import TransportConfig, engine


def test_auto_picks_the_fastest_installed() -> None:
    installed = engine.available()
    assert installed, "no QUIC engine installed"
    assert engine.resolve("auto") == installed[0]
    if "qh3" in installed:
        assert engine.resolve("auto") == "qh3"


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(engine.EngineUnavailable, match="unknown QUIC engine"):
        engine.resolve("picoquic")


@pytest.mark.parametrize("name", engine.available())
def test_each_engine_loads_with_its_fixes(name: str) -> None:
    e = engine.load(name)
    assert e.name == name and e.version
    assert engine.load(name) is e  # loaded once
    if name == "aioquic":
        from meshcache.transport import aioquic_fix

        assert aioquic_fix.stream_frame_length_is_fixed()
        assert e.client_certificates and e.admission_windows


def test_config_key_reaches_the_transport() -> None:
    cfg = Config.local(quic_engine="aioquic", preauth_max_bytes=4096, max_unauthenticated=3,
                       retry_threshold=0, udp_batching=False).validated()
    tc = TransportConfig.from_config(cfg)
    assert (tc.quic_engine, tc.preauth_max_bytes, tc.max_unauthenticated, tc.retry_threshold,
            tc.udp_batching) == ("aioquic", 4096, 3, 0, False)
    with pytest.raises(ConfigError, match="quic_engine"):
        Config.local(quic_engine="fast").validated()
    with pytest.raises(ConfigError, match="max_unauthenticated"):
        Config.local(max_unauthenticated=0).validated()
    env = Config.from_env({"MESHCACHE_QUIC_ENGINE": "qh3"})
    assert env.quic_engine == "qh3"


@pytest.mark.parametrize("name", engine.available())
def test_transport_uses_the_configured_engine(name: str) -> None:
    from meshcache.transport.quic import QuicTransport

    t = QuicTransport(TransportConfig(quic_engine=name, max_datagram_size=65000))
    assert t.engine.name == name
    assert t.datagram_size == min(65000, t.engine.max_datagram_size)

"""Builds the real peer transport for a node: QUIC with this node's identity and the cluster
authenticator (the mesh itself takes any Transport, so tests pass the in-memory one)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from meshcache.config import Config
from meshcache.transport import Authenticator, TransportConfig
from meshcache.transport.base import parse_address
from meshcache.transport.mtu import auto_datagram_size

if TYPE_CHECKING:
    from meshcache.transport.quic import QuicTransport

__all__ = ["datagram_size", "load_identity", "build_quic_transport"]


def datagram_size(config: Config) -> int:
    """The QUIC datagram size: configured, or from the MTU of the listen interface."""
    return config.max_datagram_size or auto_datagram_size(parse_address(config.listen)[0])


def load_identity(config: Config) -> tuple[bytes, bytes, str]:
    """This node's TLS identity (certificate, key, node id hex), made on first use."""
    from meshcache.transport.identity import load_or_create_identity

    return load_or_create_identity(os.path.join(config.cache_dir, "identity"))


def build_quic_transport(config: Config, identity: tuple[bytes, bytes, str],
                         authenticator: Authenticator) -> "QuicTransport":
    """A QUIC endpoint (not yet listening) for `config`, `identity` and `authenticator`."""
    from meshcache.transport.quic import QuicTransport

    return QuicTransport(
        TransportConfig.from_config(config, max_datagram_size=datagram_size(config)),
        identity=identity, authenticate=authenticator)

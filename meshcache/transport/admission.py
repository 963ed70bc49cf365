"""Receive windows that stay small until a peer is admitted (aioquic engine).

aioquic doubles a flow-control window whenever half of it has been used by data *received*,
not consumed, out-of-order data included: an unauthenticated peer could make it buffer without
bound. `hold` starts a connection with the pre-authentication connection window
(`preauth_max_data`: everything the engine may hold for the peer, on all streams, out-of-order
data included) and stream count (`preauth_max_streams`) and keeps them from growing; `release`,
called once the authenticator admits the peer, raises them to the normal ones (`max_data`,
`max_streams`; MAX_DATA and MAX_STREAMS go out with the next packet) and aioquic's own growth
applies from then on. Per-stream windows are left alone: the connection window caps them.
"""

from __future__ import annotations

from typing import Any

_PATCHED = "_meshcache_patched"
_HOLD = "_meshcache_hold_windows"


def hold(quic: Any, config: Any) -> None:
    """Pre-authentication windows for a new aioquic connection (before its handshake)."""
    _patch()
    limit = quic._local_max_data
    limit.value = limit.sent = min(limit.value, config.preauth_max_data)
    streams = quic._local_max_streams_bidi
    streams.value = streams.sent = min(streams.value, config.preauth_max_streams)
    setattr(quic, _HOLD, True)


def release(quic: Any, config: Any) -> None:
    """The peer is admitted: the normal windows."""
    if not getattr(quic, _HOLD, False):
        return
    setattr(quic, _HOLD, False)
    quic._local_max_data.value = max(quic._local_max_data.value, config.max_data)
    streams = quic._local_max_streams_bidi
    streams.value = max(streams.value, config.max_streams)


def is_held(quic: Any) -> bool:
    return bool(getattr(quic, _HOLD, False))


def _patch() -> None:
    """Skip aioquic's connection window growth (and MAX_DATA frames) while a connection is held."""
    from aioquic.quic.connection import QuicConnection

    for name in ("_write_connection_limits",):
        original = getattr(QuicConnection, name)
        if getattr(original, _PATCHED, False):
            continue

        def wrapper(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> None:
            if getattr(self, _HOLD, False):
                return
            __original(self, *args, **kwargs)

        setattr(wrapper, _PATCHED, True)
        setattr(QuicConnection, name, wrapper)

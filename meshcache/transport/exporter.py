"""The RFC 8446 section 7.5 TLS exporter for the aioquic-style TLS stacks of both engines
(aioquic and qh3 share `tls.Context`'s key schedule; neither offers an exporter).

`patch(Context)` wraps `Context._setup_traffic_protection` to derive `exporter_master_secret` =
Derive-Secret(master, "exp master", ClientHello..server Finished) at the one moment both ends
hold exactly that transcript (when the "s ap traffic" secret is derived); `export(...)`
implements TLS-Exporter(label, context, length) on top of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_PATCHED = "_meshcache_patched"
_SECRET = "_meshcache_exporter_master"


def patch(context_class: Any) -> None:
    """Record the exporter master secret on every handshake of `context_class` (idempotent)."""
    original = context_class._setup_traffic_protection
    if getattr(original, _PATCHED, False):
        return

    def _setup_traffic_protection(self: Any, direction: Any, epoch: Any, label: bytes) -> None:
        original(self, direction, epoch, label)
        if label == b"s ap traffic":
            # transcript = ClientHello..server Finished on both ends at this point
            setattr(self, _SECRET, self.key_schedule.derive_secret(b"exp master"))

    setattr(_setup_traffic_protection, _PATCHED, True)
    context_class._setup_traffic_protection = _setup_traffic_protection


def export(context: Any, label: bytes, context_value: bytes, length: int, *,
           hkdf_expand_label: Callable[[Any, bytes, bytes, bytes, int], bytes],
           digest: Callable[[Any, bytes], bytes]) -> bytes:
    """TLS-Exporter for a context whose handshake reached the application keys; the engine
    gives its `hkdf_expand_label` and `digest(algorithm, data)`."""
    secret = getattr(context, _SECRET, None)
    if secret is None or context.key_schedule is None:
        raise RuntimeError("TLS exporter not available (handshake not complete?)")
    algorithm = context.key_schedule.algorithm
    size = len(digest(algorithm, b""))
    derived = hkdf_expand_label(algorithm, secret, label, digest(algorithm, b""), size)
    return hkdf_expand_label(algorithm, derived, b"exporter", digest(algorithm, context_value),
                             length)

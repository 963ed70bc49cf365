"""Digests: a block *is* its BLAKE3 hash; every byte is hashed before it is stored or returned."""

from __future__ import annotations

import blake3 as _blake3

DIGEST_SIZE = 32
_MT_THRESHOLD = 4 * 1024 * 1024  # above this, BLAKE3's own threads pay for themselves


def digest(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte BLAKE3 digest of `data` (multithreaded for large blocks)."""
    if len(data) >= _MT_THRESHOLD:
        return _blake3.blake3(data, max_threads=_blake3.blake3.AUTO).digest()
    return _blake3.blake3(data).digest()


def to_hex(d: bytes) -> str:
    """Lower-case hex, the form used in file names and logs."""
    return d.hex()


def from_hex(text: str) -> bytes:
    """Parse a hex digest; ValueError unless it is exactly 32 bytes of hex."""
    if len(text) != 2 * DIGEST_SIZE:
        raise ValueError(f"not a digest: {text!r}")
    return bytes.fromhex(text)


def is_hex_digest(name: str) -> bool:
    """True when `name` is a lower-case 64-character hex string (a block file name)."""
    if len(name) != 2 * DIGEST_SIZE:
        return False
    try:
        return bytes.fromhex(name).hex() == name
    except ValueError:
        return False

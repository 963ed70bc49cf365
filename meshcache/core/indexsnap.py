"""The block index snapshot's format: every (digest, size) the store held, oldest first, with a
checksum, so a restart need not stat a million block files. Pure: bytes in, bytes out."""

from __future__ import annotations

import struct
from array import array

import blake3

from meshcache.core.digest import DIGEST_SIZE

MAGIC = b"MCINDEX1"
_HEAD = struct.Struct("<8sQ32s")  # magic, entries, BLAKE3 of the body
HEADER_SIZE = _HEAD.size


class SnapshotError(ValueError):
    """The bytes are not a whole, unaltered snapshot (torn, truncated, tampered, other format)."""


def encode(digests: list[bytes], sizes: list[int]) -> bytes:
    """The snapshot of `digests` (32 bytes each) with their sizes (> 0), in this order."""
    if len(digests) != len(sizes):
        raise ValueError("one size per digest")
    if any(len(d) != DIGEST_SIZE for d in digests) or any(s <= 0 for s in sizes):
        raise ValueError("digests are 32 bytes, sizes positive")
    # Sizes in native byte order: the file never leaves this host.
    body = b"".join(digests) + array("q", sizes).tobytes()
    return _HEAD.pack(MAGIC, len(digests), blake3.blake3(body).digest()) + body


def decode(data: bytes | memoryview) -> tuple[list[bytes], array]:
    """(digests, sizes) from a snapshot; SnapshotError unless it is whole and unaltered."""
    if len(data) < HEADER_SIZE:
        raise SnapshotError("shorter than its header")
    magic, n, check = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not an index snapshot")
    if len(data) != HEADER_SIZE + n * (DIGEST_SIZE + 8):
        raise SnapshotError(f"{len(data)} bytes for {n} entries")
    body = memoryview(data)[HEADER_SIZE:]
    if blake3.blake3(body).digest() != check:
        raise SnapshotError("checksum mismatch")
    cut = HEADER_SIZE + n * DIGEST_SIZE
    sizes = array("q")
    sizes.frombytes(body[cut - HEADER_SIZE:])
    if n and min(sizes) <= 0:
        raise SnapshotError("a size that is not positive")
    data = bytes(data)  # no copy when it is bytes already; slices of bytes are new objects
    return [data[i:i + DIGEST_SIZE] for i in range(HEADER_SIZE, cut, DIGEST_SIZE)], sizes

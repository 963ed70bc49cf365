"""Bloom filters over 32-byte BLAKE3 digests: the cache summaries nodes gossip to each other.

A digest is already uniformly random, so no hashing is done here: the k bit indexes come from the
digest's first two little-endian 64-bit words by double hashing, ``(h1 + i*h2) mod 2**64 mod m``
with ``h2`` forced odd. Bit ``j`` lives in byte ``j // 8`` under mask ``1 << (j % 8)``.

Encoding (`encode`/`decode`): ``b"MB" | version 1 | k (1 byte) | m (8 bytes, big-endian) | bits``,
bits being exactly ceil(m/8) bytes with the pad bits zero. Decoding checks every field and the
length against `max_bytes` before it copies anything.

Deltas (`diff`/`apply_delta`) list the bits that flipped between two filters of the same shape,
so they carry removals as well as additions (a node rebuilds its filter after evictions). Format:
``b"MD" | version 1 | k | m (8) | from-fingerprint (8) | to-fingerprint (8) | mode (1) | body``;
mode 0 is the sorted positions as LEB128 gaps, mode 1 the raw XOR of the bitmaps, whichever is
shorter. The fingerprints (BLAKE3 of the bitmaps) make applying a delta to the wrong base, or a
corrupted delta, an error instead of a silently wrong summary.

numpy, when importable, speeds up the batch calls (`add_many`, `contains_many`); the results are
bit-for-bit those of the pure-Python path.
"""

from __future__ import annotations

import math
import struct
from typing import Iterable, Sequence

import blake3

from meshcache.core.errors import WireError

try:  # optional: batch operations 20-50x faster
    import numpy as _np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    _np = None

__all__ = ["BloomFilter", "BloomError", "DEFAULT_MAX_BYTES"]

DIGEST_SIZE = 32
DEFAULT_MAX_BYTES = 16 << 20  # 134M bits: ~14M entries at 1%
MAX_K = 32
_M64 = (1 << 64) - 1
_MAGIC = b"MB"
_DMAGIC = b"MD"
_VERSION = 1
_HEAD = struct.Struct(">2sBBQ")  # magic, version, k, m
_DHEAD = struct.Struct(">2sBBQ8s8sB")  # magic, version, k, m, from fp, to fp, mode
_NUMPY_MIN_BATCH = 2048  # below this, the pure-Python loop is faster


class BloomError(WireError):
    """Bad Bloom filter or delta bytes, or filters of different shapes combined."""


def _check_digest(d: bytes) -> None:
    if len(d) != DIGEST_SIZE:
        raise BloomError(f"expected a {DIGEST_SIZE}-byte digest, got {len(d)} bytes")


class BloomFilter:
    """A Bloom filter of `m` bits and `k` probes over 32-byte digests."""

    __slots__ = ("m", "k", "_bits")

    def __init__(self, m: int, k: int) -> None:
        if not isinstance(m, int) or not isinstance(k, int) or m < 8 or not 1 <= k <= MAX_K:
            raise BloomError(f"bad shape m={m!r} k={k!r} (m >= 8, 1 <= k <= {MAX_K})")
        self.m = m
        self.k = k
        self._bits = bytearray((m + 7) // 8)

    @classmethod
    def for_capacity(cls, n: int, fpr: float = 0.01) -> "BloomFilter":
        """The smallest filter expected to hold `n` digests at false-positive rate `fpr`."""
        if n < 1 or not 0.0 < fpr < 1.0:
            raise ValueError(f"need n >= 1 and 0 < fpr < 1, got n={n} fpr={fpr}")
        m = max(8, math.ceil(-n * math.log(fpr) / math.log(2) ** 2))
        k = min(MAX_K, max(1, round(m / n * math.log(2))))
        return cls(m, k)

    # ---- membership ---------------------------------------------------------------------------

    def _indexes(self, d: bytes) -> list[int]:
        h1 = int.from_bytes(d[0:8], "little")
        h2 = int.from_bytes(d[8:16], "little") | 1
        m = self.m
        return [((h1 + i * h2) & _M64) % m for i in range(self.k)]

    def add(self, digest: bytes) -> None:
        """Insert one 32-byte digest."""
        _check_digest(digest)
        bits = self._bits
        for j in self._indexes(digest):
            bits[j >> 3] |= 1 << (j & 7)

    def __contains__(self, digest: object) -> bool:
        """True when `digest` may be present (never False for an added one)."""
        if not isinstance(digest, (bytes, bytearray, memoryview)) or len(digest) != DIGEST_SIZE:
            return False
        bits = self._bits
        for j in self._indexes(bytes(digest)):
            if not bits[j >> 3] >> (j & 7) & 1:
                return False
        return True

    def add_many(self, digests: Iterable[bytes] | bytes) -> None:
        """Insert many digests (an iterable of 32-byte digests, or their concatenation)."""
        blob = _concat(digests)
        n = len(blob) // DIGEST_SIZE
        if _np is None or n < max(_NUMPY_MIN_BATCH, self.m >> 8):  # numpy: unpack+pack m bits
            for i in range(0, len(blob), DIGEST_SIZE):
                self.add(blob[i:i + DIGEST_SIZE])
            return
        idx = self._np_indexes(blob)
        flat = _np.unpackbits(_np.frombuffer(self._bits, dtype=_np.uint8), bitorder="little")
        flat[idx.ravel()] = 1
        self._bits[:] = _np.packbits(flat, bitorder="little").tobytes()

    def contains_many(self, digests: Iterable[bytes] | bytes) -> list[bool]:
        """Membership of each digest, in order (as `in`, batched)."""
        blob = _concat(digests)
        n = len(blob) // DIGEST_SIZE
        if _np is None or n < _NUMPY_MIN_BATCH:
            return [blob[i:i + DIGEST_SIZE] in self for i in range(0, len(blob), DIGEST_SIZE)]
        idx = self._np_indexes(blob)
        packed = _np.frombuffer(self._bits, dtype=_np.uint8)
        hit = _np.ones(n, dtype=bool)
        for row in idx:
            hit &= ((packed[row >> 3] >> (row & 7).astype(_np.uint8)) & 1).astype(bool)
        return hit.tolist()

    def _np_indexes(self, blob: bytes):  # -> numpy array (k, n) of bit indexes
        words = _np.frombuffer(blob, dtype="<u8").reshape(-1, 4)
        h1 = words[:, 0].copy()
        h2 = words[:, 1] | _np.uint64(1)
        m = _np.uint64(self.m)
        out = _np.empty((self.k, len(h1)), dtype=_np.uint64)
        acc = h1
        for i in range(self.k):
            _np.remainder(acc, m, out=out[i])
            acc = acc + h2  # wraps mod 2**64, like the pure-Python mask
        return out

    # ---- whole-filter operations --------------------------------------------------------------

    def _same_shape(self, other: "BloomFilter") -> None:
        if not isinstance(other, BloomFilter) or (self.m, self.k) != (other.m, other.k):
            raise BloomError("filters of different shapes (m, k) cannot be combined")

    def union(self, other: "BloomFilter") -> "BloomFilter":
        """A new filter holding everything either filter holds (same m and k required)."""
        self._same_shape(other)
        out = BloomFilter(self.m, self.k)
        a = int.from_bytes(self._bits, "little") | int.from_bytes(other._bits, "little")
        out._bits[:] = a.to_bytes(len(self._bits), "little")
        return out

    def copy(self) -> "BloomFilter":
        """An independent copy."""
        out = BloomFilter(self.m, self.k)
        out._bits[:] = self._bits
        return out

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BloomFilter) and (self.m, self.k) == (other.m, other.k)
                and self._bits == other._bits)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"BloomFilter(m={self.m}, k={self.k}, count~{self.count():.0f})"

    def bits_set(self) -> int:
        """How many bits are 1."""
        return int.from_bytes(self._bits, "little").bit_count()

    def count(self) -> float:
        """Estimated number of distinct digests added (Swamidass & Baldi, from the bits set)."""
        x = self.bits_set()
        if x >= self.m:
            return float("inf")
        return -self.m / self.k * math.log1p(-x / self.m)

    def fpr_theory(self, n: float | None = None) -> float:
        """Expected false-positive rate with `n` entries (default: the estimated count)."""
        if n is None:
            n = self.count()
        if math.isinf(n):
            return 1.0
        return (-math.expm1(-self.k * n / self.m)) ** self.k

    def fpr_current(self) -> float:
        """False-positive rate of this exact bitmap for a random digest: fill ** k."""
        return (self.bits_set() / self.m) ** self.k

    @property
    def nbytes(self) -> int:
        """Size of the bitmap in bytes."""
        return len(self._bits)

    # ---- encoding -----------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The filter as bytes (see the module docstring for the format)."""
        return _HEAD.pack(_MAGIC, _VERSION, self.k, self.m) + bytes(self._bits)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview,
               max_bytes: int = DEFAULT_MAX_BYTES) -> "BloomFilter":
        """Parse `encode()` output; BloomError on anything else, checked before copying."""
        try:
            view = memoryview(data).cast("B")
        except (TypeError, ValueError) as e:
            raise BloomError(f"expected bytes: {e}") from None
        if len(view) > max_bytes + _HEAD.size:
            raise BloomError(f"filter of {len(view)} bytes exceeds the limit of {max_bytes}")
        if len(view) < _HEAD.size:
            raise BloomError("truncated filter")
        magic, version, k, m = _HEAD.unpack(view[:_HEAD.size])
        if magic != _MAGIC:
            raise BloomError("not a Bloom filter")
        if version != _VERSION:
            raise BloomError(f"Bloom filter format {version} not supported (this node: "
                             f"{_VERSION})")
        if not 1 <= k <= MAX_K or m < 8 or m > 8 * max_bytes:
            raise BloomError(f"bad shape m={m} k={k}")
        nbytes = (m + 7) // 8
        if len(view) != _HEAD.size + nbytes:
            raise BloomError(f"filter of {m} bits needs {nbytes} bytes, got "
                             f"{len(view) - _HEAD.size}")
        if m % 8 and view[-1] >> (m % 8):
            raise BloomError("pad bits set")
        out = cls(m, k)
        out._bits[:] = view[_HEAD.size:]
        return out

    # ---- deltas -------------------------------------------------------------------------------

    def _fingerprint(self) -> bytes:
        return blake3.blake3(self._bits).digest(length=8)

    def diff(self, old: "BloomFilter") -> bytes:
        """The delta that turns `old` into this filter (same m and k)."""
        self._same_shape(old)
        x = int.from_bytes(self._bits, "little") ^ int.from_bytes(old._bits, "little")
        dense = x.to_bytes(len(self._bits), "little")
        sparse = _gaps(_positions(x, dense))
        mode, body = (0, sparse) if len(sparse) < len(dense) else (1, dense)
        return _DHEAD.pack(_DMAGIC, _VERSION, self.k, self.m, old._fingerprint(),
                           self._fingerprint(), mode) + body

    def apply_delta(self, delta: bytes | bytearray | memoryview,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """Apply a `diff` made against this exact filter; BloomError (and no change) otherwise."""
        try:
            view = memoryview(delta).cast("B")
        except (TypeError, ValueError) as e:
            raise BloomError(f"expected bytes: {e}") from None
        if len(view) > max_bytes + _DHEAD.size:
            raise BloomError(f"delta of {len(view)} bytes exceeds the limit of {max_bytes}")
        if len(view) < _DHEAD.size:
            raise BloomError("truncated delta")
        magic, version, k, m, fp_from, fp_to, mode = _DHEAD.unpack(view[:_DHEAD.size])
        if magic != _DMAGIC or version != _VERSION:
            raise BloomError("not a Bloom delta of a known format")
        if (k, m) != (self.k, self.m):
            raise BloomError("delta is for a filter of another shape")
        if fp_from != self._fingerprint():
            raise BloomError("delta does not start from this filter (wrong generation?)")
        body = view[_DHEAD.size:]
        nbytes = len(self._bits)
        if mode == 1:
            if len(body) != nbytes:
                raise BloomError("dense delta of the wrong length")
            x = int.from_bytes(body, "little")
        elif mode == 0:
            x = _ungaps(body, m)
        else:
            raise BloomError(f"unknown delta mode {mode}")
        new = (int.from_bytes(self._bits, "little") ^ x).to_bytes(nbytes, "little")
        if blake3.blake3(new).digest(length=8) != fp_to:
            raise BloomError("delta does not produce the filter it names (corrupted)")
        self._bits[:] = new


def _concat(digests: Iterable[bytes] | bytes) -> bytes:
    if isinstance(digests, (bytes, bytearray, memoryview)):
        blob = bytes(digests)
    else:
        items: Sequence[bytes] = digests if isinstance(digests, (list, tuple)) else list(digests)
        for d in items:
            _check_digest(d)
        blob = b"".join(items)
    if len(blob) % DIGEST_SIZE:
        raise BloomError(f"concatenated digests must be a multiple of {DIGEST_SIZE} bytes")
    return blob


def _positions(x: int, dense: bytes) -> list[int]:
    """Indexes of the set bits of `x` (whose little-endian bytes are `dense`), ascending."""
    if _np is not None:
        flat = _np.unpackbits(_np.frombuffer(dense, dtype=_np.uint8), bitorder="little")
        return _np.flatnonzero(flat).tolist()
    out = []
    for byte_i, b in enumerate(dense):
        while b:
            low = b & -b
            out.append(byte_i * 8 + low.bit_length() - 1)
            b ^= low
    return out


def _gaps(positions: list[int]) -> bytes:
    """Ascending positions as LEB128 varints of the gaps (first gap from -1, so all >= 1)."""
    out = bytearray()
    prev = -1
    for p in positions:
        g = p - prev
        prev = p
        while g >= 0x80:
            out.append((g & 0x7F) | 0x80)
            g >>= 7
        out.append(g)
    return bytes(out)


def _ungaps(body: memoryview, m: int) -> int:
    """Parse `_gaps` output into a bitmask, bounded by m (positions must stay below m)."""
    pos = -1
    g = 0
    shift = 0
    bits: list[int] = []
    for b in body:
        g |= (b & 0x7F) << shift
        if b & 0x80:
            shift += 7
            if shift > 63:
                raise BloomError("varint too long in delta")
            continue
        if g == 0:
            raise BloomError("zero gap in delta")
        pos += g
        if pos >= m:
            raise BloomError("delta position beyond the filter")
        bits.append(pos)
        g = 0
        shift = 0
    if shift:
        raise BloomError("truncated varint in delta")
    out = bytearray((m + 7) // 8)
    for p in bits:
        out[p >> 3] |= 1 << (p & 7)
    return int.from_bytes(out, "little")

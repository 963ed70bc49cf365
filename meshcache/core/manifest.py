"""Manifests: object version -> size, block size B and the digest of each block read so far."""

from __future__ import annotations

from dataclasses import dataclass, field

import cbor2

from meshcache.core.blocks import block_count
from meshcache.core.digest import DIGEST_SIZE
from meshcache.core.version import ObjectVersion

MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # ~1.8M blocks: a 14 PiB object at 8 MiB blocks
MAX_URL_BYTES = 8192


class ManifestError(ValueError):
    """An encoded manifest is malformed, oversized or inconsistent."""


@dataclass
class Manifest:
    """What is known of one object version; digests[i] is None until block i is first read."""

    version: ObjectVersion
    block_size: int
    digests: list[bytes | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = block_count(self.version.size, self.block_size)
        if not self.digests:
            self.digests = [None] * n
        elif len(self.digests) != n:
            raise ManifestError(
                f"manifest for {self.version.url}: {len(self.digests)} digests for {n} blocks")

    @property
    def blocks(self) -> int:
        return len(self.digests)

    @property
    def complete(self) -> bool:
        return all(d is not None for d in self.digests)

    def merge(self, other: "Manifest") -> bool:
        """Take digests `other` knows and this one lacks; True when anything changed."""
        if other.version != self.version or other.block_size != self.block_size:
            raise ManifestError(f"manifest for {self.version.url}: cannot merge another version")
        changed = False
        for i, d in enumerate(other.digests):
            if d is not None and self.digests[i] is None:
                self.digests[i] = d
                changed = True
        return changed

    def encode(self) -> bytes:
        """CBOR: [format, url, token, size, B, [digest or null, ...]]."""
        v = self.version
        return cbor2.dumps([MANIFEST_FORMAT, v.url, v.token, v.size, self.block_size,
                            self.digests])

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> "Manifest":
        """Parse and validate an encoded manifest; ManifestError on anything unexpected."""
        if len(data) > max_bytes:
            raise ManifestError(f"manifest of {len(data)} bytes exceeds the {max_bytes}-byte limit")
        try:
            obj = cbor2.loads(data)
        except Exception as e:  # cbor2 raises several types; all mean "not a manifest"
            raise ManifestError(f"manifest is not valid CBOR: {e}") from None
        if not (isinstance(obj, list) and len(obj) == 6):
            raise ManifestError("manifest is not a 6-item array")
        fmt, url, token, size, block_size, digests = obj
        if fmt != MANIFEST_FORMAT:
            raise ManifestError(f"manifest format {fmt!r} is not {MANIFEST_FORMAT}")
        if not (isinstance(url, str) and isinstance(token, str) and len(url) <= MAX_URL_BYTES
                and len(token) <= MAX_URL_BYTES):
            raise ManifestError("manifest url or token is not a short string")
        for name, value in (("size", size), ("block_size", block_size)):
            if type(value) is not int or value < 0 or value >= 2**63:
                raise ManifestError(f"manifest {name} is not a non-negative integer")
        if block_size <= 0 or block_size & (block_size - 1):
            raise ManifestError(f"manifest block_size {block_size} is not a power of two")
        if not isinstance(digests, list) or len(digests) != block_count(size, block_size):
            raise ManifestError("manifest digest list does not match its size and block size")
        for d in digests:
            if d is not None and not (isinstance(d, bytes) and len(d) == DIGEST_SIZE):
                raise ManifestError("manifest digest is not 32 bytes")
        return cls(ObjectVersion(url, token, size), block_size, list(digests))

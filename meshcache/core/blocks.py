"""Block math: block i of an object version is bytes [i*B, (i+1)*B), B a power of two."""

from __future__ import annotations


def block_count(size: int, block_size: int) -> int:
    """How many blocks an object of `size` bytes has (0 for an empty object)."""
    return -(-size // block_size)


def block_span(index: int, size: int, block_size: int) -> tuple[int, int]:
    """The byte range [start, end) of block `index`; the last block may be short."""
    start = index * block_size
    if index < 0 or start >= size:
        raise IndexError(f"block {index} is outside an object of {size} bytes")
    return start, min(start + block_size, size)


def block_length(index: int, size: int, block_size: int) -> int:
    """Length in bytes of block `index`."""
    start, end = block_span(index, size, block_size)
    return end - start


def blocks_for_range(start: int, end: int, block_size: int) -> range:
    """Indexes of the blocks that bytes [start, end) touch (empty for an empty range)."""
    if end <= start:
        return range(0)
    return range(start // block_size, (end - 1) // block_size + 1)

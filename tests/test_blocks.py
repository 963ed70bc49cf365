from hypothesis import given, strategies as st

from meshcache.core.blocks import block_count, block_length, block_span, blocks_for_range

sizes = st.integers(min_value=0, max_value=2**40)
bsizes = st.sampled_from([2**k for k in range(10, 27)])


@given(sizes, bsizes, st.data())
def test_blocks_tile_the_object_exactly(size, bs, data):
    n = block_count(size, bs)
    if not n:
        assert size == 0
        return
    assert (n - 1) * bs < size <= n * bs
    # Every span when there are few, else the first, the last and a sample between them.
    if n <= 512:
        indexes = list(range(n))
    else:
        indexes = sorted({0, n - 1, *data.draw(st.lists(st.integers(0, n - 1), max_size=64))})
    for i in indexes:
        start, end = block_span(i, size, bs)
        assert start == i * bs and end == min((i + 1) * bs, size)
        assert end - start == block_length(i, size, bs) and 0 < end - start <= bs
    for a, b in zip(indexes, indexes[1:]):
        if b == a + 1:  # neighbours touch: no gap, no overlap
            assert block_span(a, size, bs)[1] == block_span(b, size, bs)[0]


@given(st.integers(0, 2**32), st.integers(0, 2**32), bsizes)
def test_blocks_for_range_cover_exactly_the_touched_blocks(a, b, bs):
    start, end = min(a, b), max(a, b)
    r = blocks_for_range(start, end, bs)
    if start == end:
        assert len(r) == 0
        return
    assert r[0] * bs <= start < (r[0] + 1) * bs
    assert r[-1] * bs < end <= (r[-1] + 1) * bs


def test_span_outside_object_raises():
    import pytest

    with pytest.raises(IndexError):
        block_span(3, 3 * 1024, 1024)

from hypothesis import given, strategies as st

from meshcache.core.blocks import block_count, block_length, block_span, blocks_for_range

sizes = st.integers(min_value=0, max_value=2**40)
bsizes = st.sampled_from([2**k for k in range(10, 27)])


@given(sizes, bsizes)
def test_blocks_tile_the_object_exactly(size, bs):
    n = block_count(size, bs)
    if n:
        spans = [block_span(i, size, bs) for i in (0, n - 1)]
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert 0 < block_length(n - 1, size, bs) <= bs
        assert (n - 1) * bs < size <= n * bs
    else:
        assert size == 0


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

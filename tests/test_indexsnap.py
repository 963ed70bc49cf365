"""The index snapshot's format: what is encoded decodes the same; a torn, truncated or altered
snapshot is refused (the store then scans every block file instead)."""

import pytest
from hypothesis import given, settings, strategies as st

from meshcache.core import indexsnap
from meshcache.core.indexsnap import SnapshotError

entries = st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(1, 1 << 62)),
                   max_size=50)


@settings(max_examples=200)
@given(entries)
def test_round_trip(items):
    data = indexsnap.encode([d for d, _ in items], [s for _, s in items])
    digests, sizes = indexsnap.decode(data)
    assert list(zip(digests, sizes)) == items


@settings(max_examples=300)
@given(entries.filter(bool), st.data())
def test_any_damage_is_refused(items, data):
    good = indexsnap.encode([d for d, _ in items], [s for _, s in items])
    how = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(good) - 1))
        bit = data.draw(st.integers(0, 7))
        bad = good[:at] + bytes([good[at] ^ (1 << bit)]) + good[at + 1:]
    elif how == "truncate":
        bad = good[:data.draw(st.integers(0, len(good) - 1))]
    else:
        bad = good + data.draw(st.binary(min_size=1, max_size=64))
    with pytest.raises(SnapshotError):
        indexsnap.decode(bad)


def test_bad_input_to_encode_is_refused():
    with pytest.raises(ValueError):
        indexsnap.encode([b"x" * 31], [1])
    with pytest.raises(ValueError):
        indexsnap.encode([b"x" * 32], [0])
    with pytest.raises(ValueError):
        indexsnap.encode([b"x" * 32], [])

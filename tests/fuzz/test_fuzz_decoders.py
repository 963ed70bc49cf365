"""Heavier fuzzing of every decoder with mutated valid encodings (MESHCACHE_FUZZ_EXAMPLES=N)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcache.core import wire
from meshcache.core.bloom import BloomError, BloomFilter
from meshcache.core.wire import WireError
from tests.test_wire import messages

N = int(os.environ.get("MESHCACHE_FUZZ_EXAMPLES", "1500"))
fuzz = settings(max_examples=N, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """`base` with a few byte flips, insertions, deletions, truncation or splices."""
    b = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate", "dup"]))
        i = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "set" and b:
            b[i] = draw(st.integers(0, 255))
        elif op == "flip" and b:
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete" and b:
            del b[i:i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del b[i:]
        elif op == "dup":
            b[i:i] = b[i:i + draw(st.integers(1, 16))]
    return bytes(b)


@fuzz
@given(st.data())
def test_wire_decode(data):
    msg = data.draw(messages)
    blob = data.draw(mutated(wire.encode(msg)))
    try:
        got = wire.decode(blob)
    except WireError:
        return
    assert wire.decode(wire.encode(got)) == got


@st.composite
def filters(draw) -> BloomFilter:
    f = BloomFilter(draw(st.integers(8, 2000)), draw(st.integers(1, 12)))
    for d in draw(st.lists(st.binary(min_size=32, max_size=32), max_size=30)):
        f.add(d)
    return f


@fuzz
@given(st.data())
def test_bloom_decode(data):
    f = data.draw(filters())
    blob = data.draw(mutated(f.encode()))
    try:
        g = BloomFilter.decode(blob, max_bytes=data.draw(st.sampled_from([16, 300, 1 << 20])))
    except BloomError:
        return
    assert BloomFilter.decode(g.encode()) == g


@fuzz
@given(st.data())
def test_bloom_apply_delta(data):
    old = data.draw(filters())
    new = old.copy()
    for d in data.draw(st.lists(st.binary(min_size=32, max_size=32), max_size=20)):
        new.add(d)
    blob = data.draw(mutated(new.diff(old)))
    target = old.copy()
    try:
        target.apply_delta(blob)
    except BloomError:
        assert target == old  # a refused delta changes nothing
        return
    assert target.m == old.m and target.k == old.k

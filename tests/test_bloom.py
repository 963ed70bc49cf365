"""Bloom filters: no false negatives, measured FPR near theory, encodings and deltas."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcache.core import bloom
from meshcache.core.bloom import BloomError, BloomFilter
from meshcache.core.wire import WireError

digests = st.binary(min_size=32, max_size=32)


def rand_digests(n: int, seed: int) -> list[bytes]:
    r = random.Random(seed)
    return [r.randbytes(32) for _ in range(n)]


@given(st.lists(digests, max_size=200), st.integers(1, 1000), st.sampled_from([0.5, 0.1, 0.01]))
def test_no_false_negatives(items, n, fpr):
    f = BloomFilter.for_capacity(n, fpr)
    for d in items:
        f.add(d)
    assert all(d in f for d in items)
    assert all(f.contains_many(items))


def test_no_false_negatives_batch():
    items = rand_digests(50_000, 1)
    f = BloomFilter.for_capacity(50_000, 0.01)
    f.add_many(items)
    assert all(f.contains_many(items))
    assert all(d in f for d in items[:2000])


def test_batch_and_single_paths_agree():
    items = rand_digests(40_000, 2)
    a = BloomFilter.for_capacity(40_000, 0.02)
    b = BloomFilter(a.m, a.k)
    a.add_many(b"".join(items))
    for d in items:
        b.add(d)
    assert a == b
    probes = rand_digests(5000, 3) + items[:100]
    assert a.contains_many(probes) == [d in a for d in probes]


def test_measured_fpr_near_theory():
    n = 100_000
    f = BloomFilter.for_capacity(n, 0.01)
    f.add_many(rand_digests(n, 4))
    probes = rand_digests(300_000, 5)
    measured = sum(f.contains_many(probes)) / len(probes)
    theory = f.fpr_theory(n)
    assert abs(theory - 0.01) < 0.001
    assert abs(measured / theory - 1) < 0.2, (measured, theory)
    assert abs(f.count() / n - 1) < 0.02
    assert abs(f.fpr_current() / theory - 1) < 0.05


def test_sizing_for_one_million_at_one_percent():
    f = BloomFilter.for_capacity(1_000_000, 0.01)
    assert len(f.encode()) <= 1_200_000
    assert f.k == 7


@given(st.lists(digests, max_size=50), st.lists(digests, max_size=50))
def test_union_contains_both(xs, ys):
    a, b = BloomFilter.for_capacity(100, 0.01), BloomFilter.for_capacity(100, 0.01)
    for d in xs:
        a.add(d)
    for d in ys:
        b.add(d)
    u = a.union(b)
    assert all(d in u for d in xs + ys)
    assert u.bits_set() <= a.bits_set() + b.bits_set()


def test_union_of_different_shapes_fails():
    with pytest.raises(BloomError):
        BloomFilter.for_capacity(100, 0.01).union(BloomFilter.for_capacity(200, 0.01))


@given(st.lists(digests, max_size=50), st.integers(8, 3000), st.integers(1, 32))
def test_encode_decode_round_trip(items, m, k):
    f = BloomFilter(m, k)
    for d in items:
        f.add(d)
    g = BloomFilter.decode(f.encode())
    assert g == f and all(d in g for d in items)


@given(st.lists(digests, max_size=60), st.lists(digests, max_size=60), st.integers(0, 60))
def test_delta_turns_old_into_new(old_items, new_items, keep):
    old = BloomFilter.for_capacity(100, 0.05)
    for d in old_items:
        old.add(d)
    new = BloomFilter(old.m, old.k)  # rebuilt: some entries evicted, some added
    for d in old_items[:keep] + new_items:
        new.add(d)
    delta = new.diff(old)
    copy = old.copy()
    copy.apply_delta(delta)
    assert copy == new


def test_large_delta_is_sparse_and_small():
    old = BloomFilter.for_capacity(100_000, 0.01)
    old.add_many(rand_digests(100_000, 6))
    new = old.copy()
    new.add_many(rand_digests(1000, 7))  # 1% churn
    delta = new.diff(old)
    assert len(delta) < old.nbytes / 10
    old.apply_delta(delta)
    assert old == new


def test_delta_against_wrong_base_or_corrupted_is_refused():
    a = BloomFilter.for_capacity(100, 0.01)
    b = a.copy()
    b.add(b"x" * 32)
    delta = b.diff(a)
    c = a.copy()
    c.add(b"y" * 32)
    with pytest.raises(BloomError, match="wrong generation"):
        c.apply_delta(delta)
    bad = bytearray(delta)
    bad[-1] ^= 0x01
    before = a.copy()
    with pytest.raises(BloomError):
        a.apply_delta(bytes(bad))
    assert a == before
    with pytest.raises(BloomError, match="another shape"):
        BloomFilter.for_capacity(1000, 0.01).apply_delta(delta)


def test_decode_rejects_bad_input():
    f = BloomFilter.for_capacity(100, 0.01)
    enc = f.encode()
    for bad, why in [
        (b"", "truncated"),
        (b"XX" + enc[2:], "not a Bloom"),
        (enc[:2] + b"\x09" + enc[3:], "format 9"),
        (enc[:-1], "needs"),
        (enc + b"\x00", "needs"),
        (enc[:3] + b"\x00" + enc[4:], "bad shape"),
        (enc[:4] + (1 << 60).to_bytes(8, "big") + enc[12:], "bad shape"),
    ]:
        with pytest.raises(BloomError, match=why):
            BloomFilter.decode(bad)
    with pytest.raises(BloomError, match="exceeds"):
        BloomFilter.decode(enc, max_bytes=10)
    g = BloomFilter(13, 3)  # 13 bits: 3 pad bits in the last byte
    raw = bytearray(g.encode())
    raw[-1] |= 0x80
    with pytest.raises(BloomError, match="pad"):
        BloomFilter.decode(bytes(raw))
    assert issubclass(BloomError, WireError) and issubclass(BloomError, ValueError)


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_decode(data):
    for blob in (data, bloom._HEAD.pack(b"MB", 1, 3, 8 * max(1, len(data))) + data):
        try:
            BloomFilter.decode(blob)
        except BloomError:
            pass
    f = BloomFilter(64, 3)
    for blob in (data, bloom._DHEAD.pack(b"MD", 1, 3, 64, f._fingerprint(), b"\0" * 8, 0) + data):
        try:
            f.apply_delta(blob)
        except BloomError:
            pass


@settings(max_examples=50)
@given(st.lists(digests, min_size=1, max_size=20))
def test_bad_digest_sizes(items):
    f = BloomFilter(64, 3)
    with pytest.raises(BloomError):
        f.add(items[0][:31])
    assert items[0][:31] not in f
    assert "not bytes" not in f
    with pytest.raises(BloomError):
        f.add_many(b"".join(items) + b"x")


def test_count_and_theory_on_empty_and_full():
    f = BloomFilter(64, 3)
    assert f.count() == 0 and f.fpr_theory() == 0
    f._bits[:] = b"\xff" * 8
    assert f.count() == float("inf") and f.fpr_theory() == 1.0
    with pytest.raises(ValueError):
        BloomFilter.for_capacity(0, 0.01)
    with pytest.raises(BloomError):
        BloomFilter(4, 3)

"""Token buckets: the debt model, and long-run throughput converging to the rate."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcache.core.tokenbucket import TokenBucket


def test_burst_then_wait():
    b = TokenBucket(1000, 500)
    assert b.available(0.0) == 500
    assert b.take(500, 0.0) == 0.0
    assert b.take(100, 0.0) == pytest.approx(0.1)
    assert b.available(0.1) == pytest.approx(0.0)
    assert b.available(10.0) == 500  # capped at burst


def test_request_larger_than_burst_goes_into_debt():
    b = TokenBucket(100, 10)
    assert b.take(1000, 0.0) == pytest.approx(9.9)
    assert b.available(0.0) == pytest.approx(-990)
    assert b.take(1, 9.9) == pytest.approx(0.01)


@pytest.mark.parametrize("rate", [0, None])
def test_unlimited(rate):
    b = TokenBucket(rate)
    assert b.unlimited
    assert b.take(10**12, 0.0) == 0.0
    assert b.available(0.0) == math.inf


def test_clock_going_backwards_refills_nothing():
    b = TokenBucket(100, 100)
    b.take(100, 10.0)
    assert b.available(5.0) == 0
    assert b.available(11.0) == pytest.approx(100)


def test_bad_arguments():
    for rate, burst in [(-1, 1), (math.inf, 1), (math.nan, 1), (10, 0), (10, -1)]:
        with pytest.raises(ValueError):
            TokenBucket(rate, burst)
    with pytest.raises(ValueError):
        TokenBucket(10).take(-1, 0.0)


def test_set_rate_keeps_debt():
    b = TokenBucket(100, 100)
    b.take(300, 0.0)  # 200 in debt
    b.set_rate(200, 0.0, 50)
    assert b.take(0, 0.0) == pytest.approx(1.0)


@settings(deadline=None)  # up to 100,000 takes: wall time on a busy machine is no measure here
@given(rate=st.floats(1e3, 1e10), burst_s=st.floats(0.001, 1.0),
       sizes=st.lists(st.floats(0.01, 10), min_size=1, max_size=20),
       gaps=st.one_of(st.just([0.0]), st.lists(st.floats(0, 1), min_size=1, max_size=5)))
def test_long_run_converges_to_rate(rate, burst_s, sizes, gaps):
    """A greedy sender that waits as told sends at the rate, within 1%, over a long run."""
    burst = rate * burst_s
    b = TokenBucket(rate, burst)
    chunks = [max(1, int(f * burst)) for f in sizes]  # from 1% to 10x the burst
    now, sent, i = 0.0, 0, 0
    target = 200 * max(burst, max(chunks))  # long against the burst and the biggest take
    while sent < target:
        n = chunks[i % len(chunks)]
        now += b.take(n, now)  # wait, then send n bytes at `now`
        sent += n
        now += gaps[i % len(gaps)] * burst / rate * 0.5  # the sender's own pauses
        i += 1
    assert i < 100_000
    assert sent / now <= rate * 1.01
    if not any(gaps):
        assert sent / now >= rate * 0.99


@given(st.lists(st.tuples(st.floats(0, 10), st.integers(0, 10**6)), max_size=50))
def test_never_more_than_burst_plus_rate_times_time(events):
    rate, burst = 1e5, 5e4
    b = TokenBucket(rate, burst)
    now, allowed_until = 0.0, 0.0
    sent = 0
    for dt, n in events:
        now += dt
        delay = b.take(n, now)
        assert delay >= 0
        allowed_until = max(allowed_until, now + delay)
        sent += n
    assert sent <= burst + rate * allowed_until + 1e-6 * max(1, sent)

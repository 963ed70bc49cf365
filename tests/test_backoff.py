"""The retry policy, pure, on a fake clock: waits double from `first` to `cap`, jitter only
shortens them, a success starts over."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from meshcache.core.backoff import Backoff


def test_join_retries_back_off_from_one_second_to_thirty() -> None:
    b = Backoff(first=1.0, cap=30.0)
    now, waits = 100.0, []
    assert b.due(now)
    for _ in range(8):
        nxt = b.failed(now)
        waits.append(nxt - now)
        assert not b.due(nxt - 0.001) and b.due(nxt)
        now = nxt
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    b.succeeded(now)
    assert b.due(now) and b.failed(now) - now == 1.0


def test_a_node_whose_bootstrap_comes_up_3s_later_retries_within_2s_of_it() -> None:
    """Attempts at 0, 1, 3, 7 ... s: one lands within 2 s of a peer that appeared at 3 s (the
    old fixed 30 s retry waited until 30 s)."""
    b = Backoff(first=1.0, cap=30.0)
    now, attempts = 0.0, []
    while now < 10:
        attempts.append(now)
        now = b.failed(now)
    assert next(t for t in attempts if t >= 3.0) <= 5.0


def test_bad_parameters_are_refused() -> None:
    for kw in ({"first": 0}, {"first": 5, "cap": 1}, {"factor": 0.5}, {"jitter": 1.0},
               {"cap": float("inf")}):
        with pytest.raises(ValueError):
            Backoff(**kw)


@settings(max_examples=200, deadline=None)
@given(first=st.floats(0.01, 10), ratio=st.floats(1, 1000), factor=st.floats(1, 4),
       jitter=st.floats(0, 0.99), draws=st.lists(st.floats(0, 1, exclude_max=True), max_size=2000))
def test_waits_grow_stay_within_cap_and_jitter_only_shortens(first, ratio, factor, jitter,
                                                             draws) -> None:
    cap = first * ratio
    b, plain = Backoff(first, cap, factor, jitter), Backoff(first, cap, factor)
    now, last = 0.0, 0.0
    for d in draws:
        wait = b.failed(now, d) - now
        base = plain.failed(now) - now
        eps = 1e-9 * (1 + now)  # the waits come back as times: rounding of now + wait
        assert first * (1 - jitter) - eps <= wait <= base + eps and base <= cap + eps
        assert base >= last - eps  # never shrinks while failing
        last, now = base, now + wait
    if draws:
        assert b.failures == len(draws)

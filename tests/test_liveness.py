"""When the mesh stops asking a suspect and drops an unrefuted restarted member, pure."""

from __future__ import annotations

from hypothesis import given, strategies as st

from meshcache.core.liveness import grace_expired, stop_using, unusable_after

times = st.floats(0, 1e6, allow_nan=False)
spans = st.floats(0.01, 100, allow_nan=False)


def test_half_the_suspect_timeout_counting_the_failed_probe():
    assert unusable_after(5.0, 1.0) == 1.5
    assert not stop_using(100.0, 101.4, 5.0, 1.0) and stop_using(100.0, 101.5, 5.0, 1.0)
    assert not stop_using(None, 1e9, 5.0, 1.0)
    assert unusable_after(1.0, 1.0) == 0.0  # never negative


@given(times, spans, spans, spans)
def test_stop_using_is_monotone_in_time_and_before_removal(since, dt, timeout, interval):
    if stop_using(since, since + dt, timeout, interval):
        assert stop_using(since, since + dt + 1.0, timeout, interval)
    # a suspect is never used for longer than half the timeout (it is removed at the timeout)
    assert stop_using(since, since + timeout / 2, timeout, interval)


@given(times, spans)
def test_grace_is_the_whole_suspect_timeout(last_seen, timeout):
    assert not grace_expired(last_seen, last_seen + timeout * 0.99, timeout)
    assert grace_expired(last_seen, last_seen + timeout * 1.01 + 1e-3, timeout)

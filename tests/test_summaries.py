"""Cache summaries: generations, deltas against the base a peer holds, rebuilds after evictions."""

from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st

from meshcache.mesh.summaries import LocalSummary, RemoteSummaries


def digests(n, seed=0):
    import random
    r = random.Random(seed)
    return [r.randbytes(32) for _ in range(n)]


def test_full_then_deltas_keep_the_remote_equal_to_the_local():
    local, remote = LocalSummary(10_000), RemoteSummaries()
    gen, delta, full = local.publish(0.0)
    assert delta is None
    remote.apply_full(b"n1", gen, full)
    for step in range(5):
        for d in digests(300, step):
            local.add(d)
        assert local.due(1.0 + step)
        gen, delta, full = local.publish(1.0 + step)
        assert delta is not None and len(delta) < len(full)
        assert remote.apply_delta(b"n1", gen - 1, gen, delta)
    for d in digests(300, 3):
        assert remote.holders(d) == [b"n1"]
    assert remote.holders(os.urandom(32)) in ([], [b"n1"])


def test_delta_against_the_wrong_base_is_refused():
    local, remote = LocalSummary(10_000), RemoteSummaries()
    gen, _, full = local.publish(0.0)
    remote.apply_full(b"n1", gen, full)
    local.add(os.urandom(32))
    g2, d2, _ = local.publish(1.0)
    local.add(os.urandom(32))
    g3, d3, _ = local.publish(2.0)
    assert not remote.apply_delta(b"n1", g2, g3, d3)  # it missed g2: ask for the full filter
    assert remote.apply_delta(b"n1", gen, g2, d2)
    assert remote.apply_delta(b"n1", g2, g3, d3)


def test_due_after_one_percent_or_the_interval():
    s = LocalSummary(100_000, max_interval=10.0)
    for d in digests(1000):
        s.add(d)
    s.publish(0.0)
    s.add(os.urandom(32))
    assert not s.due(1.0)          # 1 change in 1000 entries: not yet
    assert s.due(10.0)             # but the interval has passed
    for d in digests(20, 9):
        s.add(d)
    assert s.due(1.0)              # >= 1% changed


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sets(st.integers(0, 500), max_size=60), min_size=1, max_size=6))
def test_rebuild_after_evictions_drops_evicted_blocks(rounds):
    pool = digests(501, 7)
    local, remote = LocalSummary(5_000), RemoteSummaries()
    gen, _, full = local.publish(0.0)
    remote.apply_full(b"n", gen, full)
    held: set[int] = set()
    for t, now_held in enumerate(rounds, start=1):
        for i in now_held - held:
            local.add(pool[i])
        if held - now_held:
            local.removed(len(held - now_held))
            local.rebuild(pool[i] for i in now_held)
        held = set(now_held)
        gen, delta, full = local.publish(float(t))
        assert remote.apply_delta(b"n", gen - 1, gen, delta)
        for i in held:  # no false negatives, ever
            assert remote.holders(pool[i]) == [b"n"]

"""The penalty box, pure: failures hold a peer for a fixed time, lies escalate and expel, and
the box stays bounded over a long life with many peers."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from meshcache.core.penalty import PenaltyBox


def test_lies_double_the_penalty_up_to_the_cap_and_expel():
    box = PenaltyBox(base=30.0, cap=100.0, expel_after=3, expel_for=3600.0)
    r1 = box.lied("x", 0.0)
    assert r1.until == 30.0 and r1.lies == 1 and not box.expelled("x", 0.0)
    r2 = box.lied("x", 1.0)
    assert r2.until == 61.0 and not box.expelled("x", 1.0)
    r3 = box.lied("x", 2.0)
    assert r3.until == 102.0  # 4 * 30 capped at 100
    assert box.expelled("x", 2.0) and box.expelled("x", 3601.0) and not box.expelled("x", 3602.1)
    assert box.penalized("x", 50.0) and not box.penalized("y", 50.0)


def test_failures_hold_for_a_fixed_time_and_never_shorten():
    box = PenaltyBox()
    box.failed("a", 10.0, 5.0)
    box.failed("a", 11.0, 1.0)
    assert box.until("a") == 15.0 and box.lies("a") == 0
    assert box.penalized("a", 14.9) and not box.penalized("a", 15.0)


def test_records_are_forgotten_after_forget_after():
    box = PenaltyBox(base=1.0, cap=1.0, expel_after=2, forget_after=100.0)
    box.lied("x", 0.0)
    box.prune(50.0)
    assert box.lies("x") == 1  # remembered: a second lie soon would expel
    box.prune(101.0)
    assert len(box) == 0 and box.lies("x") == 0


def test_many_peers_keep_the_box_bounded():
    box = PenaltyBox(max_entries=500, forget_after=60.0)
    for i in range(20_000):
        now = i * 0.01
        if i % 3:
            box.failed(("10.0.0.1", i), now, 5.0)
        else:
            box.lied(bytes(str(i), "ascii"), now)
        if i % 1000 == 0:
            box.prune(now)
        assert len(box) <= 500
    # the newest are kept: a liar caught just now is still avoided
    assert box.penalized(b"19998", 199.99)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fail", "lie", "prune"]), st.integers(0, 5),
                          st.floats(0, 50)), max_size=60),
       st.integers(1, 4), st.integers(1, 8))
def test_invariants(ops, expel_after, max_entries):
    """Whatever happens: bounded; a key's avoid time never goes backwards while it is
    remembered; a key expelled has lied at least expel_after times; lies escalate."""
    box = PenaltyBox(base=2.0, cap=64.0, expel_after=expel_after, expel_for=100.0,
                     forget_after=30.0, max_entries=max_entries)
    now = 0.0
    for op, key, dt in ops:
        now += dt
        before = box.until(key)
        had = box.lies(key)
        if op == "fail":
            box.failed(key, now, 3.0)
            assert box.until(key) >= max(before if had or before else 0.0, now + 3.0)
        elif op == "lie":
            r = box.lied(key, now)
            assert r.lies == had + 1
            assert r.until >= now + box.penalty(r.lies)
            assert box.penalized(key, now)
            if r.lies >= expel_after:
                assert box.expelled(key, now)
        else:
            box.prune(now)
        assert len(box) <= max_entries
        for k in range(6):
            if box.expelled(k, now):
                assert box.lies(k) >= expel_after
    assert all(box.penalty(n) <= 64.0 for n in range(1, 80))
    assert [box.penalty(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]

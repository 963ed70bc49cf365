"""Rendezvous hashing: deterministic owners; a leaving member moves exactly its own keys."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from meshcache.core.rendezvous import owner, owners, rank, score

ids = st.binary(min_size=1, max_size=20)


@given(st.binary(max_size=40), st.lists(ids, max_size=20))
def test_rank_is_a_deterministic_order_of_the_members(key, members):
    r = rank(key, members)
    assert sorted(r) == sorted(set(members))
    assert r == rank(key, list(reversed(members)))
    assert owner(key, members) == (r[0] if r else None)
    assert owners(key, members, 3) == r[:3]
    assert [score(key, m) for m in r] == sorted((score(key, m) for m in r), reverse=True)


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=60),
       st.lists(ids, min_size=2, max_size=12, unique=True), st.data())
def test_member_leaving_moves_only_its_keys(keys, members, data):
    gone = data.draw(st.sampled_from(members))
    rest = [m for m in members if m != gone]
    for k in keys:
        before = rank(k, members)
        after = owner(k, rest)
        if before[0] == gone:
            assert after == before[1]  # to the runner-up
        else:
            assert after == before[0]  # untouched


def test_about_one_nth_of_keys_move():
    r = random.Random(7)
    members = [r.randbytes(16) for _ in range(10)]
    keys = [r.randbytes(32) for _ in range(20_000)]
    before = {k: owner(k, members) for k in keys}
    gone = members[3]
    rest = [m for m in members if m != gone]
    moved = [k for k in keys if owner(k, rest) != before[k]]
    assert all(before[k] == gone for k in moved)
    assert sum(1 for k in keys if before[k] == gone) == len(moved)
    assert abs(len(moved) / len(keys) - 0.1) < 0.01
    # and load is even: every member owns ~1/N
    counts = {m: 0 for m in members}
    for o in before.values():
        counts[o] += 1
    assert max(counts.values()) < 1.1 * len(keys) / 10 and min(counts.values()) > 0.9 * len(keys) / 10


def test_no_members():
    assert owner(b"k", []) is None and rank(b"k", []) == []

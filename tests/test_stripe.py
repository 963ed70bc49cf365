"""Cooperative striping's pure choices: one puller zone per block, never two zones deferring to
each other, two zones splitting every pair of blocks, and the asked node is the zone owner."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from meshcache.core.rendezvous import rank
from meshcache.core.stripe import puller_node, puller_zone, zone_order

zone = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=4)
version = st.binary(min_size=1, max_size=40)
index = st.integers(0, 1 << 40)


@given(version, index, st.lists(zone, max_size=6), zone)
def test_the_puller_is_a_candidate_and_does_not_depend_on_order(v, i, zones, mine):
    got = puller_zone(v, i, zones, mine)
    assert got in set(zones) | {mine}
    assert got == puller_zone(v, i, list(reversed(zones)), mine)
    assert got == zone_order(v, i, zones + [mine])[0]
    assert sorted(zone_order(v, i, zones)) == sorted(set(zones))
    assert puller_zone(v, i, [], mine) == mine  # alone: fetch it yourself


@given(version, index, st.lists(zone, max_size=5), st.lists(zone, max_size=5), zone, zone)
def test_two_zones_never_wait_on_each_other(v, i, seen_by_x, seen_by_y, x, y):
    """Whatever each zone believes about who pulls: if x defers to y, y does not defer to x."""
    if x == y:
        return
    px = puller_zone(v, i, seen_by_x + [y], x)
    py = puller_zone(v, i, seen_by_y + [x], y)
    assert not (px == y and py == x)


@given(version, index, st.lists(zone, min_size=1, max_size=5, unique=True), st.data())
def test_a_zone_that_stops_pulling_moves_only_its_blocks(v, i, zones, data):
    mine = zones[0]
    gone = data.draw(st.sampled_from(zones))
    if gone == mine:
        return
    before = puller_zone(v, i, zones, mine)
    after = puller_zone(v, i, [z for z in zones if z != gone], mine)
    assert after == before or before == gone


@given(version, st.integers(0, 1 << 40), zone, zone)
def test_two_zones_split_every_pair_of_blocks(v, k, x, y):
    if x == y:
        return
    pair = [puller_zone(v, 2 * k + j, [y], x) for j in (0, 1)]
    assert sorted(pair) == sorted([x, y])
    # both zones agree when their views agree
    assert pair == [puller_zone(v, 2 * k + j, [x], y) for j in (0, 1)]


def test_three_zones_each_pull_about_a_third():
    v = os.urandom(32)
    counts = {z: 0 for z in "abc"}
    for i in range(3000):
        counts[puller_zone(v, i, ["a", "b"], "c")] += 1
    assert all(850 < n < 1150 for n in counts.values())


@given(st.binary(min_size=1, max_size=48),
       st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=8))
def test_the_asked_node_is_the_zone_owner_over_the_same_members(b, ids):
    assert puller_node(b, ids) == rank(b, ids)[0]
    assert puller_node(b, []) is None

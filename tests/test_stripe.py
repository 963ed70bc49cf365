"""Cooperative striping's pure choices: one puller zone per block, never two zones deferring to
each other, an even split, and the asked node matches the zone owner."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from meshcache.core.rendezvous import rank
from meshcache.core.stripe import puller_node, puller_zone, zone_order

zone = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=4)
block = st.binary(min_size=1, max_size=48)


@given(block, st.lists(zone, max_size=6), zone)
def test_the_puller_is_a_candidate_and_does_not_depend_on_order(b, zones, mine):
    got = puller_zone(b, zones, mine)
    assert got in set(zones) | {mine}
    assert got == puller_zone(b, list(reversed(zones)), mine)
    assert got == zone_order(b, zones + [mine])[0]
    assert puller_zone(b, [], mine) == mine  # alone: fetch it yourself


@given(block, st.lists(zone, max_size=5), st.lists(zone, max_size=5), zone, zone)
def test_two_zones_never_wait_on_each_other(b, seen_by_x, seen_by_y, x, y):
    """Whatever each zone believes about who pulls: if x defers to y, y does not defer to x."""
    if x == y:
        return
    px = puller_zone(b, seen_by_x + [y], x)
    py = puller_zone(b, seen_by_y + [x], y)
    assert not (px == y and py == x)


@given(block, st.lists(zone, min_size=1, max_size=5, unique=True), st.data())
def test_a_zone_that_stops_pulling_moves_only_its_blocks(b, zones, data):
    mine = zones[0]
    gone = data.draw(st.sampled_from(zones))
    if gone == mine:
        return
    before = puller_zone(b, zones, mine)
    after = puller_zone(b, [z for z in zones if z != gone], mine)
    assert after == before or before == gone


def test_two_zones_split_a_version_about_evenly():
    key = os.urandom(32)
    names = [key + i.to_bytes(8, "big") for i in range(2000)]
    mine = sum(puller_zone(n, ["c"], "b") == "b" for n in names)
    assert 850 < mine < 1150
    # both zones agree on every block when their views agree
    assert all(puller_zone(n, ["c"], "b") == puller_zone(n, ["b"], "c") for n in names)


@given(block, st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=8))
def test_the_asked_node_is_the_zone_owner_over_the_same_members(b, ids):
    assert puller_node(b, ids) == rank(b, ids)[0]
    assert puller_node(b, []) is None

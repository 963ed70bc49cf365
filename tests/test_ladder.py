"""The ladder: rungs tried in order, one admit path, ranks that stop loops."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcache.core.rungs import Rank, may_use
from meshcache.read.ladder import BlockRequest

from tests.conftest import SMALL_BLOCK


class ScriptedRung:
    """A rung that answers from a dict of block bytes, optionally lying."""

    name = "scripted"
    counter = "scripted"
    rank = Rank.HOLDERS
    authoritative = False

    def __init__(self, blocks: dict[int, bytes], lie: bool = False) -> None:
        self.blocks = blocks
        self.lie = lie
        self.asked: list[BlockRequest] = []

    async def fetch(self, request: BlockRequest) -> bytes | None:
        self.asked.append(request)
        data = self.blocks.get(request.index)
        if data is not None and self.lie:
            return bytes(len(data))  # right length, wrong bytes
        return data


def _blocks(data: bytes) -> dict[int, bytes]:
    return {i: data[o:o + SMALL_BLOCK] for i, o in enumerate(range(0, len(data), SMALL_BLOCK))}


def test_an_added_rung_serves_before_the_origin_and_is_counted(cache_config, local_object):
    from meshcache import Node

    url, data = local_object()
    with Node(cache_config()) as warm:  # learn the digests, then forget the blocks
        warm.prewarm(url)
        warm.evict()
    node = Node(cache_config())
    rung = ScriptedRung(_blocks(data))
    node.add_source(rung, before="origin")
    try:
        assert [s.name for s in node.run(_names(node))] == ["local", "scripted", "origin"]
        with node.open(url) as f:
            assert f.read() == data
            stats = f.stats
        assert stats["bytes_from_scripted"] == len(data)
        assert stats["bytes_from_origin"] == 0
        s = node.stats()
        assert s["bytes_from_scripted"] == len(data) and s["origin_requests"] == 0
        assert all(r.digest is not None for r in rung.asked)  # the manifest's digest was known
    finally:
        node.close()


async def _names(node):
    return node.sources()


def test_a_lying_rung_is_passed_over_and_the_origin_serves(cache_config, local_object):
    from meshcache import Node

    url, data = local_object()
    with Node(cache_config()) as warm:
        warm.prewarm(url)
        warm.evict()
    node = Node(cache_config())
    node.add_source(ScriptedRung(_blocks(data), lie=True))
    try:
        with node.open(url) as f:
            assert f.read() == data
        s = node.stats()
        assert s.get("bytes_from_scripted", 0) == len(data)  # received, then refused
        assert s["bytes_from_origin"] == len(data)
        assert s["origin_requests"] == len(_blocks(data))
    finally:
        node.close()


def test_a_request_ranked_below_the_origin_never_reads_it(node, local_object):
    url, data = local_object()
    v = node.version(url)

    async def ask():
        return await node.fetch_request(node.request(v, 0, max_rank=Rank.HOLDERS))

    assert node.run(ask()) is None  # only the store may answer, and it lacks the block
    assert node.stats()["origin_requests"] == 0
    node.fetch_sync(v, 0)
    res = node.run(ask())
    assert res is not None and res.source == "local"


def test_ranks_fall_along_every_chain():
    """Each forwarding rung sends its own rank; what the asked node may use ranks below it."""
    forwarding = {Rank.HOLDERS: "store only", Rank.REMOTE_ZONE: "store only",
                  Rank.OWNER: "all but another owner"}
    for sent in forwarding:
        usable = [r for r in Rank if may_use(sent, r)]
        assert all(r < sent for r in usable)
    assert [r for r in Rank if may_use(Rank.HOLDERS, r)] == [Rank.LOCAL]
    assert [r for r in Rank if may_use(Rank.REMOTE_ZONE, r)] == [Rank.LOCAL, Rank.HOLDERS]
    owner_may = {r for r in Rank if may_use(Rank.OWNER, r)}
    assert Rank.ORIGIN in owner_may and Rank.REMOTE_ZONE in owner_may
    assert Rank.OWNER not in owner_may


@given(st.lists(st.sampled_from([Rank.HOLDERS, Rank.REMOTE_ZONE, Rank.OWNER]), max_size=20))
def test_a_chain_of_forwards_ends(chain):
    """However views disagree, a forwarded request can only be forwarded by a lower rung."""
    limit = Rank.ANY
    taken = 0
    for rung in chain:
        if not may_use(limit, rung):
            continue
        limit = rung
        taken += 1
    assert taken <= 3

"""mDNS discovery with real zeroconf pinned to 127.0.0.1 (and on lab hosts in test_lab_mesh)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from meshcache import Config, Node
from meshcache.mesh.discovery import AdError, Discovery, parse_ad

from tests.conftest import CLUSTER_SECRET, SMALL_BLOCK


def test_parse_ad_bounds():
    good = {b"id": b"ab" * 16, b"tag": b"00" * 8, b"bs": b"65536", b"v": b"1",
            b"port": b"7946", b"zone": b"z"}
    ad = parse_ad(good, ["127.0.0.1"], 0)
    assert ad.port == 7946 and ad.block_size == 65536 and ad.addresses == ("127.0.0.1",)
    for key, bad in [(b"id", b"zz"), (b"bs", b"x"), (b"port", b"70000"), (b"tag", b"00"),
                     (b"zone", b"z" * 500), (b"id", None)]:
        props = dict(good)
        if bad is None:
            del props[key]
        else:
            props[key] = bad
        with pytest.raises(AdError):
            parse_ad(props, ["127.0.0.1"], 0)
    with pytest.raises(AdError):
        parse_ad(good, ["not an address"], 0)


def test_instances_find_each_other_and_ignore_strangers():
    async def main():
        found: dict[int, set] = {i: set() for i in range(5)}
        made = []
        specs = [(b"T" * 8, SMALL_BLOCK)] * 3 + [(b"X" * 8, SMALL_BLOCK), (b"T" * 8, 2 * SMALL_BLOCK)]
        ids = [os.urandom(16) for _ in specs]
        for i, (tag, bs) in enumerate(specs):
            d = Discovery(ids[i], 7100 + i, "z", bs, tag, ["127.0.0.1"],
                          lambda ad, i=i: found[i].add(ad.node_id), advertise=["127.0.0.1"])
            await d.start()
            made.append(d)
        t = time.monotonic()
        while any(len(found[i]) < 2 for i in range(3)) and time.monotonic() - t < 10:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - t
        await asyncio.sleep(0.5)
        for d in made:
            await d.stop()
        return found, ids, elapsed

    found, ids, elapsed = asyncio.run(main())
    for i in range(3):  # the three alike see each other, and only each other
        assert found[i] == {ids[j] for j in range(3) if j != i}
    assert elapsed < 5


def test_nodes_form_a_mesh_by_mdns_alone(tmp_path):
    nodes = [Node(Config.local(cache_dir=str(tmp_path / f"n{i}"), block_size=SMALL_BLOCK,
                               cluster_secret=CLUSTER_SECRET, listen="127.0.0.1:0", mdns=True,
                               interfaces=["127.0.0.1"], ping_interval=0.2))
             for i in range(3)]
    try:
        for n in nodes:
            n.start_peers()
        t = time.monotonic()
        while any(len(n.mesh.members) < 2 for n in nodes):
            assert time.monotonic() - t < 5, [len(n.mesh.members) for n in nodes]
            time.sleep(0.05)
    finally:
        for n in nodes:
            n.close()

"""DHT benchmark: N simulated nodes in one process on the in-memory datagram network.

Measures this project's DHT (kademlia with meshcache/wan/kad.py's fixes, sealed CBOR datagrams,
provider records) against stock kademlia 2.2.3 on the same network in the same run:
lookup success before and after 10% of the nodes die without notice, lookup rounds (hops), and
the RPCs to announce 10,000 digests batched by keyspace region against one lookup + k STOREs per
digest (stock kademlia's `set`; measured on a sample, scaled to 10,000). Also the RPCs of the
zone-owner scheme (one member announces a block for its zone) against every holder announcing.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from meshcache.wan.announcer import zone_owned  # noqa: E402
from meshcache.wan.records import block_key  # noqa: E402
from meshcache.wan.sim import DhtSim, StockSim  # noqa: E402


def pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0


def phase(name: str, t0: float) -> None:
    print(f"{name}: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)


def rpcs(sim: DhtSim) -> int:
    return sum(d.stats["rpcs"] for d in sim.nodes)


def region_bits(n: int) -> int:
    """Keyspace regions of about k nodes each."""
    return max(1, (n // 20).bit_length() - 1)


def records(sim: DhtSim) -> int:
    now = time.time()
    return sum(len(recs) for d in sim.nodes for _, recs in d.table.items(now))


async def lookups_and_churn(sim: DhtSim | StockSim, keys: dict[bytes, bytes],
                            lookups: int) -> dict[str, object]:
    """Lookup success and rounds, then the same after 10% of the nodes died without notice."""
    ok, rounds = await sim.lookups(keys, lookups)
    sim.kill(0.10)
    ok_churn, rounds_churn = await sim.lookups(keys, lookups)
    return {"lookup_success": ok, "lookup_success_churn": ok_churn,
            "hops_p50": pct(rounds, 0.5), "hops_p99": pct(rounds, 0.99),
            "hops_p99_churn": pct(rounds_churn, 0.99)}


async def ours(n: int, lookups: int, digests: int, sample: int,
               held_blocks: int) -> dict[str, object]:
    sim = DhtSim(n, seed=11, zones=4)
    t = time.monotonic()
    await sim.join()
    join_s = time.monotonic() - t
    phase("join", t)
    rng = sim.rng
    # announce `digests` digests from one node, batched
    pub = sim.nodes[1]
    keys = [block_key(os.urandom(32)) for _ in range(digests)]
    before = rpcs(sim)
    await pub.announce(keys)
    batched = rpcs(sim) - before
    # the baseline: one lookup + k STOREs per digest, on a sample
    other = sim.nodes[2]
    sample_keys = [block_key(os.urandom(32)) for _ in range(sample)]
    before = rpcs(sim)
    await other.announce_each(sample_keys)
    per_digest = (rpcs(sim) - before) / sample
    phase("announce", t)
    # zone-owner scheme: 3 members of one zone hold the same blocks
    members = [sim.nodes[i] for i in range(4, 4 + 3 * 4, 4)]  # all in zone z0
    ids = [m.node_id for m in members]
    held = [block_key(os.urandom(32)) for _ in range(held_blocks)]
    before, stored = rpcs(sim), records(sim)
    for m in members:
        await m.announce(zone_owned(held, m.node_id, ids))
    owner_scheme, owner_records = rpcs(sim) - before, records(sim) - stored
    held = [block_key(os.urandom(32)) for _ in range(held_blocks)]  # the same count, new keys
    before, stored = rpcs(sim), records(sim)
    for m in members:
        await m.announce(held)
    every_holder, holder_records = rpcs(sim) - before, records(sim) - stored
    held = [block_key(os.urandom(32)) for _ in range(held_blocks)]
    before = rpcs(sim)
    for m in members:  # owners per keyspace region (when every member holds every block)
        await m.announce(zone_owned(held, m.node_id, ids, region_bits=region_bits(n)))
    region_scheme = rpcs(sim) - before
    phase("zone owner scheme", t)
    out = await lookups_and_churn(sim, {k: pub.node_id for k in keys}, lookups)
    phase("lookups", t)
    sim.close()
    return {**out, "announce_rpcs": batched, "announce_rpcs_one_by_one": round(per_digest * digests),
            "announce_rpc_ratio": round(batched / (per_digest * digests), 4),
            "announce_rpcs_per_digest": round(batched / digests, 3),
            "zone_owner_announce_ratio": round(owner_scheme / every_holder, 3),
            "zone_owner_record_ratio": round(owner_records / max(1, holder_records), 3),
            "zone_region_owner_announce_ratio": round(region_scheme / every_holder, 3),
            "join_seconds": round(join_s, 1)}


async def stock(n: int, lookups: int, fixed: bool) -> dict[str, object]:
    t = time.monotonic()
    sim = StockSim(n, fixed=fixed, seed=11)
    await sim.join()
    phase("stock join", t)
    out = await lookups_and_churn(sim, await sim.store(200), lookups)
    phase("stock lookups", t)
    sim.close()
    return {**out, "store_errors": sim.store_errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="300 nodes (<= 2 minutes)")
    ap.add_argument("--nodes", type=int)
    args = ap.parse_args()
    n = args.nodes or (300 if args.quick else 1000)
    lookups = 300 if args.quick else 2000
    sample = 30 if args.quick else 200
    held = 150 if args.quick else 2000
    logging.disable(logging.CRITICAL)
    t = time.monotonic()
    mine = asyncio.run(ours(n, lookups, 10_000, sample, held))
    base = asyncio.run(stock(n, lookups, fixed=False))
    out = dict(mine)
    out.update({"nodes": n, "lookups": lookups,
                "stock_lookup_success": base["lookup_success"],
                "stock_lookup_success_churn": base["lookup_success_churn"],
                "stock_hops_p50": base["hops_p50"], "stock_hops_p99": base["hops_p99"],
                "stock_store_errors": base["store_errors"],
                "lookup_success_vs_stock": round(mine["lookup_success"]  # type: ignore[operator]
                                                 / max(base["lookup_success"], 1e-9), 3),
                "seconds": round(time.monotonic() - t, 1)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()

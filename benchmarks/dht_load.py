"""DHT RPCs and lookups on a busy machine: how long replies take, and which `dht_rpc_timeout`
turns none of them into false timeouts.

Server processes each run many DHT nodes on real UDP sockets (loopback, 20 ms added to every
datagram each way: a 40 ms WAN round trip), joined into one DHT; some announce keys. This
process then, at each load level (0 and more CPU burner processes on top of whatever else runs
here), sends pings to random nodes with a long timeout (the true reply times), and runs lookups
from nodes with rpc_timeout 1, 2 and 5 s (success, false timeouts: RPCs to live nodes given up
on, each of which drops a live contact from the asker's routing table).
Last line: one JSON object; figures are ratios against the idle level of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from meshcache.wan.dht import Dht  # noqa: E402
from meshcache.wan.records import block_key  # noqa: E402
from meshcache.wan.sim import SIM_CREDENTIAL  # noqa: E402

ONE_WAY = 0.020
TIMEOUTS = (1.0, 2.0, 3.0, 5.0)
BURN = "while True: pass"


class Delayed:
    """A datagram transport whose datagrams leave `delay` seconds late (a WAN link's delay)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def sendto(self, data: bytes, addr: Any = None) -> None:
        asyncio.get_running_loop().call_later(self.delay, self.inner.sendto, data, addr)

    def close(self) -> None:
        self.inner.close()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.inner.get_extra_info(name, default)


async def start_node(i: int, rpc_timeout: float) -> Dht:
    d = Dht(random.randbytes(16), f"z{i % 3}", ("127.0.0.1", 7946), SIM_CREDENTIAL,
            rpc_timeout=rpc_timeout)
    await d.listen("127.0.0.1", 0)
    d.protocol.transport = Delayed(d.protocol.transport, ONE_WAY)  # type: ignore[assignment]
    return d


async def serve(n: int, via: str | None, keys: int) -> None:
    """A server process: n nodes joined through `via` (or the first of them); prints their
    addresses and the keys they announced, then runs until killed."""
    nodes = [await start_node(i, 5.0) for i in range(n)]
    first = via.split(":") if via else None
    boot = (first[0], int(first[1])) if first else nodes[0].address
    joining = nodes[1 if not first else 0:]
    for i in range(0, len(joining), 10):
        await asyncio.gather(*(d.bootstrap([boot]) for d in joining[i:i + 10]))
    announced = {}
    for d in nodes[:4]:
        ks = [block_key(os.urandom(32)) for _ in range(keys)]
        await d.announce(ks)
        announced.update({k.hex(): d.node_id.hex() for k in ks})
    print(json.dumps({"addresses": [f"{a}:{p}" for a, p in (d.address for d in nodes)],
                      "keys": announced}), flush=True)
    await asyncio.Event().wait()


def count_timeouts(d: Dht, live: set[tuple[str, int]],
                   replies: list[float]) -> list[int]:
    """Count the RPCs `d` gives up on that were sent to a live server node (false timeouts:
    earlier askers, closed, are in some routing tables and time out for real); the reply
    times of the others go to `replies`."""
    given_up = [0]
    call = d.protocol.call
    loop = asyncio.get_running_loop()

    def counted(addr: tuple[str, int], method: str, *args: Any) -> "asyncio.Future[Any]":
        fut = call(addr, method, *args)
        if tuple(addr) in live:
            sent = loop.time()

            def done(f: "asyncio.Future[Any]") -> None:
                if f.result()[0]:
                    replies.append(loop.time() - sent)
                else:
                    given_up[0] += 1
            fut.add_done_callback(done)
        return fut

    d.protocol.call = counted  # type: ignore[method-assign]
    return given_up


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


async def measure(addresses: list[tuple[str, int]], keys: dict[bytes, bytes], pings: int,
                  lookups: int) -> dict[str, Any]:
    """Reply times of `pings` pings (30 at a time), then lookups at each timeout."""
    probe = await start_node(0, 30.0)
    times: list[float] = []
    sem = asyncio.Semaphore(30)
    loop = asyncio.get_running_loop()

    async def ping(addr: tuple[str, int]) -> None:
        async with sem:
            t = loop.time()
            ok, _ = await probe.protocol.call(addr, "ping")
            if ok:
                times.append(loop.time() - t)

    await asyncio.gather(*(ping(random.choice(addresses)) for _ in range(pings)))
    probe.close()
    out: dict[str, Any] = {"rtt_p50_ms": round(pct(times, 0.5) * 1e3, 1),
                           "rtt_p99_ms": round(pct(times, 0.99) * 1e3, 1),
                           "rtt_p999_ms": round(pct(times, 0.999) * 1e3, 1),
                           "rtt_max_ms": round(max(times, default=0) * 1e3, 1),
                           "pings_lost": pings - len(times)}
    for t in TIMEOUTS:
        out[f"over_{t:g}s"] = round(sum(x > t for x in times) / max(1, len(times)), 4)
    items = list(keys.items())
    for timeout in TIMEOUTS:
        asker = await start_node(1, timeout)
        replies: list[float] = []
        given_up = count_timeouts(asker, set(addresses), replies)
        await asker.bootstrap([random.choice(addresses)])
        before = asker.contacts()
        ok, spent = 0, []

        async def one(key: bytes, provider: bytes) -> None:
            nonlocal ok
            async with sem:
                t = loop.time()
                recs = await asker.find(key)
                spent.append(loop.time() - t)
            ok += any(r.node_id == provider for r in recs)

        await asyncio.gather(*(one(*random.choice(items)) for _ in range(lookups)))
        rpcs = asker.stats["rpcs"]
        out[f"t{timeout:g}"] = {"lookup_success": round(ok / lookups, 4),
                                "false_timeouts": given_up[0],
                                "false_timeout_rate": round(given_up[0] / max(1, rpcs), 4),
                                "timeouts_to_gone_askers": asker.stats["timeouts"] - given_up[0],
                                "contacts_before": before, "contacts_after": asker.contacts(),
                                "reply_p99_ms": round(pct(replies, 0.99) * 1e3, 1),
                                "reply_p999_ms": round(pct(replies, 0.999) * 1e3, 1),
                                "reply_max_ms": round(max(replies, default=0) * 1e3, 1),
                                "lookup_p50_ms": round(pct(spent, 0.5) * 1e3, 1),
                                "lookup_p99_ms": round(pct(spent, 0.99) * 1e3, 1)}
        asker.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer nodes and levels (<= 2 min)")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--via", help=argparse.SUPPRESS)
    ap.add_argument("--keys", type=int, default=25, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)
    if args.serve:
        asyncio.run(serve(args.serve, args.via, args.keys))
        return
    cores = os.cpu_count() or 1
    levels = [0, 3 * cores] if args.quick else [0, cores, 3 * cores, 6 * cores]
    per_proc = 40 if args.quick else 80
    pings = 600 if args.quick else 2000
    lookups = 100 if args.quick else 300
    procs: list[subprocess.Popen[str]] = []
    burners: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    try:
        addresses: list[tuple[str, int]] = []
        keys: dict[bytes, bytes] = {}
        for i in range(2):  # two server processes: replies come from busy processes
            argv = [sys.executable, __file__, "--serve", str(per_proc)]
            if addresses:
                argv += ["--via", "%s:%d" % addresses[0]]
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            info = json.loads(p.stdout.readline())  # type: ignore[union-attr]
            addresses += [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1]))
                          for a in info["addresses"]]
            keys.update({bytes.fromhex(k): bytes.fromhex(v) for k, v in info["keys"].items()})
        results: dict[str, Any] = {}
        for level in levels:
            while len(burners) < level:
                burners.append(subprocess.Popen([sys.executable, "-c", BURN]))
            time.sleep(1.0)
            load = os.getloadavg()[0]
            r = asyncio.run(measure(addresses, keys, pings, lookups))
            r["burners"], r["loadavg_1m"] = level, round(load, 1)
            results[str(level)] = r
            print(json.dumps({"level": level, **r}), file=sys.stderr, flush=True)
    finally:
        for p in burners + procs:  # type: ignore[operator]
            p.kill()
            p.wait()
    idle, busiest = results[str(levels[0])], results[str(levels[-1])]
    out = {"cores": cores, "nodes": 2 * per_proc, "one_way_ms": ONE_WAY * 1e3,
           "levels": results,
           "rtt_p99_loaded_vs_idle": round(busiest["rtt_p99_ms"] / max(idle["rtt_p99_ms"], 1e-9),
                                           2),
           "rtt_p999_loaded_ms": busiest["rtt_p999_ms"],
           "false_timeout_rate_loaded": {f"{t:g}s": busiest[f"t{t:g}"]["false_timeout_rate"]
                                         for t in TIMEOUTS},
           "lookup_success_loaded": {f"{t:g}s": busiest[f"t{t:g}"]["lookup_success"]
                                     for t in TIMEOUTS},
           "reply_max_loaded_ms": max(busiest[f"t{t:g}"]["reply_max_ms"] for t in TIMEOUTS),
           "seconds": round(time.monotonic() - t0, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

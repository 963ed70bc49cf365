"""The concurrency gate: never more inside than the limit, FIFO, a changing limit, cancellation."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings, strategies as st

from meshcache.read.gate import Gate


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=8), st.integers(5, 40), st.randoms())
def test_never_more_inside_than_the_limit(limits, n, rnd):
    async def main():
        current = {"limit": limits[0]}
        gate = Gate(lambda: current["limit"])
        # The most that may be inside now: the limit, or those already inside when it shrank
        # (they finish; nobody new is admitted until the count is under the new limit).
        bound = {"v": limits[0]}
        peak_violations = []
        order = []

        async def worker(i):
            async with gate:
                order.append(i)
                if gate.inside > bound["v"]:
                    peak_violations.append((gate.inside, bound["v"], current["limit"]))
                await asyncio.sleep(rnd.random() / 1000)
            bound["v"] = max(max(1, current["limit"]), min(bound["v"], gate.inside))

        async def change():
            for lim in limits[1:]:
                await asyncio.sleep(rnd.random() / 500)
                current["limit"] = lim
                bound["v"] = max(max(1, lim), gate.inside)

        tasks = [asyncio.ensure_future(worker(i)) for i in range(n)]
        victims = rnd.sample(tasks, k=min(3, n // 4))
        await asyncio.sleep(0)
        for v in victims:
            v.cancel()
        await asyncio.gather(change(), *tasks, return_exceptions=True)
        return peak_violations, gate.inside, order

    violations, inside, order = asyncio.run(main())
    assert inside == 0
    # a shrinking limit lets those already inside finish; it never admits beyond the new limit
    assert violations == []


def test_first_come_first_served():
    async def main():
        gate = Gate(lambda: 1)
        order = []

        async def worker(i):
            async with gate:
                order.append(i)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(worker(i) for i in range(10)))
        return order

    assert asyncio.run(main()) == list(range(10))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 30), st.randoms())
def test_constant_limit_is_never_exceeded(limit, n, rnd):
    async def main():
        gate = Gate(lambda: limit)
        peak = 0

        async def worker():
            nonlocal peak
            async with gate:
                peak = max(peak, gate.inside)
                await asyncio.sleep(rnd.random() / 1000)

        tasks = [asyncio.ensure_future(worker()) for _ in range(n)]
        await asyncio.sleep(0)
        for t in rnd.sample(tasks, k=n // 3):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return peak, gate.inside

    peak, inside = asyncio.run(main())
    assert peak <= limit and inside == 0

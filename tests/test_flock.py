"""Cross-process single flight: processes sharing a cache directory (no daemon) fetch each
cold block once, and a fetcher killed mid-fetch does not block the others."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import signal
import time


from meshcache.read.flock import BlockLocks
from tests.host_fixtures import origin  # noqa: F401 (a fixture)
from tests.host_fixtures import SMALL_BLOCK, cache_env, read_in_processes, read_worker
from tests.conftest import make_bytes


def test_eight_processes_fetch_each_block_once(tmp_path, origin):
    data = make_bytes(48 * SMALL_BLOCK + 99, seed=3)
    origin.put("obj.bin", data)
    url = origin.url_for("obj.bin")
    digests = read_in_processes(url, cache_env(str(tmp_path / "cache")))
    assert digests == [hashlib.sha256(data).hexdigest()] * 8
    assert origin.bytes_sent == len(data)  # every block left the origin once
    for lock in (tmp_path / "cache" / "locks").iterdir():  # each names the stored block
        assert lock.stat().st_size == 32


def test_killed_fetcher_does_not_block_the_others(tmp_path, origin):
    data = make_bytes(8 * SMALL_BLOCK, seed=4)
    origin.put("obj.bin", data)
    url = origin.url_for("obj.bin")
    origin.stall_after(1000, 60.0)  # the first reader's first block hangs mid-body
    env = cache_env(str(tmp_path / "cache"))
    ctx = multiprocessing.get_context("fork")
    first = ctx.Process(target=read_worker, args=(url, env))
    first.start()
    try:
        locks = tmp_path / "cache" / "locks"
        deadline = time.monotonic() + 30
        while not (locks.exists() and list(locks.iterdir())):
            assert time.monotonic() < deadline, "the first reader never took a block lock"
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.join(10)
    start = time.monotonic()
    with ctx.Pool(2) as pool:
        got = pool.starmap(read_worker, [(url, env)] * 2)
    assert [g[0] for g in got] == [hashlib.sha256(data).hexdigest()] * 2
    assert time.monotonic() - start < 30  # not the 60 s stall, nor forever


def test_lock_hands_the_digest_to_waiters(tmp_path):
    asyncio.run(_hand_over(tmp_path))


async def _hand_over(tmp_path):
    locks = BlockLocks(tmp_path / "locks")
    key, digest = bytes(32), bytes(range(32))
    order = []

    async def fetcher():
        async with locks.hold(key, 7) as held:
            assert held is not None and held.digest is None
            order.append("fetching")
            await asyncio.sleep(0.1)
            held.done(digest)

    async def waiter():
        await asyncio.sleep(0.02)
        async with locks.hold(key, 7) as held:
            order.append("waited")
            assert held is not None and held.digest == digest

    await asyncio.gather(fetcher(), waiter())
    assert order == ["fetching", "waited"]
    assert locks.sweep(time.time()) == 0  # too young
    assert locks.sweep(time.time() + 3600) == 1
    assert not os.path.exists(locks.path(key, 7))

"""The on-disk block store: atomic writes, rebuild on start, verification, eviction, pins."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from meshcache.core.digest import digest
from meshcache.core.manifest import Manifest
from meshcache.read.store import BlockCorrupt, BlockStore, StoreError
from meshcache.core.version import ObjectVersion

from tests.conftest import is_root, make_bytes


def tmp_files(root):
    return [p for p in (root / "tmp").rglob("*") if p.is_file()]


def test_put_open_and_rebuild(tmp_path):
    s = BlockStore(tmp_path, 1 << 20)
    blocks = [make_bytes(1000 + i, i) for i in range(5)]
    ds = [s.put(b) for b in blocks]
    assert ds == [digest(b) for b in blocks]
    s2 = BlockStore(tmp_path, 1 << 20)  # a restart: index rebuilt from the directory
    assert set(s2.digests()) == set(ds)
    for d, b in zip(ds, blocks):
        assert s2.read_block(d) == b


def test_put_refuses_bytes_that_do_not_match(tmp_path):
    s = BlockStore(tmp_path, 1 << 20)
    with pytest.raises(BlockCorrupt):
        s.put(b"abc", digest(b"abd"))
    assert s.digests() == []


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_block_is_detected_and_removed(tmp_path, damage):
    data = make_bytes(5000, 3)
    d = BlockStore(tmp_path, 1 << 20).put(data)
    path = BlockStore(tmp_path, 1 << 20).block_path(d)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(raw[:100])
    else:
        raw[2000] ^= 0xFF
        path.write_bytes(raw)
    s = BlockStore(tmp_path, 1 << 20)
    with pytest.raises(BlockCorrupt):
        s.open_block(d)
    assert not path.exists() and d not in s.digests() and s.corrupt_blocks == 1


def test_verified_says_which_blocks_open_without_hashing(tmp_path):
    """A block this process stored or checked is `verified`; one another process stored is not
    until opened (checked) once; a removed one is not."""
    data = make_bytes(5000, 5)
    d = BlockStore(tmp_path, 1 << 20).put(data)
    s = BlockStore(tmp_path, 1 << 20)  # another process's view: not checked yet
    assert not s.verified(d)
    assert s.read_block(d) == data
    assert s.verified(d)
    s.remove(d)
    assert not s.verified(d)
    assert s.verified(s.put(data))


def test_tampering_while_running_is_detected(tmp_path):
    s = BlockStore(tmp_path, 1 << 20)
    d = s.put(make_bytes(5000, 4))
    assert s.read_block(d)
    time.sleep(0.01)
    p = s.block_path(d)
    p.write_bytes(b"x" * 5000)  # same size, new mtime
    with pytest.raises(BlockCorrupt):
        s.read_block(d)


def test_eviction_keeps_capacity_leases_and_pins(tmp_path):
    s = BlockStore(tmp_path, 10_000)
    pinned_data = make_bytes(2000, 100)
    pinned = s.put(pinned_data)
    v = ObjectVersion("u", "t", 2000)
    s.pin(Manifest(v, 2048, [pinned]))
    leased = s.put(make_bytes(2000, 101))
    fd, _ = s.open_block(leased)
    for i in range(20):
        s.put(make_bytes(2000, i))
        assert s.used <= 10_000
    assert pinned in s.digests() and leased in s.digests()
    s.close_block(leased, fd)
    s.unpin(v.key)
    for i in range(20, 40):
        s.put(make_bytes(2000, i))
    assert s.used <= 10_000
    assert s.evicted_blocks > 0


def test_explicit_evict_spares_pins(tmp_path):
    s = BlockStore(tmp_path, 1 << 20)
    keep = s.put(b"k" * 100)
    s.pin(Manifest(ObjectVersion("u", "t", 100), 1024, [keep]))
    for i in range(5):
        s.put(make_bytes(100, i))
    s.evict(0)
    assert s.digests() == [keep]
    s2 = BlockStore(tmp_path, 1 << 20)  # pins survive a restart
    s2.evict(0)
    assert s2.digests() == [keep]


def test_cache_dir_that_is_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match=str(f)):
        BlockStore(f / "cache", 1 << 20)


@pytest.mark.skipif(not is_root(), reason="mounting a tmpfs needs root")
def test_read_only_and_full_disks(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        with pytest.raises(StoreError, match="not (usable|writable)"):
            BlockStore(ro, 1 << 20)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    try:
        s = BlockStore(full, 1 << 30)
        s.put(make_bytes(100_000, 1))
        with pytest.raises(StoreError) as err:
            for i in range(10):
                s.put(make_bytes(100_000, 2 + i))
        assert "No space" in str(err.value)
        assert tmp_files(full) == []  # the half-written temp file is gone
        for d in BlockStore(full, 1 << 30).digests():
            assert digest(s.block_path(d).read_bytes()) == d
    finally:
        subprocess.run(["umount", str(full)], check=True)


WRITER = textwrap.dedent("""
    import os, random, sys
    from meshcache.read.store import BlockStore
    s = BlockStore(sys.argv[1], 1 << 40, fsync=True)
    r = random.Random(int(sys.argv[2]))
    print("ready", flush=True)
    while True:
        s.put(r.randbytes(r.randint(1, 3 << 20)))
""")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_mid_write_leaves_no_partial_block(tmp_path, seed):
    # Kill until a kill lands mid-write (a temp file is there): that is the case under test.
    rng = random.Random(seed)
    for attempt in range(20):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(seed + attempt)],
                                stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(0.2 + rng.random() * 0.3)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        leftovers = tmp_files(tmp_path)
        if leftovers:
            break
    assert leftovers, "no kill landed mid-write in 20 tries"
    s = BlockStore(tmp_path, 1 << 40)
    assert tmp_files(tmp_path) == []  # temp files of the killed writer are cleared
    assert len(s.digests()) > 0
    for d in s.digests():
        assert digest(s.read_block(d)) == d


def test_index_of_many_blocks_is_small_and_rebuilt_from_a_scan(tmp_path):
    """The index (S3-FIFO queues) costs < 200 bytes per block, also at its peak while rebuilt
    (a million blocks: < 200 MB)."""
    import gc
    import tracemalloc

    n = 2000
    blocks = tmp_path / "blocks"
    names = []
    for i in range(n):
        h = (i * 0x9E3779B97F4A7C15 % (1 << 64)).to_bytes(8, "big").hex() * 4
        (blocks / h[:2]).mkdir(parents=True, exist_ok=True)
        (blocks / h[:2] / h).write_bytes(b"x" * (1 + i % 7))
        names.append(h)
    (blocks / "zz").mkdir()
    (blocks / "zz" / names[0]).write_bytes(b"misplaced")  # not where its name says: ignored
    gc.collect()
    tracemalloc.start()
    try:
        s = BlockStore(tmp_path, 1 << 40, fsync=False)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(s.digests()) == n and s.used == sum(1 + i % 7 for i in range(n))
    assert bytes.fromhex(names[5]) in s
    assert held / n < 200 and peak / n < 260, (held / n, peak / n)


def test_close_releases_cached_descriptors_so_deleted_blocks_free_their_space(tmp_path):
    s = BlockStore(tmp_path, 1 << 30, fsync=False)
    ds = [s.put(os.urandom(1000 + i)) for i in range(20)]
    for d in ds:
        s.read_block(d)  # caches a descriptor per block
    held = set(os.listdir("/proc/self/fd"))
    s.close()
    closed = held - set(os.listdir("/proc/self/fd"))
    assert len(closed) >= 20
    assert s.read_block(ds[0]) and len(s.digests()) == 20  # still usable: reopens on demand
    s.close()

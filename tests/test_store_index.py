"""The store's index snapshot: a clean restart lists blocks/ and stats nothing; a stale, torn or
damaged snapshot (a crash, another writer, bit rot) still gives the index a full scan gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from meshcache.core.digest import digest
from meshcache.read.store import BlockStore


def index_of(s: BlockStore) -> tuple[set[bytes], int]:
    return set(s.digests()), s.used


def scanned(root) -> tuple[set[bytes], int]:
    """The index a store without a snapshot builds (a stat of every block file)."""
    snap = root / "index"
    kept = snap.read_bytes() if snap.exists() else None
    snap.unlink(missing_ok=True)
    try:
        s = BlockStore(root, 1 << 40, fsync=False)
        assert s.index_source == "scan"
        return index_of(s)
    finally:
        if kept is not None:
            snap.write_bytes(kept)


def fill(s: BlockStore, n: int, start: int = 0) -> list[bytes]:
    return [s.put(os.urandom(100 + (start + i) % 300)) for i in range(n)]


def test_clean_restart_uses_the_snapshot_and_stats_nothing(tmp_path):
    s = BlockStore(tmp_path, 1 << 40, fsync=False)
    ds = fill(s, 50)
    s.close()  # writes the snapshot
    assert (tmp_path / "index").exists()
    s2 = BlockStore(tmp_path, 1 << 40, fsync=False)
    assert s2.index_source == "snapshot" and s2.index_stats == 0
    assert index_of(s2) == (set(ds), sum(100 + i % 300 for i in range(50))) == scanned(tmp_path)
    assert s2.changes == 0
    for d in ds[:5]:
        assert digest(s2.read_block(d)) == d


def test_blocks_added_and_removed_after_the_snapshot_are_reconciled(tmp_path):
    s = BlockStore(tmp_path, 1 << 40, fsync=False)
    old = fill(s, 40)
    assert s.save_index()
    new = fill(s, 7, start=40)
    for d in old[:5]:
        s.remove(d)
    # No close: the process "crashed" with the snapshot stale.
    s2 = BlockStore(tmp_path, 1 << 40, fsync=False)
    assert s2.index_source == "snapshot"
    assert s2.index_stats == 7  # only the files the snapshot lacks
    assert index_of(s2) == (set(old[5:]) | set(new), index_of(s)[1]) == scanned(tmp_path)
    assert s2.changes == 12
    # The files the snapshot lacks are the youngest in the index (eviction takes oldest first).
    assert set(s2.digests()[-7:]) == set(new)


def test_a_block_another_process_wrote_after_the_snapshot_is_found(tmp_path):
    s = BlockStore(tmp_path, 1 << 40, fsync=False)
    fill(s, 10)
    s.close()
    other = BlockStore(tmp_path, 1 << 40, fsync=False)
    d = other.put(b"written by another process sharing the directory")
    s2 = BlockStore(tmp_path, 1 << 40, fsync=False)
    assert d in s2.digests() and s2.read_block(d).startswith(b"written")


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty", "directory"])
def test_a_damaged_snapshot_means_a_full_scan_and_the_same_index(tmp_path, damage):
    s = BlockStore(tmp_path, 1 << 40, fsync=False)
    fill(s, 30)
    s.close()
    want = index_of(s)
    snap = tmp_path / "index"
    data = snap.read_bytes()
    if damage == "flip":
        snap.write_bytes(data[:60] + bytes([data[60] ^ 1]) + data[61:])
    elif damage == "truncate":
        snap.write_bytes(data[:-8])
    elif damage == "garbage":
        snap.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        snap.write_bytes(b"")
    else:
        snap.unlink()
        snap.mkdir()
    s2 = BlockStore(tmp_path, 1 << 40, fsync=False)
    assert s2.index_source == "scan" and s2.index_stats == 30
    assert index_of(s2) == want
    if damage == "directory":
        snap.rmdir()
    s2.close()  # a good snapshot replaces the bad one
    assert BlockStore(tmp_path, 1 << 40, fsync=False).index_source == "snapshot"


def test_an_empty_block_file_left_by_a_crash_is_not_trusted(tmp_path):
    s = BlockStore(tmp_path, 1 << 40, fsync=False)
    fill(s, 5)
    s.close()
    h = "ab" * 32
    (tmp_path / "blocks" / "ab").mkdir(exist_ok=True)
    (tmp_path / "blocks" / "ab" / h).write_bytes(b"")  # renamed, never written (no fsync)
    s2 = BlockStore(tmp_path, 1 << 40, fsync=False)
    assert bytes.fromhex(h) not in s2.digests()
    assert not (tmp_path / "blocks" / "ab" / h).exists()


WRITER = textwrap.dedent("""
    import os, random, sys
    from meshcache.read.store import BlockStore
    s = BlockStore(sys.argv[1], int(sys.argv[3]), fsync=True)
    r = random.Random(int(sys.argv[2]))
    print("ready", flush=True)
    n = 0
    while True:
        s.put(r.randbytes(r.randint(1, 64 << 10)))
        n += 1
        if n % 25 == 0:
            s.save_index()
""")


@pytest.mark.parametrize("seed", [1])
def test_sigkill_while_writing_and_snapshotting_then_restart(tmp_path, seed):
    """A writer that evicts (small capacity) and writes snapshots now and then is SIGKILLed a
    few times; each restart's index is the full scan's, every block in it is whole, and the
    temp files (blocks and snapshots being written) are gone."""
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path),
                                 str(seed * 10 + attempt), str(3 << 20)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(0.4 + 0.2 * attempt)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        s = BlockStore(tmp_path, 1 << 40, fsync=False)
        assert [p for p in (tmp_path / "tmp").rglob("*") if p.is_file()] == []
        got = index_of(s)
        assert got == scanned(tmp_path)
        for d in s.digests():
            assert digest(s.read_block(d)) == d
        s.close()
    assert s.index_source == "snapshot"


def test_a_node_writes_the_snapshot_now_and_then_while_it_runs(cache_config, local_object):
    """Without a close (a crash to come), the running node has written the snapshot already:
    a restart stats none of the blocks it had read."""
    from meshcache.read.node import Node

    url, data = local_object(seed=5)
    node = Node(cache_config(index_snapshot_interval=1.0))
    try:
        assert node.cat(url) == data
        blocks = len(node.store.digests())
        snap = os.path.join(node.config.cache_dir, "index")
        deadline = time.monotonic() + 30
        while node.store.changes and time.monotonic() < deadline:
            time.sleep(0.2)
        assert os.path.exists(snap) and node.store.changes == 0
        s = BlockStore(node.config.cache_dir, 1 << 40, fsync=False)  # the restart after a crash
        assert s.index_source == "snapshot" and s.index_stats == 0
        assert len(s.digests()) == blocks > 1
    finally:
        node.close()

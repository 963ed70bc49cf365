"""Reads through a node from a real file:// origin: bytes, stats, seeks, versions, faults."""

from __future__ import annotations

import io
import os
import random
import subprocess
import threading
import time

import pytest

import meshcache
from meshcache import Node, ObjectChanged, ObjectNotFound

from tests.conftest import SMALL_BLOCK, is_root


def test_cold_then_hot(node, local_object):
    url, data = local_object()
    with node.open(url) as f:
        assert f.read() == data
        cold = f.stats
    assert cold["bytes_from_origin"] == len(data) and cold["bytes_from_local"] == 0
    with node.open(url) as f:
        assert f.read() == data
        hot = f.stats
    assert hot["bytes_from_local"] == len(data) and hot["bytes_from_origin"] == 0
    st = node.stats()
    assert st["origin_requests"] == -(-len(data) // SMALL_BLOCK)
    assert st["bytes_from_origin"] == len(data)


def test_lease_gives_block_file_spans_of_the_bytes(node, local_object):
    """lease(n): where the next n bytes lie in block files (fds leased, position moved); the
    bytes read from those spans are the object's, across block boundaries and at the end."""
    url, data = local_object()
    node.prewarm([url])
    with node.open(url) as f:
        f.seek(SMALL_BLOCK - 7)
        spans = f.lease(2 * SMALL_BLOCK + 9)
        assert spans is not None and [n for *_, n in spans] == [7, SMALL_BLOCK, SMALL_BLOCK, 2]
        assert b"".join(os.pread(fd, n, off) for _, fd, off, n in spans) == \
            data[SMALL_BLOCK - 7:3 * SMALL_BLOCK + 2]
        assert f.tell() == 3 * SMALL_BLOCK + 2
        for d, fd, _, _ in spans:
            node.store.close_block(d, fd)
        f.seek(len(data) - 5)
        tail = f.lease(100)
        assert tail is not None and sum(n for *_, n in tail) == 5
        for d, fd, _, _ in tail:
            node.store.close_block(d, fd)
        assert f.lease(100) == []
    assert f.stats["bytes_from_local"] == 2 * SMALL_BLOCK + 9 + 5


def test_random_access_matches_slicing(node, local_object):
    url, data = local_object(size=7 * SMALL_BLOCK + 77, seed=5)
    r = random.Random(9)
    with node.open(url) as f:
        for _ in range(300):
            op = r.choice(["read", "readinto", "seek_end", "seek_cur"])
            if op == "read":
                pos, n = r.randrange(len(data) + 10), r.choice([0, 1, 100, SMALL_BLOCK, 3 * SMALL_BLOCK, -1])
                f.seek(pos)
                expect = data[pos:] if n < 0 else data[pos:pos + n]
                assert f.read(n) == expect
                assert f.tell() == min(len(data), pos + len(expect)) if pos <= len(data) else True
            elif op == "readinto":
                pos = r.randrange(len(data))
                buf = bytearray(r.randrange(1, 3 * SMALL_BLOCK))
                f.seek(pos)
                n = f.readinto(buf)
                assert bytes(buf[:n]) == data[pos:pos + len(buf)]
            elif op == "seek_end":
                off = -r.randrange(len(data))
                assert f.seek(off, io.SEEK_END) == len(data) + off
                assert f.read(10) == data[len(data) + off:len(data) + off + 10]
            else:
                before = f.tell()
                assert f.seek(0, io.SEEK_CUR) == before
    with pytest.raises(ValueError):
        f.read(1)


def test_file_api_and_text_mode(node, local_object, tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("line one\nline two\n")
    with node.open(str(p), "r") as f:
        assert f.readlines() == ["line one\n", "line two\n"]
    url, data = local_object()
    with node.open(url) as f:
        assert f.readable() and f.seekable() and not f.writable()
        assert f.read1(5) == data[:5]
        assert f.seek(-3, io.SEEK_END) == len(data) - 3
        assert f.read(100) == data[-3:] and f.read(1) == b""
    with pytest.raises(ValueError, match="mode"):
        node.open(url, "wb")


def test_concurrent_cold_readers_make_one_origin_read_per_block(node, local_object):
    url, data = local_object(size=16 * SMALL_BLOCK, seed=2)
    results = []

    def read():
        with node.open(url) as f:
            results.append(f.read() == data)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8
    assert node.stats()["origin_requests"] == 16


def test_module_api_uses_default_node(tmp_path, local_object, monkeypatch):
    monkeypatch.setenv("MESHCACHE_CACHE_DIR", str(tmp_path / "default"))
    monkeypatch.setenv("MESHCACHE_BLOCK_SIZE", str(SMALL_BLOCK))
    url, data = local_object()
    assert meshcache.cat(url) == data
    assert meshcache.cat(url, 10, 20) == data[10:20]
    assert meshcache.cat(url, -5) == data[-5:]
    assert meshcache.prewarm([url])[url] == len(data)
    st = meshcache.stat(url)
    assert st["size"] == len(data) and st["cached_blocks"] == st["blocks"]
    assert meshcache.stats()["bytes_from_local"] > 0
    with meshcache.open(url) as f:
        assert f.read() == data
        assert f.stats["bytes_from_local"] == len(data)
    assert meshcache.default_node().config.cache_dir == str(tmp_path / "default")
    meshcache.default_node().close()


def test_missing_object_names_the_url(node, tmp_path):
    with pytest.raises(ObjectNotFound, match="nope.bin"):
        node.open(str(tmp_path / "nope.bin"))


def test_new_version_is_never_mixed_with_the_old(node, tmp_path):
    p = tmp_path / "v.bin"
    old = os.urandom(40 * SMALL_BLOCK)
    p.write_bytes(old)
    f = node.open(str(p))
    assert f.read(10) == old[:10]
    time.sleep(0.01)
    new = os.urandom(40 * SMALL_BLOCK)
    p.write_bytes(new)
    # the file changed under an open reader: blocks not yet fetched fail, never mix versions
    with pytest.raises(ObjectChanged):
        f.seek(35 * SMALL_BLOCK)
        f.read(10)
    node.refresh(str(p))
    with pytest.raises(ObjectChanged, match="newer version"):
        f.seek(0)
        f.read(10)  # even a cached block of the old version is not returned any more
    with node.open(str(p)) as g:
        assert g.read() == new


def test_stat_is_cached_for_the_ttl(cache_config, tmp_path):
    node = Node(cache_config(metadata_ttl=2.0))
    try:
        p = tmp_path / "ttl.bin"
        p.write_bytes(b"a" * 1000)
        assert node.cat(str(p)) == b"a" * 1000
        first = node.stat(str(p))["version"]
        time.sleep(0.01)
        p.write_bytes(b"b" * 1000)
        # Within the TTL the origin is not asked again: the old version, and its bytes, stand.
        assert node.stat(str(p))["version"] == first
        assert node.cat(str(p)) == b"a" * 1000
        time.sleep(2.1)
        assert node.stat(str(p))["version"] != first
        assert node.cat(str(p)) == b"b" * 1000
    finally:
        node.close()


def test_tampered_block_is_refetched_not_served(cache_config, local_object):
    url, data = local_object(seed=11)
    n1 = Node(cache_config())
    assert n1.cat(url) == data
    n1.close()
    blocks = sorted((n1.store.root / "blocks").glob("*/*"))
    victim = blocks[len(blocks) // 2]
    raw = bytearray(victim.read_bytes())
    raw[7] ^= 1
    victim.write_bytes(raw)
    n2 = Node(cache_config())
    try:
        with n2.open(url) as f:
            assert f.read() == data
        st = n2.stats()
        assert st["corrupt_blocks"] == 1 and st["origin_requests"] == 1
    finally:
        n2.close()


def test_tiny_capacity_still_reads_correctly(cache_config, local_object):
    n = Node(cache_config(capacity=2 * SMALL_BLOCK, readahead=4))
    try:
        url, data = local_object(size=12 * SMALL_BLOCK, seed=12)
        with n.open(url) as f:
            assert f.read() == data
        assert n.store.used <= 2 * SMALL_BLOCK
    finally:
        n.close()


def test_pin_unpin_evict(node, local_object):
    url, data = local_object(seed=13)
    node.pin(url)
    assert node.stat(url)["pinned"] and node.stat(url)["cached_blocks"] == node.stat(url)["blocks"]
    assert node.evict(None) == 0  # everything cached is pinned
    with pytest.raises(meshcache.StoreError, match="pinned"):
        node.evict(url)
    assert node.unpin(url) == 1
    assert node.evict(url) == len(data)
    assert node.stat(url)["cached_blocks"] == 0
    assert node.cat(url) == data


@pytest.mark.skipif(not is_root(), reason="mounting a small tmpfs needs root")
def test_full_disk_still_serves_correct_bytes(tmp_path, cache_config, local_object):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(full)], check=True)
    try:
        n = Node(cache_config(cache_dir=str(full)))
        url, data = local_object(size=20 * SMALL_BLOCK, seed=14)
        with n.open(url) as f:
            assert f.read() == data
        assert n.stats()["store_errors"] > 0
        n.close()
        for d in n.store.digests():
            assert meshcache.core.digest.digest(n.store.block_path(d).read_bytes()) == d
    finally:
        subprocess.run(["umount", "-l", str(full)], check=True)

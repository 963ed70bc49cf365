"""The catalog: stat cache and manifests, bounded in memory, flushed when they grow."""

from __future__ import annotations

from meshcache.core.version import ObjectVersion
from meshcache.read.catalog import Catalog
from meshcache.read.store import BlockStore

B = 1 << 16


def _catalog(tmp_path, **kw):
    store = BlockStore(tmp_path / "c", 1 << 30, fsync=False)
    now = [0.0]
    return Catalog(store, B, 60.0, clock=lambda: now[0], **kw), now


def test_a_long_run_over_many_objects_stays_bounded(tmp_path):
    cat, _ = _catalog(tmp_path, max_manifests=50)
    for n in range(2000):
        v = ObjectVersion(f"file:///o/{n}", "t", 3 * B)
        cat.record(v, n % 3, bytes([n % 256]) * 32)
        if n % 100 == 99:
            assert cat.flush() > 0
        assert len(cat) <= 50 + 100  # dirty manifests wait for the flush that writes them
    cat.flush()
    cat.manifest(ObjectVersion("file:///o/x", "t", B))
    assert len(cat) <= 50
    # What left memory was written: it comes back from the store.
    v = ObjectVersion("file:///o/7", "t", 3 * B)
    assert cat.known_manifest(v).digests[1] == bytes([7]) * 32


def test_stats_expire_and_a_new_version_drops_the_old_manifests(tmp_path):
    cat, now = _catalog(tmp_path)
    old = ObjectVersion("file:///o", "1", B)
    new = ObjectVersion("file:///o", "2", B)
    assert cat.put_version(old) is False
    cat.record(old, 0, b"\x01" * 32)
    assert cat.fresh("file:///o") == old
    now[0] = 61.0
    assert cat.fresh("file:///o") is None and cat.latest("file:///o") == old
    assert cat.put_version(new) is True
    assert cat.latest("file:///o") == new
    assert cat.known_manifest(old) is None  # never flushed, and dropped with its version

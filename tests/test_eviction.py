from hypothesis import given, settings, strategies as st

from meshcache.core.eviction import S3FIFO

ops = st.lists(st.tuples(st.sampled_from(["insert", "access", "remove", "evict"]),
                         st.integers(0, 40), st.integers(1, 50)), max_size=300)


@settings(max_examples=200)
@given(ops, st.integers(50, 400), st.frozensets(st.integers(0, 40), max_size=8))
def test_invariants_hold_under_any_sequence(seq, capacity, protected):
    p = S3FIFO(capacity)
    sizes = {}
    peak = 0
    for op, key, size in seq:
        if op == "insert" and key not in p:
            p.insert(key, size)
            sizes[key] = size
        elif op == "access":
            p.access(key)
        elif op == "remove":
            if p.remove(key):
                del sizes[key]
        else:
            victims = p.evict(lambda k: k not in protected)
            for v in victims:
                assert v not in protected, "a protected entry was evicted"
                assert v not in p
                del sizes[v]
            unprotected = sum(s for k, s in sizes.items() if k not in protected)
            # Either within capacity, or only protected bytes remain above it.
            assert p.used <= capacity or unprotected == 0
        assert p.used == sum(sizes.values())
        assert set(p.keys()) == set(sizes)
        peak = max(peak, len(p))
        assert p.ghosts() <= max(16, peak)


def test_one_hit_wonders_do_not_flush_the_hot_set():
    p = S3FIFO(100)
    for k in range(10):          # hot set, read twice
        p.insert(("hot", k), 5)
        p.access(("hot", k))
    p.evict()
    for k in range(1000):        # a scan of one-hit wonders
        p.insert(("scan", k), 5)
        p.evict()
    hot_left = sum(1 for k in range(10) if ("hot", k) in p)
    assert hot_left == 10


def test_ghost_hit_goes_to_main():
    p = S3FIFO(100)
    p.insert("a", 10)
    k = 0
    while "a" in p:
        p.insert(k, 10)
        p.evict()
        k += 1
    p.insert("a", 10)
    assert p.in_main("a")


def test_all_protected_stops():
    p = S3FIFO(10)
    for k in range(5):
        p.insert(k, 10)
    assert p.evict(lambda k: False) == []
    assert p.used == 50


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 1 << 40)), max_size=80),
       st.lists(st.tuples(st.integers(0, 60), st.integers(1, 50)), max_size=20))
def test_bulk_load_is_inserting_into_main_one_by_one(entries, held):
    """`load` (the index rebuilt at start) ends where one `insert(main=True)` per entry ends,
    duplicates and keys already held included; `entries` gives back what `load` takes."""
    bulk, single = S3FIFO(1 << 50), S3FIFO(1 << 50)
    for p in (bulk, single):
        for k, size in held:
            p.insert(k, size)
    bulk.load([k for k, _ in entries], [s for _, s in entries])
    for k, size in entries:
        single.insert(k, size, main=True)
    assert bulk.keys() == single.keys() and bulk.used == single.used
    assert all(bulk.size(k) == single.size(k) for k in bulk.keys())
    keys, sizes = bulk.entries()
    assert sorted(keys) == sorted(bulk.keys()) and sum(sizes) == bulk.used
    again = S3FIFO(1 << 50)
    again.load(keys, sizes)
    assert again.keys() == keys and again.used == bulk.used
    probe = list(range(70))
    assert bulk.missing(probe) == [k for k in probe if k not in bulk]
    present = set(probe[::2])
    assert bulk.missing_from(present) == [k for k in bulk.keys() if k not in present]

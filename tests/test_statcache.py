from hypothesis import given, strategies as st

from meshcache.core.statcache import StatCache
from meshcache.core.version import ObjectVersion


def test_ttl_and_refresh():
    c = StatCache(60)
    v1 = ObjectVersion("u", "a", 1)
    assert not c.put(v1, now=0)
    assert c.get("u", 59.9) == v1
    assert c.get("u", 60) is None
    c.drop("u")
    assert c.get("u", 1) is None and c.latest("u") == v1
    assert c.put(ObjectVersion("u", "b", 1), now=2)
    assert c.latest("u").token == "b"


@given(st.lists(st.tuples(st.sampled_from("ab"), st.floats(0, 1000)), max_size=50))
def test_latest_is_the_last_put(puts):
    c = StatCache(10)
    for token, now in puts:
        c.put(ObjectVersion("u", token, 1), now)
    if puts:
        assert c.latest("u").token == puts[-1][0]


def test_bounded_by_urls_least_recently_stated_go_first():
    """A daemon reads ever new URLs: the cache holds at most max_urls of them."""
    c = StatCache(60, max_urls=100)
    for i in range(10_000):
        c.put(ObjectVersion(f"s3://b/shard-{i}", "t", 1), now=i)
        if i % 10 == 0:
            c.put(ObjectVersion("s3://b/hot", "t", 1), now=i)  # stated again and again
    assert len(c) == 100
    assert c.latest("s3://b/hot") is not None and c.get("s3://b/hot", 9995) is not None
    assert c.latest("s3://b/shard-9999") is not None
    assert c.latest("s3://b/shard-0") is None and c.get("s3://b/shard-0", 1) is None


@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from("ab")), max_size=200),
       st.integers(1, 10))
def test_bound_keeps_the_newest_urls(puts, bound):
    c = StatCache(10, max_urls=bound)
    for now, (u, token) in enumerate(puts):
        c.put(ObjectVersion(str(u), token, 1), now)
        if now % 7 == 0:
            c.drop(str(u))  # drops the stat only: `latest` stays
    assert len(c) <= bound
    recent: list[str] = []
    for u, _ in reversed(puts):
        if str(u) not in recent:
            recent.append(str(u))
    for u in recent[:bound]:  # the `bound` URLs stated last are all there, with their last token
        last = next(t for v, t in reversed(puts) if str(v) == u)
        assert c.latest(u).token == last

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

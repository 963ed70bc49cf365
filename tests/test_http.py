"""Reads from a real HTTP origin on 127.0.0.1 (meshcache.lab.httporigin): correctness,
one origin read per block, retries after faults, clear errors, versions."""

from __future__ import annotations

import threading

import pytest

from meshcache import Node, ObjectChanged, ObjectNotFound, OriginError
from meshcache.lab.httporigin import OriginServer

from tests.conftest import SMALL_BLOCK, make_bytes


@pytest.fixture
def origin():
    with OriginServer() as srv:
        yield srv


def spans_of(srv, path):
    return sorted(srv.spans(path))


def test_cold_hot_and_one_read_per_block(origin, node):
    data = make_bytes(20 * SMALL_BLOCK + 17, 41)
    origin.put("m.bin", data)
    url = origin.url_for("m.bin")
    out = []

    def read():
        with node.open(url) as f:
            out.append(f.read() == data)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [True] * 8
    gets = origin.requests_for("m.bin")
    assert len(gets) == 21  # one ranged GET per block however many readers
    assert origin.bytes_sent == len(data)
    assert {s for s in spans_of(origin, "m.bin")} == {
        (i * SMALL_BLOCK, min((i + 1) * SMALL_BLOCK, len(data))) for i in range(21)}
    with node.open(url) as f:
        assert f.read() == data and f.stats["bytes_from_local"] == len(data)
    assert len(origin.requests_for("m.bin")) == 21


def test_missing_and_refused_objects_name_the_url(origin, node):
    with pytest.raises(ObjectNotFound, match="nope.bin"):
        node.open(origin.url_for("nope.bin"))
    origin.put("secret.bin", b"x" * 100)
    origin.refuse("secret.bin", 403)
    with pytest.raises(OriginError, match="secret.bin"):
        node.cat(origin.url_for("secret.bin"))


def test_transient_faults_are_retried(origin, cache_config):
    node = Node(cache_config(origin_retries=2))
    try:
        data = make_bytes(6 * SMALL_BLOCK, 42)
        origin.put("f.bin", data)
        url = origin.url_for("f.bin")
        node.stat(url)
        origin.fail_next(2, 500, method="GET")
        origin.drop_after(1000, count=2, path="f.bin")
        with node.open(url) as f:
            assert f.read() == data
        st = node.stats()
        assert st["origin_errors"] >= 3 and st["bytes_from_origin"] == len(data)
    finally:
        node.close()


def test_persistent_failure_is_an_error_not_a_hang(origin, cache_config):
    node = Node(cache_config(origin_retries=1, origin_timeout=0.5))
    try:
        data = make_bytes(2 * SMALL_BLOCK, 43)
        origin.put("s.bin", data)
        url = origin.url_for("s.bin")
        node.stat(url)
        origin.stall_after(100, 5.0, count=10, path="s.bin")
        with pytest.raises(OriginError, match="s.bin"):
            node.cat(url)
        assert node.stats()["store_blocks"] == 0  # nothing half-read was stored
    finally:
        node.close()


def test_replaced_object_is_a_new_version(origin, node):
    old = make_bytes(40 * SMALL_BLOCK, 44)
    origin.put("v.bin", old)
    url = origin.url_for("v.bin")
    f = node.open(url)
    assert f.read(100) == old[:100]
    new = make_bytes(40 * SMALL_BLOCK, 45)
    origin.put("v.bin", new)
    f.seek(35 * SMALL_BLOCK)
    with pytest.raises(ObjectChanged):  # If-Match fails: no mix of the two versions
        f.read(10)
    assert node.refresh(url).etag == origin.etag("v.bin")
    with node.open(url) as g:
        assert g.read() == new
    with pytest.raises(ObjectChanged):
        f.seek(0)
        f.read(1)

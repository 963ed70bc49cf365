"""The peer_origins policy, pure: what a peer may make this node fetch."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from meshcache.core.origins import prefix_matches, refusal


@pytest.mark.parametrize("url", [
    "https://models.example.com/a/b.bin", "http://10.1.2.3:8080/x", "s3://bucket/key",
    "gs://bucket/key", "http://origin.internal/file", "hdfs://namenode/x",
])
def test_default_allows_remote_storage(url):
    assert refusal(url) is None


@pytest.mark.parametrize("url,why", [
    ("file:///etc/passwd", "scheme file"),
    ("local:///etc/passwd", "scheme local"),
    ("memory://x", "scheme memory"),
    ("simplecache::http://x/y", "chained"),
    ("http://127.0.0.1:9000/x", "loopback"),
    ("http://127.1/x", "loopback"),
    ("http://2130706433/x", "loopback"),
    ("http://0x7f.1/x", "loopback"),
    ("http://[::1]:80/x", "loopback"),
    ("http://[::ffff:127.0.0.1]/x", "loopback"),
    ("http://localhost:8000/x", "this host"),
    ("http://LOCALHOST./x", "this host"),
    ("http://a.localhost/x", "this host"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/x", "link-local"),
    ("http://0.0.0.0/x", "not a unicast"),
    ("http://user@127.0.0.1/x", "loopback"),
    ("ftp://example.com/x", "scheme ftp"),
    ("noscheme", "scheme"),
])
def test_default_refuses_the_classic_holes(url, why):
    got = refusal(url)
    assert got is not None and why in got


def test_listed_prefixes_allow_what_the_default_refuses():
    allowed = ["http://127.0.0.1:9000/", "file:///srv/models/"]
    assert refusal("http://127.0.0.1:9000/x", allowed) is None
    assert refusal("file:///srv/models/a.bin", allowed) is None
    assert refusal("file:///etc/passwd", allowed) is not None
    assert refusal("http://127.0.0.1:9001/x", allowed) is not None
    # a list is exact: what the default allows is refused when it is not listed
    assert "peer_origins" in refusal("https://models.example.com/a", allowed)


def test_a_prefix_ending_in_the_host_does_not_match_a_longer_host():
    assert prefix_matches("http://origin:80/x", "http://origin")
    assert prefix_matches("http://origin/x", "http://origin")
    assert not prefix_matches("http://origin.evil.com/x", "http://origin")
    assert prefix_matches("http://origin/models/a", "http://origin/models")
    assert prefix_matches("http://127.0.0.1:9000/x", "http://127.0.0.1:")  # any port


@given(st.ip_addresses())
def test_every_loopback_or_link_local_literal_is_refused(ip):
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    url = f"http://{host}:8080/x"
    mapped = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip
    if mapped.is_loopback or mapped.is_link_local or mapped.is_unspecified:
        assert refusal(url) is not None
    elif not (mapped.is_multicast or mapped.is_reserved):
        assert refusal(url) is None
    assert refusal(url, [f"http://{host}:8080/"]) is None  # listing it allows it


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=40), st.builds("{}://{}/{}".format, st.sampled_from(
    ["http", "https", "file", "s3"]), st.text(max_size=20), st.text(max_size=10))),
    st.lists(st.text(max_size=20), max_size=3))
def test_never_raises(url, allowed):
    r = refusal(url, allowed)
    assert r is None or isinstance(r, str)


@given(st.integers(0, 2**32 - 1))
def test_numeric_ipv4_forms_are_judged_as_their_address(n):
    ip = ipaddress.IPv4Address(n)
    refused = refusal(f"http://{n}/x") is not None
    assert refused == (ip.is_loopback or ip.is_link_local or ip.is_unspecified
                       or ip.is_multicast or ip.is_reserved)

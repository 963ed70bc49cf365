import os

import pytest
from hypothesis import given, strategies as st

from meshcache.core.manifest import Manifest, ManifestError
from meshcache.core.version import ObjectVersion, token_from_info

digests = st.one_of(st.none(), st.binary(min_size=32, max_size=32))


@st.composite
def manifests(draw):
    bs = draw(st.sampled_from([2**k for k in range(16, 25)]))
    n = draw(st.integers(0, 40))
    size = 0 if n == 0 else (n - 1) * bs + draw(st.integers(1, bs))
    v = ObjectVersion(draw(st.text(max_size=60)), draw(st.text(max_size=40)), size)
    return Manifest(v, bs, [draw(digests) for _ in range(n)] if n else [])


@given(manifests())
def test_round_trip(m):
    back = Manifest.decode(m.encode())
    assert back == m
    assert back.version.key == m.version.key


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_manifest_error(data):
    try:
        Manifest.decode(data)
    except ManifestError:
        pass


@given(manifests(), st.data())
def test_mutations_only_raise_manifest_error(m, data):
    enc = bytearray(m.encode())
    if enc:
        i = data.draw(st.integers(0, len(enc) - 1))
        enc[i] = data.draw(st.integers(0, 255))
    try:
        Manifest.decode(bytes(enc))
    except ManifestError:
        pass


def test_oversize_rejected_before_parsing():
    with pytest.raises(ManifestError, match="limit"):
        Manifest.decode(b"\x00" * 100, max_bytes=10)


def test_merge_takes_known_digests():
    v = ObjectVersion("u", "t", 3 * 1024)
    a, b = Manifest(v, 1024), Manifest(v, 1024)
    a.digests[0] = os.urandom(32)
    b.digests[2] = os.urandom(32)
    assert a.merge(b)
    assert a.digests[2] == b.digests[2] and not a.merge(b)


def test_version_tokens_prefer_strong_identifiers():
    assert token_from_info({"ETag": '"abc"', "mtime": 5}) == 'etag:"abc"'
    assert token_from_info({"VersionId": "v1", "ETag": "x"}) == "vid:v1"
    assert token_from_info({"mtime": 5.0, "size": 3}).startswith("mtime:5.0")
    v = ObjectVersion("u", 'etag:"abc"', 1)
    assert v.etag == '"abc"' and v.version_id is None

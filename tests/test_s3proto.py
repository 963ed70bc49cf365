"""S3's pure protocol parts: Range, conditions, key checks, the ListObjectsV2 page, TTL cache."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcache.core import s3proto
from meshcache.core.s3proto import Entry, S3Error, check_conditions, list_page, parse_range
from meshcache.core.ttlcache import TTLCache


def test_ranges():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=-1000", 100) == (0, 100)
    assert parse_range("bytes=50-5000", 100) == (50, 100)
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole object
    assert parse_range("items=0-1", 100) is None
    assert parse_range("bytes=9-3", 100) is None
    with pytest.raises(S3Error) as e:
        parse_range("bytes=100-", 100)
    assert e.value.code == "InvalidRange" and e.value.status == 416
    assert e.value.extra["ActualObjectSize"] == "100"


@given(st.text(max_size=40), st.integers(0, 10**12))
def test_range_parse_never_crashes_and_stays_inside(header, size):
    try:
        span = parse_range(header, size)
    except S3Error as e:
        assert e.code == "InvalidRange"
        return
    if span is not None:
        assert 0 <= span[0] < span[1] <= size


def test_conditions():
    assert check_conditions("abc", '"abc"', None) is None
    assert check_conditions("abc", '"x", "abc"', None) is None
    assert check_conditions("abc", '"x"', None) == 412
    assert check_conditions("abc", "*", None) is None
    assert check_conditions("abc", None, '"abc"') == 304
    assert check_conditions("abc", None, 'W/"abc"') == 304
    assert check_conditions("abc", None, '"x"') is None


def test_keys_outside_the_prefix_are_refused():
    for bad in ("../x", "a/../../x", "/etc/passwd", "a/./b", "a\\b", "a\0b", "x" * 1025):
        with pytest.raises(S3Error):
            s3proto.check_key(bad)
    s3proto.check_key("a/b..c/d.bin")


keys = st.lists(st.text(st.sampled_from("ab/c."), min_size=1, max_size=6), max_size=30,
                unique=True)


@settings(max_examples=150)
@given(keys, st.sampled_from(["", "a", "a/", "b"]), st.sampled_from(["", "/"]),
       st.integers(1, 7))
def test_paging_lists_every_row_once_in_order(names, prefix, delimiter, page_size):
    entries = [Entry(k, len(k), 0.0, "e") for k in names]
    whole = list_page(entries, prefix, delimiter, 1000, "")
    expected = sorted([e.key for e in whole.contents] + whole.prefixes)
    got, after = [], ""
    for _ in range(100):
        page = list_page(entries, prefix, delimiter, page_size, after)
        rows = sorted([e.key for e in page.contents] + page.prefixes)
        assert len(rows) == page.key_count <= page_size
        got += rows
        if not page.truncated:
            break
        after = s3proto.decode_token(page.next_token)
    assert got == expected
    for e in whole.contents:
        assert e.key.startswith(prefix)
        assert not delimiter or delimiter not in e.key[len(prefix):]


def test_list_xml_is_well_formed_and_escaped():
    page = list_page([Entry("a&b<c>.txt", 3, 0.0, "etag")], "", "/", 1000, "",
                     dirs=["d/"])
    doc = ET.fromstring(s3proto.list_xml("bkt", "", "/", 1000, page, None, None, None))
    ns = {"s": s3proto.XMLNS}
    assert doc.find("s:Contents/s:Key", ns).text == "a&b<c>.txt"
    assert doc.find("s:CommonPrefixes/s:Prefix", ns).text == "d/"
    err = ET.fromstring(s3proto.error_xml("NoSuchKey", "no <key>", "/b/k", "RID"))
    assert err.find("Code").text == "NoSuchKey" and err.find("Message").text == "no <key>"


def test_ttlcache():
    c: TTLCache[str, int] = TTLCache(10, max_entries=2)
    c.put("a", 1, now=0)
    assert c.get("a", 9.9) == 1 and c.get("a", 10) is None
    c.put("a", 1, 0), c.put("b", 2, 0), c.put("c", 3, 0)
    assert c.get("a", 1) is None and c.get("c", 1) == 3 and len(c) == 2

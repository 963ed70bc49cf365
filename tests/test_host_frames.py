"""The local API's frames: whatever a local client sends, decoding raises FrameError or
yields a well-formed request, and nothing is buffered past the limit."""

from __future__ import annotations

import asyncio
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcache.host.frames import (API_VERSION, MAX_REQUEST, OPS, FrameError, encode_frame,
                                   parse_request, read_frame)

values = st.recursive(st.none() | st.booleans() | st.integers(0, 2**63 - 1) | st.text(max_size=20)
                      | st.binary(max_size=40), lambda inner: st.lists(inner, max_size=5),
                      max_leaves=20)


@given(st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_random_bytes_never_crash(data):
    try:
        op, args = parse_request(data)
    except FrameError:
        return
    assert op in OPS and isinstance(args, list)


@given(st.sampled_from(sorted(OPS)), st.lists(values, max_size=6))
@settings(max_examples=200, deadline=None)
def test_requests_round_trip(op, args):
    body = encode_frame([API_VERSION, op, *args])[4:]
    assert parse_request(body) == (op, args)


@pytest.mark.parametrize("obj", [
    [2, "stat"], [API_VERSION, "rm -rf"], [API_VERSION], {"op": "stat"}, [API_VERSION, 1.5],
    [API_VERSION, "stat", -1], [API_VERSION, "stat", {"k": 1}],
])
def test_what_is_refused(obj):
    with pytest.raises(FrameError):
        parse_request(cbor2.dumps(obj))


def test_deep_nesting_and_oversize_are_refused():
    deep = [API_VERSION, "stats"]
    for _ in range(20):
        deep = [deep]
    with pytest.raises(FrameError, match="nesting"):
        parse_request(cbor2.dumps([API_VERSION, "stats", deep]))
    with pytest.raises(FrameError, match="limit"):
        parse_request(b"\x82" + b"\x01" * MAX_REQUEST)


def test_length_is_checked_before_the_body_is_read():
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", MAX_REQUEST + 1))  # no body follows: never waited for
        with pytest.raises(FrameError, match="exceeds"):
            await asyncio.wait_for(read_frame(reader, MAX_REQUEST), 5)
    asyncio.run(go())

"""Wire messages: round trips and bounded rejection of every kind of bad input."""

from __future__ import annotations

import time

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcache.core import wire
from meshcache.core.wire import WireError

# ---- strategies (shared with tests/fuzz) ----------------------------------------------------------

uints = st.integers(min_value=0, max_value=2**63 - 1)
digests = st.binary(min_size=32, max_size=32)
node_ids = st.binary(min_size=1, max_size=64)
texts = st.text(max_size=40)
rows = st.builds(wire.Update, node_ids, uints, st.sampled_from(list(wire.State)),
                 st.text(max_size=30), st.text(max_size=10))
row_lists = st.lists(rows, max_size=6).map(tuple)

messages = st.one_of(
    st.builds(wire.Hello, node_ids, st.integers(0, 40).map(lambda e: 1 << e),
              st.binary(max_size=64), uints, texts, st.integers(0, 65535)),
    st.builds(wire.GetBlock, uints, digests, st.integers(0, 255)),
    st.builds(wire.GetBlock, uints, digests, st.integers(0, 255), texts, uints),
    st.builds(wire.GetBlock, uints, digests, st.integers(0, 255), texts, uints, texts, uints),
    st.builds(wire.Block, uints, digests, uints),
    st.builds(wire.Miss, uints, st.one_of(digests, st.just(b""))),
    st.builds(wire.GetManifest, uints, texts, texts, uints),
    st.builds(wire.GetVersion, uints, texts),
    st.builds(wire.VersionMsg, uints, texts, uints, uints),
    st.builds(wire.ManifestMsg, uints, uints,
              st.lists(st.one_of(st.none(), digests), max_size=20).map(tuple)),
    st.builds(wire.Summary, node_ids, uints, st.binary(max_size=200)),
    st.builds(lambda n, a, b, d: wire.SummaryDelta(n, min(a, b), max(a, b) + 1, d),
              node_ids, st.integers(0, 2**62), st.integers(0, 2**62), st.binary(max_size=200)),
    st.builds(wire.Ping, uints),
    st.builds(wire.Ack, uints),
    st.builds(wire.Ping, uints, row_lists),
    st.builds(wire.Ack, uints, row_lists),
    st.builds(wire.Error, uints, texts),
    st.builds(wire.Leave, node_ids, uints),
    st.builds(wire.PingReq, uints, node_ids, st.text(max_size=30), row_lists),
    st.builds(wire.Sync, row_lists, st.booleans()),
    st.builds(wire.Gossip, row_lists),
)


def decode_or_wireerror(data: bytes) -> None:
    """Decoding either succeeds (and re-encodes to the same message) or raises WireError."""
    try:
        msg = wire.decode(data)
    except WireError:
        return
    assert wire.decode(wire.encode(msg)) == msg


# ---- round trips ----------------------------------------------------------------------------------

@given(messages)
def test_round_trip(msg):
    body = wire.encode(msg)
    assert wire.decode(body) == msg
    assert wire.decode(bytearray(body)) == msg
    assert wire.decode(memoryview(body)) == msg


def test_peers_usage_shapes():
    # The call shapes meshcache/peers.py relies on.
    assert wire.decode(wire.encode(wire.Error(wire.ERR_BAD_REQUEST, "x"))).code == 1
    assert wire.decode(wire.encode(wire.Miss(3, b""))).digest == b""
    m = wire.decode(wire.encode(wire.GetManifest(1, "file:///a", "etag:x", 10)))
    assert (m.url, m.token, m.size) == ("file:///a", "etag:x", 10)
    mm = wire.decode(wire.encode(wire.ManifestMsg(2, 1 << 22, [b"a" * 32, None])))
    assert mm.block_size == 1 << 22 and list(mm.digests) == [b"a" * 32, None]
    assert wire.MAX_FRAME == 1 << 20


def test_membership_messages_round_trip_to_membership_rows():
    row = wire.Update(b"n" * 32, 7, wire.State.SUSPECT, "", "")
    alive = wire.Update(b"m" * 32, 2, wire.State.ALIVE, "10.0.0.2:7946", "z")
    for msg in (wire.Ping(3, (row, alive)), wire.Ack(3, (alive,)), wire.Gossip((row,)),
                wire.PingReq(4, b"t" * 32, "10.0.0.3:7946", (row,)),
                wire.Sync((alive, row), True), wire.Leave(b"n" * 32, 9)):
        got = wire.decode(wire.encode(msg))
        assert got == msg
    got = wire.decode(wire.encode(wire.Sync((alive, row), True)))
    assert got.members[1].state is wire.State.SUSPECT and isinstance(got.members[0], wire.Update)
    # An old peer's PING (no updates) still decodes.
    assert wire.decode(envelope(1, wire.TYPE_OF[wire.Ping], 5)) == wire.Ping(5)


def test_a_sync_table_is_bounded():
    big = [[i.to_bytes(4, "big"), 0, 0, "a", "z"] for i in range(wire.MAX_MEMBERS + 1)]
    with pytest.raises(WireError, match="at most"):
        wire.decode(envelope(1, wire.TYPE_OF[wire.Sync], big))
    ok = wire.decode(envelope(1, wire.TYPE_OF[wire.Sync], big[:-1]))
    assert len(ok.members) == wire.MAX_MEMBERS


def test_error_text_is_truncated_when_sending():
    assert len(wire.Error(1, "x" * 100_000).text) == wire.MAX_TEXT


# ---- rejection ------------------------------------------------------------------------------------

def envelope(*items) -> bytes:
    return cbor2.dumps(list(items))


@pytest.mark.parametrize("data, why", [
    (b"", "empty"),
    (envelope(2, wire.TYPE_OF[wire.Ping], 1), "protocol version mismatch"),
    (envelope(1, 99, 1), "unknown message type"),
    (envelope(1, "ping", 1), "unknown message type"),
    (envelope(1, wire.TYPE_OF[wire.Ping]), "expected 1..2 fields"),
    (envelope(1, wire.TYPE_OF[wire.Ping], 1, [], 2), "expected 1..2 fields"),
    (envelope(1, wire.TYPE_OF[wire.Ping], 1, 2), "updates: expected a list"),
    (envelope(1, wire.TYPE_OF[wire.Ping], 1, [[b"n", 1, 0, "a"]]), r"updates\[\]: expected"),
    (envelope(1, wire.TYPE_OF[wire.Ping], 1, [[b"n", 1, 4, "a", "z"]]), r"state: expected 0..3"),
    (envelope(1, wire.TYPE_OF[wire.Ping], 1, [[b"", 1, 0, "a", "z"]]), r"node_id"),
    (envelope(1, wire.TYPE_OF[wire.Ack], 1, [[b"n", 1, 0, "a" * 301, "z"]]), r"addr"),
    (envelope(1, wire.TYPE_OF[wire.Ack], 1, [[b"n", 1, 0, "a", "z"]] * 65), r"at most 64 rows"),
    (envelope(1, wire.TYPE_OF[wire.Sync], [], 1), "reply: expected true or false"),
    (envelope(1, wire.TYPE_OF[wire.Sync], [[b"n", 2**63, 0, "a", "z"]]), "integer out of range"),
    (envelope(1, wire.TYPE_OF[wire.PingReq], 1, b"t"), "expected 3..4 fields"),
    (envelope(1, wire.TYPE_OF[wire.Gossip], [[b"n", 1, True, "a", "z"]]), "state"),
    (envelope(1, wire.TYPE_OF[wire.Ping], 2**63), "integer out of range"),
    (envelope(1, wire.TYPE_OF[wire.Ping], -1), "negative"),
    (envelope(1, wire.TYPE_OF[wire.Ping], 1.5), "floats"),
    (envelope(1, wire.TYPE_OF[wire.Ping], True), "seq"),
    (envelope(1, wire.TYPE_OF[wire.Ping], "1"), "seq"),
    (envelope(1, wire.TYPE_OF[wire.Block], 1, b"d" * 31, 5), "32-byte digest"),
    (envelope(1, wire.TYPE_OF[wire.Miss], 1, b"d" * 33), "32-byte digest"),
    (envelope(1, wire.TYPE_OF[wire.GetBlock], 1, b"d" * 32, 1, "url", None), "go together"),
    (envelope(1, wire.TYPE_OF[wire.GetBlock], 1, b"d" * 32, 256), "max_rank"),
    (envelope(1, wire.TYPE_OF[wire.GetBlock], 1, b"d" * 32), "expected 3..7 fields"),
    (envelope(1, wire.TYPE_OF[wire.Hello], b"n", 3, b"", 1, "z", 1), "power of two"),
    (envelope(1, wire.TYPE_OF[wire.Hello], b"n", 4, b"", 1, "z", 70000), "not a port"),
    (envelope(1, wire.TYPE_OF[wire.ManifestMsg], 1, 4, [b"x"]), "32-byte digest"),
    (envelope(1, wire.TYPE_OF[wire.SummaryDelta], b"n", 5, 5, b""), "after"),
    (envelope(1, wire.TYPE_OF[wire.GetVersion], 1), "expected 2..2 fields"),
    (envelope(1, wire.TYPE_OF[wire.GetVersion], 1, "u" * (wire.MAX_URL + 1)), "url"),
    (envelope(1, wire.TYPE_OF[wire.GetVersion], 1, b"url"), "url"),
    (envelope(1, wire.TYPE_OF[wire.VersionMsg], 1, "t" * (wire.MAX_TOKEN + 1), 5, 0), "token"),
    (envelope(1, wire.TYPE_OF[wire.VersionMsg], 1, "t", 5, -1), "negative"),
    (envelope(1, wire.TYPE_OF[wire.VersionMsg], 1, "t", 5, "0"), "age_ms"),
    (envelope(1, wire.TYPE_OF[wire.VersionMsg], 1, "t", 5), "expected 4..4 fields"),
    (cbor2.dumps({"v": 1}), "maps"),
    (cbor2.dumps(cbor2.CBORTag(1, [1, 10, 1])), "tags"),
    (bytes([0x9F, 0x01, 0x0A, 0x01, 0xFF]), "indefinite"),
    (bytes([0x83, 0x01, 0x0A, 0x7B]) + b"\xff" * 8, "claims"),
    (bytes([0x83, 0x01, 0x0A, 0x62, 0xFF, 0xFE]), "UTF-8"),
    (wire.encode(wire.Ping(1)) + b"\x00", "trailing"),
    (wire.encode(wire.Hello(b"n", 4, b"", 1, "z", 1))[:-1], "truncated"),
    (b"\x01", "array"),
])
def test_bad_messages_raise_wireerror(data, why):
    with pytest.raises(WireError, match=why):
        wire.decode(data)


def test_version_mismatch_is_clear():
    with pytest.raises(WireError) as e:
        wire.decode(envelope(7, wire.TYPE_OF[wire.Hello]))
    assert "peer speaks 7" in str(e.value) and f"speaks {wire.PROTOCOL_VERSION}" in str(e.value)


def test_huge_claims_rejected_before_allocation():
    t0 = time.perf_counter()
    # A byte string header claiming 2**60 bytes.
    with pytest.raises(WireError, match="claims"):
        wire.decode(bytes([0x83, 0x01, 0x0A, 0x5B]) + (1 << 60).to_bytes(8, "big"))
    # An array claiming 2**60 items.
    with pytest.raises(WireError, match="claims"):
        wire.decode(bytes([0x9B]) + (1 << 60).to_bytes(8, "big"))
    # A text string claiming 2**32 - 1 characters.
    with pytest.raises(WireError, match="claims"):
        wire.decode(bytes([0x83, 0x01, 0x0A, 0x7A, 0xFF, 0xFF, 0xFF, 0xFF]))
    # One byte over the configured limit.
    with pytest.raises(WireError, match="exceeds the limit"):
        wire.decode(b"\x00" * 101, max_size=100)
    assert time.perf_counter() - t0 < 0.5


def test_deep_nesting_rejected():
    data = bytes([0x81]) * 10_000 + b"\x01"
    with pytest.raises(WireError, match="nesting"):
        wire.decode(data)


def test_encode_rejects_non_messages():
    with pytest.raises(WireError):
        wire.encode("hello")  # type: ignore[arg-type]
    with pytest.raises(WireError):
        wire.Block(1, b"short", 1)
    with pytest.raises(WireError):
        wire.encode(wire.Ping(-1))


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_wireerror(data):
    decode_or_wireerror(data)


@given(messages, st.data())
def test_mutated_messages_only_raise_wireerror(msg, data):
    body = bytearray(wire.encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    decode_or_wireerror(bytes(body))


@given(st.recursive(st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.binary(max_size=40)
                    | st.text(max_size=10) | st.floats(),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c,
                                                                        max_size=3),
                    max_leaves=20))
def test_arbitrary_cbor_only_raises_wireerror(obj):
    decode_or_wireerror(cbor2.dumps(obj))
    decode_or_wireerror(cbor2.dumps([1, 12, obj, "x"]))


def test_membership_messages_are_membership_classes():
    """One definition: the wire sends and decodes membership.py's own message classes."""
    from meshcache.core import membership as ms

    assert wire.Ping is ms.Ping and wire.Sync is ms.Sync and wire.Leave is ms.Leave
    assert type(wire.decode(wire.encode(ms.Gossip(())))) is ms.Gossip


def test_decode_items_is_bounded_and_unchecked():
    assert wire.decode_items(cbor2.dumps([1, "hello", b"x"])) == [1, "hello", b"x"]
    with pytest.raises(WireError, match="exceeds"):
        wire.decode_items(cbor2.dumps([b"x" * 600]), max_size=512)
    with pytest.raises(WireError, match="array"):
        wire.decode_items(cbor2.dumps(b"x"))


fields_any = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**64),
                       st.text(max_size=9000), st.binary(max_size=64))


@given(st.sampled_from([wire.GetVersion, wire.VersionMsg]),
       st.lists(fields_any, max_size=6))
def test_version_messages_decode_only_within_their_bounds(cls, values):
    """GET_VERSION / VERSION: whatever the fields, a decoded message is within every cap."""
    try:
        msg = wire.decode(envelope(1, wire.TYPE_OF[cls], *values))
    except WireError:
        return
    assert type(msg) is cls and 0 <= msg.request_id < 2**63
    if cls is wire.GetVersion:
        assert type(msg.url) is str and len(msg.url) <= wire.MAX_URL
    else:
        assert type(msg.token) is str and len(msg.token) <= wire.MAX_TOKEN
        assert all(type(x) is int and 0 <= x < 2**63 for x in (msg.size, msg.age_ms))

"""Peer protocol messages: frozen dataclasses to and from bounded CBOR.

Every message is one CBOR array, ``[PROTOCOL_VERSION, type, field, ...]``, encoded with cbor2.
Decoding never trusts the peer: outside bytes go through a small decoder for exactly the CBOR
subset we send (unsigned ints, byte and text strings, arrays, null/true/false) that checks every
length against the bytes that are actually left *before* it allocates, caps nesting depth, and
rejects maps, tags, floats, negative ints and indefinite lengths. (The alternative, a bounded
pre-scan in Python followed by ``cbor2.loads``, walks the same headers and then parses a second
time; measured here it costs the same within ~10% on small messages, ~3-5 us, and is slower on a
30k-digest manifest than this decoder's digest fast path. One parser is less surface, so this is
what we use; the authentication handshake decodes with it too, `decode_items`.) Every field is
then type- and range-checked. Whatever goes wrong, the only exception is `WireError`.

The membership messages (PING, ACK, PING_REQ, LEAVE, SYNC, GOSSIP) are the pure membership's own
classes (membership.py): this module gives them their type numbers and checks their fields when
decoding, it does not define them a second time. Framing is the transport's (a length prefix per
frame, `Stream.send_frame`/`recv_frame`, and a BLOCK header followed by ``size`` raw payload
bytes, `send_payload`/`recv_payload`).

SUMMARY_DELTA carries a Bloom delta (`meshcache.core.bloom.BloomFilter.diff`), not a list of added
digests: a node rebuilds its filter after evictions, so bits are cleared as well as set, and only
a delta of flipped bits says both. The delta names the filters it goes from and to; a receiver
whose copy is not at ``from_generation`` asks for a full SUMMARY.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable, Union

import cbor2

from meshcache.core.errors import (ERR_AUTH, ERR_BAD_REQUEST, ERR_BLOCK_SIZE, ERR_NOT_FOUND,
                                   ERR_REFUSED, ERR_TOO_LARGE, WireError)
from meshcache.core.membership import Ack, Gossip, Leave, Ping, PingReq, State, Sync, Update

__all__ = [
    "PROTOCOL_VERSION", "MAX_FRAME", "MAX_DEPTH", "DIGEST_SIZE", "NO_DIGEST", "WireError",
    "Hello", "GetBlock", "Block", "Miss", "GetManifest", "ManifestMsg", "GetVersion",
    "VersionMsg", "Summary",
    "SummaryDelta", "Ping", "Ack", "Error", "Leave", "PingReq", "Sync", "Gossip", "Update",
    "State", "Message", "TYPE_OF", "encode", "decode", "decode_value", "decode_items",
    "ERR_BAD_REQUEST", "ERR_BLOCK_SIZE", "ERR_AUTH", "ERR_TOO_LARGE", "ERR_NOT_FOUND",
    "ERR_REFUSED",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20  # default bound on one frame's body (bytes)
MAX_DEPTH = 8  # CBOR nesting; our messages use 2
DIGEST_SIZE = 32
NO_DIGEST = bytes(DIGEST_SIZE)  # GET_BLOCK by hint: the asker does not know the digest yet
MAX_UINT = (1 << 63) - 1
MAX_RANK = 255

# Field size caps (independent of the frame limit).
MAX_ID = 64  # node ids, cluster tags
MAX_URL = 8192
MAX_TOKEN = 1024
MAX_ZONE = 256
MAX_TEXT = 4096
MAX_ADDR = 300  # "host:port" of a member (an IPv6 literal with a zone id fits)
MAX_UPDATES = 64  # gossip rows on one PING/ACK/PING_REQ/GOSSIP (membership sends at most 16)
MAX_MEMBERS = 16384  # rows of one SYNC table

# ---- field checks ---------------------------------------------------------------------------------

def _uint(name: str, v: object) -> int:
    if type(v) is not int or not 0 <= v <= MAX_UINT:
        raise WireError(f"{name}: expected an int in [0, 2**63), got {_show(v)}")
    return v


def _bytes(name: str, v: object, max_len: int, min_len: int = 0) -> bytes:
    if type(v) is not bytes or not min_len <= len(v) <= max_len:
        raise WireError(f"{name}: expected {min_len}..{max_len} bytes, got {_show(v)}")
    return v


def _digest(name: str, v: object) -> bytes:
    if type(v) is not bytes or len(v) != DIGEST_SIZE:
        raise WireError(f"{name}: expected a {DIGEST_SIZE}-byte digest, got {_show(v)}")
    return v


def _text(name: str, v: object, max_len: int) -> str:
    if type(v) is not str or len(v) > max_len:
        raise WireError(f"{name}: expected a string of at most {max_len} characters, "
                        f"got {_show(v)}")
    return v


def _updates(name: str, v: object, max_rows: int) -> tuple[Update, ...]:
    """A list of membership rows [node_id, incarnation, state, addr, zone], each checked."""
    if not isinstance(v, (list, tuple)) or len(v) > max_rows:
        raise WireError(f"{name}: expected a list of at most {max_rows} rows, got {_show(v)}")
    out = []
    for row in v:
        if not isinstance(row, (list, tuple)) or len(row) != 5:
            raise WireError(f"{name}[]: expected [node_id, incarnation, state, addr, zone], "
                            f"got {_show(row)}")
        node_id, inc, state, addr, zone = row
        _bytes(f"{name}[].node_id", node_id, MAX_ID, 1)
        _uint(f"{name}[].incarnation", inc)
        if type(state) not in (int, State) or state not in _STATES:
            raise WireError(f"{name}[].state: expected 0..3, got {_show(state)}")
        _text(f"{name}[].addr", addr, MAX_ADDR)
        _text(f"{name}[].zone", zone, MAX_ZONE)
        out.append(Update(node_id, inc, State(state), addr, zone))
    return tuple(out)


_STATES = frozenset(int(s) for s in State)


def _show(v: object) -> str:
    if isinstance(v, (bytes, str, list)):
        return f"{type(v).__name__} of length {len(v)}"
    if isinstance(v, int):
        return repr(v) if abs(v) < 1 << 70 else "a huge int"
    return type(v).__name__


# ---- messages -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    """HELLO: who a node is and the mesh parameters it insists on (B, cluster tag). Every
    frame's envelope carries the protocol version it is written in (a mismatch fails decoding)."""

    node_id: bytes
    block_size: int
    cluster_tag: bytes
    max_datagram_size: int
    zone: str
    port: int

    def __post_init__(self) -> None:
        _bytes("node_id", self.node_id, MAX_ID, 1)
        bs = _uint("block_size", self.block_size)
        if bs == 0 or bs & (bs - 1):
            raise WireError(f"block_size: expected a power of two, got {bs}")
        _bytes("cluster_tag", self.cluster_tag, MAX_ID)
        _uint("max_datagram_size", self.max_datagram_size)
        _text("zone", self.zone, MAX_ZONE)
        if _uint("port", self.port) > 65535:
            raise WireError(f"port: {self.port} is not a port")


@dataclass(frozen=True)
class GetBlock:
    """GET_BLOCK: ask for a block by digest, answered only from the asked node's rungs ranked
    below `max_rank` (a holder is asked for its store; the owner may use its holders, other
    zones and the origin). The hint (url, index, and the version's token and size) lets it fetch
    the block when the digest is not known yet (the digest is then all zeros: `NO_DIGEST`)."""

    request_id: int
    digest: bytes
    max_rank: int  # the asked node uses only rungs ranked below it (core/rungs.py)
    url: str | None = None
    index: int | None = None
    token: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        _uint("request_id", self.request_id)
        _digest("digest", self.digest)
        if _uint("max_rank", self.max_rank) > MAX_RANK:
            raise WireError(f"max_rank: expected 0..{MAX_RANK}, got {self.max_rank}")
        if (self.url is None) != (self.index is None):
            raise WireError("hint: url and index go together")
        if self.url is not None:
            _text("url", self.url, MAX_URL)
            _uint("index", self.index)
        if (self.token is None) != (self.size is None) or \
                (self.token is not None and self.url is None):
            raise WireError("hint: token and size go together, with url and index")
        if self.token is not None:
            _text("token", self.token, MAX_TOKEN)
            _uint("size", self.size)


@dataclass(frozen=True)
class Block:
    """BLOCK: the header of a block reply; `size` payload bytes follow it on the stream."""

    request_id: int
    digest: bytes
    size: int

    def __post_init__(self) -> None:
        _uint("request_id", self.request_id)
        _digest("digest", self.digest)
        _uint("size", self.size)


@dataclass(frozen=True)
class Miss:
    """MISS: the peer has not got it (digest is empty when a manifest was asked for)."""

    request_id: int
    digest: bytes

    def __post_init__(self) -> None:
        _uint("request_id", self.request_id)
        if self.digest != b"" or type(self.digest) is not bytes:
            _digest("digest", self.digest)


@dataclass(frozen=True)
class GetManifest:
    """GET_MANIFEST: ask what a peer knows of one object version's digests."""

    request_id: int
    url: str
    token: str
    size: int

    def __post_init__(self) -> None:
        _uint("request_id", self.request_id)
        _text("url", self.url, MAX_URL)
        _text("token", self.token, MAX_TOKEN)
        _uint("size", self.size)


@dataclass(frozen=True)
class ManifestMsg:
    """MANIFEST: B and the digest of each block (None where not known yet)."""

    request_id: int
    block_size: int
    digests: tuple[bytes | None, ...]

    def __post_init__(self) -> None:
        _uint("request_id", self.request_id)
        _uint("block_size", self.block_size)
        if not isinstance(self.digests, (list, tuple)):
            raise WireError(f"digests: expected a list, got {_show(self.digests)}")
        for d in self.digests:
            if d is not None:
                _digest("digests[]", d)
        object.__setattr__(self, "digests", tuple(self.digests))


@dataclass(frozen=True)
class GetVersion:
    """GET_VERSION: ask a zone member for the version of `url` its origin last confirmed to it
    (sent while the origin fails and the asker knows no version of the URL)."""

    request_id: int
    url: str

    def __post_init__(self) -> None:
        _uint("request_id", self.request_id)
        _text("url", self.url, MAX_URL)


@dataclass(frozen=True)
class VersionMsg:
    """VERSION: the answer to GET_VERSION: the version's token and size (with the URL, its key)
    and how long ago, in milliseconds, the origin last confirmed it. MISS when none is known
    within the answering node's stale_if_error."""

    request_id: int
    token: str
    size: int
    age_ms: int

    def __post_init__(self) -> None:
        _uint("request_id", self.request_id)
        _text("token", self.token, MAX_TOKEN)
        _uint("size", self.size)
        _uint("age_ms", self.age_ms)


@dataclass(frozen=True)
class Summary:
    """SUMMARY: a node's whole Bloom summary (`BloomFilter.encode()`) at one generation."""

    node_id: bytes
    generation: int
    bloom: bytes

    def __post_init__(self) -> None:
        _bytes("node_id", self.node_id, MAX_ID, 1)
        _uint("generation", self.generation)
        _bytes("bloom", self.bloom, MAX_UINT)


@dataclass(frozen=True)
class SummaryDelta:
    """SUMMARY_DELTA: the flipped bits (`BloomFilter.diff`) from one generation to a later one."""

    node_id: bytes
    from_generation: int
    to_generation: int
    delta: bytes

    def __post_init__(self) -> None:
        _bytes("node_id", self.node_id, MAX_ID, 1)
        _uint("from_generation", self.from_generation)
        if _uint("to_generation", self.to_generation) <= self.from_generation:
            raise WireError("to_generation must be after from_generation")
        _bytes("delta", self.delta, MAX_UINT)


@dataclass(frozen=True)
class Error:
    """ERROR: a request failed; `code` is one of the ERR_* constants, `text` for humans."""

    code: int
    text: str

    def __post_init__(self) -> None:
        _uint("code", self.code)
        if type(self.text) is str and len(self.text) > MAX_TEXT:  # be lenient when sending
            object.__setattr__(self, "text", self.text[:MAX_TEXT])
        _text("text", self.text, MAX_TEXT)


Message = Union[Hello, GetBlock, Block, Miss, GetManifest, ManifestMsg, GetVersion, VersionMsg,
                Summary, SummaryDelta, Ping, Ack, Error, Leave, PingReq, Sync, Gossip]


def _swim(cls: type, *checks: Callable[[str, object], object]
          ) -> Callable[[list[object]], list[object]]:
    """A field checker for a membership message: one check per field, in order."""
    names = [f.name for f in fields(cls)]

    def check(args: list[object]) -> list[object]:
        return [c(n, v) for n, c, v in zip(names, checks, args)]
    return check


def _rows(name: str, v: object) -> tuple[Update, ...]:
    return _updates(name, v, MAX_UPDATES)


def _table(name: str, v: object) -> tuple[Update, ...]:
    return _updates(name, v, MAX_MEMBERS)


def _node_id(name: str, v: object) -> bytes:
    return _bytes(name, v, MAX_ID, 1)


def _addr_text(name: str, v: object) -> str:
    return _text(name, v, MAX_ADDR)


def _bool(name: str, v: object) -> bool:
    if type(v) is not bool:
        raise WireError(f"{name}: expected true or false, got {_show(v)}")
    return v


# Membership's messages: their type numbers and field checks (the classes live there).
_SWIM_CHECKS: dict[type, Callable[[list[object]], list[object]]] = {
    Ping: _swim(Ping, _uint, _rows), Ack: _swim(Ack, _uint, _rows),
    PingReq: _swim(PingReq, _uint, _node_id, _addr_text, _rows),
    Leave: _swim(Leave, _node_id, _uint), Sync: _swim(Sync, _table, _bool),
    Gossip: _swim(Gossip, _rows)}
TYPE_OF: dict[type, int] = {Hello: 1, GetBlock: 3, Block: 4, Miss: 5, GetManifest: 6,
                             ManifestMsg: 7, Summary: 8, SummaryDelta: 9, Ping: 10, Ack: 11,
                             Error: 12, Leave: 13, PingReq: 14, Sync: 15, Gossip: 16,
                             GetVersion: 17, VersionMsg: 18}
_TYPES: dict[int, type] = {t: c for c, t in TYPE_OF.items()}
_FIELDS: dict[type, tuple[str, ...]] = {c: tuple(f.name for f in fields(c))
                                        for c in _TYPES.values()}


# ---- encode ---------------------------------------------------------------------------------------

def encode(msg: Message) -> bytes:
    """The CBOR body of `msg` (no length prefix: that is the transport's framing)."""
    cls = type(msg)
    names = _FIELDS.get(cls)
    if names is None:
        raise WireError(f"not a message: {cls.__name__}")
    values: list[object] = [PROTOCOL_VERSION, TYPE_OF[cls]]
    check = _SWIM_CHECKS.get(cls)
    if check is not None:  # membership builds its own messages unchecked: check them here
        check([getattr(msg, name) for name in names])
    for name in names:
        v = getattr(msg, name)
        if isinstance(v, (tuple, list)):
            # Membership rows (NamedTuples with an IntEnum) go out as plain arrays of plain ints.
            v = [[u[0], int(u[1]), int(u[2]), u[3], u[4]] if isinstance(u, Update) else u
                 for u in v]
        values.append(v)
    return cbor2.dumps(values)


# ---- bounded decode -------------------------------------------------------------------------------

def decode(data: bytes | bytearray | memoryview, *, max_size: int = MAX_FRAME) -> Message:
    """Parse one CBOR body into a message; any problem raises WireError (nothing else)."""
    obj = decode_items(data, max_size=max_size)
    if len(obj) < 2:
        raise WireError("a message is an array [version, type, fields...]")
    version, mtype = obj[0], obj[1]
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise WireError(f"protocol version mismatch: peer speaks {_show(version)}, "
                        f"this node speaks {PROTOCOL_VERSION}")
    cls = _TYPES.get(mtype) if type(mtype) is int else None
    if cls is None:
        raise WireError(f"unknown message type {_show(mtype)}")
    names = _FIELDS[cls]
    args = obj[2:]
    required = _REQUIRED[cls]
    if not required <= len(args) <= len(names):
        raise WireError(f"{cls.__name__}: expected {required}..{len(names)} fields, "
                        f"got {len(args)}")
    try:
        check = _SWIM_CHECKS.get(cls)
        return cls(*(check(args) if check is not None else args))
    except WireError as e:
        raise WireError(f"{cls.__name__}: {e}") from None
    except (TypeError, ValueError) as e:  # belt and braces: the checks raise WireError
        raise WireError(f"{cls.__name__}: {e}") from None


def decode_value(data: bytes | bytearray | memoryview, *, max_size: int = MAX_FRAME) -> object:
    """One CBOR item of the accepted subset (uints, byte/text strings, arrays, null/true/false),
    bounded as `decode` is: the decoder under `decode`, also used by the authentication handshake
    and the host's local API. Raises WireError only."""
    try:
        n = len(data)
    except TypeError:
        raise WireError(f"expected bytes, got {type(data).__name__}") from None
    if n > max_size:
        raise WireError(f"message of {n} bytes exceeds the limit of {max_size}")
    if type(data) is not bytes:
        try:
            data = bytes(data)
        except (TypeError, ValueError, BufferError) as e:
            raise WireError(f"expected bytes: {e}") from None
    if n == 0:
        raise WireError("empty message")
    try:
        obj, pos = _item(data, 0, n, 0)
    except RecursionError:  # cannot happen with MAX_DEPTH, but never let it out
        raise WireError("nesting too deep") from None
    except (IndexError, TypeError, OverflowError) as e:  # a decoder bug must still be a WireError
        raise WireError(f"malformed CBOR: {e}") from None
    if pos != n:
        raise WireError(f"{n - pos} trailing bytes after the message")
    return obj


def decode_items(data: bytes | bytearray | memoryview, *, max_size: int = MAX_FRAME
                 ) -> list[Any]:
    """`decode_value` of one array (a message's shape, not yet checked as a message)."""
    obj = decode_value(data, max_size=max_size)
    if type(obj) is not list:
        raise WireError("a message is an array")
    return obj


_REQUIRED: dict[type, int] = {
    c: sum(1 for f in fields(c) if f.default is MISSING and f.default_factory is MISSING)
    for c in _TYPES.values()}


def _head(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(major type, argument, new pos) of the item header at `pos`."""
    if pos >= end:
        raise WireError("truncated message")
    ib = data[pos]
    major, info = ib >> 5, ib & 31
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise WireError("indefinite lengths and reserved CBOR headers are not accepted")
    size = 1 << (info - 24)
    if pos + size > end:
        raise WireError("truncated message")
    return major, int.from_bytes(data[pos:pos + size], "big"), pos + size


def _item(data: bytes, pos: int, end: int, depth: int) -> tuple[object, int]:
    major, arg, pos = _head(data, pos, end)
    if major == 0:
        if arg > MAX_UINT:
            raise WireError("integer out of range")
        return arg, pos
    if major == 2 or major == 3:
        if arg > end - pos:
            raise WireError(f"a string claims {arg} bytes, {end - pos} are left")
        raw = data[pos:pos + arg]
        if major == 2:
            return raw, pos + arg
        try:
            return raw.decode("utf-8"), pos + arg
        except UnicodeDecodeError:
            raise WireError("text string is not UTF-8") from None
    if major == 4:
        if depth >= MAX_DEPTH:
            raise WireError(f"nesting deeper than {MAX_DEPTH}")
        if arg > end - pos:  # every item is at least one byte
            raise WireError(f"an array claims {arg} items, {end - pos} bytes are left")
        out: list[object] = []
        append = out.append
        for _ in range(arg):
            # Fast path for the common element of big arrays: a 32-byte string (a digest).
            if pos + 34 <= end and data[pos] == 0x58 and data[pos + 1] == 0x20:
                append(data[pos + 2:pos + 34])
                pos += 34
                continue
            v, pos = _item(data, pos, end, depth + 1)
            append(v)
        return out, pos
    if major == 7:
        if arg == 22 and data[pos - 1] == 0xF6:
            return None, pos
        if arg == 21 and data[pos - 1] == 0xF5:
            return True, pos
        if arg == 20 and data[pos - 1] == 0xF4:
            return False, pos
        raise WireError("floats and simple values other than null/true/false are not accepted")
    if major == 1:
        raise WireError("negative integers are not accepted")
    if major == 5:
        raise WireError("maps are not accepted")
    raise WireError("CBOR tags are not accepted")

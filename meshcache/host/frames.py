"""Frames of the local API: a 4-byte big-endian length, then one CBOR item of the subset that
`meshcache.core.wire.decode_value` accepts (bounded before it allocates).

A request is ``[API_VERSION, op, args...]``; the daemon answers with one or more replies:
``["progress", n]`` / ``["total", n]`` while working, then ``["ok", value]`` or
``["err", kind, message]``. Structured values (stats, stat) travel as JSON text inside a reply.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import cbor2

from meshcache.config import MAX_BLOCK_SIZE
from meshcache.core.wire import WireError, decode_value

API_VERSION = 1
HEADER = 4
MAX_REQUEST = 64 * 1024  # what a local client may send in one frame
MAX_REPLY = MAX_BLOCK_SIZE + (1 << 20)  # a block served from memory, or a large manifest
OPS = frozenset({"hello", "stat", "version", "manifest", "block", "verify", "prewarm", "refresh",
                 "pin", "unpin", "evict", "stats", "status", "ls", "count"})


class FrameError(WireError):
    """A frame that breaks the local API's rules (too large, malformed, unknown op)."""


def encode_frame(obj: object) -> bytes:
    body = cbor2.dumps(obj)
    return struct.pack(">I", len(body)) + body


def decode_body(body: bytes, max_size: int) -> list[object]:
    """A frame body as a non-empty array; FrameError on anything else."""
    try:
        obj = decode_value(body, max_size=max_size)
    except WireError as e:
        raise FrameError(str(e)) from None
    if type(obj) is not list or not obj:
        raise FrameError("a frame is a non-empty array")
    return obj


def parse_request(body: bytes) -> tuple[str, list[object]]:
    """(op, args) of a request body; FrameError when it is not one."""
    obj = decode_body(body, MAX_REQUEST)
    if len(obj) < 2 or obj[0] != API_VERSION or type(obj[0]) is not int:
        raise FrameError(f"expected [{API_VERSION}, op, ...]: local API version mismatch")
    op = obj[1]
    if type(op) is not str or op not in OPS:
        raise FrameError(f"unknown operation {str(op)[:40]!r}")
    return op, obj[2:]


async def read_frame(reader: asyncio.StreamReader, max_size: int) -> bytes | None:
    """One frame body from a stream; None at a clean end. The length is checked first."""
    try:
        head = await reader.readexactly(HEADER)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise FrameError("truncated frame header") from None
        return None
    (n,) = struct.unpack(">I", head)
    if n > max_size:
        raise FrameError(f"frame of {n} bytes exceeds the limit of {max_size}")
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise FrameError("truncated frame") from None


def recv_frame(sock: socket.socket, max_size: int) -> bytes:
    """One frame body from a blocking socket (the client side); ConnectionError at EOF."""
    head = _recv_exactly(sock, HEADER)
    (n,) = struct.unpack(">I", head)
    if n > max_size:
        raise FrameError(f"frame of {n} bytes exceeds the limit of {max_size}")
    return _recv_exactly(sock, n)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the daemon closed the connection")
        got += k
    return bytes(buf)

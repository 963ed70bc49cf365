"""Two small patches to aioquic, applied once (idempotently) when meshcache.transport.quic loads.

1. STREAM frame length (a bug, present in aioquic 1.7.2): `QuicConnection._write_stream_frame`
   writes the frame's Length as a 2-byte varint (`push_uint16(len | 0x4000)`), which holds at
   most 16383. With `max_datagram_size` above ~16 KB (65000 on loopback, 8952 is still fine) a
   STREAM frame carries more and the length is corrupted: the peer closes the connection with
   FRAME_ENCODING_ERROR, or `push_uint16` raises. The replacement below is upstream's method
   with the Length written as a 4-byte varint when the frame may exceed 16383 bytes.
   To drop: once `stream_frame_length_is_fixed()` is True on an unpatched aioquic (the test
   checks it), delete `_patch_stream_frame` and its call.

2. Stream send buffer (performance, optional): `QuicStreamSender` keeps unacknowledged data in
   one bytearray, copies every write into it, copies each frame out twice
   (`bytes(bytearray[a:b])`) and trims the front on every ACK, which CPython implements by
   re-allocating and copying the rest whenever the buffer halves (fresh mmap'd memory: page
   faults). The replacement keeps the written `bytes` objects themselves (no copy on write)
   and slices each frame from them once. Same semantics, same attributes for the rest of
   aioquic. `apply(send_buffer=False)` leaves it out.

3. TLS exporter (a missing feature): aioquic's TLS has no RFC 8446 section 7.5 exporter, which
   authentication needs for channel binding (exporter.py, shared with qh3). We wrap `tls.Context._setup_traffic_protection`
   to derive `exporter_master_secret` = Derive-Secret(master, "exp master", CH..server Finished)
   at the one moment both ends hold exactly that transcript (when "s ap traffic" is derived), and
   `export_keying_material(tls, label, context, length)` implements TLS-Exporter on top.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import aioquic
from aioquic import tls
from aioquic.buffer import Buffer, size_uint_var
from aioquic.quic import connection as _conn
from aioquic.quic.packet import QuicFrameType
from cryptography.hazmat.primitives import hashes

from meshcache.transport import exporter

_PATCHED = "_meshcache_patched"
AIOQUIC_VERSION = aioquic.__version__


# ---- 1. STREAM frame length -------------------------------------------------------------------------


def _write_stream_frame(self: Any, builder: Any, space: Any, stream: Any, max_offset: int) -> int:
    # Same as aioquic 1.7.2's method, except the Length field: 2 bytes when the frame data
    # cannot exceed 16383 bytes, else 4 bytes (varints hold up to 2**30 - 1 in 4 bytes).
    header = 1 + size_uint_var(stream.stream_id) + (
        size_uint_var(stream.sender.next_offset) if stream.sender.next_offset else 0)
    room = builder.remaining_flight_space
    length_size = 2 if room - header - 2 <= 0x3FFF else 4
    frame_overhead = header + length_size
    previous_send_highest = stream.sender.highest_offset
    frame = stream.sender.get_frame(room - frame_overhead, max_offset)

    if frame is not None:
        frame_type = QuicFrameType.STREAM_BASE | 2  # length
        if frame.offset:
            frame_type |= 4
        if frame.fin:
            frame_type |= 1
        buf = builder.start_frame(
            frame_type,
            capacity=frame_overhead,
            handler=stream.sender.on_data_delivery,
            handler_args=(frame.offset, frame.offset + len(frame.data), frame.fin),
        )
        buf.push_uint_var(stream.stream_id)
        if frame.offset:
            buf.push_uint_var(frame.offset)
        if length_size == 2:
            buf.push_uint16(len(frame.data) | 0x4000)
        else:
            buf.push_uint32(len(frame.data) | 0x80000000)
        buf.push_bytes(frame.data)

        if self._quic_logger is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_stream_frame(frame, stream_id=stream.stream_id))

        return stream.sender.highest_offset - previous_send_highest
    return 0


def stream_frame_length_is_fixed(cls: Any = None) -> bool:
    """Whether `QuicConnection._write_stream_frame` (default: the current one) writes a correct
    Length for a frame of 20000 bytes. Drives the real method with a minimal builder stand-in."""
    from aioquic.quic.stream import QuicStream

    cls = cls or _conn.QuicConnection
    size = 20000

    class _Builder:
        remaining_flight_space = size + 64
        quic_logger_frames: list[Any] = []

        def __init__(self) -> None:
            self.buf = Buffer(capacity=size + 128)

        def start_frame(self, frame_type: int, capacity: int = 1, handler: Any = None,
                        handler_args: Any = ()) -> Buffer:
            self.buf.push_uint_var(frame_type)
            return self.buf

    class _Self:
        _quic_logger = None

    stream = QuicStream(stream_id=0, max_stream_data_local=1 << 20,
                        max_stream_data_remote=1 << 20)
    stream.sender.write(b"x" * size)
    builder = _Builder()
    try:
        cls._write_stream_frame(_Self(), builder, None, stream, 1 << 20)
    except Exception:  # push_uint16 of a value > 0xFFFF raises
        return False
    raw = builder.buf.data
    data = Buffer(data=raw)
    data.pull_uint_var()  # type
    data.pull_uint_var()  # stream id
    length = data.pull_uint_var()
    return length == len(raw) - data.tell() and length > 0x3FFF


def _patch_stream_frame() -> None:
    cls = _conn.QuicConnection
    if getattr(cls._write_stream_frame, _PATCHED, False):
        return
    if stream_frame_length_is_fixed(cls):
        return  # upstream fixed it: nothing to do
    setattr(_write_stream_frame, _PATCHED, True)
    cls._write_stream_frame = _write_stream_frame


# ---- 2. stream send buffer ---------------------------------------------------------------------------


def _sender_write(self: Any, data: bytes, end_stream: bool = False) -> None:
    if self._buffer_fin is not None:
        raise RuntimeError("Cannot send data after FIN")
    if self._reset_error_code is not None:
        raise RuntimeError("Cannot send data after the stream was reset")
    size = len(data)
    if size:
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer
        chunks = self.__dict__.get("_mc_chunks")
        if chunks is None:
            chunks = self._mc_chunks = []
            self._mc_starts = []
            self._mc_head = 0
            self._buffer = None  # the bytearray is not used any more
        self.buffer_is_empty = False
        self._pending.add(self._buffer_stop, self._buffer_stop + size)
        chunks.append(data)
        self._mc_starts.append(self._buffer_stop)
        self._buffer_stop += size
    if end_stream:
        self.buffer_is_empty = False
        self._buffer_fin = self._buffer_stop
        self._pending_eof = True


def _sender_slice(self: Any, start: int, stop: int) -> bytes:
    chunks, starts = self._mc_chunks, self._mc_starts
    i = bisect_right(starts, start, self._mc_head) - 1
    base = starts[i]
    chunk = chunks[i]
    if stop - base <= len(chunk):
        if start == base and stop - base == len(chunk):
            return chunk
        return chunk[start - base:stop - base]
    parts = []
    pos = start
    while pos < stop:
        chunk, base = chunks[i], starts[i]
        end = min(len(chunk), stop - base)
        parts.append(chunk[pos - base:end])
        pos = base + end
        i += 1
    return b"".join(parts)


def _sender_get_frame(self: Any, max_size: int, max_offset: int | None = None) -> Any:
    # aioquic 1.7.2's get_frame; only the data extraction differs
    from aioquic.quic.packet import QuicStreamFrame

    assert self._reset_error_code is None, "cannot call get_frame() after reset()"
    if max_size < 0:
        return None
    try:
        r = self._pending[0]
    except IndexError:
        if self._pending_eof:
            self._pending_eof = False
            return QuicStreamFrame(fin=True, offset=self._buffer_fin)
        self.buffer_is_empty = True
        return None
    start = r.start
    stop = min(r.stop, start + max_size)
    if max_offset is not None and stop > max_offset:
        stop = max_offset
    if stop <= start:
        return None
    frame = QuicStreamFrame(data=_sender_slice(self, start, stop), offset=start)
    self._pending.subtract(start, stop)
    if stop > self.highest_offset:
        self.highest_offset = stop
    if self._buffer_fin == stop:
        frame.fin = True
        self._pending_eof = False
    return frame


def _sender_on_data_delivery(self: Any, delivery: Any, start: int, stop: int, fin: bool) -> None:
    # aioquic 1.7.2's on_data_delivery; acknowledged chunks are dropped instead of trimmed
    from aioquic.quic.packet_builder import QuicDeliveryState

    assert not fin or stop == self._buffer_fin, (
        "on_data_delivered() was called with inconsistent fin / stop")
    if self._reset_error_code is not None:
        return
    if delivery == QuicDeliveryState.ACKED:
        if stop > start:
            self._acked.add(start, stop)
            first_range = self._acked[0]
            if first_range.start == self._buffer_start:
                size = first_range.stop - first_range.start
                self._acked.shift()
                self._buffer_start += size
                _sender_drop_acked(self)
        if fin:
            self._acked_fin = True
        if self._buffer_start == self._buffer_fin and self._acked_fin:
            self.is_finished = True
    else:
        if stop > start:
            self.buffer_is_empty = False
            self._pending.add(start, stop)
        if fin:
            self.buffer_is_empty = False
            self._pending_eof = True


def _sender_drop_acked(self: Any) -> None:
    chunks = self.__dict__.get("_mc_chunks")
    if not chunks:
        return
    starts, head, acked = self._mc_starts, self._mc_head, self._buffer_start
    n = len(chunks)
    while head < n and starts[head] + len(chunks[head]) <= acked:
        chunks[head] = b""
        head += 1
    if head == n:
        chunks.clear()
        starts.clear()
        head = 0
    elif head > 64:
        del chunks[:head]
        del starts[:head]
        head = 0
    self._mc_head = head


def _patch_send_buffer() -> None:
    from aioquic.quic.stream import QuicStreamSender

    if getattr(QuicStreamSender.write, _PATCHED, False):
        return
    for name, fn in (("write", _sender_write), ("get_frame", _sender_get_frame),
                     ("on_data_delivery", _sender_on_data_delivery)):
        setattr(fn, _PATCHED, True)
        setattr(QuicStreamSender, name, fn)


# ---- 3. TLS exporter ----------------------------------------------------------------------------------


def _patch_exporter() -> None:
    exporter.patch(tls.Context)


def _digest(algorithm: Any, data: bytes) -> bytes:
    h = hashes.Hash(type(algorithm)())
    h.update(data)
    return h.finalize()


def export_keying_material(context: Any, label: bytes, context_value: bytes = b"",
                           length: int = 32) -> bytes:
    """RFC 8446 section 7.5 TLS-Exporter(label, context_value, length) for an aioquic
    `tls.Context` whose handshake reached the application keys."""
    return exporter.export(context, label, context_value, length,
                           hkdf_expand_label=tls.hkdf_expand_label, digest=_digest)


def apply(send_buffer: bool = True) -> None:
    """Apply the patches (idempotent)."""
    _patch_stream_frame()
    if send_buffer:
        _patch_send_buffer()
    _patch_exporter()

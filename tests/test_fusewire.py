"""The FUSE protocol codec: requests bounded by their header, arguments by their struct; replies
laid out as the kernel reads them."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcache.core import fusewire as fw


def request(opcode: int, arg: bytes, *, unique: int = 7, nodeid: int = 1,
            length: int | None = None) -> bytes:
    total = fw.IN_HEADER.size + len(arg) if length is None else length
    return fw.IN_HEADER.pack(total, opcode, unique, nodeid, 1000, 1000, 42, 0, 0) + arg


def test_struct_sizes_match_the_kernel_header():
    # include/uapi/linux/fuse.h
    assert (fw.IN_HEADER.size, fw.OUT_HEADER.size, fw.INIT_OUT.size, fw.ATTR.size) == \
        (40, 16, 64, 88)
    assert (fw.ENTRY_OUT_HEAD.size + fw.ATTR.size, fw.ATTR_OUT_HEAD.size + fw.ATTR.size) == \
        (128, 104)
    assert (fw.OPEN_OUT.size, fw.STATFS_OUT.size, fw.BACKING_MAP.size) == (16, 80, 16)
    assert (fw.IOC_BACKING_OPEN, fw.IOC_BACKING_CLOSE) == (0x4010E501, 0x4004E502)


@given(st.integers(1, 60), st.binary(max_size=200), st.integers(0, 2**64 - 1))
def test_a_request_parses_to_its_fields(opcode, arg, unique):
    req = fw.parse_request(memoryview(request(opcode, arg, unique=unique) + b"junk"))
    assert (req.opcode, req.unique, req.nodeid, req.pid, bytes(req.arg)) == \
        (opcode, unique, 1, 42, arg)


@given(st.binary(max_size=fw.IN_HEADER.size - 1))
def test_a_short_request_is_refused(raw):
    with pytest.raises(fw.FuseWireError):
        fw.parse_request(memoryview(raw))


@given(st.integers(0, 1 << 20))
def test_a_length_past_the_bytes_read_is_refused(extra):
    raw = request(fw.LOOKUP, b"name\0", length=fw.IN_HEADER.size + 5 + extra + 1)
    with pytest.raises(fw.FuseWireError):
        fw.parse_request(memoryview(raw))


@pytest.mark.parametrize("parse", [fw.parse_read, fw.parse_release, fw.parse_open,
                                   fw.parse_init])
def test_a_short_argument_is_refused(parse):
    with pytest.raises(fw.FuseWireError):
        parse(memoryview(b"\0\0\0"))


def test_batch_forget_is_bounded_by_its_bytes():
    arg = fw.BATCH_FORGET_IN.pack(3, 0) + fw.FORGET_ONE.pack(5, 1) + fw.FORGET_ONE.pack(6, 2)
    with pytest.raises(fw.FuseWireError):
        fw.parse_forgets(fw.BATCH_FORGET, 0, memoryview(arg))
    arg += fw.FORGET_ONE.pack(7, 3)
    assert fw.parse_forgets(fw.BATCH_FORGET, 0, memoryview(arg)) == [(5, 1), (6, 2), (7, 3)]
    assert fw.parse_forgets(fw.FORGET, 9, memoryview(fw.FORGET_IN.pack(4))) == [(9, 4)]


def test_init_reads_flags2_and_the_reply_splits_them():
    flags = fw.INIT_EXT | fw.ASYNC_READ | fw.PASSTHROUGH
    arg = fw.INIT_IN.pack(7, 41, 131072, flags & 0xFFFFFFFF) + struct.pack("<I", flags >> 32)
    init = fw.parse_init(memoryview(arg + bytes(44)))
    assert (init.major, init.minor, init.flags) == (7, 41, flags)
    out = fw.INIT_OUT.unpack(fw.init_reply(minor=40, max_readahead=1 << 20, flags=flags,
                                           max_write=1 << 17, max_pages=256, max_stack_depth=1))
    assert out[:4] == (7, 40, 1 << 20, flags & 0xFFFFFFFF)
    assert (out[6], out[8], out[10], out[11]) == (1 << 17, 256, flags >> 32, 1)


def test_a_name_needs_its_nul():
    assert fw.parse_name(memoryview("wéights.bin\0".encode())) == "wéights.bin"
    with pytest.raises(fw.FuseWireError):
        fw.parse_name(memoryview(b"x" * 2000))


names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=40)


@given(st.lists(names, max_size=30, unique=True), st.integers(0, 35), st.integers(24, 2000))
def test_dirents_resume_where_the_last_reply_ended(names_, offset, size):
    entries = [(i + 2, n, fw.DT_REG) for i, n in enumerate(names_)]
    got, off = [], offset
    while True:
        raw = fw.dirents(entries, off, size)
        assert len(raw) <= size and len(raw) % 8 == 0
        if not raw:
            break
        pos = 0
        while pos < len(raw):
            ino, nxt, n, dtype = fw.DIRENT_HEAD.unpack_from(raw, pos)
            name = raw[pos + 24:pos + 24 + n].decode("utf-8", "surrogateescape")
            got.append((ino, name, dtype))
            pos += (24 + n + 7) & ~7
            off = nxt
    assert got == entries[offset:] or (not got and all(
        24 + len(n.encode()) > size for _, n, _ in entries[offset:offset + 1]))


def test_attr_and_entry_replies():
    attr = fw.Attr(5, fw.S_IFREG | 0o444, 1000, 1_700_000_000_123_456_789, 1, 0, 0)
    fields = fw.ATTR.unpack(attr.pack())
    assert fields[:6] == (5, 1000, 2, 1_700_000_000, 1_700_000_000, 1_700_000_000)
    assert fields[6] == 123_456_789 and fields[9] == fw.S_IFREG | 0o444
    head = fw.ENTRY_OUT_HEAD.unpack_from(fw.entry_reply(attr, 1.5))
    assert head == (5, 0, 1, 1, 500_000_000, 500_000_000)
    assert fw.ENTRY_OUT_HEAD.unpack_from(fw.negative_entry_reply(1.0))[:3] == (0, 0, 1)
    assert fw.OUT_HEADER.unpack(fw.reply_header(9, 100, 2)) == (116, -2, 9)

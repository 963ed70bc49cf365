"""The FUSE kernel protocol (7.x, the subset a read-only filesystem speaks): request headers and
arguments decoded, replies encoded. Pure: no I/O; `meshcache.surfaces.fusedev` moves the bytes.

Layouts are the kernel's `include/uapi/linux/fuse.h` (little-endian on every Linux FUSE runs
on here); each request is bounded by the length in its header, and an argument shorter than its
struct is a `FuseWireError`, never a partial decode.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

MAJOR = 7
MINOR = 40  # passthrough (FUSE_DEV_IOC_BACKING_OPEN, FOPEN_PASSTHROUGH) arrived in 7.40

# opcodes
LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 14, 15, 17, 18
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 22, 23, 25, 26, 27, 28, 29
ACCESS, INTERRUPT, DESTROY, BATCH_FORGET, READDIRPLUS, LSEEK, STATX = 34, 36, 38, 42, 44, 46, 52
NO_REPLY = frozenset({FORGET, BATCH_FORGET, INTERRUPT})
NAMES = {v: k for k, v in dict(
    LOOKUP=LOOKUP, FORGET=FORGET, GETATTR=GETATTR, OPEN=OPEN, READ=READ, STATFS=STATFS,
    RELEASE=RELEASE, GETXATTR=GETXATTR, LISTXATTR=LISTXATTR, FLUSH=FLUSH, INIT=INIT,
    OPENDIR=OPENDIR, READDIR=READDIR, RELEASEDIR=RELEASEDIR, ACCESS=ACCESS, INTERRUPT=INTERRUPT,
    DESTROY=DESTROY, BATCH_FORGET=BATCH_FORGET, READDIRPLUS=READDIRPLUS, LSEEK=LSEEK,
    STATX=STATX).items()}

# INIT flags (flags | flags2 << 32)
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
INIT_EXT = 1 << 30
DIRECT_IO_ALLOW_MMAP = 1 << 36
PASSTHROUGH = 1 << 37

# open_flags of an OPEN reply
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_PASSTHROUGH = 1 << 7

# ioctls on /dev/fuse: _IOW(229, 1, struct fuse_backing_map), _IOW(229, 2, uint32_t)
IOC_BACKING_OPEN = (1 << 30) | (16 << 16) | (229 << 8) | 1
IOC_BACKING_CLOSE = (1 << 30) | (4 << 16) | (229 << 8) | 2
BACKING_MAP = struct.Struct("<iIQ")  # fd, flags, padding

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
OUT_HEADER = struct.Struct("<IiQ")  # len, error (negative errno), unique
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags (flags2 follows from 7.36)
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # ... flags2, max_stack_depth, unused
READ_IN = struct.Struct("<QQII")  # fh, offset, size, read_flags (lock_owner, flags follow)
RELEASE_IN = struct.Struct("<Q")  # fh (flags, release_flags, lock_owner follow)
OPEN_IN = struct.Struct("<I")  # flags (open_flags follows)
GETATTR_IN = struct.Struct("<IIQ")  # getattr_flags, dummy, fh
FORGET_IN = struct.Struct("<Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("<II")  # count, dummy; then count x FORGET_ONE
FORGET_ONE = struct.Struct("<QQ")  # nodeid, nlookup
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # ino, size, blocks, a/m/ctime, nsecs, mode, ...
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")  # nodeid, generation, entry/attr valid (s, ns)
ATTR_OUT_HEAD = struct.Struct("<QII")  # attr_valid, attr_valid_nsec, dummy
OPEN_OUT = struct.Struct("<QIi")  # fh, open_flags, backing_id
STATFS_OUT = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize namelen frsize
DIRENT_HEAD = struct.Struct("<QQII")  # ino, off (of the next entry), namelen, type

S_IFDIR, S_IFREG = 0o040000, 0o100000
DT_DIR, DT_REG = 4, 8


class FuseWireError(ValueError):
    """A request that does not parse: shorter than its header or its argument."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request from the kernel: its header fields and its argument bytes."""

    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    arg: memoryview


def parse_request(buf: memoryview) -> Request:
    """Decode one request as read from /dev/fuse (one read returns exactly one request)."""
    if len(buf) < IN_HEADER.size:
        raise FuseWireError(f"request of {len(buf)} bytes is shorter than its header")
    length, opcode, unique, nodeid, uid, gid, pid, _ext, _pad = IN_HEADER.unpack_from(buf)
    if length < IN_HEADER.size or length > len(buf):
        raise FuseWireError(f"request length {length} does not match the {len(buf)} bytes read")
    return Request(opcode, unique, nodeid, uid, gid, pid, buf[IN_HEADER.size:length])


def _unpack(s: struct.Struct, arg: memoryview) -> tuple[int, ...]:
    if len(arg) < s.size:
        raise FuseWireError(f"argument of {len(arg)} bytes, expected {s.size}")
    return s.unpack_from(arg)


@dataclass(frozen=True, slots=True)
class Init:
    major: int
    minor: int
    max_readahead: int
    flags: int  # flags | flags2 << 32


def parse_init(arg: memoryview) -> Init:
    major, minor, readahead, flags = _unpack(INIT_IN, arg)
    if (major, minor) >= (7, 36) and len(arg) >= INIT_IN.size + 4 and flags & INIT_EXT:
        flags |= struct.unpack_from("<I", arg, INIT_IN.size)[0] << 32
    return Init(major, minor, readahead, flags)


def init_reply(*, minor: int, max_readahead: int, flags: int, max_write: int, max_pages: int,
               max_background: int = 16, max_stack_depth: int = 0) -> bytes:
    """The INIT reply: the protocol minor this server speaks (<= the kernel's), the features it
    wants (`flags`, a subset of what the kernel offered) and its limits."""
    return INIT_OUT.pack(MAJOR, minor, max_readahead, flags & 0xFFFFFFFF, max_background,
                         max_background * 3 // 4, max_write, 1, max_pages, 0, flags >> 32,
                         max_stack_depth)


def parse_name(arg: memoryview) -> str:
    """A LOOKUP's name (NUL-terminated, at most 1,024 bytes: the kernel allows 255)."""
    raw = bytes(arg[:1025])
    end = raw.find(b"\0")
    if end < 0:
        raise FuseWireError("name without its terminating NUL")
    return raw[:end].decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class ReadIn:
    fh: int
    offset: int
    size: int


def parse_read(arg: memoryview) -> ReadIn:
    fh, offset, size, _flags = _unpack(READ_IN, arg)
    return ReadIn(fh, offset, size)


def parse_release(arg: memoryview) -> int:
    """The file handle a RELEASE / RELEASEDIR ends."""
    return _unpack(RELEASE_IN, arg)[0]


def parse_open(arg: memoryview) -> int:
    """The open(2) flags of an OPEN / OPENDIR."""
    return _unpack(OPEN_IN, arg)[0]


def parse_forgets(opcode: int, nodeid: int, arg: memoryview) -> list[tuple[int, int]]:
    """(nodeid, nlookup) pairs of a FORGET or BATCH_FORGET."""
    if opcode == FORGET:
        return [(nodeid, _unpack(FORGET_IN, arg)[0])]
    count, _ = _unpack(BATCH_FORGET_IN, arg)
    if len(arg) < BATCH_FORGET_IN.size + count * FORGET_ONE.size:
        raise FuseWireError(f"BATCH_FORGET of {count} entries in {len(arg)} bytes")
    return [FORGET_ONE.unpack_from(arg, BATCH_FORGET_IN.size + i * FORGET_ONE.size)
            for i in range(count)]


@dataclass(frozen=True, slots=True)
class Attr:
    """What getattr reports of an inode."""

    ino: int
    mode: int
    size: int = 0
    mtime_ns: int = 0
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    blksize: int = 1 << 20

    def pack(self) -> bytes:
        s, ns = divmod(self.mtime_ns, 1_000_000_000)
        return ATTR.pack(self.ino, self.size, (self.size + 511) // 512, s, s, s, ns, ns, ns,
                         self.mode, self.nlink, self.uid, self.gid, 0, self.blksize, 0)


def _valid(seconds: float) -> tuple[int, int]:
    s = max(0.0, seconds)
    return int(s), int((s - int(s)) * 1e9)


def entry_reply(attr: Attr, ttl: float) -> bytes:
    s, ns = _valid(ttl)
    return ENTRY_OUT_HEAD.pack(attr.ino, 0, s, s, ns, ns) + attr.pack()


def negative_entry_reply(ttl: float) -> bytes:
    """A LOOKUP answer meaning "no such name", cached by the kernel for `ttl` seconds."""
    s, ns = _valid(ttl)
    return ENTRY_OUT_HEAD.pack(0, 0, s, 0, ns, 0) + bytes(ATTR.size)


def attr_reply(attr: Attr, ttl: float) -> bytes:
    s, ns = _valid(ttl)
    return ATTR_OUT_HEAD.pack(s, ns, 0) + attr.pack()


def open_reply(fh: int, open_flags: int = 0, backing_id: int = 0) -> bytes:
    return OPEN_OUT.pack(fh, open_flags, backing_id)


def statfs_reply(*, bsize: int, namelen: int = 255) -> bytes:
    return STATFS_OUT.pack(0, 0, 0, 0, 0, bsize, namelen, bsize, 0)


def dirents(entries: Iterable[tuple[int, str, int]], offset: int, size: int) -> bytes:
    """READDIR's answer: the entries (ino, name, DT_ type) from index `offset` on, as many as
    fit in `size` bytes; each entry's `off` is the index of the one after it."""
    out = bytearray()
    for i, (ino, name, dtype) in enumerate(entries):
        if i < offset:
            continue
        raw = name.encode("utf-8", "surrogateescape")
        rec = DIRENT_HEAD.pack(ino, i + 1, len(raw), dtype) + raw
        rec += bytes(-len(rec) % 8)
        if len(out) + len(rec) > size:
            break
        out += rec
    return bytes(out)


def reply_header(unique: int, payload_len: int, error: int = 0) -> bytes:
    """The header of a reply: `error` is a positive errno (sent negated) or 0."""
    return OUT_HEADER.pack(OUT_HEADER.size + payload_len, -error, unique)


def backing_map(fd: int) -> bytes:
    """The argument of FUSE_DEV_IOC_BACKING_OPEN for the backing file `fd`."""
    return BACKING_MAP.pack(fd, 0, 0)

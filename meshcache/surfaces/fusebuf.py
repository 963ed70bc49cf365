"""Replies to libfuse's `read_buf` (ctypes): a read answered with file descriptors, which libfuse
splices from the block files' page cache to /dev/fuse (no copy through Python), or with bytes
in a malloc'd buffer that libfuse frees after sending.

The struct layouts are libfuse 3.0-3.16's (`fuse_common.h`; Debian 12 ships 3.14), so
`SUPPORTED` is false elsewhere and the mount answers with `read` instead.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import threading
from typing import Any, Callable, Sequence

import mfusepy

SUPPORTED = mfusepy.fuse_version_major == 3 and mfusepy.fuse_version_minor < 17
FUSE_CAP_SPLICE_WRITE = 1 << 7  # libfuse may splice a reply's descriptors to /dev/fuse
_IS_FD, _FD_SEEK, _FD_RETRY = 1 << 1, 1 << 2, 1 << 3  # enum fuse_buf_flags
_VEC = struct.Struct("@nnn")  # struct fuse_bufvec: count, idx, off, then buf[count]
_BUF = struct.Struct("@niPiq")  # struct fuse_buf: size, flags, mem, fd, pos
_F_SETPIPE_SZ = 1031
_PAGE = os.sysconf("SC_PAGE_SIZE")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.restype = None
_libc.free.argtypes = [ctypes.c_void_p]
_memory = ctypes.pythonapi.PyMemoryView_FromMemory
_memory.restype = ctypes.py_object
_memory.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
_PyBUF_WRITE = 0x200
_gil_ensure = ctypes.pythonapi.PyGILState_Ensure
_gil_ensure.restype = ctypes.c_int


def fd_reply(bufpp: Any, spans: Sequence[tuple[int, int, int]]) -> None:
    """Answer with (fd, pos, n) spans, read by libfuse after the callback returns (so each fd
    must stay open until this thread's next request)."""
    if not spans:
        _set(bufpp, _VEC.pack(1, 0, 0) + _BUF.pack(0, 0, 0, -1, 0))
        return
    flags = _IS_FD | _FD_SEEK | _FD_RETRY
    _set(bufpp, _VEC.pack(len(spans), 0, 0)
         + b"".join(_BUF.pack(n, flags, 0, fd, pos) for fd, pos, n in spans))


def mem_reply(bufpp: Any, size: int, fill: Callable[[memoryview], int]) -> None:
    """Answer with bytes `fill(view)` writes into a malloc'd buffer of `size` bytes (it returns
    how many); libfuse frees the buffer."""
    mem = _malloc(max(size, 1))
    try:
        n = fill(_memory(mem, size, _PyBUF_WRITE))
        _set(bufpp, _VEC.pack(1, 0, 0) + _BUF.pack(n, 0, mem, -1, 0))
    except BaseException:
        _libc.free(mem)
        raise


def _set(bufpp: Any, vec: bytes) -> None:
    addr = _malloc(len(vec))
    ctypes.memmove(addr, vec, len(vec))
    ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = addr


def _malloc(n: int) -> int:
    addr = _libc.malloc(n)
    if not addr:
        raise mfusepy.FuseOSError(ctypes.get_errno() or 12)  # ENOMEM
    return addr


def splice_request_size(prefer: int) -> int:
    """The largest power of two <= `prefer` whose reply fits a pipe this process may make.

    libfuse splices a reply through a pipe sized for the data plus a few pages; past
    /proc/sys/fs/pipe-max-size (1 MiB by default) that needs CAP_SYS_RESOURCE, and without it
    libfuse copies every larger reply through a buffer instead (two copies more).
    """
    size = prefer
    r, w = os.pipe()
    try:
        while size > 64 * 1024:
            try:
                fcntl.fcntl(r, _F_SETPIPE_SZ, size + 4 * _PAGE)
                break
            except OSError:
                size //= 2
    finally:
        os.close(r)
        os.close(w)
    return size


_kept: set[int] = set()
_kept_lock = threading.Lock()


def keep_thread_state() -> None:
    """Keep the calling libfuse thread's Python thread state between callbacks.

    ctypes makes a thread state for each callback from a thread Python did not start and
    deletes it on return (an allocation, an mmap/munmap of its frame stack, a gettid: per
    request). One extra PyGILState_Ensure, never released, keeps it for the thread's life.
    """
    ident = threading.get_ident()
    if ident in _kept:
        return
    with _kept_lock:
        if ident not in _kept:
            _kept.add(ident)
            _gil_ensure()

"""A read-only FUSE mount of an origin URL prefix, read through the cache (mfusepy over libfuse3).

Directory listings come from the origin through fsspec and are cached for `metadata_ttl`; a file
opened here is a Reader over the object version current at open, so sequential reads get the
node's readahead and hot blocks are read straight from their block files. Files are opened with
`keep_cache` while their version is unchanged, so rereads are served from the kernel's page
cache. Reads of hot blocks are answered with the block files' descriptors, which libfuse splices
to the kernel (meshcache.surfaces.fusebuf). A missing object is ENOENT; an origin failure is EIO
and a log line naming the URL.
`meshcache mount` passes the host's daemon (DaemonNode) as the node where one serves the cache
directory, so the mount reads through it; the operations use only what both node kinds offer.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
import time
from typing import Any, Callable, Mapping, TypeVar

import mfusepy

from meshcache.read.node import Node
from meshcache.read.origin import ObjectNotFound, OriginError
from meshcache.read.reader import Reader
from meshcache.read.store import StoreError
from meshcache.surfaces import fusebuf
from meshcache.surfaces.listing import Listing

log = logging.getLogger("meshcache.surfaces.fuse")
T = TypeVar("T")

# libfuse worker threads; idle ones are kept (libfuse 3.14 otherwise starts a thread per
# request, and each new thread costs a Python thread state: 3x slower reads).
MAX_THREADS = 16
MAX_READ = 1 << 20  # bytes one FUSE read request may ask for (fewer requests, less overhead)
# The kernel's readahead window on the mount: several requests in flight, so libfuse's threads
# fill the next ones while the reader copies (the kernel's default is 128 KiB).
READAHEAD = 4 << 20


class MeshcacheFuse(mfusepy.Operations):
    """The FUSE operations: getattr, readdir, open, read, release, statfs (read-only)."""

    use_ns = True

    def __init__(self, node: Node, prefix: str, options: Mapping[str, Any] | None = None,
                 *, max_read: int = MAX_READ) -> None:
        self.node = node
        self.max_read = max_read
        self.options = dict(options or {})
        self.listing = Listing(prefix, self.options, node.config.metadata_ttl)
        self.prefix = self.listing.prefix
        self._handles: dict[int, Reader] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._next = itertools.count(1)
        self._opened: dict[str, bytes] = {}  # path -> version key last opened (keep_cache)
        self._lock = threading.Lock()
        self._leased: dict[int, list[tuple[bytes, int]]] = {}  # thread -> its reply's leases
        self._uid, self._gid = os.getuid(), os.getgid()
        self._mounted_at = time.time()
        self.mounted = False  # set once libfuse has mounted and called init

    # ---- metadata ----------------------------------------------------------------------------

    def _dir_attrs(self, mtime: float) -> dict[str, Any]:
        ns = int((mtime or self._mounted_at) * 1e9)
        return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_uid": self._uid,
                "st_gid": self._gid, "st_mtime": ns, "st_ctime": ns, "st_atime": ns}

    def _file_attrs(self, size: int, mtime: float) -> dict[str, Any]:
        ns = int((mtime or self._mounted_at) * 1e9)
        return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size,
                "st_uid": self._uid, "st_gid": self._gid, "st_blocks": (size + 511) // 512,
                "st_blksize": 1 << 20, "st_mtime": ns, "st_ctime": ns, "st_atime": ns}

    def _listed(self, ask: Callable[[], T], rel_dir: str) -> T:
        """Run a listing lookup: a missing directory is ENOENT, an origin failure EIO + log."""
        try:
            return ask()
        except ObjectNotFound:
            raise mfusepy.FuseOSError(errno.ENOENT) from None
        except OriginError as e:
            log.error("listing %s failed: %s", self.listing.url(rel_dir), e)
            raise mfusepy.FuseOSError(errno.EIO) from None

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        rel = path.strip("/")
        if not rel:
            return self._dir_attrs(0)
        item = self._listed(lambda: self.listing.item(rel), rel.rpartition("/")[0])
        if item is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        if item.is_dir:
            return self._dir_attrs(item.mtime)
        size = item.size if item.size >= 0 else self._stat_size(rel)
        return self._file_attrs(size, item.mtime)

    def _stat_size(self, rel: str) -> int:
        """The size from the origin's stat (cached by the node) when the listing lacks it."""
        url = self.listing.url(rel)
        try:
            return self.node.version(url, self.options).size
        except ObjectNotFound:
            raise mfusepy.FuseOSError(errno.ENOENT) from None
        except OriginError as e:
            log.error("stat %s: %s", url, e)
            raise mfusepy.FuseOSError(errno.EIO) from None

    def readdir(self, path: str, fh: Any) -> list[str]:
        rel = path.strip("/")
        names = [item.path.rpartition("/")[2]
                 for item in self._listed(lambda: self.listing.list(rel), rel)]
        return [".", ".."] + sorted(n for n in names if n)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 1 << 20, "f_frsize": 1 << 20, "f_blocks": 0, "f_bfree": 0,
                "f_bavail": 0, "f_namemax": 255}

    # ---- files -------------------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        url = self.listing.url(path.strip("/"))
        try:
            reader = Reader(self.node, url, self.options)
        except ObjectNotFound:
            raise mfusepy.FuseOSError(errno.ENOENT) from None
        except (OriginError, StoreError) as e:
            log.error("open %s: %s", url, e)
            raise mfusepy.FuseOSError(errno.EIO) from None
        fh = next(self._next)
        with self._lock:
            self._handles[fh] = reader
            self._locks[fh] = threading.Lock()
            same = self._opened.get(path) == reader.version.key
            self._opened[path] = reader.version.key
        fi.fh = fh
        fi.keep_cache = 1 if same else 0  # a new version drops the kernel's old pages
        return 0

    def _handle(self, fi: Any) -> tuple[Reader, threading.Lock]:
        with self._lock:
            reader, lock = self._handles.get(fi.fh), self._locks.get(fi.fh)
        if reader is None or lock is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return reader, lock

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        """Bytes copied through Python (libfuse versions whose read_buf layout is unknown)."""
        reader, lock = self._handle(fi)
        try:
            with lock:
                if reader.tell() != offset:
                    reader.seek(offset)
                return reader.read(size)
        except (OriginError, StoreError) as e:
            log.error("read %s bytes %d-%d: %s", reader.url, offset, offset + size, e)
            raise mfusepy.FuseOSError(errno.EIO) from None

    def _read_buf(self, path: str, bufpp: Any, size: int, offset: int, fi: Any) -> int:
        """A read answered with the block files' descriptors (leased from the store until this
        thread's next request: libfuse reads them after we return); bytes not in a block file
        go in a buffer libfuse frees."""
        fusebuf.keep_thread_state()
        self._unlease()
        reader, lock = self._handle(fi)
        try:
            with lock:
                if reader.tell() != offset:
                    reader.seek(offset)
                spans = reader.lease(size)
                if spans is None:
                    fusebuf.mem_reply(bufpp, size, reader.readinto)
                    return 0
        except (OriginError, StoreError) as e:
            log.error("read %s bytes %d-%d: %s", reader.url, offset, offset + size, e)
            raise mfusepy.FuseOSError(errno.EIO) from None
        if spans:
            self._leased[threading.get_ident()] = [(d, fd) for d, fd, _, _ in spans]
        fusebuf.fd_reply(bufpp, [(fd, pos, n) for _, fd, pos, n in spans])
        return 0

    if fusebuf.SUPPORTED:
        read_buf = _read_buf  # libfuse prefers it to read

    def _unlease(self) -> None:
        """Release the leases of the calling thread's previous reply (sent by now)."""
        held = self._leased.pop(threading.get_ident(), None)
        if held:
            store = self.node.store
            for d, fd in held:
                store.close_block(d, fd)

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            reader = self._handles.pop(fi.fh, None)
            self._locks.pop(fi.fh, None)
        if reader is not None:
            reader.close()
        return 0

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        self.mounted = True
        if conn_info is not None:
            conn_info.max_readahead = READAHEAD
            conn_info.max_read = self.max_read  # must equal the max_read mount option
            if fusebuf.SUPPORTED and conn_info.capable & fusebuf.FUSE_CAP_SPLICE_WRITE:
                conn_info.want |= fusebuf.FUSE_CAP_SPLICE_WRITE
        if config_3 is not None:
            # Attributes and names are the origin's listing, itself cached for metadata_ttl.
            ttl = float(self.node.config.metadata_ttl)
            config_3.entry_timeout = ttl
            config_3.attr_timeout = ttl
            config_3.negative_timeout = min(ttl, 1.0)

    def destroy(self, path: str) -> None:
        with self._lock:
            readers = list(self._handles.values())
            self._handles.clear()
        for r in readers:
            r.close()
        store = self.node.store
        for held in list(self._leased.values()):
            for d, fd in held:
                store.close_block(d, fd)
        self._leased.clear()


def mount(node: Node, prefix: str, mountpoint: str, options: Mapping[str, Any] | None = None,
          *, debug: bool = False) -> None:
    """Serve `prefix` at `mountpoint` until unmounted (umount / fusermount3 -u) or SIGTERM /
    SIGINT (libfuse unmounts on both); blocks the calling (main) thread."""
    # Requests no larger than libfuse can splice (1 MiB with CAP_SYS_RESOURCE, else 512 KiB).
    max_read = fusebuf.splice_request_size(MAX_READ) if fusebuf.SUPPORTED else MAX_READ
    ops = MeshcacheFuse(node, prefix, options, max_read=max_read)
    threading.Thread(target=_widen_readahead, args=(mountpoint,), daemon=True,
                     name="meshcache-fuse-readahead").start()
    try:
        mfusepy.FUSE(ops, mountpoint, raw_fi=True, foreground=True, debug=debug, ro=True,
                     fsname="meshcache", subtype="meshcache", default_permissions=True,
                     max_read=max_read, max_threads=MAX_THREADS,
                     max_idle_threads=MAX_THREADS)
    except RuntimeError as e:
        # libfuse's loop reports a signal-ended session as an error (8) after unmounting.
        if not ops.mounted or os.path.ismount(mountpoint):
            raise
        log.info("%s unmounted (%s)", mountpoint, e)
    log.info("%s: unmounted", mountpoint)


def _widen_readahead(mountpoint: str, timeout: float = 30.0) -> None:
    """Let the kernel read READAHEAD bytes ahead on this mount once it is up.

    A FUSE mount's readahead window is the kernel's default (128 KiB) whatever the filesystem
    asks for at init (it can only lower it); each request costs thread wake-ups in two
    processes, so fewer, larger requests read faster (1 MiB requests: 1.6x on a loaded 2-core
    host), and a window of several requests lets libfuse's threads fill the next ones while the
    reader copies. Needs root (sysfs); best effort.
    """
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READAHEAD // 1024))
    except OSError as e:
        log.debug("cannot widen readahead of %s (%s): %s", mountpoint, path, e)

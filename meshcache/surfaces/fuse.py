"""A read-only FUSE mount of an origin URL prefix, read through the cache.

Directory listings come from the origin through fsspec and are cached for `metadata_ttl`; a file
opened here is a Reader over the object version current at open, so sequential reads get the
node's readahead. How the kernel reads an open file:
- passthrough (as root, on kernels with FUSE passthrough): once the mount has served an object
  whole, it keeps a view of it (meshcache.surfaces.fuseviews) and later opens hand the kernel
  that file, which it reads itself at local-disk speed, no request reaching this process;
- otherwise every read comes here: with passthrough on, straight into the reader's buffer
  (direct I/O: one copy, from the block files' mapped pages); without it, into the kernel's
  page cache, kept while the version is unchanged so rereads need no request.
A missing object is ENOENT; an origin failure is EIO and a log line naming the URL.
`meshcache mount` passes the host's daemon (DaemonNode) as the node where one serves the cache
directory, so the mount reads through it; the operations use only what both node kinds offer.
"""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
import stat
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from meshcache.core import fusewire as fw
from meshcache.core.version import ObjectVersion
from meshcache.read.origin import ObjectNotFound, OriginError
from meshcache.read.reader import Reader, ReaderBackend
from meshcache.read.store import StoreError
from meshcache.surfaces import fusedev
from meshcache.surfaces.fusedev import FuseError, Opened
from meshcache.surfaces.fuseviews import Views, views_dir
from meshcache.surfaces.listing import Listing

log = logging.getLogger("meshcache.surfaces.fuse")
T = TypeVar("T")

THREADS = 8  # request threads: reads of several files (or readahead requests) at once
MAX_READ = 1 << 20  # bytes one read request may ask for (the kernel's limit: 256 pages)
# The kernel's readahead window on the mount (page-cache mode): several requests in flight, so
# the threads fill the next ones while the reader copies (the kernel's default is 128 KiB).
READAHEAD = 4 << 20
_MAPS_PER_FILE = 8  # block files kept mapped per open file


@dataclass
class _Handle:
    """One open file: its reader (None when the kernel reads a view itself)."""

    ino: int
    reader: Reader | None
    options: Mapping[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)
    served: int = 0
    maps: OrderedDict[bytes, mmap.mmap] = field(default_factory=OrderedDict)
    # Leased bytes still to serve: (start, end, their bytes in a mapped block file).
    window: list[tuple[int, int, memoryview]] = field(default_factory=list)


@dataclass
class _InodeOpen:
    """The open files of one inode: a passthrough backing file is shared by all of them."""

    count: int = 0
    backing_id: int = 0
    version: ObjectVersion | None = None


class MeshcacheFuse:
    """The filesystem (meshcache.surfaces.fusedev.Filesystem): lookup, getattr, readdir, open,
    read, release."""

    def __init__(self, node: ReaderBackend, prefix: str, options: Mapping[str, Any] | None = None,
                 *, device: fusedev.Device | None = None, views: Views | None = None,
                 max_read: int = MAX_READ) -> None:
        self.node = node
        self.options = dict(options or {})
        self.listing = Listing(prefix, self.options, node.config.metadata_ttl)
        self.prefix = self.listing.prefix
        self.device = device
        self.views = views
        self.max_read = max_read
        self._paths: dict[int, str] = {1: ""}
        self._inos: dict[str, int] = {"": 1}
        self._nlookup: dict[int, int] = {}
        self._next_ino = itertools.count(2)
        self._handles: dict[int, _Handle] = {}
        self._next_fh = itertools.count(1)
        self._open: dict[int, _InodeOpen] = {}
        self._opened: dict[str, bytes] = {}  # path -> version key last opened (keep_cache)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._uid, self._gid = os.getuid(), os.getgid()
        self._mounted_ns = time.time_ns()

    # ---- names -------------------------------------------------------------------------------

    def _path(self, ino: int) -> str:
        with self._lock:
            rel = self._paths.get(ino)
        if rel is None:
            raise FuseError(errno.ENOENT)
        return rel

    def _listed(self, ask: Callable[[], T], rel_dir: str) -> T:
        """Run a listing lookup: a missing directory is ENOENT, an origin failure EIO + log."""
        try:
            return ask()
        except ObjectNotFound:
            raise FuseError(errno.ENOENT) from None
        except OriginError as e:
            log.error("listing %s failed: %s", self.listing.url(rel_dir), e)
            raise FuseError(errno.EIO) from None

    def _attr(self, ino: int, rel: str) -> fw.Attr:
        if not rel:
            return self._dir_attr(ino, 0.0)
        item = self._listed(lambda: self.listing.item(rel), rel.rpartition("/")[0])
        if item is None:
            raise FuseError(errno.ENOENT)
        if item.is_dir:
            return self._dir_attr(ino, item.mtime)
        size = item.size if item.size >= 0 else self._stat_size(rel)
        return fw.Attr(ino, stat.S_IFREG | 0o444, size, self._ns(item.mtime), 1, self._uid,
                       self._gid)

    def _dir_attr(self, ino: int, mtime: float) -> fw.Attr:
        return fw.Attr(ino, stat.S_IFDIR | 0o555, 0, self._ns(mtime), 2, self._uid, self._gid)

    def _ns(self, mtime: float) -> int:
        return int(mtime * 1e9) if mtime else self._mounted_ns

    def _stat_size(self, rel: str) -> int:
        """The size from the origin's stat (cached by the node) when the listing lacks it."""
        url = self.listing.url(rel)
        try:
            return self.node.version(url, self.options).size
        except ObjectNotFound:
            raise FuseError(errno.ENOENT) from None
        except OriginError as e:
            log.error("stat %s: %s", url, e)
            raise FuseError(errno.EIO) from None

    def lookup(self, parent: int, name: str) -> fw.Attr | None:
        base = self._path(parent)
        if name in (".", "..") or "/" in name:
            raise FuseError(errno.EINVAL)
        rel = f"{base}/{name}" if base else name
        try:
            self._attr(0, rel)
        except FuseError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        with self._lock:
            ino = self._inos.get(rel)
            if ino is None:
                ino = next(self._next_ino)
                self._inos[rel] = ino
                self._paths[ino] = rel
            self._nlookup[ino] = self._nlookup.get(ino, 0) + 1
        return self._attr(ino, rel)

    def forget(self, ino: int, nlookup: int) -> None:
        with self._lock:
            left = self._nlookup.get(ino, 0) - nlookup
            if left > 0:
                self._nlookup[ino] = left
            elif ino != 1:
                self._nlookup.pop(ino, None)
                rel = self._paths.pop(ino, None)
                if rel is not None:
                    self._inos.pop(rel, None)

    def getattr(self, ino: int) -> fw.Attr:
        return self._attr(ino, self._path(ino))

    def readdir(self, ino: int) -> list[tuple[int, str, int]]:
        rel = self._path(ino)
        items = self._listed(lambda: self.listing.list(rel), rel)
        entries = [(ino, ".", fw.DT_DIR), (1, "..", fw.DT_DIR)]
        for item in sorted(items, key=lambda it: it.path):
            name = item.path.rpartition("/")[2]
            if not name:
                continue
            with self._lock:
                child = self._inos.get(item.path)
            # Names not looked up yet get a stable number outside the range lookups use.
            child = child or (1 << 48) | zlib.crc32(item.path.encode())
            entries.append((child, name, fw.DT_DIR if item.is_dir else fw.DT_REG))
        return entries

    # ---- files -------------------------------------------------------------------------------

    def _passthrough(self) -> bool:
        return (self.views is not None and self.device is not None
                and self.device.negotiated.passthrough)

    def open(self, ino: int, flags: int) -> Opened:
        rel = self._path(ino)
        if not rel:
            raise FuseError(errno.EISDIR)
        url = self.listing.url(rel)
        try:
            if self._passthrough():
                opened = self._open_view(ino, url)
                if opened is not None:
                    return opened
            reader = Reader(self.node, url, self.options)
        except ObjectNotFound:
            raise FuseError(errno.ENOENT) from None
        except (OriginError, StoreError) as e:
            log.error("open %s: %s", url, e)
            raise FuseError(errno.EIO) from None
        fh = next(self._next_fh)
        with self._lock:
            self._handles[fh] = _Handle(ino, reader, self.options)
            self._open.setdefault(ino, _InodeOpen()).count += 1
            same = self._opened.get(rel) == reader.version.key
            self._opened[rel] = reader.version.key
        if self._passthrough():
            return Opened(fh, direct_io=True)
        return Opened(fh, keep_cache=same)  # a new version drops the kernel's old pages

    def _open_view(self, ino: int, url: str) -> Opened | None:
        """Open the file on the view of its current version, when there is one and the inode's
        other open files (if any) read the same view; None: serve it here."""
        assert self.views is not None and self.device is not None
        version = self.node.version(url, self.options)
        with self._lock:
            state = self._open.get(ino)
            if state is not None and state.count > 0:
                if not state.backing_id or state.version != version:
                    return None
                state.count += 1
                fh = next(self._next_fh)
                self._handles[fh] = _Handle(ino, None, self.options)
                return Opened(fh, backing_id=state.backing_id)
        path = self.views.find(version)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed meanwhile (evicted, or `cache evict`)
            return None
        try:
            backing_id = self.device.backing_open(fd)
        except OSError as e:
            log.warning("passthrough of %s refused by the kernel (%s); serving it here", url, e)
            return None
        finally:
            os.close(fd)
        with self._lock:
            state = self._open.get(ino)
            if state is not None and state.count > 0:  # another open won the race
                self.device.backing_close(backing_id)
                return None
            self._open[ino] = _InodeOpen(1, backing_id, version)
            fh = next(self._next_fh)
            self._handles[fh] = _Handle(ino, None, self.options)
        return Opened(fh, backing_id=backing_id)

    def read(self, fh: int, offset: int, size: int) -> list[bytes | memoryview]:
        with self._lock:
            h = self._handles.get(fh)
        if h is None or h.reader is None:
            raise FuseError(errno.EBADF)
        reader = h.reader
        try:
            with h.lock:
                out = _from_window(h.window, offset, min(size, reader.size - offset))
                if out is None:
                    out = self._lease_window(h, reader, offset, size)
                h.served += sum(len(b) for b in out)
                return out
        except (OriginError, StoreError) as e:
            log.error("read %s bytes %d-%d: %s", reader.url, offset, offset + size, e)
            raise FuseError(errno.EIO) from None

    def _lease_window(self, h: _Handle, reader: Reader, offset: int,
                      size: int) -> list[bytes | memoryview]:
        """Lease the blocks under [offset, offset + size) to the end of the last one and keep
        them mapped as the handle's window (the next requests of a sequential read are answered
        from it without the reader); bytes not in a block file are read into a buffer."""
        bs = reader.block_size
        end = min(reader.size, ((offset + size - 1) // bs + 1) * bs) if size > 0 else offset
        if reader.tell() != offset:
            reader.seek(offset)
        h.window = []
        spans = reader.lease(end - offset) if end > offset else []
        if spans is None:
            buf = self._buffer()
            n = reader.readinto(buf[:size])
            return [buf[:n]]
        store = self.node.store
        pos = offset
        for i, (d, fd, off, n) in enumerate(spans):
            try:
                mm = h.maps.get(d)
                if mm is None:
                    mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
                    h.maps[d] = mm
                    if len(h.maps) > _MAPS_PER_FILE:
                        h.maps.popitem(last=False)  # unmapped once no reply uses it
            except BaseException:
                for d2, fd2, _, _ in spans[i + 1:]:  # the leases not reached
                    store.close_block(d2, fd2)
                raise
            finally:
                store.close_block(d, fd)
            h.window.append((pos, pos + n, memoryview(mm)[off:off + n]))
            pos += n
        out = _from_window(h.window, offset, min(size, reader.size - offset))
        assert out is not None
        return out

    def _buffer(self) -> memoryview:
        """This thread's reply buffer for bytes not in a block file."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(self.max_read))
        return buf

    def release(self, fh: int) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                return
            state = self._open.get(h.ino)
            backing = 0
            if state is not None:
                state.count -= 1
                if state.count <= 0:
                    del self._open[h.ino]
                    backing = state.backing_id
        if backing and self.device is not None:
            self.device.backing_close(backing)
        h.window.clear()
        h.maps.clear()
        reader = h.reader
        if reader is not None:
            if self._passthrough() and (h.served >= reader.size or self._all_local(reader)):
                assert self.views is not None
                self.views.request(self.node, reader.version, h.options)
            reader.close()

    def _all_local(self, reader: Reader) -> bool:
        """Whether every block of the reader's version is in the store (read whole, perhaps
        by several open files)."""
        digests = self.node.manifest(reader.version).digests
        n = len(digests)
        return None not in digests and self.node.store.first_missing(digests, 0, n) >= n

    def close(self) -> None:
        """Close what is still open (the session has ended)."""
        with self._lock:
            handles = list(self._handles)
        for fh in handles:
            self.release(fh)


def _from_window(window: list[tuple[int, int, memoryview]], offset: int,
                 size: int) -> list[bytes | memoryview] | None:
    """The bytes [offset, offset + size) from a window, or None when it lacks some of them."""
    if size <= 0:
        return []
    out: list[bytes | memoryview] = []
    pos, end = offset, offset + size
    for start, stop, data in window:
        if stop <= pos:
            continue
        if start > pos:
            return None
        take = min(stop, end) - pos
        out.append(data[pos - start:pos - start + take])
        pos += take
        if pos >= end:
            return out
    return None


def mount(node: ReaderBackend, prefix: str, mountpoint: str,
          options: Mapping[str, Any] | None = None, *, debug: bool = False,
          use_fusermount: bool | None = None) -> None:
    """Serve `prefix` at `mountpoint` until unmounted (umount / fusermount3 -u), or SIGTERM /
    SIGINT when called in the main thread (both unmount); blocks the calling thread."""
    cfg = node.config
    root = os.geteuid() == 0 and not use_fusermount
    views = None
    if root and cfg.fuse_view_bytes > 0:
        views = Views(views_dir(cfg.cache_dir), cfg.fuse_view_bytes,
                      fsync=cfg.fsync)
    dev = fusedev.mount(mountpoint, max_read=MAX_READ, use_fusermount=use_fusermount)
    fs = MeshcacheFuse(node, prefix, options, device=dev, views=views)
    ttl = float(cfg.metadata_ttl)
    limits = fusedev.Limits(max_read=MAX_READ, max_readahead=READAHEAD, attr_ttl=ttl,
                            negative_ttl=min(ttl, 1.0), passthrough=views is not None)
    session = fusedev.Session(dev, fs, limits, threads=THREADS, debug=debug)
    if debug:
        logging.getLogger(fusedev.__name__).setLevel(logging.INFO)
    threading.Thread(target=_widen_readahead, args=(dev,), daemon=True,
                     name="meshcache-fuse-readahead").start()
    log.info("%s mounted at %s%s", prefix, mountpoint,
             " (passthrough views on)" if views is not None else "")
    try:
        session.run()
    finally:
        fs.close()
        if views is not None:
            views.close()
    log.info("%s: unmounted", mountpoint)


def _widen_readahead(dev: fusedev.Device, timeout: float = 30.0) -> None:
    """Let the kernel read READAHEAD bytes ahead on this mount once it is up.

    A FUSE mount's readahead window is the kernel's default (128 KiB) whatever the filesystem
    asks for at init (it can only lower it); each request costs thread wake-ups in two
    processes, so fewer, larger requests read faster, and a window of several requests lets
    the threads fill the next ones while the reader copies. Needs root (sysfs); best effort.
    """
    if not dev.negotiated.ready.wait(timeout):
        return
    path = f"/sys/class/bdi/0:{dev.conn}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READAHEAD // 1024))
    except OSError as e:
        log.debug("cannot widen readahead of %s (%s): %s", dev.mountpoint, path, e)

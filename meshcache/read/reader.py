"""Reader: a binary file object over one object version, reading hot blocks straight from their
files in the caller's thread (one pread per call, no hop through the loop), and asking the node
for cold blocks with a readahead window of K blocks when access is sequential."""

from __future__ import annotations

import concurrent.futures
from collections import defaultdict
import io
import os
import threading
from typing import Any, Mapping, Protocol

from meshcache.config import Config
from meshcache.core.manifest import Manifest
from meshcache.core.version import ObjectVersion
from meshcache.read.ladder import FetchResult
from meshcache.read.origin import ObjectChanged
from meshcache.read.store import BlockCorrupt

_SOURCES = ("local", "peers", "origin")
_STATS_EVERY = 64 << 20  # bytes read between updates of the node's counters



class BlockFilesView(Protocol):
    """What a Reader needs of a store: block files it may open and read itself."""

    def __contains__(self, d: bytes) -> bool: ...

    def first_missing(self, digests: list[bytes | None], start: int,
                      limit: int = 4096) -> int: ...

    def open_block(self, d: bytes,
                   release: tuple[bytes, int] | None = None) -> tuple[int, int]: ...

    def close_block(self, d: bytes, fd: int) -> None: ...

    def remove(self, d: bytes) -> None: ...


class ReaderBackend(Protocol):
    """What a Reader needs of a node: the in-process Node, or the host daemon's client
    (meshcache.host.client.DaemonNode) that asks the daemon for cold blocks."""

    config: Config

    @property
    def store(self) -> BlockFilesView: ...

    def version(self, url: str, options: Mapping[str, Any] | None = None, *,
                refresh: bool = False) -> ObjectVersion: ...

    def latest(self, url: str) -> ObjectVersion | None: ...

    def manifest(self, version: ObjectVersion) -> Manifest: ...

    def has_block(self, version: ObjectVersion, index: int) -> bytes | None: ...

    def submit_fetch(self, version: ObjectVersion, index: int, options: Mapping[str, Any] | None
                     = None) -> "concurrent.futures.Future[FetchResult]": ...

    def fetch_sync(self, version: ObjectVersion, index: int,
                   options: Mapping[str, Any] | None = None) -> FetchResult: ...

    def read_origin_sync(self, version: ObjectVersion, index: int,
                         options: Mapping[str, Any] | None = None) -> bytes: ...

    def count(self, **deltas: int) -> None: ...

    def flush(self) -> None: ...


class Reader(io.RawIOBase):
    """Read-only, seekable, thread-safe file over `url` as it was when opened."""

    def __init__(self, node: ReaderBackend, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._node = node
        self._options = dict(options or {})
        self.version = node.version(url, self._options)
        self.url = self.name = self.path = self.version.url
        self.size = self.version.size
        self._manifest = node.manifest(self.version)
        self._bs = self._manifest.block_size
        self._shift = self._bs.bit_length() - 1
        self._nblocks = self._manifest.blocks
        # Blocks in flight at the origin (readahead) plus as many queued behind them, so a
        # connection that finishes a block starts the next at once while the finished block
        # is still being hashed and fsynced.
        self._readahead = node.config.readahead + node.config.origin_concurrency
        self._lock = threading.RLock()
        self._pos = 0
        self._cur = -1  # index of the block held open
        self._cur_len = 0
        self._cur_source = "local"
        self._fd: int | None = None
        self._digest: bytes | None = None
        self._mem: bytes | None = None
        self._prev: int | None = None
        self._ahead: dict[int, concurrent.futures.Future[FetchResult]] = {}
        self._pending: defaultdict[str, int] = defaultdict(int, dict.fromkeys(_SOURCES, 0))
        self._hits = 0
        self._checked = 0  # blocks below this index were found in the store by _schedule
        self._stats: dict[str, int] = {f"bytes_from_{s}": 0 for s in _SOURCES}
        self._stats["origin_requests"] = 0

    @property
    def block_size(self) -> int:
        """The version's block size: the file's bytes lie in block files of this size."""
        return self._bs

    @property
    def stats(self) -> dict[str, int]:
        """Where this file's bytes came from: bytes_from_local/peers/origin, origin_requests."""
        with self._lock:
            self._flush_stats()
            return dict(self._stats)

    # ---- io.RawIOBase ------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._lock:
            self._check_open()
            if whence == io.SEEK_SET:
                pos = offset
            elif whence == io.SEEK_CUR:
                pos = self._pos + offset
            elif whence == io.SEEK_END:
                pos = self.size + offset
            else:
                raise ValueError(f"invalid whence ({whence})")
            if pos < 0:
                raise OSError(22, f"{self.url}: negative seek position {pos}")
            self._pos = pos
            return pos

    def readinto(self, b: Any) -> int:
        with self._lock:
            self._check_open()
            mv = memoryview(b).cast("B")
            want = len(mv)
            done = 0
            while done < want and self._pos < self.size:
                off = self._at_block()
                n = min(want - done, self._cur_len - off)
                if self._fd is not None:
                    got = os.preadv(self._fd, [mv[done:done + n]], off)
                    if got != n:
                        self._lost_current()
                        continue
                else:
                    assert self._mem is not None
                    mv[done:done + n] = self._mem[off:off + n]
                self._pending[self._cur_source] += n
                self._pos += n
                done += n
            return done

    def read(self, size: int | None = -1) -> bytes:
        with self._lock:
            self._check_open()
            remaining = self.size - self._pos
            n = remaining if size is None or size < 0 else min(size, remaining)
            if n <= 0:
                return b""
            off = self._at_block()
            if self._fd is not None and off + n <= self._cur_len:
                data = os.pread(self._fd, n, off)
                if len(data) == n:
                    self._pending[self._cur_source] += n
                    self._pos += n
                    return data
                self._lost_current()
            buf = bytearray(n)
            got = self.readinto(buf)
            return bytes(memoryview(buf)[:got]) if got != n else bytes(buf)

    read1 = read

    def lease(self, size: int) -> list[tuple[bytes, int, int, int]] | None:
        """Where the next `size` bytes (fewer at the end) lie in block files, for callers that
        hand the kernel a descriptor instead of bytes (the FUSE mount splices them): a list of
        (digest, fd, offset, n), each fd leased from the store (the caller releases each with
        `store.close_block(digest, fd)`), and the position moved past them. None, position
        unchanged, when some of those bytes are not in a block file (held in memory, or the
        file just went away): read them with `readinto`, which also handles a lost block."""
        with self._lock:
            self._check_open()
            start, want = self._pos, min(size, self.size - self._pos)
            spans: list[tuple[bytes, int, int, int]] = []
            sources: list[tuple[str, int]] = []
            store = self._node.store
            done = False
            try:
                while want > 0:
                    off = self._at_block()
                    if self._fd is None or self._digest is None:
                        return None
                    n = min(want, self._cur_len - off)
                    try:
                        fd, _ = store.open_block(self._digest)
                    except (FileNotFoundError, BlockCorrupt):
                        return None
                    spans.append((self._digest, fd, off, n))
                    sources.append((self._cur_source, n))
                    self._pos += n
                    want -= n
                done = True
            finally:
                if not done:
                    for d, fd, _, _ in spans:
                        store.close_block(d, fd)
                    self._pos = start
            for source, n in sources:
                self._pending[source] += n
            return spans

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self._release()
                self._flush_stats()
                self._ahead.clear()
                self._node.flush()
            super().close()

    def limit_readahead(self, end: int) -> None:
        """Fetch ahead no further than byte `end` (for callers that know their range)."""
        self._nblocks = min(self._nblocks, -(-end // self._bs))

    # ---- blocks ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _at_block(self) -> int:
        """Make the block under the position current; returns the offset within it."""
        latest = self._node.latest(self.url)
        if latest is not self.version and latest is not None and latest != self.version:
            raise ObjectChanged(f"{self.url}: a newer version exists at the origin "
                                f"({latest.token}); reopen to read it")
        i = self._pos >> self._shift
        if i != self._cur:
            self._switch(i)
        return self._pos - (i << self._shift)

    def _switch(self, i: int) -> None:
        store = self._node.store
        d = self._manifest.digests[i]
        if d is not None and self._fd is not None and self._prev == i - 1 \
                and i + self._readahead < self._checked and not self._ahead:
            # The hot sequential path: next block known here, readahead window all here.
            try:
                fd, size = store.open_block(d, release=(self._digest, self._fd))  # type: ignore
            except (FileNotFoundError, BlockCorrupt):
                self._fd = None  # released above; take the general path
                self._digest = None
            else:
                self._cur, self._fd, self._digest, self._cur_len = i, fd, d, size
                self._prev = i
                self._hits += 1
                if self._pending["local"] >= _STATS_EVERY:
                    self._flush_stats()
                return
        self._release()
        if self._pending_total() >= _STATS_EVERY:
            self._flush_stats()
        sequential = (i == 0 and self._prev is None) or (self._prev is not None
                                                         and i == self._prev + 1)
        self._prev = i
        if self._ahead:
            for stale in [j for j in self._ahead if j < i or j > i + self._readahead]:
                del self._ahead[stale]
        if sequential:
            self._schedule(range(max(i, self._checked), min(i + self._readahead + 1,
                                                             self._nblocks)))
        if d is not None and i not in self._ahead:
            try:  # the hot path: the block is here, open it without asking the node
                fd, size = store.open_block(d)
            except (FileNotFoundError, BlockCorrupt):
                pass
            else:
                self._cur, self._fd, self._digest, self._cur_len = i, fd, d, size
                self._cur_source = "local"
                self._hits += 1
                return
        for _ in range(3):
            res = self._result(i)
            if res.data is not None:
                self._set_memory(i, res.data, res.source)
                return
            try:
                fd, size = store.open_block(res.digest)
            except (FileNotFoundError, BlockCorrupt):
                continue  # evicted or damaged since: fetch again
            self._cur, self._fd, self._digest, self._cur_len = i, fd, res.digest, size
            self._cur_source = res.source
            self._note_source(res.source)
            return
        # The store keeps losing this block (capacity far too small): serve it from memory.
        data = self._node.read_origin_sync(self.version, i, self._options)
        self._set_memory(i, data, "origin")

    def _result(self, i: int) -> FetchResult:
        fut = self._ahead.pop(i, None)
        if fut is not None:
            return fut.result()
        d = self._node.has_block(self.version, i)
        if d is not None:
            return FetchResult(d, "local")
        return self._node.fetch_sync(self.version, i, self._options)

    def _schedule(self, indexes: range) -> None:
        """Start fetches for the blocks in `indexes` that are not here; blocks found here
        are not checked again on the next switch (`_checked`)."""
        manifest, store = self._manifest, self._node.store
        if indexes and self._checked <= indexes.start:
            # One pass under one lock finds how far the object is already here.
            self._checked = store.first_missing(manifest.digests, indexes.start)
            indexes = range(max(indexes.start, self._checked), indexes.stop)
        all_here = True
        for j in indexes:
            if j in self._ahead:
                all_here = False
                continue
            d = manifest.digests[j]
            if d is not None and d in store:
                if all_here:
                    self._checked = j + 1
                continue
            all_here = False
            self._ahead[j] = self._node.submit_fetch(self.version, j, self._options)

    def _set_memory(self, i: int, data: bytes, source: str) -> None:
        self._cur, self._mem, self._cur_len = i, data, len(data)
        self._cur_source = source
        self._note_source(source)

    def _note_source(self, source: str) -> None:
        if source == "local":
            self._hits += 1
        elif source == "origin":
            self._stats["origin_requests"] += 1

    def _lost_current(self) -> None:
        """The block file shrank under us (tampering): drop it so the next read re-fetches."""
        if self._digest is not None:
            d = self._digest
            self._release()
            self._node.store.remove(d)
        self._cur = -1

    def _release(self) -> None:
        if self._fd is not None and self._digest is not None:
            self._node.store.close_block(self._digest, self._fd)
        self._fd = None
        self._digest = None
        self._mem = None
        self._cur = -1

    def _flush_stats(self) -> None:
        p = self._pending
        if not any(p.values()) and not self._hits:
            return
        for source, n in p.items():
            key = f"bytes_from_{source}"
            self._stats[key] = self._stats.get(key, 0) + n
        self._node.count(bytes_from_local=p["local"], block_hits=self._hits)
        self._hits = 0
        for k in p:
            p[k] = 0

    def _pending_total(self) -> int:
        return sum(self._pending.values())

    def __repr__(self) -> str:
        return f"<meshcache.Reader {self.url} size={self.size} pos={self._pos}>"


def open_reader(node: ReaderBackend, url: str, mode: str = "rb",
                options: Mapping[str, Any] | None = None, **text_kwargs: Any) -> Any:
    """`Reader` for mode 'rb'; a TextIOWrapper over a buffered Reader for mode 'r'/'rt'."""
    if mode in ("rb", "br"):
        return Reader(node, url, options)
    if mode in ("r", "rt", "tr"):
        return io.TextIOWrapper(io.BufferedReader(Reader(node, url, options), 1 << 20),
                                **text_kwargs)
    raise ValueError(f"meshcache.open: mode {mode!r} is not supported; the cache is read-only "
                     "('rb' or 'r')")


def read_range(node: ReaderBackend, url: str, start: int | None = None, end: int | None = None,
               options: Mapping[str, Any] | None = None) -> bytes:
    """Bytes [start, end) of the object (negative offsets count from the end)."""
    with Reader(node, url, options) as f:
        size = f.size
        s = 0 if start is None else (start + size if start < 0 else start)
        e = size if end is None else (end + size if end < 0 else end)
        s, e = max(0, min(s, size)), max(0, min(e, size))
        if e <= s:
            return b""
        f.limit_readahead(e)
        f.seek(s)
        return f.read(e - s)

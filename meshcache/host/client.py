"""The library's side of the local API: a client of the host's meshcached, and `DaemonNode`, the
reader backend that asks the daemon for cold blocks and reads hot ones from the block files
itself (short-circuit: one pread in the caller's thread, no bytes through the socket).

A block file is opened only when its identity (inode, size, mtime) is one the daemon vouched
for after verifying it, so a file swapped or truncated behind the daemon's back is not read.
Connections are per thread and per process: forked and spawned workers connect on first use.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from meshcache.config import Config, ConfigError
from meshcache.core.digest import to_hex
from meshcache.core.manifest import Manifest
from meshcache.core.version import ObjectVersion
from meshcache.host.frames import (API_VERSION, MAX_REPLY, decode_body, encode_frame,
                                   recv_frame)
from meshcache.read.ladder import FetchResult
from meshcache.read.node import Node
from meshcache.read.shared import shared_node
from meshcache.read.origin import ObjectChanged, ObjectNotFound, OriginError, normalize_url
from meshcache.read.reader import open_reader, read_range
from meshcache.read.store import BlockCorrupt, StoreError

log = logging.getLogger("meshcache.host.client")


class DaemonUnavailable(ConnectionError):
    """The daemon named by MESHCACHE_DAEMON (or found for the cache directory) does not answer."""


class DaemonError(RuntimeError):
    """The daemon refused a request for a reason without a library exception of its own."""


_ERRORS: dict[str, Callable[[str], BaseException]] = {
    "ObjectNotFound": ObjectNotFound, "ObjectChanged": ObjectChanged, "OriginError": OriginError,
    "StoreError": lambda m: StoreError(0, m), "PermissionError": PermissionError,
    "FileNotFoundError": FileNotFoundError, "BlockCorrupt": BlockCorrupt,
    "ConfigError": ConfigError, "ValueError": ValueError,
}


class DaemonClient:
    """Request/reply over the daemon's Unix socket; one connection per thread and process."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def _sock(self) -> socket.socket:
        s = getattr(self._local, "sock", None)
        if s is not None and self._local.pid == os.getpid():
            return s
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except BaseException:
            s.close()
            raise
        self._local.sock, self._local.pid = s, os.getpid()
        with self._lock:
            self._socks.append(s)
        return s

    def call(self, op: str, *args: Any, progress: Callable[[int], Any] | None = None,
             on_total: Callable[[int], Any] | None = None) -> Any:
        """Send one request and wait for its reply; progress frames go to the callbacks."""
        s = self._sock()  # connect errors (no socket, no permission) are raised as they are
        try:
            s.sendall(encode_frame([API_VERSION, op, *args]))
            while True:
                reply = decode_body(recv_frame(s, MAX_REPLY), MAX_REPLY)
                kind = reply[0]
                if kind == "ok" and len(reply) == 2:
                    return reply[1]
                if kind == "err" and len(reply) == 3:
                    break
                if kind == "progress" and progress is not None:
                    progress(int(reply[1]))  # type: ignore[call-overload]
                elif kind == "total" and on_total is not None:
                    on_total(int(reply[1]))  # type: ignore[call-overload]
        except (OSError, ValueError) as e:
            self._drop()
            raise DaemonUnavailable(f"meshcached at {self.path}: {e}") from e
        make = _ERRORS.get(str(reply[1]))
        raise make(str(reply[2])) if make else DaemonError(f"{reply[1]}: {reply[2]}")

    def _drop(self) -> None:
        s = getattr(self._local, "sock", None)
        self._local.sock = None
        if s is not None:
            s.close()

    def close(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        self._local = threading.local()


class BlockFiles:
    """The store as a client sees it: the daemon's block files, opened read-only once the
    daemon vouched for their identity. Satisfies what `Reader` needs of a store."""

    def __init__(self, root: str, client: DaemonClient) -> None:
        self.root = Path(root)
        self._client = client
        self._vouched: dict[bytes, tuple[int, int, int]] = {}

    def block_path(self, d: bytes) -> Path:
        h = to_hex(d)
        return self.root / "blocks" / h[:2] / h

    def vouch(self, d: bytes, ident: tuple[int, int, int]) -> None:
        self._vouched[d] = ident

    def __contains__(self, d: bytes) -> bool:
        return os.path.exists(self.block_path(d))

    def first_missing(self, digests: list[bytes | None], start: int, limit: int = 4096) -> int:
        end = min(len(digests), start + limit)
        for i in range(start, end):
            d = digests[i]
            if d is None or d not in self:
                return i
        return end

    def open_block(self, d: bytes, release: tuple[bytes, int] | None = None) -> tuple[int, int]:
        if release is not None and release[1] is not None:
            self.close_block(*release)
        fd = os.open(self.block_path(d), os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._vouched.get(d) != ident:
                self._vouched[d] = tuple(self._client.call("verify", d))  # type: ignore[assignment]
                if self._vouched[d] != ident:
                    raise BlockCorrupt(f"block {to_hex(d)} changed on disk")
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    def close_block(self, d: bytes, fd: int) -> None:
        os.close(fd)

    def read_block(self, d: bytes) -> bytes:
        fd, size = self.open_block(d)
        try:
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)

    def remove(self, d: bytes) -> None:
        """A file that read short: forget it and let the daemon check it (it removes a bad one)."""
        self._vouched.pop(d, None)
        try:
            self._client.call("verify", d)
        except (FileNotFoundError, BlockCorrupt):
            pass


class DaemonNode:
    """The host's meshcached seen as a node: what `Reader`, the module functions, the fsspec
    filesystem and the CLI call, each answered by the daemon."""

    def __init__(self, client: DaemonClient, config: Config) -> None:
        self.client = client
        self.config = config
        hello = json.loads(client.call("hello"))
        self.cache_dir: str = hello["cache_dir"]
        self.block_size: int = hello["block_size"]
        self.daemon_pid: int = hello["pid"]
        self.client_options: bool = bool(hello.get("client_options"))
        self.store = BlockFiles(self.cache_dir, client)
        self._latest: dict[str, ObjectVersion] = {}
        self._manifests: dict[bytes, Manifest] = {}
        self._pending = [0, 0]  # bytes_from_local, block_hits not yet told to the daemon
        self._count_lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self.closed = False
        self._warned_options = False

    # ---- what Reader needs -------------------------------------------------------------------

    def version(self, url: str, options: Mapping[str, Any] | None = None, *,
                refresh: bool = False) -> ObjectVersion:
        url = normalize_url(url)
        u, token, size = self.client.call("version", url, _opts(options), refresh)
        v = ObjectVersion(u, token, size)
        self._latest[v.url] = v
        return v

    def latest(self, url: str) -> ObjectVersion | None:
        return self._latest.get(url)

    def manifest(self, version: ObjectVersion) -> Manifest:
        m = self._manifests.get(version.key)
        if m is None:
            raw = self.client.call("manifest", version.url, version.token, version.size)
            m = self._manifests.setdefault(version.key, Manifest.decode(raw))
        return m

    def has_block(self, version: ObjectVersion, index: int) -> bytes | None:
        d = self.manifest(version).digests[index]
        return d if d is not None and d in self.store else None

    def submit_fetch(self, version: ObjectVersion, index: int,
                     options: Mapping[str, Any] | None = None
                     ) -> "concurrent.futures.Future[FetchResult]":
        if self._pool is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.config.readahead + self.config.origin_concurrency, "meshcache-client")
        return self._pool.submit(self.fetch_sync, version, index, options)

    def fetch_sync(self, version: ObjectVersion, index: int,
                   options: Mapping[str, Any] | None = None) -> FetchResult:
        d, source, ino, size, mtime, data = self.client.call(
            "block", version.url, version.token, version.size, index, _opts(options))
        if data is None:
            self.store.vouch(d, (ino, size, mtime))
        self.manifest(version).digests[index] = d
        return FetchResult(d, source, data)

    def read_origin_sync(self, version: ObjectVersion, index: int,
                         options: Mapping[str, Any] | None = None) -> bytes:
        res = self.fetch_sync(version, index, options)
        return res.data if res.data is not None else self.store.read_block(res.digest)

    def count(self, bytes_from_local: int = 0, block_hits: int = 0, **_: int) -> None:
        with self._count_lock:
            self._pending[0] += bytes_from_local
            self._pending[1] += block_hits

    def flush(self) -> None:
        """Tell the daemon the short-circuit reads it did not see (its hit counters)."""
        with self._count_lock:
            rows, self._pending = self._pending, [0, 0]
        if any(rows):
            try:
                self.client.call("count", rows)
            except DaemonUnavailable:
                pass

    # ---- what the entry points call ----------------------------------------------------------
    # A call with storage options that the daemon does not accept (its default: it reads origins
    # with its own configuration) is served by this process's embedded node instead.

    def _embedded(self, options: Mapping[str, Any] | None) -> Node | None:
        if not options or self.client_options:
            return None
        if not self._warned_options:
            self._warned_options = True
            log.warning("meshcached at %s reads origins with its own configuration; reads with "
                        "storage options use a node in this process", self.client.path)
        return shared_node(self.config)

    def open(self, url: str, mode: str = "rb", **options: Any) -> Any:
        node = self._embedded(options)
        return open_reader(node or self, url, mode, options)

    def cat(self, url: str, start: int | None = None, end: int | None = None,
            options: Mapping[str, Any] | None = None) -> bytes:
        return read_range(self._embedded(options) or self, url, start, end, options)

    def stat(self, url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        node = self._embedded(options)
        if node is not None:
            return node.stat(url, options)
        return json.loads(self.client.call("stat", normalize_url(url), _opts(options)))

    def refresh(self, url: str, options: Mapping[str, Any] | None = None) -> ObjectVersion:
        node = self._embedded(options)
        if node is not None:
            return node.refresh(url, options)
        return self.version(url, options, refresh=True)

    def prewarm(self, urls: str | Iterable[str], progress: Callable[[int], Any] | None = None,
                options: Mapping[str, Any] | None = None,
                on_total: Callable[[int], Any] | None = None) -> dict[str, int]:
        node = self._embedded(options)
        if node is not None:
            return node.prewarm(urls, progress, options, on_total)
        urls = [urls] if isinstance(urls, str) else list(urls)
        return json.loads(self.client.call("prewarm", [normalize_url(u) for u in urls],
                                           _opts(options), progress=progress,
                                           on_total=on_total))

    def pin(self, url: str, options: Mapping[str, Any] | None = None,
            progress: Callable[[int], Any] | None = None,
            on_total: Callable[[int], Any] | None = None) -> ObjectVersion:
        u, token, size = self.client.call("pin", [normalize_url(url)], _opts(options),
                                          progress=progress, on_total=on_total)
        return ObjectVersion(u, token, size)

    def unpin(self, url: str) -> int:
        return int(self.client.call("unpin", normalize_url(url)))

    def evict(self, url: str | None = None) -> int:
        return int(self.client.call("evict", None if url is None else normalize_url(url)))

    def stats(self) -> dict[str, int]:
        self.flush()
        return json.loads(self.client.call("stats"))

    def status(self) -> dict[str, Any]:
        return json.loads(self.client.call("status"))

    def cached_objects(self) -> list[dict[str, Any]]:
        return json.loads(self.client.call("ls"))

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def __enter__(self) -> "DaemonNode":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<meshcache.DaemonNode {self.client.path} pid {self.daemon_pid}>"


def _opts(options: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(options)) if options else ""


# ---- finding the host's daemon --------------------------------------------------------------

_found: dict[str, DaemonNode | None] = {}
_found_lock = threading.Lock()


def daemon_node(config: Config, environ: Mapping[str, str] | None = None) -> DaemonNode | None:
    """The host's meshcached for this config, or None when none serves its cache directory.
    MESHCACHE_DAEMON=off never uses one; MESHCACHE_DAEMON=<socket path> must answer."""
    env = os.environ if environ is None else environ
    setting = env.get("MESHCACHE_DAEMON", "").strip()
    if setting.lower() in ("off", "0", "no", "false"):
        return None
    path = setting or config.socket_path()
    with _found_lock:
        if path in _found:
            found = _found[path]
            if found is None or not found.closed:
                return found
        try:
            found = DaemonNode(DaemonClient(path), config)
        except (OSError, DaemonUnavailable) as e:
            if setting:
                raise DaemonUnavailable(f"MESHCACHE_DAEMON={setting}: {e}") from None
            if isinstance(e, PermissionError) or isinstance(e.__cause__, PermissionError):
                log.warning("meshcached at %s refused this process (%s); reading without it",
                            path, e)
            found = None
        if found is not None and not setting and os.path.realpath(found.cache_dir) \
                != os.path.realpath(os.path.expanduser(config.cache_dir)):
            log.warning("meshcached at %s serves %s, not %s; reading without it", path,
                        found.cache_dir, config.cache_dir)
            found.close()
            found = None
        _found[path] = found
        return found


def _forget_found() -> None:
    global _found_lock
    _found_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_found)


def host_node(config: Config | None = None) -> "DaemonNode | Node":
    """The node this process reads through: the host's daemon when one serves the cache
    directory, else the process's embedded node for it (made on first use)."""
    cfg = config if config is not None else Config.from_env()
    return daemon_node(cfg) or shared_node(cfg)

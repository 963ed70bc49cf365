"""The daemon's local API: serves its Node to the processes of this host over a Unix socket.

A client asks for block (version, index); the daemon brings the block into the store through its
read path (store, zone peers, remote zones, origin; one fetch however many ask) and answers with
the block file's digest and identity (inode, size, mtime), which the client checks when it opens
the file itself: the bytes never pass through the socket. Each connection is logged with the
client's pid/uid/gid (SO_PEERCRED); the socket's mode (0660) and group decide who may connect.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import socket
import time
from collections import Counter, OrderedDict
from typing import Any, Callable

from meshcache.core.version import ObjectVersion
from meshcache.host.frames import (MAX_REQUEST, FrameError, encode_frame, parse_request,
                                   read_frame)
from meshcache.host.policy import PeerCred, may_read, peer_cred
from meshcache.host.status import HISTORY_EVERY, History, note_reading, status_of
from meshcache.read.loop import LoopThread
from meshcache.read.node import Node
from meshcache.read.origin import ObjectChanged, normalize_url

log = logging.getLogger("meshcache.host.server")

MAX_URLS = 1024  # URLs in one prewarm request
COUNTED = ("bytes_from_local", "block_hits")  # what clients report of their short-circuit reads


class ApiError(Exception):
    """A request the daemon refuses (bad arguments); its message goes back to the client."""


class LocalApi:
    """Unix-socket server for `node` on its own loop thread; `start()` binds, `close()` stops."""

    def __init__(self, node: Node, path: str, *, group: str = "",
                 allow_client_options: bool = False) -> None:
        self.node = node
        self.path = path
        self.group = group
        self.allow_client_options = allow_client_options
        self.requests: Counter[str] = Counter()  # by operation
        self.errors = 0
        self.refused_frames = 0
        self.connections = 0
        self.clients = 0  # connected now
        # url -> (last block request, count), least recently asked first (bounded)
        self.reading: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.history = History()
        self._loop = LoopThread("meshcache-host")
        self._server: asyncio.base_events.Server | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        """Bind the socket (0660, the configured group) and serve; returns its path."""
        _clear_stale(self.path)
        gid = grp.getgrnam(self.group).gr_gid if self.group else -1
        old = os.umask(0o117)  # the socket is born 0660: no window where others may connect
        try:
            self._server = self._loop.run(self._listen())
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        if gid != -1:
            os.chown(self.path, -1, gid)
        log.info("local API on %s (mode 0660, group %s)", self.path, self.group or "default")
        return self.path

    async def _listen(self) -> asyncio.base_events.Server:
        asyncio.get_running_loop().create_task(self._sample())
        return await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST)

    async def _sample(self) -> None:
        while True:
            self.history.sample(await asyncio.to_thread(self.node.stats), time.time())
            await asyncio.sleep(HISTORY_EVERY)

    def close(self) -> None:
        server = self._server
        if server is not None:
            async def stop() -> None:
                server.close()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            try:
                self._loop.run(stop(), timeout=5)
            except Exception:
                pass
            self._server = None
        self._loop.stop()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    # ---- connections -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cred = peer_cred(writer.get_extra_info("socket"))
        self.connections += 1
        self.clients += 1
        log.info("local client connected: pid %d uid %d gid %d", cred.pid, cred.uid, cred.gid)
        allowed: dict[str, bool] = {}
        try:
            while True:
                body = await read_frame(reader, MAX_REQUEST)
                if body is None:
                    break
                op, args = parse_request(body)
                self.requests[op] += 1
                try:
                    value = await self._handle(op, args, cred, allowed, writer)
                    reply: list[Any] = ["ok", value]
                except Exception as e:  # every failure is a reply, never a dead daemon
                    self.errors += 1
                    if not isinstance(e, (ApiError, OSError, ObjectChanged, PermissionError)):
                        log.debug("local API %s failed", op, exc_info=True)
                    reply = ["err", type(e).__name__, str(e)[:4096]]
                writer.write(encode_frame(reply))
                await writer.drain()
        except FrameError as e:
            self.refused_frames += 1
            log.warning("local client pid %d uid %d: %s; closing", cred.pid, cred.uid, e)
            try:
                writer.write(encode_frame(["err", "FrameError", str(e)]))
            except Exception:
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() cancels the connections of a stopping daemon: end this one quietly (the
            # stream server logs a handler that ends cancelled with a traceback)
            log.debug("local client pid %d: closed by shutdown", cred.pid)
        finally:
            self.clients -= 1
            writer.close()
            log.debug("local client pid %d gone", cred.pid)

    async def _handle(self, op: str, args: list[Any], cred: PeerCred, allowed: dict[str, bool],
                      writer: asyncio.StreamWriter) -> Any:
        node = self.node

        def check(url: str) -> str:
            url = normalize_url(_text(url, "url"))
            ok = allowed.get(url)
            if ok is None:
                ok = allowed[url] = may_read(url, cred)
            if not ok:
                raise PermissionError(f"{url}: uid {cred.uid} may not read this file")
            return url

        def opts(raw: Any) -> dict[str, Any]:
            options = json.loads(_text(raw, "options")) if raw else {}
            if not isinstance(options, dict):
                raise ApiError("options: expected a JSON object")
            if options and not self.allow_client_options:
                raise PermissionError("this meshcached reads origins with its own configuration;"
                                      " storage options from clients are off "
                                      "(daemon_client_options)")
            return options

        def emit(kind: str) -> Callable[[int], None]:
            loop = asyncio.get_running_loop()
            return lambda n: loop.call_soon_threadsafe(writer.write, encode_frame([kind, n]))

        if op == "hello":
            cfg = node.config
            return json.dumps({"cache_dir": str(node.store.root.resolve()),
                               "block_size": node.block_size, "pid": os.getpid(),
                               "zone": cfg.zone,
                               "client_options": self.allow_client_options})
        if op == "version":
            url, raw, refresh = _args(args, 3)
            url = check(url)
            if refresh:
                v = await asyncio.to_thread(node.refresh, url, opts(raw))
            else:
                v = await asyncio.to_thread(node.version, url, opts(raw))
            return [v.url, v.token, v.size]
        if op == "stat":
            url, raw = _args(args, 2)
            return json.dumps(await asyncio.to_thread(node.stat, check(url), opts(raw)))
        if op == "manifest":
            v = await self._version(args, check)
            return node.manifest(v).encode()
        if op == "block":
            v = await self._version(args[:3], check)
            index, raw = _args(args[3:], 2)
            if type(index) is not int or not 0 <= index < node.manifest(v).blocks:
                raise ApiError(f"block index {index!r} out of range")
            note_reading(self.reading, v.url, time.time())
            res = await asyncio.wrap_future(node.submit_fetch(v, index, opts(raw)))
            if res.data is not None:
                return [res.digest, res.source, 0, 0, 0, res.data]
            ident = await asyncio.to_thread(self._identity, res.digest)
            return [res.digest, res.source, *ident, None]
        if op == "verify":
            (d,) = _args(args, 1)
            if type(d) is not bytes or len(d) != 32:
                raise ApiError("verify: expected a 32-byte digest")
            return list(await asyncio.to_thread(self._identity, d))
        if op in ("prewarm", "pin"):
            urls, raw = _args(args, 2)
            if type(urls) is not list or not 0 < len(urls) <= MAX_URLS:
                raise ApiError(f"{op}: expected 1..{MAX_URLS} URLs")
            urls = [check(u) for u in urls]
            if op == "pin":
                v = await asyncio.to_thread(node.pin, urls[0], opts(raw), emit("progress"),
                                            emit("total"))
                return [v.url, v.token, v.size]
            done = await asyncio.to_thread(node.prewarm, urls, emit("progress"), opts(raw),
                                           emit("total"))
            return json.dumps(done)
        if op == "refresh":
            url, raw = _args(args, 2)
            v = await asyncio.to_thread(node.refresh, check(url), opts(raw))
            return [v.url, v.token, v.size]
        if op == "unpin":
            (url,) = _args(args, 1)
            return await asyncio.to_thread(node.unpin, normalize_url(_text(url, "url")))
        if op == "evict":
            (url,) = _args(args, 1)
            target = None if url is None else normalize_url(_text(url, "url"))
            return await asyncio.to_thread(node.evict, target)
        if op == "stats":
            return json.dumps(await asyncio.to_thread(self.stats))
        if op == "ls":
            return json.dumps(await asyncio.to_thread(node.cached_objects))
        if op == "count":
            (rows,) = _args(args, 1)
            if type(rows) is not list or len(rows) != len(COUNTED) \
                    or not all(type(n) is int for n in rows):
                raise ApiError("count: expected [bytes_from_local, block_hits]")
            node.count(**dict(zip(COUNTED, rows)))
            return None
        if op == "status":
            return json.dumps(await asyncio.to_thread(self.status))
        raise ApiError(f"unknown operation {op}")  # pragma: no cover (parse_request checks)

    async def _version(self, args: list[Any], check: Callable[[str], str]) -> ObjectVersion:
        """The version a client names, accepted only when this daemon knows it (a client may
        not make up versions): the current one, or one it holds a manifest of."""
        url, token, size = _args(args, 3)
        url = check(url)
        if type(token) is not str or type(size) is not int:
            raise ApiError("version: expected url, token, size")
        v = ObjectVersion(url, token, size)
        if self.node.latest(url) == v or self.node.known_manifest(v) is not None:
            return v
        current = await asyncio.to_thread(self.node.version, url)
        if current != v:
            raise ObjectChanged(f"{url}: version {token} is not the current one "
                                f"({current.token}); reopen to read it")
        return v

    def _identity(self, d: bytes) -> tuple[int, int, int]:
        """(inode, size, mtime_ns) of the verified block file of `d` (hashes it if this
        process has not); FileNotFoundError / BlockCorrupt otherwise."""
        store = self.node.store
        fd, _ = store.open_block(d)
        try:
            st = os.fstat(fd)
        finally:
            store.close_block(d, fd)
        return st.st_ino, st.st_size, st.st_mtime_ns

    def status(self) -> dict[str, Any]:
        """What the status page and `meshcache status` show."""
        return status_of(self, str(self.node.store.root), self.node.config.zone, self.history)

    def rate_limit_waits(self) -> dict[str, tuple[int, float]]:
        """(waits, seconds waited) of the peer rate limits by direction (empty without peers)."""
        peers = self.node.peers
        if peers is None:
            return {}
        return {"egress": (peers.egress.waits, peers.egress.waited),
                "ingress": (peers.ingress.waits, peers.ingress.waited)}

    def stats(self) -> dict[str, Any]:
        """The node's counters plus the local API's own."""
        out: dict[str, Any] = dict(self.node.stats())
        out["local_clients"] = self.clients
        out["local_connections"] = self.connections
        out["local_requests"] = sum(self.requests.values())
        out["local_errors"] = self.errors
        out["local_refused_frames"] = self.refused_frames
        return out


def _args(args: list[Any], n: int) -> list[Any]:
    if len(args) != n:
        raise ApiError(f"expected {n} arguments, got {len(args)}")
    return args


def _text(v: Any, name: str, limit: int = 8192) -> str:
    if type(v) is not str or len(v) > limit:
        raise ApiError(f"{name}: expected text of at most {limit} characters")
    return v


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody serves; refuse to start next to a live daemon."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(98, f"another meshcached already serves {path}")

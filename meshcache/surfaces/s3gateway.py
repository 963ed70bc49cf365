"""An S3-compatible, read-only gateway in front of the cache (aiohttp).

Buckets map to origin URL prefixes (`s3_buckets`); GetObject (Range, If-Match, If-None-Match),
HeadObject, ListObjectsV2 (passed through to the origin, cached for metadata_ttl) and
GetBucketLocation are served; every other operation gets S3's error document. Requests are
authenticated with AWS Signature V4 (header or presigned URL) against `s3_access_keys`. Object
bytes come through the node: blocks in the store go out with sendfile, cold ones are fetched
(verified, stored) with the node's readahead window ahead of the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from aiohttp import web

from meshcache.core import s3proto
from meshcache.core.blocks import block_span
from meshcache.core.s3proto import S3Error
from meshcache.core.sigv4 import AuthError, Request, is_signed, verify
from meshcache.core.version import ObjectVersion
from meshcache.read.ladder import FetchResult
from meshcache.read.node import Node
from meshcache.read.origin import ObjectChanged, ObjectNotFound, OriginError
from meshcache.read.store import BlockCorrupt
from meshcache.surfaces.listing import Listing

log = logging.getLogger("meshcache.surfaces.s3gateway")

SERVER = "meshcache"


@dataclass
class Bucket:
    """One gateway bucket: the origin URL prefix it serves and that origin's storage options."""

    name: str
    prefix: str
    options: dict[str, Any] = field(default_factory=dict)


def etag_of(version: ObjectVersion) -> str:
    """The ETag the gateway reports: the origin's when it has one, else one from the version."""
    if version.etag:
        return version.etag.strip('"')
    return hashlib.blake2b(version.key, digest_size=16).hexdigest()


class S3Gateway:
    """The aiohttp application and its handlers; `GatewayServer` runs it on a thread."""

    def __init__(self, node: Node, buckets: Mapping[str, Bucket],
                 access_keys: Mapping[str, str], *, anonymous: bool = False,
                 region: str = "us-east-1", clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.buckets = dict(buckets)
        self.access_keys = dict(access_keys)
        self.anonymous = anonymous
        self.region = region
        self.clock = clock
        ttl = node.config.metadata_ttl
        self.listings = {name: Listing(b.prefix, b.options, ttl) for name, b in buckets.items()}
        self._first_seen: dict[bytes, float] = {}
        self.stats = {"requests": 0, "errors": 0, "bytes_sent": 0}

    @classmethod
    def from_config(cls, node: Node) -> "S3Gateway":
        cfg = node.config
        buckets = {name: Bucket(name, prefix, dict(cfg.s3_bucket_options.get(name, {})))
                   for name, prefix in cfg.s3_buckets.items()}
        return cls(node, buckets, cfg.s3_access_keys, anonymous=cfg.s3_anonymous,
                   region=cfg.s3_region)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # ---- dispatch ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        request_id = uuid.uuid4().hex[:16].upper()
        bucket, key = self._address(request)
        resource = request.rel_url.raw_path
        try:
            self._authenticate(request)
            return await self._dispatch(request, bucket, key)
        except S3Error as e:
            return self._error(request, e.code, e.message, resource, request_id, e.extra)
        except AuthError as e:
            return self._error(request, e.code, e.message, resource, request_id, {})
        except ObjectNotFound:
            return self._error(request, "NoSuchKey", "the specified key does not exist",
                               resource, request_id, {"Key": key})
        except ObjectChanged as e:
            return self._error(request, "PreconditionFailed", str(e), resource, request_id, {})
        except OriginError as e:
            log.warning("s3 gateway: %s", e)
            return self._error(request, "ServiceUnavailable", f"the origin failed: {e}",
                               resource, request_id, {})
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:  # a bug: answer as S3 would, and log it
            log.exception("s3 gateway: %s %s failed", request.method, resource)
            return self._error(request, "InternalError", f"{type(e).__name__}: {e}", resource,
                               request_id, {})

    def _address(self, request: web.Request) -> tuple[str, str]:
        """(bucket, key) from a virtual-hosted name (bucket.host) or the path (/bucket/key)."""
        host = (request.host or "").rsplit(":", 1)[0]
        first = host.split(".", 1)[0]
        path = request.path  # decoded
        if "." in host and first in self.buckets and not host.replace(".", "").isdigit():
            return first, path.lstrip("/")
        bucket, _, key = path.lstrip("/").partition("/")
        return bucket, key

    def _authenticate(self, request: web.Request) -> None:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        req = Request(request.method, request.rel_url.raw_path, request.rel_url.raw_query_string,
                      headers)
        if not is_signed(req) and self.anonymous:
            return
        verify(req, self.access_keys.get, self.clock())

    async def _dispatch(self, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
        method = request.method
        if method not in ("GET", "HEAD"):
            raise S3Error("AccessDenied" if method in ("PUT", "POST", "DELETE") else
                          "MethodNotAllowed",
                          "this S3 endpoint is a read-only meshcache gateway; "
                          f"{method} is not allowed")
        if not bucket:
            return self._list_buckets()
        if bucket not in self.buckets:
            raise S3Error("NoSuchBucket", "the specified bucket does not exist",
                          BucketName=bucket)
        q = request.rel_url.query
        if not key:
            if "location" in q:
                return web.Response(body=s3proto.location_xml(self.region),
                                    content_type="application/xml")
            if q.get("list-type") == "2":
                return await self._list_v2(bucket, q)
            if method == "HEAD":  # HeadBucket
                return web.Response(headers={"x-amz-bucket-region": self.region})
            if any(k in q for k in ("versioning", "policy", "acl", "tagging", "uploads",
                                    "versions", "lifecycle", "cors", "website")):
                raise S3Error("NotImplemented", "this operation is not implemented by the "
                              "meshcache gateway")
            return await self._list_v2(bucket, q)  # ListObjects (v1) answered as v2
        s3proto.check_key(key)
        if any(k in q for k in ("acl", "tagging", "uploadId", "torrent", "attributes")):
            raise S3Error("NotImplemented", "only GetObject and HeadObject are served for keys")
        return await self._object(request, bucket, key)

    def _list_buckets(self) -> web.Response:
        body = ['<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<ListAllMyBucketsResult xmlns="{s3proto.XMLNS}"><Owner><ID>meshcache</ID>'
                "<DisplayName>meshcache</DisplayName></Owner><Buckets>"]
        for name in sorted(self.buckets):
            body.append(f"<Bucket><Name>{name}</Name><CreationDate>"
                        f"{s3proto.iso_date(0)}</CreationDate></Bucket>")
        body.append("</Buckets></ListAllMyBucketsResult>")
        return web.Response(body="".join(body).encode(), content_type="application/xml")

    def _error(self, request: web.Request, code: str, message: str, resource: str,
               request_id: str, extra: Mapping[str, str]) -> web.Response:
        self.stats["errors"] += 1
        status = s3proto.STATUS.get(code, 400)
        headers = {"x-amz-request-id": request_id, "Server": SERVER}
        body = b"" if request.method == "HEAD" else \
            s3proto.error_xml(code, message, resource, request_id, dict(extra))
        return web.Response(status=status, body=body, headers=headers,
                            content_type="application/xml")

    # ---- ListObjectsV2 -----------------------------------------------------------------------

    async def _list_v2(self, bucket: str, q: Mapping[str, str]) -> web.Response:
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        max_keys = s3proto.clamp_max_keys(q.get("max-keys"))
        token = q.get("continuation-token")
        start_after = q.get("start-after") or q.get("marker")
        after = s3proto.decode_token(token) if token else (start_after or "")
        if prefix:
            s3proto.check_key(prefix.rstrip("/") or "x")
        listing = self.listings[bucket]
        rel_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        try:
            items = await asyncio.to_thread(listing.list, rel_dir, delimiter != "/")
        except ObjectNotFound:
            items = []
        entries = [s3proto.Entry(it.path, max(it.size, 0), it.mtime, it.etag or
                                 hashlib.blake2b(f"{it.size}:{it.mtime}".encode(),
                                                 digest_size=16).hexdigest())
                   for it in items if not it.is_dir]
        dirs = [it.path + "/" for it in items if it.is_dir and delimiter == "/"]
        page = s3proto.list_page(entries, prefix, delimiter, max_keys, after, dirs)
        body = s3proto.list_xml(bucket, prefix, delimiter, max_keys, page, token, start_after,
                                q.get("encoding-type"))
        return web.Response(body=body, content_type="application/xml")

    # ---- GetObject / HeadObject --------------------------------------------------------------

    async def _object(self, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
        if key.endswith("/"):  # a "directory": S3 has no object by that name
            raise ObjectNotFound(key)
        b = self.buckets[bucket]
        url = self.listings[bucket].url(key)
        version = await asyncio.to_thread(self.node.version, url, b.options)
        etag = etag_of(version)
        if len(self._first_seen) > 100_000:  # bounded: forget old versions' first sighting
            self._first_seen.clear()
        mtime = self._first_seen.setdefault(version.key, self.clock())
        headers = {"ETag": f'"{etag}"', "Last-Modified": s3proto.http_date(mtime),
                   "Accept-Ranges": "bytes", "Server": SERVER,
                   "Content-Type": "binary/octet-stream"}
        status = s3proto.check_conditions(etag, request.headers.get("If-Match"),
                                          request.headers.get("If-None-Match"))
        if status == 412:
            raise S3Error("PreconditionFailed", "at least one of the preconditions you "
                          "specified did not hold", Condition="If-Match")
        if status == 304:
            return web.Response(status=304, headers={"ETag": headers["ETag"],
                                                     "Last-Modified": headers["Last-Modified"]})
        size = version.size
        span = s3proto.parse_range(request.headers.get("Range"), size) if size else None
        start, end = span if span is not None else (0, size)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)
        resp = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
        if request.method == "HEAD":
            await resp.prepare(request)
            return resp
        # Fetch the first block before the status line goes out, so a failing origin still
        # gets an S3 error document rather than a cut-off 200.
        first = await self._block(version, start // self.node.block_size, b.options) \
            if end > start else None
        await resp.prepare(request)
        if first is not None:
            try:
                await self._send(request, resp, version, start, end, b.options, first)
            except (OriginError, OSError) as e:  # after the status line: cut the body short
                if not isinstance(e, ConnectionError):
                    log.warning("s3 gateway: %s/%s: %s; closing the connection mid-body",
                                bucket, key, e)
                if request.transport is not None:
                    request.transport.close()
                return resp
        await resp.write_eof()
        return resp

    async def _block(self, version: ObjectVersion, index: int,
                     options: Mapping[str, Any]) -> FetchResult:
        d = self.node.has_block(version, index)
        if d is not None:
            return FetchResult(d, "local")
        return await asyncio.wrap_future(self.node.submit_fetch(version, index, options))

    async def _send(self, request: web.Request, resp: web.StreamResponse,
                    version: ObjectVersion, start: int, end: int, options: Mapping[str, Any],
                    first: FetchResult) -> None:
        node, bs = self.node, self.node.block_size
        lo, hi = start // bs, (end - 1) // bs
        ahead: dict[int, asyncio.Future[FetchResult]] = {}
        local: dict[int, bytes] = {}  # blocks found in the store when they entered the window
        window = node.config.readahead
        considered = lo  # blocks up to here were looked at for readahead (each once)
        out = SocketSendfile.open(request.transport)
        try:
            for i in range(lo, hi + 1):
                for j in range(considered + 1, min(hi, i + window) + 1):
                    d = node.has_block(version, j)
                    if d is None:
                        ahead[j] = asyncio.wrap_future(node.submit_fetch(version, j, options))
                    else:  # evicted before its turn: _send_block fetches it again
                        local[j] = d
                considered = max(considered, min(hi, i + window))
                fut, d = ahead.pop(i, None), local.pop(i, None)
                if i == lo:
                    result = first
                elif fut is not None:
                    result = await fut
                else:
                    result = FetchResult(d, "local") if d is not None else \
                        await self._block(version, i, options)
                b0, b1 = block_span(i, version.size, bs)
                s, e = max(start, b0) - b0, min(end, b1) - b0
                await self._send_block(request, resp, out, version, i, result, s, e, options)
                self.stats["bytes_sent"] += e - s
                if result.source == "local":
                    node.count(bytes_from_local=e - s)
        finally:
            for fut in ahead.values():
                fut.cancel()
            if out is not None:
                out.close()

    async def _send_block(self, request: web.Request, resp: web.StreamResponse,
                          out: "SocketSendfile | None", version: ObjectVersion, index: int,
                          result: FetchResult, s: int, e: int,
                          options: Mapping[str, Any]) -> None:
        if result.data is not None:
            await resp.write(result.data[s:e])
            return
        store = self.node.store
        for attempt in (1, 2):
            try:
                # A block this process already checked opens without hashing: inline, no
                # thread hop; else the check (BLAKE3 of the block) runs on a thread.
                fd, size = store.open_block(result.digest) if store.verified(result.digest) \
                    else await asyncio.to_thread(store.open_block, result.digest)
                break
            except (FileNotFoundError, BlockCorrupt):  # evicted or damaged since: fetch again
                if attempt == 2:
                    raise OriginError(f"{version.url}: block {index} keeps vanishing from the "
                                      "store") from None
                result = await asyncio.wrap_future(
                    self.node.submit_fetch(version, index, options))
                if result.data is not None:
                    await resp.write(result.data[s:e])
                    return
        try:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            if out is not None and out.ready():
                await out.sendfile(fd, s, e - s)
            else:  # bytes still queued in the transport: asyncio's sendfile waits for them
                with os.fdopen(os.dup(fd), "rb") as f:
                    await asyncio.get_running_loop().sendfile(transport, f, s, e - s)
        finally:
            store.close_block(result.digest, fd)


class SocketSendfile:
    """sendfile(2) of block files straight into a response's socket, waiting for the socket on
    the event loop only when it is full. asyncio's `loop.sendfile` costs a dup, a file object,
    two seeks and a reader pause/resume per call: per 4 MiB block that Python work made the
    gateway, not the client, the bottleneck of a hot read. Holds its own duplicate of the
    socket, so a connection closed meanwhile never lets a reused descriptor number receive
    another client's bytes."""

    def __init__(self, transport: asyncio.Transport, sock: socket.socket) -> None:
        self._transport = transport
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()

    @classmethod
    def open(cls, transport: asyncio.BaseTransport | None) -> "SocketSendfile | None":
        """For a plain TCP transport; None (use asyncio's sendfile) for anything else."""
        if not isinstance(transport, asyncio.Transport) or transport.is_closing() or \
                transport.get_extra_info("sslcontext") is not None:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None or sock.type != socket.SOCK_STREAM or \
                sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            return cls(transport, socket.socket(fileno=os.dup(sock.fileno())))
        except OSError:
            return None

    def ready(self) -> bool:
        """True when the transport has nothing queued (bytes sent now cannot overtake any)."""
        return not self._transport.is_closing() and \
            self._transport.get_write_buffer_size() == 0

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send `count` bytes of file `fd` from `offset` (the file's position is not used)."""
        while count > 0:
            try:
                n = os.sendfile(self._fd, fd, offset, count)
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            if n == 0:
                raise OSError(errno.EIO, "block file ended before its size")
            offset += n
            count -= n

    async def _writable(self) -> None:
        fut = self._loop.create_future()
        self._loop.add_writer(self._fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            self._loop.remove_writer(self._fd)

    def close(self) -> None:
        self._sock.close()


class GatewayServer:
    """Runs an S3Gateway on its own asyncio loop thread (in meshcached, or in-process)."""

    def __init__(self, gateway: S3Gateway) -> None:
        self.gateway = gateway
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    def start(self, listen: str) -> tuple[str, int]:
        """Listen on host:port (port 0: any free port); returns the bound address."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="meshcache-s3gateway", daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(host, int(port)), self._loop)
        self.address = fut.result(30)
        return self.address

    async def _start(self, host: str, port: int) -> tuple[str, int]:
        self._runner = web.AppRunner(self.gateway.app(), access_log=None,
                                     handler_cancellation=True)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound = sock.getsockname()
        await web.SockSite(self._runner, sock, backlog=512).start()
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        if self._thread is None:
            return
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                fut.result(10)
            except (concurrent.futures.TimeoutError, Exception):
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._thread = None


def serve(node: Node, listen: str | None = None) -> GatewayServer:
    """Start the gateway of `node.config` (s3_buckets, s3_access_keys) on `listen` or s3_listen."""
    server = GatewayServer(S3Gateway.from_config(node))
    server.start(listen or node.config.s3_listen)
    return server

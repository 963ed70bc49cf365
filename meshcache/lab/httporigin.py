"""A real HTTP/1.1 origin server for the demo, the tests and the benchmarks (standard library only).

    with OriginServer(directory="/data", rate_per_conn=20e6) as srv:
        srv.put("model/shard-0.bin", data)            # in-memory objects shadow files
        url = srv.url_for("model/shard-0.bin")
        ...
        assert srv.requests == 3 and srv.bytes_sent == len(data)

It serves GET and HEAD for files under `directory` and for in-memory objects, with single byte
ranges (206 + Content-Range, 416 when unsatisfiable), a strong ETag and Last-Modified for every
object, conditional requests (If-Match -> 412, If-Unmodified-Since, If-None-Match /
If-Modified-Since -> 304, If-Range), keep-alive, and Content-Length on every response.

Bandwidth: `rate_per_conn` paces each connection with its own token bucket (64 KiB writes), and
`global_rate` caps the sum over all connections; both can be changed while running. Uncapped,
files go out with os.sendfile and in-memory objects as memoryview slices.

Faults for tests, settable at runtime: `fail_next`, `refuse`, `drop_after`, `stall_after`.
Counters (`requests`, `heads`, `bytes_sent`, `connections`) and a request `log` are thread-safe;
`reset_stats()` clears them.

Command line (e.g. inside another network namespace):

    python -m meshcache.lab.httporigin --dir D --port P --rate-per-conn 20e6

prints the base URL on its first line of stdout, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import email.utils
import itertools
import os
import random
import re
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["OriginServer", "RequestRecord", "TokenBucket", "make_bytes", "make_file",
           "parse_range", "parse_size", "main"]

CHUNK = 64 * 1024            # paced writes
_BIG = 8 * 1024 * 1024       # unpaced writes of in-memory objects
_SMALL = 256 * 1024          # bodies up to this size go out in one send with the headers
_MIN_SLEEP = 0.0005          # shorter waits are carried as debt by the token bucket instead


# --------------------------------------------------------------------------- data helpers

def _randbytes_chunks(size: int, seed: int, chunk: int = 1 << 20) -> Iterable[bytes]:
    r = random.Random(seed)
    left = size
    while left > 0:
        n = min(chunk, left)
        yield r.randbytes(n)
        left -= n


def make_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes; identical to random.Random(seed).randbytes(size)
    and to the content `make_file(path, size, seed)` writes."""
    return b"".join(_randbytes_chunks(size, seed))


def make_file(path: str | os.PathLike, size: int, seed: int = 0) -> str:
    """Write `size` deterministic bytes (see make_bytes) to `path` quickly (1 MiB chunks,
    ~0.5 GB/s); creates parent directories. Returns the path as a string."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as f:
        for block in _randbytes_chunks(size, seed):
            f.write(block)
    return path


_SIZE_RE = re.compile(r"^\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")


def parse_size(text: str | int | float) -> int:
    """'64M' (MiB), '1G', '20e6', '512k' -> bytes (binary multiples for the suffixes)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    num, unit, _ = m.groups()
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit.lower()]
    return int(float(num) * mult)


# --------------------------------------------------------------------------- HTTP helpers

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
UNSATISFIABLE = "unsatisfiable"


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """A Range header against an object of `size` bytes: (start, end_exclusive), the string
    UNSATISFIABLE (-> 416), or None to ignore it and serve the whole object (absent, invalid,
    or several ranges: a server may always ignore Range)."""
    if not header:
        return None
    m = _RANGE_RE.match(header)
    if not m:
        return None
    first, last = m.groups()
    if first == "" and last == "":
        return None
    if first == "":                       # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return (max(0, size - n), size)
    start = int(first)
    if last != "" and int(last) < start:
        return None                       # invalid -> ignored
    if start >= size:
        return UNSATISFIABLE
    end = size if last == "" else min(int(last) + 1, size)
    return (start, end)


_ETAG_RE = re.compile(r'(W/)?"([^"]*)"')


def _etags(value: str) -> list[tuple[bool, str]]:
    return [(bool(w), tag) for w, tag in _ETAG_RE.findall(value)]


def _match_strong(value: str, etag: str) -> bool:
    if value.strip() == "*":
        return True
    opaque = etag.strip('"')
    return any(not weak and tag == opaque for weak, tag in _etags(value))


def _match_weak(value: str, etag: str) -> bool:
    if value.strip() == "*":
        return True
    opaque = etag.strip('"')
    return any(tag == opaque for _, tag in _etags(value))


def _parse_http_date(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# --------------------------------------------------------------------------- rate limiting

class TokenBucket:
    """A token bucket in 'debt' form: reserve(n) always takes n tokens and returns how long the
    caller must wait before sending them. Waits that come out late or are skipped are paid back
    by later reservations, so a long transfer's rate converges to `rate` exactly."""

    def __init__(self, rate: float, burst: float | None = None, initial: float | None = None):
        self._lock = threading.Lock()
        self.rate = float(rate)
        self.burst = burst
        self._tokens = float(CHUNK if initial is None else initial)
        self._stamp = time.monotonic()

    def capacity(self) -> float:
        if self.burst is not None:
            return float(self.burst)
        return max(2.0 * CHUNK, self.rate * 0.02)

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._refill(time.monotonic())
            self.rate = float(rate)

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity(), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self, n: int) -> float:
        with self._lock:
            self._refill(time.monotonic())
            self._tokens -= n
            return -self._tokens / self.rate if self._tokens < 0 else 0.0


# --------------------------------------------------------------------------- records, faults

@dataclass
class RequestRecord:
    """One request as the server saw it: `range` is the raw Range header (or None); `span` is
    the (start, end_exclusive) of the body served (None for HEAD and non-2xx); `complete` turns
    False when the body was cut short (drop fault, client gone, server closing).
    The server's `log` hands out copies."""
    method: str
    path: str
    range: str | None
    status: int
    span: tuple[int, int] | None
    conn: int
    time: float
    complete: bool = True


@dataclass
class _Fail:
    remaining: int
    status: int
    path: str | None
    method: str | None


@dataclass
class _BodyFault:
    kind: str                  # "drop" | "stall"
    remaining: int
    nbytes: int
    seconds: float = 0.0
    path: str | None = None
    reset: bool = False


@dataclass
class _Resource:
    size: int
    etag: str
    mtime: int                 # whole seconds, for Last-Modified
    data: memoryview | None = None
    fd: int | None = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class _MemObject:
    data: bytes
    etag: str
    mtime: int


class _Abort(Exception):
    """Stop this response and close the connection (server closing, or a drop fault)."""


def _norm_key(path: str) -> str:
    return "/".join(p for p in path.split("/") if p not in ("", "."))


# --------------------------------------------------------------------------- handler

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "meshcache-httporigin/1"
    sys_version = ""
    server: "_HTTPServer"

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.origin: OriginServer = self.server.origin
        self.conn_id = self.origin._next_conn_id()
        self.bucket: TokenBucket | None = None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        if self.origin.verbose:
            sys.stderr.write("%s - %s\n" % (self.address_string(), format % args))

    # -- dispatch

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def _other(self) -> None:
        self.close_connection = True      # any request body is left unread
        self._simple(405, b"method not allowed\n", [("Allow", "GET, HEAD")])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other

    # -- response plumbing

    def _header_bytes(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        phrase = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {phrase}\r\n",
                 f"Server: {self.server_version}\r\n",
                 f"Date: {email.utils.formatdate(usegmt=True)}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers)
        if self.close_connection:
            lines.append("Connection: close\r\n")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        if self.origin.verbose:
            self.log_request(status)
        return "".join(lines).encode("latin-1")

    def _simple(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None,
                head: bool = False) -> None:
        hdrs = [("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body)))] + (headers or [])
        out = self._header_bytes(status, hdrs)
        self.connection.sendall(out if head else out + body)

    def _wait(self, delay: float) -> None:
        if self.origin._stop.wait(delay):
            raise _Abort("server closing")

    def _pace(self, n: int) -> None:
        origin = self.origin
        delay = 0.0
        rate = origin.rate_per_conn
        if rate:
            if self.bucket is None:
                self.bucket = TokenBucket(rate)
            elif self.bucket.rate != rate:
                self.bucket.set_rate(rate)
            delay = self.bucket.reserve(n)
        glob = origin._global_bucket
        if glob is not None:
            delay = max(delay, glob.reserve(n))
        if delay > _MIN_SLEEP:
            self._wait(delay)

    def _emit(self, res: _Resource, pos: int, count: int, paced: bool) -> None:
        """Send body bytes [pos, pos+count) of `res`, fully. bytes_sent is raised before each
        write (so a client never sees bytes the counter does not) and corrected on failure."""
        sock = self.connection
        origin = self.origin
        end = pos + count
        while pos < end:
            if origin._stop.is_set():
                raise _Abort("server closing")
            if paced:
                n = min(CHUNK, end - pos)
                self._pace(n)
            else:
                n = min(end - pos, _BIG if res.data is not None else 1 << 30)
            origin._add_bytes(n)
            sent = 0
            try:
                if res.data is not None:
                    sock.sendall(res.data[pos:pos + n])
                    sent = n
                else:
                    while sent < n:
                        k = os.sendfile(sock.fileno(), res.fd, pos + sent, n - sent)
                        if k == 0:
                            raise _Abort("file shrank while being served")
                        sent += k
            except BaseException:
                origin._add_bytes(sent - n)
                raise
            pos += n

    # -- the request

    def _serve(self, method: str) -> None:
        origin = self.origin
        head = method == "HEAD"
        key = _norm_key(unquote(urlsplit(self.path).path))
        # Logged before anything is sent, so a client that has its response sees its record;
        # status and span are filled in before the status line goes out.
        self._rec = rec = RequestRecord(method, key, self.headers.get("Range"), 0, None,
                                        self.conn_id, time.time())
        origin._count_request(method, rec)
        try:
            forced = origin._take_forced_status(method, key)
            if forced is not None:
                rec.status = forced
                if forced >= 500:
                    body = f"injected failure {forced}\n".encode()
                else:
                    body = f"refused {forced}\n".encode()
                self._simple(forced, body, head=head)
                return
            res = origin._open(key)
            if res is None:
                rec.status = 404
                self._simple(404, b"not found\n", head=head)
                return
            try:
                self._respond(res, key, method, rec.range)
            finally:
                res.close()
        except _Abort:
            rec.complete = False
            self.close_connection = True
            try:
                if origin._stop.is_set():
                    self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except OSError:                       # client went away
            rec.complete = False
            self.close_connection = True

    def _respond(self, res: _Resource, key: str, method: str, rng: str | None) -> None:
        """Answer for an existing object; sets the record's status and span before sending."""
        head = method == "HEAD"
        h = self.headers
        last_modified = email.utils.formatdate(res.mtime, usegmt=True)
        meta = [("ETag", res.etag), ("Last-Modified", last_modified), ("Accept-Ranges", "bytes")]

        # RFC 9110 13.2.2 order of evaluation.
        if_match = h.get("If-Match")
        if if_match is not None:
            if not _match_strong(if_match, res.etag):
                self._rec.status = 412
                self._simple(412, b"precondition failed: If-Match\n", meta, head=head)
                return
        else:
            ius = _parse_http_date(h.get("If-Unmodified-Since"))
            if ius is not None and res.mtime > ius:
                self._rec.status = 412
                self._simple(412, b"precondition failed: If-Unmodified-Since\n", meta, head=head)
                return
        inm = h.get("If-None-Match")
        not_modified = False
        if inm is not None:
            not_modified = _match_weak(inm, res.etag)
        else:
            ims = _parse_http_date(h.get("If-Modified-Since"))
            not_modified = ims is not None and res.mtime <= ims
        if not_modified:
            self._rec.status = 304
            out = self._header_bytes(304, meta + [("Content-Length", str(res.size))])
            self.connection.sendall(out)
            return

        span = parse_range(rng, res.size)
        if span is not None:
            if_range = h.get("If-Range")
            if if_range is not None:
                v = if_range.strip()
                if v.startswith('"') or v.startswith("W/"):
                    ok = _match_strong(v, res.etag)
                else:
                    ok = _parse_http_date(v) == res.mtime
                if not ok:
                    span = None
        if span == UNSATISFIABLE:
            self._rec.status = 416
            self._simple(416, b"range not satisfiable\n",
                         meta + [("Content-Range", f"bytes */{res.size}")], head=head)
            return
        if span is None:
            status, start, end = 200, 0, res.size
            extra: list[tuple[str, str]] = []
        else:
            status, (start, end) = 206, span
            extra = [("Content-Range", f"bytes {start}-{end - 1}/{res.size}")]
        length = end - start
        self._rec.status = status
        out = self._header_bytes(status, [("Content-Type", "application/octet-stream"),
                                          ("Content-Length", str(length))] + meta + extra)
        if head:
            self.connection.sendall(out)
            return
        self._rec.span = (start, end)

        origin = self.origin
        stall, drop = origin._take_body_faults(key, length)
        paced = bool(origin.rate_per_conn) or origin._global_bucket is not None
        if (res.data is not None and length <= _SMALL and not paced and stall is None
                and drop is None):
            origin._add_bytes(length)            # counted first: see _emit
            try:
                self.connection.sendall(out + res.data[start:end])
            except BaseException:
                origin._add_bytes(-length)
                raise
            return
        self.connection.sendall(out)
        done = 0
        events: list[tuple[int, str]] = []
        if stall is not None:
            events.append((stall.nbytes, "stall"))
        if drop is not None:
            events.append((drop.nbytes, "drop"))
        events.sort(key=lambda e: (e[0], e[1] != "stall"))
        for at, kind in events:
            if at > done:
                self._emit(res, start + done, at - done, paced)
                done = at
            if kind == "stall":
                assert stall is not None
                self._wait(stall.seconds)
            else:
                assert drop is not None
                self._drop(drop.reset)
                raise _Abort("drop fault")
        if done < length:
            self._emit(res, start + done, length - done, paced)

    def _drop(self, reset: bool) -> None:
        self.close_connection = True
        self._rec.complete = False
        try:
            if reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --------------------------------------------------------------------------- server

class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    origin: "OriginServer"

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which can stall on DNS; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port

    def process_request(self, request, client_address) -> None:
        origin = self.origin
        if origin._stop.is_set():
            self.shutdown_request(request)
            return
        t = threading.Thread(target=self._run, args=(request, client_address), daemon=True,
                             name=f"httporigin-conn-{self.server_port}")
        with origin._lock:
            origin._connections += 1
            origin._conns[t] = request
        t.start()

    def _run(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self.origin._lock:
                self.origin._conns.pop(threading.current_thread(), None)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, _Abort)) or self.origin._stop.is_set():
            return
        super().handle_error(request, client_address)


class OriginServer:
    """An HTTP/1.1 origin on `host` (default 127.0.0.1) and `port` (0 = ephemeral), serving
    in-memory objects (put/delete) and, behind them, the files under `directory`.
    Serving starts in the constructor; use as a context manager or call close()."""

    def __init__(self, directory: str | os.PathLike | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, rate_per_conn: float | None = None,
                 global_rate: float | None = None, verbose: bool = False):
        self.directory = os.path.realpath(os.fspath(directory)) if directory is not None else None
        self.verbose = verbose
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._objects: dict[str, _MemObject] = {}
        self._gen = itertools.count(1)
        self._salt = f"{os.getpid():x}{time.monotonic_ns() & 0xFFFFFF:06x}"
        self._conn_ids = itertools.count(1)
        self._conns: dict[threading.Thread, socket.socket] = {}
        self._rate_per_conn = float(rate_per_conn) if rate_per_conn else None
        self._global_bucket: TokenBucket | None = None
        self.global_rate = global_rate
        self._fails: list[_Fail] = []
        self._status_overrides: dict[str, int] = {}
        self._body_faults: list[_BodyFault] = []
        self._reset_counters()

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("_HTTPServerF", (_HTTPServer,), {"address_family": family})
        self._httpd: _HTTPServer = server_cls((host, port), _Handler, bind_and_activate=False)
        self._httpd.origin = self
        try:
            self._httpd.server_bind()
            self._httpd.server_activate()
        except BaseException:
            self._httpd.server_close()
            raise
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._closed = False
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"httporigin-{self.port}")
        self._thread.start()

    # -- addresses

    @property
    def url(self) -> str:
        """Base URL, no trailing slash: 'http://127.0.0.1:PORT'."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url_for(self, path: str) -> str:
        return f"{self.url}/{_norm_key(path)}"

    # -- objects

    def put(self, path: str, data: bytes | bytearray | memoryview) -> str:
        """Create or replace an in-memory object; returns its new ETag. A replacement always
        gets a new ETag and a later Last-Modified (by at least one second)."""
        key = _norm_key(path)
        data = bytes(data)
        with self._lock:
            prev = self._objects.get(key)
            mtime = int(time.time())
            if prev is not None and mtime <= prev.mtime:
                mtime = prev.mtime + 1
            etag = f'"m{self._salt}-{next(self._gen):x}-{len(data):x}"'
            self._objects[key] = _MemObject(data, etag, mtime)
        return etag

    def delete(self, path: str) -> bool:
        """Remove an in-memory object (a file under `directory` with that path then shows
        through, if any). Returns whether there was one."""
        with self._lock:
            return self._objects.pop(_norm_key(path), None) is not None

    def etag(self, path: str) -> str | None:
        """The current ETag of `path` (in-memory or file), or None if missing."""
        res = self._open(_norm_key(path))
        if res is None:
            return None
        res.close()
        return res.etag

    def _file_path(self, key: str) -> str | None:
        if self.directory is None or not key:
            return None
        p = os.path.realpath(os.path.join(self.directory, key))
        if not p.startswith(self.directory + os.sep):
            return None
        return p

    def _open(self, key: str) -> _Resource | None:
        with self._lock:
            obj = self._objects.get(key)
        if obj is not None:
            return _Resource(len(obj.data), obj.etag, obj.mtime, data=memoryview(obj.data))
        p = self._file_path(key)
        if p is None:
            return None
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return None
        except OSError:
            os.close(fd)
            return None
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'
        return _Resource(st.st_size, etag, int(st.st_mtime), fd=fd)

    # -- rates

    @property
    def rate_per_conn(self) -> float | None:
        """Bytes/s per connection (None = unlimited); settable while running."""
        return self._rate_per_conn

    @rate_per_conn.setter
    def rate_per_conn(self, rate: float | None) -> None:
        self._rate_per_conn = float(rate) if rate else None

    @property
    def global_rate(self) -> float | None:
        """Bytes/s over all connections together (None = unlimited); settable while running."""
        b = self._global_bucket
        return b.rate if b is not None else None

    @global_rate.setter
    def global_rate(self, rate: float | None) -> None:
        if not rate:
            self._global_bucket = None
        elif self._global_bucket is None:
            self._global_bucket = TokenBucket(rate)
        else:
            self._global_bucket.set_rate(rate)

    # -- faults

    def fail_next(self, n: int = 1, status: int = 500, *, path: str | None = None,
                  method: str | None = None) -> None:
        """The next `n` requests (optionally only for `path` and/or `method`) get `status`."""
        with self._lock:
            self._fails.append(_Fail(n, status, _norm_key(path) if path is not None else None,
                                     method.upper() if method else None))

    def refuse(self, path: str, status: int = 403) -> None:
        """Answer every request for `path` with `status` until unrefuse()/clear_faults()."""
        with self._lock:
            self._status_overrides[_norm_key(path)] = status

    def unrefuse(self, path: str) -> None:
        with self._lock:
            self._status_overrides.pop(_norm_key(path), None)

    @property
    def refuse_paths(self) -> dict[str, int]:
        """A copy of the per-path status overrides."""
        with self._lock:
            return dict(self._status_overrides)

    def drop_after(self, nbytes: int, count: int = 1, *, path: str | None = None,
                   reset: bool = False) -> None:
        """For the next `count` GETs whose body is longer than `nbytes`: send `nbytes` of the
        body, then close the connection (FIN; RST with reset=True). The client sees a short
        body against its Content-Length."""
        with self._lock:
            self._body_faults.append(_BodyFault("drop", count, nbytes,
                                                path=_norm_key(path) if path else None,
                                                reset=reset))

    def stall_after(self, nbytes: int, seconds: float, count: int = 1, *,
                    path: str | None = None) -> None:
        """For the next `count` GETs whose body is longer than `nbytes`: send `nbytes` of the
        body, pause `seconds` (cut short by close()), then send the rest."""
        with self._lock:
            self._body_faults.append(_BodyFault("stall", count, nbytes, seconds,
                                                path=_norm_key(path) if path else None))

    def clear_faults(self) -> None:
        with self._lock:
            self._fails.clear()
            self._status_overrides.clear()
            self._body_faults.clear()

    def _take_forced_status(self, method: str, key: str) -> int | None:
        with self._lock:
            if key in self._status_overrides:
                return self._status_overrides[key]
            for f in self._fails:
                if (f.path is None or f.path == key) and (f.method is None or f.method == method):
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._fails.remove(f)
                    return f.status
        return None

    def _take_body_faults(self, key: str, length: int
                          ) -> tuple[_BodyFault | None, _BodyFault | None]:
        got: dict[str, _BodyFault] = {}
        with self._lock:
            for f in list(self._body_faults):
                if f.kind in got or (f.path is not None and f.path != key) or f.nbytes >= length:
                    continue
                got[f.kind] = f
                f.remaining -= 1
                if f.remaining <= 0:
                    self._body_faults.remove(f)
        return got.get("stall"), got.get("drop")

    # -- stats

    def _reset_counters(self) -> None:
        self._requests = 0
        self._heads = 0
        self._bytes_sent = 0
        self._connections = 0
        self._log: list[RequestRecord] = []

    def reset_stats(self) -> None:
        with self._lock:
            self._reset_counters()

    def _next_conn_id(self) -> int:
        return next(self._conn_ids)

    def _count_request(self, method: str, rec: RequestRecord) -> None:
        with self._lock:
            if method == "GET":
                self._requests += 1
            elif method == "HEAD":
                self._heads += 1
            self._log.append(rec)

    def _add_bytes(self, n: int) -> None:
        with self._lock:
            self._bytes_sent += n

    @property
    def requests(self) -> int:
        """GET requests received (including failed and refused ones)."""
        return self._requests

    @property
    def heads(self) -> int:
        """HEAD requests received."""
        return self._heads

    @property
    def bytes_sent(self) -> int:
        """Object body bytes written to sockets (headers and error bodies not counted)."""
        return self._bytes_sent

    @property
    def connections(self) -> int:
        """TCP connections accepted."""
        return self._connections

    @property
    def log(self) -> list[RequestRecord]:
        """Copies of the request records, in arrival order (a record is logged before its
        response is sent)."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._log]

    def requests_for(self, path: str, method: str | None = "GET") -> list[RequestRecord]:
        """Logged requests for `path` (GETs by default; method=None for all)."""
        key = _norm_key(path)
        return [r for r in self.log if r.path == key and (method is None or r.method == method)]

    def spans(self, path: str) -> list[tuple[int, int]]:
        """The (start, end_exclusive) body spans served by successful GETs of `path`."""
        return [r.span for r in self.requests_for(path) if r.span is not None]

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- lifecycle

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut open connections and wait for every handler thread to end."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._httpd.shutdown()
        self._thread.join(timeout)
        self._httpd.server_close()
        with self._lock:
            conns = list(self._conns.items())
        for _, sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for t, _ in conns:
            if t is not threading.current_thread():     # close() called from a handler
                t.join(max(0.0, deadline - time.monotonic()))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "OriginServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"OriginServer({self.url}, directory={self.directory!r}, "
                f"rate_per_conn={self.rate_per_conn}, global_rate={self.global_rate})")


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m meshcache.lab.httporigin",
                                 description="HTTP/1.1 origin server with ranges, ETags, "
                                             "per-connection rate caps.")
    ap.add_argument("--dir", default=".", help="directory to serve (default: .)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all)")
    ap.add_argument("--port", type=int, default=0, help="port (default: ephemeral)")
    ap.add_argument("--rate-per-conn", type=parse_size, default=None,
                    help="bytes/s per connection, e.g. 20e6 or 20M")
    ap.add_argument("--global-rate", type=parse_size, default=None,
                    help="bytes/s over all connections")
    ap.add_argument("--make", action="append", default=[], metavar="NAME=SIZE[:SEED]",
                    help="first generate a deterministic file under --dir (repeatable), "
                         "e.g. big.bin=1G:7")
    ap.add_argument("-v", "--verbose", action="store_true", help="log each request to stderr")
    args = ap.parse_args(argv)

    for spec in args.make:
        name, _, rest = spec.partition("=")
        size, _, seed = rest.partition(":")
        make_file(os.path.join(args.dir, name), parse_size(size), int(seed or 0))

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with OriginServer(args.dir, host=args.host, port=args.port,
                      rate_per_conn=args.rate_per_conn, global_rate=args.global_rate,
                      verbose=args.verbose) as srv:
        print(srv.url, flush=True)
        print(f"serving {srv.directory} on {srv.url} rate_per_conn={srv.rate_per_conn} "
              f"global_rate={srv.global_rate}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        print(f"requests={srv.requests} heads={srv.heads} bytes_sent={srv.bytes_sent} "
              f"connections={srv.connections}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The lab HTTP origin: real sockets on 127.0.0.1, driven by requests, fsspec and aria2c."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest
import requests

from meshcache.lab.httporigin import (OriginServer, make_bytes, make_file, parse_range,
                                      parse_size)

MB = 1_000_000


@pytest.fixture
def srv(tmp_path):
    with OriginServer(tmp_path) as s:
        yield s


@pytest.fixture
def http_fs():
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    yield fs


def _raw(srv, method, path, headers=None):
    """http.client request without any client-side path normalisation."""
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def _timed_get(url, headers=None):
    """(bytes, seconds from request start to last byte)."""
    t0 = time.perf_counter()
    with requests.get(url, headers=headers or {}, stream=True, timeout=30) as r:
        r.raise_for_status()
        n = sum(len(c) for c in r.iter_content(65536))
    return n, time.perf_counter() - t0


# --------------------------------------------------------------------------- helpers

def test_make_bytes_and_make_file_agree(tmp_path):
    p = make_file(tmp_path / "sub" / "f.bin", 3 * (1 << 20) + 12345, seed=7)
    data = open(p, "rb").read()
    assert data == make_bytes(len(data), 7)
    assert data[:1000] != make_bytes(1000, 8)
    import random
    assert make_bytes(5000, 3) == random.Random(3).randbytes(5000)


def test_parse_helpers():
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=-1000", 100) == (0, 100)
    assert parse_range("bytes=50-5000", 100) == (50, 100)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=-0", 100) == "unsatisfiable"
    assert parse_range("bytes=0-", 0) == "unsatisfiable"
    assert parse_range("bytes=5-2", 100) is None
    assert parse_range("bytes=0-1,5-6", 100) is None
    assert parse_range("items=0-1", 100) is None
    assert parse_size("64M") == 64 << 20 and parse_size("20e6") == 20_000_000
    assert parse_size("1GiB") == 1 << 30 and parse_size("512k") == 512 << 10


# --------------------------------------------------------------------------- plain serving

def test_get_and_head_files_and_memory(srv, tmp_path):
    data = make_bytes(300_000, 1)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "file.bin").write_bytes(data)
    srv.put("/mem/obj.bin", data[:1000])
    with requests.Session() as s:
        r = s.get(srv.url_for("d/file.bin"))
        assert r.status_code == 200 and r.content == data
        assert r.headers["Content-Length"] == str(len(data))
        assert r.headers["Accept-Ranges"] == "bytes"
        etag = r.headers["ETag"]
        assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
        assert etag == srv.etag("d/file.bin")
        assert "GMT" in r.headers["Last-Modified"]
        h = s.head(srv.url_for("d/file.bin"))
        assert h.status_code == 200 and h.content == b""
        assert h.headers["Content-Length"] == str(len(data)) and h.headers["ETag"] == etag
        m = s.get(srv.url_for("mem/obj.bin"))
        assert m.content == data[:1000] and m.headers["Content-Length"] == "1000"
        assert m.headers["ETag"] != etag
        nf = s.get(srv.url_for("nope.bin"))
        assert nf.status_code == 404 and nf.headers["Content-Length"] == str(len(nf.content))
        # one keep-alive connection for all of it
        assert s.get(srv.url_for("mem/obj.bin")).status_code == 200
    assert srv.connections == 1
    assert srv.requests == 4 and srv.heads == 1
    assert srv.bytes_sent == len(data) + 2000            # object bodies only
    log = srv.log
    assert [(r.method, r.path, r.status) for r in log] == [
        ("GET", "d/file.bin", 200), ("HEAD", "d/file.bin", 200), ("GET", "mem/obj.bin", 200),
        ("GET", "nope.bin", 404), ("GET", "mem/obj.bin", 200)]
    assert len({r.conn for r in log}) == 1
    srv.reset_stats()
    assert (srv.requests, srv.bytes_sent, srv.connections, srv.log) == (0, 0, 0, [])


def test_no_escape_from_directory(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("x")
    with OriginServer(root) as s:
        assert _raw(s, "GET", "/../secret.txt")[0] == 404
        assert _raw(s, "GET", "/%2e%2e/secret.txt")[0] == 404
        assert _raw(s, "GET", "/")[0] == 404
        assert _raw(s, "POST", "/x")[0] == 405


def test_ranges(srv):
    data = make_bytes(100_000, 2)
    srv.put("o.bin", data)
    url = srv.url_for("o.bin")
    cases = {"bytes=0-9": (0, 10), "bytes=99990-": (99990, 100_000),
             "bytes=-100": (99900, 100_000), "bytes=50000-999999": (50000, 100_000),
             "bytes=7-7": (7, 8)}
    for rng, (a, b) in cases.items():
        r = requests.get(url, headers={"Range": rng})
        assert r.status_code == 206, rng
        assert r.content == data[a:b], rng
        assert r.headers["Content-Range"] == f"bytes {a}-{b - 1}/100000"
        assert r.headers["Content-Length"] == str(b - a)
    for rng in ("bytes=100000-", "bytes=200000-200010", "bytes=-0"):
        r = requests.get(url, headers={"Range": rng})
        assert r.status_code == 416, rng
        assert r.headers["Content-Range"] == "bytes */100000"
    for rng in ("bytes=9-2", "bytes=0-1,4-5", "lines=1-2"):       # ignored: full body
        r = requests.get(url, headers={"Range": rng})
        assert r.status_code == 200 and r.content == data, rng
    h = requests.head(url, headers={"Range": "bytes=10-19"})
    assert h.status_code == 206 and h.headers["Content-Length"] == "10" and h.content == b""
    srv.put("empty", b"")
    assert requests.get(srv.url_for("empty")).content == b""
    assert requests.get(srv.url_for("empty"), headers={"Range": "bytes=0-"}).status_code == 416
    spans = srv.spans("o.bin")
    assert (0, 10) in spans and (7, 8) in spans and (0, 100_000) in spans


def test_conditionals_and_replacement(srv, tmp_path):
    srv.put("o", b"version one")
    url = srv.url_for("o")
    r1 = requests.get(url)
    e1, lm1 = r1.headers["ETag"], r1.headers["Last-Modified"]
    ok = requests.get(url, headers={"If-Match": e1, "Range": "bytes=0-6"})
    assert ok.status_code == 206 and ok.content == b"version"
    assert requests.get(url, headers={"If-None-Match": e1}).status_code == 304
    assert requests.get(url, headers={"If-None-Match": f"W/{e1}"}).status_code == 304
    assert requests.get(url, headers={"If-Modified-Since": lm1}).status_code == 304
    assert requests.get(url, headers={"If-Match": "*"}).status_code == 200
    assert requests.get(url, headers={"If-Match": f"W/{e1}"}).status_code == 412   # strong only

    srv.put("o", b"version one")             # same bytes, still a new version
    r2 = requests.get(url)
    e2, lm2 = r2.headers["ETag"], r2.headers["Last-Modified"]
    assert e2 != e1 and lm2 != lm1
    stale = requests.get(url, headers={"If-Match": e1, "Range": "bytes=0-3"})
    assert stale.status_code == 412
    assert requests.head(url, headers={"If-Match": e1}).status_code == 412
    assert requests.get(url, headers={"If-Unmodified-Since": lm1}).status_code == 412
    assert requests.get(url, headers={"If-None-Match": e1}).status_code == 200
    # If-Range: a stale validator turns the range request into a full 200
    assert requests.get(url, headers={"Range": "bytes=0-3", "If-Range": e1}).status_code == 200
    cur = requests.get(url, headers={"Range": "bytes=0-3", "If-Range": e2})
    assert cur.status_code == 206 and cur.content == b"vers"
    # deleting: 404, and a precondition does not mask it
    assert srv.delete("o") and not srv.delete("o")
    assert requests.get(url, headers={"If-Match": e2}).status_code == 404

    # files: rewriting changes the ETag
    p = tmp_path / "f.bin"
    p.write_bytes(b"a" * 100)
    ef1 = requests.head(srv.url_for("f.bin")).headers["ETag"]
    p.write_bytes(b"b" * 100)
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    ef2 = requests.head(srv.url_for("f.bin")).headers["ETag"]
    assert ef1 != ef2
    assert requests.get(srv.url_for("f.bin"), headers={"If-Match": ef1}).status_code == 412


def test_fsspec_http(srv, http_fs):
    data = make_bytes(1_000_000, 3)
    srv.put("dir/blob.bin", data)
    url = srv.url_for("dir/blob.bin")
    info = http_fs.info(url)
    assert info["size"] == len(data)
    assert info["ETag"] == srv.etag("dir/blob.bin")
    assert http_fs.cat_file(url, start=10, end=20) == data[10:20]
    assert http_fs.cat_file(url, start=999_000, end=1_000_000) == data[999_000:]
    assert http_fs.cat_file(url) == data
    with http_fs.open(url, "rb", block_size=65536) as f:
        f.seek(500_000)
        assert f.read(100) == data[500_000:500_100]
    pinned = {"If-Match": info["ETag"]}
    assert http_fs.cat_file(url, start=0, end=5, headers=pinned) == data[:5]
    srv.put("dir/blob.bin", data)
    with pytest.raises(Exception) as ei:
        http_fs.cat_file(url, start=0, end=5, headers=pinned)
    assert "412" in str(ei.value)
    with pytest.raises(FileNotFoundError):
        http_fs.cat_file(srv.url_for("missing"))
    assert (10, 20) in srv.spans("dir/blob.bin")


# --------------------------------------------------------------------------- rate caps

RATE = 8 * MB


def test_per_connection_cap(srv):
    srv.put("o", make_bytes(20 * MB, 4))
    srv.rate_per_conn = RATE
    n, dt = _timed_get(srv.url_for("o"))
    assert n == 20 * MB
    rate = n / dt
    assert abs(rate / RATE - 1) < 0.05, f"{rate / MB:.2f} MB/s against a cap of 8 MB/s"
    assert srv.bytes_sent == 20 * MB


def test_two_connections_each_get_their_cap(tmp_path):
    make_file(tmp_path / "f.bin", 16 * MB, 5)          # a file: the paced sendfile path
    with OriginServer(tmp_path, rate_per_conn=RATE) as s:
        url = s.url_for("f.bin")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as ex:
            results = list(ex.map(lambda _: _timed_get(url), range(2)))
        wall = time.perf_counter() - t0
        for n, dt in results:
            assert n == 16 * MB
            assert abs(n / dt / RATE - 1) < 0.05, f"{n / dt / MB:.2f} MB/s"
        aggregate = 32 * MB / wall
        assert 1.85 < aggregate / RATE < 2.05, f"aggregate {aggregate / MB:.2f} MB/s"
        assert s.connections == 2


def test_global_cap_shared(srv):
    srv.put("o", make_bytes(6 * MB, 6))
    srv.global_rate = RATE
    url = srv.url_for("o")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda _: _timed_get(url), range(2)))
    wall = time.perf_counter() - t0
    assert all(n == 6 * MB for n, _ in results)
    assert abs(12 * MB / wall / RATE - 1) < 0.08, f"aggregate {12 * MB / wall / MB:.2f} MB/s"
    srv.global_rate = None
    n, dt = _timed_get(url)
    assert n / dt > 50 * MB                             # lifted at runtime


# --------------------------------------------------------------------------- faults

def test_fail_next_and_refuse(srv):
    srv.put("o", b"hello")
    url = srv.url_for("o")
    srv.fail_next(2)
    assert requests.get(url).status_code == 500
    assert requests.head(url).status_code == 500
    assert requests.get(url).content == b"hello"
    srv.fail_next(1, status=503, method="GET", path="other")
    assert requests.get(url).status_code == 200          # other path: not consumed
    assert requests.get(srv.url_for("other")).status_code == 503
    assert requests.get(srv.url_for("other")).status_code == 404
    srv.refuse("o")
    assert requests.get(url).status_code == 403
    assert requests.get(url).status_code == 403
    assert srv.refuse_paths == {"o": 403}
    srv.unrefuse("o")
    assert requests.get(url).status_code == 200
    statuses = [r.status for r in srv.requests_for("o", method=None)]
    assert statuses == [500, 500, 200, 200, 403, 403, 200]


def test_drop_after(srv, http_fs):
    data = make_bytes(1_000_000, 7)
    srv.put("o", data)
    url = srv.url_for("o")
    srv.drop_after(100_000, count=2)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url).content
    with pytest.raises(Exception):
        http_fs.cat_file(url, start=0, end=500_000)
    assert requests.get(url).content == data             # only the next 2 requests
    srv.drop_after(10, reset=True)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url, headers={"Range": "bytes=0-999"}).content
    srv.drop_after(5000)                                 # a 100-byte body: not applied...
    assert requests.get(url, headers={"Range": "bytes=0-99"}).content == data[:100]
    with pytest.raises(requests.exceptions.RequestException):   # ...still pending
        requests.get(url, headers={"Range": "bytes=0-9999"}).content
    assert requests.get(url, headers={"Range": "bytes=0-9999"}).content == data[:10000]
    log = srv.requests_for("o")
    assert [r.complete for r in log] == [False, False, True, False, True, False, True]
    assert srv.bytes_sent == 100_000 * 2 + len(data) + 10 + 100 + 5000 + 10000


def test_stall_after(srv):
    data = make_bytes(200_000, 8)
    srv.put("o", data)
    srv.stall_after(50_000, 0.5)
    n, dt = _timed_get(srv.url_for("o"))
    assert n == len(data) and dt >= 0.5
    n, dt = _timed_get(srv.url_for("o"))
    assert dt < 0.4
    with pytest.raises(requests.exceptions.RequestException):  # a short client read timeout
        srv.stall_after(0, 2.0)
        requests.get(srv.url_for("o"), timeout=(2, 0.3)).content


# --------------------------------------------------------------------------- lifecycle

def test_many_servers_close_cleanly(tmp_path):
    before = threading.active_count()
    for i in range(15):
        s = OriginServer(tmp_path)
        s.put("o", make_bytes(1_000_000, i))
        sess = requests.Session()                        # holds a keep-alive connection open
        assert sess.get(s.url_for("o")).status_code == 200
        if i % 3 == 0:                                   # and one stalled mid-transfer
            s.stall_after(1000, 30)
            t = threading.Thread(target=lambda u=s.url_for("o"): _swallow(u), daemon=True)
            t.start()
            time.sleep(0.05)
        t0 = time.perf_counter()
        s.close()
        assert time.perf_counter() - t0 < 1.0
        assert s.active_connections == 0
        sess.close()
    time.sleep(0.1)
    leftover = [t for t in threading.enumerate() if t.name.startswith("httporigin")]
    assert leftover == []
    assert threading.active_count() <= before + 1


def _swallow(url):
    try:
        requests.get(url, timeout=10).content
    except requests.exceptions.RequestException:
        pass


def test_command_line(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"from the cli")
    p = subprocess.Popen([sys.executable, "-m", "meshcache.lab.httporigin", "--dir",
                          str(tmp_path), "--port", "0", "--rate-per-conn", "20e6",
                          "--make", "gen.bin=100k:3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = p.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url + "/a.txt").content == b"from the cli"
        assert requests.get(url + "/gen.bin").content == make_bytes(100 << 10, 3)
    finally:
        p.terminate()
        assert p.wait(10) == 0
    assert "requests=2" in p.stderr.read()


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c is not installed")
def test_aria2c_eight_connections(tmp_path):
    src = tmp_path / "src"
    make_file(src / "big.bin", 64 << 20, 9)
    expected = (src / "big.bin").read_bytes()
    quiet = ["--allow-overwrite=true", "--auto-file-renaming=false", "--file-allocation=none",
             "--summary-interval=0", "--console-log-level=warn", "--no-conf"]
    with OriginServer(src) as s:
        # As written in the docs; aria2c's 20 MiB minimum split means 2 connections for 64 MiB.
        r = subprocess.run(["aria2c", "-x", "8", "-s", "8", "-d", str(tmp_path / "o1"), *quiet,
                            s.url_for("big.bin")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (tmp_path / "o1" / "big.bin").read_bytes() == expected
        # With a 1 MiB minimum split it really opens 8 connections, each on its own ranges.
        s.reset_stats()
        r = subprocess.run(["aria2c", "-x", "8", "-s", "8", "-k", "1M", "-d",
                            str(tmp_path / "o2"), *quiet, s.url_for("big.bin")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (tmp_path / "o2" / "big.bin").read_bytes() == expected
        assert s.connections >= 8, s.connections
        assert len({rec.conn for rec in s.requests_for("big.bin")}) >= 8

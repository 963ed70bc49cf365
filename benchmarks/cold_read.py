"""Cold read: the first read of a big object from a real local HTTP origin that caps each
connection at 20 MB/s, through meshcache (readahead of 8 blocks), plain fsspec, and aria2c with
the same 8 connections, in one run.

Last line: {"meshcache_MBps", "fsspec_MBps", "aria2_MBps", "ratio", "ratio_vs_aria2", ...}.
Target: ratio_vs_aria2 >= 1.0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Iterator

sys.path.insert(0, os.path.dirname(__file__))
from _common import GiB, MiB, Timer, emit, log, make_file, parse  # noqa: E402

import fsspec  # noqa: E402

import meshcache  # noqa: E402
from meshcache.core.digest import digest  # noqa: E402


@contextlib.contextmanager
def origin_process(directory: str, rate: float) -> Iterator[str]:
    """`python -m meshcache.lab.httporigin` in a child process; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "meshcache.lab.httporigin", "--dir", directory,
                             "--rate-per-conn", str(rate)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)


def run_meshcache(url: str, cache_dir: str, block_size: int, readahead: int) -> tuple[float, bytes]:
    node = meshcache.Node(meshcache.Config.local(cache_dir=cache_dir, block_size=block_size,
                                                 readahead=readahead,
                                                 origin_concurrency=readahead))
    # A running node (daemon, DataLoader worker) has its HTTP client loaded: warm it on another
    # object so the clock measures the first read of this object, not Python imports.
    node.stat(url.rsplit("/", 1)[0] + "/warmup.bin")
    buf = bytearray(4 * MiB)
    with Timer() as t:
        with node.open(url) as f:
            while f.readinto(buf):
                pass
    with node.open(url) as f:  # check the bytes after the clock stops, as for aria2c
        got = digest(f.read())
        assert f.stats["bytes_from_origin"] == 0
    node.close()
    return t.seconds, got


def run_fsspec(url: str) -> tuple[float, bytes]:
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    with Timer() as t:
        with fs.open(url, "rb") as f:
            data = f.read()
    return t.seconds, digest(data)


def run_aria2(url: str, out_dir: str, conns: int) -> tuple[float, bytes] | None:
    exe = shutil.which("aria2c")
    if exe is None:
        return None
    with Timer() as t:
        subprocess.run([exe, "-q", "-x", str(conns), "-s", str(conns), "-k", "1M",
                        "--file-allocation=none", "--allow-overwrite=true", "-d", out_dir,
                        "-o", "aria2.out", url], check=True)
    path = os.path.join(out_dir, "aria2.out")
    with open(path, "rb") as f:
        d = digest(f.read())
    os.unlink(path)
    return t.seconds, d


def main() -> None:
    args = parse(__doc__.splitlines()[0],
                 size=(int, 0, "object size (default 1 GiB, quick 256 MiB)"),
                 rate=(float, 20e6, "per-connection cap at the origin, bytes/s"),
                 connections=(int, 8, "readahead blocks for meshcache, -x/-s for aria2c"),
                 block_sizes=(str, "", "comma-separated block sizes to try (default: the "
                              "Config default only)"),
                 skip_fsspec=(int, 0, "1 to skip the slow single-connection fsspec baseline"))
    size = args.size or (256 * MiB if args.quick else GiB)
    sizes = [int(b) for b in args.block_sizes.split(",") if b] or [meshcache.Config().block_size]
    with tempfile.TemporaryDirectory(prefix="meshcache-cold-") as tmp:
        make_file(os.path.join(tmp, "object.bin"), size, seed=7)
        make_file(os.path.join(tmp, "warmup.bin"), 1024, seed=8)
        with open(os.path.join(tmp, "object.bin"), "rb") as f:
            want = digest(f.read())
        # The origin runs in its own process, as a remote origin would: sharing this process's
        # GIL would slow meshcache's loop but not aria2c.
        with origin_process(tmp, args.rate) as base:
            url = f"{base}/object.bin"
            result: dict = {"benchmark": "cold_read", "size_bytes": size,
                            "rate_per_conn": args.rate, "connections": args.connections}
            for b in sizes:
                secs, got = run_meshcache(url, os.path.join(tmp, f"cache-{b}"), b,
                                          args.connections)
                assert got == want, "meshcache returned wrong bytes"
                mbps = size / secs / 1e6
                log(f"meshcache B={b >> 20} MiB: {mbps:.1f} MB/s ({secs:.2f} s)")
                result[f"meshcache_B{b >> 20}MiB_MBps"] = mbps
                shutil.rmtree(os.path.join(tmp, f"cache-{b}"))
            result["block_size"] = sizes[0]
            result["meshcache_MBps"] = result[f"meshcache_B{sizes[0] >> 20}MiB_MBps"]
            aria = run_aria2(url, tmp, args.connections)
            if aria is not None:
                assert aria[1] == want, "aria2c returned wrong bytes"
                result["aria2_MBps"] = size / aria[0] / 1e6
                log(f"aria2c -x{args.connections}: {result['aria2_MBps']:.1f} MB/s")
            else:
                log("aria2c not found (apt-get install aria2): no aria2 baseline")
            if not args.skip_fsspec:
                secs, got = run_fsspec(url)
                assert got == want, "fsspec returned wrong bytes"
                result["fsspec_MBps"] = size / secs / 1e6
                log(f"fsspec: {result['fsspec_MBps']:.1f} MB/s")
    if "fsspec_MBps" in result:
        result["ratio"] = result["meshcache_MBps"] / result["fsspec_MBps"]
    if "aria2_MBps" in result:
        result["ratio_vs_aria2"] = result["meshcache_MBps"] / result["aria2_MBps"]
    emit(result)


if __name__ == "__main__":
    main()

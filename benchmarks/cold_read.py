"""Cold read: the first read of a big object from a real local HTTP origin that caps each
connection at 20 MB/s, through meshcache (readahead of 8 blocks), plain fsspec, and aria2c with
the same 8 connections, in one run.

Last line: {"meshcache_MBps", "fsspec_MBps", "aria2_MBps", "ratio", "ratio_vs_aria2", ...}.
Target: ratio_vs_aria2 >= 1.0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from _common import GiB, MiB, Timer, emit, log, make_file, parse  # noqa: E402

import fsspec  # noqa: E402

import meshcache  # noqa: E402
from meshcache.digest import digest  # noqa: E402
from meshcache.lab.httporigin import OriginServer  # noqa: E402


def run_meshcache(url: str, cache_dir: str, block_size: int, readahead: int) -> tuple[float, bytes]:
    node = meshcache.Node(meshcache.Config.local(cache_dir=cache_dir, block_size=block_size,
                                                 readahead=readahead,
                                                 origin_concurrency=readahead))
    buf = bytearray(4 * MiB)
    import blake3
    h = blake3.blake3()
    with Timer() as t:
        with node.open(url) as f:
            while n := f.readinto(buf):
                h.update(memoryview(buf)[:n])
    node.close()
    return t.seconds, h.digest()


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
        with open(os.path.join(tmp, "object.bin"), "rb") as f:
            want = digest(f.read())
        with OriginServer(directory=tmp, rate_per_conn=args.rate) as srv:
            url = srv.url_for("object.bin")
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
            srv.reset_stats()
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

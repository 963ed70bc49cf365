"""Fanout: 8 lab hosts (network namespaces on a bridge) read one object at once from an origin
whose egress is capped at R = 50 Mbit/s (tc tbf), through meshcache, and, in the same run, as a
libtorrent swarm of the same hosts with the same origin as its web seed (BEP 19).

Last line: {"meshcache_s", "libtorrent_s", "origin_bytes_ratio" (target <= 1.02),
"completion_ratio" (target <= 1.25), "ratio_vs_libtorrent" (target <= 1.0), ...}.
Needs root (network namespaces).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)  # libtorrent's 1.x-style API
sys.path.insert(0, os.path.dirname(__file__))
from _common import GiB, MiB, emit, log, make_file, parse  # noqa: E402
from _mesh_fanout import _line, run_meshcache, stop_all, tx_bytes  # noqa: E402

from meshcache.lab.netns import Lab, requires_root  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def make_torrent(path: str, url: str, piece: int) -> str:
    """A single-file torrent whose web seed (BEP 19) is the origin URL of the file."""
    import libtorrent as lt

    fs = lt.file_storage()
    lt.add_files(fs, path)
    t = lt.create_torrent(fs, piece)
    t.add_url_seed(url)
    lt.set_piece_hashes(t, os.path.dirname(path))
    out = path + ".torrent"
    with open(out, "wb") as f:
        f.write(lt.bencode(t.generate()))
    return out


def run_libtorrent(lab: Lab, torrent: str, work: str, timeout: float) -> dict:
    procs = []
    for h in lab.hosts:
        save = os.path.join(work, "lt-" + h.name)
        os.makedirs(save, exist_ok=True)
        peers = [o.address for o in lab.hosts if o is not h]
        procs.append(h.python([os.path.join(HERE, "_swarm.py"), torrent, save, h.address,
                               *peers], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True))
    try:
        for p in procs:
            _line(p, 60)
        before = tx_bytes(lab.origin)
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        done = [_line(p, timeout)["done"] for p in procs]
        origin_bytes = tx_bytes(lab.origin) - before
    finally:
        stop_all(procs)
    return {"libtorrent_s": max(done), "libtorrent_origin_bytes": origin_bytes}


def main() -> None:
    args = parse(__doc__.splitlines()[0],
                 size=(int, 0, "object size (default 1 GiB, quick 128 MiB)"),
                 rate=(float, 50e6, "origin egress cap, bits/s"),
                 hosts=(int, 8, "lab hosts"),
                 skip_libtorrent=(int, 0, "1 to run the meshcache half only"))
    reason = requires_root()
    if reason:
        log(f"fanout needs the network-namespace lab: {reason}")
        emit({"benchmark": "fanout", "skipped": reason})
        return
    size = args.size or (128 * MiB if args.quick else GiB)
    ideal = size / (args.rate / 8)
    timeout = 10 * ideal + 120
    work = tempfile.mkdtemp(prefix="meshcache-fanout-")
    path = os.path.join(work, "model.bin")
    make_file(path, size, seed=11)
    result: dict = {"benchmark": "fanout", "size_bytes": size, "hosts": args.hosts,
                    "origin_rate_bits": args.rate, "ideal_s": ideal}
    with Lab(args.hosts, origin=True) as lab:
        lab.cap_egress(lab.origin, args.rate)
        origin = lab.origin.python(["-m", "meshcache.lab.httporigin", "--dir", work, "--host",
                                    lab.origin.address, "--port", "8080"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            base = origin.stdout.readline().strip()
            url = f"{base}/model.bin"
            log(f"{args.hosts} hosts, {size >> 20} MiB, origin capped at {args.rate / 1e6:g} "
                f"Mbit/s: the origin alone needs {ideal:.1f} s")
            mesh = run_meshcache(lab, url, size, args.rate, timeout=timeout)
            log(f"meshcache: slowest host {mesh['meshcache_s']:.1f} s, origin sent "
                f"{mesh['meshcache_origin_bytes'] / size:.3f}x the object")
            result.update(mesh)
            if not args.skip_libtorrent:
                torrent = make_torrent(path, url, 4 * MiB)
                lt_res = run_libtorrent(lab, torrent, work, timeout)
                log(f"libtorrent: slowest host {lt_res['libtorrent_s']:.1f} s, origin sent "
                    f"{lt_res['libtorrent_origin_bytes'] / size:.3f}x the object")
                result.update(lt_res)
        finally:
            origin.terminate()
            origin.wait(10)
    result.pop("meshcache_digest", None)
    result["origin_bytes_ratio"] = result["meshcache_origin_bytes"] / size
    result["completion_ratio"] = result["meshcache_s"] / ideal
    if "libtorrent_s" in result:
        result["ratio_vs_libtorrent"] = result["meshcache_s"] / result["libtorrent_s"]
        result["libtorrent_origin_bytes_ratio"] = result["libtorrent_origin_bytes"] / size
        result["libtorrent_completion_ratio"] = result["libtorrent_s"] / ideal
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()

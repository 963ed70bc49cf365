"""Fanout: 8 lab hosts (network namespaces on a bridge) read one object at once from an origin
whose egress is capped at R = 50 Mbit/s (tc tbf), through meshcache, and, in the same run, as a
libtorrent swarm of the same hosts with the same origin as its web seed (BEP 19).

Last line: {"meshcache_s", "libtorrent_s", "origin_bytes_ratio" (target <= 1.02),
"completion_ratio" (target <= 1.25), "ratio_vs_libtorrent" (target <= 1.0),
"libtorrent_origin_bytes", ...}; a half that did not run has its keys null.
Origin bytes are counted on the wire: tx_bytes of the origin namespace's eth0 (Ethernet, IP, TCP
and HTTP headers included), the interface the tbf cap sits on.
Needs root (network namespaces).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)  # libtorrent's 1.x-style API
sys.path.insert(0, os.path.dirname(__file__))
from _common import GiB, MiB, emit, log, make_file, parse, ratio  # noqa: E402
from _lt import make_torrent, run_swarm  # noqa: E402
from _mesh_fanout import run_meshcache, tx_bytes  # noqa: E402

from meshcache.lab.netns import Lab, requires_root  # noqa: E402

# --------------------------------------------------------------------------- libtorrent half

def run_libtorrent(lab: Lab, torrent: str, work: str, size: int, timeout: float,
                   settings: str = "") -> dict[str, Any]:
    """Every lab host runs benchmarks/_swarm.py on `torrent` at once; time from the common 'go'
    until the last host has every piece hash-checked; count the origin's egress meanwhile."""
    def origin_sent(before: int) -> str:
        return f", origin sent {(tx_bytes(lab.origin) - before) / size:.2f}x"

    run = run_swarm(lab.hosts, torrent, work, timeout, lambda: tx_bytes(lab.origin),
                    settings=settings, progress=origin_sent)
    done = run["done"]
    return {"libtorrent_s": run["slowest_s"],
            "libtorrent_origin_bytes": run["after"] - run["before"],
            "libtorrent_web_seed_payload_bytes": sum(d["web_seed_bytes"] for d in done.values()),
            "libtorrent_peer_payload_bytes": sum(d["peer_bytes"] for d in done.values()),
            "libtorrent_redundant_bytes": sum(d["redundant_bytes"] for d in done.values()),
            "libtorrent_per_host_s": [round(done[i]["done"], 2) for i in range(len(done))]}


# --------------------------------------------------------------------------- main

def main() -> None:
    args = parse(__doc__.splitlines()[0],
                 size=(int, 0, "object size (default 1 GiB, quick 128 MiB)"),
                 rate=(float, 50e6, "origin egress cap, bits/s"),
                 hosts=(int, 8, "lab hosts"),
                 skip_libtorrent=(int, 0, "1 to run the meshcache half only"),
                 skip_meshcache=(int, 0, "1 to run the libtorrent half only"),
                 lt_settings=(str, "", "JSON libtorrent settings_pack overrides for _swarm.py"))
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
    result: dict[str, Any] = {
        "benchmark": "fanout", "size_bytes": size, "hosts": args.hosts,
        "origin_rate_bits": args.rate, "ideal_s": ideal,
        "meshcache_s": None, "meshcache_origin_bytes": None,
        "libtorrent_s": None, "libtorrent_origin_bytes": None}
    try:
        with Lab(args.hosts, origin=True) as lab:
            lab.cap_egress(lab.origin, args.rate)
            origin = lab.origin.python(
                ["-m", "meshcache.lab.httporigin", "--dir", work, "--host", lab.origin.address,
                 "--port", "8080"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                base = origin.stdout.readline().strip()
                if not base.startswith("http"):
                    raise RuntimeError(f"origin did not start: {base!r}")
                url = f"{base}/model.bin"
                log(f"{args.hosts} hosts, {size >> 20} MiB, origin capped at "
                    f"{args.rate / 1e6:g} Mbit/s: the origin alone needs {ideal:.1f} s")
                if args.skip_meshcache:
                    log("meshcache: skipped (--skip-meshcache 1)")
                else:
                    mesh = run_meshcache(lab, url, size, args.rate, timeout=timeout)
                    mesh.pop("meshcache_digest", None)
                    log(f"meshcache: slowest host {mesh['meshcache_s']:.1f} s, origin sent "
                        f"{mesh['meshcache_origin_bytes'] / size:.3f}x the object")
                    result.update(mesh)
                if args.skip_libtorrent:
                    log("libtorrent: skipped (--skip-libtorrent 1)")
                else:
                    torrent = make_torrent(path, url)
                    lt_res = run_libtorrent(lab, torrent, work, size, timeout, args.lt_settings)
                    log(f"libtorrent: slowest host {lt_res['libtorrent_s']:.1f} s, origin sent "
                        f"{lt_res['libtorrent_origin_bytes'] / size:.3f}x the object")
                    result.update(lt_res)
            finally:
                origin.terminate()
                origin.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result["origin_bytes_ratio"] = ratio(result["meshcache_origin_bytes"], size)
    result["completion_ratio"] = ratio(result["meshcache_s"], ideal)
    result["ratio_vs_libtorrent"] = ratio(result["meshcache_s"], result["libtorrent_s"])
    result["libtorrent_origin_bytes_ratio"] = ratio(result["libtorrent_origin_bytes"], size)
    result["libtorrent_completion_ratio"] = ratio(result["libtorrent_s"], ideal)
    emit(result)


if __name__ == "__main__":
    main()

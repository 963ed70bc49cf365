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

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)  # libtorrent's 1.x-style API
sys.path.insert(0, os.path.dirname(__file__))
from _common import GiB, MiB, emit, log, make_file, parse  # noqa: E402
from _mesh_fanout import run_meshcache, stop_all, tx_bytes  # noqa: E402

from meshcache.lab.netns import Lab, requires_root  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PIECE = 4 * MiB


# --------------------------------------------------------------------------- libtorrent half

def make_torrent(path: str, url: str, piece: int = PIECE) -> str:
    """A single-file torrent of `path` whose web seed (BEP 19 `url-list`) is `url`. For a
    single-file torrent the URL names the file itself (a URL ending in '/' would get the file
    name appended), so it is the origin's full URL of the object."""
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


class _Lines:
    """JSON lines from many children at once (select), so no pipe fills while we wait on one."""

    def __init__(self, procs: list[subprocess.Popen]):
        self.procs = procs
        self.buf = {p.stdout.fileno(): b"" for p in procs}
        self.by_fd = {p.stdout.fileno(): i for i, p in enumerate(procs)}

    def poll(self, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        out = []
        ready, _, _ = select.select(list(self.buf), [], [], timeout)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            i = self.by_fd[fd]
            if not chunk:
                rc = self.procs[i].wait(5)
                raise RuntimeError(f"swarm peer {i} exited with {rc}")
            self.buf[fd] += chunk
            *lines, self.buf[fd] = self.buf[fd].split(b"\n")
            out += [(i, json.loads(line)) for line in lines if line.strip()]
        return out


def run_libtorrent(lab: Lab, torrent: str, work: str, size: int, timeout: float,
                   settings: str = "") -> dict[str, Any]:
    """Every lab host runs benchmarks/_swarm.py on `torrent` at once; time from the common 'go'
    until the last host has every piece hash-checked; count the origin's egress meanwhile."""
    procs = []
    for h in lab.hosts:
        save = os.path.join(work, "lt-" + h.name)
        os.makedirs(save, exist_ok=True)
        args = [os.path.join(HERE, "_swarm.py"), torrent, save, h.address,
                *[o.address for o in lab.hosts if o is not h]]
        if settings:
            args += ["--set", settings]
        procs.append(h.python(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    lines = _Lines(procs)
    try:
        ready: set[int] = set()
        deadline = time.monotonic() + 60
        while len(ready) < len(procs):
            if time.monotonic() > deadline:
                raise TimeoutError("swarm peers did not start")
            ready |= {i for i, msg in lines.poll(1.0) if "ready" in msg}
        before = tx_bytes(lab.origin)
        t0 = time.time()
        for p in procs:
            p.stdin.write(b"go\n")
            p.stdin.flush()
        done: dict[int, dict[str, Any]] = {}
        last: dict[int, dict[str, Any]] = {}
        deadline, next_log = time.monotonic() + timeout, time.monotonic() + 5
        while len(done) < len(procs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"libtorrent: {len(done)}/{len(procs)} hosts done in time")
            for i, msg in lines.poll(0.5):
                if "done" in msg:
                    done[i] = msg
                    if len(done) == len(procs):
                        origin_bytes = tx_bytes(lab.origin) - before
                else:
                    last[i] = msg
            if time.monotonic() >= next_log:
                sent = tx_bytes(lab.origin) - before
                log(f"  libtorrent t={time.time() - t0:5.1f}s: {len(done)} done, progress "
                    + " ".join(f"{last[i]['progress']:.2f}" if i in last and i not in done
                               else "done" if i in done else "-" for i in range(len(procs)))
                    + f", origin sent {sent / size:.2f}x")
                next_log += 5
        # Both clocks are this machine's: the slowest host's completion since the common go.
        slowest = max(d["done_at"] for d in done.values()) - t0
    finally:
        stop_all(procs)
    web = sum(d["web_seed_bytes"] for d in done.values())
    return {"libtorrent_s": slowest, "libtorrent_origin_bytes": origin_bytes,
            "libtorrent_web_seed_payload_bytes": web,
            "libtorrent_peer_payload_bytes": sum(d["peer_bytes"] for d in done.values()),
            "libtorrent_redundant_bytes": sum(d["redundant_bytes"] for d in done.values()),
            "libtorrent_per_host_s": [round(done[i]["done"], 2) for i in range(len(procs))]}


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

    def ratio(a: Any, b: Any) -> float | None:
        return a / b if a is not None and b else None

    result["origin_bytes_ratio"] = ratio(result["meshcache_origin_bytes"], size)
    result["completion_ratio"] = ratio(result["meshcache_s"], ideal)
    result["ratio_vs_libtorrent"] = ratio(result["meshcache_s"], result["libtorrent_s"])
    result["libtorrent_origin_bytes_ratio"] = ratio(result["libtorrent_origin_bytes"], size)
    result["libtorrent_completion_ratio"] = ratio(result["libtorrent_s"], ideal)
    emit(result)


if __name__ == "__main__":
    main()

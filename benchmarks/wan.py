"""WAN: 3 zones of 3 lab hosts, each zone its own LAN, joined by WAN links (20 ms one way, a
1500-byte MTU, each link and direction capped at R); an object cached in zone A; every host of
zones B and C reads it at once, through meshcache (zone owners fetch across the WAN, found through
the DHT) and, in the same run, as a libtorrent swarm of the same 9 hosts (zone A's hosts seed).

Last line: {"wan_bytes_ratio" (largest bytes one inter-zone link carried / object size; target
<= 1.02), "libtorrent_wan_bytes_ratio", "completion_ratio" (slowest host of B and C / (size / R);
target <= 1.3), "ratio_vs_libtorrent" (meshcache time / libtorrent time; target <= 1.0),
"origin_bytes_ratio" (origin bytes while B and C read / size; target 0), ...}; a half that did not
run has its keys null and says why. Link bytes are counted on the wire at the relays (IPv4
packets: IP, UDP/TCP and QUIC/BitTorrent headers included). Needs root (network namespaces).

R (default 32 Mbit/s) is chosen so the links, not this 2-core machine, are the bottleneck: one
relay moves 30-45 MB/s (240-360 Mbit/s) of TCP through 20 ms, and a link direction running at R
costs it ~0.13 of a core; the libtorrent half runs its busiest link at ~0.97 of R (at 24 and at
32 Mbit/s alike); the ends (QUIC at 1500-byte packets, three zones reading at once) are what a
higher R would run out of. The JSON reports how full the
busiest link ran (`*_busiest_link_load`), the relays' CPU and the machine's busy fraction during
each half, so a run where the CPU was the limit shows it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Callable

warnings.filterwarnings("ignore", category=DeprecationWarning)  # libtorrent's 1.x-style API
sys.path.insert(0, os.path.dirname(__file__))
from _common import GiB, MiB, emit, log, make_file, parse, ratio  # noqa: E402
from _lt import make_torrent, run_swarm, spawn_swarm  # noqa: E402
from _mesh_fanout import stop_all  # noqa: E402

from meshcache import Config  # noqa: E402
from meshcache.lab.lines import next_json  # noqa: E402
from meshcache.lab.netns import requires_root  # noqa: E402
from meshcache.lab.zones import ZoneLab  # noqa: E402
from meshcache.mesh.auth import new_secret  # noqa: E402

BEGAN = time.monotonic()
PORT = 7946
ANNOUNCED = 3.5  # seconds for zone a's last announcements (flushed every 2 s) to land
DHT_PORT = 7947
SECRET = new_secret()        # one fresh credential for the run's nodes


def stamp(what: str) -> None:
    """Log a step with the seconds since the run began (where a run's time goes)."""
    log(f"[{time.monotonic() - BEGAN:5.1f}s] {what}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(lab: ZoneLab) -> dict[str, Any]:
    """Link counters, relay CPU and the machine's CPU counters, now."""
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return {"wan": lab.wan_bytes(), "rate": lab.wan_rate, "t": time.monotonic(),
            "idle": cpu[3] + cpu[4],
            "total": sum(cpu[:8]),
            "relay_cpu": sum(cpu_seconds(p) for p in lab.relay_pids().values())}


def phase(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """What happened between two samples: bytes per link, origin bytes, relay CPU, busy CPU."""
    moved = {k: end["wan"][k] - start["wan"][k] for k in end["wan"]}
    zones = {k: v for k, v in moved.items() if "origin" not in k}
    total = end["total"] - start["total"]
    seconds = end["t"] - start["t"]
    return {"link_bytes": zones, "max_link_bytes": max(zones.values()),
            # how full the busiest link ran: near 1, the links (not the CPU) set the pace
            "busiest_link_load": max(zones.values()) / (start["rate"] / 8 * seconds),
            "origin_bytes": sum(v for k, v in moved.items() if k.startswith("origin>")),
            "relay_cpu_s": end["relay_cpu"] - start["relay_cpu"],
            "machine_busy": 1 - (end["idle"] - start["idle"]) / total if total else None,
            "seconds": seconds}


# --------------------------------------------------------------------------- meshcache half

def watch_links(lab: ZoneLab, start: dict[str, Any], done: threading.Event,
                every: float = 5.0) -> None:
    """Log each link's load (fraction of R) every `every` seconds until `done`."""
    last = start
    while not done.wait(every):
        now = sample(lab)
        dt = now["t"] - last["t"]
        loads = {k: (now["wan"][k] - last["wan"][k]) / (lab.wan_rate / 8 * dt)
                 for k in now["wan"] if "origin" not in k and k[0] != k[-1]}
        log(f"  meshcache t={now['t'] - start['t']:5.1f}s link load "
            + " ".join(f"{k} {v:.2f}" for k, v in sorted(loads.items()) if v > 0.02))
        last = now


def rung_missing() -> str | None:
    """Why the meshcache half cannot run yet (no remote-zone rung to find zone A's blocks)."""
    if "dht_bootstrap" not in {f.name for f in dataclasses.fields(Config)}:
        return "this build has no remote-zone rung (Config has no dht_bootstrap)"
    return None


def run_meshcache(lab: ZoneLab, url: str, work: str, timeout: float, logs: str = "",
                  meanwhile: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """One node of zone A reads the object (each block through its zone owner, from the origin:
    now every block is cached in zone A, announced by its owner; B's and C's nodes start
    meanwhile); then every node of B and C reads it at once; measure that."""
    bootstrap = f"{lab.zones['a'][0].address}:{DHT_PORT}"
    go = {z: os.path.join(work, f"go-{z}") for z in ("a", "bc")}
    procs: dict[str, list[subprocess.Popen]] = {}

    def spawn(z: str) -> None:
        hosts = lab.zones[z]
        for k, h in enumerate(hosts):
            reads = z != "a" or k == 0  # zone a: one reader; its owners fetch the other blocks
            args = ["-m", "meshcache.lab.meshnode", "--cache-dir", os.path.join(work, h.name),
                    "--listen", f"{h.address}:{PORT}", "--secret", SECRET,
                    *(["--url", url] if reads else []),
                    "--go", go["a" if z == "a" else "bc"], "--members", str(len(hosts) - 1),
                    "--zone", z, "--preset", "wan",
                    "--set", f"dht_listen={json.dumps(f'{h.address}:{DHT_PORT}')}",
                    "--set", f"dht_bootstrap={json.dumps([bootstrap])}",
                    # a join sent before the bootstrap node listens is retried after this (the
                    # lab's round trips are 40 ms at most)
                    "--set", "dht_rpc_timeout=1.0",
                    # QUIC datagrams must fit the 1500-byte WAN path: sized from the 9000-byte
                    # LAN they are dropped at the first WAN hop (qh3 sends them with DF set)
                    "--max-datagram-size", "1452"]
            if logs:                    # INFO logs with times, one file per host
                os.makedirs(logs, exist_ok=True)
                args += ["--log", os.path.join(logs, f"{h.name}.log")]
            for o in hosts:
                if o is not h:
                    args += ["--peer", f"{o.address}:{PORT}"]
            procs.setdefault(z, []).append(h.python(args, stdout=subprocess.PIPE, text=True))

    try:
        for z in lab.zones:             # all at once: interpreters start up side by side
            spawn(z)
        for p in procs["a"]:
            next_json(p, 60)                                         # ready
        open(go["a"], "w").close()      # zone a warms up while b's and c's nodes finish starting
        for p in procs["b"] + procs["c"]:
            next_json(p, 60)                                         # ready
        stamp("meshcache nodes up")
        meanwhile()                     # (the swarm starts up while zone a warms up)
        seeded = [next_json(procs["a"][0], timeout)]
        stamp("zone a read the object from the origin")
        time.sleep(ANNOUNCED)        # announcements go out (batched every 2 s) and land
        start = sample(lab)
        open(go["bc"], "w").close()
        readers = [p for z in ("b", "c") for p in procs[z]]
        done = threading.Event()
        watcher = threading.Thread(target=watch_links, args=(lab, start, done), daemon=True)
        watcher.start()
        try:
            results = [next_json(p, timeout) for p in readers]
        finally:
            done.set()
            watcher.join()
        measured = phase(start, sample(lab))
        stamp("zones b and c read it")
    finally:
        stop_all([p for ps in procs.values() for p in ps])
        stamp("meshcache nodes stopped")
    errors = [r["error"] for r in seeded + results if "error" in r]
    if errors:
        raise RuntimeError(f"meshcache nodes failed: {errors}")
    if len({r["digest"] for r in seeded + results}) != 1:
        raise RuntimeError("meshcache nodes read different bytes")
    counters = sorted({k for r in results for k in r if k.startswith(("bytes_", "stripe_"))})
    # Payload each reading zone took from other zones (the nodes' bytes_from_zone:<z> counters):
    # what crossed its WAN links without packet headers.
    per_zone = [sum(v for r in results[i:i + 3] for k, v in r.items()
                    if k.startswith("bytes_from_zone:")) for i in (0, 3)]
    return {"meshcache_s": max(r["seconds"] for r in results),
            "meshcache_wall_s": measured["seconds"],
            "meshcache_per_host_s": [round(r["seconds"], 2) for r in results],
            "meshcache_max_zone_payload_bytes": max(per_zone),
            **{f"meshcache_{k}": measured[k] for k in ("link_bytes", "max_link_bytes",
                                                       "busiest_link_load", "origin_bytes",
                                                       "relay_cpu_s", "machine_busy")},
            **{f"meshcache_{k}": sum(r.get(k, 0) for r in results) for k in counters}}


# --------------------------------------------------------------------------- libtorrent half

def spawn_libtorrent(lab: ZoneLab, path: str, torrent: str, work: str, settings: str = ""
                     ) -> list[subprocess.Popen]:
    """All 9 hosts' swarm peers, started now and paused (they start up during meshcache's
    warm-up, then idle until the go); zone A's hosts start with the file (seeds)."""
    for h in lab.zones["a"]:
        save = os.path.join(work, "lt-" + h.name)
        os.makedirs(save, exist_ok=True)
        os.link(path, os.path.join(save, os.path.basename(path)))
    return spawn_swarm(lab.hosts, torrent, work, seeds=lab.zones["a"], settings=settings)


def run_libtorrent(lab: ZoneLab, torrent: str, procs: list[subprocess.Popen], size: int,
                   work: str, timeout: float) -> dict[str, Any]:
    """All 9 hosts join one swarm; zone A's start with the file (seeds); time B's and C's."""
    seeds = lab.zones["a"]

    def busiest(start: dict[str, Any]) -> str:
        return f", busiest WAN link {phase(start, sample(lab))['max_link_bytes'] / size:.2f}x"

    run = run_swarm(lab.hosts, torrent, work, timeout, lambda: sample(lab), seeds=seeds,
                    progress=busiest, procs=procs)
    measured = phase(run["before"], run["after"])
    done = run["done"]
    readers = [i for i, h in enumerate(lab.hosts) if h not in seeds]
    return {"libtorrent_s": run["slowest_s"],
            "libtorrent_per_host_s": [round(done[i]["done"], 2) for i in readers],
            **{f"libtorrent_{k}": measured[k] for k in ("link_bytes", "max_link_bytes",
                                                        "busiest_link_load", "origin_bytes",
                                                        "relay_cpu_s", "machine_busy")}}


# --------------------------------------------------------------------------- main

def run_halves(lab: ZoneLab, args: Any, result: dict[str, Any], work: str, size: int,
               timeout: float, torrent: str, start_swarm: Callable[[], None],
               swarm: list[subprocess.Popen]) -> None:
    """meshcache's half, then libtorrent's (its peers started during meshcache's warm-up), in
    one lab."""
    missing = rung_missing() if not args.skip_meshcache else "--skip-meshcache 1"
    if missing:
        log(f"meshcache: skipped ({missing})")
        result["meshcache_skipped"] = missing
    else:
        origin = lab.origin.python(
            ["-m", "meshcache.lab.httporigin", "--dir", work, "--host",
             lab.origin.address, "--port", "8080"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            base = origin.stdout.readline().strip()
            if not base.startswith("http"):
                raise RuntimeError(f"origin did not start: {base!r}")
            mesh = run_meshcache(lab, f"{base}/model.bin", work, timeout, args.logs,
                                 start_swarm)
        finally:
            origin.terminate()
            origin.wait(10)
        log(f"meshcache: slowest host {mesh['meshcache_s']:.1f} s, busiest link "
            f"{mesh['meshcache_max_link_bytes'] / size:.3f}x the object")
        result.update(mesh)
    if args.skip_libtorrent:
        log("libtorrent: skipped (--skip-libtorrent 1)")
    else:
        stamp("libtorrent half")
        start_swarm()
        lt_res = run_libtorrent(lab, torrent, swarm, size, work, timeout)
        stamp("libtorrent done")
        log(f"libtorrent: slowest host {lt_res['libtorrent_s']:.1f} s, busiest link "
            f"{lt_res['libtorrent_max_link_bytes'] / size:.3f}x the object at "
            f"{lt_res['libtorrent_busiest_link_load']:.2f} of its cap, machine "
            f"busy {lt_res['libtorrent_machine_busy']:.2f}, relays "
            f"{lt_res['libtorrent_relay_cpu_s']:.1f} CPU-s")
        result.update(lt_res)


def main() -> None:
    args = parse(__doc__.splitlines()[0],
                 size=(int, 0, "object size (default 1 GiB, quick 128 MiB)"),
                 rate=(float, 32e6, "cap of each WAN link and direction, bits/s"),
                 delay=(float, 0.020, "one-way delay of each WAN link, s"),
                 origin_rate=(float, 400e6, "cap of each origin link, bits/s (zone A's warm-up)"),
                 skip_libtorrent=(int, 0, "1 to run the meshcache half only"),
                 skip_meshcache=(int, 0, "1 to run the libtorrent half only"),
                 lt_settings=(str, "", "JSON libtorrent settings_pack overrides for _swarm.py"),
                 logs=(str, "", "directory for the meshcache nodes' INFO logs (diagnosis)"))
    reason = requires_root()
    if reason:
        log(f"wan needs the network-namespace lab: {reason}")
        emit({"benchmark": "wan", "skipped": reason})
        return
    began = time.monotonic()
    size = args.size or (128 * MiB if args.quick else GiB)
    ideal = size / (args.rate / 8)
    timeout = 10 * ideal + 120
    result: dict[str, Any] = {
        "benchmark": "wan", "size_bytes": size, "zones": 3, "hosts_per_zone": 3,
        "wan_rate_bits": args.rate, "wan_delay_s": args.delay, "ideal_s": ideal,
        "meshcache_s": None, "meshcache_max_link_bytes": None, "meshcache_origin_bytes": None,
        "libtorrent_s": None, "libtorrent_max_link_bytes": None}
    work = tempfile.mkdtemp(prefix="meshcache-wan-")
    try:
        path = os.path.join(work, "model.bin")
        make_file(path, size, seed=12)
        torrent = "" if args.skip_libtorrent else make_torrent(path)  # no web seed
        with ZoneLab(3, 3, wan_delay=args.delay, wan_rate=args.rate,
                     origin_rate=args.origin_rate) as lab:
            stamp("lab up")
            log(f"3 zones x 3 hosts, {size >> 20} MiB cached in zone a; WAN links "
                f"{args.rate / 1e6:g} Mbit/s, {args.delay * 1e3:g} ms one way: one link alone "
                f"needs {ideal:.1f} s")
            swarm: list[subprocess.Popen] = []

            def start_swarm() -> None:
                if torrent and not swarm:
                    swarm.extend(spawn_libtorrent(lab, path, torrent, work, args.lt_settings))

            try:
                run_halves(lab, args, result, work, size, timeout, torrent, start_swarm, swarm)
            finally:
                stop_all(swarm)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result["wan_bytes_ratio"] = ratio(result["meshcache_max_link_bytes"], size)
    result["wan_payload_ratio"] = ratio(result.get("meshcache_max_zone_payload_bytes"), size)
    result["libtorrent_wan_bytes_ratio"] = ratio(result["libtorrent_max_link_bytes"], size)
    result["completion_ratio"] = ratio(result["meshcache_s"], ideal)
    result["libtorrent_completion_ratio"] = ratio(result["libtorrent_s"], ideal)
    result["ratio_vs_libtorrent"] = ratio(result["meshcache_s"], result["libtorrent_s"])
    result["origin_bytes_ratio"] = ratio(result["meshcache_origin_bytes"], size)
    result["run_s"] = round(time.monotonic() - began, 1)
    emit(result)


if __name__ == "__main__":
    main()

"""One libtorrent peer of the fanout baseline, run inside a lab host.

    python benchmarks/_swarm.py TORRENT SAVE_DIR LISTEN_ADDR [PEER_ADDR...] [--set JSON] [--seed]

It starts a libtorrent session listening on LISTEN_ADDR:6881 (no DHT, LSD, UPnP or NAT-PMP;
TCP only), adds the torrent (whose `url-list` names the origin's URL of the file: a BEP 19 web
seed), added paused, prints `{"ready": ...}` and waits for a line on stdin (the parent writes one to every peer
once all are ready). Then it connects to every PEER_ADDR:6881 (again every 2 s until it has them
all: a peer that was not listening yet is simply forgotten by libtorrent), and prints one JSON line
a second of progress:

    {"t": s, "progress": 0..1, "pieces": n, "web_seed_bytes": b, "peer_bytes": b, "peers": n}

and, once every piece has arrived and passed its SHA-1 check (libtorrent checks each piece as it
completes; `is_seeding` means all of them did), one line

    {"done": seconds_since_go, "done_at": unix_time, "web_seed_bytes": b, "peer_bytes": b, ...}

after which it keeps seeding until SIGTERM, so slower peers can finish (with `--seed` the file is
in SAVE_DIR already and that line comes at once). `--set JSON` overrides
session settings (for experiments); the defaults below are what a fair user would pick for a LAN
swarm behind one slow origin: no rate limits anywhere, many connections, web seed allowed.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import warnings

import libtorrent as lt

warnings.filterwarnings("ignore", category=DeprecationWarning)  # libtorrent's 1.x-style API

PORT = 6881

SETTINGS = {
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    # uTP's LEDBAT backs off to any TCP flow and costs CPU on these 2 shared cores; a LAN swarm
    # does better on TCP (and the origin is plain HTTP over TCP anyway).
    "enable_outgoing_utp": False, "enable_incoming_utp": False,
    "alert_mask": 0,
    "connections_limit": 200, "active_downloads": 10, "active_seeds": 10,
    "allow_multiple_connections_per_ip": True,
    "upload_rate_limit": 0, "download_rate_limit": 0,
    "send_buffer_watermark": 4 << 20,
}


def _sources(handle: lt.torrent_handle, seen: dict) -> tuple[int, int, int]:
    """Bytes received so far from web seeds and from peers (per connection, the largest count
    seen, so connections that closed still count), and the number of BitTorrent peers."""
    npeers = 0
    for p in handle.get_peer_info():
        web = p.connection_type != lt.peer_info.standard_bittorrent
        npeers += not web
        key = (web, str(p.ip))
        seen[key] = max(seen.get(key, 0), p.total_download)
    web_bytes = sum(v for (web, *_), v in seen.items() if web)
    peer_bytes = sum(v for (web, *_), v in seen.items() if not web)
    return web_bytes, peer_bytes, npeers


def main() -> None:
    argv = sys.argv[1:]
    overrides: dict = {}
    if "--set" in argv:
        i = argv.index("--set")
        overrides = json.loads(argv[i + 1])
        del argv[i:i + 2]
    seed = "--seed" in argv
    if seed:
        argv.remove("--seed")
    torrent, save, listen, *peers = argv
    ses = lt.session({**SETTINGS, **overrides, "listen_interfaces": f"{listen}:{PORT}"})
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = save
    # Added paused and not auto-managed: nothing (the web seed included) is fetched before "go".
    params.flags = (params.flags | lt.torrent_flags.paused) & ~lt.torrent_flags.auto_managed
    if seed:  # the file is in SAVE_DIR already: trust it, as a seed that made it would
        params.flags |= lt.torrent_flags.seed_mode
    handle = ses.add_torrent(params)
    print(json.dumps({"ready": listen, "web_seeds": params.ti.web_seeds()
                      and [w["url"] for w in params.ti.web_seeds()]}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sys.stdin.readline()  # the parent writes a line when every peer is ready
    t0 = time.monotonic()
    handle.resume()
    seen: dict = {}
    last_connect = last_report = -1e9
    while True:
        now = time.monotonic()
        st = handle.status()
        if st.is_seeding:
            break
        if stop.is_set():
            return
        if now - last_connect > 2.0 and st.num_peers - st.num_seeds < len(peers) + 1:
            for p in peers:
                handle.connect_peer((p, PORT))
            last_connect = now
        if now - last_report >= 1.0:
            web_b, peer_b, npeers = _sources(handle, seen)
            print(json.dumps({"t": round(now - t0, 2), "progress": round(st.progress, 4),
                              "pieces": st.num_pieces, "web_seed_bytes": web_b,
                              "peer_bytes": peer_b, "peers": npeers}), flush=True)
            last_report = now
        time.sleep(0.02)
    done = time.monotonic() - t0
    done_at = time.time()
    web_b, peer_b, _ = _sources(handle, seen)
    print(json.dumps({"done": done, "done_at": done_at, "web_seed_bytes": web_b,
                      "peer_bytes": peer_b, "total_download": st.total_download,
                      "redundant_bytes": st.total_redundant_bytes,
                      "failed_bytes": st.total_failed_bytes}), flush=True)
    while not stop.wait(0.5):
        pass


if __name__ == "__main__":
    main()

"""One libtorrent peer of the fanout baseline, run inside a lab host: join the swarm (explicit
peers, no tracker or DHT), download from the web seed and the other peers, print one JSON line
when the file is complete and hash-checked, then keep seeding until SIGTERM.

    python benchmarks/_swarm.py TORRENT SAVE_DIR LISTEN_ADDR PEER_ADDR...
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import libtorrent as lt

PORT = 6881


def main() -> None:
    torrent, save, listen, *peers = sys.argv[1:]
    ses = lt.session({
        "listen_interfaces": f"{listen}:{PORT}",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "alert_mask": 0, "connections_limit": 200, "active_downloads": 10, "active_seeds": 10,
        "allow_multiple_connections_per_ip": True, "urlseed_pipeline_size": 8,
        "max_web_seed_connections": 8, "request_queue_time": 2,
        "max_out_request_queue": 1500, "send_buffer_watermark": 4 << 20,
    })
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = save
    handle = ses.add_torrent(params)
    print(json.dumps({"ready": listen}), flush=True)
    go = sys.stdin.readline()  # the parent writes a line when every peer is ready
    t0 = time.monotonic()
    for p in peers:
        handle.connect_peer((p, PORT))
    last_connect = t0
    while not handle.status().is_seeding:
        time.sleep(0.05)
        if time.monotonic() - last_connect > 2.0:  # peers that were not up yet
            for p in peers:
                handle.connect_peer((p, PORT))
            last_connect = time.monotonic()
    st = handle.status()
    print(json.dumps({"done": time.monotonic() - t0, "total_download": st.total_download,
                      "web_seed_bytes": st.total_payload_download, "go": go.strip()}),
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


if __name__ == "__main__":
    main()

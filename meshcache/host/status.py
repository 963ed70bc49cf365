"""What the daemon is doing, as one JSON-able dict: the status page, `meshcache status` and the
metrics all read it. Bytes by source are sampled into a short history (the last minutes)."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any, Mapping, Protocol

HISTORY_EVERY = 5.0  # seconds between samples of the byte counters
HISTORY_SAMPLES = 120  # ten minutes
READING_WINDOW = 60.0  # an object is "being read" when a block of it was asked this recently
MAX_READING = 1024  # objects kept in that table (the least recently asked go first)
MESH_STATUS_FILE = "mesh.json"  # written by the mesh each round (meshcache.mesh.mesh)


class ApiView(Protocol):
    """What the status needs of the local API server."""

    @property
    def reading(self) -> Mapping[str, tuple[float, int]]: ...

    def stats(self) -> dict[str, Any]: ...


def note_reading(table: "collections.OrderedDict[str, tuple[float, int]]", url: str,
                 now: float) -> None:
    """Count a block request of `url` at `now` in the table of objects being read (url -> (last
    request, requests)); objects not asked for READING_WINDOW, or past MAX_READING, are dropped
    so a daemon reading ever new URLs keeps a bounded table."""
    _, count = table.pop(url, (now, 0))
    table[url] = (now, count + 1)
    while table and (len(table) > MAX_READING or
                     now - next(iter(table.values()))[0] >= READING_WINDOW):
        table.popitem(last=False)


class History:
    """Byte counters sampled every HISTORY_EVERY seconds (thread-safe ring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: collections.deque[dict[str, float]] = collections.deque(
            maxlen=HISTORY_SAMPLES)

    def sample(self, stats: dict[str, Any], now: float) -> None:
        row = {"time": now, "local": stats.get("bytes_from_local", 0),
               "peers": stats.get("bytes_from_peers", 0),
               "origin": stats.get("bytes_from_origin", 0)}
        with self._lock:
            self._rows.append(row)

    def rates(self) -> list[dict[str, float]]:
        """Bytes per second by source between consecutive samples."""
        with self._lock:
            rows = list(self._rows)
        out = []
        for a, b in zip(rows, rows[1:]):
            dt = max(b["time"] - a["time"], 1e-9)
            out.append({"time": b["time"], **{k: (b[k] - a[k]) / dt
                                              for k in ("local", "peers", "origin")}})
        return out


def mesh_status(cache_dir: str) -> dict[str, Any]:
    """The mesh's own status file (members, zone, summary), or {} without a mesh."""
    try:
        with open(os.path.join(cache_dir, MESH_STATUS_FILE)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def status_of(api: ApiView, cache_dir: str | None = None, zone: str = "",
              history: History | None = None) -> dict[str, Any]:
    """One snapshot: counters, hit ratio, members and zones, objects being read, history."""
    stats = api.stats()
    now = time.time()
    mesh = mesh_status(cache_dir) if cache_dir else {}
    if mesh.get("pid") != os.getpid():  # a file left by an earlier daemon says nothing now
        mesh = {}
    members = mesh.get("members", [])
    hits, misses = stats.get("block_hits", 0), stats.get("block_misses", 0)
    zones: dict[str, int] = collections.Counter(str(m.get("zone")) for m in members)
    reading = sorted(({"url": u, "blocks_asked": n, "last_s": round(now - t, 1)}
                      for u, (t, n) in list(api.reading.items()) if now - t < READING_WINDOW),
                     key=lambda r: r["last_s"])
    return {"time": now, "pid": os.getpid(), "zone": mesh.get("zone", zone),
            "node_id": mesh.get("node_id", ""), "address": mesh.get("address"),
            "summary_bytes": mesh.get("summary_bytes", 0),
            "cache_dir": cache_dir, "stats": stats,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "members": members, "zones": dict(zones), "reading": reading,
            "history": history.rates() if history is not None else []}

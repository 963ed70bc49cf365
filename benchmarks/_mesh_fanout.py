"""The meshcache half of the fanout benchmark: every lab host runs `meshcache.lab.meshnode`,
all read one object at once from the capped origin; the origin's bytes on the wire are counted
at its interface."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from meshcache.lab.lines import next_json
from meshcache.mesh.auth import new_secret

PORT = 7946


def tx_bytes(host: Any) -> int:
    """Bytes the host's eth0 has sent (what left the origin, headers included)."""
    return int(host.check_output(["cat", "/sys/class/net/eth0/statistics/tx_bytes"]).strip())


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process, then SIGKILL what has not exited after 10 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def run_meshcache(lab: Any, origin_url: str, size: int, rate_bits: float,
                  block_size: int = 4 << 20, timeout: float = 600) -> dict[str, Any]:
    """Time 8 (or len(lab.hosts)) meshcache nodes reading `origin_url` at once."""
    hosts = lab.hosts
    work = tempfile.mkdtemp(prefix="meshcache-fanout-")
    go = os.path.join(work, "go")
    procs = []
    secret = new_secret()  # one credential for the whole zone
    for h in hosts:
        args = ["-m", "meshcache.lab.meshnode", "--cache-dir", os.path.join(work, h.name),
                "--listen", f"{h.address}:{PORT}", "--secret", secret,
                "--url", origin_url, "--go", go, "--members", str(len(hosts) - 1),
                "--block-size", str(block_size)]
        if os.environ.get("FANOUT_LOGS"):
            args += ["--log", os.path.join(os.environ["FANOUT_LOGS"], h.name + ".log")]
        for o in hosts:
            if o is not h:
                args += ["--peer", f"{o.address}:{PORT}"]
        procs.append(h.python(args, stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            next_json(p, 60)  # ready
        time.sleep(1.5)  # members greet each other, first summaries go out
        before = tx_bytes(lab.origin)
        t0 = time.monotonic()
        open(go, "w").close()
        results, done_at = [], []
        for p in procs:
            results.append(next_json(p, timeout))
            done_at.append(time.monotonic() - t0)
        origin_bytes = tx_bytes(lab.origin) - before
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)   # 8 caches of the object: 1.1 GiB in --quick
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"meshcache nodes failed: {errors}")
    digests = {r["digest"] for r in results}
    if len(digests) != 1:
        raise RuntimeError("meshcache nodes read different bytes")
    slowest = max(r["seconds"] for r in results)
    return {"meshcache_s": slowest, "meshcache_wall_s": max(done_at),
            "meshcache_origin_bytes": origin_bytes,
            "meshcache_origin_requests": sum(r["origin_requests"] for r in results),
            "meshcache_bytes_from_peers": sum(r["bytes_from_peers"] for r in results),
            "meshcache_owner_failures": sum(r.get("owner_failures", 0) for r in results),
            "meshcache_origin_errors": sum(r.get("origin_errors", 0) for r in results),
            "meshcache_members_down": sum(r.get("members_down", 0) for r in results),
            "meshcache_origin_requests_per_host": [r["origin_requests"] for r in results],
            "meshcache_peer_errors": sum(r.get("peer_errors", 0) for r in results),
            "meshcache_digest": digests.pop(), "slowest_s": slowest}

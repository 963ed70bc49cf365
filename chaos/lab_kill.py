"""Half of the 8 lab hosts killed mid fan-out: 8 hosts (network namespaces, origin capped at
50 Mbit/s) read one object at once; when the origin has sent a quarter of it, 4 hosts are
SIGKILLed. Every surviving host's read must complete with the right bytes; the origin's bytes
per object (on the wire) should stay <= 2.0. Needs root (the netns lab).

The origin's sent bytes are sampled every 0.25 s: `origin_idle_after_kill_s` is the time after
the kill during which the origin sent under a tenth of its rate, which is what a failover costs
when the origin link is the bottleneck (readers wait on the dead owners' blocks until the
members stop using them: about one probe plus suspect_timeout / 2); `origin_done_s` is when
the origin had sent 99% of its bytes (what follows is the survivors copying from each other)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from _common import MiB, emit, log, parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from _mesh_fanout import PORT, stop_all, tx_bytes  # noqa: E402

from meshcache.lab.httporigin import make_file  # noqa: E402
from meshcache.lab.lines import next_json  # noqa: E402
from meshcache.lab.netns import Lab, requires_root  # noqa: E402
from meshcache.mesh.auth import new_secret  # noqa: E402

RATE = 50e6
BLOCK = 1 << 20
SAMPLE_S = 0.25


def idle_seconds(series: list[tuple[float, int]], start: float, end: float, rate_bytes: float
                 ) -> float:
    """Seconds within [start, end] during which (time, bytes sent) samples show under a tenth
    of `rate_bytes` per second."""
    idle = 0.0
    for (t0, b0), (t1, b1) in zip(series, series[1:]):
        if t0 >= start and t1 <= end and b1 - b0 < 0.1 * rate_bytes * (t1 - t0):
            idle += t1 - t0
    return idle


def main() -> None:
    args = parse(__doc__)
    reason = requires_root()
    if reason:
        emit({"skipped": reason})
        return
    size = (32 if args.quick else 256) * MiB
    work = tempfile.mkdtemp(prefix="meshcache-chaos-labkill-")
    path = os.path.join(work, "model.bin")
    make_file(path, size, seed=12)
    import blake3
    with open(path, "rb") as f:
        want = blake3.blake3(f.read()).hexdigest()
    try:
        with Lab(8, origin=True) as lab:
            lab.cap_egress(lab.origin, RATE)
            origin = lab.origin.python(
                ["-m", "meshcache.lab.httporigin", "--dir", work, "--host", lab.origin.address,
                 "--port", "8080"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs: list[subprocess.Popen] = []
            series: list[tuple[float, int]] = []  # (seconds since go, bytes the origin sent)
            sampling = threading.Event()  # set: stop sampling

            def sample() -> None:
                while not sampling.wait(SAMPLE_S):
                    series.append((time.monotonic() - t0, tx_bytes(lab.origin) - before))

            sampler = threading.Thread(target=sample, daemon=True)
            try:
                url = origin.stdout.readline().strip() + "/model.bin"
                go = os.path.join(work, "go")
                secret = new_secret()
                for h in lab.hosts:
                    a = ["-m", "meshcache.lab.meshnode", "--cache-dir", os.path.join(work, h.name),
                         "--listen", f"{h.address}:{PORT}", "--secret", secret, "--url", url,
                         "--go", go, "--members", "7", "--block-size", str(BLOCK)]
                    for o in lab.hosts:
                        if o is not h:
                            a += ["--peer", f"{o.address}:{PORT}"]
                    procs.append(h.python(a, stdout=subprocess.PIPE, text=True))
                for p in procs:
                    next_json(p, 60)
                time.sleep(1.5)
                before = tx_bytes(lab.origin)
                t0 = time.monotonic()
                open(go, "w").close()
                sampler.start()
                while tx_bytes(lab.origin) - before < size / 4 and time.monotonic() - t0 < 300:
                    time.sleep(0.05)
                killed_at = time.monotonic() - t0
                for p in procs[4:]:
                    p.kill()
                log(f"killed 4 of 8 hosts at {killed_at:.1f} s")
                results = []
                for p in procs[:4]:
                    try:
                        results.append(next_json(p, 20 * size / (RATE / 8) + 120))
                    except Exception as e:
                        results.append({"error": str(e)})
                origin_bytes = tx_bytes(lab.origin) - before
                wall = time.monotonic() - t0
            finally:
                sampling.set()
                if sampler.is_alive():
                    sampler.join()
                stop_all(procs)
                origin.terminate()
                origin.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    completed = sum(r.get("digest") == want for r in results)
    emit({"hosts": 8, "killed": 4, "object_mb": size / MiB, "killed_at_s": killed_at,
          "survivor_reads_completed": completed, "survivors": 4,
          "origin_bytes_per_object": origin_bytes / size, "target_origin_ratio": 2.0,
          "slowest_survivor_s": max((r.get("seconds", 0) for r in results), default=0),
          "wall_s": wall, "alone_at_origin_rate_s": size / (RATE / 8),
          "origin_idle_before_kill_s": idle_seconds(series, 0.0, killed_at, RATE / 8),
          "origin_idle_after_kill_s": idle_seconds(
              series, killed_at, min((r.get("seconds", wall) for r in results), default=wall),
              RATE / 8),
          "origin_done_s": next((t for t, b in series if b >= 0.99 * origin_bytes), wall)})
    if completed != 4:
        sys.exit(1)


if __name__ == "__main__":
    main()

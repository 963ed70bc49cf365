"""Origin outage: an HTTP origin on 127.0.0.1 is stopped under a zone of two nodes (QUIC on
loopback). Node A read 10 of 20 objects before; node B never stat-ed any. While the origin is
down, both read at random: A serves what it read under the last known version (stale_if_error),
B reads the same objects from A after asking the zone for their version; reads of objects nobody
holds fail within a stated bound, naming the origin."""

from __future__ import annotations

import random
import shutil
import tempfile
import time

from _common import emit, log, parse

from meshcache import Config, Node, OriginError
from meshcache.lab.httporigin import OriginServer
from meshcache.mesh.auth import new_secret

BLOCK = 64 * 1024
FAIL_BOUND_S = 5.0  # an uncached read must fail within this once the origin is down


def main() -> None:
    args = parse(__doc__)
    seconds = 10 if args.quick else 60
    root = tempfile.mkdtemp(prefix="meshcache-chaos-outage-")
    origin = OriginServer()
    rng = random.Random(5)
    objects = {f"o{i}.bin": rng.randbytes(rng.randint(1, 12) * BLOCK + rng.randint(0, 999))
               for i in range(20)}
    for name, data in objects.items():
        origin.put(name, data)
    base = dict(block_size=BLOCK, fsync=False, metadata_ttl=1.0, origin_timeout=5.0,
                cluster_secret=new_secret(), listen="127.0.0.1:0", request_timeout=5.0,
                ping_interval=0.5, peer_origins=[origin.url_for("")])
    a = Node(Config.local(cache_dir=f"{root}/a", **base))
    nodes = [a]
    tally = {who: dict(served=0, bad=0, failed_ok=0, failed_other=0, worst_fail=0.0)
             for who in ("a", "b")}
    try:
        a.start_peers()
        b = Node(Config.local(cache_dir=f"{root}/b", peers=["%s:%d" % a.peers.address], **base))
        nodes.append(b)
        b.start_peers()
        deadline = time.monotonic() + 20
        while not (a.mesh.live() and b.mesh.live()):
            if time.monotonic() > deadline:
                raise SystemExit("the two nodes did not see each other")
            time.sleep(0.05)
        cached = list(objects)[:10]
        for name in cached:
            assert a.cat(origin.url_for(name)) == objects[name]
        url_of = {name: origin.url_for(name) for name in objects}
        origin.close()
        log(f"origin stopped; reading for {seconds} s")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            who = rng.choice(["a", "b"])
            node, t = (a if who == "a" else b), tally[who]
            name = rng.choice(list(objects))
            t0 = time.monotonic()
            try:
                data = node.cat(url_of[name])
            except OriginError as e:
                dt = time.monotonic() - t0
                t["worst_fail"] = max(t["worst_fail"], dt)
                if name not in cached and "127.0.0.1" in str(e):
                    t["failed_ok"] += 1
                else:
                    t["failed_other"] += 1
                    log(f"{who} {name}: {e}")
                continue
            t["served"] += 1
            t["bad"] += data != objects[name] or name not in cached
        sb = b.stats()
        ta, tb = tally["a"], tally["b"]
        emit({"seconds": seconds, "cached_reads_served": ta["served"],
              "zone_reads_served_never_stat_ed": tb["served"],
              "bad_reads": ta["bad"] + tb["bad"],
              "uncached_reads_failed_naming_origin": ta["failed_ok"] + tb["failed_ok"],
              "other_failures": ta["failed_other"] + tb["failed_other"],
              "slowest_failure_s": ta["worst_fail"],
              "slowest_failure_never_stat_ed_s": tb["worst_fail"],
              "fail_bound_s": FAIL_BOUND_S, "stale_stats": a.stats()["stale_stats"],
              "zone_versions_asked_by_b": sb["zone_versions"],
              "b_bytes_from_peers": sb["bytes_from_peers"]})
        if ta["bad"] + tb["bad"] or ta["failed_other"] + tb["failed_other"] or \
                max(ta["worst_fail"], tb["worst_fail"]) > FAIL_BOUND_S or tb["served"] == 0:
            raise SystemExit(1)
    finally:
        for node in nodes:
            node.close()
        origin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

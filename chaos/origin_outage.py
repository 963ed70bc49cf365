"""Origin outage: an HTTP origin on 127.0.0.1 is stopped under a reading node. Objects read
before keep being served under their last known version (stale_if_error); reads of objects
nobody holds fail within a stated bound, naming the origin."""

from __future__ import annotations

import random
import shutil
import tempfile
import time

from _common import emit, log, parse

from meshcache import Config, Node, OriginError
from meshcache.lab.httporigin import OriginServer

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
    cfg = Config.local(cache_dir=root, block_size=BLOCK, fsync=False, metadata_ttl=1.0,
                       origin_timeout=5.0)
    node = Node(cfg)
    served = bad = failed_ok = failed_other = 0
    worst_fail = 0.0
    try:
        cached = list(objects)[:10]
        for name in cached:
            assert node.cat(origin.url_for(name)) == objects[name]
        url_of = {name: origin.url_for(name) for name in objects}
        origin.close()
        log(f"origin stopped; reading for {seconds} s")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            name = rng.choice(list(objects))
            t = time.monotonic()
            try:
                data = node.cat(url_of[name])
            except OriginError as e:
                dt = time.monotonic() - t
                worst_fail = max(worst_fail, dt)
                if name not in cached and "127.0.0.1" in str(e):
                    failed_ok += 1
                else:
                    failed_other += 1
                    log(f"{name}: {e}")
                continue
            served += 1
            bad += data != objects[name] or name not in cached
        emit({"seconds": seconds, "cached_reads_served": served, "bad_reads": bad,
              "uncached_reads_failed_naming_origin": failed_ok,
              "other_failures": failed_other, "slowest_failure_s": worst_fail,
              "fail_bound_s": FAIL_BOUND_S, "stale_stats": node.stats()["stale_stats"]})
        if bad or failed_other or worst_fail > FAIL_BOUND_S:
            raise SystemExit(1)
    finally:
        node.close()
        origin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Helpers for the host tests: a rate-capped HTTP origin and worker processes that read one
object through meshcache (daemon or embedded, as the environment says)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from typing import Iterator

import pytest

from meshcache.lab.httporigin import OriginServer

SMALL_BLOCK = 64 * 1024


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    """An HTTP origin on 127.0.0.1 capped at 8 MB/s per connection (fetches overlap)."""
    srv = OriginServer(rate_per_conn=8e6)
    try:
        yield srv
    finally:
        srv.close()


def read_worker(url: str, env: dict[str, str]) -> tuple[str, int]:
    """Read `url` whole through `meshcache.open` in this process, configured by `env`
    (MESHCACHE_* variables); (sha256 hex, pid)."""
    os.environ.update(env)
    import meshcache

    h = hashlib.sha256()
    with meshcache.open(url) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest(), os.getpid()


def read_in_processes(url: str, env: dict[str, str], n: int = 8,
                      timeout: float = 120) -> list[str]:
    """n readers at once, half forked and half spawned; their digests."""
    out: list[str] = []
    pools = [multiprocessing.get_context(m).Pool(n // 2) for m in ("fork", "spawn")]
    try:
        results = [p.apply_async(read_worker, (url, env))
                   for p in pools for _ in range(n // 2)]
        out = [r.get(timeout)[0] for r in results]
    finally:
        for p in pools:
            p.terminate()
            p.join()
    return out


def cache_env(cache_dir: str, daemon: str = "off", **extra: str) -> dict[str, str]:
    """MESHCACHE_* variables for a small-block cache in `cache_dir`."""
    env = {"MESHCACHE_CACHE_DIR": cache_dir, "MESHCACHE_BLOCK_SIZE": str(SMALL_BLOCK),
           "MESHCACHE_FSYNC": "false", "MESHCACHE_READAHEAD": "4", "MESHCACHE_DAEMON": daemon}
    env.update({f"MESHCACHE_{k.upper()}": v for k, v in extra.items()})
    return env


@contextlib.contextmanager
def running_daemon(cache_dir: str, **extra: str) -> Iterator[dict[str, object]]:
    """A `meshcached` subprocess on `cache_dir` (small blocks, peers on loopback, metrics on a
    free port); yields its ready line plus "log_file" (its stderr) and "pid". Stopped with SIGTERM (SIGKILL if it hangs)."""
    env = dict(os.environ)
    env.update(cache_env(cache_dir, **{"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0",
                                       **extra}))
    env.pop("MESHCACHE_DAEMON", None)
    # stderr to a file: a pipe nobody drains could fill and stall the daemon.
    log = tempfile.NamedTemporaryFile("w+", prefix="meshcached-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "meshcache.daemon"], env=env,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            proc.wait(10)
            log.seek(0)
            raise RuntimeError(f"meshcached did not start: {log.read()}")
        ready = json.loads(line)
        ready["log_file"] = log.name
        ready["pid"] = proc.pid
        yield ready
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        log.close()
        os.unlink(log.name)

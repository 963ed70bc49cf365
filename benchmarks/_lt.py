"""The libtorrent baseline of the lab benchmarks: make a torrent, run `_swarm.py` on lab hosts at
once, and time them from a common 'go' to the last host with every piece hash-checked."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from _common import log
from _mesh_fanout import stop_all

HERE = os.path.dirname(os.path.abspath(__file__))
PIECE = 4 << 20


def make_torrent(path: str, url: str | None = None, piece: int = PIECE) -> str:
    """A single-file torrent of `path`, with `url` as its web seed (BEP 19 `url-list`) if given.
    For a single-file torrent the URL names the file itself (a URL ending in '/' would get the
    file name appended), so it is the origin's full URL of the object."""
    import libtorrent as lt

    fs = lt.file_storage()
    lt.add_files(fs, path)
    t = lt.create_torrent(fs, piece)
    if url:
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


def spawn_swarm(hosts: Sequence[Any], torrent: str, work: str, *, seeds: Sequence[Any] = (),
                settings: str = "") -> list[subprocess.Popen]:
    """Start benchmarks/_swarm.py on every host (`seeds` start with the file, which must sit in
    work/lt-<host name>/); each waits, paused, for run_swarm's go. Spawned early, the swarm
    starts up while the caller does something else (its peers idle until the go)."""
    procs = []
    for h in hosts:
        save = os.path.join(work, "lt-" + h.name)
        os.makedirs(save, exist_ok=True)
        args = [os.path.join(HERE, "_swarm.py"), torrent, save, h.address,
                *[o.address for o in hosts if o is not h]]
        if settings:
            args += ["--set", settings]
        if h in seeds:
            args.append("--seed")
        procs.append(h.python(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    return procs


def run_swarm(hosts: Sequence[Any], torrent: str, work: str, timeout: float,
              counter: Callable[[], Any], *, seeds: Sequence[Any] = (), settings: str = "",
              progress: Callable[[Any], str] = lambda c: "",
              procs: list[subprocess.Popen] | None = None) -> dict[str, Any]:
    """Every host runs benchmarks/_swarm.py on `torrent` at once (`procs` from spawn_swarm, or
    spawned now); return the done lines by host index, the slowest host's seconds since the
    common go, and counter() taken at go and when the last finished. Stops the swarm."""
    if procs is None:
        procs = spawn_swarm(hosts, torrent, work, seeds=seeds, settings=settings)
    lines = _Lines(procs)
    try:
        ready: set[int] = set()
        deadline = time.monotonic() + 60
        while len(ready) < len(procs):
            if time.monotonic() > deadline:
                raise TimeoutError("swarm peers did not start")
            ready |= {i for i, msg in lines.poll(1.0) if "ready" in msg}
        before = counter()
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
                        after = counter()
                else:
                    last[i] = msg
            if time.monotonic() >= next_log:
                log(f"  libtorrent t={time.time() - t0:5.1f}s: {len(done)} done, progress "
                    + " ".join(f"{last[i]['progress']:.2f}" if i in last and i not in done
                               else "done" if i in done else "-" for i in range(len(procs)))
                    + progress(before))
                next_log += 5
        # Both clocks are this machine's: the slowest host's completion since the common go.
        slowest = max(d["done_at"] for d in done.values()) - t0
    finally:
        stop_all(procs)
    return {"done": done, "slowest_s": slowest, "before": before, "after": after}

"""Helpers shared by the benchmarks: argument parsing, timing, the JSON last line."""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import signal
import sys
import time
from typing import Any


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, so `finally` blocks remove work dirs and labs on the way
    out (called by parse(); benchmarks with their own parser call it themselves)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def parse(description: str, **extra: Any) -> argparse.Namespace:
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes; finishes within 2 minutes")
    for name, (kind, default, help_) in extra.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=help_)
    return p.parse_args()


def make_file(path: str, size: int, seed: int = 0) -> None:
    """A file of `size` pseudo-random bytes (fast: 8 MiB chunks)."""
    r = random.Random(seed)
    chunk = 8 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(r.randbytes(n))
            left -= n


def aligned_buffer(size: int) -> memoryview:
    """A page-aligned read buffer (an anonymous mmap).

    Where a buffer starts decides the kernel's copy speed on some CPUs: on this project's AMD
    EPYC a `read` into a buffer 1-31 bytes past a page boundary (where glibc puts a fresh 1 MiB
    bytearray) copies at ~1.6 GB/s, page-aligned at ~11 GB/s, so compared reads share one."""
    return memoryview(mmap.mmap(-1, size))


def read_files(paths: list[str], buf: bytearray | memoryview) -> int:
    """Read every file with `readinto(buf)` (unbuffered): the plain-read baseline."""
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def emit(result: dict[str, Any]) -> None:
    """Print the result as the last line (one JSON object), rounding floats."""
    out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
    sys.stdout.flush()
    print(json.dumps(out), flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either half of a benchmark did not run."""
    return a / b if a is not None and b else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


MiB = 1 << 20
GiB = 1 << 30
os.environ.setdefault("PYTHONHASHSEED", "0")

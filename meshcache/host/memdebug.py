"""Memory reports of a running daemon, on SIGUSR1: RSS, glibc's heap, live objects by type and
(with the `trace_frames` config key) the top allocation sites, each as a difference from the
previous report, so an operator can tell a growing structure from a filled cache or from the
allocator keeping freed memory.

Tracing starts at the first report (N frames per traceback), so it costs nothing until asked
and the sites of later reports are allocations made since, still alive: what grows."""

from __future__ import annotations

import ctypes
import gc
import os
import time
import tracemalloc
from collections import Counter


def rss_bytes() -> int:
    """This process's resident set size in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc (>= 2.33)
        return None


def malloc_lines() -> list[str]:
    """glibc's heap (every arena): bytes in use and bytes free but kept, then RSS after
    malloc_trim(0) hands the free pages back. Free-but-kept bytes that trim returns are the
    allocator's fragmentation, not a leak; bytes in use that grow are."""
    libc = _libc()
    if libc is None:
        return ["(malloc statistics: glibc >= 2.33 only)"]
    m = libc.mallinfo2()
    lines = [f"malloc_heap_bytes {m.arena + m.hblkhd} (mmapped {m.hblkhd})",
             f"malloc_in_use_bytes {m.uordblks + m.hblkhd}", f"malloc_free_bytes {m.fordblks}"]
    libc.malloc_trim(0)
    lines.append(f"rss_bytes_after_malloc_trim {rss_bytes()}")
    return lines


def _types() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


class MemoryReporter:
    """Writes numbered reports `memdebug-<pid>-<n>.txt` into a directory; each compares with the
    previous one (objects by type, and allocation sites grouped by traceback when tracing)."""

    def __init__(self, directory: str, trace_frames: int = 0, top: int = 25) -> None:
        self.directory = directory
        self.trace_frames = trace_frames
        self.top = top
        self.count = 0
        self._types: Counter[str] | None = None
        self._snapshot: tracemalloc.Snapshot | None = None

    def report(self) -> str:
        """Write the next report; return its path."""
        gc.collect()
        self.count += 1
        lines = [f"# meshcache memory report {self.count}, pid {os.getpid()}, "
                 f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
                 f"rss_bytes {rss_bytes()}", *malloc_lines()]
        types = _types()
        lines.append(f"\n## live objects by type (count, change since report {self.count - 1})")
        delta = types.copy()
        if self._types is not None:
            delta.subtract(self._types)
        order = sorted(types, key=lambda t: (-abs(delta[t]), -types[t]))
        lines += [f"{types[t]:>10} {delta[t]:>+9} {t}" for t in order[:self.top]]
        self._types = types
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])
            traced, peak = tracemalloc.get_traced_memory()
            lines.append(f"\n## traced now {traced} bytes, peak {peak}")
            if self._snapshot is not None:
                lines.append("\n## allocation sites by traceback, change since the last report")
                stats = snap.compare_to(self._snapshot, "traceback")
            else:
                lines.append("\n## allocation sites by traceback, made since the last report "
                             "(tracing started there) and still alive")
                stats = snap.statistics("traceback")
            for stat in stats[:self.top]:  # headed by the innermost frame: where it was made
                site = stat.traceback[-1]
                lines.append(f"\n{site.filename}:{site.lineno}: {str(stat).split(': ', 1)[1]}")
                # file:line only: formatting source lines would fill linecache (and the report)
                lines += [f"    {f.filename}:{f.lineno}" for f in list(stat.traceback)[-16:]]
            self._snapshot = snap
        elif self.trace_frames > 0:
            tracemalloc.start(self.trace_frames)
            lines.append(f"\n(allocations traced from now on, {self.trace_frames} frames)")
        else:
            lines.append("\n(allocation sites: set trace_frames (MESHCACHE_TRACE_FRAMES=25))")
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"memdebug-{os.getpid()}-{self.count}.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

"""Memory reports of a running daemon, on SIGUSR1: RSS by mapping, glibc's heap arena by arena,
Python's small-object allocator, live objects by type, the largest containers and (with the
`trace_frames` config key) the top allocation sites, each as a difference from the previous
report, so an operator can tell a growing structure from a filled cache or from the allocator
keeping freed memory.

Tracing starts at the first report (N frames per traceback), so it costs nothing until asked
and the sites of later reports are allocations made since, still alive: what grows."""

from __future__ import annotations

import ctypes
import gc
import os
import re
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, deque


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
    start = time.perf_counter()
    libc.malloc_trim(0)
    took = time.perf_counter() - start
    lines += [f"rss_bytes_after_malloc_trim {rss_bytes()}", f"malloc_trim_seconds {took:.4f}"]
    return lines


def arena_lines() -> list[str]:
    """glibc's heap arena by arena (`malloc_info`): each thread that allocates gets an arena of
    its own (the node's loop thread does most of the work in one), so this tells which grows,
    and whether by bytes in use or by free bytes kept (fragmentation)."""
    libc = _libc()
    if libc is None:
        return []
    try:
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        with tempfile.NamedTemporaryFile("r", suffix=".xml") as tmp:
            fp = libc.fopen(tmp.name.encode(), b"w")
            if not fp:
                return []
            libc.malloc_info(0, fp)
            libc.fclose(fp)
            xml = tmp.read()
    except (OSError, AttributeError):
        return []
    lines = []
    for nr, body in re.findall(r'<heap nr="(\d+)">(.*?)</heap>', xml, re.S):
        got = {t: int(v) for t, v in re.findall(r'<total type="(fast|rest)" count="\d+" '
                                                 r'size="(\d+)"/>', body)}
        system = re.search(r'<system type="current" size="(\d+)"/>', body)
        if system is None:
            continue
        free = got.get("fast", 0) + got.get("rest", 0)
        lines.append(f"malloc_arena {nr}: system {int(system.group(1))} in_use "
                     f"{int(system.group(1)) - free} free {free}")
    return lines


def pymalloc_stats() -> tuple[list[str], dict[int, int]]:
    """Python's small-object allocator (`sys._debugmallocstats`, which writes to fd 2): summary
    lines, and blocks in use by block size. Its 1 MiB arenas are mapped outside glibc's heap,
    so glibc's figures do not count them."""
    keep = ("# arenas allocated total", "# arenas reclaimed", "# arenas highwater mark",
            "# arenas allocated current", "# bytes in allocated blocks",
            "# bytes in available blocks", "# unused pools")
    try:
        with tempfile.TemporaryFile("w+") as tmp:
            sys.stderr.flush()
            saved = os.dup(2)
            try:
                os.dup2(tmp.fileno(), 2)
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            text = tmp.read()
    except (OSError, AttributeError):
        return [], {}
    lines, blocks = [], {}
    for line in text.splitlines():
        if line.startswith(keep):
            name, _, value = line.rpartition("=")
            lines.append(f"pymalloc {name.strip('# ').strip()}: {value.strip().replace(',', '')}")
        elif re.match(r"^\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+$", line):
            _, size, _, used, _ = (int(x) for x in line.split())
            blocks[size] = used
    return lines, blocks


def mapping_lines(top: int = 8) -> list[str]:
    """Threads, and the resident bytes of the process's memory mappings (/proc/self/smaps):
    the heap, the largest anonymous ones (glibc's thread arenas at 64 MiB-aligned addresses,
    Python's arenas, thread stacks) and all file-backed ones together."""
    try:
        threads = len(os.listdir("/proc/self/task"))
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return []
    rows: list[tuple[int, str, int]] = []  # (rss, name, size)
    name, size = "", 0
    for line in text.splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            arena = " (a glibc thread arena)" if start % (64 << 20) == 0 else ""
            name = head[5] if len(head) > 5 else f"anon@{start:#x}{arena}"
            size = end - start
        elif head and head[0] == "Rss:":
            rows.append((int(head[1]) * 1024, name, size))
    files = sum(r for r, n, _ in rows if n.startswith("/"))
    lines = [f"threads {threads}", f"rss_file_mappings_bytes {files}"]
    anon = sorted((r for r in rows if not r[1].startswith("/")), reverse=True)
    lines += [f"rss_mapping {n} {r} (size {s})" for r, n, s in anon[:top]]
    return lines


def _owner(container: object) -> str:
    """Where a container lives, for a report: the module and name or the type of the object
    that holds it (not its attribute: asking an object for its __dict__ would make one)."""
    other = "?"
    refs = gc.get_referrers(container)
    for ref in sorted(refs, key=lambda r: not isinstance(r, dict)):  # namespaces first
        if isinstance(ref, dict):
            key = next((k for k, v in ref.items() if v is container), None)
            if key is None:
                continue
            if isinstance(ref.get("__name__"), str) and ref.get(key) is container:
                return f"{ref['__name__']}.{key}"  # a module's (or class's) namespace
            other = f"a dict's [{key!r}]"
        elif other == "?" and type(ref).__qualname__ not in ("frame", "list", "tuple", "cell"):
            other = f"held by a {type(ref).__qualname__}"
    return other


def _largest(top: int) -> list[tuple[int, int, object]]:
    """The `top` largest dicts, sets, lists and deques alive, also those the garbage collector
    does not track (a dict of strings and numbers) that a tracked object holds:
    (length, id, container)."""
    kinds = (dict, set, list, deque)
    objects = gc.get_objects()
    found = [o for o in objects if isinstance(o, kinds)]
    # one call for all: a call per object (a list each) takes seconds while tracing
    found += [c for c in gc.get_referents(*objects)
              if isinstance(c, kinds) and not gc.is_tracked(c)]
    del objects
    sized = {id(c): (len(c), id(c), c) for c in found}
    return sorted(sized.values(), key=lambda x: -x[0])[:top]


def _in_use() -> int:
    libc = _libc()
    if libc is None:
        return 0
    m = libc.mallinfo2()
    return int(m.uordblks + m.hblkhd)


def garbage_lines(top: int) -> list[str]:
    """Collect the garbage cycles now (every generation) and say what they were: objects that
    only the cycle collector frees stay until a collection of their generation, and those that
    lived long enough to reach the oldest can wait for minutes, holding the memory they own."""
    before = _in_use()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep them in gc.garbage, to count them by type
    start = time.perf_counter()
    try:
        found = gc.collect()
        kinds = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(flags)
    gc.collect()  # now free them
    took = time.perf_counter() - start
    lines = [f"gc_garbage_objects {found} (in cycles, collected now in {took:.3f} s; heap in "
             f"use {before} bytes before, {_in_use()} after)",
             f"gc_frozen_objects {gc.get_freeze_count()} (made at start, never collected)"]
    lines += [f"gc_garbage {n} {kind}" for kind, n in kinds.most_common(top)]
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
        self._sizes: dict[int, int] = {}  # id -> length of the largest containers last time
        self._blocks: dict[int, int] = {}  # pymalloc blocks in use by size, last time
        self._snapshot: tracemalloc.Snapshot | None = None

    def report(self) -> str:
        """Write the next report; return its path."""
        self.count += 1
        lines = [f"# meshcache memory report {self.count}, pid {os.getpid()}, "
                 f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
                 f"rss_bytes {rss_bytes()}", *garbage_lines(self.top), *mapping_lines(),
                 *arena_lines()]
        small, blocks = pymalloc_stats()
        lines += small
        if self._blocks:  # the size classes that changed most since the last report
            change = {size: n - self._blocks.get(size, 0) for size, n in blocks.items()}
            lines += [f"pymalloc blocks of {size} bytes: {blocks[size]} ({change[size]:+d})"
                      for size in sorted(change, key=lambda k: -abs(change[k]))[:5]]
        self._blocks = blocks
        lines += malloc_lines()
        types = _types()
        lines.append(f"\n## live objects by type (count, change since report {self.count - 1})")
        delta = types.copy()
        if self._types is not None:
            delta.subtract(self._types)
        order = sorted(types, key=lambda t: (-abs(delta[t]), -types[t]))
        lines += [f"{types[t]:>10} {delta[t]:>+9} {t}" for t in order[:self.top]]
        self._types = types
        lines.append("\n## largest containers (length, change since the last report, where)")
        sizes = {}
        for n, ident, c in _largest(self.top // 2):
            sizes[ident] = n
            was = self._sizes.get(ident)
            lines.append(f"{n:>10} {'' if was is None else f'{n - was:+d}':>9} "
                         f"{type(c).__qualname__} {_owner(c)}")
            del c
        self._sizes = sizes
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

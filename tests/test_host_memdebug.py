"""Memory reports: SIGUSR1 makes a running daemon write one into its cache directory; with
trace_frames the first starts tracing and the next names the allocation sites that grew."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import tracemalloc

from meshcache.host.memdebug import MemoryReporter
from tests.host_fixtures import running_daemon


def _wait_for(path: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            time.sleep(0.2)  # written in one go; let it be closed
            with open(path) as f:
                return f.read()
        time.sleep(0.1)
    raise AssertionError(f"no memory report at {path}")


def test_sigusr1_writes_reports_and_the_daemon_keeps_serving(tmp_path):
    with running_daemon(str(tmp_path / "c"), trace_frames="8") as ready:
        pid = int(ready["pid"])  # type: ignore[call-overload]
        os.kill(pid, signal.SIGUSR1)
        first = _wait_for(str(tmp_path / "c" / f"memdebug-{pid}-1.txt"))
        assert "rss_bytes " in first and "live objects by type" in first
        assert "allocations traced from now on, 8 frames" in first
        # what the daemon made to start is out of the collector's sight (cheap full collections)
        assert int(first.split("gc_frozen_objects ", 1)[1].split()[0]) > 10_000
        os.kill(pid, signal.SIGUSR1)
        second = _wait_for(str(tmp_path / "c" / f"memdebug-{pid}-2.txt"))
        assert "allocation sites by traceback, made since the last report" in second
        os.kill(pid, 0)  # still running
        with open(str(ready["log_file"])) as f:
            assert f"memdebug-{pid}-2.txt" in f.read()


def test_a_growing_structure_tops_the_report():
    kept: list[list[int]] = []
    with tempfile.TemporaryDirectory() as d:
        reporter = MemoryReporter(d, trace_frames=4)
        try:
            reporter.report()
            kept.extend([0] * 120 for _ in range(3000))  # ~3 MB of lists that stays
            text = open(reporter.report()).read()
        finally:
            tracemalloc.stop()
    sites = text.split("allocation sites by traceback, made since the last report", 1)[1]
    top = next(line for line in sites.splitlines()[1:] if line.strip())
    assert top.startswith(f"{__file__}:"), top
    assert int(top.split("size=", 1)[1].split(" KiB", 1)[0]) >= 2500, top
    counts = text.split("live objects by type", 1)[1].splitlines()
    assert any(line.split()[-1] == "list" and int(line.split()[1]) >= 3000
               for line in counts[1:10] if line.strip()), counts[:10]


class _Table:
    """Holds a growing table, as a long-lived object in the daemon would."""

    def __init__(self) -> None:
        self.rows = {i: str(i) for i in range(20000)}  # untracked by gc: ints and strs only


def test_a_growing_table_tops_the_largest_containers_with_its_holder():
    holder = _Table()
    with tempfile.TemporaryDirectory() as d:
        reporter = MemoryReporter(d)
        reporter.report()
        holder.rows.update({i: "x" for i in range(20000, 20500)})
        text = open(reporter.report()).read()
    top = text.split("## largest containers", 1)[1].splitlines()[1]
    assert top.split() == ["20500", "+500", "dict", "held", "by", "a", "_Table"], top
    # the process's memory, by where it lives
    for key in ("threads ", "rss_mapping ", "malloc_arena 0: system ",
                "pymalloc arenas allocated current: ", "pymalloc bytes in allocated blocks: ",
                "pymalloc blocks of "):
        assert f"\n{key}" in text, key
    blocks = int(text.split("pymalloc bytes in allocated blocks: ", 1)[1].split()[0])
    assert blocks > 1_000_000  # this test process alone holds more than that in small objects


"""Every example runs with small data and says where its bytes came from: cold reads from the
origin, the rereads from the local store."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, *args: str, timeout: float = 240) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def sources(line: str) -> tuple[int, int]:
    m = re.search(r"origin (\d+), local store (\d+)", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("daemon", [True, False], ids=["host-daemon", "embedded"])
def test_dataloader_over_tar_shards(daemon):
    out = run("dataloader_tar.py", "--shards", "3", "--samples", "8", "--sample-size", "20000",
              *(["--daemon"] if daemon else []))
    epochs = [ln for ln in out.splitlines() if ln.startswith("epoch")]
    assert len(epochs) == 2 and all("24 samples, 480000 payload bytes" in e for e in epochs)
    o1, l1 = sources(epochs[0])
    o2, l2 = sources(epochs[1])
    assert o1 > 480000 and l1 == 0  # tar headers too
    assert o2 == 0 and l2 == o1
    if daemon:  # the daemon did the origin reads for both workers: one per shard
        line = next(ln for ln in out.splitlines() if ln.startswith("meshcached:"))
        assert f"3 origin requests, bytes from origin {o1}" in line


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                    reason="needs /dev/fuse and fusermount3 (apt fuse3)")
def test_model_snapshot_prewarm_then_mount():
    out = run("model_snapshot.py", "--mb", "2")
    pre = next(ln for ln in out.splitlines() if ln.startswith("prewarm:"))
    loaded = next(ln for ln in out.splitlines() if ln.startswith("loaded from the mount"))
    o, l = sources(pre)
    assert "3 files" in pre and o > 2 << 20 and l == 0
    assert "'weight_bytes': 2097152" in loaded and "'vocab': 2000" in loaded
    o, l = sources(loaded)
    assert o == 0 and l > 2 << 20


def test_pandas_and_pyarrow_over_meshcache_s3():
    out = run("pandas_s3.py", "--rows", "20000")
    pandas_line = next(ln for ln in out.splitlines() if ln.startswith("pandas:"))
    arrow_line = next(ln for ln in out.splitlines() if ln.startswith("pyarrow:"))
    assert "20000 rows" in pandas_line and "20000 rows" in arrow_line
    assert sources(pandas_line)[0] > 0
    o, l = sources(arrow_line)
    assert o == 0 and l > 0


def test_boto3_through_the_gateway():
    out = run("boto3_gateway.py", "--mb", "2")
    assert "('llm/weights.bin', 2097152)" in out
    first = next(ln for ln in out.splitlines() if ln.startswith("first"))
    second = next(ln for ln in out.splitlines() if ln.startswith("second"))
    assert sources(first) == (2097152, 0)
    assert sources(second) == (0, 2097152)
    assert "ranged get_object: 1000 bytes" in out

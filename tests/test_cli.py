"""The `meshcache` command, run as a real subprocess: outputs and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import SMALL_BLOCK


@pytest.fixture
def run(tmp_path):
    env = dict(os.environ, MESHCACHE_CACHE_DIR=str(tmp_path / "cache"),
               MESHCACHE_BLOCK_SIZE=str(SMALL_BLOCK), MESHCACHE_FSYNC="0")

    def run(*args, **kw):
        return subprocess.run([sys.executable, "-m", "meshcache.cli", *args], env=env,
                              capture_output=True, cwd=tmp_path, timeout=60, **kw)
    return run


def test_get_cat_stat_and_cache_commands(run, local_object, tmp_path):
    url, data = local_object(size=5 * SMALL_BLOCK + 9)
    r = run("get", url, "-o", "out.bin", "--help")
    assert r.returncode == 0 and b"Download URL" in r.stdout
    r = run("--progress", "get", url, "-o", "out.bin")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    assert b"origin" in r.stderr and b"%" in r.stderr  # summary line and a progress bar
    r = run("cat", url, "--start", "3", "--end", "11")
    assert r.returncode == 0 and r.stdout == data[3:11]
    r = run("stat", url, "--json")
    st = json.loads(r.stdout)
    assert st["size"] == len(data) and st["cached_blocks"] == 6
    r = run("cache", "ls", "--json")
    assert json.loads(r.stdout.splitlines()[0])["cached_bytes"] == len(data)
    assert run("cache", "pin", url).returncode == 0
    r = run("cache", "evict", url)
    assert r.returncode == 7 and b"pinned" in r.stderr
    assert run("cache", "unpin", url).returncode == 0
    assert run("cache", "evict", url).returncode == 0
    assert json.loads(run("stat", url, "--json").stdout)["cached_blocks"] == 0
    assert run("prewarm", url).returncode == 0
    assert b"in 6 blocks" in run("cache", "du").stdout
    assert run("refresh", url).returncode == 0
    assert json.loads(run("stats", "--json").stdout)["store_blocks"] == 6


def test_exit_codes(run, tmp_path):
    r = run("get", str(tmp_path / "missing.bin"))
    assert r.returncode == 3 and b"missing.bin" in r.stderr
    r = run("get", "http://127.0.0.1:9/x.bin")
    assert r.returncode == 4 and b"127.0.0.1:9" in r.stderr
    r = run("cache", "evict")
    assert r.returncode == 2
    r = run("nosuchcommand")
    assert r.returncode == 2
    bad = subprocess.run([sys.executable, "-m", "meshcache.cli", "stats"],
                         env=dict(os.environ, MESHCACHE_READAHEAD="lots"), capture_output=True)
    assert bad.returncode == 6 and b"MESHCACHE_READAHEAD" in bad.stderr
    f = tmp_path / "afile"
    f.write_text("x")
    r = subprocess.run([sys.executable, "-m", "meshcache.cli", "--cache-dir", str(f / "c"),
                        "stats"], capture_output=True)
    assert r.returncode == 5 and str(f).encode() in r.stderr

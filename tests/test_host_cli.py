"""The CLI for scripts: --json, header rows, one meaning per exit code, status through the
daemon, and `meshcached --help`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import SMALL_BLOCK
from tests.host_fixtures import cache_env, running_daemon


@pytest.fixture
def cache_dir():
    d = tempfile.mkdtemp(prefix="mc-cli-")
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", d], check=False)


def _run(cache_dir: str, *args: str, daemon: str = "off") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **cache_env(cache_dir, daemon=daemon))
    if daemon == "auto":
        env.pop("MESHCACHE_DAEMON")
    return subprocess.run([sys.executable, "-m", "meshcache.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=cache_dir)


def test_scripting_contract_without_daemon(cache_dir, local_object):
    url, data = local_object(size=3 * SMALL_BLOCK + 5)
    r = _run(cache_dir, "prewarm", "--json", url, url + ".missing")
    assert r.returncode == 3  # the missing one's code, after the good one was stored
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows[0] == {"url": url, "ok": True, "size": len(data)}
    assert rows[1]["ok"] is False and "missing" in rows[1]["error"]
    r = _run(cache_dir, "cache", "ls")
    assert r.stdout.splitlines()[0].split() == ["cached", "size", "blocks", "url"]
    assert url in r.stdout.splitlines()[1]
    du = json.loads(_run(cache_dir, "cache", "du", "--json").stdout)
    assert du["bytes"] == len(data) and du["blocks"] == 4
    ref = json.loads(_run(cache_dir, "refresh", "--json", url).stdout)
    assert ref["size"] == len(data) and ref["version"]
    got = _run(cache_dir, "get", "--json", "-o", "out.bin", url)
    assert json.loads(got.stdout)["bytes_from_local"] == len(data)
    pin = _run(cache_dir, "cache", "pin", "--json", url)
    assert json.loads(pin.stdout)["pinned"] is True
    assert _run(cache_dir, "cat", url, "--start", "9", "--end", "3").returncode == 2
    assert _run(cache_dir, "cache", "evict", url).returncode == 7  # pinned: not a store error
    assert _run(cache_dir, "cache", "unpin", url).returncode == 0
    assert _run(cache_dir, "cache", "unpin", url).returncode == 7  # not pinned
    r = _run(cache_dir, "status")
    assert r.returncode == 8 and "no meshcached" in r.stderr


def test_status_and_stats_ask_the_daemon(cache_dir, local_object):
    url, data = local_object(size=2 * SMALL_BLOCK)
    with running_daemon(cache_dir) as ready:
        assert _run(cache_dir, "get", "-o", "x.bin", url, daemon="auto").returncode == 0
        st = json.loads(_run(cache_dir, "status", "--json", daemon="auto").stdout)
        assert st["pid"] != os.getpid() and st["stats"]["bytes_from_origin"] == len(data)
        assert st["reading"][0]["url"] == url
        text = _run(cache_dir, "status", daemon="auto").stdout
        assert "hit ratio" in text and "member" in text
        stats = json.loads(_run(cache_dir, "stats", "--json", daemon="auto").stdout)
        assert stats["local_requests"] > 0  # the daemon's counters, not the CLI's own
        assert ready["socket"] == os.path.join(cache_dir, "meshcached.sock")


def test_meshcached_help_and_version():
    r = subprocess.run([sys.executable, "-m", "meshcache.daemon", "--help"], capture_output=True,
                       text=True, timeout=60)
    for option in ("--credential-file", "--preset", "--zone", "--metrics", "--socket-group",
                   "--version"):
        assert option in r.stdout
    r = subprocess.run([sys.executable, "-m", "meshcache.daemon", "--version"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "meshcached" in r.stdout

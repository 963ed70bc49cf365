"""Observability of a daemon: Prometheus metrics that parse and move, and the status page in
headless Chromium showing the members table and a counter that changes."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshcache.config import Config
from meshcache.host.client import daemon_node
from meshcache.lab.httporigin import OriginServer
from tests.conftest import make_bytes
from tests.host_fixtures import SMALL_BLOCK, running_daemon

CHROMIUM = "/usr/bin/chromium"
SECRET = secrets.token_urlsafe(32)  # strong: weak credentials are refused


@pytest.fixture
def dirs():
    made = [tempfile.mkdtemp(prefix="mc-st-") for _ in range(2)]
    try:
        yield made
    finally:
        for d in made:
            subprocess.run(["rm", "-rf", d], check=False)


@pytest.fixture
def origin():
    srv = OriginServer()
    try:
        yield srv
    finally:
        srv.close()


def _metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(base + "metrics", timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _read(cache_dir: str, url: str) -> bytes:
    node = daemon_node(Config.from_dict({"cache_dir": cache_dir, "block_size": SMALL_BLOCK}),
                       environ={})
    assert node is not None
    try:
        return node.cat(url)
    finally:
        node.close()


def test_metrics_parse_and_move(dirs, origin):
    data = make_bytes(6 * SMALL_BLOCK, seed=8)
    origin.put("m.bin", data)
    url = origin.url_for("m.bin")
    with running_daemon(dirs[0]) as ready:
        base = str(ready["metrics"])
        before = _metrics(base)
        assert before[("meshcache_bytes_total", (("source", "origin"),))] == 0
        assert _read(dirs[0], url) == data
        after = _metrics(base)
        assert after[("meshcache_bytes_total", (("source", "origin"),))] == len(data)
        assert after[("meshcache_origin_requests_total", ())] >= 6
        assert after[("meshcache_local_requests_total", ())] > \
            before[("meshcache_local_requests_total", ())]
        assert after[("meshcache_store_bytes", ())] == len(data)
        assert _read(dirs[0], url) == data  # hot: short-circuit hits, told to the daemon
        hot = _metrics(base)
        assert hot[("meshcache_bytes_total", (("source", "local"),))] >= len(data)
        assert hot[("meshcache_bytes_total", (("source", "origin"),))] == len(data)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed "
                    "(make system-deps installs it)")
def test_status_page_in_headless_chromium(dirs, origin):
    from playwright.sync_api import sync_playwright

    data = make_bytes(4 * SMALL_BLOCK, seed=9)
    origin.put("s.bin", data)
    url = origin.url_for("s.bin")
    with running_daemon(dirs[0], cluster_secret=SECRET, zone="blue") as a, \
            running_daemon(dirs[1], cluster_secret=SECRET, zone="blue",
                           peers=str(a["address"])) as b:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            try:
                page = browser.new_page()
                page.goto(str(a["metrics"]))
                # The members table lists the other daemon, by its node id.
                page.wait_for_function(
                    "id => document.querySelector('#members tbody').textContent.includes(id)",
                    arg=str(b["node_id"])[:16], timeout=30000)
                assert "blue" in page.inner_text("#members")
                assert page.inner_text("#block_misses") == "0"
                requests = int(page.inner_text("#local_requests"))
                assert _read(dirs[0], url) == data
                # Every block was a miss here (from the origin, or from the other daemon when
                # it owns the block): the counter moves on the page without a reload.
                page.wait_for_function(
                    "() => document.querySelector('#block_misses').textContent === '4'",
                    timeout=15000)
                assert int(page.inner_text("#local_requests")) > requests
                assert url in page.inner_text("#reading")
            finally:
                browser.close()


def test_a_wrong_credential_is_a_warning_on_both_ends(dirs):
    with running_daemon(dirs[0], cluster_secret=SECRET) as a, \
            running_daemon(dirs[1], cluster_secret=secrets.token_urlsafe(32),
                           peers=str(a["address"])) as b:
        deadline = time.monotonic() + 20
        while True:
            logs = [open(str(r["log_file"])).read() for r in (a, b)]
            if all("WARNING" in text and ("rejected" in text or "refused" in text)
                   for text in logs):
                break
            assert time.monotonic() < deadline, logs
            time.sleep(0.2)
        assert "rejected" in logs[0] and "authentication" in logs[0]  # the side that refused
        assert "refused this node" in logs[1] and "credential" in logs[1]  # and why
        assert "started: zone default" in logs[0]  # the start summary at the default level


def test_a_taken_metrics_port_is_a_warning_not_a_dead_daemon(dirs):
    with running_daemon(dirs[0]) as a:
        port = str(a["metrics"]).rsplit(":", 1)[1].strip("/")
        with running_daemon(dirs[1], metrics_listen=f"127.0.0.1:{port}") as b:
            assert b["metrics"] is None and b["socket"]
            assert "metrics and status page off" in open(str(b["log_file"])).read()
            node = daemon_node(Config.from_dict({"cache_dir": dirs[1]}), environ={})
            assert node is not None and node.stats()["local_clients"] == 1
            node.close()


class _Snapshot:
    """A status source with fixed figures (the collector is a pure transform of them)."""

    def status(self):
        return {"stats": {"bytes_from_origin": 5, "bytes_from_zone:eu": 7, "bytes_to_zone:us": 3},
                "members": [{"state": "suspect", "summary_bytes": 10}], "zones": {"default": 1},
                "hit_ratio": None, "summary_bytes": 4}

    def rate_limit_waits(self):
        return {"egress": (2, 0.5)}


def test_collector_names_zones_states_and_waits():
    from prometheus_client import CollectorRegistry, generate_latest

    from meshcache.host.metrics import NodeCollector

    reg = CollectorRegistry()
    reg.register(NodeCollector(_Snapshot()))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(generate_latest(reg).decode())
               for s in fam.samples}
    assert samples[("meshcache_zone_bytes_total", (("direction", "from"), ("zone", "eu")))] == 7
    assert samples[("meshcache_zone_bytes_total", (("direction", "to"), ("zone", "us")))] == 3
    assert samples[("meshcache_members", (("state", "suspect"),))] == 1
    assert samples[("meshcache_members", (("state", "alive"),))] == 0
    assert samples[("meshcache_summary_bytes", (("whose", "peers"),))] == 10
    assert samples[("meshcache_rate_limit_wait_seconds_total", (("direction", "egress"),))] == 0.5


def test_reading_table_stays_bounded():
    """A daemon reading ever new URLs keeps at most MAX_READING of them for the status page,
    and none not asked for READING_WINDOW seconds."""
    from collections import OrderedDict

    from meshcache.host.status import MAX_READING, READING_WINDOW, note_reading

    table: OrderedDict[str, tuple[float, int]] = OrderedDict()
    for i in range(20 * MAX_READING):
        note_reading(table, f"s3://b/shard-{i}", now=i * 0.001)
        note_reading(table, "s3://b/hot", now=i * 0.001)
    assert len(table) == MAX_READING
    assert table["s3://b/hot"][1] == 20 * MAX_READING  # the one read throughout, every request
    note_reading(table, "s3://b/late", now=1000.0)
    assert list(table) == ["s3://b/late"]  # the others were not asked for READING_WINDOW
    assert 1000.0 - 20 * MAX_READING * 0.001 >= READING_WINDOW

"""The wan configuration keys and what `meshcache peers` shows of remote zones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from meshcache.config import Config, ConfigError
from meshcache.mesh.mesh import STATUS_FILE


def test_wan_preset_runs_the_dht_and_keys_are_checked() -> None:
    c = Config.wan(cluster_secret="81NI1w26Cdtrd9pmtWZeimZjro0LAm2EFHtoPOwT6qg", zone="b", zone_costs=["a=10", "c=40"],
                   dht_bootstrap=["10.0.0.1:7947"], zone_egress_rate="10MiB")
    assert c.dht_listen == "0.0.0.0:7947" and c.zone_egress_rate == 10 << 20
    assert Config.local().dht_listen == ""
    for bad, key in (({"zone_costs": ["a"]}, "zone_costs"),
                     ({"zone_costs": ["a=-1"]}, "zone_costs"),
                     ({"dht_bootstrap": ["nohost"]}, "dht_bootstrap"),
                     ({"dht_republish": 7200.0}, "dht_republish"),
                     ({"zone_ingress_rate": -1}, "zone_ingress_rate"),
                     ({"dht_rpc_timeout": 0.0}, "dht_rpc_timeout")):
        with pytest.raises(ConfigError, match=key):
            Config.local(**bad)
    env = {"MESHCACHE_DHT_BOOTSTRAP": "10.0.0.1:7947,10.0.0.2:7947",
           "MESHCACHE_ZONE_COSTS": "a=1"}
    c = Config.from_env(env)
    assert c.dht_bootstrap == ["10.0.0.1:7947", "10.0.0.2:7947"] and c.zone_costs == ["a=1"]


def test_meshcache_peers_shows_remote_zones(tmp_path) -> None:
    status = {"node_id": "ab" * 16, "zone": "b", "pid": os.getpid(), "address": "10.0.0.2:7946",
              "time": time.time(), "ping_interval": 1.0, "summary_generation": 1,
              "summary_bytes": 128, "members": [], "remote_zones": {"a": 3, "b": 2, "c": 1}}
    (tmp_path / STATUS_FILE).write_text(json.dumps(status))
    env = dict(os.environ, MESHCACHE_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "meshcache.cli", "peers"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "remote zones seen: a (3 nodes), c (1 nodes)" in out.stdout

import pytest

from meshcache.config import Config, ConfigError, parse_size


def test_presets_differ_and_validate(tmp_path):
    assert Config.local().preset == "local"
    with pytest.raises(ConfigError, match="cluster_secret"):
        Config.lan()
    lan = Config.lan(cluster_secret="s")
    wan = Config.wan(cluster_secret="s")
    assert lan.mdns and wan.suspect_timeout > lan.suspect_timeout
    assert wan.block_size == lan.block_size  # one B for the whole mesh


def test_toml_and_env(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('block_size = "4MiB"\nreadahead = 3\ncache_dir = "%s"\n' % tmp_path)
    c = Config.from_env({"MESHCACHE_CONFIG": str(p), "MESHCACHE_READAHEAD": "5",
                         "MESHCACHE_METADATA_TTL": "1.5"})
    assert c.block_size == 4 << 20 and c.readahead == 5 and c.metadata_ttl == 1.5
    assert Config.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("data,key", [
    ({"bogus": 1}, "bogus"),
    ({"block_size": 3000}, "block_size"),
    ({"block_size": "lots"}, "block_size"),
    ({"readahead": "x"}, "readahead"),
    ({"readahead": 0}, "readahead"),
    ({"fsync": "yes"}, "fsync"),
    ({"preset": "moon"}, "preset"),
    ({"peers": "a:1"}, "peers"),
    ({"trace_frames": -1}, "trace_frames"),
    ({"gc_interval": -1}, "gc_interval"),
])
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key):
        Config.from_dict(data)


def test_env_errors_name_the_variable():
    with pytest.raises(ConfigError, match="MESHCACHE_NOPE"):
        Config.from_env({"MESHCACHE_NOPE": "1"})
    with pytest.raises(ConfigError, match="MESHCACHE_READAHEAD"):
        Config.from_env({"MESHCACHE_READAHEAD": "many"})


def test_bad_toml_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("block_size = = 3")
    with pytest.raises(ConfigError, match="bad.toml"):
        Config.from_toml(p)


def test_sizes():
    assert parse_size("8MiB", "k") == 8 << 20
    assert parse_size("10 GB", "k") == 10 * 10**9
    assert parse_size(512, "k") == 512
    with pytest.raises(ConfigError):
        parse_size("8 parsecs", "k")


def test_surfaces_keys():
    from meshcache.config import Config, ConfigError

    c = Config.from_env({"MESHCACHE_S3_LISTEN": "127.0.0.1:9000",
                         "MESHCACHE_S3_BUCKETS": '{"models": "s3://b/models/"}',
                         "MESHCACHE_S3_ACCESS_KEYS": '{"AKID": "secret"}'})
    assert c.s3_buckets == {"models": "s3://b/models/"} and c.s3_access_keys == {"AKID": "secret"}
    with pytest.raises(ConfigError, match="s3_access_keys"):
        Config.local(s3_listen="127.0.0.1:9000")
    assert Config.local(s3_listen="127.0.0.1:9000", s3_anonymous=True).s3_anonymous
    with pytest.raises(ConfigError, match="s3_listen"):
        Config.local(s3_listen="nope", s3_anonymous=True)
    with pytest.raises(ConfigError, match="s3_buckets"):
        Config.local(s3_buckets={"Bad_Name": "s3://x/"})
    with pytest.raises(ConfigError, match="s3_bucket_options"):
        Config.local(s3_buckets={"abc": "s3://x/"}, s3_bucket_options={"zzz": {}})
    with pytest.raises(ConfigError, match="S3_BUCKETS"):
        Config.from_env({"MESHCACHE_S3_BUCKETS": "not json"})


def test_peer_origins_and_liar_expel_after():
    c = Config.from_env({"MESHCACHE_PEER_ORIGINS": "http://10.0.0.9:8080/,s3://models/",
                         "MESHCACHE_LIAR_EXPEL_AFTER": "2"})
    assert c.peer_origins == ["http://10.0.0.9:8080/", "s3://models/"]
    assert c.liar_expel_after == 2
    assert Config.local().peer_origins == [] and Config.local().liar_expel_after == 3
    with pytest.raises(ConfigError, match="peer_origins"):
        Config.local(peer_origins=["/etc"])
    with pytest.raises(ConfigError, match="liar_expel_after"):
        Config.local(liar_expel_after=0)


def test_a_command_line_preset_starts_from_its_values_and_keeps_explicit_keys(tmp_path):
    """`meshcached --preset wan` with a TOML file and MESHCACHE_* variables: the wan preset's
    values (its DHT endpoint, WAN datagram size), except the keys the file, the environment or
    other options set."""
    from tests.conftest import CLUSTER_SECRET

    toml = tmp_path / "c.toml"
    toml.write_text('zone = "dc2"\nping_interval = 2.0\n')
    env = {"MESHCACHE_CONFIG": str(toml), "MESHCACHE_DHT_RPC_TIMEOUT": "3",
           "MESHCACHE_CLUSTER_SECRET": CLUSTER_SECRET}
    cfg = Config.from_env(env, {"preset": "wan", "dht_bootstrap": ["10.0.0.5:7947"]})
    wan = Config.wan(cluster_secret=CLUSTER_SECRET)
    assert cfg.preset == "wan" and cfg.dht_listen == wan.dht_listen == "0.0.0.0:7947"
    assert cfg.max_datagram_size == wan.max_datagram_size and cfg.mdns is True
    assert cfg.zone == "dc2" and cfg.ping_interval == 2.0 and cfg.dht_rpc_timeout == 3.0
    assert cfg.dht_bootstrap == ["10.0.0.5:7947"]
    assert Config.from_env(env).preset == "local" and Config.from_env(env).dht_listen == ""

"""Configuration: one dataclass with presets, loadable from TOML and the environment.

Presets follow hashicorp/memberlist's DefaultLocal/LAN/WANConfig: `Config.local()` is one host with
no peers, `Config.lan()` a datacenter LAN, `Config.wan()` zones joined over slow links.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

MIN_BLOCK_SIZE = 64 * KiB
MAX_BLOCK_SIZE = 64 * MiB


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "meshcache")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(value: Any, key: str) -> int:
    """Parse a byte size: an int, or a string such as '8MiB', '10 GB', '512k'."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            number, unit, binary = m.groups()
            power = "kmgtp".index(unit.lower()) + 1 if unit else 0
            base = 1024 if binary else 1000
            return int(float(number) * base**power)
    raise ConfigError(f"{key}: expected a size in bytes such as 8388608 or '8MiB', got {value!r}")


@dataclass
class Config:
    """Everything a node needs to know; see docs/configuration in README for each key."""

    preset: str = "local"
    # Where blocks, manifests and the node's identity live.
    cache_dir: str = field(default_factory=_default_cache_dir)
    # Most bytes of blocks the store keeps before S3-FIFO eviction.
    capacity: int = 20 * GiB
    # One power of two for the whole mesh; blocks are [i*B, (i+1)*B) of an object version.
    block_size: int = 4 * MiB
    # Blocks fetched ahead of a sequential reader (and parallel origin reads for one object).
    readahead: int = 8
    # Origin reads in flight at once for the whole node.
    origin_concurrency: int = 8
    # Seconds an origin stat (size + ETag/mtime) is trusted before it is asked again.
    metadata_ttl: float = 60.0
    # Seconds one origin request may take before it is retried or fails.
    origin_timeout: float = 60.0
    # Retries of one failed origin range read before the read fails.
    origin_retries: int = 2
    # fsync each block before it becomes visible (crash safety); off only for throwaway caches.
    fsync: bool = True
    # Peer-to-peer settings (later layers).
    zone: str = "default"
    listen: str = "0.0.0.0:7946"
    peers: list[str] = field(default_factory=list)
    cluster_secret: str = ""
    cluster_secret_file: str = ""
    mdns: bool = False
    interfaces: list[str] = field(default_factory=list)
    # QUIC datagram size; both ends must agree. 0: from the MTU of the listen interface.
    max_datagram_size: int = 0
    egress_rate: int = 0
    ingress_rate: int = 0
    peer_egress_rate: int = 0
    peer_ingress_rate: int = 0
    request_timeout: float = 10.0
    # SWIM membership (membership.py, mesh.py): every ping_interval one member is probed; no ACK
    # within half of it -> `indirect_checks` other members probe it for us; none by the end of
    # the interval -> suspected (gossiped); not refuted within suspect_timeout -> removed.
    ping_interval: float = 1.0
    suspect_timeout: float = 5.0
    indirect_checks: int = 3
    # Seconds between push-pull syncs of the whole member table once nothing changes (while
    # syncs bring news they run every 2 ping_intervals).
    sync_interval: float = 30.0
    log_level: str = "WARNING"
    # --- origin outage ---
    # Seconds after the origin last confirmed an object's version during which, while the
    # origin fails (errors, timeouts, refused connections; not "no such object"), reads keep
    # being served under that version from this node and its zone. 0: fail at once.
    stale_if_error: float = 86400.0

    # --- mesh: what a peer may make this node do ---
    # URL prefixes this node fetches from an origin when a peer asks it (as a block's owner).
    # Listed: exactly the URLs under these. Empty: any remote-storage URL (http, https, s3, gs,
    # az, hdfs, ...) except loopback and link-local hosts; never file:// or other local schemes.
    peer_origins: list[str] = field(default_factory=list)
    # Proven lies (bytes that do not match the digest asked, malformed or impossible replies)
    # after which a peer is expelled from this node's view for an hour; each lie doubles the time
    # it is avoided (30 s, 60 s, ...).
    liar_expel_after: int = 3

    # --- host daemon (meshcache/host/) ---
    # The local API's Unix socket; "" is <cache_dir>/meshcached.sock. The library uses the daemon
    # serving it (MESHCACHE_DAEMON=off: never; =<path>: that socket).
    daemon_socket: str = ""
    # Group given the socket (mode 0660): the local users who may use the daemon. "": the
    # daemon's own group.
    socket_group: str = ""
    # Accept storage options (origin credentials) from local clients; off: the daemon reads
    # origins with its own configuration only.
    daemon_client_options: bool = False
    # host:port of the HTTP endpoint with Prometheus metrics (/metrics) and the status page (/);
    # "" turns it off.
    metrics_listen: str = "127.0.0.1:7947"
    # --- surfaces (S3 gateway, FUSE) ---
    # host:port the S3-compatible gateway listens on ("" = no gateway).
    s3_listen: str = ""
    # Bucket name -> origin URL prefix it serves, e.g. {"models": "s3://real-bucket/models/"}.
    s3_buckets: dict[str, str] = field(default_factory=dict)
    # Bucket name -> fsspec storage options for its origin (endpoint_url, anon, headers, ...).
    s3_bucket_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Access key id -> secret key that clients sign requests with (AWS Signature V4).
    s3_access_keys: dict[str, str] = field(default_factory=dict)
    # Serve unsigned requests too (a public, read-only endpoint); off by default.
    s3_anonymous: bool = False
    # The region GetBucketLocation reports.
    s3_region: str = "us-east-1"
    # Bytes of whole-object copies the FUSE mount may keep for passthrough reads (as root, on
    # kernels with FUSE passthrough), on top of `capacity`; 0 turns passthrough off.
    fuse_view_bytes: int = 4 * GiB
    # --- transport ---
    # QUIC engine: "auto" (qh3 when installed, else aioquic), "qh3" or "aioquic".
    quic_engine: str = "auto"
    # Batched UDP I/O (GSO/GRO) where the kernel has it; false: one sendto per datagram.
    udp_batching: bool = True
    # Bytes a peer may send before it is authenticated (more closes its connection).
    preauth_max_bytes: int = 256 * 1024
    # Connections handshaking or authenticating at once; past it a new (Retry-validated) one
    # takes the place of the oldest.
    max_unauthenticated: int = 64
    # Pending connections past which new clients must first prove their address (QUIC Retry).
    retry_threshold: int = 8
    # --- wan ---
    # UDP host:port of this node's DHT endpoint ("" = no DHT); the `wan` preset listens.
    dht_listen: str = ""
    # DHT addresses host:port of any node in any zone, to join through.
    dht_bootstrap: list[str] = field(default_factory=list)
    # "zone=cost" entries in milliseconds: providers in cheaper zones are tried first (else the
    # round trip the DHT measured to the zone).
    zone_costs: list[str] = field(default_factory=list)
    # Bytes/s to and from each remote zone (0 = unlimited).
    zone_egress_rate: int = 0
    zone_ingress_rate: int = 0
    # Seconds a provider record lives; its publisher re-announces every dht_republish seconds.
    dht_record_ttl: float = 3600.0
    dht_republish: float = 1800.0
    # Seconds one DHT RPC may take.
    dht_rpc_timeout: float = 5.0
    # --- wan striping ---
    # Zones pulling the same version at once split its blocks: each block crosses the WAN into
    # one of them, the others ask that zone for it (docs/wan.md). false: every zone owner
    # fetches from the providers.
    stripe: bool = True
    # Seconds a zone owner asks another pulling zone's node to wait for a block before it asks
    # the providers itself; also the longest this node holds a GET_BLOCK that asks it to wait.
    stripe_wait: float = 30.0
    # GET_BLOCK requests that may wait on this node at once (more get a MISS at once).
    stripe_max_waiting: int = 256
    # Seconds the record "this node pulls this version" lives in the DHT; republished every
    # third of it while the node pulls.
    stripe_record_ttl: float = 30.0

    # --- store index ---
    # Seconds between writes of the store's index snapshot (<cache_dir>/index) while blocks
    # come and go; it is also written at close. A start after a crash stats only the block
    # files written since. 0: only at close.
    index_snapshot_interval: float = 300.0

    # --- memory reports (meshcache/host/memdebug.py) ---
    # Frames per traceback when the daemon's first memory report (SIGUSR1) starts tracing
    # allocations (tracemalloc); 0: reports count objects by type only, no tracing cost.
    trace_frames: int = 0

    # --- the daemon's garbage collection ---
    # Seconds between full garbage collections in the daemon (0: Python's own schedule, which
    # ran one every few minutes). Both QUIC engines keep each connection in a reference cycle,
    # so a closed connection's engine state and buffers are freed only by a collection
    # (docs/reliability.md, "Soak"); one takes milliseconds (the daemon freezes what it made
    # to start).
    gc_interval: float = 10.0

    # ---- presets ---------------------------------------------------------------------------------

    @classmethod
    def local(cls, **overrides: Any) -> "Config":
        """One host, no peers: a read-through cache in front of the origin."""
        return cls(preset="local", **overrides).validated()

    @classmethod
    def lan(cls, **overrides: Any) -> "Config":
        """A datacenter LAN: mDNS discovery, fast failure detection, credential required."""
        base = dict(preset="lan", mdns=True, ping_interval=1.0, suspect_timeout=5.0,
                    indirect_checks=3, sync_interval=30.0, request_timeout=10.0)
        base.update(overrides)
        return cls(**base).validated()

    @classmethod
    def wan(cls, **overrides: Any) -> "Config":
        """Zones over slow links: tolerant timings, credential required (B stays mesh-wide)."""
        base = dict(preset="wan", mdns=True, ping_interval=5.0, suspect_timeout=30.0,
                    indirect_checks=3, sync_interval=60.0, request_timeout=60.0,
                    metadata_ttl=60.0, dht_listen="0.0.0.0:7947", dht_record_ttl=3600.0,
                    # 5 s: replies from a busy 2-core host took up to 2.2 s, and 1 s gave
                    # up on over half of them (benchmarks/dht_load.py, docs/wan.md)
                    dht_republish=1800.0, dht_rpc_timeout=5.0,
                    # Peers in other zones are reached over paths with a 1500-byte MTU that the
                    # local interface does not show (and QUIC sets don't-fragment): 1452-byte
                    # datagrams cross them.
                    max_datagram_size=1452)
        base.update(overrides)
        return cls(**base).validated()

    # ---- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "Config":
        """Build from a mapping; the `preset` key picks the starting point. Unknown keys are errors."""
        data = dict(data)
        preset = data.pop("preset", "local")
        if preset not in _PRESETS:
            raise ConfigError(f"{source}: preset: unknown preset {preset!r} (local, lan, wan)")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"{source}: {key}: unknown configuration key")
        coerced = {k: _coerce(k, v, source) for k, v in data.items()}
        return getattr(cls, preset)(**coerced)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> "Config":
        """Load a TOML file (flat keys, or under a [meshcache] table)."""
        return cls.from_dict(_read_toml(path), source=str(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> "Config":
        """MESHCACHE_CONFIG names a TOML file; MESHCACHE_<KEY> variables override its keys, and
        `overrides` (command-line options) override both; a `preset` among them starts from that
        preset's values, keeping only the keys set explicitly."""
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        path = env.get("MESHCACHE_CONFIG")
        if path:
            cls.from_toml(path)  # its errors name the file
            data = _read_toml(path)  # only the keys it sets: a preset override keeps them
        known = {f.name for f in dataclasses.fields(cls)}
        for name, value in env.items():
            if not name.startswith("MESHCACHE_") or name in _NOT_KEYS:
                continue
            key = name[len("MESHCACHE_"):].lower()
            if key not in known:
                raise ConfigError(f"environment: {name}: unknown configuration key")
            data[key] = _from_env_string(key, value)
        data.update(overrides or {})
        return cls.from_dict(data, source="environment")

    # ---- validation ------------------------------------------------------------------------------

    def validated(self) -> "Config":
        """Check every value; raise ConfigError naming the first bad key."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), "config"))
        b = self.block_size
        if b & (b - 1) or not (MIN_BLOCK_SIZE <= b <= MAX_BLOCK_SIZE):
            raise ConfigError(
                f"block_size: must be a power of two between {MIN_BLOCK_SIZE} and "
                f"{MAX_BLOCK_SIZE} bytes, got {b}")
        for key in ("capacity", "readahead", "origin_concurrency"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)}")
        if self.max_datagram_size and not 1200 <= self.max_datagram_size <= 65527:
            raise ConfigError(f"max_datagram_size: must be 0 (from the MTU) or 1200..65527, "
                              f"got {self.max_datagram_size}")
        for key in ("metadata_ttl", "origin_timeout", "request_timeout", "ping_interval",
                    "suspect_timeout", "indirect_checks", "sync_interval", "origin_retries",
                    "egress_rate", "ingress_rate",
                    "peer_egress_rate", "peer_ingress_rate", "stale_if_error",
                    "index_snapshot_interval", "fuse_view_bytes", "gc_interval"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must not be negative, got {getattr(self, key)}")
        for prefix in self.peer_origins:
            if "://" not in prefix:
                raise ConfigError(f"peer_origins: {prefix!r} is not a URL prefix "
                                  "(scheme://host/path...)")
        if not 0 <= self.trace_frames <= 100:
            raise ConfigError(f"trace_frames: must be 0..100, got {self.trace_frames}")
        if self.liar_expel_after < 1:
            raise ConfigError(f"liar_expel_after: must be at least 1, got {self.liar_expel_after}")

        if self.metrics_listen and not re.match(r"^\[?[0-9A-Za-z.:-]*\]?:\d{1,5}$",
                                                self.metrics_listen):
            raise ConfigError(f"metrics_listen: expected host:port or '', got "
                              f"{self.metrics_listen!r}")
        if self.quic_engine not in ("auto", "qh3", "aioquic"):
            raise ConfigError(f"quic_engine: must be auto, qh3 or aioquic, got {self.quic_engine!r}")
        for key in ("preauth_max_bytes", "max_unauthenticated"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)}")
        if self.retry_threshold < 0:
            raise ConfigError(f"retry_threshold: must not be negative, got {self.retry_threshold}")
        if self.capacity < self.block_size:
            raise ConfigError(f"capacity: must hold at least one block ({self.block_size} bytes)")
        if not self.cache_dir:
            raise ConfigError("cache_dir: must not be empty")
        self._validate_surfaces()
        self._validate_wan()
        self._validate_stripe()
        if self.preset in ("lan", "wan") and not self.credential():
            raise ConfigError(
                f"cluster_secret: the {self.preset} preset needs the cluster credential "
                "(cluster_secret, cluster_secret_file or MESHCACHE_CLUSTER_SECRET)")
        return self

    def _validate_surfaces(self) -> None:
        if self.s3_listen:
            host, sep, port = self.s3_listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ConfigError(f"s3_listen: expected host:port, got {self.s3_listen!r}")
            if not self.s3_access_keys and not self.s3_anonymous:
                raise ConfigError("s3_access_keys: the S3 gateway needs at least one access "
                                  "key (or s3_anonymous = true for a public endpoint)")
        for bucket, prefix in self.s3_buckets.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
                raise ConfigError(f"s3_buckets: {bucket!r} is not a valid S3 bucket name")
            if not prefix:
                raise ConfigError(f"s3_buckets: {bucket}: empty origin URL prefix")
        for bucket, opts in self.s3_bucket_options.items():
            if bucket not in self.s3_buckets:
                raise ConfigError(f"s3_bucket_options: {bucket}: no such bucket in s3_buckets")
            if not isinstance(opts, dict):
                raise ConfigError(f"s3_bucket_options: {bucket}: expected a table of options")
    def _validate_wan(self) -> None:
        for key in ("zone_egress_rate", "zone_ingress_rate"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must not be negative, got {getattr(self, key)}")
        for key in ("dht_record_ttl", "dht_republish", "dht_rpc_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)}")
        if self.dht_republish >= self.dht_record_ttl:
            raise ConfigError(f"dht_republish: must be shorter than dht_record_ttl "
                              f"({self.dht_record_ttl}), got {self.dht_republish}")
        for addr in ([self.dht_listen] if self.dht_listen else []) + self.dht_bootstrap:
            host, _, port = addr.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ConfigError(f"dht_listen/dht_bootstrap: expected host:port, got {addr!r}")
        for entry in self.zone_costs:
            zone, eq, cost = entry.partition("=")
            try:
                ok = bool(eq and zone.strip()) and float(cost) >= 0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"zone_costs: expected zone=cost (a number >= 0), got {entry!r}")

    def _validate_stripe(self) -> None:
        if not 0 <= self.stripe_wait <= 120:  # core/wire.py's MAX_WAIT_MS (config is a leaf)
            raise ConfigError(f"stripe_wait: expected 0..120 seconds, got {self.stripe_wait}")
        if self.stripe_max_waiting < 0:
            raise ConfigError(f"stripe_max_waiting: must not be negative, got "
                              f"{self.stripe_max_waiting}")
        if self.stripe_record_ttl <= 0:
            raise ConfigError(f"stripe_record_ttl: must be positive, got "
                              f"{self.stripe_record_ttl}")

    def credential(self) -> bytes:
        """The cluster credential as bytes, from the value or the file; empty when none."""
        if self.cluster_secret:
            return self.cluster_secret.encode()
        if self.cluster_secret_file:
            try:
                return Path(self.cluster_secret_file).read_bytes().strip()
            except OSError as e:
                raise ConfigError(
                    f"cluster_secret_file: cannot read {self.cluster_secret_file}: {e.strerror}"
                ) from None
        return b""

    def socket_path(self) -> str:
        """Where the daemon's local API listens: daemon_socket, or in the cache directory."""
        return os.path.expanduser(self.daemon_socket) if self.daemon_socket else \
            os.path.join(os.path.expanduser(self.cache_dir), "meshcached.sock")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that `from_dict` turns back into an equal Config (used to rebuild in workers)."""
        return dataclasses.asdict(self)


_PRESETS = ("local", "lan", "wan")
# Variables that are not configuration keys: the config file, and which daemon to use
# (meshcache.host.client: a socket path, or "off").
_NOT_KEYS = ("MESHCACHE_CONFIG", "MESHCACHE_DAEMON")
_SIZE_KEYS = {"capacity", "block_size", "fuse_view_bytes", "egress_rate", "ingress_rate",
              "peer_egress_rate", "peer_ingress_rate", "zone_egress_rate", "zone_ingress_rate"}


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The keys of a TOML config file (flat, or under a [meshcache] table)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    if set(data) == {"meshcache"} and isinstance(data["meshcache"], dict):
        data = data["meshcache"]
    return data


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(Config)}


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = _field_types()[key]
    where = f"{source}: {key}"
    try:
        if key in _SIZE_KEYS:
            return parse_size(value, where)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            return float(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected a string, got {value!r}")
            return value
        if kind == "dict[str, str]":
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ConfigError(f"{where}: expected a table of strings, got {value!r}")
            return dict(value)
        if kind == "dict[str, dict[str, Any]]":
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, dict) for k, v in value.items()):
                raise ConfigError(f"{where}: expected a table of tables, got {value!r}")
            return {k: dict(v) for k, v in value.items()}
        if kind == "list[str]":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
            return list(value)
    except ConfigError as e:
        if str(e).startswith(where) or source in str(e):
            raise
        raise ConfigError(f"{where}: {e}") from None
    raise ConfigError(f"{where}: unsupported type {kind}")  # pragma: no cover


def _from_env_string(key: str, value: str) -> Any:
    kind = _field_types()[key]
    where = f"environment: MESHCACHE_{key.upper()}"
    if key in _SIZE_KEYS:
        return parse_size(value, where)
    if kind == "bool":
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if kind == "float":
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if kind.startswith("dict["):
        import json

        try:
            return json.loads(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a JSON object, got {value!r}") from None
    if kind == "list[str]":
        return [v.strip() for v in value.split(",") if v.strip()]
    return value

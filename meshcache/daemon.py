"""`meshcached`: the daemon that serves a host's cache to its processes and to its peers.

It runs one Node from the Config (MESHCACHE_CONFIG TOML and MESHCACHE_* environment, or --config),
serves the local API on a Unix socket (the library's processes read through it), listens for peers
over QUIC, serves metrics and a status page over HTTP, prints one JSON line (node id, addresses,
socket) once ready, and shuts down cleanly on SIGTERM or SIGINT. SIGUSR1 writes a memory report
into the cache directory (meshcache.host.memdebug).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

import click

from meshcache.config import Config, ConfigError
from meshcache.host.memdebug import MemoryReporter
from meshcache.host.server import LocalApi
from meshcache.read.node import Node
from meshcache.read.store import StoreError

if TYPE_CHECKING:
    from meshcache.host.metrics import StatusServer


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file (default: $MESHCACHE_CONFIG).")
@click.option("--preset", type=click.Choice(["local", "lan", "wan"]),
              help="Starting point of the configuration (lan and wan need the credential).")
@click.option("--cache-dir", help="Cache directory (overrides the config).")
@click.option("--zone", help="This node's zone (a LAN or datacenter).")
@click.option("--listen", help="host:port for peers (overrides the config).")
@click.option("--peer", "peers", multiple=True, help="A static peer host:port (repeatable).")
@click.option("--dht-listen", help="UDP host:port of this node's DHT endpoint (zones meet "
              "through it; '' turns it off).")
@click.option("--dht-bootstrap", multiple=True, help="The DHT host:port of any node in any zone "
              "to join through (repeatable).")
@click.option("--credential-file", type=click.Path(dir_okay=False),
              help="File holding the cluster credential (`meshcache secret` makes one).")
@click.option("--socket", "socket_path", help="Unix socket of the local API (default: "
              "<cache dir>/meshcached.sock).")
@click.option("--socket-group", help="Group allowed to use the local API socket (mode 0660).")
@click.option("--metrics", "metrics_listen", help="host:port of the metrics and status page "
              "('' turns it off; default 127.0.0.1:7947).")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="meshcache", prog_name="meshcached")
def main(config_path: str | None, preset: str | None, cache_dir: str | None, zone: str | None,
         listen: str | None, peers: tuple[str, ...], dht_listen: str | None,
         dht_bootstrap: tuple[str, ...], credential_file: str | None,
         socket_path: str | None, socket_group: str | None, metrics_listen: str | None,
         verbose: int) -> None:
    """Serve this host's cache: the local API to its processes, peers over QUIC, metrics and a
    status page over HTTP, until SIGTERM."""
    env = dict(os.environ)
    if config_path:
        env["MESHCACHE_CONFIG"] = config_path
    try:
        overrides: dict[str, object] = {}  # a --preset keeps only what was set explicitly
        for key, value in (("preset", preset), ("cache_dir", cache_dir), ("zone", zone),
                           ("listen", listen), ("cluster_secret_file", credential_file),
                           ("daemon_socket", socket_path), ("socket_group", socket_group),
                           ("metrics_listen", metrics_listen), ("dht_listen", dht_listen)):
            if value is not None:
                overrides[key] = value
        if peers:
            overrides["peers"] = list(peers)
        if dht_bootstrap:
            overrides["dht_bootstrap"] = list(dht_bootstrap)
        cfg = Config.from_env(env, overrides)
    except (ConfigError, ValueError) as e:
        click.echo(f"meshcached: error: {e}", err=True)
        sys.exit(6)
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else \
        getattr(logging, cfg.log_level.upper(), logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("quic").setLevel(max(level, logging.WARNING))  # aioquic's per-stream chatter
    log = logging.getLogger("meshcached")
    api = status = gateway = None
    try:
        node = Node(cfg)
        serve_peers = bool(cfg.credential() or cfg.peers or cfg.preset != "local")
        address = node.start_peers() if serve_peers else None
        if not serve_peers:
            log.warning("no cluster credential: serving this host only, no peers "
                        "(`meshcache secret` makes a credential)")
        api = LocalApi(node, cfg.socket_path(), group=cfg.socket_group,
                       allow_client_options=cfg.daemon_client_options)
        api.start()
        status = status_server(api, cfg.metrics_listen) if cfg.metrics_listen else None
        metrics_addr = None
        if status is not None:
            try:
                metrics_addr = status.start()
            except OSError as e:  # serving the host matters more than its metrics
                log.warning("metrics and status page off: cannot listen on %s: %s",
                            cfg.metrics_listen, e.strerror or e)
                status.close()
                status = None
        if cfg.s3_listen:
            from meshcache.surfaces.s3gateway import serve

            gateway = serve(node)
    except (ConfigError, ValueError, KeyError) as e:
        _stop(api, status)
        click.echo(f"meshcached: error: {e}", err=True)
        sys.exit(6)
    except StoreError as e:
        _stop(api, status)
        click.echo(f"meshcached: error: {e.strerror or e}", err=True)
        sys.exit(5)
    except OSError as e:  # the cache directory, or a port that is taken
        _stop(api, status)
        click.echo(f"meshcached: error: {e.strerror or e}", err=True)
        sys.exit(5)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reports = MemoryReporter(cfg.cache_dir, cfg.trace_frames)
    report_asked = [False]  # a plain flag: the handler must not take a lock the loop may hold

    def on_report(_signum: int, _frame: object) -> None:
        report_asked[0] = True

    signal.signal(signal.SIGUSR1, on_report)
    members = len(node.mesh.live()) if node.mesh is not None else 0
    ready = {"node_id": node.peers.node_id.hex() if node.peers is not None else None,
             "address": f"{address[0]}:{address[1]}" if address else None,
             "zone": cfg.zone, "cache_dir": cfg.cache_dir, "block_size": cfg.block_size,
             "capacity": cfg.capacity, "socket": api.path, "peers_found": members,
             "metrics": f"http://{metrics_addr[0]}:{metrics_addr[1]}/" if metrics_addr else None}
    if gateway is not None and gateway.address is not None:
        ready["s3"] = f"http://{gateway.address[0]}:{gateway.address[1]}"
    print(json.dumps(ready), flush=True)
    log.warning("started: zone %s, peers on %s, %d peer(s) found, cache %s (%d MiB), local API "
                "%s, metrics %s", cfg.zone, ready["address"], members, cfg.cache_dir,
                cfg.capacity >> 20, api.path, ready["metrics"] or "off")
    # What the daemon made to start (modules, classes, its node) lives as long as it does: out
    # of the collector's sight, a full collection scans only what came since, so it costs
    # milliseconds, not tens of them, and the QUIC engines' connections (each a reference
    # cycle inside the engine, freed only by the collector) do not wait minutes for one.
    gc.freeze()
    next_gc = time.monotonic() + cfg.gc_interval
    while not stop.wait(1.0):
        if report_asked[0]:
            report_asked[0] = False
            log.warning("memory report (SIGUSR1): %s", reports.report())
        if cfg.gc_interval and time.monotonic() >= next_gc:
            gc.collect()
            next_gc = time.monotonic() + cfg.gc_interval
    _stop(api, status)
    if gateway is not None:
        gateway.close()
    node.close()
    log.info("stopped")


def status_server(api: LocalApi, listen: str) -> "StatusServer":
    from meshcache.host.metrics import StatusServer

    return StatusServer(api, listen)


def _stop(api: LocalApi | None, http: "StatusServer | None") -> None:
    if http is not None:
        http.close()
    if api is not None:
        api.close()


if __name__ == "__main__":  # pragma: no cover
    main()

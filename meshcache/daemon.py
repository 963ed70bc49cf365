"""`meshcached`: the daemon that serves a host's cache to its peers.

It runs one Node from the Config (MESHCACHE_CONFIG TOML and MESHCACHE_* environment, or --config),
listens for peers over QUIC, logs, prints one JSON line with its node id and address once ready,
and shuts down cleanly on SIGTERM or SIGINT (pending manifests written, peers told by closing).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

import click

from meshcache.config import Config, ConfigError
from meshcache.read.node import Node
from meshcache.read.store import StoreError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file (default: $MESHCACHE_CONFIG).")
@click.option("--cache-dir", help="Cache directory (overrides the config).")
@click.option("--listen", help="host:port for peers (overrides the config).")
@click.option("--peer", "peers", multiple=True, help="A static peer host:port (repeatable).")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(config_path: str | None, cache_dir: str | None, listen: str | None,
         peers: tuple[str, ...], verbose: int) -> None:
    """Serve this host's meshcache node to its peers until SIGTERM."""
    logging.basicConfig(level=max(logging.DEBUG, logging.WARNING - 10 * verbose),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("meshcached")
    env = dict(os.environ)
    if config_path:
        env["MESHCACHE_CONFIG"] = config_path
    try:
        cfg = Config.from_env(env)
        overrides = cfg.to_dict()
        if cache_dir:
            overrides["cache_dir"] = cache_dir
        if listen:
            overrides["listen"] = listen
        if peers:
            overrides["peers"] = list(peers)
        cfg = Config.from_dict(overrides)
        node = Node(cfg)
        address = node.start_peers()
        gateway = None
        if cfg.s3_listen:
            from meshcache.surfaces.s3gateway import serve

            gateway = serve(node)
    except (ConfigError, ValueError) as e:
        click.echo(f"meshcached: error: {e}", err=True)
        sys.exit(6)
    except StoreError as e:
        click.echo(f"meshcached: error: {e.strerror or e}", err=True)
        sys.exit(5)
    except OSError as e:  # e.g. the S3 gateway's port is taken
        click.echo(f"meshcached: error: {e}", err=True)
        sys.exit(7)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready = {"node_id": node.peers.node_id.hex(), "address": f"{address[0]}:{address[1]}",
             "zone": cfg.zone, "cache_dir": cfg.cache_dir, "block_size": cfg.block_size}
    if gateway is not None and gateway.address is not None:
        ready["s3"] = f"http://{gateway.address[0]}:{gateway.address[1]}"
    print(json.dumps(ready), flush=True)
    log.info("serving %s", ready)
    while not stop.wait(1.0):
        pass
    if gateway is not None:
        gateway.close()
    node.close()
    log.info("stopped")


if __name__ == "__main__":  # pragma: no cover
    main()

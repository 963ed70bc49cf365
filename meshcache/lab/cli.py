"""`meshcache lab`: build an N-host lab (network namespaces) that stays until `lab down`, so a user
can try a mesh, or zones joined by a WAN, on one Linux machine (needs root)."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click

PORT = 7946
DHT_PORT = 7947  # UDP, the wan preset's


def _need_root() -> None:
    """Exit with the reason when this machine cannot build a lab."""
    from meshcache.lab.netns import requires_root

    reason = "the lab needs Linux network namespaces" if not sys.platform.startswith("linux") \
        else requires_root()
    if reason:
        click.echo(f"meshcache: error: {reason}", err=True)
        sys.exit(1)


@click.group()
def lab() -> None:
    """Hosts as network namespaces on this machine (root, Linux): `up`, `status`, `down`."""


def _start_mesh(made: Any, zones: dict[str, list[Any]], serve: str | None) -> dict[str, Any]:
    """A meshcached on every host (peers: the hosts of its zone; one fresh credential), and an
    HTTP origin serving `serve` on the origin host; files under the lab's data directory. With
    several zones the nodes run the wan preset and its DHT (`dht_args`), so zones find each
    other."""
    import os
    import subprocess
    import time

    from meshcache.lab.netns import LabError, data_dir
    from meshcache.mesh.auth import new_secret

    base = data_dir(made.prefix)
    base.mkdir(parents=True, exist_ok=True)
    secret = base / "secret"
    secret.write_text(new_secret() + "\n")
    secret.chmod(0o600)
    started: dict[str, Any] = {"data_dir": str(base), "nodes": {}}
    procs = []
    for zone, hosts in zones.items():
        for h in hosts:
            cache = base / h.name
            args = ["-m", "meshcache.daemon", "--zone", zone or "default",
                    "--listen", f"{h.address}:{PORT}", "--credential-file", str(secret),
                    "--cache-dir", str(cache), *dht_args(zones, zone, h.address)]
            for o in hosts:
                if o is not h:
                    args += ["--peer", f"{o.address}:{PORT}"]
            with open(base / f"{h.name}.log", "wb") as out:
                procs.append(h.python(args, stdout=out, stderr=subprocess.STDOUT))
            started["nodes"][h.name] = {"address": f"{h.address}:{PORT}", "cache_dir": str(cache),
                                        "log": str(base / f"{h.name}.log"),
                                        "zone": zone or "default"}
    if serve:
        with open(base / "origin.log", "wb") as out:
            made.origin.python(["-m", "meshcache.lab.httporigin", "--dir",
                                os.path.abspath(serve), "--host", made.origin.address,
                                "--port", "8080"], stdout=out, stderr=subprocess.STDOUT)
        started["origin_url"] = f"http://{made.origin.address}:8080/"
    deadline = time.monotonic() + 60
    for proc, node in zip(procs, started["nodes"].values()):   # up once its API socket is
        while not os.path.exists(os.path.join(node["cache_dir"], "meshcached.sock")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"meshcached did not start: see {node['log']}")
            time.sleep(0.1)
    return started


def dht_args(zones: dict[str, list[Any]], zone: str, address: str) -> list[str]:
    """meshcached options of a host at `address` in `zone`: with one zone the lan preset; with
    several the wan preset (datagrams that fit the WAN path), the DHT on the host's address and,
    to join through, the first host of the next zone (each zone's bootstrap lies in another, so
    every zone joins the one DHT; nodes retry while that host is still starting)."""
    if len(zones) < 2:
        return ["--preset", "lan"]
    names = list(zones)
    other = zones[names[(names.index(zone) + 1) % len(names)]][0]
    return ["--preset", "wan", "--dht-listen", f"{address}:{DHT_PORT}",
            "--dht-bootstrap", f"{other.address}:{DHT_PORT}"]


@lab.command()
@click.argument("n", type=click.IntRange(1, 250))
@click.option("--zones", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Split the N hosts into this many zones, each its own LAN, joined by WAN "
                   "links (N must be a multiple).")
@click.option("--origin/--no-origin", default=True, show_default=True,
              help="Add a host for an origin (an HTTP server, an object store).")
@click.option("--mesh", is_flag=True,
              help="Start a meshcached on every host (the hosts of a zone are its peers; "
                   "with --zones, zones meet through the DHT).")
@click.option("--serve", type=click.Path(exists=True, file_okay=False),
              help="Serve this directory over HTTP from the origin host (port 8080).")
@click.option("--wan-delay", type=float, default=20.0, show_default=True,
              help="With --zones: one-way delay of each WAN link, ms.")
@click.option("--wan-rate", type=float, default=24.0, show_default=True,
              help="With --zones: cap of each WAN link and direction, Mbit/s (0: uncapped).")
@click.option("--json", "as_json", is_flag=True, help="Print the lab as JSON.")
def up(n: int, zones: int, origin: bool, mesh: bool, serve: str | None, wan_delay: float,
       wan_rate: float, as_json: bool) -> None:
    """Build a lab of N hosts that stays until `meshcache lab down`.

    \b
    Each host is a network namespace with its own address; run anything in one with
      ip netns exec HOST COMMAND
    With --mesh each host runs a meshcached; read through one with
      ip netns exec HOST meshcache --cache-dir CACHE_DIR get URL
    """
    _need_root()
    from meshcache.lab.netns import Lab, cleanup_stale, destroy
    from meshcache.lab.zones import ZoneLab

    if n % zones:
        raise click.UsageError(f"{n} hosts do not split into {zones} zones")
    if serve and not origin:
        raise click.UsageError("--serve needs the origin host (drop --no-origin)")
    cleanup_stale()
    if zones == 1:
        made: Any = Lab(n, origin=origin, persistent=True)
        groups = {"": made.hosts}
    else:
        made = ZoneLab(zones, n // zones, wan_delay=wan_delay / 1e3,
                       wan_rate=wan_rate * 1e6 or None, origin=origin, persistent=True)
        groups = dict(made.zones)
    try:
        started = _start_mesh(made, groups, serve) if mesh or serve else {}
    except BaseException:
        destroy(made.prefix)
        raise
    if as_json:
        click.echo(json.dumps({**made.describe(), **started}))
        return
    click.echo(f"lab {made.prefix}: {n} hosts"
               + (f" in {zones} zones ({wan_delay:g} ms one way, "
                  f"{wan_rate:g} Mbit/s and a 1500-byte MTU between zones)" if zones > 1 else ""))
    for zone, members in groups.items():
        if zone:
            click.echo(f"zone {zone}:")
        for h in members:
            click.echo(f"  {h.name:<16} {h.address}")
    if made.origin is not None:
        click.echo(f"  {made.origin.name:<16} {made.origin.address}  (origin)")
    first = next(iter(groups.values()))
    h = first[0]
    if started.get("nodes"):
        url = started.get("origin_url", "URL") + ("FILE" if "origin_url" in started else "")
        cache = started["nodes"][h.name]["cache_dir"]
        click.echo(f"\na meshcached runs on every host (files and logs in {started['data_dir']});"
                   " read through one:")
        click.echo(f"  ip netns exec {h.name} meshcache --cache-dir {cache} get {url} -o /tmp/x")
        click.echo(f"  ip netns exec {h.name} meshcache --cache-dir {cache} stats")
        if zones > 1:
            click.echo(f"the zones meet through the DHT (UDP port {DHT_PORT}); remote zones seen:")
            click.echo(f"  ip netns exec {h.name} meshcache --cache-dir {cache} peers")
    else:
        peers = " ".join(f"--peer {o.address}:{PORT}" for o in first[1:])
        click.echo("\nfor example, on each host of a zone (with the same credential everywhere):")
        click.echo("  meshcache secret -o /tmp/secret")
        click.echo(f"  ip netns exec {h.name} meshcached --credential-file /tmp/secret "
                   f"--cache-dir /tmp/{shlex.quote(h.name)} --listen {h.address}:{PORT} {peers}")
        if started.get("origin_url"):
            click.echo(f"the origin serves {serve} at {started['origin_url']}")
    click.echo("remove it with: meshcache lab down")


@lab.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """List the labs on this machine: prefix, owner, namespaces left."""
    from meshcache.lab.netns import list_labs

    labs = list_labs()
    if as_json:
        click.echo(json.dumps(labs))
        return
    for one in labs:
        kind = "persistent" if one.get("persistent") else f"pid {one.get('pid')}"
        click.echo(f"{one['prefix']:<12} {one.get('subnet', ''):<16} {kind:<14} "
                   f"{one['namespaces']} namespaces" + ("" if one["alive"] else "  (stale)"))
    if not labs:
        click.echo("(no labs)")


@lab.command()
@click.argument("prefixes", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def down(prefixes: tuple[str, ...], as_json: bool) -> None:
    """Remove labs: the given PREFIXES, else every lab `up` made; and leftovers of killed runs."""
    _need_root()
    from meshcache.lab.netns import take_down

    result = take_down(prefixes)
    if as_json:
        click.echo(json.dumps(result))
        return
    gone = result["destroyed"] + result["stale"]
    click.echo("removed " + (", ".join(gone) if gone else "nothing"))

"""`meshcache lab`: build an N-host lab (network namespaces) that stays until `lab down`, so a user
can try a mesh, or zones joined by a WAN, on one Linux machine (needs root)."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click

PORT = 7946


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


@lab.command()
@click.argument("n", type=click.IntRange(1, 250))
@click.option("--zones", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Split the N hosts into this many zones, each its own LAN, joined by WAN "
                   "links (N must be a multiple).")
@click.option("--origin/--no-origin", default=True, show_default=True,
              help="Add a host for an origin (an HTTP server, an object store).")
@click.option("--wan-delay", type=float, default=20.0, show_default=True,
              help="With --zones: one-way delay of each WAN link, ms.")
@click.option("--wan-rate", type=float, default=24.0, show_default=True,
              help="With --zones: cap of each WAN link and direction, Mbit/s (0: uncapped).")
@click.option("--json", "as_json", is_flag=True, help="Print the lab as JSON.")
def up(n: int, zones: int, origin: bool, wan_delay: float, wan_rate: float,
       as_json: bool) -> None:
    """Build a lab of N hosts that stays until `meshcache lab down`.

    \b
    Each host is a network namespace with its own address; run anything in one with
      ip netns exec HOST COMMAND
    e.g. a meshcached per host, each given the others as --peer.
    """
    _need_root()
    from meshcache.lab.netns import Lab, cleanup_stale
    from meshcache.lab.zones import ZoneLab

    if n % zones:
        raise click.UsageError(f"{n} hosts do not split into {zones} zones")
    cleanup_stale()
    if zones == 1:
        made: Any = Lab(n, origin=origin, persistent=True)
        hosts = {"": [(h.name, h.address) for h in made.hosts]}
    else:
        made = ZoneLab(zones, n // zones, wan_delay=wan_delay / 1e3,
                       wan_rate=wan_rate * 1e6 or None, origin=origin, persistent=True)
        hosts = {z: [(h.name, h.address) for h in hs] for z, hs in made.zones.items()}
    if as_json:
        click.echo(json.dumps(made.describe()))
        return
    click.echo(f"lab {made.prefix}: {n} hosts"
               + (f" in {zones} zones ({wan_delay:g} ms one way, "
                  f"{wan_rate:g} Mbit/s and a 1500-byte MTU between zones)" if zones > 1 else ""))
    for zone, members in hosts.items():
        if zone:
            click.echo(f"zone {zone}:")
        for name, address in members:
            click.echo(f"  {name:<16} {address}")
    if made.origin is not None:
        click.echo(f"  {made.origin.name:<16} {made.origin.address}  (origin)")
    name, address = next(iter(hosts.values()))[0]
    peers = " ".join(f"--peer {a}:{PORT}" for _, a in next(iter(hosts.values()))[1:])
    click.echo("\nfor example, on each host of a zone (with the same secret everywhere):")
    click.echo("  echo s3cret > /tmp/secret")
    click.echo(f"  ip netns exec {name} env MESHCACHE_CLUSTER_SECRET_FILE=/tmp/secret "
               f"MESHCACHE_CACHE_DIR=/tmp/{shlex.quote(name)} meshcached --listen "
               f"{address}:{PORT} {peers}")
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

"""Datacenters on one machine: zones of hosts (network namespaces), each zone its own LAN, joined
by WAN links that add delay, carry a 1500-byte MTU and are capped (needs root).

    with ZoneLab(zones=3, hosts_per_zone=3, wan_delay=0.020, wan_rate=40e6) as lab:
        a0, b0 = lab.zones["a"][0], lab.zones["b"][0]
        srv = lab.origin.python(["-m", "meshcache.lab.httporigin", "--port", "8080"])
        lab.wan_bytes()          # {"a>b": bytes the a-b relay carried from a to b, ...}
        lab.cut("c")             # zone c loses its links to the other zones (not to the origin)

Layout of a lab with prefix P and address block N (a /22 for up to 3 zones):

    zone a: hosts P-a0.. (.1, .2, ..) on bridge Pbra (MTU 9000), router P-ra (.254)
    zone b: the same on the next /24, ...
    origin: P-origin, its address (.253 of the last /24) on its loopback

Each zone router has one TUN device per other zone (`wan-<zone>`) and one to the origin
(`wan-origin`); the origin has one per zone (`wan-<zone>`). A link is a `tunrelay` process that
moves packets between the TUN devices at its two ends after `wan_delay` (one way); the devices
have MTU `wan_mtu` and, with `wan_rate`, a tc tbf on each (so each direction is capped: the tbf
holds what the router sends into the link). Hosts route the whole block via their router; the
routers forward. Bytes per link and direction are the TUN devices' counters: what the relay wrote
into the receiving end.

Teardown is the netns lab's: `close()` (also at exit and by the context manager) kills the relays
and every process started in a host, then deletes links and namespaces; a killed run's leftovers
go with `cleanup_stale()` or `python -m meshcache.lab.netns cleanup`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from meshcache.lab.netns import (GATEWAY_OCTET, IFNAMSIZ, ORIGIN_OCTET, Host, LabBase, LabError,
                                 _default_prefix, _ip, _netns_names, _ns_pattern, _pick_subnet,
                                 _read_states, _readline, _run, _state_lock, requires_root)

__all__ = ["ZoneLab", "ZONE_LETTERS"]

ZONE_LETTERS = "abcdefgh"
ORIGIN = "origin"


class ZoneLab(LabBase):
    """Zones of hosts joined by delaying, capped WAN links, plus an origin behind its own links."""

    def __init__(self, zones: int = 3, hosts_per_zone: int = 3, *, wan_delay: float = 0.020,
                 wan_rate: float | None = None, wan_mtu: int = 1500, origin: bool = True,
                 origin_delay: float = 0.020, origin_rate: float | None = None,
                 mtu: int = 9000, prefix: str | None = None, persistent: bool = False):
        if not 1 <= zones <= len(ZONE_LETTERS):
            raise ValueError(f"zones must be 1..{len(ZONE_LETTERS)}")
        if not 1 <= hosts_per_zone <= 99:
            raise ValueError("hosts_per_zone must be 1..99")
        reason = requires_root()
        if reason:
            raise LabError(reason)
        self.wan_delay, self.wan_rate, self.wan_mtu = wan_delay, wan_rate, wan_mtu
        self.origin_delay, self.origin_rate = origin_delay, origin_rate
        self.mtu = mtu
        self._cut: set[frozenset[str]] = set()
        self._relays: dict[str, int] = {}
        letters = ZONE_LETTERS[:zones]
        self._own(persistent)
        with _state_lock():
            states = _read_states()
            self.prefix = prefix or _default_prefix(states)
            self._check_prefix(states, hosts_per_zone)
            # One /24 per zone and one for the origin.
            self.subnet = _pick_subnet(states, 24 - math.ceil(math.log2(zones + 1)))
            nets = list(self.subnet.subnets(new_prefix=24))
            self.zone_subnets = {z: nets[k] for k, z in enumerate(letters)}
            self.origin_subnet = nets[zones]
            self.zones: dict[str, list[Host]] = {
                z: [Host(self, f"{self.prefix}-{z}{i}", str(net.network_address + 1 + i),
                         f"{self.prefix}v{z}{i}", k * hosts_per_zone + i)
                    for i in range(hosts_per_zone)]
                for k, (z, net) in enumerate(self.zone_subnets.items())}
            self.routers = {z: Host(self, f"{self.prefix}-r{z}",
                                    str(net.network_address + GATEWAY_OCTET),
                                    f"{self.prefix}vr{z}", None)
                            for z, net in self.zone_subnets.items()}
            self.origin = (Host(self, f"{self.prefix}-{ORIGIN}",
                                str(self.origin_subnet.network_address + ORIGIN_OCTET), "", None)
                           if origin else None)
            self._record()
        self._build_or_close()

    # -- naming

    def _check_prefix(self, states: dict[str, dict[str, Any]], hosts_per_zone: int) -> None:
        """Reject prefixes that make illegal interface names or belong to another lab."""
        longest = len(f"{self.prefix}va{hosts_per_zone - 1}")
        if longest > IFNAMSIZ:
            raise ValueError(f"lab prefix {self.prefix!r} is too long (interface names are at "
                             f"most {IFNAMSIZ} characters)")
        if self.prefix in states or any(_ns_pattern(self.prefix).match(n)
                                        for n in _netns_names()):
            raise LabError(f"a lab with prefix {self.prefix!r} already exists")

    # -- building

    def _build(self) -> None:
        """Bridges, hosts, routers, the origin, then one relay per link."""
        mtu = str(self.mtu)
        for z, net in self.zone_subnets.items():
            bridge = self.bridge(z)
            _ip("link", "add", bridge, "type", "bridge", "mcast_snooping", "0",
                "nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0")
            _ip("link", "set", bridge, "mtu", mtu, "up")    # no address: root does not route
            for host in [*self.zones[z], self.routers[z]]:
                _ip("netns", "add", host.name)
                _ip("link", "add", host.veth, "mtu", mtu, "type", "veth",
                    "peer", "name", host.ifname, "mtu", mtu, "netns", host.name)
                _ip("link", "set", host.veth, "master", bridge, "up")
                ns = ("-n", host.name)
                _ip(*ns, "link", "set", "lo", "up")
                _ip(*ns, "addr", "add", f"{host.address}/24", "dev", host.ifname)
                _ip(*ns, "link", "set", host.ifname, "up")
                _ip(*ns, "route", "add", "224.0.0.0/4", "dev", host.ifname)
            for host in self.zones[z]:
                _ip("-n", host.name, "route", "add", str(self.subnet), "via",
                    self.routers[z].address)
            _run(["ip", "netns", "exec", self.routers[z].name, "sh", "-c",   # no procps needed
                  "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        if self.origin:
            _ip("netns", "add", self.origin.name)
            _ip("-n", self.origin.name, "link", "set", "lo", "up")
            _ip("-n", self.origin.name, "addr", "add", f"{self.origin.address}/32", "dev", "lo")
        letters = list(self.zones)
        links = []
        for i, z in enumerate(letters):
            for y in letters[i + 1:]:
                links.append((self.routers[z], f"wan-{y}", self.zone_subnets[y],
                              self.routers[y], f"wan-{z}", self.zone_subnets[z],
                              self.wan_delay, self.wan_rate))
            if self.origin:
                links.append((self.origin, f"wan-{z}", self.zone_subnets[z],
                               self.routers[z], "wan-origin", self.origin_subnet,
                               self.origin_delay, self.origin_rate))
        # The relays start side by side (each is an interpreter starting up), then each link is
        # configured once its relay is ready.
        started = [(link, self._start_relay(*link[:2], *link[3:5], link[6])) for link in links]
        for link, proc in started:
            self._link(*link, proc)

    def _start_relay(self, a: Host, dev_a: str, b: Host, dev_b: str,
                     delay: float) -> subprocess.Popen:
        """Start the relay process between a's dev_a and b's dev_b."""
        proc = subprocess.Popen(   # `ip netns exec` execs the interpreter: the pid is the relay's
            ["ip", "netns", "exec", a.name, sys.executable, "-m", "meshcache.lab.tunrelay",
             a.name, dev_a, b.name, dev_b, "--delay", repr(delay)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if self.persistent else None,
            text=True, env=Host.python_env(), start_new_session=True)
        self._track(proc)
        self._relays[f"{self._end(a)}-{self._end(b)}"] = proc.pid
        return proc

    def _link(self, a: Host, dev_a: str, net_b: ipaddress.IPv4Network, b: Host, dev_b: str,
              net_a: ipaddress.IPv4Network, delay: float, rate: float | None,
              proc: subprocess.Popen) -> None:
        """Once the relay between a's dev_a and b's dev_b is ready: route each side's far net
        into it and cap it."""
        line = _readline(proc, 30)
        if line != "ready":
            raise LabError(f"relay {a.name}/{dev_a} <-> {b.name}/{dev_b} did not start: {line!r}")
        for host, dev, far in ((a, dev_a, net_b), (b, dev_b, net_a)):
            ns = ("-n", host.name)
            # No IPv6 link-local address: no router solicitations or MLD reports in the counts.
            _ip(*ns, "link", "set", dev, "addrgenmode", "none")
            # A long ring: a relay descheduled for a while on a busy machine must not drop.
            _ip(*ns, "link", "set", dev, "mtu", str(self.wan_mtu), "txqueuelen", "10000", "up")
            _ip(*ns, "route", "add", str(far), "dev", dev)
            if rate:
                burst = max(int(rate / 8 * 0.005), 4 * (self.wan_mtu + 100))
                _run(["tc", *ns, "qdisc", "replace", "dev", dev, "root", "tbf",
                      "rate", f"{int(rate)}bit", "burst", str(burst), "latency", "50ms"])

    # -- access

    def bridge(self, zone: str) -> str:
        """The root-namespace bridge of a zone."""
        return f"{self.prefix}br{zone}"

    @property
    def hosts(self) -> list[Host]:
        """Every zone's hosts, zone by zone."""
        return [h for hs in self.zones.values() for h in hs]

    @property
    def all_hosts(self) -> list[Host]:
        """The hosts, the routers and the origin (every namespace of the lab)."""
        return self.hosts + list(self.routers.values()) + ([self.origin] if self.origin else [])

    def zone_of(self, host: Host) -> str:
        """The zone letter of one of the lab's hosts."""
        for z, hosts in self.zones.items():
            if host in hosts:
                return z
        raise KeyError(host)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __repr__(self) -> str:
        return f"ZoneLab({self.prefix!r}, zones {','.join(self.zones)}, {self.subnet})"

    def describe(self) -> dict[str, Any]:
        """Names and addresses, as JSON-ready data (what `lab up --zones` prints)."""
        def one(h: Host) -> dict[str, str]:
            return {"name": h.name, "address": h.address}
        return {"prefix": self.prefix, "subnet": str(self.subnet), "mtu": self.mtu,
                "wan": {"delay_s": self.wan_delay, "rate_bits": self.wan_rate,
                        "mtu": self.wan_mtu},
                "zones": {z: {"subnet": str(self.zone_subnets[z]), "bridge": self.bridge(z),
                              "router": one(self.routers[z]),
                              "hosts": [one(h) for h in hs]} for z, hs in self.zones.items()},
                "origin": ({**one(self.origin), "delay_s": self.origin_delay,
                            "rate_bits": self.origin_rate} if self.origin else None)}

    def _end(self, host: Host) -> str:
        """A link end's name: its zone letter, or "origin"."""
        return ORIGIN if host is self.origin else next(
            z for z, r in self.routers.items() if r is host)

    def relay_pids(self) -> dict[str, int]:
        """The process id of each link's relay, keyed "a-b" (for CPU accounting)."""
        return dict(self._relays)

    # -- counters

    @staticmethod
    def _rx_bytes(host: Host, dev: str) -> int:
        """Bytes a TUN device has received (what its relay wrote into this side)."""
        out = _ip("-n", host.name, "-j", "-s", "link", "show", dev)
        return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])

    def link_bytes(self, src: str, dst: str) -> int:
        """IP bytes the relay of link src-dst has carried from src to dst (zone letters or
        "origin"); headers included, so a payload of n bytes counts slightly more than n."""
        if dst == ORIGIN:
            return self._rx_bytes(self.origin, f"wan-{src}")
        return self._rx_bytes(self.routers[dst], "wan-origin" if src == ORIGIN else f"wan-{src}")

    def wan_bytes(self) -> dict[str, int]:
        """Bytes carried by every link in each direction, keyed "a>b" (zones and "origin")."""
        pairs = [(s, d) for s in self.zones for d in self.zones if s != d]
        if self.origin:
            pairs += [p for z in self.zones for p in ((ORIGIN, z), (z, ORIGIN))]
        return {f"{s}>{d}": self.link_bytes(s, d) for s, d in pairs}

    # -- partitions

    def _route(self, zone: str, other: str, blackhole: bool) -> None:
        """Route zone's router's traffic for other's subnet into the link, or into a blackhole."""
        net = str(self.zone_subnets[other])
        route = ["blackhole", net] if blackhole else [net, "dev", f"wan-{other}"]
        _ip("-n", self.routers[zone].name, "route", "replace", *route)

    def cut(self, zone: str) -> None:
        """Cut zone off from every other zone (both directions drop silently, as a dead WAN
        line does); its link to the origin stays."""
        for other in self.zones:
            if other != zone:
                self._route(zone, other, True)
                self._route(other, zone, True)
                self._cut.add(frozenset((zone, other)))

    def mend(self) -> None:
        """Undo every cut."""
        for pair in self._cut:
            z, y = sorted(pair)
            self._route(z, y, False)
            self._route(y, z, False)
        self._cut.clear()

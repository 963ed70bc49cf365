"""The QUIC datagram size from the network: aioquic has no path-MTU discovery, so both ends of
a link must agree on `max_datagram_size`. `max_datagram_size = 0` in the config means: the MTU
of the interface that carries the listen address, less the IP and UDP headers."""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess

log = logging.getLogger("meshcache.transport.mtu")

DEFAULT = 1452  # fits a 1500-byte Ethernet MTU through most tunnels
LARGEST = 65000  # loopback: aioquic frames beyond this gain nothing


def datagram_size_for_mtu(mtu: int, ipv6: bool = False) -> int:
    """Largest UDP payload that fits one packet of `mtu` bytes."""
    return max(1200, min(LARGEST, mtu - (48 if ipv6 else 28)))


def interface_mtus() -> dict[str, tuple[int, list[str]]]:
    """{interface: (mtu, [addresses])} from `ip -j addr` (empty when iproute2 is missing)."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=5, check=True).stdout
        data = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    result = {}
    for link in data:
        if "UP" not in link.get("flags", []):
            continue
        addrs = [a.get("local", "") for a in link.get("addr_info", [])]
        result[link.get("ifname", "?")] = (int(link.get("mtu", 1500)), addrs)
    return result


def auto_datagram_size(listen_host: str) -> int:
    """The datagram size for peers reached through the interface of `listen_host` (for a
    wildcard address: the smallest MTU among the non-loopback interfaces that are up)."""
    try:
        ip = ipaddress.ip_address(listen_host)
    except ValueError:
        return DEFAULT
    mtus = interface_mtus()
    if not mtus:
        return DEFAULT
    if ip.is_loopback:
        return datagram_size_for_mtu(mtus.get("lo", (65536, []))[0], ip.version == 6)
    if ip.is_unspecified:
        sizes = [m for name, (m, _) in mtus.items() if name != "lo"]
        return datagram_size_for_mtu(min(sizes), ip.version == 6) if sizes else DEFAULT
    for mtu, addrs in mtus.values():
        if str(ip) in addrs:
            return datagram_size_for_mtu(mtu, ip.version == 6)
    return DEFAULT

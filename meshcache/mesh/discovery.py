"""LAN discovery with mDNS (zeroconf): announce this node, find the others.

Each node registers `<node id>._meshcache._udp.local.` with TXT properties: node id, QUIC port,
zone, block size, protocol version and a cluster tag derived from the credential (never the
credential). Ads are parsed with bounds (`parse_ad`); an ad with another block size or cluster
tag is ignored with one log line per node. What is found goes to the mesh, which greets it with
HELLO over an authenticated connection: mDNS only says where to knock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from meshcache.transport.mtu import interface_mtus

log = logging.getLogger("meshcache.mesh.discovery")

SERVICE = "_meshcache._udp.local."
PROTOCOL = 1
MAX_PROP = 128  # bytes of one TXT value we accept


@dataclass(frozen=True)
class PeerAd:
    """What one mDNS ad says about a node."""

    node_id: bytes
    addresses: tuple[str, ...]
    port: int
    zone: str
    block_size: int
    cluster_tag: bytes
    protocol: int


class AdError(ValueError):
    """An mDNS ad is malformed or oversized."""


def _prop(props: Mapping[Any, Any], key: str) -> str:
    raw = props.get(key.encode(), props.get(key))
    if raw is None:
        raise AdError(f"missing {key}")
    if isinstance(raw, str):
        raw = raw.encode()
    if not isinstance(raw, bytes) or len(raw) > MAX_PROP:
        raise AdError(f"{key}: not a short value")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise AdError(f"{key}: not ASCII") from None


def parse_ad(props: Mapping[Any, Any], addresses: list[str], port: int) -> PeerAd:
    """Validate an ad's TXT properties; AdError on anything malformed."""
    try:
        node_id = bytes.fromhex(_prop(props, "id"))
        tag = bytes.fromhex(_prop(props, "tag"))
        block_size = int(_prop(props, "bs"))
        protocol = int(_prop(props, "v"))
        quic_port = int(_prop(props, "port"))
    except ValueError as e:
        raise AdError(str(e)) from None
    zone = _prop(props, "zone")
    if not (1 <= len(node_id) <= 64 and len(tag) == 8 and block_size > 0
            and 0 < quic_port < 65536):
        raise AdError("field out of range")
    addrs = []
    for a in addresses[:8]:
        try:
            addrs.append(str(ipaddress.ip_address(a)))
        except ValueError:
            continue
    if not addrs:
        raise AdError("no address")
    return PeerAd(node_id, tuple(addrs), quic_port or port, zone, block_size, tag, protocol)


def local_addresses(interfaces: list[str]) -> list[str]:
    """Addresses to announce: the configured interface addresses, else every up IPv4 address
    that is not loopback."""
    if interfaces:
        return list(interfaces)
    out = []
    for name, (_, addrs) in interface_mtus().items():
        for a in addrs:
            try:
                ip = ipaddress.ip_address(a)
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_loopback:
                out.append(a)
    return out


class Discovery:
    """Announces this node and reports every acceptable peer ad to `on_found(ad)`."""

    def __init__(self, node_id: bytes, port: int, zone: str, block_size: int, tag: bytes,
                 interfaces: list[str], on_found: Callable[[PeerAd], None],
                 advertise: list[str] | None = None) -> None:
        self.node_id, self.port, self.zone = node_id, port, zone
        self.block_size, self.tag = block_size, tag
        self.interfaces = interfaces
        self.advertise = advertise or local_addresses(interfaces)
        self.on_found = on_found
        self.found: dict[bytes, PeerAd] = {}
        self._ignored: set[bytes] = set()
        self._azc: Any = None
        self._browser: Any = None
        self._info: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        from zeroconf import IPVersion, InterfaceChoice
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        ifaces: Any = self.interfaces or InterfaceChoice.All
        self._azc = AsyncZeroconf(interfaces=ifaces, ip_version=IPVersion.V4Only)
        props = {"id": self.node_id.hex(), "tag": self.tag.hex(), "bs": str(self.block_size),
                 "v": str(PROTOCOL), "port": str(self.port), "zone": self.zone[:MAX_PROP]}
        self._info = AsyncServiceInfo(
            SERVICE, f"{self.node_id.hex()[:32]}.{SERVICE}", port=self.port, properties=props,
            addresses=[socket.inet_aton(a) for a in self.advertise if _is_v4(a)])
        await self._azc.async_register_service(self._info)
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, SERVICE,
                                            handlers=[self._on_change])

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            task = asyncio.ensure_future(self._resolve(service_type, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._azc.zeroconf, 3000):
            return
        try:
            ad = parse_ad(info.properties or {}, info.parsed_addresses(), info.port or 0)
        except AdError as e:
            log.info("ignoring mDNS ad %s: %s", name, e)
            return
        if ad.node_id == self.node_id:
            return
        if ad.block_size != self.block_size or ad.cluster_tag != self.tag:
            if ad.node_id not in self._ignored:
                self._ignored.add(ad.node_id)
                log.warning("ignoring node %s at %s: block size %d / cluster tag %s differ from "
                            "ours (%d / %s)", ad.node_id.hex()[:12], ad.addresses[0],
                            ad.block_size, ad.cluster_tag.hex(), self.block_size, self.tag.hex())
            return
        self.found[ad.node_id] = ad
        self.on_found(ad)

    async def stop(self) -> None:
        """Unregister (a goodbye packet tells the LAN at once) and close."""
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._azc is not None:
            if self._info is not None:
                await self._azc.async_unregister_service(self._info)
            await self._azc.async_close()


def _is_v4(a: str) -> bool:
    try:
        return ipaddress.ip_address(a).version == 4
    except ValueError:
        return False

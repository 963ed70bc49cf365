"""The WAN side of one node, started with its peers: the DHT, the announcer, the per-zone caps
and the remote-zone rung, built from the Config and handed to the node as one object."""

from __future__ import annotations

import asyncio
import logging

from typing import Callable

from meshcache.config import Config
from meshcache.transport.base import parse_address
from meshcache.wan.announcer import Announcer
from meshcache.wan.caps import ZoneCaps
from meshcache.wan.dht import Dht
from meshcache.wan.rung import PeerClient, RemoteZoneSource

log = logging.getLogger("meshcache.wan.zone")

MAINTAIN_EVERY = 30.0  # seconds between bucket refreshes; the cap of join retries while alone


class WanSide:
    """The DHT (listening on `dht_listen`, joined through `dht_bootstrap`), the announcer of
    the blocks this node brings into its zone, and the remote-zone rung."""

    def __init__(self, config: Config, node_id: bytes, peer_address: tuple[str, int],
                 peers: PeerClient, held: Callable[[bytes], bool]) -> None:
        self.config = config
        self.dht = Dht.from_config(config, node_id, peer_address)
        self.caps = ZoneCaps(config.zone_egress_rate, config.zone_ingress_rate)
        self.announcer = Announcer(self.dht, held, republish=config.dht_republish)
        self.rung = RemoteZoneSource(self.dht, peers, config, self.caps)
        self._maintain: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        host, port = parse_address(self.config.dht_listen)
        address = await self.dht.listen(host, port)
        bootstrap = [parse_address(a) for a in self.config.dht_bootstrap]
        if bootstrap:
            try:
                await self.dht.bootstrap(bootstrap)
            except Exception as e:  # the maintenance loop tries again
                log.warning("DHT bootstrap through %s: %s", self.config.dht_bootstrap, e)
        self._maintain = asyncio.get_running_loop().create_task(
            self.dht.maintain(bootstrap, MAINTAIN_EVERY))
        self.announcer.start()
        log.info("DHT on %s:%d, zone %s, %d contact(s)", address[0], address[1],
                 self.config.zone, self.dht.contacts())
        return address

    def brought_in(self, digest: bytes, version_key: bytes) -> None:
        """This node read a block into its zone (origin or another zone): announce it, and the
        version whose manifest it now holds digests of."""
        self.announcer.note_block(digest)
        self.announcer.note_manifest(version_key)

    def stats(self) -> dict[str, int]:
        out = dict(self.caps.stats())
        out.update({f"dht_{k}": v for k, v in self.dht.stats.items()})
        return out

    async def close(self) -> None:
        await self.announcer.close()
        if self._maintain is not None:
            self._maintain.cancel()
            await asyncio.gather(self._maintain, return_exceptions=True)
        self.dht.close()


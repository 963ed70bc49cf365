"""Rung 1: this node's store (and what another process sharing the cache directory stored)."""

from __future__ import annotations

import asyncio

from meshcache.core.rungs import Rank
from meshcache.read.catalog import Catalog
from meshcache.read.ladder import BlockRequest, Stored
from meshcache.read.store import BlockStore


class LocalSource:
    name = counter = "local"
    rank = Rank.LOCAL
    authoritative = False

    def __init__(self, store: BlockStore, catalog: Catalog) -> None:
        self.store = store
        self.catalog = catalog

    async def fetch(self, request: BlockRequest) -> Stored | None:
        d = request.digest
        if d is None:
            # Another process sharing the cache directory may have fetched it already.
            await asyncio.to_thread(self.catalog.reload, request.version)
            d = self.catalog.digest(request.version, request.index)
        if d is not None and d in self.store:
            return Stored(d)
        return None

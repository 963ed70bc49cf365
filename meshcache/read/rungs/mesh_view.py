"""What the zone rungs need of the mesh and the peer service (narrow, so tests can stand in)."""

from __future__ import annotations

from typing import Container, Protocol

from meshcache.core.manifest import Manifest
from meshcache.core.rungs import BlockRequest
from meshcache.core.version import ObjectVersion

Address = tuple[str, int]


class Member(Protocol):
    node_id: bytes
    address: Address


class ZoneView(Protocol):
    """The live members of this node's zone (mesh/mesh.py's Mesh)."""

    members: Container[bytes]

    def holders(self, digest: bytes) -> list[Member]: ...

    def owner(self, key: bytes) -> Member | None: ...

    def live(self) -> list[Member]: ...


class PeerClient(Protocol):
    """Requests to peers (mesh/peers.py's PeerService), with its memory of who failed."""

    def penalized(self, peer: Address) -> bool: ...

    def failed(self, peer: Address, exc: BaseException) -> None: ...

    def reachable(self, peer: Address) -> bool: ...

    async def get_block(self, peer: Address, request: BlockRequest,
                        max_rank: int) -> tuple[bytes, bytes] | None: ...

    async def get_manifest(self, peer: Address, version: ObjectVersion,
                           block_size: int) -> Manifest | None: ...

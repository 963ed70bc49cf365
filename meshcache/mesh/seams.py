"""The typed seams of the mesh: what the peer service and the membership shell need from the
node and from each other, as narrow Protocols (the node, the store and tests implement them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Protocol

from meshcache.core.manifest import Manifest
from meshcache.core.rungs import BlockRequest
from meshcache.core.version import ObjectVersion

if TYPE_CHECKING:
    from meshcache.core import wire

Address = Hashable  # ("host", port) over QUIC; any hashable name on the in-memory transport


class StoreView(Protocol):
    """The part of the block store the mesh reads: membership, bytes, and counts of blocks
    that left it (the summary must forget them)."""

    evicted_blocks: int
    corrupt_blocks: int

    def __contains__(self, d: bytes) -> bool: ...

    def read_block(self, d: bytes) -> bytes: ...

    def digests(self) -> list[bytes]: ...


class Fetched(Protocol):
    """Where a fetched block is: its digest, and its bytes when the store could not keep it."""

    digest: bytes
    data: bytes | None


class BlockServer(Protocol):
    """What the peer service serves from: the node's store, its manifests, and its read path
    (used for a request that may climb rungs above the store, e.g. one to the block's owner)."""

    @property
    def store(self) -> StoreView: ...

    def known_manifest(self, version: ObjectVersion) -> Manifest | None: ...

    def confirmed_version(self, url: str) -> tuple[ObjectVersion, float] | None:
        """(version, seconds since the origin confirmed it) while it may be served stale."""
        ...

    async def fetch_request(self, request: BlockRequest) -> Fetched | None: ...


class MeshHandler(Protocol):
    """What the peer service hands to the membership shell: messages and signs of life."""

    def touch(self, node_id: bytes | None = None, address: Address = None) -> None: ...

    def on_membership(self, msg: "wire.Message", peer_id: bytes | None) -> "wire.Message": ...

    def accept_hello(self, msg: "wire.Hello", host: str) -> bool: ...

    def hello_message(self) -> "wire.Hello": ...

    def accept_summary(self, msg: "wire.Summary | wire.SummaryDelta") -> "wire.Message": ...

    def expel(self, node_id: bytes) -> None: ...


class PeerLink(Protocol):
    """What the membership shell needs from the peer service: who we are, where we listen, and
    one request/answer exchange with a peer."""

    node_id: bytes
    datagram_size: int

    @property
    def address(self) -> Address: ...

    async def request(self, peer: Address, msg: "wire.Message", max_reply: int = ...,
                      timeout: float | None = None) -> "wire.Message": ...

    async def exchange(self, peer: Address, msg: "wire.Message", max_reply: int = ...,
                       timeout: float | None = None) -> "tuple[wire.Message, bytes | None]": ...

    def attach(self, mesh: MeshHandler) -> None: ...

    def inflight(self, peer: Address) -> int: ...

    def count_error(self) -> None: ...

    def disconnect(self, peer: Address, why: str) -> None: ...

    def failed(self, peer: Address, exc: BaseException) -> None: ...

    def expelled(self, node_id: bytes) -> bool: ...

    def prune(self) -> None: ...

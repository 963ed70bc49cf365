"""Peers: serve blocks and manifests to authenticated peers, and fetch them from peers.

One request per stream: the asker sends a GET_BLOCK or GET_MANIFEST frame; the server answers
with BLOCK (a header frame, then the payload bytes streamed in chunks, rate-limited), MANIFEST,
MISS or ERROR. Everything received is bounded before it is buffered and every block is hashed
before it is handed to the store: a peer whose bytes do not match is disconnected, counted and
avoided for a while, and the caller goes on with another source.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any, Iterable

from . import wire
from .auth import make_authenticator
from .digest import digest as compute_digest
from .digest import to_hex
from .manifest import Manifest, ManifestError
from .ratelimit import CHUNK, RateLimiter
from .transport import Stream, TransportConfig, TransportError
from .transport.base import parse_address
from .version import ObjectVersion

log = logging.getLogger("meshcache.peers")

MAX_REQUEST_FRAME = 16 * 1024
PENALTY_SECONDS = 30.0


class PeerMisbehaved(Exception):
    """A peer sent bytes that do not match what it announced."""


class PeerService:
    """This node's side of the mesh: a QUIC endpoint that serves the store and asks peers."""

    def __init__(self, node: Any) -> None:
        from .transport.identity import load_or_create_identity
        from .transport.quic import QuicTransport

        cfg = node.config
        credential = cfg.credential()
        if not credential:
            raise ValueError("peers need the cluster credential (cluster_secret or "
                             "cluster_secret_file): only nodes that hold it may connect")
        self.node = node
        self.identity = load_or_create_identity(os.path.join(cfg.cache_dir, "identity"))
        self.node_id = bytes.fromhex(self.identity[2])
        self.transport = QuicTransport(
            TransportConfig.from_config(cfg), identity=self.identity,
            authenticate=make_authenticator(credential, self.node_id))
        self.egress = RateLimiter(cfg.egress_rate, cfg.peer_egress_rate)
        self.ingress = RateLimiter(cfg.ingress_rate, cfg.peer_ingress_rate)
        self.static_peers = [parse_address(p) for p in cfg.peers]
        self.address: tuple[str, int] | None = None
        self._penalty: dict[Any, float] = {}
        self._inflight: dict[Any, int] = {}
        self._ids = itertools.count(1)
        self.stats = {"peer_errors": 0, "peer_misses": 0, "bytes_to_peers": 0,
                      "blocks_to_peers": 0, "bad_peers": 0}

    # ---- serving -------------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Listen on `config.listen`; returns the bound address."""
        self.address = await self.transport.listen(parse_address(self.node.config.listen),
                                                   self._serve)
        return self.address

    async def close(self) -> None:
        await self.transport.close()

    async def _serve(self, stream: Stream) -> None:
        conn = stream.connection
        try:
            frame = await stream.recv_frame(MAX_REQUEST_FRAME)
            try:
                msg = wire.decode(frame)
            except wire.WireError as e:
                await stream.send_frame(wire.encode(wire.Error(wire.ERR_BAD_REQUEST, str(e))))
                return
            if isinstance(msg, wire.GetBlock):
                await self._serve_block(stream, conn, msg)
            elif isinstance(msg, wire.GetManifest):
                await self._serve_manifest(stream, msg)
            elif isinstance(msg, wire.Ping):
                await stream.send_frame(wire.encode(wire.Ack(msg.seq)))
            else:
                await stream.send_frame(wire.encode(wire.Error(
                    wire.ERR_BAD_REQUEST, f"unexpected {type(msg).__name__}")))
        finally:
            await stream.finish()

    async def _serve_block(self, stream: Stream, conn: Any, msg: Any) -> None:
        store = self.node.store
        data = None
        if msg.digest in store:
            try:
                data = await asyncio.to_thread(store.read_block, msg.digest)
            except Exception:  # gone or damaged since: the store has dealt with it
                data = None
        if data is None:
            await stream.send_frame(wire.encode(wire.Miss(msg.request_id, msg.digest)))
            return
        await stream.send_frame(wire.encode(wire.Block(msg.request_id, msg.digest, len(data))))
        view = memoryview(data)
        for off in range(0, len(data), CHUNK):
            piece = view[off:off + CHUNK]
            await self.egress.take(conn, len(piece))
            await stream.send_payload(piece)
        self.stats["bytes_to_peers"] += len(data)
        self.stats["blocks_to_peers"] += 1

    async def _serve_manifest(self, stream: Stream, msg: Any) -> None:
        version = ObjectVersion(msg.url, msg.token, msg.size)
        m = self.node.known_manifest(version)
        if m is None or not any(d is not None for d in m.digests):
            await stream.send_frame(wire.encode(wire.Miss(msg.request_id, b"")))
            return
        await stream.send_frame(wire.encode(wire.ManifestMsg(
            msg.request_id, m.block_size, list(m.digests))))

    # ---- asking --------------------------------------------------------------------------------

    def candidates(self, exclude: Iterable[Any] = ()) -> list[Any]:
        """Peers to ask, least busy first, without those in the penalty box."""
        now = time.monotonic()
        skip = set(exclude)
        live = [p for p in self.static_peers
                if p not in skip and self._penalty.get(p, 0) <= now and p != self.address]
        return sorted(live, key=lambda p: self._inflight.get(p, 0))

    def _punish(self, peer: Any, why: str) -> None:
        log.warning("peer %s misbehaved (%s); avoiding it for %.0f s", peer, why, PENALTY_SECONDS)
        self.stats["bad_peers"] += 1
        self._penalty[peer] = time.monotonic() + PENALTY_SECONDS

    async def get_block(self, peer: Any, d: bytes, max_size: int) -> bytes | None:
        """The verified block from `peer`, or None when it has not got it. Raises
        TransportError (unreachable, stalled) or PeerMisbehaved (bytes do not match)."""
        self._inflight[peer] = self._inflight.get(peer, 0) + 1
        try:
            stream = await self.transport.open_stream(peer)
            conn = stream.connection
            async with stream:
                await stream.send_frame(wire.encode(wire.GetBlock(next(self._ids), d)))
                reply = self._decode(await stream.recv_frame(MAX_REQUEST_FRAME), peer)
                if isinstance(reply, wire.Miss):
                    self.stats["peer_misses"] += 1
                    return None
                if not isinstance(reply, wire.Block) or reply.digest != d:
                    raise self._misbehaved(peer, conn, "answered GET_BLOCK with something else")
                if reply.size > max_size:
                    raise self._misbehaved(peer, conn, f"announced a {reply.size}-byte block")
                buf = bytearray(reply.size)
                got = 0
                async for chunk in stream.recv_payload(reply.size):
                    await self.ingress.take(conn, len(chunk))
                    buf[got:got + len(chunk)] = chunk
                    got += len(chunk)
            data = bytes(buf)
            if compute_digest(data) != d:
                raise self._misbehaved(peer, conn, f"sent bytes that do not hash to {to_hex(d)}")
            return data
        finally:
            self._inflight[peer] -= 1

    async def get_manifest(self, peer: Any, version: ObjectVersion,
                           block_size: int) -> Manifest | None:
        """What `peer` knows of a version's digests (a hint: blocks are verified anyway)."""
        stream = await self.transport.open_stream(peer)
        async with stream:
            await stream.send_frame(wire.encode(wire.GetManifest(
                next(self._ids), version.url, version.token, version.size)))
            reply = self._decode(await stream.recv_frame(wire.MAX_FRAME), peer)
        if isinstance(reply, wire.Miss):
            return None
        if not isinstance(reply, wire.ManifestMsg) or reply.block_size != block_size:
            return None
        try:
            return Manifest(version, block_size, list(reply.digests))
        except ManifestError:
            self._punish(peer, "sent a manifest that does not fit the version")
            return None

    def _decode(self, frame: bytes, peer: Any) -> Any:
        try:
            return wire.decode(frame)
        except wire.WireError as e:
            self._punish(peer, f"sent a malformed message: {e}")
            raise PeerMisbehaved(f"peer {peer}: {e}") from None

    def _misbehaved(self, peer: Any, conn: Any, why: str) -> PeerMisbehaved:
        self._punish(peer, why)
        self.stats["peer_errors"] += 1
        asyncio.ensure_future(conn.close())
        return PeerMisbehaved(f"peer {peer} {why}")

    async def fetch(self, d: bytes, max_size: int) -> tuple[bytes, Any] | None:
        """The block from the first peer that has it and sends the right bytes, or None."""
        for peer in self.candidates():
            try:
                data = await self.get_block(peer, d, max_size)
            except (TransportError, PeerMisbehaved, OSError) as e:
                self.stats["peer_errors"] += 1
                log.info("block %s from %s failed: %s", to_hex(d)[:12], peer, e)
                if isinstance(e, TransportError):
                    self._penalty[peer] = time.monotonic() + 2.0
                continue
            if data is not None:
                return data, peer
        return None

    async def find_manifest(self, version: ObjectVersion, block_size: int) -> Manifest | None:
        """A manifest for `version` from the first peer that knows some of its digests."""
        for peer in self.candidates():
            try:
                m = await self.get_manifest(peer, version, block_size)
            except (TransportError, PeerMisbehaved, OSError) as e:
                self.stats["peer_errors"] += 1
                log.info("manifest of %s from %s failed: %s", version.url, peer, e)
                if isinstance(e, TransportError):
                    self._penalty[peer] = time.monotonic() + 2.0
                continue
            if m is not None:
                return m
        return None

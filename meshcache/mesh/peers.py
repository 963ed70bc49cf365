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
from typing import Any

from meshcache.core import wire
from meshcache.mesh.auth import make_authenticator
from meshcache.core.digest import digest as compute_digest
from meshcache.core.digest import to_hex
from meshcache.core.manifest import Manifest, ManifestError
from meshcache.core.rungs import Rank
from meshcache.transport.mtu import auto_datagram_size
from meshcache.mesh.ratelimit import CHUNK, RateLimiter
from meshcache.transport import Stream, TransportConfig, TransportError
from meshcache.transport.base import parse_address
from meshcache.core.version import ObjectVersion

log = logging.getLogger("meshcache.mesh.peers")

MAX_REQUEST_FRAME = 16 * 1024
MAX_SUMMARY_FRAME = 8 << 20  # a summary of ~7M blocks; everything else is far smaller
PENALTY_SECONDS = 30.0


class PeerMisbehaved(Exception):
    """A peer sent bytes that do not match what it announced."""


class PeerService:
    """This node's side of the mesh: a QUIC endpoint that serves the store and asks peers."""

    def __init__(self, node: Any) -> None:
        from meshcache.transport.identity import load_or_create_identity
        from meshcache.transport.quic import QuicTransport

        cfg = node.config
        credential = cfg.credential()
        if not credential:
            raise ValueError("peers need the cluster credential (cluster_secret or "
                             "cluster_secret_file): only nodes that hold it may connect")
        self.node = node
        self.identity = load_or_create_identity(os.path.join(cfg.cache_dir, "identity"))
        self.node_id = bytes.fromhex(self.identity[2])
        self.datagram_size = cfg.max_datagram_size or auto_datagram_size(
            parse_address(cfg.listen)[0])
        self.transport = QuicTransport(
            TransportConfig.from_config(cfg, max_datagram_size=self.datagram_size),
            identity=self.identity,
            authenticate=self._authenticator(make_authenticator(credential, self.node_id)))
        self.egress = RateLimiter(cfg.egress_rate, cfg.peer_egress_rate)
        self.ingress = RateLimiter(cfg.ingress_rate, cfg.peer_ingress_rate)
        self.address: tuple[str, int] | None = None
        self._penalty: dict[Any, float] = {}
        self._inflight: dict[Any, int] = {}
        self._ids = itertools.count(1)
        self.stats = {"peer_errors": 0, "peer_misses": 0, "bytes_to_peers": 0,
                      "blocks_to_peers": 0, "bad_peers": 0}

    def _authenticator(self, authenticate: Any) -> Any:
        """`authenticate`, then count any packet of the now trusted peer as a sign of life (a
        member busy streaming blocks may answer a PING late: its ACK waits behind the data)."""

        async def hook(conn: Any) -> None:
            await authenticate(conn)
            conn.on_heard = self._heard

        return hook

    def _heard(self, conn: Any) -> None:
        if self.node.mesh is not None and conn.peer_node_id is not None:
            self.node.mesh.touch(conn.peer_node_id)

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
        if self.node.mesh is not None:
            self.node.mesh.touch(conn.peer_node_id)
        try:
            frame = await stream.recv_frame(MAX_SUMMARY_FRAME)
            try:
                msg = wire.decode(frame, max_size=MAX_SUMMARY_FRAME)
            except wire.WireError as e:
                await stream.send_frame(wire.encode(wire.Error(wire.ERR_BAD_REQUEST, str(e))))
                return
            if isinstance(msg, wire.GetBlock):
                await self._serve_block(stream, conn, msg)
            elif isinstance(msg, wire.GetManifest):
                await self._serve_manifest(stream, msg)
            elif isinstance(msg, (wire.Ping, wire.Ack, wire.PingReq, wire.Sync, wire.Gossip,
                                  wire.Leave)) and self.node.mesh is not None:
                # SWIM membership (mesh.py drives membership.py); the reply is an ACK (with
                # gossip for a PING), a SYNC answer, or ERROR.
                reply = self.node.mesh.on_membership(msg, conn.peer_node_id)
                max_reply = wire.MAX_FRAME if isinstance(reply, wire.Sync) else None
                body = wire.encode(reply)
                if max_reply is None and len(body) > MAX_REQUEST_FRAME:
                    body = wire.encode(wire.Error(wire.ERR_TOO_LARGE, "reply too large"))
                await stream.send_frame(body)
            elif isinstance(msg, wire.Ping):  # no mesh (yet): a bare liveness answer
                await stream.send_frame(wire.encode(wire.Ack(msg.seq)))
            elif isinstance(msg, wire.Hello) and self.node.mesh is not None:
                mesh = self.node.mesh
                if msg.node_id != conn.peer_node_id:
                    reply: Any = wire.Error(wire.ERR_AUTH, "HELLO names another node than "
                                            "the one that authenticated")
                elif mesh.accept_hello(msg, stream.peer.address[0]):
                    reply = mesh.hello_message()
                else:
                    reply = wire.Error(wire.ERR_BLOCK_SIZE, "block size or cluster tag differ")
                await stream.send_frame(wire.encode(reply))
            elif isinstance(msg, (wire.Summary, wire.SummaryDelta)) and self.node.mesh is not None:
                if msg.node_id != conn.peer_node_id:
                    reply = wire.Error(wire.ERR_AUTH, "summary of another node")
                else:
                    reply = self.node.mesh.accept_summary(msg)
                await stream.send_frame(wire.encode(reply))
            else:
                await stream.send_frame(wire.encode(wire.Error(
                    wire.ERR_BAD_REQUEST, f"unexpected {type(msg).__name__}")))
        finally:
            await stream.finish()

    async def _serve_block(self, stream: Stream, conn: Any, msg: Any) -> None:
        store = self.node.store
        data = None
        d = msg.digest
        if msg.token is not None and (d == wire.NO_DIGEST or d not in store):
            # Asked as the block's owner: fetch it once for the zone (never forwarded further).
            version = ObjectVersion(msg.url, msg.token, msg.size)
            try:
                res = await self.node.fetch_request(
                    self.node.request(version, msg.index, max_rank=Rank.OWNER))
            except Exception as e:
                await stream.send_frame(wire.encode(wire.Error(wire.ERR_NOT_FOUND, str(e)[:500])))
                return
            if res is None:
                await stream.send_frame(wire.encode(wire.Miss(msg.request_id, msg.digest)))
                return
            data = res.data
            msg = wire.GetBlock(msg.request_id, res.digest)
        if data is None and msg.digest in store:
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

    def _alive(self, peer: Any) -> None:
        if self.node.mesh is not None:
            self.node.mesh.touch(address=peer)

    def inflight(self, peer: Any) -> int:
        """Requests to `peer` in flight now (candidates are chosen by load)."""
        return self._inflight.get(peer, 0)

    def penalized(self, peer: Any) -> bool:
        """True while a peer that misbehaved or failed is being avoided."""
        return self._penalty.get(peer, 0.0) > time.monotonic()

    def reachable(self, peer: Any) -> bool:
        """True while an authenticated connection to `peer` is open."""
        key = parse_address(peer)
        return any(parse_address(c.peer.address) == key for c in self.transport.connections)

    def failed(self, peer: Any, exc: BaseException) -> None:
        """Count a failed request. A peer we cannot reach is avoided until membership has had
        time to decide whether it is gone; one that is only slow (busy) is not."""
        if isinstance(exc, PeerMisbehaved):
            return  # counted and punished where it was detected
        self.stats["peer_errors"] += 1
        if not self.reachable(peer):
            hold = max(2.0, self.node.config.suspect_timeout)
            self._penalty[peer] = max(self._penalty.get(peer, 0.0), time.monotonic() + hold)

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
                data = await self._recv_block(stream, conn, reply.size)
            if compute_digest(data) != d:
                raise self._misbehaved(peer, conn, f"sent bytes that do not hash to {to_hex(d)}")
            self._alive(peer)
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

    async def request(self, peer: Any, msg: Any, max_reply: int = MAX_REQUEST_FRAME,
                      timeout: float | None = None) -> Any:
        """Send one message on a new stream and return the decoded reply."""
        return (await self.exchange(peer, msg, max_reply, timeout))[0]

    async def exchange(self, peer: Any, msg: Any, max_reply: int = MAX_REQUEST_FRAME,
                       timeout: float | None = None) -> tuple[Any, bytes | None]:
        """`request`, and the authenticated node id of who answered (membership needs it)."""
        async with asyncio.timeout(timeout or self.node.config.request_timeout):
            stream = await self.transport.open_stream(peer)
            async with stream:
                await stream.send_frame(wire.encode(msg))
                reply = self._decode(await stream.recv_frame(max_reply), peer)
                return reply, stream.connection.peer_node_id

    async def get_block_by_hint(self, peer: Any, version: ObjectVersion, index: int,
                                known: bytes | None, max_size: int) -> tuple[bytes, bytes]:
        """Ask the block's owner for block `index` of `version`: (digest, verified bytes)."""
        self._inflight[peer] = self._inflight.get(peer, 0) + 1
        try:
            stream = await self.transport.open_stream(peer)
            conn = stream.connection
            async with stream:
                await stream.send_frame(wire.encode(wire.GetBlock(
                    next(self._ids), known or wire.NO_DIGEST, version.url, index, version.token,
                    version.size)))
                # The owner may be reading a congested origin for the whole zone: wait as long
                # as an origin read may take rather than read the origin a second time.
                cfg = self.node.config
                wait = cfg.origin_timeout * (cfg.origin_retries + 1) + cfg.request_timeout
                reply = self._decode(await stream.recv_frame(MAX_REQUEST_FRAME, timeout=wait),
                                     peer)
                if isinstance(reply, (wire.Error, wire.Miss)):
                    raise TransportError(f"owner {peer} could not fetch block {index} of "
                                         f"{version.url}: {getattr(reply, 'text', 'miss')}")
                if not isinstance(reply, wire.Block) or reply.size > max_size or \
                        (known is not None and reply.digest != known):
                    raise self._misbehaved(peer, conn, "answered an owner request wrongly")
                data = await self._recv_block(stream, conn, reply.size)
            if compute_digest(data) != reply.digest:
                raise self._misbehaved(peer, conn, "sent bytes that do not hash to their digest")
            self._alive(peer)
            return reply.digest, data
        finally:
            self._inflight[peer] -= 1

    async def _recv_block(self, stream: Stream, conn: Any, size: int) -> bytes:
        buf = bytearray(size)
        got = 0
        async for chunk in stream.recv_payload(size):
            await self.ingress.take(conn, len(chunk))
            buf[got:got + len(chunk)] = chunk
            got += len(chunk)
        return bytes(buf)

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

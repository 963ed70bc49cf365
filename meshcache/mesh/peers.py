"""Peers: serve blocks and manifests to authenticated peers, and fetch them from peers.

One request per stream: the asker sends a GET_BLOCK or GET_MANIFEST frame; the server answers
with BLOCK (a header frame, then the payload bytes streamed in chunks, rate-limited), MANIFEST,
MISS or ERROR. A GET_BLOCK carries the highest rank of rung the asked node may use
(core/rungs.py): below HOLDERS it answers from its store only, above it may fetch the block
through its own read path, but only from a URL its `peer_origins` policy allows
(core/origins.py). Everything received is bounded before it is buffered and every block is
hashed before it is handed on: a peer whose bytes do not match is disconnected, counted and
avoided for a time that doubles with each lie, and expelled from this node's view after
`liar_expel_after` lies (core/penalty.py); the caller goes on with another source.

The service is given its transport (QUIC from mesh/factory.py, or the in-memory one), a clock
and the node it serves (`BlockServer`); the membership shell attaches itself (`attach`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Awaitable, Callable

from blake3 import blake3 as BlockHasher

from meshcache.config import Config
from meshcache.core import wire
from meshcache.core.digest import to_hex
from meshcache.core.manifest import Manifest, ManifestError
from meshcache.core.origins import refusal
from meshcache.core.penalty import PenaltyBox
from meshcache.core.rungs import BlockRequest, Rank, may_use
from meshcache.core.version import ObjectVersion
from meshcache.mesh.ratelimit import CHUNK, RateLimiter
from meshcache.mesh.seams import Address, BlockServer, MeshHandler
from meshcache.transport import Authenticator, Connection, Stream, Transport, TransportError
from meshcache.transport.base import parse_address

log = logging.getLogger("meshcache.mesh.peers")

MAX_REQUEST_FRAME = 16 * 1024
MAX_SUMMARY_FRAME = 8 << 20  # a summary of ~7M blocks; everything else is far smaller
LIE_PENALTY = 30.0  # seconds a peer is avoided after its first lie (doubling with each)
EXPEL_SECONDS = 3600.0  # how long an expelled liar stays out of this node's view
MAX_PENALTIES = 4096  # peers remembered in each penalty box


class PeerMisbehaved(Exception):
    """A peer sent bytes that do not match what it announced."""


class PeerRefused(TransportError):
    """The peer answered ERROR (e.g. the URL is outside its peer_origins)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def admission(authenticate: Authenticator, heard: Callable[[Connection], None],
              expelled: Callable[[bytes], bool]) -> Authenticator:
    """`authenticate`, then refuse a node expelled for lying, and count any packet of the now
    trusted peer as a sign of life (a member busy streaming blocks may answer a PING late:
    its ACK waits behind the data)."""

    async def hook(conn: Connection) -> None:
        await authenticate(conn)
        if isinstance(conn.peer_node_id, bytes) and expelled(conn.peer_node_id):
            raise PeerMisbehaved("expelled from this node's view for lying")
        conn.on_heard = heard

    return hook


def _key(address: Address) -> Address:
    """An address in one form for comparisons ("host:port" and (host, port) alike)."""
    try:
        return parse_address(address)
    except (ValueError, TypeError):
        return address


class PeerService:
    """This node's side of the mesh: serves the node's store to peers and asks peers."""

    def __init__(self, config: Config, transport: Transport, server: BlockServer,
                 node_id: bytes, *, clock: Callable[[], float], datagram_size: int = 1452,
                 listen: Address = None) -> None:
        self.config = config
        self.transport = transport
        self.server = server
        self.node_id = node_id
        self.clock = clock
        self.datagram_size = datagram_size
        self.listen_address = listen
        self.mesh: MeshHandler | None = None
        if transport.authenticate is not None:
            transport.authenticate = admission(transport.authenticate, self._heard,
                                               self.expelled)
        self.egress = RateLimiter(config.egress_rate, config.peer_egress_rate)
        self.ingress = RateLimiter(config.ingress_rate, config.peer_ingress_rate)
        self._address: Address = None
        # Failures, by address: avoided while membership decides (fixed hold, not escalating).
        self._avoid = PenaltyBox(base=LIE_PENALTY, max_entries=MAX_PENALTIES, forget_after=0.0)
        # Lies, by node id: escalating, and expulsion after liar_expel_after.
        self._liars = PenaltyBox(base=LIE_PENALTY, expel_after=config.liar_expel_after,
                                 expel_for=EXPEL_SECONDS, max_entries=MAX_PENALTIES)
        self._inflight: dict[Address, int] = {}
        # await wan_egress(peer_node_id, n) before sending n block bytes (wan/caps.py: caps and
        # counts bytes to remote zones); None: no WAN caps
        self.wan_egress: Callable[[bytes | None, int], Awaitable[None]] | None = None
        self._ids = itertools.count(1)
        self.stats = {"peer_errors": 0, "peer_misses": 0, "bytes_to_peers": 0,
                      "blocks_to_peers": 0, "bad_peers": 0, "peers_expelled": 0,
                      "peer_origin_refusals": 0}

    @property
    def address(self) -> Address:
        """Where this node listens (None before `start`)."""
        return self._address

    def attach(self, mesh: MeshHandler) -> None:
        """The membership shell that handles membership messages and signs of life."""
        self.mesh = mesh

    def _heard(self, conn: Connection) -> None:
        if self.mesh is not None and isinstance(conn.peer_node_id, bytes):
            self.mesh.touch(conn.peer_node_id)

    # ---- serving -------------------------------------------------------------------------------

    async def start(self) -> Address:
        """Listen on the listen address; returns the bound address."""
        self._address = await self.transport.listen(self.listen_address, self._serve)
        return self._address

    async def close(self) -> None:
        await self.transport.close()

    async def _serve(self, stream: Stream) -> None:
        conn = stream.connection
        peer_id = conn.peer_node_id if isinstance(conn.peer_node_id, bytes) else None
        if peer_id is not None and self.expelled(peer_id):
            await conn.close(reason="expelled: lied")
            return
        if self.mesh is not None:
            self.mesh.touch(peer_id)
        try:
            frame = await stream.recv_frame(MAX_SUMMARY_FRAME)
            try:
                msg = wire.decode(frame, max_size=MAX_SUMMARY_FRAME)
            except wire.WireError as e:
                await stream.send_frame(wire.encode(wire.Error(wire.ERR_BAD_REQUEST, str(e))))
                return
            if isinstance(msg, wire.GetBlock):
                await self._serve_block(stream, conn, msg)
                return
            if isinstance(msg, wire.GetManifest):
                await self._serve_manifest(stream, msg)
                return
            if isinstance(msg, wire.GetVersion):
                await stream.send_frame(self._version_answer(msg))
                return
            await stream.send_frame(self._answer(msg, peer_id, stream.peer.address))
        finally:
            await stream.finish()

    def _answer(self, msg: wire.Message, peer_id: bytes | None, address: Address) -> bytes:
        """The encoded reply to a membership, HELLO or summary message."""
        mesh = self.mesh
        reply: wire.Message
        if isinstance(msg, (wire.Ping, wire.Ack, wire.PingReq, wire.Sync, wire.Gossip,
                            wire.Leave)) and mesh is not None:
            # SWIM membership (mesh.py drives membership.py); the reply is an ACK (with
            # gossip for a PING), a SYNC answer, or ERROR.
            reply = mesh.on_membership(msg, peer_id)
            body = wire.encode(reply)
            if not isinstance(reply, wire.Sync) and len(body) > MAX_REQUEST_FRAME:
                body = wire.encode(wire.Error(wire.ERR_TOO_LARGE, "reply too large"))
            return body
        if isinstance(msg, wire.Ping):  # no mesh (yet): a bare liveness answer
            reply = wire.Ack(msg.seq)
        elif isinstance(msg, wire.Hello) and mesh is not None:
            if msg.node_id != peer_id:
                reply = wire.Error(wire.ERR_AUTH, "HELLO names another node than the one "
                                   "that authenticated")
            elif mesh.accept_hello(msg, address[0] if isinstance(address, tuple) else address):
                reply = mesh.hello_message()
            else:
                reply = wire.Error(wire.ERR_BLOCK_SIZE, "block size or cluster tag differ")
        elif isinstance(msg, (wire.Summary, wire.SummaryDelta)) and mesh is not None:
            reply = wire.Error(wire.ERR_AUTH, "summary of another node") \
                if msg.node_id != peer_id else mesh.accept_summary(msg)
        else:
            reply = wire.Error(wire.ERR_BAD_REQUEST, f"unexpected {type(msg).__name__}")
        return wire.encode(reply)

    async def _serve_block(self, stream: Stream, conn: Connection, msg: wire.GetBlock) -> None:
        data = await self._local(msg.digest)
        digest = msg.digest
        if data is None and msg.url is not None and msg.token is not None and \
                may_use(msg.max_rank, Rank.HOLDERS):
            why = refusal(msg.url, self.config.peer_origins)
            if why is not None:
                self.stats["peer_origin_refusals"] += 1
                log.warning("refused a peer's request for %s: %s (peer_origins)", msg.url[:200],
                            why)
                await stream.send_frame(wire.encode(wire.Error(
                    wire.ERR_REFUSED, f"this node does not fetch {msg.url[:200]} for peers: "
                    f"{why} (peer_origins)")))
                return
            assert msg.index is not None and msg.size is not None
            request = BlockRequest(ObjectVersion(msg.url, msg.token, msg.size), msg.index,
                                   self.config.block_size,
                                   None if msg.digest == wire.NO_DIGEST else msg.digest,
                                   max_rank=msg.max_rank)
            try:
                res = await self.server.fetch_request(request)
            except Exception as e:
                await stream.send_frame(wire.encode(wire.Error(wire.ERR_NOT_FOUND, str(e)[:500])))
                return
            if res is None:  # none of the rungs the request may use has it
                await stream.send_frame(wire.encode(wire.Miss(msg.request_id, msg.digest)))
                return
            digest = res.digest
            data = res.data if res.data is not None else await self._local(digest)
        if data is None:
            await stream.send_frame(wire.encode(wire.Miss(msg.request_id, msg.digest)))
            return
        await stream.send_frame(wire.encode(wire.Block(msg.request_id, digest, len(data))))
        if self.egress.unlimited and self.wan_egress is None:
            await stream.send_payload(data)
        else:
            view = memoryview(data)
            for off in range(0, len(data), CHUNK):
                piece = view[off:off + CHUNK]
                await self.egress.take(conn, len(piece))
                if self.wan_egress is not None:
                    await self.wan_egress(conn.peer_node_id, len(piece))
                await stream.send_payload(piece)
        self.stats["bytes_to_peers"] += len(data)
        self.stats["blocks_to_peers"] += 1

    async def _local(self, d: bytes) -> bytes | None:
        """Block `d` from the store, or None (absent, or gone or damaged since)."""
        store = self.server.store
        if d == wire.NO_DIGEST or d not in store:
            return None
        try:
            return await asyncio.to_thread(store.read_block, d)
        except Exception:  # the store has dealt with it
            return None

    async def _serve_manifest(self, stream: Stream, msg: wire.GetManifest) -> None:
        version = ObjectVersion(msg.url, msg.token, msg.size)
        m = self.server.known_manifest(version)
        if m is None or not any(d is not None for d in m.digests):
            await stream.send_frame(wire.encode(wire.Miss(msg.request_id, b"")))
            return
        await stream.send_frame(wire.encode(wire.ManifestMsg(
            msg.request_id, m.block_size, list(m.digests))))

    def _version_answer(self, msg: wire.GetVersion) -> bytes:
        """VERSION: the version of the URL this node's origin last confirmed, within this node's
        stale_if_error (MISS otherwise). Answered from memory; nothing is fetched."""
        known = self.server.confirmed_version(msg.url)
        if known is None:
            return wire.encode(wire.Miss(msg.request_id, b""))
        version, age = known
        return wire.encode(wire.VersionMsg(msg.request_id, version.token, version.size,
                                           int(max(0.0, age) * 1000)))

    # ---- penalties -----------------------------------------------------------------------------

    def inflight(self, peer: Address) -> int:
        """Requests to `peer` in flight now (candidates are chosen by load)."""
        return self._inflight.get(peer, 0)

    def penalized(self, peer: Address) -> bool:
        """True while a peer that misbehaved or failed is being avoided."""
        return self._avoid.penalized(peer, self.clock())

    def expelled(self, node_id: bytes) -> bool:
        """True while node `node_id` is expelled from this node's view for lying."""
        return self._liars.expelled(node_id, self.clock())

    def penalty_entries(self) -> int:
        """Peers remembered by the penalty boxes (bounded by MAX_PENALTIES each)."""
        return len(self._avoid) + len(self._liars)

    def prune(self) -> None:
        """Forget penalties that have lapsed (the mesh calls this every round)."""
        now = self.clock()
        self._avoid.prune(now)
        self._liars.prune(now)

    def _open_to(self, peer: Address) -> list[Connection]:
        """The open connections to `peer`."""
        key = _key(peer)
        return [c for c in self.transport.connections
                if _key(c.peer.address) == key and not c.is_closed]

    def reachable(self, peer: Address) -> bool:
        """True while an authenticated connection to `peer` is open."""
        return bool(self._open_to(peer))

    def disconnect(self, peer: Address, why: str) -> None:
        """Close every connection to `peer` (membership declared it gone): requests waiting on
        it fail at once instead of waiting out their timeouts."""
        for conn in self._open_to(peer):
            asyncio.ensure_future(conn.close(reason=f"declared gone: {why}"[:100]))

    def count_error(self) -> None:
        """Count a failed exchange that is no reason to avoid the peer (e.g. a greeting)."""
        self.stats["peer_errors"] += 1

    def failed(self, peer: Address, exc: BaseException) -> None:
        """Count a failed request. A peer we cannot reach is avoided until membership has had
        time to decide whether it is gone; one that is only slow (busy) is not."""
        if isinstance(exc, PeerMisbehaved):
            return  # counted and punished where it was detected
        self.stats["peer_errors"] += 1
        if not self.reachable(peer):
            self._avoid.failed(peer, self.clock(), max(2.0, self.config.suspect_timeout))

    def _punish(self, peer: Address, conn: Connection | None, why: str) -> None:
        """A proven lie: avoid the address for the escalated time; expel a repeated liar."""
        now = self.clock()
        self.stats["bad_peers"] += 1
        node_id = conn.peer_node_id if conn is not None else None
        if not isinstance(node_id, bytes):
            self._avoid.failed(peer, now, LIE_PENALTY)
            log.warning("peer %s misbehaved (%s)", peer, why)
            return
        was_expelled = self._liars.expelled(node_id, now)
        record = self._liars.lied(node_id, now)
        self._avoid.failed(peer, now, record.until - now)
        log.warning("peer %s (%s) misbehaved (%s): lie %d, avoided for %.0f s", peer,
                    node_id.hex()[:12], why, record.lies, record.until - now)
        if record.expelled_until > now and not was_expelled:
            self.stats["peers_expelled"] += 1
            log.warning("expelling %s from this node's view for %.0f s after %d lies",
                        node_id.hex()[:12], EXPEL_SECONDS, record.lies)
            if self.mesh is not None:
                self.mesh.expel(node_id)
            for c in self.transport.connections:
                if c.peer_node_id == node_id:
                    asyncio.ensure_future(c.close(reason="expelled: lied"))

    def _misbehaved(self, peer: Address, conn: Connection, why: str) -> PeerMisbehaved:
        self._punish(peer, conn, why)
        self.stats["peer_errors"] += 1
        asyncio.ensure_future(conn.close(reason="misbehaved"))
        return PeerMisbehaved(f"peer {peer} {why}")

    # ---- asking --------------------------------------------------------------------------------

    async def get_block(self, peer: Address, request: BlockRequest,
                        max_rank: int) -> tuple[bytes, bytes] | None:
        """(digest, verified bytes) of the requested block from `peer`, which may use its rungs
        ranked below `max_rank`: Rank.HOLDERS asks a holder for its store, Rank.OWNER asks the
        block's owner to fetch it for the zone. None when the peer has not got it (MISS).
        Raises TransportError (unreachable, stalled; PeerRefused for an ERROR reply) or
        PeerMisbehaved (the bytes or the reply do not fit the request)."""
        known = request.digest
        version = request.version
        self._inflight[peer] = self._inflight.get(peer, 0) + 1
        try:
            stream = await self.transport.open_stream(peer)
            conn = stream.connection
            async with stream:
                await stream.send_frame(wire.encode(wire.GetBlock(
                    next(self._ids), known or wire.NO_DIGEST, int(max_rank), version.url,
                    request.index, version.token, version.size)))
                wait = None
                if may_use(max_rank, Rank.HOLDERS):
                    # The owner may be reading a congested origin for the whole zone: wait as
                    # long as an origin read may take rather than read the origin a second time.
                    cfg = self.config
                    wait = cfg.origin_timeout * (cfg.origin_retries + 1) + cfg.request_timeout
                reply = self._decode(await stream.recv_frame(MAX_REQUEST_FRAME, timeout=wait),
                                     peer, conn)
                if isinstance(reply, wire.Miss):
                    self.stats["peer_misses"] += 1
                    return None
                if isinstance(reply, wire.Error):
                    raise PeerRefused(f"peer {peer} could not serve block {request.index} of "
                                      f"{version.url}: {reply.text}", reply.code)
                if not isinstance(reply, wire.Block) or \
                        (known is not None and reply.digest != known):
                    raise self._misbehaved(peer, conn, "answered GET_BLOCK with another block")
                if reply.size != request.length:
                    raise self._misbehaved(peer, conn, f"announced a {reply.size}-byte block "
                                           f"where {request.length} bytes were asked")
                data, got = await self._recv_block(stream, conn, reply.size)
            if got != reply.digest:
                raise self._misbehaved(peer, conn, "sent bytes that do not hash to "
                                       f"{to_hex(reply.digest)}")
            if self.mesh is not None:
                self.mesh.touch(address=peer)
            return reply.digest, data
        finally:
            left = self._inflight[peer] - 1
            if left:
                self._inflight[peer] = left
            else:
                del self._inflight[peer]

    async def get_manifest(self, peer: Address, version: ObjectVersion,
                           block_size: int) -> Manifest | None:
        """What `peer` knows of a version's digests (a hint: blocks are verified anyway)."""
        stream = await self.transport.open_stream(peer)
        conn = stream.connection
        async with stream:
            await stream.send_frame(wire.encode(wire.GetManifest(
                next(self._ids), version.url, version.token, version.size)))
            reply = self._decode(await stream.recv_frame(wire.MAX_FRAME), peer, conn)
        if isinstance(reply, wire.Miss):
            return None
        if not isinstance(reply, wire.ManifestMsg) or reply.block_size != block_size:
            return None
        try:
            return Manifest(version, block_size, list(reply.digests))
        except ManifestError:
            self._punish(peer, conn, "sent a manifest that does not fit the version")
            return None

    async def get_version(self, peer: Address, url: str,
                          timeout: float | None = None) -> tuple[ObjectVersion, float] | None:
        """(version, seconds since the origin confirmed it to `peer`) of `url`, or None when the
        peer knows none within its stale_if_error. A claim, not a proof: see docs/security.md."""
        reply = await self.request(peer, wire.GetVersion(next(self._ids), url), timeout=timeout)
        if not isinstance(reply, wire.VersionMsg):
            return None
        return ObjectVersion(url, reply.token, reply.size), reply.age_ms / 1000

    async def request(self, peer: Address, msg: wire.Message, max_reply: int = MAX_REQUEST_FRAME,
                      timeout: float | None = None) -> wire.Message:
        """Send one message on a new stream and return the decoded reply."""
        return (await self.exchange(peer, msg, max_reply, timeout))[0]

    async def exchange(self, peer: Address, msg: wire.Message,
                       max_reply: int = MAX_REQUEST_FRAME, timeout: float | None = None
                       ) -> tuple[wire.Message, bytes | None]:
        """`request`, and the authenticated node id of who answered (membership needs it)."""
        async with asyncio.timeout(timeout or self.config.request_timeout):
            stream = await self.transport.open_stream(peer)
            async with stream:
                await stream.send_frame(wire.encode(msg))
                reply = self._decode(await stream.recv_frame(max_reply), peer,
                                     stream.connection)
                peer_id = stream.connection.peer_node_id
                return reply, peer_id if isinstance(peer_id, bytes) else None

    async def _recv_block(self, stream: Stream, conn: Connection,
                          size: int) -> tuple[bytes, bytes]:
        """(the block's `size` bytes, their digest): hashed while they arrive, copied once, the
        limiter consulted only when a rate is set."""
        hasher = BlockHasher()
        chunks = []
        limited = not self.ingress.unlimited
        async for chunk in stream.recv_payload(size):
            if limited:
                await self.ingress.take(conn, len(chunk))
            hasher.update(chunk)
            chunks.append(chunk)
        return b"".join(chunks), hasher.digest()

    def _decode(self, frame: bytes, peer: Address, conn: Connection) -> wire.Message:
        try:
            return wire.decode(frame)
        except wire.WireError as e:
            self._punish(peer, conn, f"sent a malformed message: {e}")
            raise PeerMisbehaved(f"peer {peer}: {e}") from None
